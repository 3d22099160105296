//! A stand-in for Microsoft Entra ID and Microsoft Graph, for tests and `make demo` only.
//!
//! Entra cannot be reached from our machines, so this speaks its wire format (ENTRA.md): OIDC
//! discovery (v1 and v2), JWKS with rotation, the v2 token endpoint (client credentials), and
//! Graph `getMemberObjects` / `transitiveMemberOf` with `@odata.nextLink` paging and throttling.
//! Under `/_standin/` it adds what a real directory does through its portal: minting user
//! tokens, rotating keys, injecting Graph faults. Never part of `mcp-authz serve`.

mod graph;
pub mod jwt;
mod keys;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub use keys::SigningKey;

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
}

/// A certificate credential: its SHA-1 thumbprint (`x5t`) and public key. Entra derives the key
/// from the uploaded certificate; the stand-in, having no X.509 parser, is given both.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub x5t: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
}

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Checks a client assertion (RFC 7523 as Entra profiles it): signed by the client's registered
/// certificate named by `x5t`, `aud` the token endpoint, `iss` = `sub` = the client, in time.
fn assertion_ok(client: &Client, client_id: &str, token_endpoint: &str, assertion: &str) -> bool {
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
    let Some(cert) = &client.certificate else {
        return false;
    };
    let mut parts = assertion.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let b64 =
        |s: &str| base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s).ok();
    let (Some(header), Some(payload), Some(sig)) = (b64(h), b64(p), b64(sig)) else {
        return false;
    };
    let header: Value = serde_json::from_slice(&header).unwrap_or_default();
    let claims: Value = serde_json::from_slice(&payload).unwrap_or_default();
    let key = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &cert.public_key_der);
    let now = unix_now();
    header["alg"] == "RS256"
        && header["x5t"].as_str() == Some(cert.x5t.as_str())
        && key.verify(format!("{h}.{p}").as_bytes(), &sig).is_ok()
        && claims["aud"].as_str() == Some(token_endpoint)
        && claims["iss"].as_str() == Some(client_id)
        && claims["sub"].as_str() == Some(client_id)
        && claims["exp"].as_u64().is_some_and(|e| e > now)
        && claims["nbf"].as_u64().is_none_or(|n| n <= now + 300)
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
            faults: Mutex::new(GraphFaults::default()),
            oidc_down: std::sync::atomic::AtomicBool::new(false),
            graph_page_size: std::sync::atomic::AtomicUsize::new(999),
            obo_interaction_required: std::sync::atomic::AtomicBool::new(false),
            app_token_lifetime: AtomicU64::new(3599),
            token_endpoint_down: std::sync::atomic::AtomicBool::new(false),
            graph_calls: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            jwks_requests: AtomicU64::new(0),
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
        matches!(tenant, "common" | "organizations")
            || self.tenants.iter().any(|t| t.eq_ignore_ascii_case(tenant))
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
        axum::serve(listener, self.router())
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

fn unknown_tenant(tenant: &str) -> Response {
    aad_error(
        StatusCode::BAD_REQUEST,
        "invalid_tenant",
        90002,
        &format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
        ),
    )
}

async fn discovery_v2(State(a): State<Arc<Authority>>, Path(tenant): Path<String>) -> Response {
    if let Some(resp) = a.oidc_refusal(&tenant) {
        return resp;
    }
    let base = a.base_url();
    let issuer_tid = if a.tenants.iter().any(|t| t.eq_ignore_ascii_case(&tenant)) {
        tenant.to_ascii_lowercase()
    } else {
        "{tenantid}".into()
    };
    Json(json!({
        "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/{issuer_tid}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/{tenant}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{base}/{tenant}/kerberos"),
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }))
    .into_response()
}

