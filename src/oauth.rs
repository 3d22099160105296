//! mcp-authz as the OAuth authorization server MCP clients sign in through, in front of Entra.
//!
//! A spec-conformant MCP client cannot sign in at Entra itself: Entra has no dynamic client
//! registration, does not advertise PKCE methods and refuses the `resource` parameter MCP
//! clients must send. So the gateway is the authorization server the client sees (its RFC 8414
//! metadata, registration, PKCE, consent) and signs the user in at Entra with its own app
//! registration; the access token the client ends up with is Entra's, for the API, validated
//! on the request path exactly as before.
//!
//! The flow: `/oauth/authorize` checks the client's request and shows the consent page (once
//! per browser and client); the approval sends the browser to Entra with the gateway's own
//! PKCE pair and state; `/oauth/callback` redeems Entra's code, and redirects to the client
//! with the gateway's one-time code (and `iss`, RFC 9207); `/oauth/token` trades that code,
//! PKCE-checked, for Entra's access token and a gateway refresh token that seals Entra's
//! (rotated on every use, a used one refused).
//!
//! - `clients`: registered clients (RFC 7591).
//! - `store`: the transient state, taken once.
//! - `seal`: the AEAD over refresh tokens and cookies.
//! - `entra`: the gateway toward Entra.
//! - `flow`: authorize, consent, callback. `token`: the token endpoint. `page`: the HTML.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::identity::Validator;
use crate::metrics::Metrics;
use crate::policy::PolicyHandle;

pub mod cimd;
pub mod clients;
pub mod entra;
mod flow;
mod page;
pub mod seal;
pub mod store;
mod token;

#[cfg(test)]
mod tests;

pub const AUTHORIZE_PATH: &str = "/oauth/authorize";
pub const CONSENT_PATH: &str = "/oauth/consent";
pub const CALLBACK_PATH: &str = "/oauth/callback";
pub const TOKEN_PATH: &str = "/oauth/token";
pub const REGISTER_PATH: &str = "/oauth/register";
pub const AS_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
pub const OIDC_METADATA_PATH: &str = "/.well-known/openid-configuration";

/// Settings of the facade, from the `oauth` section and the MCP URLs.
pub struct Settings {
    /// The issuer: `mcp.public_base_url`.
    pub issuer: String,
    /// `mcp.path_prefix`: a `resource` is `{issuer}{prefix}{server}`.
    pub path_prefix: String,
    /// The MCP scopes clients may ask for (what the resource metadata advertises).
    pub scopes: Vec<String>,
    pub registration: bool,
    pub code_ttl: Duration,
    pub refresh_ttl: Duration,
    pub consent_ttl: Duration,
}

/// The authorization server.
pub struct Facade {
    pub settings: Settings,
    pub registry: clients::Registry,
    /// Client ID Metadata Documents, when accepted.
    pub documents: Option<cimd::Documents>,
    /// Registrations in PostgreSQL (`state_store: postgres`); else in `registry` only.
    pub client_rows: Option<clients::ClientRows>,
    pub store: store::Store,
    pub sealer: seal::Sealer,
    pub entra: entra::EntraClient,
    validator: Arc<Validator>,
    policy: Arc<PolicyHandle>,
    metrics: Arc<Metrics>,
}

impl Facade {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Settings,
        registry: clients::Registry,
        store: store::Store,
        sealer: seal::Sealer,
        entra: entra::EntraClient,
        validator: Arc<Validator>,
        policy: Arc<PolicyHandle>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            settings,
            registry,
            documents: None,
            client_rows: None,
            store,
            sealer,
            entra,
            validator,
            policy,
            metrics,
        }
    }

    pub fn with_documents(mut self, documents: Option<cimd::Documents>) -> Self {
        self.documents = documents;
        self
    }

    pub fn with_client_rows(mut self, rows: Option<clients::ClientRows>) -> Self {
        self.client_rows = rows;
        self
    }

    /// The client a `client_id` names: a registered one, or the one its metadata document
    /// describes (an https URL, when documents are accepted). `Err` says why, safe to show.
    async fn client(&self, client_id: &str) -> Result<Arc<clients::Client>, String> {
        if cimd::is_document_id(client_id)
            && let Some(docs) = &self.documents
        {
            return docs.client(client_id).await.map_err(|e| {
                tracing::warn!(client_id = %format_args!("{client_id:.200}"), error = %e, "oauth: a client metadata document was refused");
                e.to_string()
            });
        }
        if let Some(c) = self.registry.get(client_id) {
            return Ok(c);
        }
        let unknown = || "the application is not registered here (unknown client_id)".to_owned();
        // Registered at another replica: from the shared rows, then cached here.
        if let Some(rows) = &self.client_rows
            && client_id.starts_with(clients::DYNAMIC_PREFIX)
            && client_id.len() <= 256
        {
            return match rows.get(client_id).await {
                Ok(Some(c)) => Ok(self.registry.insert(c)),
                Ok(None) => Err(unknown()),
                Err(e) => {
                    tracing::error!(error = %e, "oauth: registrations could not be read");
                    Err("the authorization server is unavailable; try again".into())
                }
            };
        }
        Err(unknown())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.issuer)
    }

    /// The path of the issuer (`/gw` for `https://host/gw`), under which every endpoint lives.
    fn base_path(&self) -> String {
        url::Url::parse(&self.settings.issuer)
            .map(|u| u.path().trim_end_matches('/').to_owned())
            .unwrap_or_default()
    }

    /// RFC 8414 authorization server metadata.
    pub fn metadata(&self) -> Value {
        let mut doc = json!({
            "issuer": self.settings.issuer,
            "authorization_endpoint": self.url(AUTHORIZE_PATH),
            "token_endpoint": self.url(TOKEN_PATH),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": self.settings.scopes,
            "authorization_response_iss_parameter_supported": true,
            "client_id_metadata_document_supported": self.documents.is_some(),
        });
        if self.settings.registration {
            doc["registration_endpoint"] = Value::from(self.url(REGISTER_PATH));
        }
        doc
    }

    /// Whether `resource` is the canonical URL of an enabled MCP server here.
    fn known_resource(&self, resource: &str) -> bool {
        let Some(rest) = resource
            .strip_prefix(self.settings.issuer.as_str())
            .and_then(|r| r.strip_prefix(self.settings.path_prefix.as_str()))
        else {
            return false;
        };
        let name = rest.strip_suffix('/').unwrap_or(rest);
        if name.is_empty() || name.contains('/') {
            return false;
        }
        self.policy
            .load()
            .and_then(|s| s.server_by_route(name).map(|srv| srv.enabled))
            .unwrap_or(false)
    }

    /// Counts one event in `mcp_authz_oauth_total{event,result}`.
    fn count(&self, event: &'static str, result: &'static str) {
        self.metrics
            .oauth
            .get_or_create(&crate::metrics::OAuthLabels { event, result })
            .inc();
    }
}

