//! Policy: the document operators write (YAML file today, PostgreSQL rows later), compiled into
//! an immutable [`Snapshot`] that the hot path reads without locks, and the pure decision
//! function over it ([`decide`]).

mod decision;
mod file;
pub mod postgres;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use decision::{Allow, Decision, DenyReason, Subject, decide};
pub use file::{FileSource, load_file};

use crate::identity::is_guid;
use crate::ratelimit::{self, Bucket, Rate, Scope};

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

fn default_burst() -> f64 {
    DEFAULT_BURST_FACTOR
}
fn is_default_burst(f: &f64) -> bool {
    *f == DEFAULT_BURST_FACTOR
}
fn one() -> u32 {
    1
}
fn is_one(v: &u32) -> bool {
    *v == 1
}

/// A burst factor is positive, at most 100, with at most two decimals (the database keeps
/// `numeric(5,2)`).
fn valid_burst(f: f64) -> bool {
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

fn yes() -> bool {
    true
}
fn read_level() -> AccessLevel {
    AccessLevel::Read
}

// ---------------------------------------------------------------------------------------------
// The compiled snapshot.

/// Where a grant or rule came from, for `explain` and logs (e.g. `group_grants[3]`).
pub type Origin = Arc<str>;

#[derive(Debug)]
pub struct Server {
    pub name: Arc<str>,
    pub route_key: String,
    pub enabled: bool,
    pub token_forwarding: TokenForwarding,
    pub obo_scope: Option<String>,
    pub tools_default: Effect,
    pub origin: Origin,
}

#[derive(Debug)]
pub struct Tenant {
    pub name: Arc<str>,
    pub enabled: bool,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
struct Grant {
    tenant: usize,
    level: AccessLevel,
    /// For user grants: the directory it is limited to.
    tid: Option<String>,
    origin: Origin,
}

#[derive(Debug, Clone)]
struct ToolRule {
    tenant: Option<usize>,
    pattern: String,
    effect: Effect,
    min_level: AccessLevel,
    origin: Origin,
}

/// An immutable compiled policy.
#[derive(Debug)]
pub struct Snapshot {
    /// Content hash of the source document: equal documents, equal versions.
    pub version: String,
    pub source: String,
    pub loaded_at: SystemTime,
    servers: Vec<Arc<Server>>,
    server_by_route: HashMap<String, usize>,
    tenants: Vec<Tenant>,
    /// `tenant_servers[t]` holds the servers tenant `t` may use.
    tenant_servers: Vec<HashSet<usize>>,
    group_grants: HashMap<String, Vec<Grant>>,
    user_grants: HashMap<String, Vec<Grant>>,
    upn_grants: HashMap<String, Vec<Grant>>,
    admin_groups: HashMap<String, (Option<String>, Origin)>,
    admin_users: HashMap<String, (Option<String>, Origin)>,
    tool_rules: Vec<Vec<ToolRule>>,
    limits: Limits,
}

/// The compiled rate limits.
#[derive(Debug, Default)]
struct Limits {
    any: bool,
    global: Option<Rate>,
    user: Option<Rate>,
    /// By tenant name: its cap and its reserved share of the global budget.
    tenants: HashMap<Arc<str>, (Option<Rate>, Option<Rate>)>,
    /// By server name: (tool pattern, per-user rate).
    tools: HashMap<Arc<str>, Vec<(String, Rate)>>,
}

/// Every problem found in a document, so an operator fixes them in one pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy rejected ({} problem{}): {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("; "))]
pub struct CompileError(pub Vec<String>);

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && s != "."
        && s != ".."
}

/// `group_tenants id=17` for a database row, `group_grants[3]` for a file entry.
fn row_label(at: &str, table: &str, id: Option<i64>) -> String {
    match id {
        Some(id) => format!("{table} id={id}"),
        None => at.to_owned(),
    }
}

fn valid_tool_pattern(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

impl Snapshot {
    /// Compiles a document; `source` names where it came from (a path, "postgres"), and
    /// `directories` are the allowed Entra directories (`entra.tenants`).
    ///
    /// Directories are not interchangeable: a group grant or admin that names its directory
    /// (`tid`) matches only tokens of that directory, which must be an allowed one. Without a
    /// `tid` it belongs to the one allowed directory; with several, a group grant or admin
    /// without one is refused, since a group of one directory could carry the object id (or,
    /// where Entra emits names, the name) of another directory's group. An empty `directories`
    /// (tools without a configuration) leaves grants without `tid` unscoped.
    pub fn compile(
        doc: &PolicyDocument,
        source: &str,
        directories: &[String],
    ) -> Result<Self, CompileError> {
        let mut problems = Vec::new();
        // The directory a grant belongs to, or the problem with it.
        let directory_of = |at: &str, tid: Option<&str>, problems: &mut Vec<String>| match (
            tid,
            directories,
        ) {
            (Some(t), _) if !is_guid(t) => {
                problems.push(format!("{at}: tid {t:?} is not a GUID"));
                None
            }
            (Some(t), []) => Some(t.to_ascii_lowercase()),
            (Some(t), dirs) => {
                let t = t.to_ascii_lowercase();
                if !dirs.iter().any(|d| d.eq_ignore_ascii_case(&t)) {
                    problems.push(format!(
                        "{at}: tid {t} is not an allowed directory (entra.tenants)"
                    ));
                }
                Some(t)
            }
            (None, []) => None,
            (None, [only]) => Some(only.to_ascii_lowercase()),
            (None, _) => {
                problems.push(format!(
                        "{at}: with several allowed directories (entra.tenants) it must name its directory (tid)"
                    ));
                None
            }
        };
        let mut servers = Vec::new();
        let mut server_by_name: HashMap<&str, usize> = HashMap::new();
        let mut server_by_route = HashMap::new();
        for (i, s) in doc.servers.iter().enumerate() {
            let origin: Origin = format!("servers[{i}] {}", s.name).into();
            if !valid_name(&s.name) {
                problems.push(format!(
                    "servers[{i}]: name {:?} must be [A-Za-z0-9._-]+",
                    s.name
                ));
            }
            let route_key = s.route_key.clone().unwrap_or_else(|| s.name.clone());
            if !valid_name(&route_key) {
                problems.push(format!(
                    "servers[{i}]: route_key {route_key:?} must be [A-Za-z0-9._-]+"
                ));
            }
            if server_by_name.insert(&s.name, i).is_some() {
                problems.push(format!("servers[{i}]: duplicate name {:?}", s.name));
            }
            match (s.token_forwarding, &s.obo_scope) {
                (TokenForwarding::Obo, None) => {
                    problems.push(format!(
                        "servers[{i}] {}: token_forwarding obo needs obo_scope",
                        s.name
                    ));
                }
                (TokenForwarding::Obo, Some(scope))
                    if scope.is_empty()
                        || scope.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                {
                    problems.push(format!(
                        "servers[{i}] {}: obo_scope {scope:?} must be one scope",
                        s.name
                    ));
                }
                (TokenForwarding::None | TokenForwarding::Passthrough, Some(_)) => {
                    problems.push(format!(
                        "servers[{i}] {}: obo_scope is only for token_forwarding obo",
                        s.name
                    ));
                }
                _ => {}
            }
            if server_by_route.insert(route_key.clone(), i).is_some() {
                problems.push(format!("servers[{i}]: duplicate route_key {route_key:?}"));
            }
            servers.push(Arc::new(Server {
                name: s.name.as_str().into(),
                route_key,
                enabled: s.enabled,
                token_forwarding: s.token_forwarding,
                obo_scope: s.obo_scope.clone(),
                tools_default: s.tools_default,
                origin,
            }));
        }

        let mut tenants = Vec::new();
        let mut tenant_by_name: HashMap<&str, usize> = HashMap::new();
        let mut tenant_servers = Vec::new();
        for (i, t) in doc.tenants.iter().enumerate() {
            if !valid_name(&t.name) {
                problems.push(format!(
                    "tenants[{i}]: name {:?} must be [A-Za-z0-9._-]+",
                    t.name
                ));
            }
            if tenant_by_name.insert(&t.name, i).is_some() {
                problems.push(format!("tenants[{i}]: duplicate name {:?}", t.name));
            }
            if t.rate_limit_per_minute == Some(0) {
                problems.push(format!(
                    "tenants[{i}] {}: rate_limit_per_minute must be positive",
                    t.name
                ));
            }
            if !(1..=1000).contains(&t.fairness_weight) {
                problems.push(format!(
                    "tenants[{i}] {}: fairness_weight must be 1..=1000",
                    t.name
                ));
            }
            if !valid_burst(t.burst_factor) {
                problems.push(format!(
                    "tenants[{i}] {}: burst_factor must be in (0, 100] with at most two decimals",
                    t.name
                ));
            }
            let mut set = HashSet::new();
            for s in &t.servers {
                match server_by_name.get(s.as_str()) {
                    Some(&idx) => {
                        set.insert(idx);
                    }
                    None => problems.push(format!("tenants[{i}] {}: unknown server {s:?}", t.name)),
                }
            }
            tenant_servers.push(set);
            tenants.push(Tenant {
                name: t.name.as_str().into(),
                enabled: t.enabled,
                origin: format!("tenants[{i}] {}", t.name).into(),
            });
        }
        let tenant_idx = |name: &str, at: &str, problems: &mut Vec<String>| -> Option<usize> {
            let found = tenant_by_name.get(name).copied();
            if found.is_none() {
                problems.push(format!("{at}: unknown tenant {name:?}"));
            }
            found
        };

        let mut group_grants: HashMap<String, Vec<Grant>> = HashMap::new();
        let mut seen_group_pairs = HashSet::new();
        for (i, g) in doc.group_grants.iter().enumerate() {
            let at = row_label(&format!("group_grants[{i}]"), "group_tenants", g.id);
            if !is_guid(&g.group) {
                problems.push(format!(
                    "{at}: group {:?} is not an Entra group object id (GUID)",
                    g.group
                ));
            }
            let group = g.group.to_ascii_lowercase();
            let tid = directory_of(&at, g.tid.as_deref(), &mut problems);
            if !seen_group_pairs.insert((group.clone(), tid.clone(), g.tenant.clone())) {
                problems.push(format!(
                    "{at}: group {group} is granted tenant {:?} twice",
                    g.tenant
                ));
            }
            if let Some(t) = tenant_idx(&g.tenant, &at, &mut problems) {
                group_grants.entry(group.clone()).or_default().push(Grant {
                    tenant: t,
                    level: g.access_level,
                    origin: format!(
                        "{at} group={group}{} tenant={} level={}",
                        tid.as_deref()
                            .map(|t| format!(" tid={t}"))
                            .unwrap_or_default(),
                        g.tenant,
                        g.access_level
                    )
                    .into(),
                    tid,
                });
            }
        }

        let mut user_grants: HashMap<String, Vec<Grant>> = HashMap::new();
        let mut upn_grants: HashMap<String, Vec<Grant>> = HashMap::new();
        for (i, u) in doc.user_grants.iter().enumerate() {
            let at = row_label(&format!("user_grants[{i}]"), "user_tenants", u.id);
            if let Some(tid) = &u.tid
                && !is_guid(tid)
            {
                problems.push(format!("{at}: tid {tid:?} is not a GUID"));
            }
            let Some(t) = tenant_idx(&u.tenant, &at, &mut problems) else {
                continue;
            };
            match (&u.oid, &u.upn) {
                (Some(oid), _) => {
                    if !is_guid(oid) {
                        problems.push(format!("{at}: oid {oid:?} is not a GUID"));
                    }
                    let oid = oid.to_ascii_lowercase();
                    user_grants.entry(oid.clone()).or_default().push(Grant {
                        tenant: t,
                        level: u.access_level,
                        tid: u.tid.as_ref().map(|s| s.to_ascii_lowercase()),
                        origin: format!(
                            "{at} oid={oid}{} tenant={} level={}",
                            u.upn
                                .as_ref()
                                .map(|l| format!(" ({l})"))
                                .unwrap_or_default(),
                            u.tenant,
                            u.access_level
                        )
                        .into(),
                    });
                }
                (None, Some(upn)) => {
                    if !doc.allow_upn_grants {
                        problems.push(format!(
                            "{at}: grants by upn alone need allow_upn_grants: true (upn is mutable in Entra; prefer oid)"
                        ));
                    }
                    let upn = upn.to_lowercase();
                    upn_grants.entry(upn.clone()).or_default().push(Grant {
                        tenant: t,
                        level: u.access_level,
                        tid: u.tid.as_ref().map(|s| s.to_ascii_lowercase()),
                        origin: format!(
                            "{at} upn={upn} tenant={} level={}",
                            u.tenant, u.access_level
                        )
                        .into(),
                    });
                }
                (None, None) => problems.push(format!("{at}: needs oid (or upn)")),
            }
        }

        let mut admin_groups = HashMap::new();
        for (i, g) in doc.admins.groups.iter().enumerate() {
            let at = format!("admins.groups[{i}]");
            let group = g.group();
            if !is_guid(group) {
                problems.push(format!("{at}: {group:?} is not a GUID"));
            }
            let tid = directory_of(&at, g.tid(), &mut problems);
            admin_groups.insert(
                group.to_ascii_lowercase(),
                (tid, format!("{at} {group}").into()),
            );
        }
        let mut admin_users = HashMap::new();
        for (i, u) in doc.admins.users.iter().enumerate() {
            let at = format!("admins.users[{i}]");
            if !is_guid(&u.oid) {
                problems.push(format!("{at}: oid {:?} is not a GUID", u.oid));
            }
            let tid = directory_of(&at, u.tid.as_deref(), &mut problems);
            admin_users.insert(
                u.oid.to_ascii_lowercase(),
                (tid, format!("{at} {}", u.oid).into()),
            );
        }

        let mut tool_rules: Vec<Vec<ToolRule>> = vec![Vec::new(); servers.len()];
        for (i, r) in doc.tool_rules.iter().enumerate() {
            let at = row_label(&format!("tool_rules[{i}]"), "tool_rules", r.id);
            if !valid_tool_pattern(&r.tool) {
                problems.push(format!("{at}: tool pattern {:?} must be non-empty, without spaces or control characters", r.tool));
            }
            let tenant = match &r.tenant {
                Some(name) => match tenant_idx(name, &at, &mut problems) {
                    Some(t) => Some(t),
                    None => continue,
                },
                None => None,
            };
            let Some(&s) = server_by_name.get(r.server.as_str()) else {
                problems.push(format!("{at}: unknown server {:?}", r.server));
                continue;
            };
            let effect = match r.effect {
                Effect::Allow => format!("allow min={}", r.min_access_level),
                Effect::Deny => "deny".to_string(),
            };
            tool_rules[s].push(ToolRule {
                tenant,
                pattern: r.tool.clone(),
                effect: r.effect,
                min_level: r.min_access_level,
                origin: format!(
                    "{at} server={} tenant={} tool={} {effect}",
                    r.server,
                    r.tenant.as_deref().unwrap_or("*"),
                    r.tool
                )
                .into(),
            });
        }

        let limits = compile_limits(doc, &server_by_name, &mut problems);

        if !problems.is_empty() {
            return Err(CompileError(problems));
        }
        Ok(Snapshot {
            version: document_version(doc),
            source: source.to_owned(),
            loaded_at: SystemTime::now(),
            servers,
            server_by_route,
            tenants,
            tenant_servers,
            group_grants,
            user_grants,
            upn_grants,
            admin_groups,
            admin_users,
            tool_rules,
            limits,
        })
    }

    /// The rate-limit buckets an allowed request is charged to (empty when no limit applies).
    /// Keys name the verified identity, the policy tenant and the tool rule; never anything the
    /// client chooses.
    pub fn rate_request(
        &self,
        allow: &Allow,
        tid: &str,
        oid: &str,
        facts: &crate::mcp::RequestFacts,
    ) -> ratelimit::Request {
        let l = &self.limits;
        let mut req = ratelimit::Request::default();
        if !l.any {
            return req;
        }
        if let Some(rate) = l.user {
            req.hard.push(Bucket {
                key: format!("u:{tid}:{oid}"),
                rate,
                scope: Scope::User,
            });
        }
        if let (Some(tool), Some(rules)) = (facts.call.tool(), l.tools.get(&allow.server.name)) {
            for (pattern, rate) in rules {
                if decision::glob_match(pattern, tool) {
                    req.hard.push(Bucket {
                        key: format!("t:{}:{pattern}:{tid}:{oid}", allow.server.name),
                        rate: *rate,
                        scope: Scope::Tool,
                    });
                }
            }
        }
        let (cap, reserved) = l
            .tenants
            .get(&allow.tenant)
            .copied()
            .unwrap_or((None, None));
        if let Some(rate) = cap {
            req.hard.push(Bucket {
                key: format!("c:{}", allow.tenant),
                rate,
                scope: Scope::Tenant,
            });
        }
        if let Some(global) = l.global {
            let global = Bucket {
                key: "g".into(),
                rate: global,
                scope: Scope::Global,
            };
            match reserved {
                Some(rate) => {
                    req.fair = Some(ratelimit::Fair {
                        reserved: Bucket {
                            key: format!("r:{}", allow.tenant),
                            rate,
                            scope: Scope::Tenant,
                        },
                        global,
                    })
                }
                // Admins without a tenant only borrow from the budget.
                None => req.hard.push(global),
            }
        }
        req
    }

    pub fn server_by_route(&self, route_key: &str) -> Option<&Arc<Server>> {
        self.server_by_route
            .get(route_key)
            .map(|&i| &self.servers[i])
    }

    pub fn servers(&self) -> &[Arc<Server>] {
        &self.servers
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    pub fn grant_count(&self) -> usize {
        self.group_grants.values().map(Vec::len).sum::<usize>()
            + self.user_grants.values().map(Vec::len).sum::<usize>()
            + self.upn_grants.values().map(Vec::len).sum::<usize>()
    }
}

fn compile_limits(
    doc: &PolicyDocument,
    server_by_name: &HashMap<&str, usize>,
    problems: &mut Vec<String>,
) -> Limits {
    let rl = &doc.rate_limits;
    let mut limits = Limits::default();
    let per_minute = |v: Option<u32>, at: &str, problems: &mut Vec<String>| {
        if v == Some(0) {
            problems.push(format!("{at} must be positive"));
        }
        v.filter(|&n| n > 0)
    };
    for (f, at) in [
        (rl.global_burst_factor, "rate_limits.global_burst_factor"),
        (rl.user_burst_factor, "rate_limits.user_burst_factor"),
    ] {
        if !valid_burst(f) {
            problems.push(format!(
                "{at} must be in (0, 100] with at most two decimals"
            ));
        }
    }
    limits.global = per_minute(
        rl.global_per_minute,
        "rate_limits.global_per_minute",
        problems,
    )
    .map(|n| Rate::new(n, rl.global_burst_factor));
    limits.user = per_minute(rl.user_per_minute, "rate_limits.user_per_minute", problems)
        .map(|n| Rate::new(n, rl.user_burst_factor));
    let total_weight: u64 = doc
        .tenants
        .iter()
        .filter(|t| t.enabled)
        .map(|t| u64::from(t.fairness_weight))
        .sum();
    for t in &doc.tenants {
        let cap = t
            .rate_limit_per_minute
            .filter(|&n| n > 0)
            .map(|n| Rate::new(n, t.burst_factor));
        let reserved = match (limits.global, total_weight) {
            (Some(g), w) if w > 0 && t.enabled => {
                let share = u64::from(g.per_minute) * u64::from(t.fairness_weight) / w;
                Some(Rate::new(share.max(1) as u32, rl.global_burst_factor))
            }
            _ => None,
        };
        limits
            .tenants
            .insert(t.name.as_str().into(), (cap, reserved));
    }
    let mut seen = HashSet::new();
    for (i, tl) in rl.tools.iter().enumerate() {
        let at = row_label(&format!("rate_limits.tools[{i}]"), "tool_limits", tl.id);
        if !server_by_name.contains_key(tl.server.as_str()) {
            problems.push(format!("{at}: unknown server {:?}", tl.server));
        }
        if !valid_tool_pattern(&tl.tool) {
            problems.push(format!(
                "{at}: tool pattern {:?} must be non-empty, without spaces or control characters",
                tl.tool
            ));
        }
        if !seen.insert((tl.server.as_str(), tl.tool.as_str())) {
            problems.push(format!("{at}: {} {} is limited twice", tl.server, tl.tool));
        }
        if tl.user_per_minute == 0 {
            problems.push(format!("{at}: user_per_minute must be positive"));
            continue;
        }
        if !valid_burst(tl.burst_factor) {
            problems.push(format!(
                "{at}: burst_factor must be in (0, 100] with at most two decimals"
            ));
        }
        limits
            .tools
            .entry(tl.server.as_str().into())
            .or_default()
            .push((
                tl.tool.clone(),
                Rate::new(tl.user_per_minute, tl.burst_factor),
            ));
    }
    limits.any = limits.global.is_some()
        || limits.user.is_some()
        || !limits.tools.is_empty()
        || limits.tenants.values().any(|(cap, _)| cap.is_some());
    limits
}

/// Content hash of a document (its canonical JSON), shown as the policy version.
pub fn document_version(doc: &PolicyDocument) -> String {
    let canonical = serde_json::to_vec(doc).unwrap_or_default();
    let digest = Sha256::digest(&canonical);
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the snapshot comes from.
#[derive(Clone)]
pub enum Source {
    File(Arc<FileSource>),
    Postgres(Arc<postgres::PostgresSource>),
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Source::File(_) => "file",
            Source::Postgres(_) => "postgres",
        }
    }
    pub fn health(&self) -> &ReloadHealth {
        match self {
            Source::File(f) => &f.health,
            Source::Postgres(p) => &p.health,
        }
    }

    /// (snapshots installed, versions rejected)
    pub fn counters(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let h = self.health();
        (h.reloads.load(Relaxed), h.rejected.load(Relaxed))
    }
}

/// How a policy source's reloads go: counters, and the newest version the compiler refused
/// while no later one has compiled. While that lasts every later change, revocations
/// included, waits behind it: `/status` shows it, `mcp_authz_policy_reload_failing` and its
/// age are exported, and the shipped alert fires on it.
#[derive(Debug, Default)]
pub struct ReloadHealth {
    pub reloads: std::sync::atomic::AtomicU64,
    pub rejected: std::sync::atomic::AtomicU64,
    failing: std::sync::Mutex<Option<Rejection>>,
}

/// A refused policy version.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// What was refused: `db-42`, or the file's path.
    pub what: String,
    /// When the first of the refusals in a row happened (the age counts from it).
    pub since: std::time::SystemTime,
    /// The compiler's problems, the first [`Rejection::KEPT_PROBLEMS`] of them.
    pub problems: Vec<String>,
    pub problem_count: usize,
}

impl Rejection {
    pub const KEPT_PROBLEMS: usize = 10;

    pub fn age_seconds(&self) -> f64 {
        self.since.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0)
    }
}

