//! The decision function, case by case, and the compiler's refusals.

use super::decision::glob_match;
use super::*;
use crate::ids::{DirectoryId, GroupId, ObjectId};
use crate::mcp::{Call, RequestFacts, RpcFacts};
use crate::ratelimit::Scope;

const TID: &str = "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c";
const OTHER_TID: &str = "9d1c2b3a-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
const ENG: &str = "e0000000-0000-4000-8000-0000000000e1";
const SALES: &str = "50000000-0000-4000-8000-000000000051";
const OPS: &str = "0b500000-0000-4000-8000-0000000000b5";
const ADMINS: &str = "a0000000-0000-4000-8000-00000000ad01";
const ALICE: &str = "00000000-0000-4000-8000-0000000a11ce";
const BOB: &str = "00000000-0000-4000-8000-000000000b0b";
const ROOT: &str = "00000000-0000-4000-8000-0000000000ff";

const DOC: &str = r#"
admins:
  groups: ["a0000000-0000-4000-8000-00000000ad01"]
  users: [{oid: "00000000-0000-4000-8000-0000000000ff", tid: "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c"}]
tenants:
  - {name: engineering, servers: [github, jira, locked]}
  - {name: sales, servers: [jira]}
  - {name: ops, servers: [github], enabled: false}
servers:
  - {name: github}
  - {name: jira}
  - {name: legacy, enabled: false}
  - {name: locked, tools_default: deny}
  - {name: gh-route, route_key: gh}
group_grants:
  - {group: "e0000000-0000-4000-8000-0000000000e1", tenant: engineering, access_level: read}
  - {group: "50000000-0000-4000-8000-000000000051", tenant: sales, access_level: write}
  - {group: "0b500000-0000-4000-8000-0000000000b5", tenant: ops, access_level: admin}
user_grants:
  - {oid: "00000000-0000-4000-8000-0000000a11ce", tid: "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c", upn: alice@contoso.example, tenant: engineering, access_level: write}
tool_rules:
  - {server: github, tool: "delete_*", effect: deny}
  - {server: github, tool: "merge_*", effect: allow, min_access_level: write}
  - {server: github, tenant: engineering, tool: "secret_*", effect: deny}
  - {server: locked, tool: "read_?", effect: allow}
"#;

fn snapshot_of(doc: &str) -> Snapshot {
    let doc: PolicyDocument = serde_yaml_ng::from_str(doc).expect("yaml");
    Snapshot::compile(&doc, "test", &[]).expect("compiles")
}

fn snap() -> Snapshot {
    snapshot_of(DOC)
}

fn facts(server: &str, method: &str, tool: Option<&str>) -> RequestFacts {
    RequestFacts {
        server: crate::ids::ServerName::parse(server).expect("server name"),
        call: Call::Rpc(RpcFacts {
            method: Some(method.into()),
            tool: tool.map(|t| crate::ids::ToolName::parse(t).expect("tool name")),
            uri: None,
            prompt: None,
        }),
    }
}

fn call(tool: &str) -> RequestFacts {
    facts("github", "tools/call", Some(tool))
}

fn who<'a>(oid: &str, groups: &'a [GroupId]) -> Subject<'a> {
    Subject {
        tid: tid(TID),
        oid: obj(oid),
        upn: None,
        groups,
    }
}

fn groups(g: &[&str]) -> Vec<GroupId> {
    g.iter()
        .map(|s| GroupId::parse(s).expect("group GUID"))
        .collect()
}

/// A directory id for a test subject (leaked: tests only).
fn tid(s: &str) -> &'static DirectoryId {
    Box::leak(Box::new(DirectoryId::parse(s).expect("tid GUID")))
}

fn obj(s: &str) -> &'static ObjectId {
    Box::leak(Box::new(ObjectId::parse(s).expect("oid GUID")))
}

fn result(
    s: &Snapshot,
    subject: &Subject<'_>,
    f: &RequestFacts,
) -> Result<(String, AccessLevel), DenyReason> {
    decide(s, subject, f)
        .result
        .map(|a| (a.tenant.to_string(), a.level))
}

