//! The Aggregated Discovery Service, state of the world: each Envoy opens one stream, asks for
//! clusters (CDS) and for the route configuration its listener names (RDS), and gets the whole
//! current set of each, again whenever the policy's resources change. Envoy answers every
//! response with an ACK (the version it applied) or a NACK (the version it kept, and why).

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::resources::{CLUSTER_TYPE, ROUTE_TYPE, Resources};
use super::{Xds, XdsKind};

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, tonic::Status>> + Send>>;
type DeltaStream =
    Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, tonic::Status>> + Send>>;

pub struct AdsService {
    xds: Arc<Xds>,
    /// Shutdown: every stream ends, so Envoy moves to another replica at once instead of
    /// holding a stream nobody updates.
    stop: CancellationToken,
}

impl AdsService {
    pub fn new(xds: Arc<Xds>, stop: CancellationToken) -> Self {
        Self { xds, stop }
    }
}

/// One resource type on one stream.
#[derive(Default)]
struct Subscription {
    /// Envoy has asked for this type.
    asked: bool,
    /// The names asked for (RDS); empty for CDS (all of them).
    names: Vec<String>,
    /// The last response: its nonce and version.
    nonce: String,
    sent: Option<String>,
}

/// One Envoy's ADS stream: what it asked for and what it was sent.
struct EnvoyStream {
    xds: Arc<Xds>,
    node: String,
    nonce: u64,
    clusters: Subscription,
    routes: Subscription,
    out: mpsc::Sender<Result<DiscoveryResponse, tonic::Status>>,
}

impl EnvoyStream {
    fn sub(&mut self, kind: XdsKind) -> &mut Subscription {
        match kind {
            XdsKind::Clusters => &mut self.clusters,
            XdsKind::Routes => &mut self.routes,
        }
    }

    /// Sends `kind` from `res` if Envoy asked for it and has not got this version.
    async fn send(&mut self, kind: XdsKind, res: &Resources, force: bool) -> bool {
        let node = self.node.clone();
        let sub = self.sub(kind);
        if !sub.asked || (!force && sub.sent.as_deref() == Some(&res.version)) {
            return true;
        }
        let resources = match kind {
            XdsKind::Clusters => res.clusters.clone(),
            XdsKind::Routes => {
                let unknown: Vec<&String> = sub
                    .names
                    .iter()
                    .filter(|n| !res.routes.iter().any(|(name, _)| name == *n))
                    .collect();
                if !unknown.is_empty() {
                    tracing::warn!(
                        node = %node,
                        asked = ?unknown,
                        "Envoy asks for a route configuration mcp-authz does not serve (xds.route_config_name)"
                    );
                }
                res.routes
                    .iter()
                    .filter(|(name, _)| sub.names.is_empty() || sub.names.contains(name))
                    .map(|(_, r)| r.clone())
                    .collect()
            }
        };
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let sub = self.sub(kind);
        sub.nonce = nonce.clone();
        sub.sent = Some(res.version.clone());
        self.xds.count(kind, "sent");
        let response = DiscoveryResponse {
            version_info: res.version.clone(),
            resources,
            type_url: kind.type_url().to_owned(),
            nonce,
            ..Default::default()
        };
        self.out.send(Ok(response)).await.is_ok()
    }

    /// Handles one request; false when the stream is gone.
    async fn request(&mut self, req: DiscoveryRequest, current: Option<Arc<Resources>>) -> bool {
        let Some(kind) = XdsKind::of(&req.type_url) else {
            tracing::warn!(node = %self.node, type_url = %req.type_url, "xDS request for a type mcp-authz does not serve; ignored");
            return true;
        };
        if let Some(n) = req.node.as_ref().filter(|n| !n.id.is_empty()) {
            self.node = n.id.clone();
        }
        let node = self.node.clone();
        let sub = self.sub(kind);
        let first = !sub.asked;
        if !first && !req.response_nonce.is_empty() && req.response_nonce != sub.nonce {
            // An answer to an older response: the newer one is on its way or answered.
            return true;
        }
        let names_changed = sub.names != req.resource_names;
        sub.names = req.resource_names.clone();
        sub.asked = true;
        if first || req.response_nonce.is_empty() {
            // A first request on this stream (after a reconnect Envoy may still carry the
            // nonce and version of the stream before), or Envoy asking again: it gets the
            // current resources.
            return match current {
                Some(res) => self.send(kind, &res, true).await,
                None => true,
            };
        }
        let version = self.sub(kind).sent.clone().unwrap_or_default();
        match &req.error_detail {
            Some(e) => {
                self.xds.count(kind, "nack");
                self.xds.rejected(kind, &node, &version, &e.message);
                tracing::error!(
                    node = %node,
                    kind = kind.name(),
                    rejected = %version,
                    kept = %req.version_info,
                    reason = %e.message,
                    "Envoy rejected the configuration; it keeps the version it had"
                );
            }
            None => {
                self.xds.count(kind, "ack");
                self.xds.accepted(kind, &node, &req.version_info);
                tracing::debug!(node = %node, kind = kind.name(), version = %req.version_info, "Envoy applied the configuration");
            }
        }
        // A new set of names (Envoy's listener changed its route name) is answered at once.
        if names_changed && let Some(res) = current {
            return self.send(kind, &res, true).await;
        }
        true
    }

    /// Serves the stream until it ends; the node it served.
    async fn run(
        mut self,
        mut inbound: tonic::Streaming<DiscoveryRequest>,
        mut resources: watch::Receiver<Option<Arc<Resources>>>,
        stop: CancellationToken,
    ) -> String {
        self.serve(&mut inbound, &mut resources, &stop).await;
        self.node
    }

    async fn serve(
        &mut self,
        inbound: &mut tonic::Streaming<DiscoveryRequest>,
        resources: &mut watch::Receiver<Option<Arc<Resources>>>,
        stop: &CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => {
                        let current = resources.borrow().clone();
                        if !self.request(req, current).await {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::info!(node = %self.node, error = %e, "xDS stream ended");
                        return;
                    }
                    None => return,
                },
                changed = resources.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let Some(res) = resources.borrow_and_update().clone() else { continue };
                    // Clusters first: a route never names a cluster Envoy does not have yet.
                    // (A removed cluster goes with the route that named it, in the same push.)
                    if !self.send(XdsKind::Clusters, &res, false).await
                        || !self.send(XdsKind::Routes, &res, false).await
                    {
                        return;
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<ResponseStream>, tonic::Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unix".into());
        let inbound = request.into_inner();
        let (out, rx) = mpsc::channel(8);
        let stream = EnvoyStream {
            xds: self.xds.clone(),
            node: peer,
            nonce: 0,
            clusters: Subscription::default(),
            routes: Subscription::default(),
            out,
        };
        let resources = self.xds.resources();
        let (xds, stop) = (self.xds.clone(), self.stop.clone());
        tokio::spawn(async move {
            let _open = xds.stream_opened();
            let node = stream.run(inbound, resources, stop).await;
            xds.forget(&node);
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<DeltaStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "mcp-authz serves state-of-the-world ADS (ads_config api_type: GRPC), not delta",
        ))
    }
}

impl XdsKind {
    pub fn type_url(self) -> &'static str {
        match self {
            XdsKind::Clusters => CLUSTER_TYPE,
            XdsKind::Routes => ROUTE_TYPE,
        }
    }

    fn of(type_url: &str) -> Option<Self> {
        match type_url {
            CLUSTER_TYPE => Some(XdsKind::Clusters),
            ROUTE_TYPE => Some(XdsKind::Routes),
            _ => None,
        }
    }
}
