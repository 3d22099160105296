//! The audit trail's month partitions and retention, and concurrent migrations, on a real
//! PostgreSQL.

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use mcp_authz::audit::{AuditEvent, Auditor, Sink};
use mcp_authz::db::MIGRATOR;
use sqlx::PgPool;

use crate::support::helpers::*;
use crate::support::pg::TestDb;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-authz");

fn event(at: f64, tool: &str) -> AuditEvent {
    crate::support::pg::audit_event(at, tool)
}

/// (partition, tool) of every audit row, ordered by tool.
async fn rows_by_partition(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT tableoid::regclass::text, tool FROM audit_events ORDER BY tool")
        .fetch_all(pool)
        .await
        .expect("audit rows")
}

/// The current month's partition name, by the database's clock.
async fn this_month(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT 'audit_events_' || to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')")
        .fetch_one(pool)
        .await
        .expect("this month")
}

/// Several pods start at once and each runs `mcp-authz migrate` (the init container): every one
/// succeeds and each migration is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrate_runs_apply_each_migration_once() {
    let (admin, _server) = TestDb::admin();
    let url = TestDb::create_empty_on(&admin).await;
    let (_a, idp) = standin().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, db_config_yaml(&idp, &url, true)).expect("config");
    let runs: Vec<_> = (0..4)
        .map(|_| {
            tokio::process::Command::new(BIN)
                .arg("migrate")
                .arg("--config")
                .arg(&cfg)
                .output()
        })
        .collect();
    for out in futures::future::join_all(runs).await {
        let out = out.expect("run migrate");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pool = PgPool::connect(&url).await.expect("connect");
    let applied: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT version, count(*) FROM _sqlx_migrations WHERE success GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("migrations table");
    let expected: Vec<(i64, i64)> = MIGRATOR.iter().map(|m| (m.version, 1)).collect();
    assert_eq!(applied, expected);
}