#[test]
fn group_member_uses_a_server_of_their_tenant() {
    let s = snap();
    let g = groups(&[ENG]);
    assert_eq!(
        result(&s, &who(BOB, &g), &facts("github", "initialize", None)),
        Ok(("engineering".into(), AccessLevel::Read))
    );
    assert_eq!(
        result(&s, &who(BOB, &g), &facts("jira", "tools/list", None)),
        Ok(("engineering".into(), AccessLevel::Read))
    );
    let stream = RequestFacts {
        server: crate::ids::ServerName::parse("github").expect("name"),
        call: Call::OpenStream,
    };
    assert!(decide(&s, &who(BOB, &g), &stream).result.is_ok());
}

#[test]
fn server_not_in_the_users_tenants_is_denied() {
    let s = snap();
    let g = groups(&[SALES]);
    assert_eq!(
        result(&s, &who(BOB, &g), &facts("github", "initialize", None)),
        Err(DenyReason::ServerNotGranted)
    );
    assert!(result(&s, &who(BOB, &g), &facts("jira", "initialize", None)).is_ok());
}

#[test]
fn no_grant_at_all_is_denied() {
    let s = snap();
    assert_eq!(
        result(&s, &who(BOB, &[]), &facts("github", "initialize", None)),
        Err(DenyReason::NoGrant)
    );
    let unknown = groups(&["12345678-0000-4000-8000-000000000000"]);
    assert_eq!(
        result(
            &s,
            &who(BOB, &unknown),
            &facts("github", "initialize", None)
        ),
        Err(DenyReason::NoGrant)
    );
}

#[test]
fn unknown_and_disabled_servers_are_denied_even_to_admins() {
    let s = snap();
    let admin = groups(&[ADMINS]);
    assert_eq!(
        result(&s, &who(BOB, &admin), &facts("nope", "initialize", None)),
        Err(DenyReason::UnknownServer)
    );
    assert_eq!(
        result(&s, &who(BOB, &admin), &facts("legacy", "initialize", None)),
        Err(DenyReason::ServerDisabled)
    );
    // The server's name is not its route key.
    assert_eq!(
        result(
            &s,
            &who(BOB, &admin),
            &facts("gh-route", "initialize", None)
        ),
        Err(DenyReason::UnknownServer)
    );
    assert!(result(&s, &who(BOB, &admin), &facts("gh", "initialize", None)).is_ok());
}

#[test]
fn admins_use_every_enabled_server() {
    let s = snap();
    let admin = groups(&[ADMINS]);
    for server in ["github", "jira", "locked", "gh"] {
        let r = result(&s, &who(BOB, &admin), &facts(server, "initialize", None));
        assert_eq!(
            r,
            Ok((decision::ADMIN_TENANT.into(), AccessLevel::Admin)),
            "{server}"
        );
    }
    // An admin user (by tid + oid).
    assert!(result(&s, &who(ROOT, &[]), &facts("jira", "initialize", None)).is_ok());
    // The same oid from another directory is not that admin.
    let elsewhere = Subject {
        tid: tid(OTHER_TID),
        oid: obj(ROOT),
        upn: None,
        groups: &[],
    };
    assert_eq!(
        result(&s, &elsewhere, &facts("jira", "initialize", None)),
        Err(DenyReason::NoGrant)
    );
}

#[test]
fn admins_with_a_tenant_grant_report_that_tenant() {
    let s = snap();
    let g = groups(&[ENG, ADMINS]);
    assert_eq!(
        result(&s, &who(BOB, &g), &facts("jira", "initialize", None)),
        Ok(("engineering".into(), AccessLevel::Read))
    );
}

#[test]
fn global_tool_deny_applies_to_everyone_including_admins() {
    let s = snap();
    let admin = groups(&[ADMINS]);
    let eng = groups(&[ENG]);
    for g in [&admin, &eng] {
        let d = decide(&s, &who(BOB, g), &call("delete_repository"));
        assert_eq!(d.result.err(), Some(DenyReason::ToolDenied));
        assert!(
            d.basis.iter().any(|b| b.contains("tool_rules[0]")),
            "{:?}",
            d.basis
        );
    }
}

#[test]
fn tool_allow_rule_requires_its_access_level() {
    let s = snap();
    let eng = groups(&[ENG]); // read
    assert_eq!(
        result(&s, &who(BOB, &eng), &call("merge_pr")),
        Err(DenyReason::AccessLevelTooLow)
    );
    // Alice has engineering at write by a user grant.
    assert_eq!(
        result(&s, &who(ALICE, &eng), &call("merge_pr")),
        Ok(("engineering".into(), AccessLevel::Write))
    );
    // Tools no rule names follow the server default (allow).
    assert!(result(&s, &who(BOB, &eng), &call("list_issues")).is_ok());
}

