//! HTTP listeners.
//!
//! - admin (internal): `/healthz` (the process answers), `/readyz` (keys and policy loaded),
//!   `/status` and `/metrics` (one reading of the components' counters: `collector`).
//! - metadata (public, routed by Envoy without ext_authz): RFC 9728 OAuth Protected Resource
//!   Metadata at `/.well-known/oauth-protected-resource/<mcp path>` and at the root form.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::mcp::HttpView;
use crate::pipeline::Authorizer;
use crate::response::{ResponseSettings, WELL_KNOWN_PRM, public_base};

mod collector;
mod process;

pub use collector::{Observed, Readings};

pub fn admin_router(observed: Observed) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(observed))
}

/// Prometheus / OpenMetrics text.
async fn metrics(State(o): State<Arc<Observed>>) -> Response {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        o.authorizer.metrics.render(),
    )
        .into_response()
}

/// Counters for operators as JSON (the same reading as `/metrics`).
async fn status(State(o): State<Arc<Observed>>) -> Response {
    let mut doc = o.read().to_json();
    if let Some(x) = &o.xds {
        let current = x.current();
        doc["xds"] = json!({
            "version": current.as_ref().map(|r| r.version.clone()),
            "policy_version": current.as_ref().map(|r| r.policy_version.clone()),
            "routes": current.as_ref().map(|r| r.served.iter().map(|(p, c)| json!({"path": p, "cluster": c})).collect::<Vec<_>>()),
            "envoys": x.envoys(),
        });
    }
    Json(doc).into_response()
}

async fn readyz(State(o): State<Arc<Observed>>) -> Response {
    let a = &o.authorizer;
    let keys = a.validator.keys().is_loaded();
    let policy = a.policy.is_loaded();
    let status = if keys && policy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let version = a.policy.load().map(|s| s.version.clone());
    (
        status,
        Json(json!({"ready": keys && policy, "keys_loaded": keys, "policy_loaded": policy, "policy_version": version})),
    )
        .into_response()
}

/// What the metadata document says besides `resource`.
#[derive(Debug, Clone)]
pub struct MetadataSettings {
    pub authorization_servers: Vec<String>,
    pub scopes: Vec<String>,
    pub resource_name: String,
    pub resource_documentation: Option<String>,
    pub response: ResponseSettings,
}

struct MetadataState {
    authorizer: Arc<Authorizer>,
    settings: MetadataSettings,
}

pub fn metadata_router(authorizer: Arc<Authorizer>, settings: MetadataSettings) -> Router {
    let state = Arc::new(MetadataState {
        authorizer,
        settings,
    });
    Router::new()
        .route(WELL_KNOWN_PRM, get(metadata))
        .route(&format!("{WELL_KNOWN_PRM}/{{*rest}}"), get(metadata))
        .route(crate::assertion::JWKS_PATH, get(assertion_jwks))
        .with_state(state)
}

/// The public keys of the identity assertions; 404 when they are off.
async fn assertion_jwks(State(s): State<Arc<MetadataState>>) -> Response {
    match &s.authorizer.assertions {
        Some(a) => (
            // Short: a rotated key is picked up by verifiers within a minute.
            [("cache-control", "public, max-age=60")],
            Json(a.jwks()),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "not_found"}))).into_response(),
    }
}

async fn metadata(State(s): State<Arc<MetadataState>>, request: Request) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, Json(json!({"error": "not_found"}))).into_response();
    let path = request.uri().path();
    let resource_path = path.strip_prefix(WELL_KNOWN_PRM).unwrap_or_default();
    let prefix = &s.settings.response.path_prefix;
    if !resource_path.is_empty() {
        // Only paths of enabled MCP servers have metadata.
        let Some(rest) = resource_path.strip_prefix(prefix.as_str()) else {
            return not_found();
        };
        let server = rest.split('/').next().unwrap_or_default();
        let Some(snapshot) = s.authorizer.policy.load() else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "policy_unavailable"})),
            )
                .into_response();
        };
        if !snapshot
            .server_by_route(server)
            .is_some_and(|srv| srv.enabled)
        {
            return not_found();
        }
    }
    let headers: &HeaderMap = request.headers();
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("http");
    let view = HttpView {
        host,
        scheme,
        ..Default::default()
    };
    let Some(base) = public_base(&s.settings.response, &view) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "bad_host"}))).into_response();
    };
    let mut doc = json!({
        "resource": format!("{base}{resource_path}"),
        "authorization_servers": s.settings.authorization_servers,
        "scopes_supported": s.settings.scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": s.settings.resource_name,
    });
    if let Some(d) = &s.settings.resource_documentation {
        doc["resource_documentation"] = json!(d);
    }
    // Built from the client's Host (development only): no shared cache may keep it.
    if s.settings.response.public_base_url.is_none() {
        return (
            [
                ("cache-control", "no-store"),
                ("vary", "host, x-forwarded-proto"),
            ],
            Json(doc),
        )
            .into_response();
    }
    ([("cache-control", "public, max-age=300")], Json(doc)).into_response()
}
