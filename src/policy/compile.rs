//! A policy document compiled into a [`Snapshot`]: every reference resolved, every problem of
//! the document found in one pass ([`CompileError`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::document::*;
use super::snapshot::{
    FastMap, FastSet, Grant, Limits, Origin, Server, Snapshot, Tenant, ToolRule,
};
use crate::ids::{DirectoryId, GroupId, ObjectId, ServerName, is_name};
use crate::ratelimit::Rate;

/// Every problem found in a document, so an operator fixes them in one pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy rejected ({} problem{}): {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("; "))]
pub struct CompileError(pub Vec<String>);

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
        // The allowed directories, parsed: configuration validation has checked them, but a
        // compile never trusts that (a directory that is not a GUID would match nothing).
        let directories: Vec<DirectoryId> = directories
            .iter()
            .filter_map(|d| {
                let parsed = DirectoryId::parse(d);
                if parsed.is_none() {
                    problems.push(format!("entra.tenants: {d:?} is not a GUID"));
                }
                parsed
            })
            .collect();
        // The directory a grant belongs to, or the problem with it.
        let directory_of = |at: &str, tid: Option<&str>, problems: &mut Vec<String>| match (
            tid.map(|t| (t, DirectoryId::parse(t))),
            directories.as_slice(),
        ) {
            (Some((t, None)), _) => {
                problems.push(format!("{at}: tid {t:?} is not a GUID"));
                None
            }
            (Some((_, Some(t))), []) => Some(t),
            (Some((_, Some(t))), dirs) => {
                if !dirs.contains(&t) {
                    problems.push(format!(
                        "{at}: tid {t} is not an allowed directory (entra.tenants)"
                    ));
                }
                Some(t)
            }
            (None, []) => None,
            (None, [only]) => Some(only.clone()),
            (None, _) => {
                problems.push(format!(
                        "{at}: with several allowed directories (entra.tenants) it must name its directory (tid)"
                    ));
                None
            }
        };
        let mut servers = Vec::new();
        let mut server_by_name: HashMap<&str, usize> = HashMap::new();
        let mut server_by_route = FastMap::default();
        for (i, s) in doc.servers.iter().enumerate() {
            let origin: Origin = format!("servers[{i}] {}", s.name).into();
            let name = ServerName::parse(&s.name);
            if name.is_none() {
                problems.push(format!(
                    "servers[{i}]: name {:?} must be [A-Za-z0-9._-]+",
                    s.name
                ));
            }
            let route_text = s.route_key.as_deref().unwrap_or(&s.name);
            let route_key = ServerName::parse(route_text);
            if route_key.is_none() {
                problems.push(format!(
                    "servers[{i}]: route_key {route_text:?} must be [A-Za-z0-9._-]+"
                ));
            }
            // Compiling fails with the problems above; the rest of the document is still
            // checked, with indices that stay those of the servers kept.
            let (Some(name), Some(route_key)) = (name, route_key) else {
                continue;
            };
            let idx = servers.len();
            if server_by_name.insert(&s.name, idx).is_some() {
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
            if server_by_route.insert(route_key.clone(), idx).is_some() {
                problems.push(format!("servers[{i}]: duplicate route_key {route_key:?}"));
            }
            if s.shadow && s.sensitive {
                problems.push(format!(
                    "servers[{i}] {}: shadow and sensitive: a sensitive server is never in shadow mode",
                    s.name
                ));
            }
            if let Some(d) = &s.description
                && (d.is_empty() || d.chars().count() > 1024 || d.chars().any(char::is_control))
            {
                problems.push(format!(
                    "servers[{i}] {}: description must be 1-1024 characters of plain text (no control characters)",
                    s.name
                ));
            }
            let upstream = s.upstream.as_ref().and_then(|u| {
                super::upstream::compile(&format!("servers[{i}] {}", s.name), u, &mut problems)
            });
            servers.push(Arc::new(Server {
                name,
                route_key,
                description: s.description.clone(),
                enabled: s.enabled,
                token_forwarding: s.token_forwarding,
                obo_scope: s.obo_scope.clone(),
                tools_default: s.tools_default,
                shadow: s.enabled && (s.shadow || (doc.shadow_all_servers && !s.sensitive)),
                upstream,
                origin,
            }));
        }

        let mut tenants = Vec::new();
        let mut tenant_by_name: HashMap<&str, usize> = HashMap::new();
        let mut tenant_servers = Vec::new();
        for (i, t) in doc.tenants.iter().enumerate() {
            if !is_name(&t.name) {
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
            let mut set = FastSet::default();
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

        let mut group_grants: FastMap<GroupId, Vec<Grant>> = FastMap::default();
        let mut seen_group_pairs = HashSet::new();
        for (i, g) in doc.group_grants.iter().enumerate() {
            let at = row_label(&format!("group_grants[{i}]"), "group_tenants", g.id);
            let group = GroupId::parse(&g.group);
            if group.is_none() {
                problems.push(format!(
                    "{at}: group {:?} is not an Entra group object id (GUID)",
                    g.group
                ));
            }
            let tid = directory_of(&at, g.tid.as_deref(), &mut problems);
            let tenant = tenant_idx(&g.tenant, &at, &mut problems);
            let (Some(group), Some(t)) = (group, tenant) else {
                continue;
            };
            if !seen_group_pairs.insert((group.clone(), tid.clone(), g.tenant.clone())) {
                problems.push(format!(
                    "{at}: group {group} is granted tenant {:?} twice",
                    g.tenant
                ));
            }
            let origin = format!(
                "{at} group={group}{} tenant={} level={}",
                tid.as_ref()
                    .map(|t| format!(" tid={t}"))
                    .unwrap_or_default(),
                g.tenant,
                g.access_level
            )
            .into();
            group_grants.entry(group).or_default().push(Grant {
                tenant: t,
                level: g.access_level,
                origin,
                tid,
            });
        }

        let mut user_grants: FastMap<ObjectId, Vec<Grant>> = FastMap::default();
        let mut upn_grants: FastMap<String, Vec<Grant>> = FastMap::default();
        for (i, u) in doc.user_grants.iter().enumerate() {
            let at = row_label(&format!("user_grants[{i}]"), "user_tenants", u.id);
            let tid = match &u.tid {
                Some(tid) => {
                    let parsed = DirectoryId::parse(tid);
                    if parsed.is_none() {
                        problems.push(format!("{at}: tid {tid:?} is not a GUID"));
                    }
                    parsed
                }
                None => None,
            };
            let Some(t) = tenant_idx(&u.tenant, &at, &mut problems) else {
                continue;
            };
            match (&u.oid, &u.upn) {
                (Some(oid), _) => {
                    let Some(oid) = ObjectId::parse(oid) else {
                        problems.push(format!("{at}: oid {oid:?} is not a GUID"));
                        continue;
                    };
                    let origin = format!(
                        "{at} oid={oid}{} tenant={} level={}",
                        u.upn
                            .as_ref()
                            .map(|l| format!(" ({l})"))
                            .unwrap_or_default(),
                        u.tenant,
                        u.access_level
                    )
                    .into();
                    user_grants.entry(oid).or_default().push(Grant {
                        tenant: t,
                        level: u.access_level,
                        tid,
                        origin,
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
                        tid,
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

        let mut admin_groups = FastMap::default();
        for (i, g) in doc.admins.groups.iter().enumerate() {
            let at = format!("admins.groups[{i}]");
            let group = g.group();
            let tid = directory_of(&at, g.tid(), &mut problems);
            match GroupId::parse(group) {
                Some(id) => {
                    admin_groups.insert(id, (tid, format!("{at} {group}").into()));
                }
                None => problems.push(format!("{at}: {group:?} is not a GUID")),
            }
        }
        let mut admin_users = FastMap::default();
        for (i, u) in doc.admins.users.iter().enumerate() {
            let at = format!("admins.users[{i}]");
            let tid = directory_of(&at, u.tid.as_deref(), &mut problems);
            match ObjectId::parse(&u.oid) {
                Some(oid) => {
                    admin_users.insert(oid, (tid, format!("{at} {}", u.oid).into()));
                }
                None => problems.push(format!("{at}: oid {:?} is not a GUID", u.oid)),
            }
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
            admin_tenant: super::decision::ADMIN_TENANT.into(),
            shadow_tenant: super::decision::SHADOW_TENANT.into(),
        })
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
