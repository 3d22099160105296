//! The policy document operators write (a YAML file, or PostgreSQL rows read into the same
//! shape), as serde types, and its content version.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Ordered access levels: `read < write < admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLevel {
    Read,
    Write,
    Admin,
}

impl AccessLevel {
    pub fn as_str(&self) -> &'static str {
        match self {
            AccessLevel::Read => "read",
            AccessLevel::Write => "write",
            AccessLevel::Admin => "admin",
        }
    }
}

impl fmt::Display for AccessLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What reaches the upstream in `authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenForwarding {
    /// Removed (the MCP spec's rule: no token passthrough).
    #[default]
    None,
    /// The client's token is kept, for upstreams that validate it themselves.
    Passthrough,
    /// A token for the upstream obtained on behalf of the user (`obo_scope`).
    Obo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}

// ---------------------------------------------------------------------------------------------
// The document (file format; also the export/import format of the database later).

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    #[serde(default)]
    pub admins: AdminsDoc,
    #[serde(default)]
    pub tenants: Vec<TenantDoc>,
    #[serde(default)]
    pub servers: Vec<ServerDoc>,
    #[serde(default)]
    pub group_grants: Vec<GroupGrantDoc>,
    #[serde(default)]
    pub user_grants: Vec<UserGrantDoc>,
    #[serde(default)]
    pub tool_rules: Vec<ToolRuleDoc>,
    /// Honour `user_grants` that name only a `upn`. Off by default: Entra documents `upn`,
    /// `email` and `preferred_username` as mutable, so they are labels, not identities.
    #[serde(default)]
    pub allow_upn_grants: bool,
    /// Requests per minute: the global budget, the per-user default, per-tool limits.
    /// Per-tenant limits and fairness weights are on the tenants.
    #[serde(default, skip_serializing_if = "RateLimitsDoc::is_default")]
    pub rate_limits: RateLimitsDoc,
    /// Shadow mode on every server not marked `sensitive` (see [`ServerDoc::shadow`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub shadow_all_servers: bool,
}

pub(super) fn is_false(b: &bool) -> bool {
    !*b
}

pub(super) fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsDoc {
    /// The gateway's budget per minute, shared between tenants by `fairness_weight` when it
    /// runs out. None: no global budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_per_minute: Option<u32>,
    #[serde(default = "default_burst", skip_serializing_if = "is_default_burst")]
    pub global_burst_factor: f64,
    /// Every user's limit per minute (per `tid`+`oid`, across servers). None: no user limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_per_minute: Option<u32>,
    #[serde(default = "default_burst", skip_serializing_if = "is_default_burst")]
    pub user_burst_factor: f64,
    /// Stricter per-user limits on `tools/call` of matching tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolLimitDoc>,
}

impl Default for RateLimitsDoc {
    fn default() -> Self {
        RateLimitsDoc {
            global_per_minute: None,
            global_burst_factor: DEFAULT_BURST_FACTOR,
            user_per_minute: None,
            user_burst_factor: DEFAULT_BURST_FACTOR,
            tools: Vec::new(),
        }
    }
}

impl RateLimitsDoc {
    fn is_default(&self) -> bool {
        *self == RateLimitsDoc::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolLimitDoc {
    /// Database row id, when the document was read from PostgreSQL.
    #[serde(skip)]
    pub id: Option<i64>,
    pub server: String,
    /// Tool name glob, as in `tool_rules`.
    pub tool: String,
    /// Each user's calls per minute of the matching tools (each pattern its own bucket).
    pub user_per_minute: u32,
    #[serde(default = "default_burst", skip_serializing_if = "is_default_burst")]
    pub burst_factor: f64,
}

/// How many times the per-minute rate may come at once, unless a row says otherwise.
pub const DEFAULT_BURST_FACTOR: f64 = 1.5;

pub(super) fn default_burst() -> f64 {
    DEFAULT_BURST_FACTOR
}
pub(super) fn is_default_burst(f: &f64) -> bool {
    *f == DEFAULT_BURST_FACTOR
}
pub(super) fn one() -> u32 {
    1
}
pub(super) fn is_one(v: &u32) -> bool {
    *v == 1
}

/// A burst factor is positive, at most 100, with at most two decimals (the database keeps
/// `numeric(5,2)`).
pub(super) fn valid_burst(f: f64) -> bool {
    f.is_finite() && f > 0.0 && f <= 100.0 && ((f * 100.0).round() - f * 100.0).abs() < 1e-6
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminsDoc {
    /// Entra groups whose members may use every enabled server.
    #[serde(default)]
    pub groups: Vec<GroupRef>,
    #[serde(default)]
    pub users: Vec<UserRef>,
}

/// An Entra group: its object id, alone (`"e000…"`: the one allowed directory's) or with the
/// directory it belongs to (`{group: "e000…", tid: "3f8a…"}`), which several allowed
/// directories require.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GroupRef {
    Id(String),
    InDirectory(GroupInDirectory),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupInDirectory {
    pub group: String,
    pub tid: String,
}

impl GroupRef {
    pub fn new(group: String, tid: Option<String>) -> Self {
        match tid {
            Some(tid) => GroupRef::InDirectory(GroupInDirectory { group, tid }),
            None => GroupRef::Id(group),
        }
    }
    pub fn group(&self) -> &str {
        match self {
            GroupRef::Id(g) | GroupRef::InDirectory(GroupInDirectory { group: g, .. }) => g,
        }
    }
    pub fn tid(&self) -> Option<&str> {
        match self {
            GroupRef::Id(_) => None,
            GroupRef::InDirectory(g) => Some(&g.tid),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRef {
    pub oid: String,
    /// The user's Entra directory; any allowed directory when absent.
    pub tid: Option<String>,
    /// Human label only.
    pub upn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantDoc {
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Servers this tenant may use.
    #[serde(default)]
    pub servers: Vec<String>,
    /// The tenant's own cap, requests per minute for all its users together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_minute: Option<u32>,
    /// Its share of `rate_limits.global_per_minute` when the budget runs out.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub fairness_weight: u32,
    /// Burst of its cap and of its reserved share.
    #[serde(default = "default_burst", skip_serializing_if = "is_default_burst")]
    pub burst_factor: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerDoc {
    pub name: String,
    /// What Envoy sends as `mcp_server` (or the path segment); defaults to `name`.
    pub route_key: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub token_forwarding: TokenForwarding,
    /// Whether a tool that no rule mentions may be called.
    #[serde(default)]
    pub tools_default: Effect,
    /// For `token_forwarding: obo`: the scope requested for the upstream
    /// (e.g. `api://github-mcp/.default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obo_scope: Option<String>,
    /// Shadow (dry-run) mode, for rolling a policy out: the policy's denials on this server are
    /// audited and counted as `would_deny` with their reason, and allowed. Authentication and
    /// request checks are never shadowed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shadow: bool,
    /// Never shadowed: `shadow: true` is refused, `shadow_all_servers` passes it by.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sensitive: bool,
    /// What the server is for, shown in the server catalog (`GET` on the MCP prefix) to the
    /// callers who may use it; plain text, 1–1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where Envoy sends this server's traffic, when mcp-authz programs Envoy over xDS. None:
    /// no route is served for it (an Envoy with static routes reaches it its own way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamDoc>,
}

