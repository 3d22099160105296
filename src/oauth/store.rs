//! Transient state of a sign-in: the authorization in flight (from the consent to Entra's
//! callback, keyed by the `state` sent to Entra), the gateway's codes (callback to `/token`),
//! and the refresh tokens already used. Each is taken at most once: `take` removes what it
//! returns, so a replayed state, code or refresh token finds nothing.
//!
//! In memory (`state_store: memory`): one replica only, since a callback or token request that
//! reaches another replica finds nothing there. Bounded and expiring.
//!
//! In PostgreSQL (`state_store: postgres`, table `oauth_transient`): shared by the replicas; a
//! take is one `DELETE … RETURNING`, so of two replicas taking one code exactly one gets it.
//! Keys are stored as their SHA-256 and values sealed (they hold Entra's tokens); expired rows
//! are swept every few writes and never returned.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::seal::{Purpose, Sealer, s256};

/// What the client asked for at `/oauth/authorize`, checked.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub client_id: String,
    pub redirect_uri: String,
    /// The client's `state`, returned to it as sent.
    pub state: Option<String>,
    /// The client's PKCE S256 challenge.
    pub challenge: String,
    /// The MCP scopes granted (space-separated).
    pub scope: String,
    /// The MCP server URL (`resource`, RFC 8707) the tokens are for, when the client named one.
    pub resource: Option<String>,
}

/// A sign-in waiting for Entra's callback.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    pub request: Request,
    /// The gateway's own PKCE verifier toward Entra.
    pub entra_verifier: String,
}

/// What the gateway's code stands for: Entra's tokens, for the client that asked.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Issued {
    pub request: Request,
    pub access_token: String,
    pub expires_in: u64,
    pub entra_refresh: Option<String>,
    pub oid: String,
}

/// The store could not be reached; the request fails closed.
#[derive(Debug, thiserror::Error)]
#[error("the OAuth state store failed: {0}")]
pub struct StoreError(String);

impl StoreError {
    pub fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// Most entries of each kind held in memory.
const CAPACITY: u64 = 100_000;
/// Expired rows are deleted every this many writes.
const SWEEP_EVERY: u64 = 128;

pub struct Store {
    ttl: Ttls,
    backend: Backend,
}

struct Ttls {
    pending: Duration,
    code: Duration,
    refresh: Duration,
}

enum Backend {
    Memory {
        pending: moka::sync::Cache<String, Arc<Pending>>,
        codes: moka::sync::Cache<String, Arc<Issued>>,
        used_refresh: moka::sync::Cache<String, ()>,
    },
    Postgres {
        pool: sqlx::PgPool,
        sealer: Sealer,
        writes: AtomicU64,
    },
}

#[derive(Clone, Copy)]
enum Kind {
    Pending,
    Code,
    UsedRefresh,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pending => "pending",
            Kind::Code => "code",
            Kind::UsedRefresh => "used_refresh",
        }
    }
}

impl Store {
    /// In this process only: for a single replica.
    pub fn memory(pending: Duration, code: Duration, refresh: Duration) -> Self {
        Self {
            ttl: Ttls {
                pending,
                code,
                refresh,
            },
            backend: Backend::Memory {
                pending: moka::sync::Cache::builder()
                    .max_capacity(CAPACITY)
                    .time_to_live(pending)
                    .build(),
                codes: moka::sync::Cache::builder()
                    .max_capacity(CAPACITY)
                    .time_to_live(code)
                    .build(),
                used_refresh: moka::sync::Cache::builder()
                    .max_capacity(10 * CAPACITY)
                    .time_to_live(refresh)
                    .build(),
            },
        }
    }

    /// In PostgreSQL (`oauth_transient`), shared by every replica: keys hashed, values sealed.
    pub fn postgres(
        pool: sqlx::PgPool,
        sealer: Sealer,
        pending: Duration,
        code: Duration,
        refresh: Duration,
    ) -> Self {
        Self {
            ttl: Ttls {
                pending,
                code,
                refresh,
            },
            backend: Backend::Postgres {
                pool,
                sealer,
                writes: AtomicU64::new(0),
            },
        }
    }

