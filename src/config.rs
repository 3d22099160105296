//! Typed configuration: a YAML file, then environment overrides, then validation.
//!
//! Overrides: `MCP_AUTHZ__SECTION__KEY=value` sets `section.key`. A value is data, not YAML:
//! where the key is text (a path, a URL, a secret) it is taken verbatim (`#`, `@`, `123456` and
//! all); only where the key is a number, a flag or a list is the value read as YAML, so
//! `MCP_AUTHZ__ENTRA__LEEWAY_SECONDS=30` is a number and `MCP_AUTHZ__ENTRA__TENANTS='[a, b]'` a
//! list. An empty value unsets the key (its default applies). Unknown keys are errors, in the
//! file and in the environment alike.
//!
//! Secrets (`client_secret`, `database.url`, `ratelimit.redis_url`) are a string, or
//! `{file: /path}` to read it from a file such as a mounted Kubernetes Secret (one trailing
//! newline dropped): `MCP_AUTHZ__GRAPH__CLIENT_SECRET__FILE=/var/run/secrets/graph/secret`.
//! A secret never appears in debug output, logs or error messages.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::ids::is_guid;

pub mod traces;

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "MCP_AUTHZ__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid YAML: {0}")]
    Yaml(String),
    #[error("environment override {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: ListenConfig,
    pub entra: EntraConfig,
    pub policy: PolicyConfig,
    #[serde(default)]
    pub mcp: McpConfig,
    #[serde(default)]
    pub log: LogConfig,
    pub database: Option<DatabaseConfig>,
    #[serde(default)]
    pub audit: AuditConfig,
    /// Microsoft Graph, to resolve groups overage. Without it an overage token is refused.
    pub graph: Option<GraphConfig>,
    /// On-behalf-of exchange, for servers with `token_forwarding: obo`.
    pub obo: Option<OboConfig>,
    /// Where rate-limit state lives. The limits themselves are policy (`rate_limits`, tenants).
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Sessions bound to users (`Mcp-Session-Id`); shared through `rate_limit.redis_url`.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// A signed identity assertion for upstreams (`x-mcp-identity-assertion`), opt-in.
    #[serde(default)]
    pub identity_assertion: IdentityAssertionConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// OpenTelemetry traces, from the standard `OTEL_*` environment variables (off unless an
    /// OTLP endpoint or `OTEL_TRACES_EXPORTER=otlp` is set).
    #[serde(skip)]
    pub traces: traces::TracesConfig,
}

/// The async runtime that serves Checks.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Threads serving Checks; default one per CPU the process may use (cgroup quota
    /// included). Beside Envoy on few cores, 1 costs ~20 % less CPU per Check (no cross-thread
    /// wake-ups) and still answers tens of thousands of warm Checks per second (BENCHMARKS.md).
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `redis://[:password@]host:6379/0` (or `rediss://` for TLS): one limit shared by every
    /// replica. Without it each replica limits on its own.
    pub redis_url: Option<Secret>,
    /// Each Redis call's bound; past it the Check uses the in-process limiter.
    #[serde(default = "default_redis_timeout")]
    pub redis_timeout_ms: u64,
    /// After a Redis failure, how long to stay in process before trying Redis again.
    #[serde(default = "default_redis_retry")]
    pub redis_retry_ms: u64,
    /// Prefix of every Redis key; `{…}` keeps them in one Redis Cluster slot.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
    /// Buckets the in-process limiter keeps at most.
    #[serde(default = "default_local_keys")]
    pub local_max_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            redis_url: None,
            redis_timeout_ms: default_redis_timeout(),
            redis_retry_ms: default_redis_retry(),
            key_prefix: default_redis_prefix(),
            local_max_keys: default_local_keys(),
        }
    }
}

