//! Transient state of a sign-in: the authorization in flight (from the consent to Entra's
//! callback, keyed by the `state` sent to Entra), the gateway's codes (callback to `/token`),
//! and the refresh tokens already used. Each is taken at most once: `take` removes what it
//! returns, so a replayed state, code or refresh token finds nothing.
//!
//! In memory (`state_store: memory`): one replica only, since a callback or token request that
//! reaches another replica finds nothing there. Bounded and expiring.

use std::sync::Arc;
use std::time::Duration;

/// What the client asked for at `/oauth/authorize`, checked.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub client_id: String,
    pub redirect_uri: String,
    /// The client's `state`, returned to it as sent.
    pub state: Option<String>,
    /// The client's PKCE S256 challenge.
    pub challenge: String,
    /// The MCP scopes granted (space-separated).
    pub scope: String,
    /// The MCP server URL (`resource`, RFC 8707) the tokens are for, when the client named one.
    pub resource: Option<String>,
}

/// A sign-in waiting for Entra's callback.
#[derive(Debug, Clone)]
pub struct Pending {
    pub request: Request,
    /// The gateway's own PKCE verifier toward Entra.
    pub entra_verifier: String,
}

/// What the gateway's code stands for: Entra's tokens, for the client that asked.
#[derive(Debug, Clone)]
pub struct Issued {
    pub request: Request,
    pub access_token: String,
    pub expires_in: u64,
    pub entra_refresh: Option<String>,
    pub oid: String,
}

/// The in-process store.
pub struct Store {
    pending: moka::sync::Cache<String, Arc<Pending>>,
    codes: moka::sync::Cache<String, Arc<Issued>>,
    used_refresh: moka::sync::Cache<String, ()>,
}

/// Most entries of each kind held.
const CAPACITY: u64 = 100_000;

impl Store {
    pub fn memory(pending: Duration, code: Duration, refresh: Duration) -> Self {
        Self {
            pending: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(pending)
                .build(),
            codes: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(code)
                .build(),
            used_refresh: moka::sync::Cache::builder()
                .max_capacity(10 * CAPACITY)
                .time_to_live(refresh)
                .build(),
        }
    }

    pub fn put_pending(&self, state: String, p: Pending) {
        self.pending.insert(state, Arc::new(p));
    }

    pub fn take_pending(&self, state: &str) -> Option<Arc<Pending>> {
        self.pending.remove(state)
    }

    pub fn put_code(&self, code: String, i: Issued) {
        self.codes.insert(code, Arc::new(i));
    }

    pub fn take_code(&self, code: &str) -> Option<Arc<Issued>> {
        self.codes.remove(code)
    }

    /// Marks a refresh token (by its id) used; false when it already was.
    pub fn use_refresh(&self, id: &str) -> bool {
        let entry = self.used_refresh.entry(id.to_owned()).or_insert(());
        entry.is_fresh()
    }

    /// Lets a refresh token be used again (its exchange failed for want of Entra).
    pub fn unuse_refresh(&self, id: &str) {
        self.used_refresh.invalidate(id);
    }
}
