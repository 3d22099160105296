//! PostgreSQL for tests: a fresh database per test on the server `make test` started
//! (`MCP_AUTHZ_TEST_DATABASE_URL`), or on a private server when that is not set. Outage tests
//! always use a private server, since they stop it.

use std::process::Command;

use sqlx::PgPool;

use super::helpers::repo_path;

/// A PostgreSQL server of this test's own, in a temp dir.
pub struct PgServer {
    pub dir: tempfile::TempDir,
    pub admin_url: String,
}

fn script(verb: &str, dir: &std::path::Path) -> String {
    let out = Command::new(repo_path("tests/env/postgres.sh"))
        .arg(verb)
        .arg(dir)
        .output()
        .expect("run tests/env/postgres.sh");
    assert!(
        out.status.success(),
        "postgres.sh {verb}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl PgServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let admin_url = script("start", dir.path());
        Self { dir, admin_url }
    }
    pub fn stop(&self) {
        script("stop", self.dir.path());
    }
    pub fn resume(&self) {
        script("resume", self.dir.path());
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new(repo_path("tests/env/postgres.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// A fresh, migrated database.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
    pub server: Option<PgServer>,
}

impl TestDb {
    pub async fn create() -> Self {
        match std::env::var("MCP_AUTHZ_TEST_DATABASE_URL") {
            Ok(admin) => Self::create_on(&admin, None).await,
            Err(_) => {
                let server = PgServer::start();
                let admin = server.admin_url.clone();
                Self::create_on(&admin, Some(server)).await
            }
        }
    }

    /// On a private server (for tests that stop it).
    pub async fn create_private() -> Self {
        let server = PgServer::start();
        let admin = server.admin_url.clone();
        Self::create_on(&admin, Some(server)).await
    }

    pub async fn create_on(admin_url: &str, server: Option<PgServer>) -> Self {
        let url = Self::create_empty_on(admin_url).await;
        let pool = PgPool::connect(&url).await.expect("connect test db");
        mcp_authz::db::MIGRATOR.run(&pool).await.expect("migrate");
        Self { url, pool, server }
    }

    /// A new database without migrations.
    pub async fn create_empty_on(admin_url: &str) -> String {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPool::connect(admin_url).await.expect("connect admin");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("admin url without a database: {admin_url}"),
        }
    }

    /// The shared server's admin URL, or a private server (kept alive by the returned guard).
    pub fn admin() -> (String, Option<PgServer>) {
        match std::env::var("MCP_AUTHZ_TEST_DATABASE_URL") {
            Ok(url) => (url, None),
            Err(_) => {
                let server = PgServer::start();
                (server.admin_url.clone(), Some(server))
            }
        }
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn exec_err(&self, sql: &str) -> String {
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
        {
            Ok(_) => panic!("accepted: {sql}"),
            Err(e) => e.to_string(),
        }
    }

    /// Makes the database's policy exactly `text` (`policy import`); the changes, as printed.
    pub async fn import(&self, text: &str, dry_run: bool) -> Vec<String> {
        let doc: mcp_authz::policy::PolicyDocument =
            serde_yaml_ng::from_str(text).expect("policy yaml");
        let changes = mcp_authz::policy::postgres::import_document(
            &self.pool,
            &doc,
            dry_run,
            &super::helpers::directories(),
        )
        .await
        .expect("import");
        changes.iter().map(|c| c.to_string()).collect()
    }

    /// Until the audit table holds exactly `n` rows (15 s at most).
    pub async fn wait_for_audit_rows(&self, n: i64) {
        super::helpers::wait_until(
            &format!("{n} audit events"),
            std::time::Duration::from_secs(15),
            || {
                let pool = self.pool.clone();
                async move {
                    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_events")
                        .fetch_one(&pool)
                        .await
                        .unwrap_or(0)
                        == n
                }
            },
        )
        .await;
    }
}

/// An allowed `tools/call` of `tool` by BOB (engineering, one group) at `at`, for the writer.
pub fn audit_event(at: f64, tool: &str) -> mcp_authz::audit::AuditEvent {
    use super::helpers::{BOB, ENG_GROUP, TID};
    mcp_authz::audit::AuditEvent {
        at,
        decision_id: uuid::Uuid::now_v7().to_string(),
        authenticated: true,
        user_oid: Some(BOB.into()),
        upn: None,
        directory_tid: Some(TID.into()),
        tenant: Some("engineering".into()),
        server: Some("github".into()),
        method: Some("tools/call".into()),
        tool: Some(tool.into()),
        result: "allow",
        reason: "allowed",
        policy_version: None,
        trace_id: None,
        groups: Some(vec![ENG_GROUP.into()]),
    }
}
