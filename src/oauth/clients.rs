//! The clients the gateway knows: those registered dynamically (RFC 7591), bounded and expiring.
//! A registration states its redirect URIs; authorize accepts those exactly (loopback: any
//! port, RFC 8252 §7.3) and nothing else.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::seal::{random_token, s256, same};

/// The prefix of the ids dynamic registration hands out.
pub const DYNAMIC_PREFIX: &str = "mcp-";

/// Largest registration request read.
pub const MAX_REGISTRATION_BYTES: usize = 16 * 1024;
const MAX_REDIRECT_URIS: usize = 10;
const MAX_URI_LEN: usize = 2048;
const MAX_NAME_LEN: usize = 200;

/// How a client proves itself at `/oauth/token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// A public client (PKCE is its proof).
    None,
    ClientSecretPost,
    ClientSecretBasic,
}

/// RFC 7591 `application_type`: which redirect URIs it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicationType {
    /// https redirect URIs only.
    Web,
    /// Loopback http URIs or a private-use scheme (`com.example.app:/cb`), RFC 8252.
    Native,
}

/// A registered client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Client {
    pub client_id: String,
    pub client_name: Option<String>,
    pub redirect_uris: Vec<String>,
    pub application_type: ApplicationType,
    pub auth_method: AuthMethod,
    /// SHA-256 of the secret (base64url), for the confidential methods.
    secret_hash: Option<String>,
    /// An operator's confidential client may send its secret either way (form or Basic).
    #[serde(default)]
    secret_either_way: bool,
    pub issued_at: u64,
}

impl Client {
    /// Whether `secret` is this client's (constant time); a public client has none.
    pub fn secret_matches(&self, secret: Option<&str>) -> bool {
        match (&self.secret_hash, secret) {
            (None, None) => true,
            (Some(hash), Some(s)) => same(hash, &s256(s)),
            _ => false,
        }
    }

    /// Whether the client may authenticate this way: as it registered (an operator's
    /// confidential client: with its secret in the form or in Basic).
    pub fn accepts(&self, method: AuthMethod) -> bool {
        self.auth_method == method
            || (self.secret_either_way
                && matches!(
                    method,
                    AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
                ))
    }

    /// Whether `requested` is one of the registered redirect URIs: exactly, or a loopback URI
    /// that differs only in its port.
    pub fn redirect_allowed(&self, requested: &str) -> bool {
        redirect_matches(&self.redirect_uris, requested)
    }

    /// The host (or scheme, for a private-use URI) the consent page names.
    pub fn redirect_host(uri: &str) -> String {
        match url::Url::parse(uri) {
            Ok(u) => match u.host_str() {
                Some(h) => h.to_owned(),
                None => format!("{}:", u.scheme()),
            },
            Err(_) => String::new(),
        }
    }
}

fn is_loopback(u: &url::Url) -> bool {
    u.scheme() == "http"
        && matches!(
            u.host_str(),
            Some("localhost") | Some("127.0.0.1") | Some("[::1]")
        )
}

pub fn redirect_matches(registered: &[String], requested: &str) -> bool {
    if registered.iter().any(|r| r == requested) {
        return true;
    }
    let Ok(req) = url::Url::parse(requested) else {
        return false;
    };
    is_loopback(&req)
        && registered.iter().any(|r| {
            url::Url::parse(r).is_ok_and(|reg| {
                is_loopback(&reg)
                    && reg.host_str() == req.host_str()
                    && reg.path() == req.path()
                    && reg.query() == req.query()
            })
        })
}

/// A registration refused: RFC 7591 §3.2.2's error and a description safe to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub error: &'static str,
    pub description: String,
}

fn refused(error: &'static str, description: impl Into<String>) -> Refused {
    Refused {
        error,
        description: description.into(),
    }
}

/// The client metadata of a registration request (RFC 7591 §2), as far as the gateway uses it.
#[derive(Debug, Deserialize)]
struct Metadata {
    /// Only in a metadata document (a registration's is ignored, RFC 7591 §2).
    client_id: Option<String>,
    redirect_uris: Option<Vec<String>>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
    client_name: Option<String>,
    application_type: Option<String>,
    scope: Option<String>,
}

