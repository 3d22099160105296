//! Prometheus metrics (OpenMetrics text at `/metrics` on the admin listener), through the
//! `prometheus-client` crate.
//!
//! Per-Check values (decisions by result and reason, Check latency, token-cache hits) are
//! updated on the hot path. Everything the components already count (JWKS, Graph, groups,
//! policy reloads, audit) is read at scrape time by a collector, so there is one source of
//! truth for each number. Names: `mcp_authz_<what>[_<unit>][_total]`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub result: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    pub scope: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub check_seconds: Histogram,
    pub token_cache: Family<CacheLabels, Counter>,
    pub rate_limited: Family<ScopeLabels, Counter>,
    pub ratelimit_redis_errors: Counter,
    pub ratelimit_redis_fallback: prometheus_client::metrics::gauge::Gauge,
    /// The series every warm Check touches, resolved once on first use: a Family lookup takes
    /// a read lock and hashes the labels, which two workers do on every Check otherwise.
    allowed: OnceLock<Counter>,
    cache_hit: OnceLock<Counter>,
    cache_miss: OnceLock<Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mcp_authz");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Checks answered, by result and reason code",
            decisions.clone(),
        );
        // 25 µs … ~0.4 s: a warm Check is tens of µs, a Graph miss tens of ms.
        let check_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(25e-6, 2.0, 15),
        );
        registry.register_with_unit(
            "check_duration",
            "Time to decide one Check",
            prometheus_client::registry::Unit::Seconds,
            check_seconds.clone(),
        );
        let token_cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "token_cache",
            "Verified-token cache lookups, by result",
            token_cache.clone(),
        );
        let rate_limited = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by the limit that refused (user, tool, tenant, global)",
            rate_limited.clone(),
        );
        let ratelimit_redis_errors = Counter::default();
        registry.register(
            "ratelimit_redis_errors",
            "Rate-limit calls to Redis that failed or timed out",
            ratelimit_redis_errors.clone(),
        );
        let ratelimit_redis_fallback = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "ratelimit_redis_fallback",
            "1 while Redis is failing and this replica limits in process",
            ratelimit_redis_fallback.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            decisions,
            check_seconds,
            token_cache,
            rate_limited,
            ratelimit_redis_errors,
            ratelimit_redis_fallback,
            allowed: OnceLock::new(),
            cache_hit: OnceLock::new(),
            cache_miss: OnceLock::new(),
        }
    }

    /// Counts one decision in `mcp_authz_decisions_total`.
    pub fn decision(&self, allowed: bool, reason: &'static str) {
        let labels = |result| DecisionLabels { result, reason };
        if allowed && reason == "allowed" {
            self.allowed
                .get_or_init(|| self.decisions.get_or_create_owned(&labels("allow")))
                .inc();
        } else {
            self.decisions
                .get_or_create(&labels(if allowed { "allow" } else { "deny" }))
                .inc();
        }
    }

    /// Counts one verified-token cache lookup in `mcp_authz_token_cache_total`.
    pub fn token_cache_lookup(&self, hit: bool) {
        let (cell, result) = if hit {
            (&self.cache_hit, "hit")
        } else {
            (&self.cache_miss, "miss")
        };
        cell.get_or_init(|| {
            self.token_cache
                .get_or_create_owned(&CacheLabels { result })
        })
        .inc();
    }

    pub fn register_collector(&self, c: Box<dyn Collector>) {
        if let Ok(mut r) = self.registry.lock() {
            r.register_collector(c);
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }
}

