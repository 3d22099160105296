//! Rows ⇄ document: the rows read consistently into a [`PolicyDocument`], and a document as
//! the rows it would be.

use std::collections::BTreeMap;

use sqlx::postgres::PgPool;

use crate::policy::document::{
    AccessLevel, AdminsDoc, Effect, GroupGrantDoc, GroupRef, PolicyDocument, ServerDoc, TenantDoc,
    TokenForwarding, ToolLimitDoc, ToolRuleDoc, UpstreamDoc, UserGrantDoc, UserRef,
};

use super::error::DbError;
use super::tables::*;

/// The whole policy and its version, read consistently.
pub async fn read_document(pool: &PgPool) -> Result<(i64, PolicyDocument), DbError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let version: i64 = sqlx::query_scalar("SELECT version FROM policy_version")
        .fetch_one(&mut *tx)
        .await?;
    let mut tables = Vec::new();
    for t in TABLES {
        tables.push(read_table(&mut tx, t).await?);
    }
    tx.commit().await?;
    Ok((version, rows_to_document(&tables)?))
}

pub(super) fn parse_enum<T: serde::de::DeserializeOwned>(
    table: &'static str,
    key: &Cells,
    v: Option<String>,
) -> Result<T, DbError> {
    let v = v.unwrap_or_default();
    serde_json::from_value(serde_json::Value::String(v.clone())).map_err(|_| DbError::Row {
        table,
        key: format!("{key:?}"),
        reason: format!("unexpected value {v:?}"),
    })
}

/// A number column's text (`integer`, `numeric`).
pub(super) fn parse_num<T: std::str::FromStr>(
    table: &'static str,
    key: &Cells,
    v: Option<String>,
) -> Result<T, DbError> {
    let v = v.unwrap_or_default();
    v.parse().map_err(|_| DbError::Row {
        table,
        key: format!("{key:?}"),
        reason: format!("unexpected number {v:?}"),
    })
}

pub(super) fn parse_opt<T: std::str::FromStr>(
    table: &'static str,
    key: &Cells,
    v: Option<String>,
) -> Result<Option<T>, DbError> {
    v.map(|v| parse_num(table, key, Some(v))).transpose()
}

