//! The decision: a pure function of (subject, request facts, snapshot).
//!
//! 1. The server must exist (by route key) and be enabled.
//! 2. The subject's tenants: every enabled tenant granted to one of its groups or to its
//!    `tid`+`oid` (or `upn`, only if the policy opts in), at the highest level granted.
//! 3. Admins (admin group or user) may use every enabled server, at level `admin`.
//!    Others need a tenant that has the server.
//! 4. `tools/call`: tenants are tried from the highest level down (then by name). Under a
//!    tenant, a matching `deny` rule refuses; else matching `allow` rules allow when the level
//!    reaches one's `min_access_level`; else the server's `tools_default` applies. Rules without
//!    a tenant apply under every tenant and to admins. The first tenant that allows wins.
//!
//! Denials name what refused and the rows consulted (`basis`), which `explain` prints.

use super::document::{AccessLevel, Effect, TokenForwarding};
use super::snapshot::{Grant, Origin, Server, Snapshot};
use crate::ids::{DirectoryId, GroupId, ObjectId};
use crate::mcp::{Call, RequestFacts};
use crate::ratelimit::{self, Bucket, Scope};
use crate::reason::Reason;
use smallvec::SmallVec;
use std::sync::Arc;

/// Who asks; labels are not identities.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub tid: &'a DirectoryId,
    pub oid: &'a ObjectId,
    pub upn: Option<&'a str>,
    pub groups: &'a [GroupId],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    UnknownServer,
    ServerDisabled,
    NoGrant,
    ServerNotGranted,
    ToolDenied,
    ToolNotAllowed,
    AccessLevelTooLow,
}

impl DenyReason {
    /// Its row of the reason table.
    pub fn reason(&self) -> Reason {
        match self {
            DenyReason::UnknownServer => Reason::UnknownServer,
            DenyReason::ServerDisabled => Reason::ServerDisabled,
            DenyReason::NoGrant => Reason::NoGrant,
            DenyReason::ServerNotGranted => Reason::ServerNotGranted,
            DenyReason::ToolDenied => Reason::ToolDenied,
            DenyReason::ToolNotAllowed => Reason::ToolNotAllowed,
            DenyReason::AccessLevelTooLow => Reason::AccessLevelTooLow,
        }
    }

    pub fn code(&self) -> &'static str {
        self.reason().code()
    }
}

/// What the policy permits: the server, under which tenant, at which level, and how the
/// token is forwarded. (The rule effect `allow` is [`super::Effect`]; the answer to Envoy is
/// `response::Verdict`.) Borrowed from the snapshot it was decided on: a Check takes no
/// reference count of the policy's shared server and tenant rows (each would be an atomic on a
/// cache line that every worker touches).
#[derive(Debug, Clone, Copy)]
pub struct Permit<'s> {
    pub server: &'s Server,
    pub tenant: &'s Arc<str>,
    pub level: AccessLevel,
    pub token_forwarding: TokenForwarding,
}

#[derive(Debug, Clone)]
pub struct Decision<'s> {
    pub result: Result<Permit<'s>, DenyReason>,
    /// The grants and rules that produced the result, in the order they were used.
    pub basis: Vec<Origin>,
}

/// The pseudo-tenant reported for an admin who has no tenant grant for the server.
pub const ADMIN_TENANT: &str = "admin";

/// The pseudo-tenant of a request allowed by shadow mode (its level is `read`).
pub const SHADOW_TENANT: &str = "shadow";

impl DenyReason {
    /// Whether shadow mode may turn this denial into an allow: the policy's answers about a
    /// known, enabled server only. An unknown or disabled server stays refused (shadow mode
    /// rolls out a policy; it does not reach servers the policy does not serve).
    pub fn shadowable(&self) -> bool {
        !matches!(self, DenyReason::UnknownServer | DenyReason::ServerDisabled)
    }
}

/// The permit of a request the policy denied for `reason` on a server in shadow mode:
/// tenant [`SHADOW_TENANT`], level `read`, the server's own token forwarding. `None` when the
/// server is not in shadow mode (or is sensitive) or the reason is not shadowable.
pub fn shadow_permit<'s>(
    snap: &'s Snapshot,
    facts: &RequestFacts,
    reason: DenyReason,
) -> Option<Permit<'s>> {
    if !reason.shadowable() {
        return None;
    }
    let server = snap.server_by_route(&facts.server)?;
    server.shadow.then_some(Permit {
        server,
        tenant: &snap.shadow_tenant,
        level: AccessLevel::Read,
        token_forwarding: server.token_forwarding,
    })
}

