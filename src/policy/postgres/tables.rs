//! The policy tables as text rows: their natural keys and value columns, and reading one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

// Dynamic SQL here is assembled only from the static table and column names in this module;
// every value is a bound parameter.
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

/// A column: its name and the SQL type its text form is cast to.
pub(super) struct Col(pub(super) &'static str, pub(super) &'static str);

/// A policy table as text rows: natural key columns → value columns.
pub(super) struct Table {
    pub(super) name: &'static str,
    pub(super) key: &'static [Col],
    pub(super) value: &'static [Col],
    pub(super) has_id: bool,
}

pub(super) const TENANTS: Table = Table {
    name: "tenants",
    key: &[Col("name", "text")],
    value: &[
        Col("enabled", "boolean"),
        Col("rate_limit_per_minute", "integer"),
        Col("fairness_weight", "integer"),
        Col("burst_factor", "numeric"),
    ],
    has_id: false,
};
pub(super) const SERVERS: Table = Table {
    name: "mcp_servers",
    key: &[Col("name", "text")],
    value: &[
        Col("route_key", "text"),
        Col("enabled", "boolean"),
        Col("token_forwarding", "text"),
        Col("tools_default", "text"),
        Col("obo_scope", "text"),
        Col("shadow", "boolean"),
        Col("sensitive", "boolean"),
        Col("description", "text"),
        Col("upstream_endpoints", "text[]"),
        Col("upstream_path", "text"),
        Col("upstream_host", "text"),
        Col("upstream_sni", "text"),
        Col("upstream_ca_file", "text"),
        Col("upstream_client_cert_file", "text"),
        Col("upstream_client_key_file", "text"),
        Col("upstream_connect_timeout_ms", "integer"),
        Col("upstream_idle_timeout_seconds", "integer"),
        Col("upstream_enabled", "boolean"),
    ],
    has_id: false,
};
pub(super) const TENANT_SERVERS: Table = Table {
    name: "tenant_servers",
    key: &[Col("tenant", "text"), Col("server", "text")],
    value: &[],
    has_id: false,
};
pub(super) const GROUP_TENANTS: Table = Table {
    name: "group_tenants",
    key: &[
        Col("entra_group_id", "uuid"),
        Col("directory_tid", "uuid"),
        Col("tenant", "text"),
    ],
    value: &[Col("access_level", "text")],
    has_id: true,
};
pub(super) const USER_TENANTS: Table = Table {
    name: "user_tenants",
    key: &[
        Col("user_oid", "uuid"),
        Col("directory_tid", "uuid"),
        Col("upn", "text"),
        Col("tenant", "text"),
    ],
    value: &[Col("access_level", "text")],
    has_id: true,
};
pub(super) const TOOL_RULES: Table = Table {
    name: "tool_rules",
    key: &[
        Col("server", "text"),
        Col("tenant", "text"),
        Col("tool_pattern", "text"),
        Col("effect", "text"),
    ],
    value: &[Col("min_access_level", "text")],
    has_id: true,
};
pub(super) const ADMINS: Table = Table {
    name: "admins",
    key: &[
        Col("kind", "text"),
        Col("entra_id", "uuid"),
        Col("directory_tid", "uuid"),
    ],
    value: &[Col("label", "text")],
    has_id: true,
};
pub(super) const SETTINGS: Table = Table {
    name: "policy_settings",
    key: &[Col("singleton", "boolean")],
    value: &[
        Col("allow_upn_grants", "boolean"),
        Col("global_rate_limit_per_minute", "integer"),
        Col("global_burst_factor", "numeric"),
        Col("user_rate_limit_per_minute", "integer"),
        Col("user_burst_factor", "numeric"),
        Col("shadow_all_servers", "boolean"),
    ],
    has_id: false,
};
pub(super) const TOOL_LIMITS: Table = Table {
    name: "tool_limits",
    key: &[Col("server", "text"), Col("tool_pattern", "text")],
    value: &[
        Col("user_per_minute", "integer"),
        Col("burst_factor", "numeric"),
    ],
    has_id: true,
};

/// Parents before children: inserts in this order, deletes in reverse.
pub(super) const TABLES: [&Table; 9] = [
    &SETTINGS,
    &TENANTS,
    &SERVERS,
    &TENANT_SERVERS,
    &GROUP_TENANTS,
    &USER_TENANTS,
    &TOOL_RULES,
    &ADMINS,
    &TOOL_LIMITS,
];

pub(super) type Cells = Vec<Option<String>>;

#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Rows {
    /// key → (values, row id)
    pub(super) rows: BTreeMap<Cells, (Cells, Option<i64>)>,
}

impl Rows {
    pub(super) fn put(&mut self, key: Cells, value: Cells) {
        self.rows.insert(key, (value, None));
    }
}

pub(super) async fn read_table(
    tx: &mut Transaction<'_, Postgres>,
    t: &Table,
) -> Result<Rows, sqlx::Error> {
    let mut sql = String::from("SELECT ");
    let cols: Vec<String> = t
        .key
        .iter()
        .chain(t.value)
        .map(|c| format!("{}::text", c.0))
        .collect();
    sql.push_str(&cols.join(", "));
    if t.has_id {
        sql.push_str(", id");
    }
    let _ = write!(sql, " FROM {}", t.name);
    let mut out = Rows::default();
    for row in sqlx::query(AssertSqlSafe(sql)).fetch_all(&mut **tx).await? {
        let mut cells: Cells = Vec::with_capacity(cols.len());
        for i in 0..cols.len() {
            cells.push(row.try_get::<Option<String>, _>(i)?);
        }
        let id = if t.has_id {
            Some(row.try_get::<i64, _>(cols.len())?)
        } else {
            None
        };
        let value = cells.split_off(t.key.len());
        out.rows.insert(cells, (value, id));
    }
    Ok(out)
}

pub(super) fn cell(c: &Cells, i: usize) -> Option<String> {
    c.get(i).cloned().flatten()
}