fn default_redis_timeout() -> u64 {
    50
}
fn default_redis_retry() -> u64 {
    1000
}
fn default_redis_prefix() -> String {
    "mcp-authz:{rl}:".into()
}
fn default_local_keys() -> usize {
    100_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OboConfig {
    /// The API's own app registration: the `aud` of the tokens clients send.
    pub client_id: String,
    pub client_secret: Secret,
    #[serde(default = "default_obo_capacity")]
    pub cache_capacity: u64,
    #[serde(default = "default_graph_timeout")]
    pub timeout_ms: u64,
}

fn default_obo_capacity() -> u64 {
    50_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    #[serde(default = "default_graph_base")]
    pub base_url: String,
    /// The app registration that calls Graph (application permission GroupMember.Read.All,
    /// User.Read.All or Directory.Read.All, admin-consented).
    pub client_id: String,
    /// Usually `MCP_AUTHZ__GRAPH__CLIENT_SECRET` from a Kubernetes Secret. Exactly one of
    /// `client_secret` and `client_certificate`.
    pub client_secret: Option<Secret>,
    /// A certificate credential (PEM files, e.g. a mounted Secret): a signed client assertion
    /// instead of a secret.
    pub client_certificate: Option<CertificateFiles>,
    #[serde(default)]
    pub method: GraphMethod,
    #[serde(default = "yes")]
    pub security_enabled_only: bool,
    #[serde(default = "default_graph_ttl")]
    pub cache_ttl_seconds: u64,
    /// While Graph fails, cached groups up to this old are still used.
    #[serde(default = "default_graph_stale")]
    pub max_stale_seconds: u64,
    #[serde(default = "default_graph_capacity")]
    pub cache_capacity: u64,
    #[serde(default = "default_graph_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_graph_retries")]
    pub max_retries: u32,
    /// A `Retry-After` longer than this fails the request now instead of waiting.
    #[serde(default = "default_graph_retry_wait")]
    pub max_retry_wait_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub key_file: PathBuf,
    pub cert_file: PathBuf,
}

fn yes() -> bool {
    true
}
fn default_graph_base() -> String {
    "https://graph.microsoft.com".into()
}
fn default_graph_ttl() -> u64 {
    300
}
fn default_graph_stale() -> u64 {
    3600
}
fn default_graph_capacity() -> u64 {
    50_000
}
fn default_graph_timeout() -> u64 {
    3000
}
fn default_graph_retries() -> u32 {
    2
}
fn default_graph_retry_wait() -> u64 {
    2000
}

/// Signed identity assertions for upstreams (`src/assertion.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityAssertionConfig {
    /// Add `x-mcp-identity-assertion` to every allowed request (off by default).
    #[serde(default)]
    pub enabled: bool,
    /// The signing key: EC P-256, PEM (PKCS#8 or SEC1), e.g. a mounted Secret; re-read every
    /// `key_reload_seconds`. Absent: each process makes its own key (one replica only).
    pub key_file: Option<PathBuf>,
    /// An assertion's lifetime (`exp` - `iat`), 60 to 300.
    #[serde(default = "default_assertion_lifetime")]
    pub lifetime_seconds: u64,
    #[serde(default = "default_assertion_reload")]
    pub key_reload_seconds: u64,
    /// Assertions kept for reuse (one per user, server, tenant and level).
    #[serde(default = "default_assertion_capacity")]
    pub cache_capacity: u64,
}

impl Default for IdentityAssertionConfig {
    fn default() -> Self {
        IdentityAssertionConfig {
            enabled: false,
            key_file: None,
            lifetime_seconds: default_assertion_lifetime(),
            key_reload_seconds: default_assertion_reload(),
            cache_capacity: default_assertion_capacity(),
        }
    }
}

fn default_assertion_lifetime() -> u64 {
    300
}
fn default_assertion_reload() -> u64 {
    10
}
fn default_assertion_capacity() -> u64 {
    100_000
}

/// Sessions bound to users (`src/sessions.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// Bind sessions to users (on by default).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Bindings kept in process at most (least recently used forgotten first).
    #[serde(default = "default_session_capacity")]
    pub capacity: u64,
    /// How long a binding lasts after it was made.
    #[serde(default = "default_session_ttl")]
    pub ttl_seconds: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            enabled: true,
            capacity: default_session_capacity(),
            ttl_seconds: default_session_ttl(),
        }
    }
}

fn default_session_capacity() -> u64 {
    200_000
}
fn default_session_ttl() -> u64 {
    86_400
}

