//! The compiled, immutable policy snapshot the hot path reads without locks, and its lookups.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::document::{AccessLevel, Effect, TokenForwarding};
use crate::ids::{DirectoryId, GroupId, ObjectId, ServerName};
use crate::ratelimit::Rate;

/// Where a grant or rule came from, for `explain` and logs (e.g. `group_grants[3]`).
pub type Origin = Arc<str>;

/// The maps a Check looks up: hashed with foldhash instead of std's SipHash, which cost ≈ 40 ns
/// per group id (36 bytes) and a Check looks up every group of its token (up to 200 from
/// Entra). Keys come only from the operator's policy (a lookup never inserts), so the weaker
/// flooding resistance of a fast seeded hash is not in reach of a caller.
pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(super) type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

#[derive(Debug)]
pub struct Server {
    pub name: ServerName,
    pub route_key: ServerName,
    /// Shown in the server catalog.
    pub description: Option<String>,
    pub enabled: bool,
    pub token_forwarding: TokenForwarding,
    pub obo_scope: Option<String>,
    pub tools_default: Effect,
    /// In shadow mode: enabled, and its own `shadow` or `shadow_all_servers` and not sensitive
    /// (a sensitive server with `shadow` does not compile). The policy's denials here are
    /// allowed and recorded as `would_deny`.
    pub shadow: bool,
    /// Where Envoy routes it, when mcp-authz serves Envoy's routes (xDS).
    pub upstream: Option<super::upstream::Upstream>,
    pub origin: Origin,
}

#[derive(Debug)]
pub struct Tenant {
    pub name: Arc<str>,
    pub enabled: bool,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub(super) struct Grant {
    pub(super) tenant: usize,
    pub(super) level: AccessLevel,
    /// For user grants: the directory it is limited to.
    pub(super) tid: Option<DirectoryId>,
    pub(super) origin: Origin,
}

#[derive(Debug, Clone)]
pub(super) struct ToolRule {
    pub(super) tenant: Option<usize>,
    pub(super) pattern: String,
    pub(super) effect: Effect,
    pub(super) min_level: AccessLevel,
    pub(super) origin: Origin,
}

/// An immutable compiled policy.
#[derive(Debug)]
pub struct Snapshot {
    /// Content hash of the source document: equal documents, equal versions.
    pub version: String,
    pub source: String,
    pub loaded_at: SystemTime,
    pub(super) servers: Vec<Arc<Server>>,
    pub(super) server_by_route: FastMap<ServerName, usize>,
    pub(super) tenants: Vec<Tenant>,
    /// `tenant_servers[t]` holds the servers tenant `t` may use.
    pub(super) tenant_servers: Vec<FastSet<usize>>,
    pub(super) group_grants: FastMap<GroupId, Vec<Grant>>,
    pub(super) user_grants: FastMap<ObjectId, Vec<Grant>>,
    pub(super) upn_grants: FastMap<String, Vec<Grant>>,
    pub(super) admin_groups: FastMap<GroupId, (Option<DirectoryId>, Origin)>,
    pub(super) admin_users: FastMap<ObjectId, (Option<DirectoryId>, Origin)>,
    pub(super) tool_rules: Vec<Vec<ToolRule>>,
    pub(super) limits: Limits,
    /// The pseudo-tenants' names ([`super::ADMIN_TENANT`], [`super::SHADOW_TENANT`]), held
    /// here so that a permit borrows every tenant name it carries.
    pub(super) admin_tenant: Arc<str>,
    pub(super) shadow_tenant: Arc<str>,
}

/// The compiled rate limits.
#[derive(Debug, Default)]
pub(super) struct Limits {
    pub(super) any: bool,
    pub(super) global: Option<Rate>,
    pub(super) user: Option<Rate>,
    /// By tenant name: its cap and its reserved share of the global budget.
    pub(super) tenants: HashMap<Arc<str>, (Option<Rate>, Option<Rate>)>,
    /// By server name: (tool pattern, per-user rate).
    pub(super) tools: HashMap<Arc<str>, Vec<(String, Rate)>>,
}

impl Snapshot {
    pub fn server_by_route(&self, route_key: &str) -> Option<&Arc<Server>> {
        self.server_by_route
            .get(route_key)
            .map(|&i| &self.servers[i])
    }

    pub fn servers(&self) -> &[Arc<Server>] {
        &self.servers
    }

    /// The servers in shadow mode, by name.
    pub fn shadowed(&self) -> Vec<&str> {
        self.servers
            .iter()
            .filter(|s| s.shadow)
            .map(|s| &*s.name)
            .collect()
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
