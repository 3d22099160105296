//! Policy: the document operators write (a YAML file, or PostgreSQL rows), compiled into an
//! immutable [`Snapshot`] that the hot path reads without locks, and the pure decision function
//! over it ([`decide`]).
//!
//! - `document`: the document's serde types and its content version;
//! - `compile`: document → snapshot, every problem found in one pass;
//! - `snapshot`: the compiled snapshot and its lookups;
//! - `decision`: the decision over a snapshot, and the rate-limit buckets of an allow;
//! - [`upstream`]: a server's upstream, checked and compiled for Envoy's route and cluster;
//! - `handle`: the current snapshot and the health of its reloads;
//! - `source`: which of the two sources, `file` or [`postgres`], feeds it;
//! - [`cases`]: questions asked of a snapshot offline (`explain`, `policy test`).

pub mod cases;
pub(crate) mod compile;
mod decision;
pub(crate) mod document;
mod file;
pub(crate) mod handle;
pub mod postgres;
pub(crate) mod snapshot;
mod source;
pub mod upstream;

pub use compile::CompileError;
pub use decision::{
    Decision, DenyReason, Permit, SHADOW_TENANT, Subject, decide, lets_through, permit,
    shadow_permit,
};
pub use document::*;
pub use file::{FileSource, load_file};
pub use handle::{PolicyHandle, Rejection, ReloadHealth};
pub use snapshot::{Origin, Server, Snapshot, Tenant};
pub use source::Source;

#[cfg(test)]
mod tests;