/// Whether the gateway lets `facts` through for `who` now: the policy allows it, or shadow
/// mode does (what the Check allows, without recording why). The list filter and the server
/// catalog ask this of calls nobody made yet.
pub fn lets_through(
    snap: &Snapshot,
    who: &Subject<'_>,
    facts: &RequestFacts,
) -> Result<(), DenyReason> {
    match permit(snap, who, facts) {
        Ok(_) => Ok(()),
        Err(reason) => match shadow_permit(snap, facts, reason) {
            Some(_) => Ok(()),
            None => Err(reason),
        },
    }
}

pub fn decide<'s>(snap: &'s Snapshot, who: &Subject<'_>, facts: &RequestFacts) -> Decision<'s> {
    let (result, basis) = decide_in(snap, who, facts);
    Decision {
        result,
        basis: basis.into_iter().cloned().collect(),
    }
}

/// The decision without its basis: what a Check and the list filter need. The same
/// [`decide`], with no origin cloned (each clone is an atomic on a count that every worker
/// shares) and no vector allocated for the usual handful of grants and rules.
pub fn permit<'s>(
    snap: &'s Snapshot,
    who: &Subject<'_>,
    facts: &RequestFacts,
) -> Result<Permit<'s>, DenyReason> {
    decide_in(snap, who, facts).0
}

/// The rows a decision used, borrowed from the snapshot.
type Used<'s> = SmallVec<[&'s Origin; 4]>;

