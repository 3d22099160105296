//! PostgreSQL policy, live reload, outage, operator CLI and audit trail, on a real PostgreSQL.

use std::time::{Duration, Instant};

use mcp_authz::audit::{AuditEvent, Auditor, Sink};
use mcp_authz::cli;
use mcp_authz::config::Config;
use mcp_authz::policy::PolicyDocument;

use crate::support::helpers::*;
use crate::support::pg::TestDb;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-authz");

fn doc(text: &str) -> PolicyDocument {
    serde_yaml_ng::from_str(text).expect("policy yaml")
}

async fn import(db: &TestDb, text: &str, dry_run: bool) -> Vec<String> {
    db.import(text, dry_run).await
}

fn db_cfg(authority: &str, db: &TestDb) -> Config {
    Config::parse(&db_config_yaml(authority, &db.url, false), Vec::new()).expect("config")
}

#[tokio::test]
async fn constraints_make_bad_rows_impossible() {
    let db = TestDb::create().await;
    db.exec("INSERT INTO tenants (name) VALUES ('eng'); INSERT INTO mcp_servers (name, route_key) VALUES ('github', 'github')").await;
    for (sql, needle) in [
        (
            "INSERT INTO group_tenants (entra_group_id, tenant, access_level) VALUES ('e0000000-0000-4000-8000-0000000000e1', 'eng', 'root')",
            "check constraint",
        ),
        (
            "INSERT INTO group_tenants (entra_group_id, tenant, access_level) VALUES ('engineers', 'eng', 'read')",
            "invalid input syntax for type uuid",
        ),
        (
            "INSERT INTO group_tenants (entra_group_id, tenant, access_level) VALUES ('e0000000-0000-4000-8000-0000000000e1', 'nope', 'read')",
            "foreign key",
        ),
        (
            "INSERT INTO tenant_servers (tenant, server) VALUES ('eng', 'gitlab')",
            "foreign key",
        ),
        (
            "INSERT INTO tool_rules (server, tool_pattern, effect) VALUES ('github', 'delete repo', 'deny')",
            "check constraint",
        ),
        (
            "INSERT INTO tool_rules (server, tool_pattern, effect) VALUES ('github', 'x', 'maybe')",
            "check constraint",
        ),
        (
            "INSERT INTO tenants (name) VALUES ('has space')",
            "check constraint",
        ),
        (
            "UPDATE mcp_servers SET description = E'two\\nlines' WHERE name = 'github'",
            "check constraint",
        ),
        (
            "UPDATE mcp_servers SET description = '' WHERE name = 'github'",
            "check constraint",
        ),
        (
            "INSERT INTO mcp_servers (name, route_key, token_forwarding) VALUES ('s', 's', 'everything')",
            "check constraint",
        ),
        (
            "INSERT INTO user_tenants (tenant, access_level) VALUES ('eng', 'read')",
            "check constraint",
        ),
        (
            "INSERT INTO policy_version (singleton) VALUES (true)",
            "duplicate key",
        ),
        // The upstream: endpoints of the allowed forms, 1 to 16, no quoting characters.
        (
            "UPDATE mcp_servers SET upstream_endpoints = ARRAY['gh-mcp'] WHERE name = 'github'",
            "check constraint",
        ),
        (
            "UPDATE mcp_servers SET upstream_endpoints = ARRAY['a:1,b:2'] WHERE name = 'github'",
            "check constraint",
        ),
        (
            "UPDATE mcp_servers SET upstream_endpoints = '{}' WHERE name = 'github'",
            "check constraint",
        ),
        (
            "UPDATE mcp_servers SET upstream_endpoints = ARRAY['a:1', NULL] WHERE name = 'github'",
            "check constraint",
        ),
        (
            "UPDATE mcp_servers SET upstream_endpoints = array_fill('a:1'::text, ARRAY[17]) WHERE name = 'github'",
            "check constraint",
        ),
        (
            "UPDATE mcp_servers SET upstream_endpoints = ARRAY[ARRAY['a:1'], ARRAY['b:2']] WHERE name = 'github'",
            "check constraint",
        ),
        // Upstream fields without endpoints, a certificate without its key.
        (
            "UPDATE mcp_servers SET upstream_path = '/mcp' WHERE name = 'github'",
            "mcp_servers_upstream_fields_need_endpoints",
        ),
        (
            "UPDATE mcp_servers SET upstream_enabled = false WHERE name = 'github'",
            "mcp_servers_upstream_fields_need_endpoints",
        ),
        (
            "UPDATE mcp_servers SET upstream_endpoints = ARRAY['https://gh:443'], upstream_client_cert_file = '/etc/tls.crt' WHERE name = 'github'",
            "mcp_servers_upstream_client_cert_pair",
        ),
        (
            "UPDATE mcp_servers SET upstream_endpoints = ARRAY['gh:80'], upstream_ca_file = 'ca.pem' WHERE name = 'github'",
            "check constraint",
        ),
        (
            "UPDATE mcp_servers SET upstream_endpoints = ARRAY['gh:80'], upstream_connect_timeout_ms = 0 WHERE name = 'github'",
            "check constraint",
        ),
        (
            "UPDATE mcp_servers SET upstream_endpoints = ARRAY['gh:80'], upstream_path = 'mcp' WHERE name = 'github'",
            "check constraint",
        ),
    ] {
        let e = db.exec_err(sql).await;
        assert!(e.contains(needle), "{sql}: {e}");
    }
    db.exec("UPDATE mcp_servers SET upstream_endpoints = ARRAY['gh-a:8080', 'http://[::1]:8080', 'https://gh.internal/mcp'] WHERE name = 'github'").await;
    // Issue 14: an admin group names its directory (with several allowed, it must), so the
    // first migration's rule against a directory on admin groups is gone.
    db.exec("INSERT INTO admins (kind, entra_id, directory_tid) VALUES ('group', 'a0000000-0000-4000-8000-00000000ad01', '3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c')").await;
    db.exec("INSERT INTO group_tenants (entra_group_id, tenant, access_level) VALUES ('E0000000-0000-4000-8000-0000000000E1', 'eng', 'read')").await;
    let dup = db.exec_err("INSERT INTO group_tenants (entra_group_id, tenant, access_level) VALUES ('e0000000-0000-4000-8000-0000000000e1', 'eng', 'write')").await;
    assert!(
        dup.contains("duplicate key"),
        "the same group granted the same tenant twice: {dup}"
    );
    // Every policy change bumps the version.
    let v1: i64 = sqlx::query_scalar("SELECT version FROM policy_version")
        .fetch_one(&db.pool)
        .await
        .expect("v");
    db.exec("UPDATE tenants SET enabled = false").await;
    let v2: i64 = sqlx::query_scalar("SELECT version FROM policy_version")
        .fetch_one(&db.pool)
        .await
        .expect("v");
    assert_eq!(v2, v1 + 1);
}

