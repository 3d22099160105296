//! The live source: `LISTEN` for changes, reload, compile, swap; reconnect with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};

use crate::policy::compile::CompileError;
use crate::policy::handle::{PolicyHandle, ReloadHealth};
use crate::policy::snapshot::Snapshot;

use super::error::DbError;
use super::rows::*;

pub const CHANNEL: &str = "mcp_authz_policy";

/// Reads and compiles the current policy.
pub async fn load_snapshot(
    pool: &PgPool,
    directories: &[String],
) -> Result<Result<Snapshot, CompileError>, DbError> {
    let (version, doc) = read_document(pool).await?;
    Ok(
        Snapshot::compile(&doc, "postgres", directories).map(|mut s| {
            s.version = format!("db-{version}");
            s
        }),
    )
}

/// Keeps a [`PolicyHandle`] in step with the database.
pub struct PostgresSource {
    pool: PgPool,
    handle: Arc<PolicyHandle>,
    poll_interval: Duration,
    directories: Vec<String>,
    /// The database version last compiled (good or bad), so a bad version is reported once.
    seen_version: AtomicI64,
    pub health: ReloadHealth,
    pub db_errors: AtomicU64,
}

impl PostgresSource {
    pub fn new(
        pool: PgPool,
        handle: Arc<PolicyHandle>,
        poll_interval: Duration,
        directories: Vec<String>,
    ) -> Self {
        Self {
            pool,
            handle,
            poll_interval,
            directories,
            seen_version: AtomicI64::new(-1),
            health: Default::default(),
            db_errors: AtomicU64::new(0),
        }
    }

    /// Reloads when the database version differs from the one last seen.
    pub async fn reload_if_changed(&self) -> Result<(), DbError> {
        let version: i64 = sqlx::query_scalar("SELECT version FROM policy_version")
            .fetch_one(&self.pool)
            .await?;
        if version == self.seen_version.load(Ordering::Acquire) && self.handle.is_loaded() {
            return Ok(());
        }
        let (version, doc) = crate::telemetry::in_root(
            "policy reload",
            vec![opentelemetry::KeyValue::new("db.system.name", "postgresql")],
            read_document(&self.pool),
        )
        .await?;
        self.seen_version.store(version, Ordering::Release);
        match Snapshot::compile(&doc, "postgres", &self.directories) {
            Ok(mut snapshot) => {
                snapshot.version = format!("db-{version}");
                tracing::info!(
                    version = %snapshot.version,
                    servers = snapshot.servers().len(),
                    tenants = snapshot.tenant_count(),
                    grants = snapshot.grant_count(),
                    "policy loaded from PostgreSQL"
                );
                self.handle.install(snapshot);
                self.health.installed();
            }
            Err(e) => {
                self.health.refused(format!("db-{version}"), &e.0);
                tracing::error!(db_version = version, error = %e, kept_version = ?self.handle.load().map(|s| s.version.clone()), "policy rows rejected; keeping the current policy");
            }
        }
        Ok(())
    }

    async fn reload_logged(&self) {
        if let Err(e) = self.reload_if_changed().await {
            self.db_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "policy reload failed; keeping the current policy");
        }
    }

    /// Listens and polls until `shutdown`; reconnects with backoff.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(200);
        loop {
            let listener = async {
                let mut l = PgListener::connect_with(&self.pool).await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = tokio::select! {
                r = listener => match r {
                    Ok(l) => l,
                    Err(e) => {
                        self.db_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot LISTEN for policy changes; serving the current policy");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = &mut shutdown => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                },
                _ = &mut shutdown => return,
            };
            backoff = Duration::from_millis(200);
            // Anything that changed while we were not listening.
            self.reload_logged().await;
            let mut tick = tokio::time::interval(self.poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    n = listener.try_recv() => match n {
                        Ok(Some(_)) => {
                            // Coalesce a burst of notifications into one reload.
                            while listener.next_buffered().is_some() {}
                            self.reload_logged().await;
                        }
                        Ok(None) => {
                            tracing::warn!("policy listener connection lost; reconnecting");
                            break;
                        }
                        Err(e) => {
                            self.db_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "policy listener failed; reconnecting");
                            break;
                        }
                    },
                    _ = tick.tick() => self.reload_logged().await,
                    _ = &mut shutdown => return,
                }
            }
        }
    }
}
