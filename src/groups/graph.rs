//! Microsoft Graph: an app-only token by client credentials, and a user's transitive groups.
//!
//! - The app token is cached per directory and renewed before expiry (on use when it has under
//!   five minutes left, and by a background loop with jitter and backoff); a failed renewal keeps
//!   the current token while it is valid, and use-time renewal then holds off ~30 s.
//! - `getMemberObjects` (default) or `transitiveMemberOf/microsoft.graph.group` following
//!   `@odata.nextLink` (only links on the configured Graph origin are followed).
//! - 429: `Retry-After` (seconds, fractions allowed) is honoured up to `max_retry_wait`; without
//!   it, exponential backoff with jitter. 5xx and connection failures retry the same way, up to
//!   `max_retries`. After a failure the client fails fast until the backoff passes, so an outage
//!   costs each request nothing but a cache lookup.
//! - Graph's error text never leaves this module except as an operator log line.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::ids::GroupId;

/// Largest Graph response we read.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Pages followed at most (999 ids a page: ~100,000 groups).
const MAX_PAGES: usize = 100;
/// Renew an app token when it has less than this left.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("Graph throttled the request (429)")]
    Throttled,
    #[error("Graph answered {0}")]
    Status(u16),
    #[error(
        "Graph denied the call (403 {0}): the app lacks GroupMember.Read.All, User.Read.All or Directory.Read.All"
    )]
    Forbidden(String),
    #[error("Graph does not know the user (404)")]
    UserNotFound,
    #[error("Graph unreachable: {0}")]
    Transport(&'static str),
    #[error("Graph answer not understood: {0}")]
    Protocol(String),
    #[error("app token: {0}")]
    Token(String),
    #[error("Graph recently failed; not retrying before the backoff ends")]
    BackingOff,
}

pub use crate::config::GraphMethod;
pub use crate::credential::{CertificateKey, Credential};

mod token;

#[derive(Debug, Clone)]
pub struct GraphSettings {
    pub authority: String,
    pub base_url: String,
    pub client_id: String,
    pub credential: Credential,
    pub method: GraphMethod,
    pub security_enabled_only: bool,
    pub max_retries: u32,
    pub max_retry_wait: Duration,
}

#[derive(Clone)]
struct AppToken {
    value: String,
    expires_at: Instant,
    /// After a failed renewal, use-time renewal waits until then (the current token serves).
    retry_renewal_at: Option<Instant>,
}

pub struct GraphStats {
    pub calls: AtomicU64,
    /// Seconds per Graph HTTP call (headers and body), whatever the answer.
    pub latency: prometheus_client::metrics::histogram::Histogram,
    pub throttled: AtomicU64,
    pub failures: AtomicU64,
    pub token_requests: AtomicU64,
    pub token_failures: AtomicU64,
}

impl Default for GraphStats {
    fn default() -> Self {
        GraphStats {
            calls: AtomicU64::new(0),
            // 5 ms … ~10 s.
            latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 12),
            ),
            throttled: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            token_failures: AtomicU64::new(0),
        }
    }
}

pub struct GraphClient {
    http: reqwest::Client,
    s: GraphSettings,
    tokens: tokio::sync::Mutex<HashMap<String, AppToken>>,
    backoff_until: Mutex<Option<Instant>>,
    failures_in_row: AtomicU64,
    pub stats: GraphStats,
}

fn jitter(d: Duration) -> Duration {
    // ±20 %, so replicas do not retry in step.
    let f = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(f)
}

/// `Retry-After` in seconds (fractions allowed); the HTTP-date form is not used by Graph.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

impl GraphClient {
    pub fn new(http: reqwest::Client, s: GraphSettings) -> Self {
        Self {
            http,
            s,
            tokens: tokio::sync::Mutex::new(HashMap::new()),
            backoff_until: Mutex::new(None),
            failures_in_row: AtomicU64::new(0),
            stats: GraphStats::default(),
        }
    }

    fn backing_off(&self) -> bool {
        self.backoff_until
            .lock()
            .map(|b| b.is_some_and(|t| Instant::now() < t))
            .unwrap_or(false)
    }

    fn note_failure(&self, at_least: Duration) {
        // 0.2 s doubling to 3.2 s (±20 %), or longer when Graph asked for it: a recovered
        // Graph serves new users again within ~4 s (measured in faults::graph_down_…).
        let n = self.failures_in_row.fetch_add(1, Ordering::Relaxed);
        let exp = Duration::from_millis(200u64.saturating_mul(1 << n.min(4)));
        let wait = jitter(exp).max(at_least).min(Duration::from_secs(60));
        if let Ok(mut b) = self.backoff_until.lock() {
            *b = Some(Instant::now() + wait);
        }
    }

    fn note_success(&self) {
        self.failures_in_row.store(0, Ordering::Relaxed);
        if let Ok(mut b) = self.backoff_until.lock() {
            *b = None;
        }
    }

    /// The user's transitive group ids.
    pub async fn member_groups(&self, tid: &str, oid: &str) -> Result<Vec<GroupId>, GraphError> {
        crate::telemetry::in_child(
            "graph member groups",
            vec![opentelemetry::KeyValue::new(
                "mcp_authz.graph_method",
                match self.s.method {
                    GraphMethod::GetMemberObjects => "getMemberObjects",
                    GraphMethod::TransitiveMemberOf => "transitiveMemberOf",
                },
            )],
            self.member_groups_inner(tid, oid),
        )
        .await
    }