/// Client metadata that passed the checks.
struct Checked {
    uris: Vec<String>,
    application_type: ApplicationType,
    auth_method: AuthMethod,
    grant_types: Vec<String>,
    client_name: Option<String>,
    scope: Option<String>,
}

fn parse_metadata(body: &[u8], what: &str) -> Result<Metadata, Refused> {
    if body.len() > MAX_REGISTRATION_BYTES {
        return Err(refused(
            "invalid_client_metadata",
            format!("the {what} is larger than {MAX_REGISTRATION_BYTES} bytes"),
        ));
    }
    serde_json::from_slice(body).map_err(|_| {
        refused(
            "invalid_client_metadata",
            format!("the {what} is not a JSON object of client metadata"),
        )
    })
}

/// The checked registration: what is stored, and the answer (with the secret, shown once).
pub fn register(body: &[u8], now: u64) -> Result<(Client, Value), Refused> {
    let m = parse_metadata(body, "registration")?;
    let Checked {
        uris,
        application_type,
        auth_method,
        grant_types,
        client_name,
        scope,
    } = check(m)?;
    let client_id = format!("{DYNAMIC_PREFIX}{}", random_token(18));
    let secret = (auth_method != AuthMethod::None).then(|| random_token(32));
    let client = Client {
        client_id: client_id.clone(),
        client_name: client_name.clone(),
        redirect_uris: uris.clone(),
        application_type,
        auth_method,
        secret_hash: secret.as_deref().map(s256),
        secret_either_way: false,
        issued_at: now,
    };
    let mut answer = serde_json::json!({
        "client_id": client_id,
        "client_id_issued_at": now,
        "redirect_uris": uris,
        "grant_types": grant_types,
        "response_types": ["code"],
        "token_endpoint_auth_method": auth_method,
        "application_type": application_type,
    });
    if let Some(n) = client_name {
        answer["client_name"] = Value::from(n);
    }
    if let Some(s) = scope {
        answer["scope"] = Value::from(s);
    }
    if let Some(s) = secret {
        answer["client_secret"] = Value::from(s);
        answer["client_secret_expires_at"] = Value::from(0);
    }
    Ok((client, answer))
}

/// The rules every client's metadata follows, registered or published.
fn check(m: Metadata) -> Result<Checked, Refused> {
    let uris = m.redirect_uris.unwrap_or_default();
    if uris.is_empty() || uris.len() > MAX_REDIRECT_URIS {
        return Err(refused(
            "invalid_redirect_uri",
            format!("redirect_uris: 1 to {MAX_REDIRECT_URIS} URIs"),
        ));
    }
    let application_type = match m.application_type.as_deref() {
        None => None,
        Some("web") => Some(ApplicationType::Web),
        Some("native") => Some(ApplicationType::Native),
        Some(_) => {
            return Err(refused(
                "invalid_client_metadata",
                "application_type: web or native",
            ));
        }
    };
    let mut kinds = Vec::with_capacity(uris.len());
    for uri in &uris {
        kinds.push(redirect_kind(uri)?);
    }
    // Unstated, a client whose every URI is https is a web client, any other a native one
    // (RFC 7591 defaults to web; MCP clients on a desktop send loopback URIs and rarely the
    // type, so the default is read from the URIs rather than refusing them).
    let all_https = kinds.iter().all(|k| *k == UriKind::Https);
    let application_type = application_type.unwrap_or(if all_https {
        ApplicationType::Web
    } else {
        ApplicationType::Native
    });
    if application_type == ApplicationType::Web && !all_https {
        return Err(refused(
            "invalid_redirect_uri",
            "a web client's redirect URIs must be https (loopback and private-use schemes are for native clients)",
        ));
    }
    let auth_method = match m.token_endpoint_auth_method.as_deref() {
        None | Some("none") => AuthMethod::None,
        Some("client_secret_post") => AuthMethod::ClientSecretPost,
        Some("client_secret_basic") => AuthMethod::ClientSecretBasic,
        Some(_) => {
            return Err(refused(
                "invalid_client_metadata",
                "token_endpoint_auth_method: none, client_secret_post or client_secret_basic",
            ));
        }
    };
    let grant_types = m
        .grant_types
        .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]);
    if grant_types.is_empty()
        || !grant_types
            .iter()
            .all(|g| g == "authorization_code" || g == "refresh_token")
    {
        return Err(refused(
            "invalid_client_metadata",
            "grant_types: authorization_code and refresh_token only",
        ));
    }
    let response_types = m.response_types.unwrap_or_else(|| vec!["code".into()]);
    if response_types != ["code"] {
        return Err(refused(
            "invalid_client_metadata",
            "response_types: code only",
        ));
    }
    let client_name = match m.client_name {
        Some(n) if n.chars().count() > MAX_NAME_LEN || n.chars().any(char::is_control) => {
            return Err(refused(
                "invalid_client_metadata",
                format!("client_name: at most {MAX_NAME_LEN} characters, no control characters"),
            ));
        }
        Some(n) if n.trim().is_empty() => None,
        other => other,
    };
    Ok(Checked {
        uris,
        application_type,
        auth_method,
        grant_types,
        client_name,
        scope: m.scope,
    })
}