#[test]
fn tenant_scoped_rule_applies_only_under_that_tenant() {
    let s = snap();
    let eng = groups(&[ENG]);
    let d = decide(&s, &who(BOB, &eng), &call("secret_dump"));
    assert_eq!(d.result.err(), Some(DenyReason::ToolDenied));
    assert!(d.basis.iter().any(|b| b.contains("tool_rules[2]")));
    // An admin without the engineering grant is not under that rule.
    let admin = groups(&[ADMINS]);
    assert!(result(&s, &who(BOB, &admin), &call("secret_dump")).is_ok());
}

#[test]
fn server_default_deny_allows_only_listed_tools() {
    let s = snap();
    let eng = groups(&[ENG]);
    let f = |tool: &str| facts("locked", "tools/call", Some(tool));
    assert!(result(&s, &who(BOB, &eng), &f("read_x")).is_ok());
    assert_eq!(
        result(&s, &who(BOB, &eng), &f("read_xy")),
        Err(DenyReason::ToolNotAllowed)
    );
    assert_eq!(
        result(&s, &who(BOB, &eng), &f("write_x")),
        Err(DenyReason::ToolNotAllowed)
    );
    // Listing tools is not calling them.
    assert!(result(&s, &who(BOB, &eng), &facts("locked", "tools/list", None)).is_ok());
}

#[test]
fn disabled_tenant_grants_nothing() {
    let s = snap();
    let ops = groups(&[OPS]);
    assert_eq!(
        result(&s, &who(BOB, &ops), &facts("github", "initialize", None)),
        Err(DenyReason::NoGrant)
    );
}

#[test]
fn highest_level_tenant_is_chosen_then_name() {
    let s = snap();
    // Engineering (read) and sales (write) both have jira: sales wins on level.
    let both = groups(&[ENG, SALES]);
    assert_eq!(
        result(&s, &who(BOB, &both), &facts("jira", "initialize", None)),
        Ok(("sales".into(), AccessLevel::Write))
    );
    // Group read + user write on the same tenant: the higher level counts.
    let eng = groups(&[ENG]);
    assert_eq!(
        result(&s, &who(ALICE, &eng), &facts("github", "initialize", None)),
        Ok(("engineering".into(), AccessLevel::Write))
    );
}

#[test]
fn user_grant_is_matched_on_tid_and_oid_not_on_labels() {
    let s = snap();
    assert!(result(&s, &who(ALICE, &[]), &facts("github", "initialize", None)).is_ok());
    let wrong_dir = Subject {
        tid: tid(OTHER_TID),
        oid: obj(ALICE),
        upn: None,
        groups: &[],
    };
    assert_eq!(
        result(&s, &wrong_dir, &facts("github", "initialize", None)),
        Err(DenyReason::NoGrant)
    );
    // Someone whose upn claim says alice is not alice.
    let impostor = Subject {
        tid: tid(TID),
        oid: obj(BOB),
        upn: Some("alice@contoso.example"),
        groups: &[],
    };
    assert_eq!(
        result(&s, &impostor, &facts("github", "initialize", None)),
        Err(DenyReason::NoGrant)
    );
}

#[test]
fn upn_grants_need_the_explicit_setting() {
    let doc = "tenants: [{name: t, servers: [s]}]\nservers: [{name: s}]\nuser_grants: [{upn: Carol@Contoso.example, tenant: t, access_level: read}]\n";
    let parsed: PolicyDocument = serde_yaml_ng::from_str(doc).expect("yaml");
    let err = Snapshot::compile(&parsed, "t", &[]).unwrap_err();
    assert!(err.to_string().contains("allow_upn_grants"), "{err}");
    let s = snapshot_of(&format!("allow_upn_grants: true\n{doc}"));
    let carol = Subject {
        tid: tid(TID),
        oid: obj(BOB),
        upn: Some("carol@contoso.EXAMPLE"),
        groups: &[],
    };
    assert!(
        result(&s, &carol, &facts("s", "initialize", None)).is_ok(),
        "upn matched case-insensitively"
    );
}