pub(super) fn rows_to_document(tables: &[Rows]) -> Result<PolicyDocument, DbError> {
    let [
        settings,
        tenants,
        servers,
        tenant_servers,
        groups,
        users,
        rules,
        admins,
        tool_limits,
    ] = tables
    else {
        return Err(DbError::Row {
            table: "policy",
            key: String::new(),
            reason: "table list".into(),
        });
    };
    let mut doc = PolicyDocument::default();
    if let Some((key, (v, _))) = settings.rows.iter().next() {
        doc.allow_upn_grants = cell(v, 0).as_deref() == Some("true");
        let rl = &mut doc.rate_limits;
        rl.global_per_minute = parse_opt("policy_settings", key, cell(v, 1))?;
        rl.global_burst_factor = parse_num("policy_settings", key, cell(v, 2))?;
        rl.user_per_minute = parse_opt("policy_settings", key, cell(v, 3))?;
        rl.user_burst_factor = parse_num("policy_settings", key, cell(v, 4))?;
        doc.shadow_all_servers = cell(v, 5).as_deref() == Some("true");
    }
    for (key, (v, id)) in &tool_limits.rows {
        doc.rate_limits.tools.push(ToolLimitDoc {
            id: *id,
            server: cell(key, 0).unwrap_or_default(),
            tool: cell(key, 1).unwrap_or_default(),
            user_per_minute: parse_num("tool_limits", key, cell(v, 0))?,
            burst_factor: parse_num("tool_limits", key, cell(v, 1))?,
        });
    }
    let mut by_tenant: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in tenant_servers.rows.keys() {
        by_tenant
            .entry(cell(key, 0).unwrap_or_default())
            .or_default()
            .push(cell(key, 1).unwrap_or_default());
    }
    for (key, (v, _)) in &tenants.rows {
        let name = cell(key, 0).unwrap_or_default();
        doc.tenants.push(TenantDoc {
            servers: by_tenant.remove(&name).unwrap_or_default(),
            enabled: cell(v, 0).as_deref() == Some("true"),
            rate_limit_per_minute: parse_opt("tenants", key, cell(v, 1))?,
            fairness_weight: parse_num("tenants", key, cell(v, 2))?,
            burst_factor: parse_num("tenants", key, cell(v, 3))?,
            name,
        });
    }
    for (key, (v, _)) in &servers.rows {
        let name = cell(key, 0).unwrap_or_default();
        let route_key = cell(v, 0).filter(|r| *r != name);
        doc.servers.push(ServerDoc {
            route_key,
            enabled: cell(v, 1).as_deref() == Some("true"),
            token_forwarding: parse_enum::<TokenForwarding>("mcp_servers", key, cell(v, 2))?,
            tools_default: parse_enum::<Effect>("mcp_servers", key, cell(v, 3))?,
            obo_scope: cell(v, 4),
            shadow: cell(v, 5).as_deref() == Some("true"),
            sensitive: cell(v, 6).as_deref() == Some("true"),
            description: cell(v, 7),
            upstream: upstream_from_cells("mcp_servers", key, v)?,
            name,
        });
    }
    for (key, (v, id)) in &groups.rows {
        doc.group_grants.push(GroupGrantDoc {
            id: *id,
            group: cell(key, 0).unwrap_or_default(),
            tid: cell(key, 1),
            tenant: cell(key, 2).unwrap_or_default(),
            access_level: parse_enum::<AccessLevel>("group_tenants", key, cell(v, 0))?,
        });
    }
    for (key, (v, id)) in &users.rows {
        doc.user_grants.push(UserGrantDoc {
            id: *id,
            oid: cell(key, 0),
            tid: cell(key, 1),
            upn: cell(key, 2),
            tenant: cell(key, 3).unwrap_or_default(),
            access_level: parse_enum::<AccessLevel>("user_tenants", key, cell(v, 0))?,
        });
    }
    for (key, (v, id)) in &rules.rows {
        doc.tool_rules.push(ToolRuleDoc {
            id: *id,
            server: cell(key, 0).unwrap_or_default(),
            tenant: cell(key, 1),
            tool: cell(key, 2).unwrap_or_default(),
            effect: parse_enum::<Effect>("tool_rules", key, cell(key, 3))?,
            min_access_level: parse_enum::<AccessLevel>("tool_rules", key, cell(v, 0))?,
        });
    }
    let mut admin_docs = AdminsDoc::default();
    for (key, (v, _)) in &admins.rows {
        match cell(key, 0).as_deref() {
            Some("group") => admin_docs.groups.push(GroupRef::new(
                cell(key, 1).unwrap_or_default(),
                cell(key, 2),
            )),
            _ => admin_docs.users.push(UserRef {
                oid: cell(key, 1).unwrap_or_default(),
                tid: cell(key, 2),
                upn: cell(v, 0),
            }),
        }
    }
    doc.admins = admin_docs;
    Ok(doc)
}

pub(super) fn lower(s: &Option<String>) -> Option<String> {
    s.as_ref().map(|v| v.to_ascii_lowercase())
}

pub(super) fn enum_text<T: serde::Serialize>(v: &T) -> Option<String> {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(str::to_owned))
}