/// A server's upstream, as Envoy reaches it: the route (`/mcp/<route_key>`) and the cluster
/// mcp-authz serves over xDS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamDoc {
    /// Whether Envoy gets the route and cluster. False takes the route out of Envoy while the
    /// server stays in the policy (its requests, once authorized, meet the catch-all 404);
    /// `enabled: false` on the server refuses it as well.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
    /// 1–16 endpoints, load-balanced: `host:port`, `http://host[:port][/path]` or
    /// `https://host[:port][/path]` (TLS). All of one scheme and one path.
    pub endpoints: Vec<String>,
    /// The path on the upstream that `/mcp/<route_key>` becomes (a prefix rewrite): `/mcp`
    /// sends `/mcp/github` to `/mcp`. Unset: the path of the endpoints' URL, or unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The `Host` sent to the upstream (`name` or `name:port`). Unset: the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// TLS only: the server name sent and verified in the upstream's certificate. Unset: `host`
    /// (without its port), else the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// TLS only: the PEM bundle (a path on Envoy's filesystem) the upstream's certificate must
    /// chain to. Unset: `xds.upstream_ca_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// TLS only: Envoy's client certificate and key for the upstream (paths on Envoy's
    /// filesystem), both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<String>,
    /// Connecting to an endpoint gives up after this long (1–60000 ms; default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u32>,
    /// An idle connection to the upstream is closed after this long (1–86400 s; default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupGrantDoc {
    /// Database row id, when the document was read from PostgreSQL (for `explain`).
    #[serde(skip)]
    pub id: Option<i64>,
    pub group: String,
    /// The directory the group belongs to; required with several allowed directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
    pub tenant: String,
    pub access_level: AccessLevel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserGrantDoc {
    /// Database row id, when the document was read from PostgreSQL (for `explain`).
    #[serde(skip)]
    pub id: Option<i64>,
    pub oid: Option<String>,
    pub tid: Option<String>,
    pub upn: Option<String>,
    pub tenant: String,
    pub access_level: AccessLevel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRuleDoc {
    /// Database row id, when the document was read from PostgreSQL (for `explain`).
    #[serde(skip)]
    pub id: Option<i64>,
    pub server: String,
    /// Applies to this tenant only; to every tenant (and admins) when absent.
    pub tenant: Option<String>,
    /// Tool name glob: `*` any run, `?` one character.
    pub tool: String,
    pub effect: Effect,
    /// For `allow`: the least access level that may call the tool.
    #[serde(default = "read_level")]
    pub min_access_level: AccessLevel,
}

pub(super) fn yes() -> bool {
    true
}
pub(super) fn read_level() -> AccessLevel {
    AccessLevel::Read
}

/// Content hash of a document (its canonical JSON), shown as the policy version.
pub fn document_version(doc: &PolicyDocument) -> String {
    let canonical = serde_json::to_vec(doc).unwrap_or_default();
    let digest = Sha256::digest(&canonical);
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

impl Default for UpstreamDoc {
    fn default() -> Self {
        Self {
            enabled: true,
            endpoints: Vec::new(),
            path: None,
            host: None,
            sni: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            connect_timeout_ms: None,
            idle_timeout_seconds: None,
        }
    }
}
