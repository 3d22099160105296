//! Rate limits: per user, per tool (per user), per tenant, and a global budget shared between
//! tenants by weight.
//!
//! Every limit is a GCRA bucket ("generic cell rate algorithm", a token bucket kept as one
//! timestamp, the theoretical arrival time `tat`): `per_minute` requests refill evenly, and at
//! most `burst` may be taken at once. All buckets of one request are decided together and
//! consumed only if the request is admitted, atomically: one Lua script (one round trip) in
//! Redis, so every replica enforces one limit, or under one lock in process.
//!
//! Fairness. With a global budget `G` per minute, tenant `t` of weight `w` has a reserved
//! bucket of `G × w / W` (`W` the sum of the weights of the enabled tenants). A request passes
//! by its tenant's reserved bucket if that has room, and is then also charged to the global
//! bucket (which may go into debt, at most one bucket deep); otherwise it borrows from the
//! global bucket. Reserved rates add up to `G`, so when everyone is busy the global bucket is empty and
//! each tenant gets its reserved share; a tenant that asks for less than its share leaves the
//! rest to whoever borrows. Admins without a tenant only borrow.
//!
//! Keys are the verified identity (`tid`, `oid`), the policy tenant and the tool rule: nothing
//! the client can choose. When Redis fails at run time the in-process limiter takes over (every
//! replica then enforces the limits on its own), `mcp_authz_ratelimit_redis_fallback` is 1, a
//! warning is logged, and Redis is tried again after `redis_retry_ms`.

pub mod redis_store;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub use redis_store::RedisStore;

/// Requests per minute and how many may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    /// `burst_factor` × the per-minute rate may come at once (at least one request).
    pub fn new(per_minute: u32, burst_factor: f64) -> Self {
        let per_minute = per_minute.max(1);
        let burst = (f64::from(per_minute) * burst_factor).ceil();
        let burst = if burst.is_finite() && burst >= 1.0 {
            burst.min(f64::from(u32::MAX)) as u32
        } else {
            1
        };
        Rate { per_minute, burst }
    }

    /// Microseconds between two requests at the steady rate.
    pub fn interval_us(&self) -> i64 {
        (60_000_000 / i64::from(self.per_minute.max(1))).max(1)
    }

    /// How far ahead of now the bucket's `tat` may run: a full bucket's worth.
    pub fn horizon_us(&self) -> i64 {
        self.interval_us()
            .saturating_mul(i64::from(self.burst.max(1)))
    }
}

/// Which limit a bucket is; the label of `mcp_authz_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    User,
    Tool,
    Tenant,
    Global,
}

impl Scope {
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Tool => "tool",
            Scope::Tenant => "tenant",
            Scope::Global => "global",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub key: String,
    pub rate: Rate,
    pub scope: Scope,
}

/// All the buckets one request is charged to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Every one must have room.
    pub hard: Vec<Bucket>,
    /// The tenant's reserved share and the global budget: one of the two must have room.
    pub fair: Option<Fair>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fair {
    pub reserved: Bucket,
    pub global: Bucket,
}

impl Request {
    pub fn is_empty(&self) -> bool {
        self.hard.is_empty() && self.fair.is_none()
    }

    /// The buckets in wire order: hard ones, then reserved, then global.
    pub fn buckets(&self) -> impl Iterator<Item = &Bucket> {
        self.hard
            .iter()
            .chain(self.fair.iter().flat_map(|f| [&f.reserved, &f.global]))
    }
}

/// The answer, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// The bucket that refused, or (when allowed) the one with the least room left.
    pub binding: usize,
    pub scope: Scope,
    pub rate: Rate,
    /// Requests that could be made right now after this one.
    pub remaining: u32,
    /// Until the binding bucket is full again (allowed) or has room for one (denied).
    pub reset: Duration,
    /// Zero when allowed.
    pub retry_after: Duration,
}