/// A client from its Client ID Metadata Document at `url`: the document must name `url` as its
/// `client_id` and, having no way to hold a shared secret, be a public client.
pub fn from_document(url: &str, body: &[u8], now: u64) -> Result<Client, Refused> {
    let m = parse_metadata(body, "metadata document")?;
    if m.client_id.as_deref() != Some(url) {
        return Err(refused(
            "invalid_client_metadata",
            "its client_id is not the URL it was fetched from",
        ));
    }
    let c = check(m)?;
    if c.auth_method != AuthMethod::None {
        return Err(refused(
            "invalid_client_metadata",
            "a metadata document client is public: token_endpoint_auth_method none (no shared secret can be published)",
        ));
    }
    Ok(Client {
        client_id: url.to_owned(),
        client_name: c.client_name,
        redirect_uris: c.uris,
        application_type: c.application_type,
        auth_method: AuthMethod::None,
        secret_hash: None,
        secret_either_way: false,
        issued_at: now,
    })
}

/// An operator's client (`oauth.clients`), checked as a registration is; `Err` says why.
pub fn preregistered(c: &crate::config::PreregisteredClient, now: u64) -> Result<Client, String> {
    let id = c.client_id.as_str();
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("client_id: 1 to 64 letters, digits, '.', '-' or '_'".into());
    }
    if id.starts_with(DYNAMIC_PREFIX) {
        return Err("client_id must not start with mcp- (the ids of dynamic registrations)".into());
    }
    let secret = c.client_secret.as_ref().map(|s| s.expose().to_owned());
    if secret.as_deref().is_some_and(|s| s.len() < 16) {
        return Err("client_secret: at least 16 characters".into());
    }
    let m = Metadata {
        client_id: None,
        redirect_uris: Some(c.redirect_uris.clone()),
        token_endpoint_auth_method: Some(
            if secret.is_some() {
                "client_secret_basic"
            } else {
                "none"
            }
            .into(),
        ),
        grant_types: None,
        response_types: None,
        client_name: c.client_name.clone(),
        application_type: c.application_type.clone(),
        scope: None,
    };
    let checked = check(m).map_err(|r| r.description)?;
    Ok(Client {
        client_id: id.to_owned(),
        client_name: checked.client_name,
        redirect_uris: checked.uris,
        application_type: checked.application_type,
        // Either form of a secret is accepted from an operator's client.
        auth_method: if secret.is_some() {
            AuthMethod::ClientSecretBasic
        } else {
            AuthMethod::None
        },
        secret_either_way: secret.is_some(),
        secret_hash: secret.as_deref().map(s256),
        issued_at: now,
    })
}

#[derive(Debug, PartialEq, Eq)]
enum UriKind {
    Https,
    Loopback,
    PrivateUse,
}

