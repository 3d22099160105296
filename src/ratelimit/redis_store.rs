//! Redis as the shared rate-limit state: one `EVALSHA` of `ratelimit.lua` per Check.
//!
//! Failure handling: every call is bounded by `redis_timeout_ms`. A failed call (refused,
//! timed out, an error reply) puts the store into fallback: calls return `None` (the caller uses
//! the in-process store) until `redis_retry_ms` has passed, then exactly one Check tries Redis
//! again while the others stay local. The connection reconnects by itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Outcome, Request};

const SCRIPT: &str = include_str!("ratelimit.lua");

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    script: redis::Script,
    timeout: Duration,
    fallback: Fallback,
}

/// A lazily connecting Redis connection with `rate_limit`'s timeouts: a Redis that is down at
/// start means fallback, not a failed start. Shared by the rate limiter and the session binder.
pub fn connect(
    url: &str,
    cfg: &crate::config::RateLimitConfig,
) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url)
        .map_err(|e| anyhow::anyhow!("rate_limit.redis_url: {}", e.category()))?;
    let timeout = Duration::from_millis(cfg.redis_timeout_ms);
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(cfg.redis_retry_ms.max(1)));
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| anyhow::anyhow!("rate_limit.redis_url: {}", e.category()))
}

/// When Redis is tried: always while it answers; after a failure, by one caller per
/// `redis_retry_ms` while the others stay in process.
pub struct Fallback {
    retry: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` before which Redis is not tried again.
    retry_at_ms: AtomicU64,
    degraded: AtomicBool,
}

impl Fallback {
    pub fn new(retry: Duration) -> Self {
        Fallback {
            retry,
            epoch: Instant::now(),
            retry_at_ms: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
        }
    }

    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether this caller may use Redis now.
    pub fn may_try(&self) -> bool {
        if !self.degraded() {
            return true;
        }
        let now = self.now_ms();
        let at = self.retry_at_ms.load(Ordering::Relaxed);
        // One caller per retry period gets to try Redis.
        now >= at
            && self
                .retry_at_ms
                .compare_exchange(
                    at,
                    now + self.retry.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Marks a failure; true when this starts a fallback period.
    pub fn fail(&self) -> bool {
        self.retry_at_ms.store(
            self.now_ms() + self.retry.as_millis() as u64,
            Ordering::Relaxed,
        );
        !self.degraded.swap(true, Ordering::Relaxed)
    }

    /// Marks a success; true when this ends a fallback period.
    pub fn recovered(&self) -> bool {
        self.degraded.load(Ordering::Relaxed) && self.degraded.swap(false, Ordering::Relaxed)
    }
}

impl RedisStore {
    /// Connects lazily: a Redis that is down at start means fallback, not a failed start.
    pub fn new(url: &str, cfg: &crate::config::RateLimitConfig) -> anyhow::Result<Self> {
        Ok(RedisStore {
            conn: connect(url, cfg)?,
            prefix: cfg.key_prefix.clone(),
            script: redis::Script::new(SCRIPT),
            timeout: Duration::from_millis(cfg.redis_timeout_ms),
            fallback: Fallback::new(Duration::from_millis(cfg.redis_retry_ms)),
        })
    }

    /// One PING, for `check-config`.
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        match tokio::time::timeout(
            self.timeout.max(Duration::from_secs(2)),
            cmd.query_async::<String>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err("redis: no answer".into()),
        }
    }

    pub fn degraded(&self) -> bool {
        self.fallback.degraded()
    }

    pub(super) fn fail(&self) -> bool {
        self.fallback.fail()
    }

    pub(super) fn recovered(&self) -> bool {
        self.fallback.recovered()
    }

    /// The decision from Redis; `None` while in fallback and not this Check's turn to retry.
    pub async fn check(&self, req: &Request) -> Option<Result<Outcome, String>> {
        if !self.fallback.may_try() {
            return None;
        }
        Some(
            crate::telemetry::in_child(
                "redis rate limit",
                vec![
                    opentelemetry::KeyValue::new("db.system.name", "redis"),
                    opentelemetry::KeyValue::new("db.operation.name", "EVALSHA"),
                ],
                self.eval(req),
            )
            .await,
        )
    }

    async fn eval(&self, req: &Request) -> Result<Outcome, String> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(req.hard.len()).arg(u8::from(req.fair.is_some()));
        for b in req.buckets() {
            inv.key(format!("{}{}", self.prefix, b.key))
                .arg(b.rate.interval_us())
                .arg(b.rate.horizon_us());
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> =
            match tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(describe(&e)),
                Err(_) => return Err(format!("redis: no answer within {:?}", self.timeout)),
            };
        let [allowed, binding, remaining, reset_us, retry_us] = reply[..] else {
            return Err(format!(
                "redis: the script answered {} values, not 5",
                reply.len()
            ));
        };
        let buckets: Vec<_> = req.buckets().collect();
        let Some(b) = usize::try_from(binding).ok().and_then(|i| buckets.get(i)) else {
            return Err(format!("redis: the script named bucket {binding}"));
        };
        Ok(Outcome::from_raw(
            allowed == 1,
            binding as usize,
            b,
            remaining,
            reset_us,
            retry_us,
        ))
    }
}

/// The error's kind and the server's detail; never the URL (it may carry a password).
pub fn describe(e: &redis::RedisError) -> String {
    match e.detail() {
        Some(d) => format!("redis: {}: {d}", e.category()),
        None => format!("redis: {}", e.category()),
    }
}