#[test]
fn basis_names_the_granting_rows() {
    let s = snap();
    let eng = groups(&[ENG]);
    let d = decide(&s, &who(ALICE, &eng), &call("merge_pr"));
    assert!(d.result.is_ok());
    assert!(
        d.basis.iter().any(|b| b.starts_with("user_grants[0]")),
        "{:?}",
        d.basis
    );
    assert!(
        d.basis.iter().any(|b| b.starts_with("tool_rules[1]")),
        "{:?}",
        d.basis
    );
}

#[test]
fn compile_reports_every_problem() {
    let doc = r#"
tenants:
  - {name: a, servers: [missing]}
  - {name: a}
  - {name: "bad name"}
servers:
  - {name: s}
  - {name: s}
group_grants:
  - {group: not-a-guid, tenant: a, access_level: read}
  - {group: "e0000000-0000-4000-8000-0000000000e1", tenant: nope, access_level: read}
user_grants:
  - {tenant: a, access_level: read}
tool_rules:
  - {server: zzz, tool: "x", effect: deny}
  - {server: s, tool: "has space", effect: deny}
"#;
    let parsed: PolicyDocument = serde_yaml_ng::from_str(doc).expect("yaml");
    let err = Snapshot::compile(&parsed, "t", &[]).unwrap_err();
    let text = err.to_string();
    for needle in [
        "unknown server \"missing\"",
        "duplicate name \"a\"",
        "name \"bad name\"",
        "duplicate name \"s\"",
        "not an Entra group object id",
        "unknown tenant \"nope\"",
        "needs oid",
        "unknown server \"zzz\"",
        "tool pattern \"has space\"",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in {text}");
    }
    assert!(err.0.len() >= 9);
}

#[test]
fn unknown_fields_and_bad_levels_do_not_parse() {
    assert!(serde_yaml_ng::from_str::<PolicyDocument>("tenantz: []").is_err());
    assert!(
        serde_yaml_ng::from_str::<PolicyDocument>(
            "group_grants: [{group: x, tenant: t, access_level: root}]"
        )
        .is_err()
    );
    assert!(
        serde_yaml_ng::from_str::<PolicyDocument>(
            "tool_rules: [{server: s, tool: t, effect: maybe}]"
        )
        .is_err()
    );
}

#[test]
fn version_is_a_content_hash() {
    let a = snap();
    let b = snap();
    assert_eq!(a.version, b.version);
    let c = snapshot_of(&DOC.replace("access_level: read}", "access_level: write}"));
    assert_ne!(a.version, c.version);
    assert_eq!(a.version.len(), 12);
}

#[test]
fn glob_matching() {
    assert!(glob_match("*", ""));
    assert!(glob_match("*", "anything"));
    assert!(glob_match("delete_*", "delete_repository"));
    assert!(glob_match("delete_*", "delete_"));
    assert!(!glob_match("delete_*", "undelete_x"));
    assert!(glob_match("*_repo*", "delete_repository"));
    assert!(glob_match("a?c", "abc"));
    assert!(!glob_match("a?c", "ac"));
    assert!(glob_match("a*b*c", "axxbyyc"));
    assert!(!glob_match("a*b*c", "axxbyy"));
    assert!(!glob_match("Delete_*", "delete_x"), "case-sensitive");
    assert!(glob_match("é*", "éclair"));
    // `?` is one character, also when it is several bytes: the ASCII path must not be taken
    // for a non-ASCII text, or `a?c` would refuse `aéc` and `a??c` accept it.
    assert!(glob_match("a?c", "aéc"));
    assert!(!glob_match("a??c", "aéc"));
    assert!(glob_match("*é", "café"));
    assert!(!glob_match("caf?", "cafés"));
}

#[test]
fn handle_swaps_atomically() {
    let h = PolicyHandle::default();
    assert!(!h.is_loaded());
    h.install(snap());
    let v1 = h.load().expect("loaded").version.clone();
    let held = h.load().expect("loaded");
    h.install(snapshot_of(
        &DOC.replace("access_level: read}", "access_level: write}"),
    ));
    assert_ne!(h.load().expect("loaded").version, v1);
    assert_eq!(held.version, v1, "a reader keeps the snapshot it loaded");
}

