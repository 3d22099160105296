//! Which source feeds the snapshot: the file or PostgreSQL.

use std::sync::Arc;

use super::file::FileSource;
use super::handle::ReloadHealth;
use super::postgres;

/// Where the snapshot comes from.
#[derive(Clone)]
pub enum Source {
    File(Arc<FileSource>),
    Postgres(Arc<postgres::PostgresSource>),
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Source::File(_) => "file",
            Source::Postgres(_) => "postgres",
        }
    }
    pub fn health(&self) -> &ReloadHealth {
        match self {
            Source::File(f) => &f.health,
            Source::Postgres(p) => &p.health,
        }
    }

    /// (snapshots installed, versions rejected)
    pub fn counters(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let h = self.health();
        (h.reloads.load(Relaxed), h.rejected.load(Relaxed))
    }
}
