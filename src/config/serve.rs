//! The sections of how mcp-authz serves: `listen`, `runtime`, `mcp`, `identity_assertion`
//! and `log`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The async runtime that serves Checks.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Threads serving Checks; default one per CPU the process may use (cgroup quota
    /// included). 1 runs everything on one thread with tokio's current-thread scheduler (see
    /// [`runtime_builder`]): beside Envoy on few cores it costs far less CPU per Check and
    /// still answers tens of thousands of warm Checks per second (BENCHMARKS.md).
    pub worker_threads: Option<usize>,
}

/// The runtime `serve` runs on. One thread is tokio's current-thread scheduler, not a
/// multi-thread one with one worker: that one runs a task woken by another task next (its
/// LIFO slot), so each Check that finished woke its HTTP/2 connection's task, which then wrote
/// that one answer by itself (a `writev` and a loopback wake-up of Envoy per Check). The
/// current-thread scheduler runs woken tasks in order: every Check read in one go finishes
/// first, then the connection writes all their answers at once (about 16 to a write at 32 in
/// flight). Measured on the no-op Check server of `make bench`: 0.98 → 0.06 writes per Check
/// and 21 → 14 µs of CPU per Check. More threads keep the multi-thread scheduler.
pub fn runtime_builder(cfg: &RuntimeConfig) -> tokio::runtime::Builder {
    match cfg.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = n {
                b.worker_threads(n);
            }
            b
        }
    }
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
