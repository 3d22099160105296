//! Shadow (dry-run) mode through real Envoy with the policy in PostgreSQL: the policy's
//! denials on a shadowed server are allowed, audited and counted as `would_deny` with their
//! reason; authentication, request checks, unknown and disabled servers, and sensitive servers
//! are never shadowed.

use crate::support::helpers::*;
use crate::support::pg::TestDb;

const SHADOW_POLICY: &str = r#"
shadow_all_servers: true
tenants:
  - name: engineering
    servers: [github, jira]
servers:
  - name: github
  - name: jira
    sensitive: true
  - name: legacy
    enabled: false
group_grants:
  - group: "e0000000-0000-4000-8000-0000000000e1"
    tenant: engineering
    access_level: write
tool_rules:
  - server: github
    tool: "delete_*"
    effect: deny
  - server: jira
    tool: "delete_*"
    effect: deny
"#;

fn call(id: u64, tool: &str) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": {"name": "x"}}})
    .to_string()
}

#[tokio::test]
async fn shadow_mode_allows_and_records_policy_denials_only() {
    let db = TestDb::create().await;
    db.import(SHADOW_POLICY, false).await;
    let env = TestEnv::start(Options {
        database_url: Some(db.url.clone()),
        extra_config: "audit: {sink: postgres, queue_capacity: 1000, batch_size: 10}\n".into(),
        ..Options::default()
    })
    .await;
    let eng = env.user_token(BOB, &[ENG_GROUP]);
    let nobody = env.user_token(CAROL, &[]);

    // A denied tool on the shadowed server runs, as the policy would not have let it.
    let sid = env.open_session("/mcp/github", &eng).await;
    let r = env
        .post(
            "/mcp/github",
            Some(&eng),
            &call(2, "delete_repository"),
            &[("mcp-session-id", &sid)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        env.upstream_log()
            .await
            .executed
            .contains(&"delete_repository".to_string())
    );
    // A user with no grant at all reaches it too, as tenant "shadow" at level read.
    let sid = env.open_session("/mcp/github", &nobody).await;
    let r = env
        .post(
            "/mcp/github",
            Some(&nobody),
            &call(2, "whoami"),
            &[("mcp-session-id", &sid)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains(r#"\"x-mcp-tenant\":\"shadow\""#),
        "{}",
        r.body
    );
    assert!(
        r.body.contains(r#"\"x-mcp-access-level\":\"read\""#),
        "{}",
        r.body
    );

    // Never shadowed: no token, a body the upstream would read otherwise, a sensitive server,
    // a disabled one, an unknown one.
    let r = env.post("/mcp/github", None, &call(3, "echo"), &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = env
        .post(
            "/mcp/github",
            Some(&eng),
            &call(4, "delete_repository"),
            &[("content-type", "application/json; charset=utf-16")],
        )
        .await;
    assert_eq!(r.status, 415, "{r:?}");
    let r = env
        .post("/mcp/jira", Some(&eng), &call(5, "delete_issue"), &[])
        .await;
    assert_eq!((r.status, r.reason()), (403, "tool_denied"), "{r:?}");
    let r = env
        .post("/mcp/legacy", Some(&eng), &initialize_body(6), &[])
        .await;
    assert_eq!((r.status, r.reason()), (403, "server_disabled"), "{r:?}");
    let r = env
        .post("/mcp/nosuch", Some(&eng), &initialize_body(7), &[])
        .await;
    assert_eq!(r.reason(), "unknown_server", "{r:?}");

    // Loud: /status names the shadowed servers, the metrics count would_deny by reason.
    let status = env.status().await;
    assert_eq!(
        status["policy"]["shadow_servers"],
        serde_json::json!(["github"])
    );
    let metrics = scrape_metrics(&env.http, env.authz.admin).await;
    assert!(
        metrics.contains("mcp_authz_policy_shadow_servers 1"),
        "{metrics}"
    );
    for reason in ["tool_denied", "no_grant"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("mcp_authz_decisions_total")
                    && l.contains(r#"result="would_deny""#)
                    && l.contains(&format!(r#"reason="{reason}""#))),
            "no would_deny/{reason} in\n{metrics}"
        );
    }

    // The audit trail keeps them apart from allows, with the policy's reason.
    wait_until(
        "would_deny audit rows",
        std::time::Duration::from_secs(10),
        || {
            let pool = db.pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM audit_events WHERE result = 'would_deny'",
                )
                .fetch_one(&pool)
                .await
                .unwrap_or(0)
                    >= 4
            }
        },
    )
    .await;
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT DISTINCT reason, tenant, tool FROM audit_events WHERE result = 'would_deny' ORDER BY 1, 3",
    )
    .fetch_all(&db.pool)
    .await
    .expect("rows");
    assert!(
        rows.contains(&(
            "tool_denied".into(),
            "shadow".into(),
            Some("delete_repository".into())
        )),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|(reason, _, _)| reason == "no_grant"),
        "{rows:?}"
    );

    // Shadow mode off (a row change): the same call is refused within the reload.
    sqlx::query("UPDATE policy_settings SET shadow_all_servers = false")
        .execute(&db.pool)
        .await
        .expect("update");
    wait_until(
        "shadow mode off",
        std::time::Duration::from_secs(5),
        || async {
            env.post(
                "/mcp/github",
                Some(&eng),
                &call(8, "delete_repository"),
                &[],
            )
            .await
            .status
                == 403
        },
    )
    .await;
    assert_eq!(
        env.status().await["policy"]["shadow_servers"],
        serde_json::json!([])
    );
    // A sensitive server cannot be put in shadow mode: the database refuses the row.
    let refused = sqlx::query("UPDATE mcp_servers SET shadow = true WHERE name = 'jira'")
        .execute(&db.pool)
        .await;
    assert!(refused.err().is_some_and(|e| {
        e.to_string()
            .contains("mcp_servers_sensitive_never_shadowed")
    }),);
}
