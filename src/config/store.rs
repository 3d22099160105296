//! The sections of what mcp-authz keeps and shares: `database`, `policy`, `audit`,
//! `rate_limit` and `sessions`.

use std::path::PathBuf;

use serde::Deserialize;

use super::defaults::yes;
use super::secret::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `redis://[:password@]host:6379/0` (or `rediss://` for TLS): one limit shared by every
    /// replica. Without it each replica limits on its own.
    pub redis_url: Option<Secret>,
    /// Each Redis call's bound; past it the Check uses the in-process limiter.
    #[serde(default = "default_redis_timeout")]
    pub redis_timeout_ms: u64,
    /// After a Redis failure, how long to stay in process before trying Redis again.
    #[serde(default = "default_redis_retry")]
    pub redis_retry_ms: u64,
    /// Prefix of every Redis key; `{…}` keeps them in one Redis Cluster slot.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
    /// Buckets the in-process limiter keeps at most.
    #[serde(default = "default_local_keys")]
    pub local_max_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            redis_url: None,
            redis_timeout_ms: default_redis_timeout(),
            redis_retry_ms: default_redis_retry(),
            key_prefix: default_redis_prefix(),
            local_max_keys: default_local_keys(),
        }
    }
}

fn default_redis_timeout() -> u64 {
    50
}

fn default_redis_retry() -> u64 {
    1000
}

fn default_redis_prefix() -> String {
    "mcp-authz:{rl}:".into()
}

fn default_local_keys() -> usize {
    100_000
}

/// Sessions bound to users (`src/sessions.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// Bind sessions to users (on by default).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Bindings kept in process at most (least recently used forgotten first).
    #[serde(default = "default_session_capacity")]
    pub capacity: u64,
    /// How long a binding lasts after it was made.
    #[serde(default = "default_session_ttl")]
    pub ttl_seconds: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            enabled: true,
            capacity: default_session_capacity(),
            ttl_seconds: default_session_ttl(),
        }
    }
}

fn default_session_capacity() -> u64 {
    200_000
}

fn default_session_ttl() -> u64 {
    86_400
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host/db?sslmode=require`; usually from the environment
    /// (`MCP_AUTHZ__DATABASE__URL`) or a mounted Secret.
    pub url: Secret,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Apply pending migrations at start (otherwise: `mcp-authz migrate`, e.g. as a Job).
    #[serde(default)]
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PolicySourceKind {
    #[default]
    File,
    Postgres,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuditSinkKind {
    #[default]
    None,
    Jsonl,
    Postgres,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default)]
    pub sink: AuditSinkKind,
    /// For `jsonl`: the file events are appended to.
    pub file: Option<PathBuf>,
    #[serde(default = "default_audit_capacity")]
    pub queue_capacity: usize,
    #[serde(default = "default_audit_batch")]
    pub batch_size: usize,
    /// For `postgres`: months of `audit_events` whose last day is older than this are dropped
    /// (hourly by `serve`, or `mcp-authz audit prune`). Absent: kept forever.
    pub retention_days: Option<u32>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: AuditSinkKind::None,
            file: None,
            queue_capacity: default_audit_capacity(),
            batch_size: default_audit_batch(),
            retention_days: None,
        }
    }
}

/// `decision_log`: one JSON line per decision on stdout, where container log pipelines read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The share of allows written (0.0 to 1.0, by decision id); every denial is written.
    #[serde(default = "default_allow_sample_rate")]
    pub allow_sample_rate: f64,
    /// Lines waiting to be written; past it, lines are dropped and counted.
    #[serde(default = "default_audit_capacity")]
    pub queue_capacity: usize,
    /// Lines carry `groups` (the object ids decided with, as `policy replay` needs them). A
    /// user in hundreds of groups makes a line of kilobytes: off keeps lines short.
    #[serde(default = "super::defaults::yes")]
    pub include_groups: bool,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            allow_sample_rate: default_allow_sample_rate(),
            include_groups: true,
            queue_capacity: default_audit_capacity(),
        }
    }
}

fn default_allow_sample_rate() -> f64 {
    1.0
}

fn default_max_connections() -> u32 {
    8
}

fn default_acquire_timeout_ms() -> u64 {
    3000
}

fn default_statement_timeout_ms() -> u64 {
    5000
}

fn default_audit_capacity() -> usize {
    10_000
}

fn default_audit_batch() -> usize {
    500
}

fn default_db_poll_ms() -> u64 {
    5000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `file` (the embedded default) or `postgres` (needs `database`).
    #[serde(default)]
    pub source: PolicySourceKind,
    /// The YAML policy file, for `source: file`.
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes.
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
    /// How often the database version is compared, covering lost notifications.
    #[serde(default = "default_db_poll_ms")]
    pub db_poll_interval_ms: u64,
}

fn default_reload_ms() -> u64 {
    1000
}