    async fn member_groups_inner(&self, tid: &str, oid: &str) -> Result<Vec<GroupId>, GraphError> {
        if self.backing_off() {
            return Err(GraphError::BackingOff);
        }
        let token = self.app_token(tid).await?;
        let mut attempt = 0;
        loop {
            let result = match self.s.method {
                GraphMethod::GetMemberObjects => self.get_member_objects(&token, oid).await,
                GraphMethod::TransitiveMemberOf => self.transitive_member_of(&token, oid).await,
            };
            match result {
                Ok(groups) => {
                    self.note_success();
                    return Ok(groups);
                }
                Err((e, retry_after)) => {
                    let retriable = matches!(e, GraphError::Throttled | GraphError::Transport(_))
                        || matches!(e, GraphError::Status(s) if s >= 500);
                    if e == GraphError::Throttled {
                        self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                    }
                    let wait = retry_after.unwrap_or_else(|| {
                        jitter(Duration::from_millis(200 * (1 << attempt.min(5))))
                    });
                    if !retriable || attempt >= self.s.max_retries || wait > self.s.max_retry_wait {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        if retriable {
                            self.note_failure(retry_after.unwrap_or_default());
                        }
                        return Err(e);
                    }
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, (GraphError, Option<Duration>)> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = self.send_timed(req).await;
        self.stats.latency.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn send_timed(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, (GraphError, Option<Duration>)> {
        let mut resp = req
            .send()
            .await
            .map_err(|e| (GraphError::Transport(transport(&e)), None))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| (GraphError::Transport(transport(&e)), None))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err((GraphError::Protocol("response too large".into()), None));
            }
            body.extend_from_slice(&chunk);
        }
        match status {
            200..=299 => Ok(body),
            429 => Err((GraphError::Throttled, retry_after)),
            403 => {
                #[derive(Deserialize)]
                struct E {
                    error: Inner,
                }
                #[derive(Deserialize)]
                struct Inner {
                    code: String,
                }
                let code = serde_json::from_slice::<E>(&body)
                    .map(|e| e.error.code)
                    .unwrap_or_default();
                Err((GraphError::Forbidden(code), None))
            }
            404 => Err((GraphError::UserNotFound, None)),
            s => Err((GraphError::Status(s), retry_after)),
        }
    }

    async fn get_member_objects(
        &self,
        token: &str,
        oid: &str,
    ) -> Result<Vec<GroupId>, (GraphError, Option<Duration>)> {
        #[derive(Deserialize)]
        struct Ids {
            value: Vec<String>,
        }
        let url = format!("{}/v1.0/users/{oid}/getMemberObjects", self.s.base_url);
        let body = self
            .send(
                self.http.post(url).bearer_auth(token).json(
                    &serde_json::json!({"securityEnabledOnly": self.s.security_enabled_only}),
                ),
            )
            .await?;
        let ids: Ids = serde_json::from_slice(&body)
            .map_err(|e| (GraphError::Protocol(e.to_string()), None))?;
        ids.value.into_iter().map(group_id).collect()
    }

    async fn transitive_member_of(
        &self,
        token: &str,
        oid: &str,
    ) -> Result<Vec<GroupId>, (GraphError, Option<Duration>)> {
        #[derive(Deserialize)]
        struct Page {
            value: Vec<Obj>,
            #[serde(rename = "@odata.nextLink")]
            next: Option<String>,
        }
        #[derive(Deserialize)]
        struct Obj {
            id: String,
        }
        let mut url = format!(
            "{}/v1.0/users/{oid}/transitiveMemberOf/microsoft.graph.group?$select=id&$top=999",
            self.s.base_url
        );
        let mut groups = Vec::new();
        for _ in 0..MAX_PAGES {
            let body = self.send(self.http.get(&url).bearer_auth(token)).await?;
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| (GraphError::Protocol(e.to_string()), None))?;
            for o in page.value {
                groups.push(group_id(o.id)?);
            }
            match page.next {
                // Never send the app token anywhere but Graph.
                Some(next) if next.starts_with(&format!("{}/", self.s.base_url)) => url = next,
                Some(_) => {
                    return Err((
                        GraphError::Protocol("nextLink points outside Graph".into()),
                        None,
                    ));
                }
                None => return Ok(groups),
            }
        }
        Err((
            GraphError::Protocol(format!("more than {MAX_PAGES} pages")),
            None,
        ))
    }

    /// For `check-config`: a token, then one harmless call (the groups of a user that does not
    /// exist: 404 means the permission is there, 403 that it is missing).
    pub async fn probe(&self, tid: &str) -> Result<(), GraphError> {
        let token = self.app_token(tid).await?;
        match self
            .get_member_objects(&token, "00000000-0000-0000-0000-000000000000")
            .await
        {
            Ok(_) | Err((GraphError::UserNotFound, _)) => Ok(()),
            Err((e, _)) => Err(e),
        }
    }
}

fn transport(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

/// A group id of Graph's answer. Graph only ever answers object ids (GUIDs); anything else is a
/// broken answer (a proxy, a stand-in), refused as a protocol error rather than decided on.
fn group_id(id: String) -> Result<GroupId, (GraphError, Option<Duration>)> {
    GroupId::parse(&id).ok_or_else(|| {
        (
            GraphError::Protocol("a group id in the answer is not a GUID".into()),
            None,
        )
    })
}