impl ReloadHealth {
    /// A snapshot was installed: nothing is failing any more.
    pub fn installed(&self) {
        self.reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut f) = self.failing.lock() {
            *f = None;
        }
    }

    /// `what` did not compile; the age of a run of refusals counts from its first.
    pub fn refused(&self, what: String, problems: &[String]) {
        self.rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut f) = self.failing.lock() {
            let since = f
                .as_ref()
                .map(|r| r.since)
                .unwrap_or_else(std::time::SystemTime::now);
            *f = Some(Rejection {
                what,
                since,
                problems: problems
                    .iter()
                    .take(Rejection::KEPT_PROBLEMS)
                    .cloned()
                    .collect(),
                problem_count: problems.len(),
            });
        }
    }

    pub fn failing(&self) -> Option<Rejection> {
        self.failing.lock().ok().and_then(|f| f.clone())
    }
}

/// The current snapshot, swapped atomically by the policy source.
pub struct PolicyHandle {
    current: ArcSwap<Option<Arc<Snapshot>>>,
}

impl Default for PolicyHandle {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(None),
        }
    }
}

impl PolicyHandle {
    pub fn with(snapshot: Snapshot) -> Self {
        let h = Self::default();
        h.install(snapshot);
        h
    }

    pub fn load(&self) -> Option<Arc<Snapshot>> {
        (**self.current.load()).clone()
    }

    pub fn install(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(Some(Arc::new(snapshot))));
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }
}

#[cfg(test)]
mod tests;
