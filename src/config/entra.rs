//! The `entra`, `graph` and `obo` sections: validating tokens against Entra, reading groups
//! from Microsoft Graph on an overage, and exchanging tokens on behalf of the user.

use std::path::PathBuf;

use serde::Deserialize;

use super::defaults::yes;
use super::secret::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OboConfig {
    /// The API's own app registration: the `aud` of the tokens clients send. With
    /// `workload_identity`, `AZURE_CLIENT_ID` when left empty.
    #[serde(default)]
    pub client_id: String,
    /// Exactly one of `client_secret`, `client_certificate` and `workload_identity`.
    pub client_secret: Option<Secret>,
    pub client_certificate: Option<CertificateFiles>,
    pub workload_identity: Option<WorkloadIdentity>,
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
    /// User.Read.All or Directory.Read.All, admin-consented). With `workload_identity`,
    /// `AZURE_CLIENT_ID` when left empty.
    #[serde(default)]
    pub client_id: String,
    /// Usually `MCP_AUTHZ__GRAPH__CLIENT_SECRET` from a Kubernetes Secret. Exactly one of
    /// `client_secret`, `client_certificate` and `workload_identity`.
    pub client_secret: Option<Secret>,
    /// A certificate credential (PEM files, e.g. a mounted Secret): a signed client assertion
    /// instead of a secret.
    pub client_certificate: Option<CertificateFiles>,
    /// A federated credential: the pod's projected service-account token as the client
    /// assertion (Azure Workload Identity), no secret at all.
    pub workload_identity: Option<WorkloadIdentity>,
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

/// Azure Workload Identity: the webhook projects a service-account token into the pod and sets
/// `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID` and
/// `AZURE_AUTHORITY_HOST`; the app registration holds a federated credential for the cluster's
/// issuer and the service account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIdentity {
    /// The token file; `AZURE_FEDERATED_TOKEN_FILE` when absent.
    pub token_file: Option<PathBuf>,
    /// The file is read again once the copy held is this old (it rotates).
    #[serde(default = "default_token_reread")]
    pub reread_seconds: u64,
}

fn default_token_reread() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub key_file: PathBuf,
    pub cert_file: PathBuf,
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

/// The most clock skew we let anyone configure.
pub const MAX_LEEWAY_SECONDS: u64 = 300;

/// How groups are read from Microsoft Graph on an overage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GraphMethod {
    #[default]
    GetMemberObjects,
    TransitiveMemberOf,
}