    /// `memory` or `postgres`, for check-config and the logs.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Memory { .. } => "memory",
            Backend::Postgres { .. } => "postgres",
        }
    }

    async fn put_row<T: serde::Serialize>(
        &self,
        kind: Kind,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let Backend::Postgres {
            pool,
            sealer,
            writes,
        } = &self.backend
        else {
            return Ok(());
        };
        let plain = serde_json::to_vec(value).map_err(StoreError::new)?;
        let sealed = sealer.seal(Purpose::State, &plain);
        sqlx::query(
            "INSERT INTO oauth_transient (kind, key, value, expires_at) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4)) \
             ON CONFLICT (kind, key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at",
        )
        .bind(kind.name())
        .bind(s256(key))
        .bind(sealed)
        .bind(ttl.as_secs_f64())
        .execute(pool)
        .await
        .map_err(StoreError::new)?;
        if writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == 0 {
            sqlx::query("DELETE FROM oauth_transient WHERE expires_at < now()")
                .execute(pool)
                .await
                .map_err(StoreError::new)?;
        }
        Ok(())
    }

    pub async fn put_pending(&self, state: String, p: Pending) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory { pending, .. } => {
                pending.insert(state, Arc::new(p));
                Ok(())
            }
            Backend::Postgres { .. } => {
                self.put_row(Kind::Pending, &state, &p, self.ttl.pending)
                    .await
            }
        }
    }

    pub async fn take_pending(&self, state: &str) -> Result<Option<Arc<Pending>>, StoreError> {
        match &self.backend {
            Backend::Memory { pending, .. } => Ok(pending.remove(state)),
            Backend::Postgres { .. } => Ok(self
                .take_unexpired(Kind::Pending, state)
                .await?
                .map(Arc::new)),
        }
    }

    pub async fn put_code(&self, code: String, i: Issued) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory { codes, .. } => {
                codes.insert(code, Arc::new(i));
                Ok(())
            }
            Backend::Postgres { .. } => self.put_row(Kind::Code, &code, &i, self.ttl.code).await,
        }
    }

    pub async fn take_code(&self, code: &str) -> Result<Option<Arc<Issued>>, StoreError> {
        match &self.backend {
            Backend::Memory { codes, .. } => Ok(codes.remove(code)),
            Backend::Postgres { .. } => {
                Ok(self.take_unexpired(Kind::Code, code).await?.map(Arc::new))
            }
        }
    }

    /// The row, deleted in the same statement (two replicas taking one key: one gets it), and
    /// `None` when it had expired (the sweep may not have deleted it yet).
    async fn take_unexpired<T: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let Backend::Postgres { pool, sealer, .. } = &self.backend else {
            return Ok(None);
        };
        let row: Option<(String, bool)> = sqlx::query_as(
            "DELETE FROM oauth_transient WHERE kind = $1 AND key = $2 \
             RETURNING value, expires_at > now()",
        )
        .bind(kind.name())
        .bind(s256(key))
        .fetch_optional(pool)
        .await
        .map_err(StoreError::new)?;
        Ok(match row {
            Some((sealed, true)) => sealer
                .open(Purpose::State, &sealed)
                .and_then(|plain| serde_json::from_slice(&plain).ok()),
            _ => None,
        })
    }

    /// Marks a refresh token (by its id) used; false when it already was.
    pub async fn use_refresh(&self, id: &str) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Memory { used_refresh, .. } => {
                Ok(used_refresh.entry(id.to_owned()).or_insert(()).is_fresh())
            }
            Backend::Postgres { pool, .. } => {
                // An expired mark is replaced (the token itself has expired by then).
                let r = sqlx::query(
                    "INSERT INTO oauth_transient (kind, key, value, expires_at) \
                     VALUES ($3, $1, '', now() + make_interval(secs => $2)) \
                     ON CONFLICT (kind, key) DO UPDATE SET expires_at = EXCLUDED.expires_at \
                     WHERE oauth_transient.expires_at < now()",
                )
                .bind(s256(id))
                .bind(self.ttl.refresh.as_secs_f64())
                .bind(Kind::UsedRefresh.name())
                .execute(pool)
                .await
                .map_err(StoreError::new)?;
                Ok(r.rows_affected() == 1)
            }
        }
    }

    /// Lets a refresh token be used again (its exchange failed for want of Entra).
    pub async fn unuse_refresh(&self, id: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory { used_refresh, .. } => {
                used_refresh.invalidate(id);
                Ok(())
            }
            Backend::Postgres { pool, .. } => {
                sqlx::query("DELETE FROM oauth_transient WHERE kind = $2 AND key = $1")
                    .bind(s256(id))
                    .bind(Kind::UsedRefresh.name())
                    .execute(pool)
                    .await
                    .map_err(StoreError::new)?;
                Ok(())
            }
        }
    }
}