/// A string that never appears in debug output or logs: given inline, or `{file: /path}`.
#[derive(Clone)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FromFile {
            file: PathBuf,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Inline(String),
            File(FromFile),
        }
        match Form::deserialize(d).map_err(|_| {
            serde::de::Error::custom("a secret is a string or {file: /path/to/secret}")
        })? {
            Form::Inline(s) => Ok(Secret(s)),
            Form::File(FromFile { file }) => {
                let mut text = std::fs::read_to_string(&file).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "cannot read secret file {}: {e}",
                        file.display()
                    ))
                })?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                Ok(Secret(text))
            }
        }
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host/db?sslmode=require`; usually from the environment
    /// (`MCP_AUTHZ__DATABASE__URL`) or a mounted Secret.
    pub url: Secret,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Apply pending migrations at start (otherwise: `mcp-authz migrate`, e.g. as a Job).
    #[serde(default)]
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PolicySourceKind {
    #[default]
    File,
    Postgres,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuditSinkKind {
    #[default]
    None,
    Jsonl,
    Postgres,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default)]
    pub sink: AuditSinkKind,
    /// For `jsonl`: the file events are appended to.
    pub file: Option<PathBuf>,
    #[serde(default = "default_audit_capacity")]
    pub queue_capacity: usize,
    #[serde(default = "default_audit_batch")]
    pub batch_size: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: AuditSinkKind::None,
            file: None,
            queue_capacity: default_audit_capacity(),
            batch_size: default_audit_batch(),
        }
    }
}

fn default_max_connections() -> u32 {
    8
}
fn default_acquire_timeout_ms() -> u64 {
    3000
}
fn default_statement_timeout_ms() -> u64 {
    5000
}
fn default_audit_capacity() -> usize {
    10_000
}
fn default_audit_batch() -> usize {
    500
}
fn default_db_poll_ms() -> u64 {
    5000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// gRPC ext_authz (and grpc.health.v1) over TCP.
    pub grpc: Option<SocketAddr>,
    /// mTLS on `grpc`: only clients (Envoy) with a certificate from `client_ca_file`.
    pub grpc_tls: Option<GrpcTlsConfig>,
    /// gRPC ext_authz over a unix domain socket (the sidecar setup).
    pub grpc_unix: Option<PathBuf>,
    /// Health, readiness. Keep it internal.
    pub admin: SocketAddr,
    /// RFC 9728 protected-resource metadata; Envoy routes `/.well-known/oauth-protected-resource`
    /// here. Optional.
    pub metadata: Option<SocketAddr>,
    /// How long in-flight Checks may take to finish after a shutdown signal.
    #[serde(default = "default_drain_seconds")]
    pub drain_seconds: u64,
}

/// mTLS between Envoy and mcp-authz (`src/tls.rs`): PEM files, e.g. a mounted Secret,
/// re-read every `reload_seconds`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTlsConfig {
    /// The server's certificate chain.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
    /// The CA(s) client certificates must chain to.
    pub client_ca_file: PathBuf,
    #[serde(default = "default_tls_reload")]
    pub reload_seconds: u64,
}

fn default_tls_reload() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    /// `https://login.microsoftonline.com` unless a sovereign cloud or the stand-in.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// Allow-list of Entra directory (tenant) ids whose tokens are accepted.
    pub tenants: Vec<String>,
    /// Accepted `aud` values: the API's client id, and for v1 tokens its App ID URI.
    pub audiences: Vec<String>,
    /// Accepted token versions: "1.0", "2.0".
    #[serde(default = "default_token_versions")]
    pub token_versions: Vec<String>,
    /// Issuer of v1 tokens; `{tenantid}` is replaced by the token's `tid`.
    #[serde(default = "default_v1_issuer")]
    pub v1_issuer: String,
    /// Directory whose discovery document names the JWKS; defaults to the first tenant.
    pub discovery_tenant: Option<String>,
    /// A user token must carry at least one of these in `scp` (empty: no requirement).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// An app-only token must carry at least one of these in `roles`.
    #[serde(default)]
    pub required_roles: Vec<String>,
    /// Accept app-only (client credentials) tokens at all.
    #[serde(default)]
    pub allow_app_tokens: bool,
    /// Clock skew allowed on `exp`, `nbf`, `iat`.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Tokens longer than this are rejected before any decoding.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Client apps (application ids, GUIDs) whose tokens are accepted: a token's `azp` (v2) or
    /// `appid` (v1) must be one of them. Empty: any client app. With several directories an
    /// App ID URI in `audiences` can be registered in another directory too; this list is what
    /// keeps its apps' tokens out.
    #[serde(default)]
    pub allowed_client_apps: Vec<String>,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: u64,
    /// An unknown `kid` refetches the JWKS on the request path at most this often.
    #[serde(default = "default_unknown_kid_interval")]
    pub unknown_kid_refresh_seconds: u64,
    #[serde(default = "default_http_timeout_ms")]
    pub http_timeout_ms: u64,
    #[serde(default = "default_token_cache_capacity")]
    pub token_cache_capacity: u64,
    /// Allow an `http://` authority. Only for the stand-in; never in production.
    #[serde(default)]
    pub allow_insecure_authority: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `file` (the embedded default) or `postgres` (needs `database`).
    #[serde(default)]
    pub source: PolicySourceKind,
    /// The YAML policy file, for `source: file`.
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes.
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
    /// How often the database version is compared, covering lost notifications.
    #[serde(default = "default_db_poll_ms")]
    pub db_poll_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Requests whose route carries no `mcp_server` context extension name the server in the
    /// first path segment after this prefix.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// The public URL clients use (e.g. `https://mcp.example.com`): resource metadata and
    /// every `WWW-Authenticate` challenge name it. Required, unless
    /// `allow_host_derived_urls` is set.
    pub public_base_url: Option<String>,
    /// Development only: without `public_base_url`, build those URLs from each request's
    /// `Host` and `X-Forwarded-Proto`. A client chooses both headers, so this lets it name the
    /// metadata (and so the authorization server) its own client is sent to; such answers are
    /// marked `no-store` so that no shared cache keeps them.
    #[serde(default)]
    pub allow_host_derived_urls: bool,
    #[serde(default = "default_resource_name")]
    pub resource_name: String,
    pub resource_documentation: Option<String>,
    /// The scope value advertised in `WWW-Authenticate` and metadata (e.g.
    /// `api://mcp-gateway/mcp.access`); defaults to `entra.required_scopes`.
    #[serde(default)]
    pub advertised_scopes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    #[serde(default = "default_log_level")]
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            path_prefix: default_path_prefix(),
            public_base_url: None,
            allow_host_derived_urls: false,
            resource_name: default_resource_name(),
            resource_documentation: None,
            advertised_scopes: Vec::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