/// The partitioning migration keeps every row already stored, each in its month, with its
/// id; new rows continue the id sequence.
#[tokio::test]
async fn partitioning_keeps_existing_rows_in_their_months() {
    let (admin, _server) = TestDb::admin();
    let url = TestDb::create_empty_on(&admin).await;
    let pool = PgPool::connect(&url).await.expect("connect");
    let all = MIGRATOR.migrations.to_vec();
    let last = all
        .iter()
        .position(|m| m.description.contains("audit partitions"))
        .expect("the partitioning migration");
    let before = sqlx::migrate::Migrator {
        migrations: Cow::Owned(all[..last].to_vec()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before
        .run(&pool)
        .await
        .expect("migrations before partitioning");
    sqlx::raw_sql(
        "INSERT INTO audit_events (at, decision_id, result, reason, tool, authenticated) VALUES
           ('2024-01-15 10:00:00+00', gen_random_uuid(), 'allow', 'allowed', 'a_jan_2024', true),
           ('2026-11-30 23:59:59.5+00', gen_random_uuid(), 'deny', 'tool_denied', 'b_nov_2026', true),
           (now(), gen_random_uuid(), 'deny', 'no_token', 'c_now', false)",
    )
    .execute(&pool)
    .await
    .expect("rows before partitioning");
    let ids_before: Vec<i64> = sqlx::query_scalar("SELECT id FROM audit_events ORDER BY tool")
        .fetch_all(&pool)
        .await
        .expect("ids");

    MIGRATOR.run(&pool).await.expect("partitioning migration");
    assert_eq!(
        rows_by_partition(&pool).await,
        vec![
            ("audit_events_2024_01".into(), "a_jan_2024".into()),
            ("audit_events_2026_11".into(), "b_nov_2026".into()),
            (this_month(&pool).await, "c_now".into()),
        ]
    );
    let ids_after: Vec<i64> = sqlx::query_scalar("SELECT id FROM audit_events ORDER BY tool")
        .fetch_all(&pool)
        .await
        .expect("ids");
    assert_eq!(ids_before, ids_after);
    let next: i64 = sqlx::query_scalar(
        "INSERT INTO audit_events (at, decision_id, result, reason, authenticated)
         VALUES (now(), gen_random_uuid(), 'allow', 'allowed', true) RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .expect("insert after");
    assert!(next > *ids_after.iter().max().expect("ids"));
    // The unpartitioned table is gone; the parent is partitioned.
    let kind: String =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE relname = 'audit_events'")
            .fetch_one(&pool)
            .await
            .expect("relkind");
    assert_eq!(kind, "p");
}

/// A row whose month has no partition yet (maintenance has not run, or failed) is not lost:
/// the writer makes the month and writes it.
#[tokio::test]
async fn a_row_without_its_month_makes_the_month_and_is_written() {
    let db = TestDb::create().await;
    // 2031-05-10: months nobody made.
    let (auditor, writer) = Auditor::start(Sink::Postgres(db.pool.clone()), 100, 10);
    auditor.record(event(1_936_000_000.0, "future"));
    auditor.record(event(mcp_authz::clock::unix_seconds_f64(), "now"));
    let stats = auditor.stats.clone();
    drop(auditor);
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("writer ends")
        .expect("join");
    assert_eq!(stats.written.load(Relaxed), 2);
    assert_eq!(stats.dropped(), 0);
    assert_eq!(
        rows_by_partition(&db.pool).await,
        vec![
            ("audit_events_2031_05".into(), "future".into()),
            (this_month(&db.pool).await, "now".into()),
        ]
    );
}

/// Retention drops whole months past it, never the current one: `audit prune --dry-run` names
/// them and drops nothing, `audit prune` drops them, and `serve` with audit.retention_days does
/// it by itself at start. A refused setting (retention without the PostgreSQL sink) is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_the_months_past_it_and_nothing_else() {
    let db = TestDb::create().await;
    let (_a, idp) = standin().await;
    let month = this_month(&db.pool).await;
    db.exec(
        "SELECT audit_partition_ensure('2024-01-15 10:00:00+00'), audit_partition_ensure('2024-02-01 00:00:00+00');
         INSERT INTO audit_events (at, decision_id, result, reason, tool, authenticated) VALUES
           ('2024-01-15 10:00:00+00', gen_random_uuid(), 'allow', 'allowed', 'jan_2024', true),
           ('2024-02-01 00:00:00+00', gen_random_uuid(), 'allow', 'allowed', 'feb_2024', true),
           (now(), gen_random_uuid(), 'allow', 'allowed', 'now', true)",
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, db_config_yaml(&idp, &db.url, true)).expect("config");
    let cfg_arg = cfg.clone();
    let run = |args: &[&str]| {
        let mut args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        args.push("--config".into());
        args.push(cfg_arg.clone().into());
        async move { run_mcp_authz(&args, &[]).await }
    };
    let (code, _, stderr) = run(&["audit", "prune"]).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("audit.retention_days"), "{stderr}");

    let (code, stdout, stderr) =
        run(&["audit", "prune", "--retention-days", "30", "--dry-run"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("would drop audit_events_2024_01"),
        "{stdout}"
    );
    assert!(
        stdout.contains("would drop audit_events_2024_02"),
        "{stdout}"
    );
    assert!(!stdout.contains(&month), "{stdout}");
    assert_eq!(
        rows_by_partition(&db.pool).await.len(),
        3,
        "a dry run dropped rows"
    );

    // A retention that reaches into February 2024 keeps it and drops January only.
    let days_to_feb: i32 = sqlx::query_scalar("SELECT (now()::date - date '2024-03-01') + 1")
        .fetch_one(&db.pool)
        .await
        .expect("days");
    // A group set last named long before the cutoff goes with the months; a current one stays.
    db.exec(
        "INSERT INTO audit_group_sets (id, groups, last_seen) VALUES
           (decode(repeat('ab', 16), 'hex'), '{}', '2023-12-01'),
           (decode(repeat('cd', 16), 'hex'), '{}', now())",
    )
    .await;
    let (code, stdout, stderr) = run(&[
        "audit",
        "prune",
        "--retention-days",
        &days_to_feb.to_string(),
    ])
    .await;
    let sets: Vec<String> =
        sqlx::query_scalar("SELECT encode(id, 'hex') FROM audit_group_sets ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .expect("sets");
    assert_eq!(sets, vec!["cd".repeat(16)]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("dropped audit_events_2024_01"), "{stdout}");
    assert!(!stdout.contains("audit_events_2024_02"), "{stdout}");
    assert_eq!(
        rows_by_partition(&db.pool).await,
        vec![
            ("audit_events_2024_02".into(), "feb_2024".into()),
            (month.clone(), "now".into()),
        ]
    );

    // serve, with retention configured, prunes at start; the current month stays.
    let with_retention = db_config_yaml(&idp, &db.url, true)
        .replace("batch_size: 200}", "batch_size: 200, retention_days: 30}");
    let instance = Instance::start(&with_retention).await;
    wait_until("serve drops February 2024", Duration::from_secs(10), || {
        let pool = db.pool.clone();
        async move {
            rows_by_partition(&pool).await == vec![(this_month(&pool).await, "now".to_string())]
        }
    })
    .await;
    let listed = run(&["audit", "partitions"]).await.1;
    assert!(listed.contains(&month), "{listed}");
    assert!(!listed.contains("2024"), "{listed}");
    instance.stop().await;

    // Retention needs the PostgreSQL sink: refused at start with the key named.
    let jsonl = db_config_yaml(&idp, &db.url, false)
        + "audit: {sink: jsonl, file: /tmp/x.jsonl, retention_days: 30}\n";
    std::fs::write(&cfg, jsonl).expect("config");
    let (code, _, stderr) = run(&["check-config"]).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("audit.retention_days"), "{stderr}");
}