/// A document as the rows it would be in each table.
pub(super) fn document_to_rows(doc: &PolicyDocument) -> Vec<Rows> {
    let some = |s: &str| Some(s.to_owned());
    let boolean = |b: bool| Some(b.to_string());
    let mut settings = Rows::default();
    let number = |n: Option<u32>| n.map(|n| n.to_string());
    // numeric(5,2) prints two decimals.
    let factor = |f: f64| Some(format!("{f:.2}"));
    let rl = &doc.rate_limits;
    settings.put(
        vec![boolean(true)],
        vec![
            boolean(doc.allow_upn_grants),
            number(rl.global_per_minute),
            factor(rl.global_burst_factor),
            number(rl.user_per_minute),
            factor(rl.user_burst_factor),
            boolean(doc.shadow_all_servers),
        ],
    );
    let mut tool_limits = Rows::default();
    for tl in &rl.tools {
        tool_limits.put(
            vec![some(&tl.server), some(&tl.tool)],
            vec![number(Some(tl.user_per_minute)), factor(tl.burst_factor)],
        );
    }
    let mut tenants = Rows::default();
    let mut tenant_servers = Rows::default();
    for t in &doc.tenants {
        tenants.put(
            vec![some(&t.name)],
            vec![
                boolean(t.enabled),
                number(t.rate_limit_per_minute),
                number(Some(t.fairness_weight)),
                factor(t.burst_factor),
            ],
        );
        for s in &t.servers {
            tenant_servers.put(vec![some(&t.name), some(s)], vec![]);
        }
    }
    let mut servers = Rows::default();
    for s in &doc.servers {
        servers.put(
            vec![some(&s.name)],
            vec![
                Some(s.route_key.clone().unwrap_or_else(|| s.name.clone())),
                boolean(s.enabled),
                enum_text(&s.token_forwarding),
                enum_text(&s.tools_default),
                s.obo_scope.clone(),
                boolean(s.shadow),
                boolean(s.sensitive),
                s.description.clone(),
            ]
            .into_iter()
            .chain(upstream_to_cells(s.upstream.as_ref()))
            .collect(),
        );
    }
    let mut groups = Rows::default();
    for g in &doc.group_grants {
        groups.put(
            vec![
                some(&g.group.to_ascii_lowercase()),
                lower(&g.tid),
                some(&g.tenant),
            ],
            vec![enum_text(&g.access_level)],
        );
    }
    let mut users = Rows::default();
    for u in &doc.user_grants {
        users.put(
            vec![lower(&u.oid), lower(&u.tid), u.upn.clone(), some(&u.tenant)],
            vec![enum_text(&u.access_level)],
        );
    }
    let mut rules = Rows::default();
    for r in &doc.tool_rules {
        rules.put(
            vec![
                some(&r.server),
                r.tenant.clone(),
                some(&r.tool),
                enum_text(&r.effect),
            ],
            vec![enum_text(&r.min_access_level)],
        );
    }
    let mut admins = Rows::default();
    for g in &doc.admins.groups {
        admins.put(
            vec![
                some("group"),
                some(&g.group().to_ascii_lowercase()),
                g.tid().map(str::to_ascii_lowercase),
            ],
            vec![None],
        );
    }
    for u in &doc.admins.users {
        admins.put(
            vec![
                some("user"),
                some(&u.oid.to_ascii_lowercase()),
                lower(&u.tid),
            ],
            vec![u.upn.clone()],
        );
    }
    vec![
        settings,
        tenants,
        servers,
        tenant_servers,
        groups,
        users,
        rules,
        admins,
        tool_limits,
    ]
}

/// The upstream columns of a server row (from the 9th value column on): None when it has no
/// endpoints (the constraint keeps the others NULL then).
fn upstream_from_cells(
    table: &'static str,
    key: &Cells,
    v: &Cells,
) -> Result<Option<UpstreamDoc>, DbError> {
    const AT: usize = 8;
    let Some(endpoints) = cell(v, AT) else {
        return Ok(None);
    };
    Ok(Some(UpstreamDoc {
        endpoints: parse_text_array(&endpoints).ok_or_else(|| DbError::Row {
            table,
            key: format!("{key:?}"),
            reason: format!("upstream_endpoints {endpoints:?} is not a flat array of endpoints"),
        })?,
        path: cell(v, AT + 1),
        host: cell(v, AT + 2),
        sni: cell(v, AT + 3),
        ca_file: cell(v, AT + 4),
        client_cert_file: cell(v, AT + 5),
        client_key_file: cell(v, AT + 6),
        connect_timeout_ms: parse_opt(table, key, cell(v, AT + 7))?,
        idle_timeout_seconds: parse_opt(table, key, cell(v, AT + 8))?,
        enabled: cell(v, AT + 9).as_deref() != Some("false"),
    }))
}

fn upstream_to_cells(u: Option<&UpstreamDoc>) -> Vec<Option<String>> {
    let Some(u) = u else {
        // The column's default, which a server without an upstream keeps.
        let mut cells = vec![None; 9];
        cells.push(Some("true".into()));
        return cells;
    };
    vec![
        Some(text_array(&u.endpoints)),
        u.path.clone(),
        u.host.clone(),
        u.sni.clone(),
        u.ca_file.clone(),
        u.client_cert_file.clone(),
        u.client_key_file.clone(),
        u.connect_timeout_ms.map(|n| n.to_string()),
        u.idle_timeout_seconds.map(|n| n.to_string()),
        Some(u.enabled.to_string()),
    ]
}

/// A `text[]` as PostgreSQL prints it, for elements that never need quoting (the compiler
/// and the column's constraint allow no such character in an endpoint): `{a,b}`.
fn text_array(items: &[String]) -> String {
    format!("{{{}}}", items.join(","))
}

/// PostgreSQL's text of a one-dimensional `text[]` whose elements need no quoting; None for
/// anything else (a quoted element, a nested array), which no valid row holds.
fn parse_text_array(s: &str) -> Option<Vec<String>> {
    let inner = s.strip_prefix('{')?.strip_suffix('}')?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    inner
        .split(',')
        .map(|e| {
            (!e.is_empty() && !e.contains(['"', '\\', '{', '}']) && !e.eq_ignore_ascii_case("null"))
                .then(|| e.to_owned())
        })
        .collect()
}
