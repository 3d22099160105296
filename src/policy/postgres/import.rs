//! Import: make the database hold exactly a document, in one transaction, as a diff of
//! inserts, updates and deletes (or only the report of them, for a dry run).

use sqlx::postgres::PgPool;
// Dynamic SQL here is assembled only from the static table and column names in this module;
// every value is a bound parameter.
use sqlx::{AssertSqlSafe, Postgres};

use crate::policy::document::PolicyDocument;
use crate::policy::snapshot::Snapshot;

use super::error::DbError;
use super::rows::*;
use super::tables::*;

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

pub(super) fn show(t: &Table, key: &Cells, value: &Cells) -> String {
    t.key
        .iter()
        .chain(t.value)
        .zip(key.iter().chain(value))
        .map(|(c, v)| format!("{}={}", c.0, v.as_deref().unwrap_or("NULL")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What an import would write into an empty database: every row of the document, as the
/// inserts `import_document` would make, after the document compiles (for `--dry-run` without
/// a database).
pub fn changes_into_empty(
    doc: &PolicyDocument,
    directories: &[String],
) -> Result<Vec<Change>, DbError> {
    Snapshot::compile(doc, "postgres", directories)?;
    let wanted = document_to_rows(doc);
    let mut changes = Vec::new();
    for (t, want) in TABLES.iter().zip(&wanted) {
        for (key, (value, _)) in &want.rows {
            changes.push(Change::Insert {
                table: t.name,
                row: show(t, key, value),
            });
        }
    }
    Ok(changes)
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

pub(super) fn where_key(t: &Table, first: usize) -> String {
    t.key
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} IS NOT DISTINCT FROM ${}::{}", c.0, first + i, c.1))
        .collect::<Vec<_>>()
        .join(" AND ")
}

pub(super) fn insert_sql(t: &Table, key: &Cells, value: &Cells) -> (String, Cells) {
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

pub(super) fn update_sql(t: &Table, key: &Cells, value: &Cells) -> (String, Cells) {
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

pub(super) fn delete_sql(t: &Table, key: &Cells) -> (String, Cells) {
    (
        format!("DELETE FROM {} WHERE {}", t.name, where_key(t, 1)),
        key.clone(),
    )
}

pub(super) fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    args: &'q [Option<String>],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    for a in args {
        q = q.bind(a.as_deref());
    }
    q
}
