//! The PostgreSQL connection pool and the schema's migrations (`migrations/`, embedded).

use std::time::Duration;

use anyhow::Context;

use crate::config::DatabaseConfig;

/// Migrations embedded in the binary (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The one connection pool, created once. Lazy: the process starts (not ready) while the
/// database is down, and connects when it comes back.
pub fn pool(db: &DatabaseConfig) -> anyhow::Result<sqlx::PgPool> {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(db.url.expose())
        .context("database.url is not a valid PostgreSQL URL")?
        .application_name("mcp-authz")
        .options([("statement_timeout", db.statement_timeout_ms.to_string())]);
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(db.max_connections)
        .acquire_timeout(Duration::from_millis(db.acquire_timeout_ms))
        .connect_lazy_with(options))
}

/// Applied and pending migration versions.
pub async fn migration_status(pool: &sqlx::PgPool) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .context("query migrations")?;
    let applied: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await
            .context("query migrations")?
    } else {
        Vec::new()
    };
    let pending = MIGRATOR
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    Ok((applied, pending))
}
