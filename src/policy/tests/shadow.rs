//! Shadow mode in the policy model: which servers, which denials, and what is refused.

use super::*;

const SHADOWED: &str = r#"
tenants:
  - {name: engineering, servers: [github, jira]}
servers:
  - {name: github, shadow: true}
  - {name: jira, sensitive: true}
  - {name: wiki}
  - {name: legacy, enabled: false, shadow: true}
group_grants:
  - {group: "e0000000-0000-4000-8000-0000000000e1", tenant: engineering, access_level: read}
tool_rules:
  - {server: github, tool: "delete_*", effect: deny}
"#;

fn denied(s: &Snapshot, f: &RequestFacts, groups: &[GroupId]) -> DenyReason {
    match decide(s, &who(BOB, groups), f).result {
        Ok(p) => panic!("allowed as {}", p.tenant),
        Err(r) => r,
    }
}

#[test]
fn shadow_turns_only_policy_denials_on_a_shadowed_enabled_server_into_a_read_permit() {
    let s = snapshot_of(SHADOWED);
    let eng = groups(&[ENG]);
    // The pure decision is unchanged: shadow mode is applied by the Check, not by `decide`.
    let tool = denied(&s, &call("delete_repository"), &eng);
    assert_eq!(tool, DenyReason::ToolDenied);
    let permit = shadow_permit(&s, &call("delete_repository"), tool).expect("shadowed");
    assert_eq!(
        (&**permit.tenant, permit.level),
        (SHADOW_TENANT, AccessLevel::Read)
    );
    let none = denied(&s, &facts("github", "initialize", None), &[]);
    assert_eq!(none, DenyReason::NoGrant);
    assert!(shadow_permit(&s, &facts("github", "initialize", None), none).is_some());
    // Not shadowed: another server, a disabled one, an unknown one.
    let wiki = facts("wiki", "initialize", None);
    assert!(shadow_permit(&s, &wiki, denied(&s, &wiki, &eng)).is_none());
    let legacy = facts("legacy", "initialize", None);
    let r = denied(&s, &legacy, &eng);
    assert_eq!(r, DenyReason::ServerDisabled);
    assert!(shadow_permit(&s, &legacy, r).is_none());
    let nosuch = facts("nosuch", "initialize", None);
    assert!(shadow_permit(&s, &nosuch, DenyReason::UnknownServer).is_none());
    assert_eq!(s.shadowed(), vec!["github"]);
}

#[test]
fn shadow_all_servers_passes_sensitive_servers_by() {
    let s = snapshot_of(&format!("shadow_all_servers: true\n{SHADOWED}"));
    assert_eq!(s.shadowed(), vec!["github", "wiki"]);
    let jira = facts("jira", "initialize", None);
    assert!(shadow_permit(&s, &jira, denied(&s, &jira, &[])).is_none());
}

/// The mistake refused: shadow mode asked for on a server marked sensitive.
#[test]
fn a_sensitive_server_in_shadow_mode_does_not_compile() {
    let doc: PolicyDocument =
        serde_yaml_ng::from_str("servers:\n  - {name: payroll, sensitive: true, shadow: true}\n")
            .expect("yaml");
    let err = Snapshot::compile(&doc, "test", &[]).expect_err("refused");
    assert!(
        err.to_string().contains("payroll: shadow and sensitive"),
        "{err}"
    );
}

/// Documents that do not use shadow mode keep their content version (every replica, old or
/// new, computes the same one), and the new keys round-trip through the database rows.
#[test]
fn shadow_keys_are_absent_unless_used_and_survive_the_rows() {
    let plain: PolicyDocument = serde_yaml_ng::from_str(DOC).expect("yaml");
    let json = serde_json::to_string(&plain).expect("json");
    assert!(
        !json.contains("shadow") && !json.contains("sensitive"),
        "{json}"
    );
    let mut doc: PolicyDocument = serde_yaml_ng::from_str(SHADOWED).expect("yaml");
    doc.shadow_all_servers = true;
    let back = super::super::postgres::round_trip(&doc).expect("rows");
    assert!(back.shadow_all_servers);
    let by_name = |n: &str| back.servers.iter().find(|s| s.name == n).expect(n).clone();
    assert!(by_name("github").shadow && !by_name("github").sensitive);
    assert!(by_name("jira").sensitive && !by_name("jira").shadow);
}