/// Reads the components' own counters at scrape time.
#[derive(Clone)]
pub struct StateCollector {
    pub authorizer: Arc<crate::pipeline::Authorizer>,
    pub policy_source: crate::policy::Source,
    pub audit: Option<Arc<crate::audit::Auditor>>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn labelled_counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::TypedMetric;
    let mut family = e.encode_descriptor(name, help, None, ConstCounter::<u64>::TYPE)?;
    for (value, n) in values {
        let labels = [(label, *value)];
        ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

use prometheus_client::metrics::TypedMetric as _;

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let a = &self.authorizer;
        let keys = a.validator.keys();
        gauge(
            &mut e,
            "ready",
            "1 when keys and policy are loaded",
            if a.ready() { 1.0 } else { 0.0 },
        )?;
        gauge(
            &mut e,
            "jwks_keys",
            "Signing keys currently loaded",
            keys.snapshot().len() as f64,
        )?;
        counter(
            &mut e,
            "jwks_refreshes",
            "Successful JWKS fetches",
            keys.refreshes.load(Relaxed),
        )?;
        counter(
            &mut e,
            "jwks_refresh_failures",
            "Failed JWKS fetches (last good keys kept)",
            keys.refresh_failures.load(Relaxed),
        )?;
        gauge(
            &mut e,
            "token_cache_entries",
            "Verified tokens cached",
            a.validator.cached_tokens() as f64,
        )?;

        let g = &a.groups.stats;
        labelled_counter(
            &mut e,
            "groups_resolutions",
            "How each Check's groups were found",
            "source",
            &[
                ("token", g.token.load(Relaxed)),
                ("graph_cache", g.cache_hits.load(Relaxed)),
                ("graph", g.graph_lookups.load(Relaxed)),
                ("stale", g.stale_served.load(Relaxed)),
                ("unavailable", g.unavailable.load(Relaxed)),
            ],
        )?;
        if let Some(client) = a.groups.graph() {
            let s = &client.stats;
            counter(
                &mut e,
                "graph_calls",
                "HTTP calls to Microsoft Graph",
                s.calls.load(Relaxed),
            )?;
            s.latency.encode(e.encode_descriptor(
                "graph_call_duration_seconds",
                "Time per Graph HTTP call",
                None,
                s.latency.metric_type(),
            )?)?;
            counter(
                &mut e,
                "graph_throttled",
                "Graph answers 429",
                s.throttled.load(Relaxed),
            )?;
            counter(
                &mut e,
                "graph_failures",
                "Graph lookups that failed after retries",
                s.failures.load(Relaxed),
            )?;
            counter(
                &mut e,
                "graph_token_requests",
                "App-token requests for Graph",
                s.token_requests.load(Relaxed),
            )?;
            counter(
                &mut e,
                "graph_token_failures",
                "Failed app-token requests for Graph",
                s.token_failures.load(Relaxed),
            )?;
        }
        if let Some(obo) = &a.obo {
            counter(
                &mut e,
                "obo_exchanges",
                "On-behalf-of token exchanges",
                obo.exchanges.load(Relaxed),
            )?;
            counter(
                &mut e,
                "obo_failures",
                "Failed on-behalf-of exchanges",
                obo.failures.load(Relaxed),
            )?;
        }

        if let Some(l) = &a.limiter {
            gauge(
                &mut e,
                "ratelimit_local_buckets",
                "Rate-limit buckets held in process",
                l.local().len() as f64,
            )?;
            counter(
                &mut e,
                "ratelimit_local_evictions",
                "In-process buckets forgotten because the store was full",
                l.local().evictions(),
            )?;
        }

        let (reloads, rejected) = self.policy_source.counters();
        counter(
            &mut e,
            "policy_reloads",
            "Policy snapshots installed",
            reloads,
        )?;
        counter(
            &mut e,
            "policy_rejected",
            "Policy versions rejected (last good kept)",
            rejected,
        )?;
        let failing = self.policy_source.health().failing();
        gauge(
            &mut e,
            "policy_reload_failing",
            "1 while the newest policy version does not compile (later changes wait behind it)",
            if failing.is_some() { 1.0 } else { 0.0 },
        )?;
        gauge(
            &mut e,
            "policy_reload_failing_seconds",
            "Seconds since the policy first failed to compile, while it still does; 0 otherwise",
            failing.as_ref().map(|r| r.age_seconds()).unwrap_or(0.0),
        )?;
        let snapshot = a.policy.load();
        let age = snapshot
            .as_ref()
            .and_then(|s| s.loaded_at.elapsed().ok())
            .map(|d| d.as_secs_f64());
        gauge(
            &mut e,
            "policy_snapshot_age_seconds",
            "Seconds since the current policy was installed",
            age.unwrap_or(-1.0),
        )?;
        if let Some(s) = &snapshot {
            let mut family = e.encode_descriptor(
                "policy_version",
                "The current policy version (label)",
                None,
                ConstGauge::<i64>::TYPE,
            )?;
            let labels = [("version", s.version.as_str())];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }

        if let Some(audit) = &self.audit {
            let st = &audit.stats;
            counter(
                &mut e,
                "audit_events_written",
                "Audit events written",
                st.written.load(Relaxed),
            )?;
            labelled_counter(
                &mut e,
                "audit_events_dropped",
                "Audit events dropped",
                "cause",
                &[
                    ("queue_full", st.dropped_queue_full.load(Relaxed)),
                    ("sink_error", st.dropped_sink_error.load(Relaxed)),
                    ("rejected", st.dropped_rejected.load(Relaxed)),
                ],
            )?;
            gauge(
                &mut e,
                "audit_queue_depth",
                "Audit events waiting to be written",
                audit.queue_depth() as f64,
            )?;
        }
        Ok(())
    }
}
