//! Validation of a parsed configuration, section by section, in the order an operator reads
//! the file: the first problem is reported with the key that has it.

use super::{AuditSinkKind, Config, ConfigError, MAX_LEEWAY_SECONDS, PolicySourceKind};
use crate::ids::is_guid;

fn bad(m: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid(m))
}

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_listen()?;
        self.validate_entra()?;
        self.validate_sources()?;
        self.validate_rate_limit()?;
        self.validate_database()?;
        self.validate_graph()?;
        self.validate_obo()?;
        self.validate_paths()?;
        self.validate_public()?;
        if let Some(o) = &self.oauth {
            o.check(self)?;
        }
        self.xds.check()?;
        Ok(())
    }

    /// The listeners and the runtime.
    fn validate_listen(&self) -> Result<(), ConfigError> {
        if self.listen.grpc.is_none() && self.listen.grpc_unix.is_none() {
            return bad("listen: set grpc, grpc_unix, or both".into());
        }
        if let Some(n) = self.runtime.worker_threads
            && !(1..=1024).contains(&n)
        {
            return bad(format!(
                "runtime.worker_threads must be between 1 and 1024, not {n}"
            ));
        }
        Ok(())
    }

    /// Token validation against Entra.
    fn validate_entra(&self) -> Result<(), ConfigError> {
        let e = &self.entra;
        let authority = url::Url::parse(&e.authority)
            .map_err(|err| ConfigError::Invalid(format!("entra.authority: {err}")))?;
        match authority.scheme() {
            "https" => {}
            "http" if e.allow_insecure_authority => {}
            other => {
                return bad(format!(
                    "entra.authority must be https (got {other}://); \
                     allow_insecure_authority exists only for the stand-in"
                ));
            }
        }
        if e.authority.ends_with('/') {
            return bad("entra.authority must not end with '/'".into());
        }
        if e.tenants.is_empty() {
            return bad("entra.tenants: list at least one directory (tenant) id".into());
        }
        for t in &e.tenants {
            if !is_guid(t) {
                return bad(format!("entra.tenants: {t:?} is not a GUID"));
            }
        }
        for a in &e.allowed_client_apps {
            if !is_guid(a) {
                return bad(format!(
                    "entra.allowed_client_apps: {a:?} is not an application (client) id GUID"
                ));
            }
        }
        if let Some(t) = &e.discovery_tenant
            && (t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        {
            return bad(format!(
                "entra.discovery_tenant: {t:?} is not a tenant id or name"
            ));
        }
        if e.audiences.is_empty() || e.audiences.iter().any(|a| a.is_empty()) {
            return bad("entra.audiences: list the API's client id (and App ID URI for v1)".into());
        }
        if e.audiences.iter().any(|a| a == crate::ids::GRAPH_APP_ID) {
            return bad(
                "entra.audiences: Microsoft Graph tokens cannot be validated by anyone but Graph"
                    .into(),
            );
        }
        if e.token_versions.is_empty() || e.token_versions.iter().any(|v| v != "1.0" && v != "2.0")
        {
            return bad("entra.token_versions: a non-empty subset of [\"1.0\", \"2.0\"]".into());
        }
        if !e.v1_issuer.contains("{tenantid}") {
            return bad("entra.v1_issuer must contain {tenantid}".into());
        }
        if e.leeway_seconds > MAX_LEEWAY_SECONDS {
            return bad(format!(
                "entra.leeway_seconds: at most {MAX_LEEWAY_SECONDS}"
            ));
        }
        if !(512..=65536).contains(&e.max_token_bytes) {
            return bad("entra.max_token_bytes: between 512 and 65536".into());
        }
        if e.allow_app_tokens && e.required_roles.is_empty() {
            return bad(
                "entra.allow_app_tokens needs entra.required_roles (which app role grants access)"
                    .into(),
            );
        }
        if e.http_timeout_ms == 0 || e.http_timeout_ms > 60_000 {
            return bad("entra.http_timeout_ms: between 1 and 60000".into());
        }
        if e.token_cache_capacity == 0 {
            return bad("entra.token_cache_capacity must be positive".into());
        }
        if e.jwks_refresh_seconds < 60 {
            return bad("entra.jwks_refresh_seconds: at least 60".into());
        }
        Ok(())
    }

    /// Where the policy comes from and where the audit goes.
    fn validate_sources(&self) -> Result<(), ConfigError> {
        match (self.policy.source, &self.policy.file, &self.database) {
            (PolicySourceKind::File, None, _) => {
                return bad("policy.file is required when policy.source is file".into());
            }
            (PolicySourceKind::Postgres, _, None) => {
                return bad(
                    "policy.source postgres needs a database section (database.url)".into(),
                );
            }
            _ => {}
        }
        let rate = self.decision_log.allow_sample_rate;
        if !(0.0..=1.0).contains(&rate) {
            return bad(format!(
                "decision_log.allow_sample_rate: {rate} is not between 0.0 (denials only) and 1.0 (every allow)"
            ));
        }
        if self.decision_log.queue_capacity == 0 {
            return bad("decision_log.queue_capacity must be positive".into());
        }
        if self.audit.sink == AuditSinkKind::Postgres && self.database.is_none() {
            return bad("audit.sink postgres needs a database section (database.url)".into());
        }
        if self.audit.sink == AuditSinkKind::Jsonl && self.audit.file.is_none() {
            return bad("audit.sink jsonl needs audit.file".into());
        }
        if let Some(days) = self.audit.retention_days {
            if self.audit.sink != AuditSinkKind::Postgres {
                return bad("audit.retention_days applies to sink: postgres only (rotate a jsonl file with your log tooling)".into());
            }
            if days == 0 {
                return bad(
                    "audit.retention_days must be at least 1 (leave it out to keep every event)"
                        .into(),
                );
            }
        }
        if self.audit.queue_capacity == 0 || self.audit.batch_size == 0 {
            return bad("audit.queue_capacity and audit.batch_size must be positive".into());
        }
        Ok(())
    }

    /// Rate limits and their Redis.
    fn validate_rate_limit(&self) -> Result<(), ConfigError> {
        let rl = &self.rate_limit;
        if let Some(url) = &rl.redis_url {
            let u = url.expose();
            if !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("redis+unix://")
                || u.starts_with("unix://"))
            {
                return bad(
                    "rate_limit.redis_url must be a redis://, rediss:// or redis+unix:// URL"
                        .into(),
                );
            }
        }
        if rl.redis_timeout_ms == 0 || rl.redis_timeout_ms > 10_000 {
            return bad("rate_limit.redis_timeout_ms: between 1 and 10000".into());
        }
        if rl.redis_retry_ms == 0 {
            return bad("rate_limit.redis_retry_ms must be positive".into());
        }
        if rl.local_max_keys < 16 {
            return bad("rate_limit.local_max_keys: at least 16".into());
        }
        if rl.key_prefix.is_empty()
            || rl.key_prefix.len() > 64
            || rl
                .key_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return bad("rate_limit.key_prefix: 1 to 64 characters without spaces".into());
        }
        Ok(())
    }

    /// The PostgreSQL connection.
    fn validate_database(&self) -> Result<(), ConfigError> {
        if let Some(db) = &self.database {
            if !db.url.expose().starts_with("postgres://")
                && !db.url.expose().starts_with("postgresql://")
            {
                return bad("database.url must be a postgres:// URL".into());
            }
            if db.max_connections == 0 || db.acquire_timeout_ms == 0 || db.statement_timeout_ms == 0
            {
                return bad("database: max_connections, acquire_timeout_ms and statement_timeout_ms must be positive".into());
            }
        }
        Ok(())
    }

    /// Microsoft Graph, for groups overages.
    fn validate_graph(&self) -> Result<(), ConfigError> {
        let e = &self.entra;
        if let Some(g) = &self.graph {
            let u = url::Url::parse(&g.base_url)
                .map_err(|err| ConfigError::Invalid(format!("graph.base_url: {err}")))?;
            if !(u.scheme() == "https" || (u.scheme() == "http" && e.allow_insecure_authority))
                || g.base_url.ends_with('/')
            {
                return bad("graph.base_url: https://host without a trailing '/'".into());
            }
            if g.client_id.is_empty() {
                return bad("graph.client_id is required".into());
            }
            one_credential(
                "graph",
                g.client_secret.as_ref(),
                g.client_certificate.is_some(),
                g.workload_identity.is_some(),
            )?;
            if g.cache_ttl_seconds == 0 || g.max_stale_seconds < g.cache_ttl_seconds {
                return bad(
                    "graph: cache_ttl_seconds > 0 and max_stale_seconds >= cache_ttl_seconds"
                        .into(),
                );
            }
            if g.cache_capacity == 0 || g.timeout_ms == 0 || g.timeout_ms > 60_000 {
                return bad("graph: cache_capacity > 0 and timeout_ms between 1 and 60000".into());
            }
        }
        Ok(())
    }

    /// The on-behalf-of exchange.
    fn validate_obo(&self) -> Result<(), ConfigError> {
        if let Some(o) = &self.obo {
            one_credential(
                "obo",
                o.client_secret.as_ref(),
                o.client_certificate.is_some(),
                o.workload_identity.is_some(),
            )?;
            if o.client_id.is_empty() {
                return bad("obo: client_id is required".into());
            }
            if !self.entra.audiences.contains(&o.client_id) {
                return bad("obo.client_id must be one of entra.audiences (the API whose tokens are exchanged)".into());
            }
            if o.cache_capacity == 0 || o.timeout_ms == 0 || o.timeout_ms > 60_000 {
                return bad("obo: cache_capacity > 0 and timeout_ms between 1 and 60000".into());
            }
        }
        Ok(())
    }

    /// Reload intervals and the MCP path prefix.
    fn validate_paths(&self) -> Result<(), ConfigError> {
        if self.policy.db_poll_interval_ms < 100 {
            return bad("policy.db_poll_interval_ms: at least 100".into());
        }
        if self.policy.reload_interval_ms < 50 {
            return bad("policy.reload_interval_ms: at least 50".into());
        }
        let p = &self.mcp.path_prefix;
        if !p.starts_with('/') || !p.ends_with('/') || p.len() < 2 {
            return bad("mcp.path_prefix must start and end with '/', e.g. /mcp/".into());
        }
        Ok(())
    }

    /// What clients and upstreams are told: the public URL and the identity assertion.
    fn validate_public(&self) -> Result<(), ConfigError> {
        let ia = &self.identity_assertion;
        if ia.enabled && !(60..=300).contains(&ia.lifetime_seconds) {
            return bad("identity_assertion.lifetime_seconds: 60 to 300".into());
        }
        if ia.enabled && self.mcp.public_base_url.is_none() {
            return bad("identity_assertion needs mcp.public_base_url (its iss)".into());
        }
        if self.listen.grpc_tls.is_some() && self.listen.grpc.is_none() {
            return bad("listen.grpc_tls secures listen.grpc, which is not set".into());
        }
        if self.mcp.public_base_url.is_none() && !self.mcp.allow_host_derived_urls {
            return bad("mcp.public_base_url is required (the URL clients use, e.g. https://mcp.example.com): metadata and 401 challenges are never built from a client-chosen Host; for local development only, set mcp.allow_host_derived_urls: true".into());
        }
        if let Some(base) = &self.mcp.public_base_url {
            let u = url::Url::parse(base)
                .map_err(|err| ConfigError::Invalid(format!("mcp.public_base_url: {err}")))?;
            if !matches!(u.scheme(), "http" | "https") || base.ends_with('/') || u.query().is_some()
            {
                return bad(
                    "mcp.public_base_url: scheme://host[:port][/path] without a trailing '/'"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// Exactly one way to authenticate at the token endpoint.
pub(super) fn one_credential(
    section: &str,
    secret: Option<&super::secret::Secret>,
    certificate: bool,
    workload_identity: bool,
) -> Result<(), ConfigError> {
    let set = [secret.is_some(), certificate, workload_identity]
        .iter()
        .filter(|s| **s)
        .count();
    if set != 1 {
        return bad(format!(
            "{section}: set exactly one of client_secret, client_certificate and workload_identity"
        ));
    }
    if secret.is_some_and(|s| s.expose().is_empty()) {
        return bad(format!("{section}.client_secret is empty"));
    }
    Ok(())
}
