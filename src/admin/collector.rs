//! What the admin listener reports: the components' own counters, read once into
//! [`Readings`] and rendered two ways, as Prometheus metrics at scrape time ([`Observed`] is the
//! registry's collector) and as `/status` JSON. One reading, one source of truth for each
//! number: the two cannot disagree.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::{Value, json};

use crate::pipeline::Authorizer;
use crate::policy::Rejection;

/// What the admin listener reports on.
#[derive(Clone)]
pub struct Observed {
    pub authorizer: Arc<Authorizer>,
    pub policy_source: crate::policy::Source,
    pub audit: Option<Arc<crate::audit::Auditor>>,
    /// The xDS server, when `xds.enabled`.
    pub xds: Option<Arc<crate::xds::Xds>>,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observed")
    }
}

/// Every number at one instant.
pub struct Readings {
    pub ready: bool,
    pub keys_loaded: bool,
    pub keys: usize,
    pub jwks_refreshes: u64,
    pub jwks_refresh_failures: u64,
    pub token_cache_entries: u64,
    /// How each Check's groups were found: (source label, count).
    pub groups: [(&'static str, u64); 5],
    pub graph: Option<GraphReadings>,
    /// On-behalf-of exchanges and failures.
    pub obo: Option<(u64, u64)>,
    /// In-process rate-limit buckets and evictions.
    pub ratelimit_local: Option<(usize, u64)>,
    pub policy_source: &'static str,
    pub policy_version: Option<String>,
    /// The servers in shadow mode under the current policy.
    pub shadow_servers: Vec<String>,
    pub policy_age_seconds: Option<f64>,
    pub policy_reloads: u64,
    pub policy_rejected: u64,
    pub policy_failing: Option<Rejection>,
    pub sessions_bound_here: Option<u64>,
    pub audit: Option<AuditReadings>,
    pub decision_log: Option<AuditReadings>,
    pub process: super::process::ProcessReadings,
}

pub struct GraphReadings {
    pub calls: u64,
    pub throttled: u64,
    pub failures: u64,
    pub token_requests: u64,
    pub token_failures: u64,
}

impl AuditReadings {
    fn of(au: &crate::audit::Auditor) -> Self {
        let st = &au.stats;
        AuditReadings {
            recorded: st.recorded.load(Relaxed),
            written: st.written.load(Relaxed),
            dropped: [
                ("queue_full", st.dropped_queue_full.load(Relaxed)),
                ("sink_error", st.dropped_sink_error.load(Relaxed)),
                ("rejected", st.dropped_rejected.load(Relaxed)),
            ],
            queue_depth: au.queue_depth(),
            partition_failures: st.partition_failures.load(Relaxed),
        }
    }

    fn status(&self) -> serde_json::Value {
        let mut v = json!({"recorded": self.recorded, "written": self.written, "queue_depth": self.queue_depth, "partition_maintenance_failures": self.partition_failures});
        for (cause, n) in self.dropped {
            v[format!("dropped_{cause}")] = json!(n);
        }
        v
    }
}

pub struct AuditReadings {
    pub recorded: u64,
    pub written: u64,
    /// Dropped events by cause: (cause label, count).
    pub dropped: [(&'static str, u64); 3],
    pub queue_depth: usize,
    /// Failed runs of the PostgreSQL month-partition maintenance (making months, retention).
    pub partition_failures: u64,
}

impl Observed {
    pub fn read(&self) -> Readings {
        let a = &self.authorizer;
        let keys = a.validator.keys();
        let g = &a.groups.stats;
        let snapshot = a.policy.load();
        let (policy_reloads, policy_rejected) = self.policy_source.counters();
        Readings {
            ready: a.ready(),
            keys_loaded: keys.is_loaded(),
            keys: keys.snapshot().len(),
            jwks_refreshes: keys.refreshes.load(Relaxed),
            jwks_refresh_failures: keys.refresh_failures.load(Relaxed),
            token_cache_entries: a.validator.cached_tokens(),
            groups: [
                ("token", g.token.load(Relaxed)),
                ("graph_cache", g.cache_hits.load(Relaxed)),
                ("graph", g.graph_lookups.load(Relaxed)),
                ("stale", g.stale_served.load(Relaxed)),
                ("unavailable", g.unavailable.load(Relaxed)),
            ],
            graph: a.groups.graph().map(|c| {
                let s = &c.stats;
                GraphReadings {
                    calls: s.calls.load(Relaxed),
                    throttled: s.throttled.load(Relaxed),
                    failures: s.failures.load(Relaxed),
                    token_requests: s.token_requests.load(Relaxed),
                    token_failures: s.token_failures.load(Relaxed),
                }
            }),
            obo: a
                .obo
                .as_ref()
                .map(|o| (o.exchanges.load(Relaxed), o.failures.load(Relaxed))),
            ratelimit_local: a
                .limiter
                .as_ref()
                .map(|l| (l.local().len(), l.local().evictions())),
            policy_source: self.policy_source.kind(),
            policy_version: snapshot.as_ref().map(|s| s.version.clone()),
            shadow_servers: snapshot
                .as_ref()
                .map(|s| s.shadowed().into_iter().map(str::to_owned).collect())
                .unwrap_or_default(),
            policy_age_seconds: snapshot
                .as_ref()
                .and_then(|s| s.loaded_at.elapsed().ok())
                .map(|d| d.as_secs_f64()),
            policy_reloads,
            policy_rejected,
            policy_failing: self.policy_source.health().failing(),
            sessions_bound_here: a.sessions.as_ref().map(|s| s.local_count()),
            audit: self.audit.as_deref().map(AuditReadings::of),
            decision_log: a
                .decision_log
                .as_ref()
                .map(|d| AuditReadings::of(&d.writer)),
            process: super::process::ProcessReadings::read(),
        }
    }
}

impl Readings {
    /// `/status`: counters for operators as JSON.
    pub fn to_json(&self) -> Value {
        let failing = self.policy_failing.as_ref().map(|r| {
            json!({"version": r.what, "age_seconds": r.age_seconds(),
                   "problem_count": r.problem_count, "problems": r.problems})
        });
        let pairs = |p: &[(&str, u64)]| {
            Value::Object(p.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect())
        };
        json!({
            "ready": self.ready,
            "keys": {"loaded": self.keys_loaded, "count": self.keys,
                     "refreshes": self.jwks_refreshes, "refresh_failures": self.jwks_refresh_failures},
            "policy": {"source": self.policy_source, "version": self.policy_version,
                       "age_seconds": self.policy_age_seconds,
                       "reloads": self.policy_reloads, "rejected": self.policy_rejected,
                       // The newest version the compiler refused, while no later one compiled:
                       // until it is fixed, every later change (revocations too) waits.
                       "failing": failing,
                       // Shadow mode: the policy's denials on these servers are allowed.
                       "shadow_servers": self.shadow_servers},
            "token_cache_entries": self.token_cache_entries,
            "groups": pairs(&self.groups),
            "graph": self.graph.as_ref().map(|g| json!({
                "calls": g.calls, "throttled": g.throttled, "failures": g.failures,
                "token_requests": g.token_requests, "token_failures": g.token_failures})),
            "obo": self.obo.map(|(exchanges, failures)| json!({"exchanges": exchanges, "failures": failures})),
            "ratelimit_local": self.ratelimit_local.map(|(buckets, evictions)| json!({"buckets": buckets, "evictions": evictions})),
            "sessions_bound_here": self.sessions_bound_here,
            "audit": self.audit.as_ref().map(AuditReadings::status),
            "decision_log": self.decision_log.as_ref().map(AuditReadings::status),
        })
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// An info metric: the gauge 1, labelled `version`.
fn info(e: &mut DescriptorEncoder, name: &str, help: &str, version: &str) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, ConstGauge::<i64>::TYPE)?;
    ConstGauge::new(1i64).encode(family.encode_family(&[("version", version)])?)
}

fn labelled_counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, ConstCounter::<u64>::TYPE)?;
    for (value, n) in values {
        let labels = [(label, *value)];
        ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// The scrape-time half of `/metrics` (the per-Check half is [`crate::metrics::Metrics`]).
impl Collector for Observed {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let r = self.read();
        let e = &mut e;
        info(
            e,
            "build_info",
            "1, labelled with the version of the running binary",
            env!("CARGO_PKG_VERSION"),
        )?;
        let p = &r.process;
        if let Some(cpu) = p.cpu_seconds {
            let c = ConstCounter::new(cpu);
            c.encode(e.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time of the process",
                None,
                c.metric_type(),
            )?)?;
        }
        for (name, help, v) in [
            (
                "process_resident_memory_bytes",
                "Resident memory of the process",
                p.resident_bytes,
            ),
            (
                "process_open_fds",
                "Open file descriptors of the process",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "The process's limit of open file descriptors",
                p.max_fds,
            ),
        ] {
            if let Some(v) = v {
                gauge(e, name, help, v as f64)?;
            }
        }
        gauge(
            e,
            "ready",
            "1 when keys and policy are loaded",
            flag(r.ready),
        )?;
        gauge(
            e,
            "jwks_keys",
            "Signing keys currently loaded",
            r.keys as f64,
        )?;
        counter(
            e,
            "jwks_refreshes",
            "Successful JWKS fetches",
            r.jwks_refreshes,
        )?;
        counter(
            e,
            "jwks_refresh_failures",
            "Failed JWKS fetches (last good keys kept)",
            r.jwks_refresh_failures,
        )?;
        gauge(
            e,
            "token_cache_entries",
            "Verified tokens cached",
            r.token_cache_entries as f64,
        )?;
        labelled_counter(
            e,
            "groups_resolutions",
            "How each Check's groups were found",
            "source",
            &r.groups,
        )?;
        if let (Some(g), Some(client)) = (&r.graph, self.authorizer.groups.graph()) {
            counter(e, "graph_calls", "HTTP calls to Microsoft Graph", g.calls)?;
            let latency = &client.stats.latency;
            latency.encode(e.encode_descriptor(
                "graph_call_duration_seconds",
                "Time per Graph HTTP call",
                None,
                latency.metric_type(),
            )?)?;
            counter(e, "graph_throttled", "Graph answers 429", g.throttled)?;
            counter(
                e,
                "graph_failures",
                "Graph lookups that failed after retries",
                g.failures,
            )?;
            counter(
                e,
                "graph_token_requests",
                "App-token requests for Graph",
                g.token_requests,
            )?;
            counter(
                e,
                "graph_token_failures",
                "Failed app-token requests for Graph",
                g.token_failures,
            )?;
        }
        if let Some((exchanges, failures)) = r.obo {
            counter(
                e,
                "obo_exchanges",
                "On-behalf-of token exchanges",
                exchanges,
            )?;
            counter(e, "obo_failures", "Failed on-behalf-of exchanges", failures)?;
        }
        if let Some((buckets, evictions)) = r.ratelimit_local {
            gauge(
                e,
                "ratelimit_local_buckets",
                "Rate-limit buckets held in process",
                buckets as f64,
            )?;
            counter(
                e,
                "ratelimit_local_evictions",
                "In-process buckets forgotten because the store was full",
                evictions,
            )?;
        }
        counter(
            e,
            "policy_reloads",
            "Policy snapshots installed",
            r.policy_reloads,
        )?;
        counter(
            e,
            "policy_rejected",
            "Policy versions rejected (last good kept)",
            r.policy_rejected,
        )?;
        gauge(
            e,
            "policy_reload_failing",
            "1 while the newest policy version does not compile (later changes wait behind it)",
            flag(r.policy_failing.is_some()),
        )?;
        gauge(
            e,
            "policy_reload_failing_seconds",
            "Seconds since the policy first failed to compile, while it still does; 0 otherwise",
            r.policy_failing
                .as_ref()
                .map(|f| f.age_seconds())
                .unwrap_or(0.0),
        )?;
        gauge(
            e,
            "policy_snapshot_age_seconds",
            "Seconds since the current policy was installed",
            r.policy_age_seconds.unwrap_or(-1.0),
        )?;
        gauge(
            e,
            "policy_shadow_servers",
            "Servers in shadow mode (policy denials allowed and counted as would_deny); 0 in normal operation",
            r.shadow_servers.len() as f64,
        )?;
        if let Some(version) = &r.policy_version {
            info(
                e,
                "policy_version",
                "The current policy version (label)",
                version,
            )?;
        }
        if let Some(au) = &r.audit {
            counter(
                e,
                "audit_events_written",
                "Audit events written",
                au.written,
            )?;
            labelled_counter(
                e,
                "audit_events_dropped",
                "Audit events dropped",
                "cause",
                &au.dropped,
            )?;
            gauge(
                e,
                "audit_queue_depth",
                "Audit events waiting to be written",
                au.queue_depth as f64,
            )?;
            counter(
                e,
                "audit_partition_maintenance_failures",
                "Failed runs of the audit table's month-partition maintenance (PostgreSQL sink)",
                au.partition_failures,
            )?;
        }
        if let Some(d) = &r.decision_log {
            counter(
                e,
                "decision_log_lines_written",
                "Decision log lines written to stdout",
                d.written,
            )?;
            labelled_counter(
                e,
                "decision_log_lines_dropped",
                "Decision log lines dropped",
                "cause",
                &d.dropped,
            )?;
        }
        Ok(())
    }
}