fn decide_in<'s>(
    snap: &'s Snapshot,
    who: &Subject<'_>,
    facts: &RequestFacts,
) -> (Result<Permit<'s>, DenyReason>, Used<'s>) {
    let mut basis = Used::new();
    let Some(&si) = snap.server_by_route.get(&facts.server) else {
        return (Err(DenyReason::UnknownServer), basis);
    };
    let server = &snap.servers[si];
    if !server.enabled {
        basis.push(&server.origin);
        return (Err(DenyReason::ServerDisabled), basis);
    }

    // Tenants granted to the subject at all, with their best level and the granting row.
    let mut granted: SmallVec<[(usize, AccessLevel, &'s Origin); 4]> = SmallVec::new();
    let mut consider = |grants: Option<&'s Vec<Grant>>| {
        for g in grants.into_iter().flatten() {
            if g.tid.as_ref().is_some_and(|t| t != who.tid) || !snap.tenants[g.tenant].enabled {
                continue;
            }
            match granted.iter_mut().find(|(t, _, _)| *t == g.tenant) {
                Some(entry) if entry.1 < g.level => {
                    entry.1 = g.level;
                    entry.2 = &g.origin;
                }
                Some(_) => {}
                None => granted.push((g.tenant, g.level, &g.origin)),
            }
        }
    };
    for group in who.groups {
        consider(snap.group_grants.get(group));
    }
    consider(snap.user_grants.get(who.oid));
    if !snap.upn_grants.is_empty()
        && let Some(upn) = who.upn
    {
        consider(snap.upn_grants.get(&upn.to_lowercase()));
    }

    let admin_origin = who
        .groups
        .iter()
        .find_map(|g| {
            snap.admin_groups
                .get(g)
                .filter(|(tid, _)| tid.as_ref().is_none_or(|t| t == who.tid))
                .map(|(_, o)| o)
        })
        .or_else(|| {
            snap.admin_users
                .get(who.oid)
                .filter(|(tid, _)| tid.as_ref().is_none_or(|t| t == who.tid))
                .map(|(_, o)| o)
        });

    // Tenants that may use this server, best level first, then by name for determinism.
    let had_any_grant = !granted.is_empty();
    let mut candidates: SmallVec<[(Option<usize>, AccessLevel, &'s Origin); 4]> = granted
        .into_iter()
        .filter(|(t, _, _)| snap.tenant_servers[*t].contains(&si))
        .map(|(t, l, o)| (Some(t), l, o))
        .collect();
    candidates.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| tenant_name(snap, a.0).cmp(tenant_name(snap, b.0)))
    });
    if let Some(origin) = admin_origin {
        candidates.push((None, AccessLevel::Admin, origin));
    }
    if candidates.is_empty() {
        let reason = if had_any_grant {
            DenyReason::ServerNotGranted
        } else {
            DenyReason::NoGrant
        };
        return (Err(reason), basis);
    }

    let tool = match &facts.call {
        Call::Rpc(rpc) if rpc.method.as_deref() == Some("tools/call") => rpc.tool.as_deref(),
        _ => None,
    };
    let mut first_refusal: Option<(DenyReason, Used<'s>)> = None;
    for (tenant, level, origin) in candidates {
        let mut used = Used::new();
        used.push(origin);
        let verdict = match tool {
            None => Ok(()),
            Some(tool) => tool_verdict(snap, si, tenant, level, tool, &mut used),
        };
        match verdict {
            Ok(()) => {
                basis.extend(used);
                let permit = Permit {
                    server,
                    tenant: tenant_name(snap, tenant),
                    level,
                    token_forwarding: server.token_forwarding,
                };
                return (Ok(permit), basis);
            }
            Err(reason) => {
                if first_refusal.is_none() {
                    first_refusal = Some((reason, used));
                }
            }
        }
    }
    let (reason, used) = first_refusal.unwrap_or((DenyReason::NoGrant, Used::new()));
    basis.extend(used);
    (Err(reason), basis)
}

/// A candidate's tenant name: its policy tenant's, or [`ADMIN_TENANT`] for an admin's.
fn tenant_name(snap: &Snapshot, t: Option<usize>) -> &Arc<str> {
    t.map_or(&snap.admin_tenant, |t| &snap.tenants[t].name)
}

fn tool_verdict<'s>(
    snap: &'s Snapshot,
    server: usize,
    tenant: Option<usize>,
    level: AccessLevel,
    tool: &str,
    used: &mut Used<'s>,
) -> Result<(), DenyReason> {
    let rules = snap.tool_rules[server]
        .iter()
        .filter(|r| r.tenant.is_none() || r.tenant == tenant)
        .filter(|r| glob_match(&r.pattern, tool));
    let mut allow_rules: SmallVec<[_; 4]> = SmallVec::new();
    for r in rules {
        if r.effect == Effect::Deny {
            used.push(&r.origin);
            return Err(DenyReason::ToolDenied);
        }
        allow_rules.push(r);
    }
    if allow_rules.is_empty() {
        used.push(&snap.servers[server].origin);
        return match snap.servers[server].tools_default {
            Effect::Allow => Ok(()),
            Effect::Deny => Err(DenyReason::ToolNotAllowed),
        };
    }
    match allow_rules.iter().find(|r| level >= r.min_level) {
        Some(r) => {
            used.push(&r.origin);
            Ok(())
        }
        None => {
            used.extend(allow_rules.iter().map(|r| &r.origin));
            Err(DenyReason::AccessLevelTooLow)
        }
    }
}

/// Glob with `*` (any run, also empty) and `?` (one character); everything else literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    if pattern.is_ascii() && text.is_ascii() {
        // One byte is one character: the same match, without copying either string.
        glob(pattern.as_bytes(), text.as_bytes(), b'*', b'?')
    } else {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        glob(&p, &t, '*', '?')
    }
}

fn glob<T: PartialEq + Copy>(p: &[T], t: &[T], any: T, one: T) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == one || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == any {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == any {
        pi += 1;
    }
    pi == p.len()
}

impl Snapshot {
    /// The rate-limit buckets an allowed request is charged to (empty when no limit applies).
    /// Keys name the verified identity, the policy tenant and the tool rule; never anything the
    /// client chooses.
    pub fn rate_request(
        &self,
        allow: &Permit<'_>,
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
        if let (Some(tool), Some(rules)) =
            (facts.call.tool(), l.tools.get(allow.server.name.as_str()))
        {
            for (pattern, rate) in rules {
                if glob_match(pattern, tool) {
                    req.hard.push(Bucket {
                        key: format!("t:{}:{pattern}:{tid}:{oid}", allow.server.name),
                        rate: *rate,
                        scope: Scope::Tool,
                    });
                }
            }
        }
        let (cap, reserved) = l.tenants.get(allow.tenant).copied().unwrap_or((None, None));
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
}