fn default_drain_seconds() -> u64 {
    20
}
fn default_authority() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_token_versions() -> Vec<String> {
    vec!["1.0".into(), "2.0".into()]
}
fn default_v1_issuer() -> String {
    "https://sts.windows.net/{tenantid}/".into()
}
fn default_leeway() -> u64 {
    30
}
fn default_max_token_bytes() -> usize {
    16 * 1024
}
fn default_jwks_refresh() -> u64 {
    3600
}
fn default_unknown_kid_interval() -> u64 {
    300
}
fn default_http_timeout_ms() -> u64 {
    5000
}
fn default_token_cache_capacity() -> u64 {
    100_000
}
fn default_reload_ms() -> u64 {
    1000
}
fn default_path_prefix() -> String {
    "/mcp/".into()
}
fn default_resource_name() -> String {
    "MCP gateway".into()
}
fn default_log_format() -> LogFormat {
    LogFormat::Json
}
fn default_log_level() -> String {
    "info".into()
}

/// The most clock skew we let anyone configure.
pub const MAX_LEEWAY_SECONDS: u64 = 300;

impl Config {
    /// Reads the file, applies the process environment, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, env)?;
        // Relative paths in the file are relative to the file, so a config can travel with its
        // policy.
        if let (Some(file), Some(dir)) = (&config.policy.file, path.parent())
            && file.is_relative()
        {
            config.policy.file = Some(dir.join(file));
        }
        if let (Some(file), Some(dir)) = (&config.audit.file, path.parent())
            && file.is_relative()
        {
            config.audit.file = Some(dir.join(file));
        }
        if let Some(dir) = path.parent() {
            let relative_to_file = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            };
            if let Some(key) = config.identity_assertion.key_file.as_mut() {
                relative_to_file(key);
            }
            if let Some(tls) = config.listen.grpc_tls.as_mut() {
                relative_to_file(&mut tls.cert_file);
                relative_to_file(&mut tls.key_file);
                relative_to_file(&mut tls.client_ca_file);
            }
        }
        Ok(config)
    }

    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree: Value =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        if tree.is_null() {
            tree = Value::Mapping(Default::default());
        }
        let mut overrides: BTreeMap<String, String> = BTreeMap::new();
        let mut otel: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in env {
            if k.starts_with(ENV_PREFIX) {
                overrides.insert(k, v);
            } else if k.starts_with("OTEL_") {
                otel.insert(k, v);
            }
        }
        let mut applied = Vec::with_capacity(overrides.len());
        for (var, raw) in overrides {
            let path = override_path(&var)?;
            let value = if raw.is_empty() {
                Value::Null
            } else {
                Value::String(raw.clone())
            };
            set_at(&mut tree, &path, value, &var)?;
            applied.push((var, path.join("."), raw));
        }
        let mut config = deserialize_with_overrides(tree, &applied)?;
        config.traces = traces::TracesConfig::from_env(&otel).map_err(ConfigError::Invalid)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.listen.grpc.is_none() && self.listen.grpc_unix.is_none() {
            return bad("listen: set grpc, grpc_unix, or both".into());
        }
        if let Some(n) = self.runtime.worker_threads
            && !(1..=1024).contains(&n)
        {
            return bad(format!(
                "runtime.worker_threads must be between 1 and 1024, not {n}"
            ));
        }
        let e = &self.entra;
        let authority = url::Url::parse(&e.authority)
            .map_err(|err| ConfigError::Invalid(format!("entra.authority: {err}")))?;
        match authority.scheme() {
            "https" => {}
            "http" if e.allow_insecure_authority => {}
            other => {
                return bad(format!(
                    "entra.authority must be https (got {other}://); \
                     allow_insecure_authority exists only for the stand-in"
                ));
            }
        }
        if e.authority.ends_with('/') {
            return bad("entra.authority must not end with '/'".into());
        }
        if e.tenants.is_empty() {
            return bad("entra.tenants: list at least one directory (tenant) id".into());
        }
        for t in &e.tenants {
            if !is_guid(t) {
                return bad(format!("entra.tenants: {t:?} is not a GUID"));
            }
        }
        for a in &e.allowed_client_apps {
            if !is_guid(a) {
                return bad(format!(
                    "entra.allowed_client_apps: {a:?} is not an application (client) id GUID"
                ));
            }
        }
        if let Some(t) = &e.discovery_tenant
            && (t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        {
            return bad(format!(
                "entra.discovery_tenant: {t:?} is not a tenant id or name"
            ));
        }
        if e.audiences.is_empty() || e.audiences.iter().any(|a| a.is_empty()) {
            return bad("entra.audiences: list the API's client id (and App ID URI for v1)".into());
        }
        if e.audiences.iter().any(|a| a == crate::ids::GRAPH_APP_ID) {
            return bad(
                "entra.audiences: Microsoft Graph tokens cannot be validated by anyone but Graph"
                    .into(),
            );
        }
        if e.token_versions.is_empty() || e.token_versions.iter().any(|v| v != "1.0" && v != "2.0")
        {
            return bad("entra.token_versions: a non-empty subset of [\"1.0\", \"2.0\"]".into());
        }
        if !e.v1_issuer.contains("{tenantid}") {
            return bad("entra.v1_issuer must contain {tenantid}".into());
        }
        if e.leeway_seconds > MAX_LEEWAY_SECONDS {
            return bad(format!(
                "entra.leeway_seconds: at most {MAX_LEEWAY_SECONDS}"
            ));
        }
        if !(512..=65536).contains(&e.max_token_bytes) {
            return bad("entra.max_token_bytes: between 512 and 65536".into());
        }
        if e.allow_app_tokens && e.required_roles.is_empty() {
            return bad(
                "entra.allow_app_tokens needs entra.required_roles (which app role grants access)"
                    .into(),
            );
        }
        if e.http_timeout_ms == 0 || e.http_timeout_ms > 60_000 {
            return bad("entra.http_timeout_ms: between 1 and 60000".into());
        }
        if e.token_cache_capacity == 0 {
            return bad("entra.token_cache_capacity must be positive".into());
        }
        if e.jwks_refresh_seconds < 60 {
            return bad("entra.jwks_refresh_seconds: at least 60".into());
        }
        match (self.policy.source, &self.policy.file, &self.database) {
            (PolicySourceKind::File, None, _) => {
                return bad("policy.file is required when policy.source is file".into());
            }
            (PolicySourceKind::Postgres, _, None) => {
                return bad(
                    "policy.source postgres needs a database section (database.url)".into(),
                );
            }
            _ => {}
        }
        if self.audit.sink == AuditSinkKind::Postgres && self.database.is_none() {
            return bad("audit.sink postgres needs a database section (database.url)".into());
        }
        if self.audit.sink == AuditSinkKind::Jsonl && self.audit.file.is_none() {
            return bad("audit.sink jsonl needs audit.file".into());
        }
        if self.audit.queue_capacity == 0 || self.audit.batch_size == 0 {
            return bad("audit.queue_capacity and audit.batch_size must be positive".into());
        }
        let rl = &self.rate_limit;
        if let Some(url) = &rl.redis_url {
            let u = url.expose();
            if !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("redis+unix://")
                || u.starts_with("unix://"))
            {
                return bad(
                    "rate_limit.redis_url must be a redis://, rediss:// or redis+unix:// URL"
                        .into(),
                );
            }
        }
        if rl.redis_timeout_ms == 0 || rl.redis_timeout_ms > 10_000 {
            return bad("rate_limit.redis_timeout_ms: between 1 and 10000".into());
        }
        if rl.redis_retry_ms == 0 {
            return bad("rate_limit.redis_retry_ms must be positive".into());
        }
        if rl.local_max_keys < 16 {
            return bad("rate_limit.local_max_keys: at least 16".into());
        }
        if rl.key_prefix.is_empty()
            || rl.key_prefix.len() > 64
            || rl
                .key_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return bad("rate_limit.key_prefix: 1 to 64 characters without spaces".into());
        }
        if let Some(db) = &self.database {
            if !db.url.expose().starts_with("postgres://")
                && !db.url.expose().starts_with("postgresql://")
            {
                return bad("database.url must be a postgres:// URL".into());
            }
            if db.max_connections == 0 || db.acquire_timeout_ms == 0 || db.statement_timeout_ms == 0
            {
                return bad("database: max_connections, acquire_timeout_ms and statement_timeout_ms must be positive".into());
            }
        }
        if let Some(g) = &self.graph {
            let u = url::Url::parse(&g.base_url)
                .map_err(|err| ConfigError::Invalid(format!("graph.base_url: {err}")))?;
            if !(u.scheme() == "https" || (u.scheme() == "http" && e.allow_insecure_authority))
                || g.base_url.ends_with('/')
            {
                return bad("graph.base_url: https://host without a trailing '/'".into());
            }
            if g.client_id.is_empty() {
                return bad("graph.client_id is required".into());
            }
            match (&g.client_secret, &g.client_certificate) {
                (Some(secret), None) if !secret.expose().is_empty() => {}
                (None, Some(_)) => {}
                _ => {
                    return bad(
                        "graph: set exactly one of client_secret and client_certificate".into(),
                    );
                }
            }
            if g.cache_ttl_seconds == 0 || g.max_stale_seconds < g.cache_ttl_seconds {
                return bad(
                    "graph: cache_ttl_seconds > 0 and max_stale_seconds >= cache_ttl_seconds"
                        .into(),
                );
            }
            if g.cache_capacity == 0 || g.timeout_ms == 0 || g.timeout_ms > 60_000 {
                return bad("graph: cache_capacity > 0 and timeout_ms between 1 and 60000".into());
            }
        }
        if let Some(o) = &self.obo {
            if o.client_id.is_empty() || o.client_secret.expose().is_empty() {
                return bad("obo: client_id and client_secret are required".into());
            }
            if !self.entra.audiences.contains(&o.client_id) {
                return bad("obo.client_id must be one of entra.audiences (the API whose tokens are exchanged)".into());
            }
            if o.cache_capacity == 0 || o.timeout_ms == 0 || o.timeout_ms > 60_000 {
                return bad("obo: cache_capacity > 0 and timeout_ms between 1 and 60000".into());
            }
        }
        if self.policy.db_poll_interval_ms < 100 {
            return bad("policy.db_poll_interval_ms: at least 100".into());
        }
        if self.policy.reload_interval_ms < 50 {
            return bad("policy.reload_interval_ms: at least 50".into());
        }
        let p = &self.mcp.path_prefix;
        if !p.starts_with('/') || !p.ends_with('/') || p.len() < 2 {
            return bad("mcp.path_prefix must start and end with '/', e.g. /mcp/".into());
        }
        let ia = &self.identity_assertion;
        if ia.enabled && !(60..=300).contains(&ia.lifetime_seconds) {
            return bad("identity_assertion.lifetime_seconds: 60 to 300".into());
        }
        if ia.enabled && self.mcp.public_base_url.is_none() {
            return bad("identity_assertion needs mcp.public_base_url (its iss)".into());
        }
        if self.listen.grpc_tls.is_some() && self.listen.grpc.is_none() {
            return bad("listen.grpc_tls secures listen.grpc, which is not set".into());
        }
        if self.mcp.public_base_url.is_none() && !self.mcp.allow_host_derived_urls {
            return bad("mcp.public_base_url is required (the URL clients use, e.g. https://mcp.example.com): metadata and 401 challenges are never built from a client-chosen Host; for local development only, set mcp.allow_host_derived_urls: true".into());
        }
        if let Some(base) = &self.mcp.public_base_url {
            let u = url::Url::parse(base)
                .map_err(|err| ConfigError::Invalid(format!("mcp.public_base_url: {err}")))?;
            if !matches!(u.scheme(), "http" | "https") || base.ends_with('/') || u.query().is_some()
            {
                return bad(
                    "mcp.public_base_url: scheme://host[:port][/path] without a trailing '/'"
                        .into(),
                );
            }
        }
        Ok(())
    }

    pub fn http_timeout(&self) -> Duration {
        Duration::from_millis(self.entra.http_timeout_ms)
    }

    /// Scopes named to clients in challenges and metadata.
    pub fn advertised_scopes(&self) -> &[String] {
        if self.mcp.advertised_scopes.is_empty() {
            &self.entra.required_scopes
        } else {
            &self.mcp.advertised_scopes
        }
    }
}