fn redirect_kind(uri: &str) -> Result<UriKind, Refused> {
    let bad = |why: &str| refused("invalid_redirect_uri", format!("{uri:.100}: {why}"));
    if uri.len() > MAX_URI_LEN {
        return Err(bad("too long"));
    }
    let u = url::Url::parse(uri).map_err(|_| bad("not an absolute URI"))?;
    if u.fragment().is_some() {
        return Err(bad("a redirect URI has no fragment (RFC 6749 §3.1.2)"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad("no user information"));
    }
    match u.scheme() {
        "https" if u.host_str().is_some() => Ok(UriKind::Https),
        "http" if is_loopback(&u) => Ok(UriKind::Loopback),
        "http" => Err(bad("http only on loopback (localhost, 127.0.0.1, [::1])")),
        // javascript:, data: and their kind would run in the browser, not reach an app.
        "javascript" | "data" | "file" | "vbscript" | "blob" | "about" | "ws" | "wss" | "ftp" => {
            Err(bad("not a redirect scheme"))
        }
        // A private-use scheme (RFC 8252 §7.1: reverse DNS such as com.example.app, though
        // desktop clients also use cursor: or vscode:) opens the app that claimed it.
        _ => Ok(UriKind::PrivateUse),
    }
}

/// Dynamic registrations in PostgreSQL (`oauth_clients`), for every replica: a registration
/// made at one is known at the others. Forgotten after `lifetime` without use; at most `max`
/// kept (the least recently used go first).
pub struct ClientRows {
    pool: sqlx::PgPool,
    lifetime: Duration,
    max: u64,
}

impl ClientRows {
    pub fn new(pool: sqlx::PgPool, lifetime: Duration, max: u64) -> Self {
        Self {
            pool,
            lifetime,
            max,
        }
    }

    pub async fn insert(&self, c: &Client) -> Result<(), super::store::StoreError> {
        let doc = serde_json::to_value(c).map_err(super::store::StoreError::new)?;
        sqlx::query("INSERT INTO oauth_clients (client_id, client) VALUES ($1, $2)")
            .bind(&c.client_id)
            .bind(doc)
            .execute(&self.pool)
            .await
            .map_err(super::store::StoreError::new)?;
        // Bounded: past `max`, the least recently used go; and the long unused.
        sqlx::query(
            "DELETE FROM oauth_clients WHERE last_used_at < now() - make_interval(secs => $1) \
             OR client_id IN (SELECT client_id FROM oauth_clients ORDER BY last_used_at DESC OFFSET $2)",
        )
        .bind(self.lifetime.as_secs_f64())
        .bind(self.max as i64)
        .execute(&self.pool)
        .await
        .map_err(super::store::StoreError::new)?;
        Ok(())
    }

    /// The registration, its use recorded; `None` when unknown or unused for too long.
    pub async fn get(&self, client_id: &str) -> Result<Option<Client>, super::store::StoreError> {
        let row: Option<(serde_json::Value,)> = sqlx::query_as(
            "UPDATE oauth_clients SET last_used_at = now() \
             WHERE client_id = $1 AND last_used_at > now() - make_interval(secs => $2) \
             RETURNING client",
        )
        .bind(client_id)
        .bind(self.lifetime.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .map_err(super::store::StoreError::new)?;
        Ok(row.and_then(|(doc,)| serde_json::from_value(doc).ok()))
    }
}

/// Registered clients, bounded, forgotten after `lifetime` without use.
pub struct Registry {
    /// The operator's (`oauth.clients`), never expiring.
    fixed: std::collections::HashMap<String, Arc<Client>>,
    clients: moka::sync::Cache<String, Arc<Client>>,
    rate: super::PerMinute,
}

impl Registry {
    pub fn new(capacity: u64, lifetime: Duration, per_minute: u32) -> Self {
        Self {
            fixed: std::collections::HashMap::new(),
            clients: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(lifetime)
                .build(),
            rate: super::PerMinute::new(per_minute),
        }
    }

    /// Counts one registration against the per-minute budget; false when it is spent.
    pub fn admit(&self) -> bool {
        self.rate.admit()
    }

    /// With the operator's clients.
    pub fn with_fixed(mut self, clients: Vec<Client>) -> Self {
        self.fixed = clients
            .into_iter()
            .map(|c| (c.client_id.clone(), Arc::new(c)))
            .collect();
        self
    }

    /// Holds the client; the held value.
    pub fn insert(&self, client: Client) -> Arc<Client> {
        let held = Arc::new(client);
        self.clients.insert(held.client_id.clone(), held.clone());
        held
    }

    pub fn get(&self, client_id: &str) -> Option<Arc<Client>> {
        if client_id.len() > 256 {
            return None;
        }
        if let Some(c) = self.fixed.get(client_id) {
            return Some(c.clone());
        }
        self.clients.get(client_id)
    }

    pub fn len(&self) -> u64 {
        self.clients.run_pending_tasks();
        self.clients.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
