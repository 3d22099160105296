//! Where the current snapshot lives ([`PolicyHandle`], swapped atomically) and how healthy
//! its reloads are ([`ReloadHealth`]).

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::snapshot::Snapshot;

/// How a policy source's reloads go: counters, and the newest version the compiler refused
/// while no later one has compiled. While that lasts every later change, revocations
/// included, waits behind it: `/status` shows it, `mcp_authz_policy_reload_failing` and its
/// age are exported, and the shipped alert fires on it.
#[derive(Debug, Default)]
pub struct ReloadHealth {
    pub reloads: std::sync::atomic::AtomicU64,
    pub rejected: std::sync::atomic::AtomicU64,
    failing: std::sync::Mutex<Option<Rejection>>,
}

/// A refused policy version.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// What was refused: `db-42`, or the file's path.
    pub what: String,
    /// When the first of the refusals in a row happened (the age counts from it).
    pub since: std::time::SystemTime,
    /// The compiler's problems, the first [`Rejection::KEPT_PROBLEMS`] of them.
    pub problems: Vec<String>,
    pub problem_count: usize,
}

impl Rejection {
    pub const KEPT_PROBLEMS: usize = 10;

    pub fn age_seconds(&self) -> f64 {
        self.since.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0)
    }
}

impl ReloadHealth {
    /// A snapshot was installed: nothing is failing any more.
    pub fn installed(&self) {
        self.reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut f) = self.failing.lock() {
            *f = None;
        }
    }

    /// `what` did not compile; the age of a run of refusals counts from its first.
    pub fn refused(&self, what: String, problems: &[String]) {
        self.rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut f) = self.failing.lock() {
            let since = f
                .as_ref()
                .map(|r| r.since)
                .unwrap_or_else(std::time::SystemTime::now);
            *f = Some(Rejection {
                what,
                since,
                problems: problems
                    .iter()
                    .take(Rejection::KEPT_PROBLEMS)
                    .cloned()
                    .collect(),
                problem_count: problems.len(),
            });
        }
    }

    pub fn failing(&self) -> Option<Rejection> {
        self.failing.lock().ok().and_then(|f| f.clone())
    }
}

/// The current snapshot, swapped atomically by the policy source.
pub struct PolicyHandle {
    current: ArcSwap<Option<Arc<Snapshot>>>,
    /// Bumped by every install, for those who follow the policy (the xDS server).
    installs: tokio::sync::watch::Sender<u64>,
}

impl Default for PolicyHandle {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(None),
            installs: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl PolicyHandle {
    pub fn with(snapshot: Snapshot) -> Self {
        let h = Self::default();
        h.install(snapshot);
        h
    }

    pub fn load(&self) -> Option<Arc<Snapshot>> {
        (**self.current.load()).clone()
    }

    pub fn install(&self, snapshot: Snapshot) {
        let shadowed = snapshot.shadowed();
        if !shadowed.is_empty() {
            // Loud on every install (start and each reload), for as long as it lasts.
            tracing::warn!(
                servers = ?shadowed,
                policy_version = %snapshot.version,
                "SHADOW MODE: policy denials on these servers are allowed and recorded as would_deny"
            );
        }
        self.current.store(Arc::new(Some(Arc::new(snapshot))));
        self.installs.send_modify(|n| *n += 1);
    }

    /// Changes whenever a snapshot is installed (the same content included: followers compare
    /// versions themselves).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.installs.subscribe()
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }
}