fn env_error(var: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Env {
        var: var.to_owned(),
        reason: reason.into(),
    }
}

/// `MCP_AUTHZ__ENTRA__LEEWAY_SECONDS` → `["entra", "leeway_seconds"]`.
fn override_path(var: &str) -> Result<Vec<String>, ConfigError> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if path.iter().any(|s| s.is_empty()) {
        return Err(env_error(var, "empty path segment (use KEY__SUBKEY)"));
    }
    Ok(path)
}

/// The config from the tree, where every override was set as a string. Where a key wants
/// something else (a number, a flag, a list), serde names the path of the type error; that
/// override, and only it, is read as YAML and the tree tried again. Each override is retyped
/// at most once, so this ends.
fn deserialize_with_overrides(
    mut tree: Value,
    applied: &[(String, String, String)],
) -> Result<Config, ConfigError> {
    let mut retyped = std::collections::HashSet::new();
    loop {
        let err = match serde_path_to_error::deserialize::<_, Config>(tree.clone()) {
            Ok(config) => return Ok(config),
            Err(err) => err,
        };
        let at = err.path().to_string();
        let Some((var, dotted, raw)) = applied.iter().find(|(_, p, _)| *p == at) else {
            return Err(ConfigError::Invalid(format!("{at}: {}", err.inner())));
        };
        let wants_other_type = err.inner().to_string().starts_with("invalid type: string");
        if !wants_other_type || !retyped.insert(var.as_str()) {
            return Err(env_error(var, err.inner().to_string()));
        }
        let value: Value = serde_yaml_ng::from_str(raw)
            .map_err(|e| env_error(var, format!("not a value of {dotted}'s type: {e}")))?;
        let path: Vec<String> = dotted.split('.').map(str::to_owned).collect();
        set_at(&mut tree, &path, value, var)?;
    }
}

fn set_at(tree: &mut Value, path: &[String], value: Value, var: &str) -> Result<(), ConfigError> {
    let err = |reason: &str| env_error(var, reason);
    let mut node = tree;
    for (i, key) in path.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Default::default());
        }
        let Value::Mapping(map) = node else {
            return Err(err("overrides a value that is not a section"));
        };
        let k = Value::String(key.clone());
        if i + 1 == path.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map.entry(k).or_insert(Value::Null);
    }
    Ok(())
}

/// How groups are read from Microsoft Graph on an overage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GraphMethod {
    #[default]
    GetMemberObjects,
    TransitiveMemberOf,
}

#[cfg(test)]
mod tests;