async fn discovery_v1(State(a): State<Arc<Authority>>, Path(tenant): Path<String>) -> Response {
    if let Some(resp) = a.oidc_refusal(&tenant) {
        return resp;
    }
    let base = a.base_url();
    let issuer_tid = if a.tenants.iter().any(|t| t.eq_ignore_ascii_case(&tenant)) {
        tenant.to_ascii_lowercase()
    } else {
        "{tenantid}".into()
    };
    Json(json!({
        "token_endpoint": format!("{base}/{tenant}/oauth2/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/{tenant}/discovery/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
        "scopes_supported": ["openid"],
        "issuer": Authority::v1_issuer(&issuer_tid),
        "microsoft_multi_refresh_token": true,
        "authorization_endpoint": format!("{base}/{tenant}/oauth2/authorize"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/{tenant}/oauth2/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "amr", "nonce", "email", "given_name", "family_name", "nickname"],
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }))
    .into_response()
}

async fn keys_v2(State(a): State<Arc<Authority>>, Path(tenant): Path<String>) -> Response {
    if let Some(resp) = a.oidc_refusal(&tenant) {
        return resp;
    }
    a.jwks_requests.fetch_add(1, Ordering::Relaxed);
    // The tenant-specific endpoint names that tenant; common/organizations the template.
    let issuer = if a.tenants.iter().any(|t| t.eq_ignore_ascii_case(&tenant)) {
        a.v2_issuer(&tenant.to_ascii_lowercase())
    } else {
        format!("{}/{{tenantid}}/v2.0", a.base_url())
    };
    Json(a.jwks(Some(&issuer))).into_response()
}

async fn keys_v1(State(a): State<Arc<Authority>>, Path(tenant): Path<String>) -> Response {
    if let Some(resp) = a.oidc_refusal(&tenant) {
        return resp;
    }
    a.jwks_requests.fetch_add(1, Ordering::Relaxed);
    Json(a.jwks(None)).into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
    assertion: Option<String>,
    requested_token_use: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
}

const OBO_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The on-behalf-of grant: the API (client) trades the user's token for one for `scope`.
fn on_behalf_of(a: &Authority, tenant: &str, client_id: &str, form: &TokenForm) -> Response {
    if form.requested_token_use.as_deref() != Some("on_behalf_of") {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'requested_token_use'.",
        );
    }
    let bad_assertion =
        |code: u32, text: &str| aad_error(StatusCode::BAD_REQUEST, "invalid_grant", code, text);
    let Some(assertion) = form.assertion.as_deref() else {
        return bad_assertion(50027, "JWT token is invalid or malformed.");
    };
    if jwt::decode(assertion).is_none() {
        return bad_assertion(50027, "JWT token is invalid or malformed.");
    }
    let Some(c) = jwt::verified_claims(a, assertion) else {
        return bad_assertion(50013, "Assertion failed signature validation.");
    };
    if c["exp"].as_u64().is_none_or(|e| e <= unix_now()) {
        return bad_assertion(500133, "Assertion is not within its valid time range.");
    }
    if c["aud"].as_str() != Some(client_id) {
        return bad_assertion(
            500131,
            "Assertion audience does not match the Client app presenting the assertion.",
        );
    }
    if c.get("scp").is_none() {
        return bad_assertion(
            50013,
            "Assertion is not a user token: on-behalf-of needs a delegated token.",
        );
    }
    if a.obo_interaction_required.load(Ordering::Relaxed) {
        let now = time_string();
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": "interaction_required",
                "error_description": format!("AADSTS50076: Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '{}'. Trace ID: {} Correlation ID: {} Timestamp: {now}", form.scope.as_deref().unwrap_or(""), uuid::Uuid::new_v4(), uuid::Uuid::new_v4()),
                "error_codes": [50076],
                "timestamp": now,
                "trace_id": uuid::Uuid::new_v4().to_string(),
                "correlation_id": uuid::Uuid::new_v4().to_string(),
                "error_uri": format!("{}/error?code=50076", a.base_url()),
                "suberror": "basic_action",
                "claims": "{\"access_token\":{\"capolids\":{\"essential\":true,\"values\":[\"c1a7f6f4-2f7e-4c1a-9d4e-3b8f0c2a1d11\"]}}}",
            })),
        )
            .into_response();
    }
    let scope = form.scope.clone().unwrap_or_default();
    let (resource, scp) = match scope.rsplit_once('/') {
        Some((r, ".default")) => (r.to_owned(), "access_as_user".to_owned()),
        Some((r, s)) if !r.is_empty() && !s.is_empty() => (r.to_owned(), s.to_owned()),
        _ => {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                70011,
                &format!(
                    "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
                ),
            );
        }
    };
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let req = MintRequest {
        tid: tenant.to_ascii_lowercase(),
        oid: text(&c["oid"]).unwrap_or_default(),
        aud: resource,
        ver: "2.0".into(),
        scp: Some(scp),
        roles: Vec::new(),
        groups: Vec::new(),
        overage: false,
        hasgroups: false,
        upn: text(&c["preferred_username"]).or_else(|| text(&c["upn"])),
        name: text(&c["name"]),
        azp: Some(client_id.to_owned()),
        expires_in: 3599,
        nbf_offset: 0,
        iat_offset: 0,
        kid: None,
        iss: None,
        extra: serde_json::Map::new(),
    };
    match a.mint(&req) {
        Ok(token) => Json(json!({
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": token,
        }))
        .into_response(),
        Err(e) => aad_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", 50000, &e),
    }
}

