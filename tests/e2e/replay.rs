//! `mcp-authz policy replay`: real decisions through Envoy, recorded by the audit trail (a
//! JSON-lines file, and PostgreSQL rows), asked again of a candidate policy.

use crate::support::helpers::*;
use crate::support::pg::TestDb;

/// The test policy with two changes: github leaves tenant engineering (its users lose it, an
/// admin keeps it), and delete_* is no longer denied on github.
fn candidate() -> String {
    let c = POLICY
        .replace("    servers: [github, jira]\n", "    servers: [jira]\n")
        .replace(
            "  - server: github\n    tool: \"delete_*\"\n    effect: deny\n",
            "",
        );
    assert_ne!(c, POLICY);
    c
}

fn call(id: u64, tool: &str) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": {"name": "x"}}})
    .to_string()
}

/// The same traffic each time: what the candidate changes is known.
async fn traffic(env: &TestEnv) {
    let bob = env.user_token(BOB, &[ENG_GROUP]); // engineering (write) through his group
    let carol = env.user_token(CAROL, &[]); // no grant at all
    let admin = env.user_token(CAROL, &[ADMIN_GROUP]);
    for (token, path, body, status) in [
        (Some(&bob), "/mcp/github", initialize_body(1), 200),
        (
            Some(&admin),
            "/mcp/github",
            call(2, "delete_repository"),
            403,
        ),
        (Some(&bob), "/mcp/jira", initialize_body(3), 200),
        (Some(&carol), "/mcp/github", initialize_body(4), 403),
        (Some(&admin), "/mcp/github", initialize_body(5), 200),
        (None, "/mcp/github", initialize_body(6), 401),
    ] {
        let r = env.post(path, token.map(String::as_str), &body, &[]).await;
        assert_eq!(r.status, status, "{path} {body}: {r:?}");
    }
}

async fn run(args: &[&str]) -> (Option<i32>, String, String) {
    run_mcp_authz(args, &[]).await
}

/// The report of both sources: bob's github initialize becomes a denial, the admin's
/// delete_repository an allow, everything else the policy decided stays; the 401 is not a
/// policy decision.
fn assert_report(out: &str) {
    assert!(out.contains("replayed   5 decisions"), "{out}");
    assert!(out.contains("unchanged  3"), "{out}");
    assert!(out.contains("allow → deny         1"), "{out}");
    assert!(out.contains("deny → allow         1"), "{out}");
    assert!(out.contains("deny, other reason   0"), "{out}");
    assert!(out.contains("1 not decided by the policy"), "{out}");
    assert!(
        out.contains("allow → deny (server_not_granted)")
            && out.contains("user 0b0b@contoso.example  server github  initialize"),
        "{out}"
    );
    assert!(
        out.contains("deny (tool_denied) → allow") && out.contains("tools/call delete_repository"),
        "{out}"
    );
}

#[tokio::test]
async fn replay_names_the_decisions_a_candidate_changes_from_a_jsonl_audit() {
    let dir = tempfile::tempdir().expect("tmp");
    let audit = dir.path().join("audit.jsonl");
    let env = TestEnv::start(Options {
        extra_config: format!(
            "audit: {{sink: jsonl, file: {}, batch_size: 1}}\n",
            audit.display()
        ),
        ..Options::default()
    })
    .await;
    traffic(&env).await;
    wait_until("6 audit lines", std::time::Duration::from_secs(10), || {
        let audit = audit.clone();
        async move {
            std::fs::read_to_string(&audit)
                .map(|t| t.lines().count() >= 6)
                .unwrap_or(false)
        }
    })
    .await;
    let cand = dir.path().join("candidate.yaml");
    std::fs::write(&cand, candidate()).expect("candidate");
    let a = audit.to_str().expect("path");
    let c = cand.to_str().expect("path");
    let (code, out, err) = run(&[
        "policy",
        "replay",
        "--candidate",
        c,
        "--audit",
        a,
        "--tenant",
        TID,
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_report(&out);
    let (code, _, _) = run(&[
        "policy",
        "replay",
        "--candidate",
        c,
        "--audit",
        a,
        "--tenant",
        TID,
        "--fail-on-change",
    ])
    .await;
    assert_eq!(code, Some(1), "--fail-on-change with changes");
    // The current policy as candidate changes nothing; a line that is no event is named.
    let same = dir.path().join("same.yaml");
    std::fs::write(&same, POLICY).expect("same");
    let mut text = std::fs::read_to_string(&audit).expect("audit");
    text.push_str("not json\n");
    std::fs::write(&audit, text).expect("append");
    let (code, out, err) = run(&[
        "policy",
        "replay",
        "--candidate",
        same.to_str().expect("path"),
        "--audit",
        a,
        "--tenant",
        TID,
        "--fail-on-change",
    ])
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("unchanged  5") && out.contains("1 lines of"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reads_the_postgresql_audit_with_its_group_sets() {
    let db = TestDb::create().await;
    db.import(POLICY, false).await;
    let env = TestEnv::start(Options {
        database_url: Some(db.url.clone()),
        extra_config: "audit: {sink: postgres, queue_capacity: 1000, batch_size: 2}\n".into(),
        ..Options::default()
    })
    .await;
    traffic(&env).await;
    db.wait_for_audit_rows(6).await;
    // One set per distinct membership: bob's, carol's (none), carol-the-admin's.
    let sets: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_group_sets")
        .fetch_one(&db.pool)
        .await
        .expect("sets");
    assert_eq!(sets, 3);
    let dir = tempfile::tempdir().expect("tmp");
    let (_a, idp) = standin().await;
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, db_config_yaml(&idp, &db.url, true)).expect("config");
    let cand = dir.path().join("candidate.yaml");
    std::fs::write(&cand, candidate()).expect("candidate");
    let (code, out, err) = run(&[
        "policy",
        "replay",
        "--candidate",
        cand.to_str().expect("path"),
        "--config",
        cfg.to_str().expect("path"),
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("PostgreSQL audit_events"), "{out}");
    assert_report(&out);
}
