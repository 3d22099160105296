//! Prometheus metrics (OpenMetrics text at `/metrics` on the admin listener), through the
//! `prometheus-client` crate.
//!
//! Per-Check values (decisions by result and reason, Check latency, token-cache hits) are
//! updated on the hot path. Everything the components already count (JWKS, Graph, groups,
//! policy reloads, audit) is read at scrape time by the admin listener's collector
//! (`admin::Observed`), so there is one source of truth for each number. Names: `mcp_authz_<what>[_<unit>][_total]`.

use std::sync::{Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
pub struct ListLabels {
    /// `tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`.
    pub method: &'static str,
    /// `filtered`, `unchanged` (an error answer, no list) or the failure's reason code.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OAuthLabels {
    /// `login`, `registration`, `refresh`.
    pub event: &'static str,
    /// `success` (`registered`), or why it did not happen.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsLabels {
    /// `clusters` or `routes`.
    pub kind: &'static str,
    /// `sent`, `ack` (Envoy applied it) or `nack` (Envoy refused it and kept its last).
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
    /// List answers through the ext_proc filter, by method and result.
    pub lists: Family<ListLabels, Counter>,
    /// Items left out of list answers.
    pub list_items_hidden: Counter,
    /// Sign-ins, registrations and refreshes of the OAuth facade, by outcome.
    pub oauth: Family<OAuthLabels, Counter>,
    /// xDS responses to Envoy, and Envoy's answers to them.
    pub xds: Family<XdsLabels, Counter>,
    /// Envoys with an open xDS stream.
    pub xds_streams: prometheus_client::metrics::gauge::Gauge,
    /// Envoy nodes and kinds whose latest answer on an open stream is a refusal.
    pub xds_rejected: prometheus_client::metrics::gauge::Gauge,
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
        let lists = Family::<ListLabels, Counter>::default();
        registry.register(
            "lists",
            "List answers (tools, prompts, resources) through the ext_proc filter, by method and result",
            lists.clone(),
        );
        let list_items_hidden = Counter::default();
        registry.register(
            "list_items_hidden",
            "Items left out of list answers because the caller may not use them",
            list_items_hidden.clone(),
        );
        let oauth = Family::<OAuthLabels, Counter>::default();
        registry.register(
            "oauth",
            "The OAuth facade's sign-ins, client registrations and token refreshes, by event and result",
            oauth.clone(),
        );
        let xds = Family::<XdsLabels, Counter>::default();
        registry.register(
            "xds_responses",
            "xDS responses sent to Envoy and Envoy's answers (ack: applied, nack: refused, its last accepted version kept), by resource kind",
            xds.clone(),
        );
        let xds_streams = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "xds_streams",
            "Envoys with an open xDS (ADS) stream to this replica",
            xds_streams.clone(),
        );
        let xds_rejected = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "xds_rejected",
            "Envoy nodes and resource kinds (clusters, routes) connected to this replica whose latest answer is a refusal (NACK): they serve an older version",
            xds_rejected.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            oauth,
            xds,
            xds_streams,
            xds_rejected,
            lists,
            list_items_hidden,
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

    /// Counts one decision in `mcp_authz_decisions_total` (`result` is `allow`, `deny` or
    /// `would_deny`).
    pub fn decision(&self, result: &'static str, reason: &'static str) {
        if result == "allow" && reason == "allowed" {
            self.allowed
                .get_or_init(|| {
                    self.decisions.get_or_create_owned(&DecisionLabels {
                        result: "allow",
                        reason,
                    })
                })
                .inc();
        } else {
            self.decisions
                .get_or_create(&DecisionLabels { result, reason })
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