#[test]
fn obo_needs_exactly_one_scope_and_only_with_obo() {
    let compile = |servers: &str| {
        let doc: PolicyDocument =
            serde_yaml_ng::from_str(&format!("servers: [{servers}]")).expect("yaml");
        Snapshot::compile(&doc, "t", &[])
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(compile("{name: s, token_forwarding: obo, obo_scope: \"api://s/.default\"}").is_ok());
    assert!(
        compile("{name: s, token_forwarding: obo}")
            .unwrap_err()
            .contains("needs obo_scope")
    );
    assert!(
        compile("{name: s, token_forwarding: obo, obo_scope: \"a b\"}")
            .unwrap_err()
            .contains("must be one scope")
    );
    assert!(
        compile("{name: s, obo_scope: \"api://s/.default\"}")
            .unwrap_err()
            .contains("only for token_forwarding obo")
    );
}

const LIMITS: &str = r#"
rate_limits:
  global_per_minute: 1000
  user_per_minute: 100
  tools: [{server: github, tool: "merge_*", user_per_minute: 5}]
"#;

fn limited() -> Snapshot {
    let doc = DOC.replace(
        "  - {name: sales, servers: [jira]}\n",
        "  - {name: sales, servers: [jira], rate_limit_per_minute: 50, fairness_weight: 3}\n",
    );
    snapshot_of(&format!("{doc}{LIMITS}"))
}

#[test]
fn rate_limit_keys_are_the_verified_identity_tenant_and_tool_rule() {
    let snap = limited();
    let g = groups(&[ENG]);
    let who = who(ALICE, &g);
    let f = facts("github", "tools/call", Some("merge_pr"));
    let allow = decide(&snap, &who, &f).result.expect("allowed");
    let req = snap.rate_request(&allow, TID, ALICE, &f);
    let keys: Vec<(&str, Scope, u32)> = req
        .buckets()
        .map(|b| (b.key.as_str(), b.scope, b.rate.per_minute))
        .collect();
    // Engineering has weight 1 of 1+3 (ops is disabled and does not count): 250 of 1000.
    assert_eq!(
        keys,
        vec![
            (format!("u:{TID}:{ALICE}").as_str(), Scope::User, 100),
            (
                format!("t:github:merge_*:{TID}:{ALICE}").as_str(),
                Scope::Tool,
                5
            ),
            ("r:engineering", Scope::Tenant, 250),
            ("g", Scope::Global, 1000),
        ]
    );
    // Sales has a cap of its own and three quarters of the budget.
    let g = groups(&[SALES]);
    let who = super::decision::Subject {
        oid: obj(BOB),
        groups: &g,
        ..who
    };
    let f = facts("jira", "tools/list", None);
    let allow = decide(&snap, &who, &f).result.expect("allowed");
    let req = snap.rate_request(&allow, TID, BOB, &f);
    assert_eq!(req.hard[1].key, "c:sales");
    assert_eq!(req.hard[1].rate.per_minute, 50);
    assert_eq!(
        req.fair.as_ref().map(|f| f.reserved.rate.per_minute),
        Some(750)
    );
    // An admin without a tenant only borrows from the budget.
    let who = super::decision::Subject {
        oid: obj(ROOT),
        groups: &[],
        ..who
    };
    let allow = decide(&snap, &who, &f).result.expect("admin");
    let req = snap.rate_request(&allow, TID, ROOT, &f);
    assert!(req.fair.is_none());
    assert_eq!(req.hard.last().map(|b| b.scope), Some(Scope::Global));
    // Without any limit in the policy there is nothing to check.
    let g = groups(&[ENG]);
    let who = super::decision::Subject {
        oid: obj(ALICE),
        groups: &g,
        ..who
    };
    let plain = snapshot_of(DOC);
    let allow = decide(&plain, &who, &f).result.expect("allowed");
    assert!(plain.rate_request(&allow, TID, ALICE, &f).is_empty());
}

#[test]
fn bad_rate_limits_are_refused_with_every_problem() {
    let doc = format!(
        "{DOC}rate_limits:\n  global_per_minute: 0\n  user_burst_factor: 0.001\n  tools: [{{server: nope, tool: \"a b\", user_per_minute: 1}}]\n"
    )
    .replace("{name: sales, servers: [jira]}", "{name: sales, servers: [jira], fairness_weight: 0, burst_factor: -1}");
    let doc: PolicyDocument = serde_yaml_ng::from_str(&doc).expect("yaml");
    let err = Snapshot::compile(&doc, "test", &[]).expect_err("refused");
    let text = err.to_string();
    for want in [
        "global_per_minute must be positive",
        "user_burst_factor must be in (0, 100]",
        "unknown server \"nope\"",
        "tool pattern \"a b\"",
        "fairness_weight must be 1..=1000",
        "sales: burst_factor",
    ] {
        assert!(text.contains(want), "missing {want:?} in {text}");
    }
}

/// A description the catalog would show must be plain text of a bounded length.
#[test]
fn bad_server_descriptions_are_refused() {
    for bad in [
        "\"\"",
        "\"line\\nbreak\"",
        &format!("\"{}\"", "d".repeat(1025)),
    ] {
        let doc = DOC.replace(
            "{name: jira}",
            &format!("{{name: jira, description: {bad}}}"),
        );
        let doc: PolicyDocument = serde_yaml_ng::from_str(&doc).expect("yaml");
        let err = Snapshot::compile(&doc, "test", &[]).expect_err("refused");
        assert!(
            err.to_string().contains("jira: description must be"),
            "{bad}: {err}"
        );
    }
    let doc = DOC.replace(
        "{name: jira}",
        "{name: jira, description: \"Issues and sprints\"}",
    );
    let doc: PolicyDocument = serde_yaml_ng::from_str(&doc).expect("yaml");
    let snap = Snapshot::compile(&doc, "test", &[]).expect("compiles");
    let jira = snap.server_by_route("jira").expect("jira");
    assert_eq!(jira.description.as_deref(), Some("Issues and sprints"));
}

fn compile_for(doc: &str, directories: &[&str]) -> Result<Snapshot, CompileError> {
    let doc: PolicyDocument = serde_yaml_ng::from_str(doc).expect("yaml");
    let dirs: Vec<String> = directories.iter().map(|s| s.to_string()).collect();
    Snapshot::compile(&doc, "test", &dirs)
}

/// Attack: with several allowed directories, a group of directory B carrying the object id of
/// directory A's admin group (or named so, where Entra emits names) made its members admins of
/// A. With one directory, unscoped grants are that directory's; with several, a group grant or
/// an admin must name its directory, and matches only that directory's tokens.
#[test]
fn directories_are_not_interchangeable() {
    // One directory: the grants are its own; a token of another directory matches none.
    let s = compile_for(DOC, &[TID]).expect("one directory");
    let from_b = |groups: &'static [GroupId]| Subject {
        tid: tid(OTHER_TID),
        oid: obj(BOB),
        upn: None,
        groups,
    };
    let admins = Box::leak(Box::new(groups(&[ADMINS])));
    let eng = Box::leak(Box::new(groups(&[ENG])));
    for g in [&*admins, &*eng] {
        assert_eq!(
            result(&s, &from_b(g), &facts("github", "initialize", None)),
            Err(DenyReason::NoGrant),
            "{g:?}"
        );
    }
    assert!(result(&s, &who(BOB, eng), &facts("github", "initialize", None)).is_ok());
    assert!(result(&s, &who(BOB, admins), &facts("github", "initialize", None)).is_ok());

    // Several directories: every unscoped group grant and admin is refused, named.
    let err = compile_for(DOC, &[TID, OTHER_TID]).expect_err("unscoped grants");
    let unscoped: Vec<_> = err
        .0
        .iter()
        .filter(|p| p.contains("must name its directory (tid)"))
        .collect();
    assert_eq!(unscoped.len(), 4, "{err}");
    // Scoped, each matches its own directory only; a tid that is not allowed is refused.
    let scoped = DOC
        .replace(
            &format!("groups: [\"{ADMINS}\"]"),
            &format!("groups: [{{group: \"{ADMINS}\", tid: \"{TID}\"}}]"),
        )
        .replace("  - {group: ", &format!("  - {{tid: \"{TID}\", group: "));
    let s = compile_for(&scoped, &[TID, OTHER_TID]).expect("scoped");
    for g in [&*admins, &*eng] {
        assert_eq!(
            result(&s, &from_b(g), &facts("github", "initialize", None)),
            Err(DenyReason::NoGrant)
        );
    }
    assert!(result(&s, &who(BOB, admins), &facts("github", "initialize", None)).is_ok());
    let err = compile_for(
        &scoped,
        &[OTHER_TID, "c0000000-0000-4000-8000-00000000000c"],
    )
    .expect_err("tid of a directory not allowed");
    assert!(
        err.0
            .iter()
            .any(|p| p.contains("is not an allowed directory")),
        "{err}"
    );
}

mod shadow;
mod upstream;
