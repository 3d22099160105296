//! A stand-in for Microsoft Entra ID and Microsoft Graph, for tests and `make demo` only.
//!
//! Entra cannot be reached from our machines, so this speaks its wire format (ENTRA.md): OIDC
//! discovery (v1 and v2), JWKS with rotation, the v2 authorize and token endpoints (client
//! credentials, on-behalf-of, authorization code with PKCE, refresh tokens), and
//! Graph `getMemberObjects` / `transitiveMemberOf` with `@odata.nextLink` paging and throttling.
//! Under `/_standin/` it adds what a real directory does through its portal: minting user
//! tokens, rotating keys, injecting Graph faults, adding users and choosing who is signed in.
//! Never part of `mcp-authz serve`.

mod authorize;
mod discovery;
mod federated;
mod graph;
pub mod jwt;
mod keys;
mod portal;
mod token;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub use authorize::{Api, User};
pub use federated::FederatedCredential;
pub use keys::SigningKey;

use authorize::*;
use discovery::*;
use portal::*;
use token::*;

use crate::unix_now;

/// Groups in a JWT before Entra switches to the overage claims.
pub const OVERAGE_LIMIT: usize = 200;
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
const V1_ISSUER: &str = "https://sts.windows.net/{tenantid}/";

/// A registered application that may use client credentials.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// Empty: no secret credential.
    pub secret: String,
    /// Application permissions granted on Graph (`roles` of its Graph tokens).
    pub graph_roles: Vec<String>,
    /// An uploaded certificate, for client assertions.
    pub certificate: Option<ClientCertificate>,
    /// Federated identity credentials (workload identity): assertions from these issuers.
    pub federated: Vec<FederatedCredential>,
    /// Redirect URIs of its web platform, for the authorization code flow.
    pub redirect_uris: Vec<String>,
}

impl Client {
    /// No credential at all: a public client (mobile and desktop platforms), which redeems
    /// codes and refresh tokens without authenticating.
    fn is_public(&self) -> bool {
        self.secret.is_empty() && self.certificate.is_none() && self.federated.is_empty()
    }
}

/// A certificate credential: its SHA-1 thumbprint (`x5t`) and public key. Entra derives the key
/// from the uploaded certificate; the stand-in, having no X.509 parser, is given both.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub x5t: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
}

/// Faults the Graph stand-in injects, for tests of throttling and outage.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GraphFaults {
    /// The next N Graph calls answer 429.
    #[serde(default)]
    pub throttle_next: u32,
    /// `Retry-After` sent with those 429s (e.g. "1", "0.5"); none when absent.
    pub retry_after: Option<String>,
    /// Every Graph call answers 503 while set.
    #[serde(default)]
    pub down: bool,
    /// Added latency per Graph call.
    #[serde(default)]
    pub delay_ms: u64,
}

/// The stand-in directory: tenants, keys, users' groups, applications.
pub struct Authority {
    base_url: RwLock<String>,
    tenants: Vec<String>,
    keys: RwLock<Vec<Arc<SigningKey>>>,
    directory: RwLock<HashMap<String, Vec<String>>>,
    clients: RwLock<HashMap<String, Client>>,
    /// Users who can sign in, by object id.
    users: RwLock<HashMap<String, User>>,
    /// The user the browser is signed in as.
    signed_in: RwLock<Option<String>>,
    /// Apps that expose an API.
    apis: RwLock<Vec<Api>>,
    /// Authorization codes and refresh tokens issued.
    grants: Mutex<Grants>,
    faults: Mutex<GraphFaults>,
    /// While set, discovery and JWKS answer 503 (an identity-provider outage).
    pub oidc_down: std::sync::atomic::AtomicBool,
    /// Lifetime of app tokens from the token endpoint (`expires_in`), seconds.
    pub app_token_lifetime: AtomicU64,
    /// While set, the token endpoint answers 503 (an outage of token issuance).
    pub token_endpoint_down: std::sync::atomic::AtomicBool,
    /// While set, on-behalf-of requests answer `interaction_required` with a claims challenge.
    pub obo_interaction_required: std::sync::atomic::AtomicBool,
    /// Largest page Graph returns, whatever `$top` asks (Graph may return fewer).
    pub graph_page_size: std::sync::atomic::AtomicUsize,
    pub graph_calls: AtomicU64,
    pub token_requests: AtomicU64,
    pub jwks_requests: AtomicU64,
    /// For federated credentials: the issuers' discovery and keys.
    http: reqwest::Client,
}

