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
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminsDoc {
    /// Entra group object ids whose members may use every enabled server.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub users: Vec<UserRef>,
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
    admin_groups: HashMap<String, Origin>,
    admin_users: HashMap<String, (Option<String>, Origin)>,
    tool_rules: Vec<Vec<ToolRule>>,
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
    /// Compiles a document; `source` names where it came from (a path, "postgres").
    pub fn compile(doc: &PolicyDocument, source: &str) -> Result<Self, CompileError> {
        let mut problems = Vec::new();
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
            if !seen_group_pairs.insert((group.clone(), g.tenant.clone())) {
                problems.push(format!(
                    "{at}: group {group} is granted tenant {:?} twice",
                    g.tenant
                ));
            }
            if let Some(t) = tenant_idx(&g.tenant, &at, &mut problems) {
                group_grants.entry(group.clone()).or_default().push(Grant {
                    tenant: t,
                    level: g.access_level,
                    tid: None,
                    origin: format!(
                        "{at} group={group} tenant={} level={}",
                        g.tenant, g.access_level
                    )
                    .into(),
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
            if !is_guid(g) {
                problems.push(format!("admins.groups[{i}]: {g:?} is not a GUID"));
            }
            admin_groups.insert(
                g.to_ascii_lowercase(),
                format!("admins.groups[{i}] {g}").into(),
            );
        }
        let mut admin_users = HashMap::new();
        for (i, u) in doc.admins.users.iter().enumerate() {
            if !is_guid(&u.oid) || u.tid.as_deref().is_some_and(|t| !is_guid(t)) {
                problems.push(format!("admins.users[{i}]: oid and tid must be GUIDs"));
            }
            admin_users.insert(
                u.oid.to_ascii_lowercase(),
                (
                    u.tid.as_ref().map(|t| t.to_ascii_lowercase()),
                    format!("admins.users[{i}] {}", u.oid).into(),
                ),
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
        })
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
    /// (snapshots installed, versions rejected)
    pub fn counters(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        match self {
            Source::File(f) => (f.reloads.load(Relaxed), f.rejected.load(Relaxed)),
            Source::Postgres(p) => (p.reloads.load(Relaxed), p.rejected.load(Relaxed)),
        }
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