impl Outcome {
    /// From the raw figures of a decision (microseconds, possibly out of range), as both the
    /// in-process store and the Redis script produce them.
    fn from_raw(
        allowed: bool,
        binding: usize,
        bucket: &Bucket,
        remaining: i64,
        reset_us: i64,
        retry_us: i64,
    ) -> Self {
        Outcome {
            allowed,
            binding,
            scope: bucket.scope,
            rate: bucket.rate,
            remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            reset: Duration::from_micros(reset_us.max(0) as u64),
            retry_after: Duration::from_micros(retry_us.max(0) as u64),
        }
    }
}

/// The result of trying one bucket at `now`.
#[derive(Debug, Clone, Copy)]
struct Probe {
    allowed: bool,
    new_tat: i64,
    remaining: i64,
    reset_us: i64,
    retry_us: i64,
}

fn probe(tat: i64, now: i64, rate: Rate) -> Probe {
    let interval = rate.interval_us();
    let horizon = rate.horizon_us();
    let base = tat.max(now);
    let new_tat = base + interval;
    if new_tat - now <= horizon {
        Probe {
            allowed: true,
            new_tat,
            remaining: (now + horizon - new_tat) / interval,
            reset_us: new_tat - now,
            retry_us: 0,
        }
    } else {
        Probe {
            allowed: false,
            new_tat: tat,
            remaining: 0,
            reset_us: new_tat - now - horizon,
            retry_us: new_tat - now - horizon,
        }
    }
}

/// The decision over a request's buckets. `tats[i]` is bucket `i`'s stored `tat` (0 when
/// absent), in [`Request::buckets`] order; the result lists the new `tat` of every bucket that
/// changes. `ratelimit.lua` is the same algorithm, line for line.
pub fn evaluate(req: &Request, tats: &[i64], now: i64) -> (Outcome, Vec<(usize, i64)>) {
    let buckets: Vec<&Bucket> = req.buckets().collect();
    let probes: Vec<Probe> = buckets
        .iter()
        .zip(tats.iter().chain(std::iter::repeat(&0)))
        .map(|(b, &t)| probe(t, now, b.rate))
        .collect();
    let outcome = |allowed: bool, i: usize, p: &Probe| {
        Outcome::from_raw(allowed, i, buckets[i], p.remaining, p.reset_us, p.retry_us)
    };
    let hard = req.hard.len();
    // A hard limit refuses: report the one that frees up last.
    let mut worst: Option<usize> = None;
    for (i, p) in probes[..hard].iter().enumerate() {
        if !p.allowed && worst.is_none_or(|w| p.retry_us > probes[w].retry_us) {
            worst = Some(i);
        }
    }
    if let Some(i) = worst {
        return (outcome(false, i, &probes[i]), Vec::new());
    }
    let mut writes: Vec<(usize, i64)> = (0..hard).map(|i| (i, probes[i].new_tat)).collect();
    let mut charged: Vec<usize> = (0..hard).collect();
    if req.fair.is_some() {
        let (r, g) = (hard, hard + 1);
        if probes[r].allowed {
            // Within the tenant's share: charge the global budget too, even past empty (so
            // borrowers wait while shares are in use), but at most one bucket into debt.
            let global = buckets[g].rate;
            let stored = tats.get(g).copied().unwrap_or(0);
            let forced =
                (stored.max(now) + global.interval_us()).min(now + 2 * global.horizon_us());
            writes.push((r, probes[r].new_tat));
            writes.push((g, forced));
            charged.push(r);
        } else if probes[g].allowed {
            writes.push((g, probes[g].new_tat));
            charged.push(g);
        } else {
            // Both empty: the share frees up first or the budget does.
            let i = if probes[r].retry_us <= probes[g].retry_us {
                r
            } else {
                g
            };
            return (outcome(false, g, &probes[i]), Vec::new());
        }
    }
    let Some(&i) = charged.iter().min_by_key(|&&i| probes[i].remaining) else {
        return (
            Outcome {
                allowed: true,
                binding: 0,
                scope: Scope::User,
                rate: Rate::new(1, 1.0),
                remaining: 0,
                reset: Duration::ZERO,
                retry_after: Duration::ZERO,
            },
            Vec::new(),
        );
    };
    (outcome(true, i, &probes[i]), writes)
}