/// What to put in a minted user (or app) token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    pub tid: String,
    pub oid: String,
    pub aud: String,
    #[serde(default = "v2")]
    pub ver: String,
    pub scp: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Group ids; above 200 the token carries the overage claims instead and Graph answers.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Emit overage claims whatever the count.
    #[serde(default)]
    pub overage: bool,
    /// Emit the implicit-flow `hasgroups: true` instead of a list.
    #[serde(default)]
    pub hasgroups: bool,
    pub upn: Option<String>,
    pub name: Option<String>,
    pub azp: Option<String>,
    /// Lifetime in seconds from now; negative for an already-expired token.
    #[serde(default = "one_hour")]
    pub expires_in: i64,
    /// `nbf` relative to now (seconds); positive makes it not yet valid.
    #[serde(default)]
    pub nbf_offset: i64,
    /// `iat` relative to now.
    #[serde(default)]
    pub iat_offset: i64,
    /// Sign with this key id instead of the active one.
    pub kid: Option<String>,
    /// Overrides the issuer (for wrong-issuer tests).
    pub iss: Option<String>,
    /// Extra claims merged last.
    #[serde(default)]
    pub extra: serde_json::Map<String, Value>,
}

fn v2() -> String {
    "2.0".into()
}
fn one_hour() -> i64 {
    3600
}