#[tokio::test]
async fn import_is_transactional_idempotent_and_dry_run_writes_nothing() {
    let db = TestDb::create().await;
    let dry = import(&db, POLICY, true).await;
    assert!(dry.len() > 10, "{dry:?}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(count, 0, "dry run wrote rows");

    let first = import(&db, POLICY, false).await;
    assert_eq!(first, dry, "dry run shows exactly what the import does");
    assert!(first.iter().any(|c| c == "+ group_tenants entra_group_id=e0000000-0000-4000-8000-0000000000e1 directory_tid=NULL tenant=engineering access_level=write"), "{first:?}");
    assert!(
        import(&db, POLICY, false).await.is_empty(),
        "a second import changes nothing"
    );

    // A change shows as the exact diff.
    let edited = POLICY.replace(
        "tenant: sales\n    access_level: read",
        "tenant: sales\n    access_level: write",
    );
    let diff = import(&db, &edited, true).await;
    assert_eq!(diff, vec!["~ group_tenants entra_group_id=50000000-0000-4000-8000-000000000051 directory_tid=NULL tenant=sales access_level=write (was entra_group_id=50000000-0000-4000-8000-000000000051 directory_tid=NULL tenant=sales access_level=read)".to_string()]);

    // Export → import of the export is a no-op (round trip).
    let (_, exported) = mcp_authz::policy::postgres::read_document(&db.pool)
        .await
        .expect("read");
    let yaml = serde_yaml_ng::to_string(&exported).expect("yaml");
    assert!(
        import(&db, &yaml, true).await.is_empty(),
        "export does not round-trip:\n{yaml}"
    );

    // A document that does not compile is refused before the database is touched.
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "tenants: [{name: t, servers: [missing]}]").expect("write");
    let (_, url) = standin().await;
    let err = cli::import(&db_cfg(&url, &db), &bad, false, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown server \"missing\""),
        "{err:#}"
    );
    assert!(
        import(&db, POLICY, true).await.is_empty(),
        "the refused import changed the database"
    );
}

