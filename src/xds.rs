//! mcp-authz as Envoy's source of routes and clusters (xDS): a server row with an `upstream`
//! becomes a route (`/mcp/<route_key>`, its name in ext_authz's context extensions) and a
//! cluster, served over ADS to every Envoy that connects, within a moment of the row's change.
//!
//! - `resources`: a snapshot as Envoy's resources, and their content version;
//! - `ads`: the gRPC service (state of the world), with its ACK/NACK handling.
//!
//! Failure behaviour: the resources follow the installed policy only, so a policy the compiler
//! refuses changes nothing here either (the last good one keeps being served, and
//! `mcp_authz_policy_reload_failing` says so). Before a policy has loaded nothing is sent: an
//! Envoy that connects to a replica that is not ready keeps what it has instead of getting an
//! empty configuration. When mcp-authz is unreachable, Envoy keeps serving its last accepted
//! routes and clusters (authorization still fails closed: ext_authz has no one to ask). A
//! configuration Envoy refuses is logged with Envoy's reason and counted
//! (`mcp_authz_xds_responses_total{result="nack"}`); Envoy keeps the last version it accepted.

mod ads;
pub mod resources;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use ads::AdsService;
pub use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
pub use resources::{Resources, Settings, build};

use crate::metrics::Metrics;
use crate::policy::PolicyHandle;

/// The two resource types served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum XdsKind {
    Clusters,
    Routes,
}

impl XdsKind {
    pub fn name(self) -> &'static str {
        match self {
            XdsKind::Clusters => "clusters",
            XdsKind::Routes => "routes",
        }
    }
}

/// What one Envoy last said about one resource type.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EnvoyState {
    pub node: String,
    pub kind: &'static str,
    /// The version it applied last.
    pub accepted: Option<String>,
    /// The last version it refused, and why (cleared by a later ACK).
    pub rejected: Option<(String, String)>,
}

/// The resources being served, and what the Envoys answered.
pub struct Xds {
    settings: Settings,
    current: watch::Sender<Option<Arc<Resources>>>,
    metrics: Arc<Metrics>,
    envoys: Mutex<BTreeMap<(String, XdsKind), EnvoyState>>,
}

impl Xds {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Self {
        Self {
            settings,
            current: watch::Sender::new(None),
            metrics,
            envoys: Mutex::new(BTreeMap::new()),
        }
    }

    /// The resources of the policy installed now; None before one has loaded.
    pub fn current(&self) -> Option<Arc<Resources>> {
        self.current.borrow().clone()
    }

    pub(crate) fn resources(&self) -> watch::Receiver<Option<Arc<Resources>>> {
        self.current.subscribe()
    }

    /// Rebuilds the resources from the installed snapshot, and publishes them when their
    /// version changed.
    pub fn refresh(&self, policy: &PolicyHandle) {
        let Some(snapshot) = policy.load() else {
            return;
        };
        let built = build(&snapshot, &self.settings);
        let changed = self
            .current
            .borrow()
            .as_ref()
            .is_none_or(|c| c.version != built.version);
        if changed {
            tracing::info!(
                version = %built.version,
                policy_version = %built.policy_version,
                routes = ?built.served,
                "xDS: serving routes and clusters"
            );
            self.current.send_replace(Some(Arc::new(built)));
        }
    }

    /// Follows the policy: every install rebuilds the resources (pushed to the streams when
    /// their version changed).
    pub async fn run(self: Arc<Self>, policy: Arc<PolicyHandle>, stop: CancellationToken) {
        let mut installs = policy.subscribe();
        loop {
            self.refresh(&policy);
            tokio::select! {
                changed = installs.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
        }
    }

    fn count(&self, kind: XdsKind, result: &'static str) {
        self.metrics
            .xds
            .get_or_create(&crate::metrics::XdsLabels {
                kind: kind.name(),
                result,
            })
            .inc();
    }

    fn with_envoy(&self, kind: XdsKind, node: &str, f: impl FnOnce(&mut EnvoyState)) {
        if let Ok(mut m) = self.envoys.lock() {
            // Bounded: one entry per Envoy node and type; past 1024 nodes, the first by name
            // makes room.
            if m.len() >= 2048 && !m.contains_key(&(node.to_owned(), kind)) {
                m.pop_first();
            }
            let e = m
                .entry((node.to_owned(), kind))
                .or_insert_with(|| EnvoyState {
                    node: node.to_owned(),
                    kind: kind.name(),
                    accepted: None,
                    rejected: None,
                });
            f(e);
            self.publish_rejected(&m);
        }
    }

    /// The gauge of refusals in force, from the table.
    fn publish_rejected(&self, m: &BTreeMap<(String, XdsKind), EnvoyState>) {
        let n = m.values().filter(|e| e.rejected.is_some()).count();
        self.metrics
            .xds_rejected
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A stream ended: what its Envoy said is no longer this replica's to report.
    fn forget(&self, node: &str) {
        if let Ok(mut m) = self.envoys.lock() {
            m.retain(|(n, _), _| n != node);
            self.publish_rejected(&m);
        }
    }

    fn accepted(&self, kind: XdsKind, node: &str, version: &str) {
        self.with_envoy(kind, node, |e| {
            e.accepted = Some(version.to_owned());
            e.rejected = None;
        });
    }

    fn rejected(&self, kind: XdsKind, node: &str, version: &str, reason: &str) {
        // Envoy's message names the resource and the field; long ones are cut.
        let reason: String = reason.chars().take(1024).collect();
        self.with_envoy(kind, node, |e| {
            e.rejected = Some((version.to_owned(), reason));
        });
    }

    /// What every Envoy last answered, for `/status`.
    pub fn envoys(&self) -> Vec<EnvoyState> {
        self.envoys
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn stream_opened(&self) -> StreamGuard<'_> {
        self.metrics.xds_streams.inc();
        StreamGuard(self)
    }
}

/// Counts an open stream while it lives.
struct StreamGuard<'a>(&'a Xds);

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.xds_streams.dec();
    }
}

#[cfg(test)]
mod tests;
