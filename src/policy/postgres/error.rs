//! Why reading or writing the policy rows failed.

use crate::policy::compile::CompileError;

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