async fn token_endpoint(
    State(a): State<Arc<Authority>>,
    Path(tenant): Path<String>,
    Form(form): Form<TokenForm>,
) -> Response {
    a.token_requests.fetch_add(1, Ordering::Relaxed);
    if a.token_endpoint_down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
    }
    if !a.tenants.iter().any(|t| t.eq_ignore_ascii_case(&tenant)) {
        return unknown_tenant(&tenant);
    }
    let obo = form.grant_type.as_deref() == Some(OBO_GRANT);
    match form.grant_type.as_deref() {
        Some("client_credentials") => {}
        Some(OBO_GRANT) => {}
        Some(other) => {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{other}'."),
            );
        }
        None => {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            );
        }
    }
    let Some(client_id) = form.client_id.clone() else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let client = read(&a.clients).get(&client_id).cloned();
    let endpoint = format!("{}/{tenant}/oauth2/v2.0/token", a.base_url());
    let authenticated = |c: &Client| match (
        &form.client_secret,
        &form.client_assertion_type,
        &form.client_assertion,
    ) {
        (Some(secret), None, None) => !c.secret.is_empty() && *secret == c.secret,
        (None, Some(t), Some(assertion)) if t == CLIENT_ASSERTION_TYPE => {
            assertion_ok(c, &client_id, &endpoint, assertion)
        }
        _ => false,
    };
    let Some(client) = client.filter(|c| authenticated(c)) else {
        return aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app.",
        );
    };
    if obo {
        return on_behalf_of(&a, &tenant, &client_id, &form);
    }
    let scope = form.scope.clone().unwrap_or_default();
    let Some(resource) = scope.strip_suffix("/.default") else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        );
    };
    // The stand-in also serves Graph at its own base URL, which is then a Graph resource too.
    let roles = if resource == GRAPH_RESOURCE || resource == a.base_url() {
        client.graph_roles.clone()
    } else {
        Vec::new()
    };
    let lifetime = a.app_token_lifetime.load(Ordering::Relaxed);
    // Graph issues v1 app tokens; Entra adds `idtyp: app` when configured, as Graph's are.
    let req = MintRequest {
        tid: tenant.to_ascii_lowercase(),
        oid: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, client_id.as_bytes()).to_string(),
        aud: resource.to_owned(),
        ver: "1.0".into(),
        scp: None,
        roles,
        groups: Vec::new(),
        overage: false,
        hasgroups: false,
        upn: None,
        name: None,
        azp: Some(client_id),
        expires_in: lifetime as i64,
        nbf_offset: 0,
        iat_offset: 0,
        kid: None,
        iss: None,
        extra: serde_json::Map::from_iter([("idtyp".to_string(), json!("app"))]),
    };
    match a.mint(&req) {
        Ok(token) => Json(json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }))
        .into_response(),
        Err(e) => aad_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", 50000, &e),
    }
}

async fn mint_endpoint(State(a): State<Arc<Authority>>, Json(req): Json<MintRequest>) -> Response {
    match a.mint(&req) {
        Ok(token) => Json(json!({ "access_token": token })).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

#[derive(Deserialize)]
struct RotateRequest {
    #[serde(default)]
    retire_old: bool,
}

async fn rotate_endpoint(
    State(a): State<Arc<Authority>>,
    Json(req): Json<RotateRequest>,
) -> Response {
    Json(json!({ "kid": a.rotate(req.retire_old) })).into_response()
}

async fn faults_endpoint(
    State(a): State<Arc<Authority>>,
    Json(faults): Json<GraphFaults>,
) -> Response {
    a.set_graph_faults(faults);
    StatusCode::NO_CONTENT.into_response()
}

async fn stats_endpoint(State(a): State<Arc<Authority>>) -> Response {
    Json(json!({
        "graph_calls": a.graph_calls.load(Ordering::Relaxed),
        "token_requests": a.token_requests.load(Ordering::Relaxed),
        "jwks_requests": a.jwks_requests.load(Ordering::Relaxed),
    }))
    .into_response()
}

#[cfg(test)]
mod tests;