// Multi-threaded: the test runs the binary with blocking calls while the stand-in serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_migrate_export_import_and_explain() {
    let (_a, url) = standin().await;
    let (admin, _server) = TestDb::admin();
    let db_url = TestDb::create_empty_on(&admin).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, db_config_yaml(&url, &db_url, false)).expect("config");
    let policy = dir.path().join("policy.yaml");
    // github with an upstream: export and import carry it, explain shows its route.
    let with_upstream = POLICY.replacen(
        "  - name: github\n",
        "  - name: github\n    upstream: {endpoints: [\"https://gh-mcp.internal:8443/mcp\"], host: gh.example, connect_timeout_ms: 800}\n",
        1,
    );
    assert_ne!(with_upstream, POLICY);
    std::fs::write(&policy, &with_upstream).expect("policy");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, _) = run(&["check-config"]);
    assert_eq!(code, Some(1));
    assert!(stdout.contains("migrations pending"), "{stdout}");

    let (code, stdout, stderr) = run(&["migrate"]);
    assert_eq!(code, Some(0), "{stderr}");
    let all = mcp_authz::db::MIGRATOR.iter().count();
    assert!(
        stdout.contains(&format!("applied {all} migrations")),
        "{stdout}"
    );
    let (code, stdout, _) = run(&["migrate"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("applied 0 migrations"), "{stdout}");

    let (code, stdout, stderr) = run(&[
        "policy",
        "import",
        policy.to_str().expect("path"),
        "--dry-run",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("(dry run: nothing written)"), "{stdout}");
    let (code, stdout, _) = run(&["policy", "import", policy.to_str().expect("path")]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("+ tenants name=engineering enabled=true"),
        "{stdout}"
    );

    let (code, stdout, _) = run(&["check-config"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("migrations current"), "{stdout}");
    assert!(stdout.contains("ok    policy postgres"), "{stdout}");

    let (code, exported, _) = run(&["policy", "export"]);
    assert_eq!(code, Some(0));
    assert!(
        exported.contains("https://gh-mcp.internal:8443/mcp")
            && exported.contains("connect_timeout_ms: 800"),
        "{exported}"
    );
    let reimport = dir.path().join("exported.yaml");
    std::fs::write(&reimport, &exported).expect("write");
    let (_, stdout, _) = run(&[
        "policy",
        "import",
        reimport.to_str().expect("path"),
        "--dry-run",
    ]);
    assert!(stdout.contains("would change 0 rows"), "{stdout}");

    // explain: allowed through a user grant, the row named by its id.
    let (code, stdout, _) = run(&[
        "explain", "--user", ALICE, "--server", "github", "--tool", "echo",
    ]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("decision: ALLOW as tenant engineering with access level admin"),
        "{stdout}"
    );
    assert!(stdout.contains("user_tenants id="), "{stdout}");
    assert!(
        stdout.contains("route:    /mcp/github -> cluster mcp-server/github (TLS, gh-mcp.internal:8443), path rewritten to /mcp, Host gh.example"),
        "{stdout}"
    );
    // Denied tool: exit 2, the rule's row named.
    let (code, stdout, _) = run(&[
        "explain",
        "--user",
        BOB,
        "--group",
        ENG_GROUP,
        "--server",
        "github",
        "--tool",
        "delete_repository",
    ]);
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stdout.contains("decision: DENY (tool_denied)"), "{stdout}");
    assert!(stdout.contains("tool_rules id="), "{stdout}");
    let (code, stdout, _) = run(&[
        "explain",
        "--user",
        CAROL,
        "--group",
        SALES_GROUP,
        "--server",
        "github",
    ]);
    assert_eq!(code, Some(2));
    assert!(stdout.contains("DENY (server_not_granted)"), "{stdout}");
    // explain --list: what Bob would see of a saved tools/list answer, and why each hidden
    // tool is hidden (the row that refuses its call).
    let answer = dir.path().join("tools.json");
    std::fs::write(
        &answer,
        r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},{"name":"delete_repository"}]}}"#,
    )
    .expect("write answer");
    let (code, stdout, stderr) = run(&[
        "explain",
        "--user",
        BOB,
        "--group",
        ENG_GROUP,
        "--server",
        "github",
        "--list",
        "tools",
        "--items",
        answer.to_str().expect("path"),
        "--item",
        "whoami",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("  shown   echo"), "{stdout}");
    assert!(stdout.contains("  shown   whoami"), "{stdout}");
    assert!(
        stdout.contains("  hidden  delete_repository: tools/call delete_repository is refused (tool_denied); rows:")
            && stdout.contains("tool_rules id="),
        "{stdout}"
    );
    assert!(stdout.contains("list:     2 of 3 shown"), "{stdout}");
    let (code, _, stderr) = run(&[
        "explain", "--user", BOB, "--server", "github", "--list", "tools",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no items"), "{stderr}");
}

/// A committed change takes effect on every replica within 1 s (p99); measured with two
/// instances on one database.
#[tokio::test]
async fn live_reload_reaches_two_replicas_within_a_second() {
    let db = TestDb::create().await;
    import(&db, POLICY, false).await;
    let (_a, url) = standin().await;
    let cfg = db_config_yaml(&url, &db.url, false);
    let replicas = [Instance::start(&cfg).await, Instance::start(&cfg).await];
    let mut latencies = Vec::new();
    for i in 0..30 {
        let sql = format!(
            "UPDATE tenants SET enabled = {} WHERE name = 'sales'",
            i % 2 == 1
        );
        let committed = Instant::now();
        db.exec(&sql).await;
        let v: i64 = sqlx::query_scalar("SELECT version FROM policy_version")
            .fetch_one(&db.pool)
            .await
            .expect("v");
        let want = format!("db-{v}");
        let mut pending = vec![0usize, 1];
        while !pending.is_empty() {
            assert!(
                committed.elapsed() < Duration::from_secs(5),
                "replicas never saw {want}"
            );
            let mut still = Vec::new();
            for r in pending {
                if replicas[r].readyz().await["policy_version"] != want {
                    still.push(r);
                }
            }
            pending = still;
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        latencies.push(committed.elapsed());
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    println!(
        "policy reload latency on both replicas over {} changes: p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies.len(),
        latencies.last()
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test]
async fn rows_that_do_not_compile_are_reported_and_the_last_good_policy_serves() {
    let db = TestDb::create().await;
    import(&db, POLICY, false).await;
    let (a, url) = standin().await;
    let inst = Instance::start(&db_config_yaml(&url, &db.url, false)).await;
    let good = inst.readyz().await["policy_version"].clone();
    // A upn-only grant without allow_upn_grants: SQL accepts it, the compiler does not.
    db.exec("INSERT INTO user_tenants (upn, tenant, access_level) VALUES ('eve@contoso.example', 'engineering', 'admin')").await;
    wait_until("rejection counted", Duration::from_secs(5), || {
        let s = inst.status();
        async move { s.await["policy"]["rejected"] == 1 }
    })
    .await;
    assert_eq!(
        inst.readyz().await["policy_version"],
        good,
        "the last good snapshot keeps serving"
    );
    let mut checker = Checker::connect(inst.addrs.grpc.expect("grpc")).await;
    let bob = mint_user(&a, BOB, &[ENG_GROUP]);
    let r = checker
        .check(Some(&bob), "github", &initialize_body(1), None)
        .await
        .expect("check");
    assert_eq!(r.http_status, 200);

    let mut out = Vec::new();
    let ok =
        mcp_authz::cli::check_config(&db_cfg(&url, &db), std::path::Path::new("cfg"), &mut out)
            .await;
    let out = String::from_utf8_lossy(&out);
    assert!(!ok);
    assert!(
        out.contains("FAIL  policy") && out.contains("allow_upn_grants"),
        "{out}"
    );

    // Outside review: one bad row froze every later change, revocations included, with only
    // a log line. It is loud: /status names the refused version and its age, and the metrics
    // an alert reads say so, until a later version compiles.
    let status = inst.status().await;
    let failing = &status["policy"]["failing"];
    assert!(
        failing["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("db-"))
            && failing["version"] != good,
        "{status}"
    );
    assert_eq!(failing["problem_count"], 1, "{status}");
    assert!(
        failing["age_seconds"].as_f64().is_some_and(|a| a >= 0.0),
        "{status}"
    );
    let metrics = scrape_metrics(&inst.http, inst.addrs.admin).await;
    assert!(
        metrics.contains("mcp_authz_policy_reload_failing 1"),
        "{metrics}"
    );
    db.exec("DELETE FROM user_tenants WHERE upn = 'eve@contoso.example' AND user_oid IS NULL")
        .await;
    wait_until(
        "a compiling version clears the failure",
        Duration::from_secs(5),
        || {
            let s = inst.status();
            async move { s.await["policy"]["failing"].is_null() }
        },
    )
    .await;
    let metrics = scrape_metrics(&inst.http, inst.addrs.admin).await;
    assert!(
        metrics.contains("mcp_authz_policy_reload_failing 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mcp_authz_policy_reload_failing_seconds 0"),
        "{metrics}"
    );
}

/// `policy import` refuses rows that would not compile before they are committed: called with
/// a document the compiler refuses, the database is left as it was.
#[tokio::test]
async fn import_refuses_rows_that_would_not_compile_before_committing() {
    let db = TestDb::create().await;
    import(&db, POLICY, false).await;
    let before: i64 = sqlx::query_scalar("SELECT version FROM policy_version")
        .fetch_one(&db.pool)
        .await
        .expect("version");
    // A upn-only grant without allow_upn_grants, as in the test above.
    let bad = doc(&POLICY.replace(
        "user_grants:\n",
        "user_grants:\n  - upn: mallory@contoso.example\n    tenant: engineering\n    access_level: admin\n",
    ));
    for dry_run in [true, false] {
        let err =
            mcp_authz::policy::postgres::import_document(&db.pool, &bad, dry_run, &directories())
                .await
                .expect_err("refused");
        assert!(err.to_string().contains("would not compile"), "{err}");
    }
    let after: i64 = sqlx::query_scalar("SELECT version FROM policy_version")
        .fetch_one(&db.pool)
        .await
        .expect("version");
    assert_eq!(before, after, "nothing was committed");
    let upn_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM user_tenants WHERE user_oid IS NULL")
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert_eq!(upn_rows, 0);
}

/// PostgreSQL stopped and restarted under traffic: every decision stays right, none fails,
/// and live reload resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_keeps_deciding_and_reload_resumes() {
    let db = TestDb::create_private().await;
    import(&db, POLICY, false).await;
    let (a, url) = standin().await;
    let inst = Instance::start(&db_config_yaml(&url, &db.url, false)).await;
    let addr = inst.addrs.grpc.expect("grpc");
    let bob = mint_user(&a, BOB, &[ENG_GROUP]);
    let carol = mint_user(&a, CAROL, &[SALES_GROUP]);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, bob, carol) = (stop.clone(), bob.clone(), carol.clone());
        tokio::spawn(async move {
            let mut checker = Checker::connect(addr).await;
            let (mut total, mut wrong, mut failed) = (0u32, 0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (token, want) in [(&bob, 200u16), (&carol, 403u16)] {
                    total += 1;
                    match checker
                        .check(Some(token), "github", &initialize_body(1), None)
                        .await
                    {
                        Ok(r) if r.http_status == want => {}
                        Ok(_) => wrong += 1,
                        Err(_) => failed += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (total, wrong, failed)
        })
    };
    let server = db.server.as_ref().expect("private server");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        inst.is_ready().await,
        "still ready while the database is down (a snapshot is loaded)"
    );
    server.resume();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (total, wrong, failed) = traffic.await.expect("traffic");
    println!("outage: {total} checks, {wrong} wrong, {failed} failed");
    assert!(total > 100, "too little traffic: {total}");
    assert_eq!((wrong, failed), (0, 0));

    // Live reload resumes after the restart.
    let granted = Instant::now();
    let pool = sqlx::PgPool::connect(&db.url).await.expect("reconnect");
    sqlx::query("INSERT INTO tenant_servers (tenant, server) VALUES ('sales', 'github')")
        .execute(&pool)
        .await
        .expect("grant");
    let mut checker = Checker::connect(addr).await;
    loop {
        let r = checker
            .check(Some(&carol), "github", &initialize_body(1), None)
            .await
            .expect("check");
        if r.http_status == 200 {
            break;
        }
        assert!(
            granted.elapsed() < Duration::from_secs(15),
            "reload did not resume: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("reload after restart took {:?}", granted.elapsed());
    assert!(
        inst.status().await["policy"]["reloads"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_loaded_policy_means_not_ready() {
    let db = TestDb::create_private().await;
    import(&db, POLICY, false).await;
    db.server.as_ref().expect("server").stop();
    let (_a, url) = standin().await;
    let inst = Instance::start_with(&db_config_yaml(&url, &db.url, false), false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = inst.readyz().await;
    assert_eq!(ready["policy_loaded"], false, "{ready}");
    assert!(!inst.is_ready().await);
    db.server.as_ref().expect("server").resume();
    wait_until(
        "ready after the database returns",
        Duration::from_secs(20),
        || inst.is_ready(),
    )
    .await;
}

#[tokio::test]
async fn audit_events_arrive_for_every_decision() {
    let db = TestDb::create().await;
    import(&db, POLICY, false).await;
    let (a, url) = standin().await;
    let inst = Instance::start(&db_config_yaml(&url, &db.url, true)).await;
    let mut checker = Checker::connect(inst.addrs.grpc.expect("grpc")).await;
    let bob = mint_user(&a, BOB, &[ENG_GROUP]);
    let carol = mint_user(&a, CAROL, &[SALES_GROUP]);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for i in 0..300 {
        let (token, body) = match i % 3 {
            0 => (Some(bob.as_str()), tool_call_body(i, "echo")),
            1 => (Some(carol.as_str()), initialize_body(i)),
            _ => (None, initialize_body(i)),
        };
        checker
            .check(token, "github", &body, Some(traceparent))
            .await
            .expect("check");
    }
    db.wait_for_audit_rows(300).await;
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT result, reason, count(*) FROM audit_events GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .expect("rows");
    assert_eq!(
        rows,
        vec![
            ("allow".to_string(), "allowed".to_string(), 100),
            ("deny".to_string(), "server_not_granted".to_string(), 100),
            ("deny".to_string(), "token_missing".to_string(), 100),
        ]
    );
    type Row5 = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let (tool, oid, tenant, trace, version): Row5 = sqlx::query_as(
        "SELECT tool, user_oid::text, tenant, trace_id, policy_version FROM audit_events WHERE result = 'allow' LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("row");
    assert_eq!(tool.as_deref(), Some("echo"));
    assert_eq!(oid.as_deref(), Some(BOB));
    assert_eq!(tenant.as_deref(), Some("engineering"));
    assert_eq!(trace.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert!(version.is_some_and(|v| v.starts_with("db-")));
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT decision_id) FROM audit_events")
        .fetch_one(&db.pool)
        .await
        .expect("n");
    assert_eq!(distinct, 300);
    let status = inst.status().await;
    assert_eq!(status["audit"]["written"], 300);
    assert_eq!(status["audit"]["dropped_queue_full"], 0);
}

fn event(i: u64) -> AuditEvent {
    crate::support::pg::audit_event(mcp_authz::clock::unix_seconds_f64(), &format!("t{i}"))
}

/// A full queue drops and counts, never blocks; every event is either written or counted as
/// dropped, and the table holds exactly the written ones (no half batches).
#[tokio::test]
async fn audit_drops_are_counted_when_the_queue_is_full_or_the_database_down() {
    use std::sync::atomic::Ordering::Relaxed;
    let db = TestDb::create().await;
    let (auditor, writer) = Auditor::start(Sink::Postgres(db.pool.clone()), 16, 8);
    let started = Instant::now();
    for i in 0..5000 {
        auditor.record(event(i));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "record() must not block"
    );
    let stats = auditor.stats.clone();
    drop(auditor);
    writer.await.expect("writer drains and ends");
    let (written, dropped) = (stats.written.load(Relaxed), stats.dropped());
    assert!(
        stats.dropped_queue_full.load(Relaxed) > 0,
        "5000 events into a queue of 16 must overflow"
    );
    assert_eq!(written + dropped, 5000);
    let in_table: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&db.pool)
        .await
        .expect("n");
    assert_eq!(in_table as u64, written);

    // The database down: batches fail whole and are counted.
    let dead = format!("postgres://postgres@{}/none", closed_addr().await);
    let dead_pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy(&dead)
        .expect("lazy pool");
    let (auditor, writer) = Auditor::start(Sink::Postgres(dead_pool), 100, 10);
    for i in 0..50 {
        auditor.record(event(i));
    }
    let stats = auditor.stats.clone();
    drop(auditor);
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("writer ends")
        .expect("join");
    assert_eq!(stats.written.load(Relaxed), 0);
    assert_eq!(stats.dropped(), 50);
    assert!(stats.dropped_sink_error.load(Relaxed) > 0);
}

#[tokio::test]
async fn migrations_can_run_at_start() {
    let (admin, _server) = TestDb::admin();
    let url = TestDb::create_empty_on(&admin).await;
    let (_a, idp) = standin().await;
    let cfg = db_config_yaml(&idp, &url, true).replace(
        "statement_timeout_ms: 2000}",
        "statement_timeout_ms: 2000, migrate_on_start: true}",
    );
    assert!(cfg.contains("migrate_on_start: true"));
    let inst = Instance::start(&cfg).await;
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let (applied, pending) = mcp_authz::db::migration_status(&pool)
        .await
        .expect("status");
    let all = mcp_authz::db::MIGRATOR.iter().count();
    assert_eq!((applied.len(), pending.len()), (all, 0));
    assert_eq!(
        inst.readyz().await["policy_version"],
        "db-1",
        "an empty policy is a valid policy"
    );
    inst.stop().await;
}

/// Rate limits live in rows too: tenants' caps, weights and bursts, the global budget and
/// per-user default in `policy_settings`, per-tool limits in `tool_limits`. They round-trip
/// exactly, and the constraints refuse nonsense.
#[tokio::test]
async fn rate_limits_round_trip_through_the_database() {
    let db = TestDb::create().await;
    let text = format!(
        "{POLICY}rate_limits:\n  global_per_minute: 60000\n  global_burst_factor: 1.25\n  user_per_minute: 600\n  tools:\n    - {{server: github, tool: \"merge_*\", user_per_minute: 10, burst_factor: 0.5}}\n"
    )
    .replace(
        "  - name: sales\n",
        "  - name: sales\n    rate_limit_per_minute: 1200\n    fairness_weight: 3\n    burst_factor: 2\n",
    );
    let changes = import(&db, &text, false).await;
    assert!(
        changes.iter().any(|c| c.starts_with(
            "+ tool_limits server=github tool_pattern=merge_* user_per_minute=10 burst_factor=0.50"
        )),
        "{changes:?}"
    );
    let (_, read) = mcp_authz::policy::postgres::read_document(&db.pool)
        .await
        .expect("read");
    let mut limits = read.rate_limits.clone();
    limits.tools.iter_mut().for_each(|t| t.id = None);
    assert_eq!(limits, doc(&text).rate_limits);
    let sales = read
        .tenants
        .iter()
        .find(|t| t.name == "sales")
        .expect("sales");
    assert_eq!(
        (
            sales.rate_limit_per_minute,
            sales.fairness_weight,
            sales.burst_factor
        ),
        (Some(1200), 3, 2.0)
    );
    assert!(import(&db, &text, false).await.is_empty(), "not idempotent");
    let yaml = serde_yaml_ng::to_string(&read).expect("yaml");
    assert!(
        import(&db, &yaml, true).await.is_empty(),
        "export does not round-trip:\n{yaml}"
    );

    for bad in [
        "UPDATE tenants SET fairness_weight = 0",
        "UPDATE tenants SET fairness_weight = 1001",
        "UPDATE tenants SET burst_factor = 0",
        "UPDATE policy_settings SET user_rate_limit_per_minute = -1",
        "INSERT INTO tool_limits (server, tool_pattern, user_per_minute) VALUES ('github', 'a b', 1)",
        "INSERT INTO tool_limits (server, tool_pattern, user_per_minute) VALUES ('nope', 'x', 1)",
    ] {
        db.exec_err(bad).await;
    }
}

/// Attack (outside review): a JSON-RPC `method` of "\u0000" sent without a token made the
/// batch INSERT fail (PostgreSQL text cannot hold NUL) and dropped the whole batch, legitimate
/// events with it: ~50 such requests a second erased 833 of 881 events. Through Envoy, hostile
/// and legitimate requests interleaved: every legitimate event is stored, the hostile ones are
/// stored cleaned, bounded and marked unauthenticated.
#[tokio::test]
async fn hostile_fields_cannot_erase_the_audit_trail() {
    let db = TestDb::create().await;
    import(&db, POLICY, false).await;
    let env = TestEnv::start(Options {
        database_url: Some(db.url.clone()),
        extra_config: "audit: {sink: postgres, queue_capacity: 10000, batch_size: 50}\n".into(),
        ..Options::default()
    })
    .await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let sid = env.open_session("/mcp/github", &token).await;
    let session = [("mcp-session-id", sid.as_str())];
    let nul = r#"{"jsonrpc":"2.0","id":1,"method":"\u0000"}"#.to_string();
    let long = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{}\u0000x"}}}}"#,
        "t".repeat(10_000)
    );
    for i in 0..60u64 {
        let r = env
            .post(
                "/mcp/github",
                Some(&token),
                &tool_call_body(i, "echo"),
                &session,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let hostile = if i % 2 == 0 { &nul } else { &long };
        let r = env.post("/mcp/github", None, hostile, &[]).await;
        assert_eq!(r.status, 401, "{r:?}");
        // The same NUL from an authenticated client.
        let r = env
            .post(
                "/mcp/github",
                Some(&token),
                &tool_call_body(i, "ech\u{0}o"),
                &session,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    // 180, and the session's initialize and notifications/initialized.
    db.wait_for_audit_rows(182).await;
    type Row = (bool, String, Option<String>, Option<String>, i64);
    let mut rows: Vec<Row> = sqlx::query_as(
        "SELECT authenticated, reason, method, tool, count(*) FROM audit_events WHERE method NOT LIKE '%initialize%' GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    )
    .fetch_all(&db.pool)
    .await
    .expect("rows");
    rows.sort();
    let cut = format!("{}…", "t".repeat(63));
    let mut expected: Vec<Row> = vec![
        (
            false,
            "token_missing".into(),
            Some("tools/call".into()),
            Some(cut),
            30,
        ),
        (
            false,
            "token_missing".into(),
            Some("\u{fffd}".into()),
            None,
            30,
        ),
        (
            true,
            "allowed".into(),
            Some("tools/call".into()),
            Some("echo".into()),
            60,
        ),
        (
            true,
            "allowed".into(),
            Some("tools/call".into()),
            Some("ech\u{fffd}o".into()),
            60,
        ),
    ];
    expected.sort();
    assert_eq!(rows, expected);
    let status = env.status().await;
    assert_eq!(status["audit"]["dropped_sink_error"], 0, "{status}");
    assert_eq!(status["audit"]["dropped_rejected"], 0, "{status}");
}

/// One event the database refuses (here a decision id that is not a UUID, which no request can
/// produce) costs only itself: the rest of its batch is written row by row.
#[tokio::test]
async fn a_refused_event_costs_only_itself() {
    use std::sync::atomic::Ordering::Relaxed;
    let db = TestDb::create().await;
    let (auditor, writer) = Auditor::start(Sink::Postgres(db.pool.clone()), 100, 10);
    for i in 0..30 {
        let mut e = event(i);
        if i % 10 == 3 {
            e.decision_id = "not-a-uuid".into();
        }
        auditor.record(e);
    }
    let stats = auditor.stats.clone();
    drop(auditor);
    writer.await.expect("writer drains and ends");
    assert_eq!(stats.written.load(Relaxed), 27);
    assert_eq!(stats.dropped_rejected.load(Relaxed), 3);
    assert_eq!(stats.dropped_sink_error.load(Relaxed), 0);
    let in_table: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&db.pool)
        .await
        .expect("n");
    assert_eq!(in_table, 27);
}