/// A budget of `limit` events per minute, over all callers (registrations, document fetches).
pub(crate) struct PerMinute {
    window: std::sync::Mutex<(std::time::Instant, u32)>,
    limit: u32,
}

impl PerMinute {
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            window: std::sync::Mutex::new((std::time::Instant::now(), 0)),
            limit,
        }
    }

    /// Counts one event; false when this minute's budget is spent.
    pub(crate) fn admit(&self) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.0.elapsed() >= Duration::from_secs(60) {
            *w = (std::time::Instant::now(), 0);
        }
        if w.1 >= self.limit {
            return false;
        }
        w.1 += 1;
        true
    }
}

/// The routes, mounted on the metadata listener (Envoy routes them there without ext_authz).
pub fn router(facade: Arc<Facade>) -> Router {
    let base = facade.base_path();
    let mut r = Router::new()
        .route(&format!("{AS_METADATA_PATH}{base}"), get(metadata))
        .route(&format!("{OIDC_METADATA_PATH}{base}"), get(metadata))
        .route(&format!("{base}{AUTHORIZE_PATH}"), get(flow::authorize))
        .route(&format!("{base}{CONSENT_PATH}"), post(flow::consent))
        .route(&format!("{base}{CALLBACK_PATH}"), get(flow::callback))
        .route(&format!("{base}{TOKEN_PATH}"), post(token::token));
    if !base.is_empty() {
        r = r.route(&format!("{base}{OIDC_METADATA_PATH}"), get(metadata));
    }
    if facade.settings.registration {
        r = r.route(&format!("{base}{REGISTER_PATH}"), post(register));
    }
    r.with_state(facade)
}

async fn metadata(State(f): State<Arc<Facade>>) -> Response {
    (
        [("cache-control", "public, max-age=300")],
        axum::Json(f.metadata()),
    )
        .into_response()
}

/// An OAuth error as JSON (RFC 6749 §5.2, RFC 7591 §3.2.2), never cached.
fn json_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [("cache-control", "no-store"), ("pragma", "no-cache")],
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// `POST /oauth/register` (RFC 7591).
async fn register(
    State(f): State<Arc<Facade>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let json_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json_type {
        f.count("registration", "invalid_client_metadata");
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_client_metadata",
            "the registration is sent as application/json",
        );
    }
    if !f.registry.admit() {
        f.count("registration", "rate_limited");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "60"), ("cache-control", "no-store")],
            axum::Json(json!({"error": "temporarily_unavailable", "error_description": "too many registrations; try again in a minute"})),
        )
            .into_response();
    }
    match clients::register(&body, crate::clock::unix_now()) {
        Ok((client, answer)) => {
            if let Some(rows) = &f.client_rows
                && let Err(e) = rows.insert(&client).await
            {
                tracing::error!(error = %e, "oauth: a registration could not be stored");
                f.count("registration", "store_failed");
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "registration is unavailable; retry later",
                );
            }
            tracing::info!(client_id = %client.client_id, client_name = ?client.client_name, redirect_uris = ?client.redirect_uris, "oauth: client registered");
            f.registry.insert(client);
            f.count("registration", "registered");
            (
                StatusCode::CREATED,
                [("cache-control", "no-store"), ("pragma", "no-cache")],
                axum::Json(answer),
            )
                .into_response()
        }
        Err(refused) => {
            f.count("registration", refused.error);
            json_error(StatusCode::BAD_REQUEST, refused.error, &refused.description)
        }
    }
}