/// The in-process store: the limiter without Redis, and the fallback when Redis fails.
///
/// Bounded: at `max_keys`, buckets that are full again (equal to absent) are swept; if that is
/// not enough, the store is cleared, forgetting every bucket (counted as evictions). A
/// forgotten bucket starts full, so an eviction can only let more through, never refuse wrongly.
pub struct LocalStore {
    tats: Mutex<HashMap<String, i64>>,
    max_keys: usize,
    evictions: std::sync::atomic::AtomicU64,
}

impl LocalStore {
    pub fn new(max_keys: usize) -> Self {
        LocalStore {
            tats: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(16),
            evictions: Default::default(),
        }
    }

    pub fn check(&self, req: &Request, now: i64) -> Outcome {
        let mut map = match self.tats.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let buckets: Vec<&Bucket> = req.buckets().collect();
        let tats: Vec<i64> = buckets
            .iter()
            .map(|b| map.get(&b.key).copied().unwrap_or(0))
            .collect();
        let (outcome, writes) = evaluate(req, &tats, now);
        if !writes.is_empty() && map.len() + writes.len() > self.max_keys {
            map.retain(|_, tat| *tat > now);
            if map.len() + writes.len() > self.max_keys {
                let n = map.len() as u64;
                map.clear();
                self.evictions
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
        for (i, tat) in writes {
            if let Some(b) = buckets.get(i) {
                match map.get_mut(&b.key) {
                    Some(v) => *v = tat,
                    None => {
                        map.insert(b.key.clone(), tat);
                    }
                }
            }
        }
        outcome
    }

    pub fn len(&self) -> usize {
        self.tats.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The limiter the pipeline calls: Redis when configured and healthy, else in process.
pub struct Limiter {
    local: LocalStore,
    redis: Option<RedisStore>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Limiter {
    pub fn new(
        cfg: &crate::config::RateLimitConfig,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Self> {
        let redis = match &cfg.redis_url {
            Some(url) => Some(RedisStore::new(url.expose(), cfg)?),
            None => None,
        };
        metrics.ratelimit_redis_fallback.set(0);
        Ok(Limiter {
            local: LocalStore::new(cfg.local_max_keys),
            redis,
            metrics,
        })
    }

    pub fn backend(&self) -> &'static str {
        match &self.redis {
            Some(r) if !r.degraded() => "redis",
            _ => "local",
        }
    }

    pub fn local(&self) -> &LocalStore {
        &self.local
    }

    pub async fn check(&self, req: &Request) -> Outcome {
        let outcome = match &self.redis {
            Some(redis) => match redis.check(req).await {
                Some(Ok(o)) => {
                    if redis.recovered() {
                        self.metrics.ratelimit_redis_fallback.set(0);
                        tracing::info!("rate limits: Redis is back; shared limits again");
                    }
                    o
                }
                Some(Err(e)) => {
                    self.metrics.ratelimit_redis_errors.inc();
                    if redis.fail() {
                        self.metrics.ratelimit_redis_fallback.set(1);
                        tracing::warn!(error = %e, "rate limits: Redis failed; in-process limits on this replica until it is back");
                    }
                    self.local.check(req, crate::clock::unix_micros())
                }
                // Backing off after a failure.
                None => self.local.check(req, crate::clock::unix_micros()),
            },
            None => self.local.check(req, crate::clock::unix_micros()),
        };
        if !outcome.allowed {
            self.metrics
                .rate_limited
                .get_or_create(&crate::metrics::ScopeLabels {
                    scope: outcome.scope.as_str(),
                })
                .inc();
        }
        outcome
    }
}
