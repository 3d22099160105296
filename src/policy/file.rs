//! The YAML policy file: loaded at start, reloaded when it changes.
//!
//! The file is polled (metadata, then content hash) rather than watched with inotify: that
//! works the same on a Kubernetes ConfigMap (an atomic symlink swap) and on a plain edit. A file
//! that does not parse or compile is logged with every problem and the previous snapshot keeps
//! serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::compile::CompileError;
use super::document::PolicyDocument;
use super::handle::{PolicyHandle, ReloadHealth};
use super::snapshot::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid policy document: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Compile { path: PathBuf, source: CompileError },
}

impl FileError {
    /// What is wrong, one line a problem.
    pub fn problems(&self) -> Vec<String> {
        match self {
            FileError::Compile { source, .. } => source.0.clone(),
            other => vec![other.to_string()],
        }
    }
}

pub fn parse_document(text: &str) -> Result<PolicyDocument, String> {
    serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
}

/// Reads, parses and compiles a policy file.
/// `directories` are the allowed Entra directories ([`Snapshot::compile`]).
pub fn load_file(path: &Path, directories: &[String]) -> Result<Snapshot, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    compile_text(path, &text, directories)
}

fn compile_text(path: &Path, text: &str, directories: &[String]) -> Result<Snapshot, FileError> {
    let doc = parse_document(text).map_err(|reason| FileError::Parse {
        path: path.to_owned(),
        reason,
    })?;
    Snapshot::compile(&doc, &path.display().to_string(), directories).map_err(|source| {
        FileError::Compile {
            path: path.to_owned(),
            source,
        }
    })
}

/// Keeps a [`PolicyHandle`] in step with a file.
pub struct FileSource {
    path: PathBuf,
    handle: Arc<PolicyHandle>,
    interval: Duration,
    directories: Vec<String>,
    pub health: ReloadHealth,
}

impl FileSource {
    pub fn new(
        path: PathBuf,
        handle: Arc<PolicyHandle>,
        interval: Duration,
        directories: Vec<String>,
    ) -> Self {
        Self {
            path,
            handle,
            interval,
            directories,
            health: Default::default(),
        }
    }

    /// Polls until `shutdown`. The first load happens at once.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut seen: Option<(Option<SystemTime>, u64, [u8; 32])> = None;
        loop {
            self.poll(&mut seen);
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = &mut shutdown => return,
            }
        }
    }

    fn poll(&self, seen: &mut Option<(Option<SystemTime>, u64, [u8; 32])>) {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => {
                if seen.is_some() || !self.handle.is_loaded() {
                    tracing::warn!(path = %self.path.display(), error = %e, "policy file unreadable; keeping the current policy");
                }
                return;
            }
        };
        let stamp = (meta.modified().ok(), meta.len());
        if let Some((m, l, _)) = seen
            && (*m, *l) == stamp
            && self.handle.is_loaded()
        {
            return;
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "policy file unreadable; keeping the current policy");
                return;
            }
        };
        let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if seen.as_ref().is_some_and(|(_, _, h)| *h == hash) && self.handle.is_loaded() {
            *seen = Some((stamp.0, stamp.1, hash));
            return;
        }
        *seen = Some((stamp.0, stamp.1, hash));
        match compile_text(&self.path, &text, &self.directories) {
            Ok(snapshot) => {
                tracing::info!(
                    path = %self.path.display(),
                    version = %snapshot.version,
                    servers = snapshot.servers().len(),
                    tenants = snapshot.tenant_count(),
                    grants = snapshot.grant_count(),
                    "policy loaded"
                );
                self.handle.install(snapshot);
                self.health.installed();
            }
            Err(e) => {
                self.health
                    .refused(self.path.display().to_string(), &e.problems());
                tracing::error!(error = %e, kept_version = ?self.handle.load().map(|s| s.version.clone()), "policy file rejected; keeping the current policy");
            }
        }
    }
}
