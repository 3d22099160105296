//! The `oauth` section: mcp-authz as the OAuth authorization server MCP clients talk to, in
//! front of Entra (`src/oauth/`). Clients register with it and sign in through it; the user
//! signs in at Entra with the gateway's own app registration; the access token the client gets
//! is Entra's, validated on the request path as any other.

use serde::Deserialize;

use super::entra::{CertificateFiles, WorkloadIdentity};
use super::secret::Secret;
use super::validate::one_credential;
use super::{Config, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The gateway's Entra app registration (web platform; redirect URI
    /// `{mcp.public_base_url}/oauth/callback`). With `workload_identity`, `AZURE_CLIENT_ID`
    /// when left empty.
    #[serde(default)]
    pub client_id: String,
    /// Exactly one of `client_secret`, `client_certificate` and `workload_identity`.
    pub client_secret: Option<Secret>,
    pub client_certificate: Option<CertificateFiles>,
    pub workload_identity: Option<WorkloadIdentity>,
    /// The directory users sign in to; the first of `entra.tenants` when absent.
    pub tenant: Option<String>,
    /// The Entra scope asked for on the user's behalf: the API's, `api://…/name` (its App ID
    /// URI and scope). `offline_access` is added for the refresh token.
    pub api_scope: String,
    /// Keys that seal refresh tokens, consent cookies and transient state: each 32 random
    /// bytes, base64. The first seals; all open (add a new key first to rotate, drop the old
    /// one once its refresh tokens have expired).
    pub seal_keys: Vec<Secret>,
    /// Where transient state (sign-ins in flight, codes, used refresh tokens) and dynamic
    /// registrations live: `memory` (this process: one replica only) or `postgres` (the
    /// `database`, shared by every replica; values sealed, keys hashed).
    #[serde(default)]
    pub state_store: StateStoreKind,
    /// Clients registered by the operator, known from the start and never expiring (the MCP
    /// specification's first choice, before metadata documents and dynamic registration).
    #[serde(default)]
    pub clients: Vec<PreregisteredClient>,
    /// Dynamic client registration (RFC 7591).
    #[serde(default)]
    pub registration: RegistrationConfig,
    /// Client ID Metadata Documents: a `client_id` that is an https URL, fetched.
    #[serde(default)]
    pub client_metadata_documents: DocumentsConfig,
    /// A sign-in in flight (consent page to Entra's callback) expires after this.
    #[serde(default = "default_pending")]
    pub pending_seconds: u64,
    /// The gateway's authorization code, redeemed at `/oauth/token`, expires after this.
    #[serde(default = "default_code")]
    pub code_seconds: u64,
    /// A gateway refresh token is refused after this (Entra's own lifetime may be shorter).
    #[serde(default = "default_refresh_days")]
    pub refresh_days: u64,
    /// The consent cookie (per browser and client) is kept this long.
    #[serde(default = "default_consent_days")]
    pub consent_days: u64,
    /// Calls to Entra's token endpoint give up after this.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StateStoreKind {
    #[default]
    Memory,
    Postgres,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Serve `/oauth/register`.
    #[serde(default = "super::defaults::yes")]
    pub enabled: bool,
    /// Most registered clients held; past it, the least recently registered go first.
    #[serde(default = "default_max_clients")]
    pub max_clients: u64,
    /// A registration not used for this long is forgotten.
    #[serde(default = "default_client_days")]
    pub lifetime_days: u64,
    /// Registrations accepted per minute, over all callers.
    #[serde(default = "default_per_minute")]
    pub per_minute: u32,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_clients: default_max_clients(),
            lifetime_days: default_client_days(),
            per_minute: default_per_minute(),
        }
    }
}

/// A client the operator registered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreregisteredClient {
    /// Its id: letters, digits, `.`, `-`, `_`, at most 64; not `mcp-…` (dynamic registrations)
    /// and not a URL (metadata documents).
    pub client_id: String,
    /// Shown on the consent page.
    pub client_name: Option<String>,
    /// Exact redirect URIs (loopback: any port), checked as registrations are.
    pub redirect_uris: Vec<String>,
    /// `web` (https redirect URIs) or `native` (loopback, private-use schemes); from the URIs
    /// when absent.
    pub application_type: Option<String>,
    /// A confidential client's secret (then `client_secret_basic` or `client_secret_post`); a
    /// public client (PKCE only) has none.
    pub client_secret: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentsConfig {
    /// Accept `client_id` URLs (and advertise `client_id_metadata_document_supported`).
    #[serde(default = "super::defaults::yes")]
    pub enabled: bool,
    /// Most documents cached.
    #[serde(default = "default_max_clients")]
    pub max_clients: u64,
    /// Documents fetched per minute (cache misses), over all callers.
    #[serde(default = "default_per_minute")]
    pub fetches_per_minute: u32,
    /// A document is kept for its `Cache-Control: max-age`, at most this (default 300 s when
    /// it names none).
    #[serde(default = "default_document_cache")]
    pub cache_seconds: u64,
    /// A PEM bundle of extra roots trusted when fetching documents, besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// FOR TEST SETUPS ONLY: let a document URL resolve to loopback and private addresses.
    /// Off, the gateway refuses to fetch from anything but public addresses (SSRF).
    #[serde(default)]
    pub allow_private_addresses: bool,
}

