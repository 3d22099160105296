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

mod error;
mod import;
mod live;
mod rows;
mod tables;

pub use error::DbError;
pub use import::{Change, changes_into_empty, import_document};
pub use live::{CHANNEL, PostgresSource, load_snapshot};
pub use rows::read_document;

/// The document as rows and back, as `import` writes them and the server reads them.
#[cfg(test)]
pub(crate) fn round_trip(doc: &super::PolicyDocument) -> Result<super::PolicyDocument, DbError> {
    rows::rows_to_document(&rows::document_to_rows(doc))
}
