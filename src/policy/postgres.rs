//! PostgreSQL as the policy source: rows → [`PolicyDocument`] → the same compiled snapshot the
//! file feeds; export and import of the document; live reload.
//!
//! Live reload: every policy table has a statement trigger that bumps `policy_version` and
//! sends `NOTIFY mcp_authz_policy`. The source `LISTEN`s; on a notification (or a reconnect, or a
//! periodic version check that covers lost notifications) it reads all policy rows in one
//! repeatable-read transaction, compiles them and swaps the snapshot. A version whose rows do not
//! compile is logged with every problem and counted; the last good snapshot keeps serving. While
//! the database is unreachable nothing changes: decisions continue from the last snapshot and
//! the source reconnects with backoff.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
// Dynamic SQL here is assembled only from the static table and column names in this module;
// every value is a bound parameter.
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use super::compile::CompileError;
use super::document::{
    AccessLevel, AdminsDoc, Effect, GroupGrantDoc, GroupRef, PolicyDocument, ServerDoc, TenantDoc,
    TokenForwarding, ToolLimitDoc, ToolRuleDoc, UserGrantDoc, UserRef,
};
use super::handle::{PolicyHandle, ReloadHealth};
use super::snapshot::Snapshot;

pub const CHANNEL: &str = "mcp_authz_policy";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("row {table} {key:?}: {reason}")]
    Row {
        table: &'static str,
        key: String,
        reason: String,
    },
    #[error("nothing written: the rows would not compile: {0}")]
    Rejected(#[from] CompileError),
}

/// A column: its name and the SQL type its text form is cast to.
struct Col(&'static str, &'static str);

/// A policy table as text rows: natural key columns → value columns.
struct Table {
    name: &'static str,
    key: &'static [Col],
    value: &'static [Col],
    has_id: bool,
}

