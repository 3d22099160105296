//! Sessions bound to users. An `Mcp-Session-Id` belongs to the identity (directory and object
//! id) of the first allowed request that carried it; a request of any other identity carrying
//! it is refused (403 `session_not_owned`), whatever its method: another user's GET would read
//! the session's server-to-client stream, a DELETE would end it, a POST would act in it.
//!
//! Only an allowed request binds, so a user refused by the policy cannot claim session ids.
//! Session ids are never stored as sent: the key is their SHA-256, so neither this process nor
//! Redis holds a usable id.
//!
//! State: a bounded in-process cache (`sessions.capacity` entries, each forgotten
//! `sessions.ttl_seconds` after it was bound) and, when `rate_limit.redis_url` is set, Redis, so
//! that every replica agrees: `SET key owner NX GET EX ttl` binds or answers the owner in one
//! round trip, and only on a local miss. Redis down or slow: the replica binds in process (the
//! binding holds on that replica; another replica binds on its own until Redis answers again),
//! as the rate limiter does, retried after `rate_limit.redis_retry_ms`.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::SessionsConfig;
use crate::ratelimit::redis_store::{self, Fallback};

/// The longest session id accepted (the MCP spec asks only for visible ASCII).
pub const MAX_SESSION_ID_BYTES: usize = 256;

/// The session belongs to someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session belongs to another user")]
pub struct NotOwner;

type Key = [u8; 32];

pub struct SessionBinder {
    local: moka::sync::Cache<Key, Arc<str>>,
    redis: Option<RedisSessions>,
}

struct RedisSessions {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    timeout: Duration,
    ttl_seconds: u64,
    fallback: Fallback,
}

impl SessionBinder {
    pub fn new(
        cfg: &SessionsConfig,
        rate_limit: &crate::config::RateLimitConfig,
    ) -> anyhow::Result<Self> {
        let redis = match &rate_limit.redis_url {
            Some(url) => Some(RedisSessions {
                conn: redis_store::connect(url.expose(), rate_limit)?,
                prefix: format!("{}sess:", rate_limit.key_prefix),
                timeout: Duration::from_millis(rate_limit.redis_timeout_ms),
                ttl_seconds: cfg.ttl_seconds,
                fallback: Fallback::new(Duration::from_millis(rate_limit.redis_retry_ms)),
            }),
            None => None,
        };
        Ok(SessionBinder {
            local: moka::sync::Cache::builder()
                .max_capacity(cfg.capacity)
                .time_to_live(Duration::from_secs(cfg.ttl_seconds))
                .build(),
            redis,
        })
    }

    /// Bindings this replica holds.
    pub fn local_count(&self) -> u64 {
        self.local.entry_count()
    }

    /// `Ok` when `session_id` is (now) `owner`'s; `owner` is `tid/oid`.
    pub async fn bind(&self, session_id: &str, owner: &str) -> Result<(), NotOwner> {
        let key: Key = Sha256::digest(session_id.as_bytes()).into();
        if let Some(known) = self.local.get(&key) {
            return same(&known, owner);
        }
        if let Some(redis) = &self.redis
            && redis.fallback.may_try()
        {
            match Box::pin(redis.bind(&key, owner)).await {
                Ok(found) => {
                    if redis.fallback.recovered() {
                        tracing::info!("redis answers again: sessions are bound across replicas");
                    }
                    let found: Arc<str> = found.as_deref().unwrap_or(owner).into();
                    self.local.insert(key, found.clone());
                    return same(&found, owner);
                }
                Err(e) => {
                    if redis.fallback.fail() {
                        tracing::warn!(error = %e, "redis unavailable: sessions are bound on this replica only");
                    }
                }
            }
        }
        let entry = self.local.entry(key).or_insert_with(|| owner.into());
        same(entry.value(), owner)
    }
}

fn same(known: &str, owner: &str) -> Result<(), NotOwner> {
    if known == owner {
        Ok(())
    } else {
        Err(NotOwner)
    }
}

impl RedisSessions {
    /// Binds the key to `owner` unless bound; the owner it had (`None`: it is `owner`'s now).
    async fn bind(&self, key: &Key, owner: &str) -> Result<Option<String>, String> {
        let mut hex = String::with_capacity(self.prefix.len() + 64);
        hex.push_str(&self.prefix);
        for b in key {
            hex.push_str(&format!("{b:02x}"));
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(&hex)
            .arg(owner)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(self.ttl_seconds.max(1));
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async::<Option<String>>(&mut conn)).await
        {
            Ok(Ok(previous)) => Ok(previous),
            Ok(Err(e)) => Err(redis_store::describe(&e)),
            Err(_) => Err(format!("redis: no answer within {:?}", self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binder(capacity: u64) -> SessionBinder {
        SessionBinder::new(
            &SessionsConfig {
                enabled: true,
                capacity,
                ttl_seconds: 60,
            },
            &Default::default(),
        )
        .expect("binder")
    }

    #[tokio::test]
    async fn the_first_identity_owns_a_session_and_no_other_may_use_it() {
        let b = binder(100);
        assert_eq!(b.bind("s-1", "t/alice").await, Ok(()));
        assert_eq!(b.bind("s-1", "t/alice").await, Ok(()));
        assert_eq!(b.bind("s-1", "t/mallory").await, Err(NotOwner));
        // The same object id in another directory is another identity.
        assert_eq!(b.bind("s-1", "u/alice").await, Err(NotOwner));
        assert_eq!(b.bind("s-2", "t/mallory").await, Ok(()));
    }

    #[tokio::test]
    async fn the_binder_is_bounded() {
        let b = binder(50);
        for i in 0..5_000 {
            let _ = b.bind(&format!("s-{i}"), "t/alice").await;
        }
        b.local.run_pending_tasks();
        assert!(b.local_count() <= 50, "{}", b.local_count());
    }
}