impl Authority {
    /// A directory with these tenants and one signing key.
    pub fn new(tenants: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            base_url: RwLock::new(String::new()),
            tenants: tenants
                .into_iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
            keys: RwLock::new(vec![Arc::new(SigningKey::generate())]),
            directory: RwLock::new(HashMap::new()),
            clients: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            signed_in: RwLock::new(None),
            apis: RwLock::new(Vec::new()),
            grants: Mutex::new(Grants::default()),
            faults: Mutex::new(GraphFaults::default()),
            oidc_down: std::sync::atomic::AtomicBool::new(false),
            graph_page_size: std::sync::atomic::AtomicUsize::new(999),
            obo_interaction_required: std::sync::atomic::AtomicBool::new(false),
            app_token_lifetime: AtomicU64::new(3599),
            token_endpoint_down: std::sync::atomic::AtomicBool::new(false),
            graph_calls: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            jwks_requests: AtomicU64::new(0),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        })
    }

    pub fn set_base_url(&self, url: &str) {
        *write(&self.base_url) = url.trim_end_matches('/').to_owned();
    }

    pub fn base_url(&self) -> String {
        read(&self.base_url).clone()
    }

    pub fn register_client(&self, id: &str, client: Client) {
        write(&self.clients).insert(id.to_owned(), client);
    }

    pub fn set_user_groups(&self, oid: &str, groups: Vec<String>) {
        write(&self.directory).insert(oid.to_ascii_lowercase(), groups);
    }

    pub fn user_groups(&self, oid: &str) -> Option<Vec<String>> {
        read(&self.directory)
            .get(&oid.to_ascii_lowercase())
            .cloned()
    }

    pub fn set_graph_faults(&self, faults: GraphFaults) {
        *lock(&self.faults) = faults;
    }

    pub(crate) fn take_graph_fault(&self) -> GraphFaults {
        let mut f = lock(&self.faults);
        let current = f.clone();
        if f.throttle_next > 0 {
            f.throttle_next -= 1;
        }
        current
    }

    pub fn active_key(&self) -> Arc<SigningKey> {
        let keys = read(&self.keys);
        keys[keys.len() - 1].clone()
    }

    pub fn key(&self, kid: &str) -> Option<Arc<SigningKey>> {
        read(&self.keys).iter().find(|k| k.kid == kid).cloned()
    }

    /// Adds a new key and makes it active; `retire_old` drops every other key from the JWKS.
    pub fn rotate(&self, retire_old: bool) -> String {
        let key = Arc::new(SigningKey::generate());
        let kid = key.kid.clone();
        let mut keys = write(&self.keys);
        if retire_old {
            keys.clear();
        }
        keys.push(key);
        kid
    }

    pub fn v2_issuer(&self, tid: &str) -> String {
        format!("{}/{tid}/v2.0", self.base_url())
    }

    pub fn v1_issuer(tid: &str) -> String {
        V1_ISSUER.replace("{tenantid}", tid)
    }

    /// The JWKS document; `issuer` per key as Entra's v2 endpoint shows it (`None` for v1).
    pub fn jwks(&self, issuer: Option<&str>) -> Value {
        let keys: Vec<Value> = read(&self.keys).iter().map(|k| k.jwk(issuer)).collect();
        json!({ "keys": keys })
    }

    /// Mints a token as Entra would issue it.
    pub fn mint(&self, req: &MintRequest) -> Result<String, String> {
        let key = match &req.kid {
            Some(kid) => self.key(kid).ok_or_else(|| format!("no key {kid}"))?,
            None => self.active_key(),
        };
        let now = unix_now() as i64;
        let tid = req.tid.to_ascii_lowercase();
        let iss = match (&req.iss, req.ver.as_str()) {
            (Some(iss), _) => iss.clone(),
            (None, "1.0") => Self::v1_issuer(&tid),
            (None, _) => self.v2_issuer(&tid),
        };
        let mut claims = serde_json::Map::new();
        claims.insert("aud".into(), json!(req.aud));
        claims.insert("iss".into(), json!(iss));
        claims.insert("iat".into(), json!(now + req.iat_offset));
        claims.insert("nbf".into(), json!(now + req.nbf_offset));
        claims.insert("exp".into(), json!(now + req.expires_in));
        claims.insert("ver".into(), json!(req.ver));
        claims.insert("tid".into(), json!(tid));
        claims.insert("oid".into(), json!(req.oid));
        claims.insert(
            "sub".into(),
            json!(format!("sub-{}", &req.oid[..8.min(req.oid.len())])),
        );
        if let Some(scp) = &req.scp {
            claims.insert("scp".into(), json!(scp));
        }
        if !req.roles.is_empty() {
            claims.insert("roles".into(), json!(req.roles));
        }
        let overage = req.overage || req.groups.len() > OVERAGE_LIMIT;
        if req.hasgroups {
            claims.insert("hasgroups".into(), json!(true));
        } else if overage {
            claims.insert("_claim_names".into(), json!({"groups": "src1"}));
            claims.insert(
                "_claim_sources".into(),
                json!({"src1": {"endpoint": format!(
                    "https://graph.windows.net/{tid}/users/{}/getMemberObjects", req.oid)}}),
            );
        } else if !req.groups.is_empty() {
            claims.insert("groups".into(), json!(req.groups));
        }
        if !req.groups.is_empty() {
            self.set_user_groups(&req.oid, req.groups.clone());
        }
        if let Some(upn) = &req.upn {
            let name = if req.ver == "1.0" {
                "upn"
            } else {
                "preferred_username"
            };
            claims.insert(name.into(), json!(upn));
        }
        if let Some(name) = &req.name {
            claims.insert("name".into(), json!(name));
        }
        let client = req
            .azp
            .clone()
            .unwrap_or_else(|| "11111111-2222-3333-4444-555555555555".into());
        claims.insert(
            if req.ver == "1.0" { "appid" } else { "azp" }.into(),
            json!(client),
        );
        for (k, v) in &req.extra {
            claims.insert(k.clone(), v.clone());
        }
        let mut header = json!({"typ": "JWT", "alg": "RS256", "kid": key.kid});
        if req.ver == "1.0" {
            header["x5t"] = json!(key.kid);
        }
        Ok(key.sign_jwt(&header, &Value::Object(claims).to_string()))
    }

    /// Simulates an outage of discovery and JWKS (true) or ends it (false).
    pub fn set_oidc_down(&self, down: bool) {
        self.oidc_down.store(down, Ordering::Relaxed);
    }

    /// Entra's refusal when `tenant` is not served or during an outage; `None` when it is.
    fn oidc_refusal(&self, tenant: &str) -> Option<Response> {
        if self.oidc_down.load(Ordering::Relaxed) {
            return Some((StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response());
        }
        (!self.known_tenant(tenant)).then(|| unknown_tenant(tenant))
    }

    fn known_tenant(&self, tenant: &str) -> bool {
        matches!(tenant, "common" | "organizations") || self.serves(tenant)
    }

    /// `tenant` is one of the directories this authority serves (not `common`/`organizations`).
    fn serves(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|t| t.eq_ignore_ascii_case(tenant))
    }

    /// The `tid` in the issuers an endpoint under `tenant` shows: the directory (lower case) on
    /// a directory's own endpoints, Entra's `{tenantid}` template on `common`/`organizations`.
    fn issuer_tid(&self, tenant: &str) -> String {
        if self.serves(tenant) {
            tenant.to_ascii_lowercase()
        } else {
            "{tenantid}".into()
        }
    }

    /// The HTTP interface.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                "/{tenant}/v2.0/.well-known/openid-configuration",
                get(discovery_v2),
            )
            .route(
                "/{tenant}/.well-known/openid-configuration",
                get(discovery_v1),
            )
            .route("/{tenant}/discovery/v2.0/keys", get(keys_v2))
            .route("/{tenant}/discovery/keys", get(keys_v1))
            .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
            .route("/{tenant}/oauth2/v2.0/authorize", get(authorize_endpoint))
            .route("/_standin/signin", post(signin_endpoint))
            .route("/_standin/users", post(user_endpoint))
            .route("/_standin/tokens", post(mint_endpoint))
            .route("/_standin/keys/rotate", post(rotate_endpoint))
            .route("/_standin/graph/faults", post(faults_endpoint))
            .route("/_standin/stats", get(stats_endpoint))
            .merge(graph::router())
            .with_state(self.clone())
    }

    /// A directory with these tenants served on a free loopback port until the runtime ends;
    /// returns it and its base URL. For tests and tools.
    pub async fn spawn_local(tenants: Vec<String>) -> std::io::Result<(Arc<Self>, String)> {
        let authority = Self::new(tenants);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        authority.set_base_url(&url);
        tokio::spawn(authority.clone().serve(listener, std::future::pending()));
        Ok((authority, url))
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr()
            && self.base_url().is_empty()
        {
            self.set_base_url(&format!("http://{addr}"));
        }
        axum::serve(crate::nodelay(listener), self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

/// Entra's error document for the token and discovery endpoints.
fn aad_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let now = time_string();
    (
        status,
        Json(json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description} Trace ID: {} Correlation ID: {} Timestamp: {now}", uuid::Uuid::new_v4(), uuid::Uuid::new_v4()),
            "error_codes": [code],
            "timestamp": now,
            "trace_id": uuid::Uuid::new_v4().to_string(),
            "correlation_id": uuid::Uuid::new_v4().to_string(),
        })),
    )
        .into_response()
}

fn time_string() -> String {
    // RFC 3339-ish UTC time as Entra prints it ("2024-01-01 00:00:00Z").
    let secs = unix_now();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod authorize_tests;
#[cfg(test)]
mod tests;