const TENANTS: Table = Table {
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
const SERVERS: Table = Table {
    name: "mcp_servers",
    key: &[Col("name", "text")],
    value: &[
        Col("route_key", "text"),
        Col("enabled", "boolean"),
        Col("token_forwarding", "text"),
        Col("tools_default", "text"),
        Col("obo_scope", "text"),
    ],
    has_id: false,
};
const TENANT_SERVERS: Table = Table {
    name: "tenant_servers",
    key: &[Col("tenant", "text"), Col("server", "text")],
    value: &[],
    has_id: false,
};
const GROUP_TENANTS: Table = Table {
    name: "group_tenants",
    key: &[
        Col("entra_group_id", "uuid"),
        Col("directory_tid", "uuid"),
        Col("tenant", "text"),
    ],
    value: &[Col("access_level", "text")],
    has_id: true,
};
const USER_TENANTS: Table = Table {
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
const TOOL_RULES: Table = Table {
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
const ADMINS: Table = Table {
    name: "admins",
    key: &[
        Col("kind", "text"),
        Col("entra_id", "uuid"),
        Col("directory_tid", "uuid"),
    ],
    value: &[Col("label", "text")],
    has_id: true,
};
const SETTINGS: Table = Table {
    name: "policy_settings",
    key: &[Col("singleton", "boolean")],
    value: &[
        Col("allow_upn_grants", "boolean"),
        Col("global_rate_limit_per_minute", "integer"),
        Col("global_burst_factor", "numeric"),
        Col("user_rate_limit_per_minute", "integer"),
        Col("user_burst_factor", "numeric"),
    ],
    has_id: false,
};
const TOOL_LIMITS: Table = Table {
    name: "tool_limits",
    key: &[Col("server", "text"), Col("tool_pattern", "text")],
    value: &[
        Col("user_per_minute", "integer"),
        Col("burst_factor", "numeric"),
    ],
    has_id: true,
};

/// Parents before children: inserts in this order, deletes in reverse.
const TABLES: [&Table; 9] = [
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

type Cells = Vec<Option<String>>;

#[derive(Debug, Default, Clone, PartialEq)]
struct Rows {
    /// key → (values, row id)
    rows: BTreeMap<Cells, (Cells, Option<i64>)>,
}

impl Rows {
    fn put(&mut self, key: Cells, value: Cells) {
        self.rows.insert(key, (value, None));
    }
}

async fn read_table(tx: &mut Transaction<'_, Postgres>, t: &Table) -> Result<Rows, sqlx::Error> {
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

fn cell(c: &Cells, i: usize) -> Option<String> {
    c.get(i).cloned().flatten()
}

fn parse_enum<T: serde::de::DeserializeOwned>(
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
fn parse_num<T: std::str::FromStr>(
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

fn parse_opt<T: std::str::FromStr>(
    table: &'static str,
    key: &Cells,
    v: Option<String>,
) -> Result<Option<T>, DbError> {
    v.map(|v| parse_num(table, key, Some(v))).transpose()
}

fn rows_to_document(tables: &[Rows]) -> Result<PolicyDocument, DbError> {
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

fn lower(s: &Option<String>) -> Option<String> {
    s.as_ref().map(|v| v.to_ascii_lowercase())
}

fn enum_text<T: serde::Serialize>(v: &T) -> Option<String> {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(str::to_owned))
}

/// A document as the rows it would be in each table.
fn document_to_rows(doc: &PolicyDocument) -> Vec<Rows> {
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
            ],
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

/// One change an import makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Insert {
        table: &'static str,
        row: String,
    },
    Update {
        table: &'static str,
        row: String,
        from: String,
    },
    Delete {
        table: &'static str,
        row: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Insert { table, row } => write!(f, "+ {table} {row}"),
            Change::Update { table, row, from } => write!(f, "~ {table} {row} (was {from})"),
            Change::Delete { table, row } => write!(f, "- {table} {row}"),
        }
    }
}

fn show(t: &Table, key: &Cells, value: &Cells) -> String {
    t.key
        .iter()
        .chain(t.value)
        .zip(key.iter().chain(value))
        .map(|(c, v)| format!("{}={}", c.0, v.as_deref().unwrap_or("NULL")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Makes the database hold exactly `doc`, in one transaction; with `dry_run` only reports.
/// Idempotent: importing the same document twice changes nothing the second time.
pub async fn import_document(
    pool: &PgPool,
    doc: &PolicyDocument,
    dry_run: bool,
    directories: &[String],
) -> Result<Vec<Change>, DbError> {
    // A document the server would refuse is refused here, dry run or not.
    Snapshot::compile(doc, "postgres", directories)?;
    let wanted = document_to_rows(doc);
    let mut tx = pool.begin().await?;
    // Serialize concurrent imports; readers are not blocked.
    sqlx::query("LOCK TABLE policy_version IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let mut current = Vec::new();
    for t in TABLES {
        current.push(read_table(&mut tx, t).await?);
    }
    let mut changes = Vec::new();
    // Deletes, children first (a parent's delete would cascade anyway).
    for (t, (have, want)) in TABLES.iter().zip(current.iter().zip(&wanted)).rev() {
        for (key, (value, _)) in &have.rows {
            if !want.rows.contains_key(key) {
                changes.push(Change::Delete {
                    table: t.name,
                    row: show(t, key, value),
                });
                if !dry_run {
                    let (sql, args) = delete_sql(t, key);
                    bind_all(sqlx::query(AssertSqlSafe(sql)), &args)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
    }
    // Inserts and updates, parents first.
    for (t, (have, want)) in TABLES.iter().zip(current.iter().zip(&wanted)) {
        for (key, (value, _)) in &want.rows {
            match have.rows.get(key) {
                None => {
                    changes.push(Change::Insert {
                        table: t.name,
                        row: show(t, key, value),
                    });
                    if !dry_run {
                        let (sql, args) = insert_sql(t, key, value);
                        bind_all(sqlx::query(AssertSqlSafe(sql)), &args)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                Some((old, _)) if old != value => {
                    changes.push(Change::Update {
                        table: t.name,
                        row: show(t, key, value),
                        from: show(t, key, old),
                    });
                    if !dry_run {
                        let (sql, args) = update_sql(t, key, value);
                        bind_all(sqlx::query(AssertSqlSafe(sql)), &args)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                Some(_) => {}
            }
        }
    }
    // And what the rows now say must compile, or nothing is committed (a row the document
    // cannot express would otherwise slip through): the server would refuse it, keep serving
    // the old policy, and every later change would wait behind it.
    let mut after = Vec::new();
    for t in TABLES {
        after.push(read_table(&mut tx, t).await?);
    }
    if let Err(e) = Snapshot::compile(&rows_to_document(&after)?, "postgres", directories) {
        tx.rollback().await?;
        return Err(DbError::Rejected(e));
    }
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(changes)
}

fn where_key(t: &Table, first: usize) -> String {
    t.key
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} IS NOT DISTINCT FROM ${}::{}", c.0, first + i, c.1))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn insert_sql(t: &Table, key: &Cells, value: &Cells) -> (String, Cells) {
    let cols: Vec<&Col> = t.key.iter().chain(t.value).collect();
    let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
    let params: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, c.1))
        .collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        t.name,
        names.join(", "),
        params.join(", ")
    );
    (sql, key.iter().chain(value).cloned().collect())
}

fn update_sql(t: &Table, key: &Cells, value: &Cells) -> (String, Cells) {
    let sets: Vec<String> = t
        .value
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ${}::{}", c.0, i + 1, c.1))
        .collect();
    let sql = format!(
        "UPDATE {} SET {} WHERE {}",
        t.name,
        sets.join(", "),
        where_key(t, t.value.len() + 1)
    );
    (sql, value.iter().chain(key).cloned().collect())
}

fn delete_sql(t: &Table, key: &Cells) -> (String, Cells) {
    (
        format!("DELETE FROM {} WHERE {}", t.name, where_key(t, 1)),
        key.clone(),
    )
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    args: &'q [Option<String>],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    for a in args {
        q = q.bind(a.as_deref());
    }
    q
}

/// Reads and compiles the current policy.
pub async fn load_snapshot(
    pool: &PgPool,
    directories: &[String],
) -> Result<Result<Snapshot, CompileError>, DbError> {
    let (version, doc) = read_document(pool).await?;
    Ok(
        Snapshot::compile(&doc, "postgres", directories).map(|mut s| {
            s.version = format!("db-{version}");
            s
        }),
    )
}

/// Keeps a [`PolicyHandle`] in step with the database.
pub struct PostgresSource {
    pool: PgPool,
    handle: Arc<PolicyHandle>,
    poll_interval: Duration,
    directories: Vec<String>,
    /// The database version last compiled (good or bad), so a bad version is reported once.
    seen_version: AtomicI64,
    pub health: ReloadHealth,
    pub db_errors: AtomicU64,
}

impl PostgresSource {
    pub fn new(
        pool: PgPool,
        handle: Arc<PolicyHandle>,
        poll_interval: Duration,
        directories: Vec<String>,
    ) -> Self {
        Self {
            pool,
            handle,
            poll_interval,
            directories,
            seen_version: AtomicI64::new(-1),
            health: Default::default(),
            db_errors: AtomicU64::new(0),
        }
    }

    /// Reloads when the database version differs from the one last seen.
    pub async fn reload_if_changed(&self) -> Result<(), DbError> {
        let version: i64 = sqlx::query_scalar("SELECT version FROM policy_version")
            .fetch_one(&self.pool)
            .await?;
        if version == self.seen_version.load(Ordering::Acquire) && self.handle.is_loaded() {
            return Ok(());
        }
        let (version, doc) = crate::telemetry::in_root(
            "policy reload",
            vec![opentelemetry::KeyValue::new("db.system.name", "postgresql")],
            read_document(&self.pool),
        )
        .await?;
        self.seen_version.store(version, Ordering::Release);
        match Snapshot::compile(&doc, "postgres", &self.directories) {
            Ok(mut snapshot) => {
                snapshot.version = format!("db-{version}");
                tracing::info!(
                    version = %snapshot.version,
                    servers = snapshot.servers().len(),
                    tenants = snapshot.tenant_count(),
                    grants = snapshot.grant_count(),
                    "policy loaded from PostgreSQL"
                );
                self.handle.install(snapshot);
                self.health.installed();
            }
            Err(e) => {
                self.health.refused(format!("db-{version}"), &e.0);
                tracing::error!(db_version = version, error = %e, kept_version = ?self.handle.load().map(|s| s.version.clone()), "policy rows rejected; keeping the current policy");
            }
        }
        Ok(())
    }

    async fn reload_logged(&self) {
        if let Err(e) = self.reload_if_changed().await {
            self.db_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "policy reload failed; keeping the current policy");
        }
    }

    /// Listens and polls until `shutdown`; reconnects with backoff.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(200);
        loop {
            let listener = async {
                let mut l = PgListener::connect_with(&self.pool).await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = tokio::select! {
                r = listener => match r {
                    Ok(l) => l,
                    Err(e) => {
                        self.db_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot LISTEN for policy changes; serving the current policy");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = &mut shutdown => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                },
                _ = &mut shutdown => return,
            };
            backoff = Duration::from_millis(200);
            // Anything that changed while we were not listening.
            self.reload_logged().await;
            let mut tick = tokio::time::interval(self.poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    n = listener.try_recv() => match n {
                        Ok(Some(_)) => {
                            // Coalesce a burst of notifications into one reload.
                            while listener.next_buffered().is_some() {}
                            self.reload_logged().await;
                        }
                        Ok(None) => {
                            tracing::warn!("policy listener connection lost; reconnecting");
                            break;
                        }
                        Err(e) => {
                            self.db_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "policy listener failed; reconnecting");
                            break;
                        }
                    },
                    _ = tick.tick() => self.reload_logged().await,
                    _ = &mut shutdown => return,
                }
            }
        }
    }
}