impl Default for DocumentsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_clients: default_max_clients(),
            fetches_per_minute: default_per_minute(),
            cache_seconds: default_document_cache(),
            ca_file: None,
            allow_private_addresses: false,
        }
    }
}

fn default_document_cache() -> u64 {
    3600
}

fn default_pending() -> u64 {
    600
}
fn default_code() -> u64 {
    60
}
fn default_refresh_days() -> u64 {
    30
}
fn default_consent_days() -> u64 {
    30
}
fn default_timeout() -> u64 {
    5000
}
fn default_max_clients() -> u64 {
    10_000
}
fn default_client_days() -> u64 {
    90
}
fn default_per_minute() -> u32 {
    60
}

impl OAuthConfig {
    /// Checks the section against the rest of the configuration (from `Config::validate`).
    pub fn check(&self, cfg: &Config) -> Result<(), ConfigError> {
        let o = self;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        one_credential(
            "oauth",
            o.client_secret.as_ref(),
            o.client_certificate.is_some(),
            o.workload_identity.is_some(),
        )?;
        if o.client_id.is_empty() {
            return bad(
                "oauth.client_id is required (the gateway's own Entra app registration)".into(),
            );
        }
        if cfg.mcp.public_base_url.is_none() {
            return bad("oauth needs mcp.public_base_url: it is the issuer clients see and the base of the Entra redirect URI".into());
        }
        if cfg.listen.metadata.is_none() {
            return bad("oauth is served on listen.metadata, which is not set".into());
        }
        if !cfg.entra.allowed_client_apps.is_empty()
            && !cfg.entra.allowed_client_apps.contains(&o.client_id)
        {
            return bad(format!(
                "entra.allowed_client_apps does not list oauth.client_id {}: the tokens the gateway obtains name it as the client (azp), so every one would be refused",
                o.client_id
            ));
        }
        if let Some(t) = &o.tenant
            && !cfg.entra.tenants.contains(t)
        {
            return bad(format!("oauth.tenant {t} is not one of entra.tenants"));
        }
        match o.api_scope.rsplit_once('/') {
            Some((resource, name))
                if !resource.is_empty()
                    && !name.is_empty()
                    && name != ".default"
                    && resource.contains("://")
                    && !o.api_scope.contains(char::is_whitespace) => {}
            _ => {
                return bad(format!(
                    "oauth.api_scope must be the API's full scope, {{App ID URI}}/{{scope}} (e.g. api://mcp-gateway/mcp.access), not {:?}: Entra resolves a bare name against Microsoft Graph",
                    o.api_scope
                ));
            }
        }
        if o.seal_keys.is_empty() {
            return bad("oauth.seal_keys: at least one key (32 random bytes, base64: openssl rand -base64 32)".into());
        }
        for (i, key) in o.seal_keys.iter().enumerate() {
            if let Err(e) = decode_seal_key(key) {
                return bad(format!(
                    "oauth.seal_keys[{i}]: {e} (32 random bytes, base64: openssl rand -base64 32)"
                ));
            }
        }
        let r = &o.registration;
        if r.max_clients == 0 || r.lifetime_days == 0 || r.per_minute == 0 {
            return bad("oauth.registration: max_clients, lifetime_days and per_minute > 0".into());
        }
        if o.state_store == StateStoreKind::Postgres && cfg.database.is_none() {
            return bad("oauth.state_store: postgres needs the database section".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in o.clients.iter().enumerate() {
            if let Err(why) = crate::oauth::clients::preregistered(c, 0) {
                return bad(format!("oauth.clients[{i}] ({:.64}): {why}", c.client_id));
            }
            if !seen.insert(c.client_id.as_str()) {
                return bad(format!(
                    "oauth.clients[{i}]: client_id {} is listed twice",
                    c.client_id
                ));
            }
        }
        let d = &o.client_metadata_documents;
        if d.max_clients == 0 || d.cache_seconds > 86_400 {
            return bad(
                "oauth.client_metadata_documents: max_clients > 0, cache_seconds at most 86400"
                    .into(),
            );
        }
        if let Some(ca) = &d.ca_file
            && !ca.is_file()
        {
            return bad(format!(
                "oauth.client_metadata_documents.ca_file {} is not a readable file",
                ca.display()
            ));
        }
        if !(60..=600).contains(&o.pending_seconds) {
            return bad("oauth.pending_seconds: 60 to 600 (the state sent to Entra lives at most 10 minutes)".into());
        }
        if !(10..=600).contains(&o.code_seconds) {
            return bad("oauth.code_seconds: 10 to 600 (RFC 6749 recommends at most 600)".into());
        }
        if !(1..=365).contains(&o.refresh_days) || !(1..=365).contains(&o.consent_days) {
            return bad("oauth.refresh_days and oauth.consent_days: 1 to 365".into());
        }
        if o.timeout_ms == 0 || o.timeout_ms > 60_000 {
            return bad("oauth.timeout_ms: 1 to 60000".into());
        }
        Ok(())
    }
}

/// A seal key as configured: base64 of 32 bytes.
pub fn decode_seal_key(key: &Secret) -> Result<[u8; 32], String> {
    use base64::Engine;
    let text = key.expose().trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        .map_err(|_| "not base64".to_owned())?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, not 32", b.len()))
}
