//! The monthly partitions of `audit_events` (migration 20261202000001): making the current and
//! the next month's ahead of time, and dropping the months past retention.
//!
//! A month's partition is `audit_events_YYYY_MM` and holds the rows whose `at` falls in that
//! calendar month (UTC). Retention drops whole months: a month goes once its last instant is
//! older than `retention_days`, so rows are kept at least `retention_days` and at most a month
//! longer. Every step is idempotent and serialised across replicas by an advisory lock.

use std::time::Duration;

use sqlx::PgPool;

/// How often `serve` makes the coming partitions and applies retention.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

/// The lock `audit_partition_ensure` also takes.
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('mcp_authz.audit_partitions'))";

/// Makes this month's and next month's partitions (by the database's clock).
pub async fn ensure_ahead(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT audit_partition_ensure(now()), audit_partition_ensure(now() + interval '1 month')",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Makes the partitions of these instants (Unix seconds), for rows that found none.
pub async fn ensure_for(pool: &PgPool, instants: &[f64]) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT audit_partition_ensure(to_timestamp(t)) FROM UNNEST($1::float8[]) AS u(t)")
        .bind(instants)
        .execute(pool)
        .await?;
    Ok(())
}

/// A month partition and what retention makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    /// The first instant after the month, `YYYY-MM-DD` (UTC).
    pub ends: String,
    /// PostgreSQL's estimate (`reltuples`, from the last ANALYZE; 0 before one): cheap to
    /// read, where counting a month would scan it.
    pub approx_rows: i64,
    pub expired: bool,
}

/// Every month partition, oldest first; `expired` when its month ended more than
/// `retention_days` ago (never, without retention).
pub async fn list(
    pool: &PgPool,
    retention_days: Option<u32>,
) -> Result<Vec<Partition>, sqlx::Error> {
    let rows: Vec<(String, String, i64, bool)> = sqlx::query_as(
        "SELECT c.relname::text,
                to_char(to_date(substr(c.relname, 14), 'YYYY_MM') + interval '1 month', 'YYYY-MM-DD'),
                greatest(c.reltuples, 0)::bigint,
                $1::int IS NOT NULL AND ((to_date(substr(c.relname, 14), 'YYYY_MM') + interval '1 month')
                    AT TIME ZONE 'UTC') <= now() - make_interval(days => $1::int)
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'audit_events'::regclass
           AND c.relname ~ '^audit_events_[0-9]{4}_[0-9]{2}$'
         ORDER BY c.relname",
    )
    .bind(retention_days.map(|d| d as i32))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, ends, approx_rows, expired)| Partition {
            name,
            ends,
            approx_rows,
            expired,
        })
        .collect())
}

/// Drops the expired month partitions (none without `retention_days`); those dropped. With
/// `dry_run`, only says which.
pub async fn prune(
    pool: &PgPool,
    retention_days: u32,
    dry_run: bool,
) -> Result<Vec<Partition>, sqlx::Error> {
    let expired: Vec<Partition> = list(pool, Some(retention_days))
        .await?
        .into_iter()
        .filter(|p| p.expired)
        .collect();
    if dry_run {
        return Ok(expired);
    }
    // One transaction: the months go together or not at all; a replica that pruned them first
    // leaves nothing to drop (the second sees them gone once the first commits).
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK).execute(&mut *tx).await?;
    let mut dropped = Vec::with_capacity(expired.len());
    for p in expired {
        let still: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&p.name)
            .fetch_one(&mut *tx)
            .await?;
        if still {
            sqlx::query("SELECT audit_partition_drop($1)")
                .bind(&p.name)
                .execute(&mut *tx)
                .await?;
            dropped.push(p);
        }
    }
    // Group sets no kept event can name: a kept event is at most a month older than the
    // cutoff, and its set's last_seen at most a day older than the event.
    sqlx::query(
        "DELETE FROM audit_group_sets
         WHERE last_seen < now() - make_interval(days => $1::int) - interval '32 days'",
    )
    .bind(retention_days as i32)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(dropped)
}

/// `serve`'s maintenance: the coming partitions, then retention, every
/// [`MAINTENANCE_INTERVAL`] until `shutdown`. Failures are logged and counted, and tried again
/// next time; a row that finds no partition meanwhile makes its own (see the writer).
pub async fn maintain(
    pool: PgPool,
    retention_days: Option<u32>,
    stats: std::sync::Arc<super::AuditStats>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        if let Err(e) = ensure_ahead(&pool).await {
            stats
                .partition_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, "audit: making the coming month partitions failed; retrying in an hour (rows make their own meanwhile)");
        }
        if let Some(days) = retention_days {
            match prune(&pool, days, false).await {
                Ok(dropped) => {
                    for p in dropped {
                        tracing::info!(partition = %p.name, approx_rows = p.approx_rows, retention_days = days, "audit: dropped a month past retention");
                    }
                }
                Err(e) => {
                    stats
                        .partition_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %e, "audit: retention failed; retrying in an hour");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
            _ = &mut shutdown => return,
        }
    }
}
