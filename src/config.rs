//! Typed configuration: a YAML file, then environment overrides, then validation.
//!
//! Overrides: `MCP_AUTHZ__SECTION__KEY=value` sets `section.key`. A value is data, not YAML:
//! where the key is text (a path, a URL, a secret) it is taken verbatim (`#`, `@`, `123456` and
//! all); only where the key is a number, a flag or a list is the value read as YAML, so
//! `MCP_AUTHZ__ENTRA__LEEWAY_SECONDS=30` is a number and `MCP_AUTHZ__ENTRA__TENANTS='[a, b]'` a
//! list. An empty value unsets the key (its default applies). Unknown keys are errors, in the
//! file and in the environment alike.
//!
//! Secrets (`client_secret`, `database.url`, `ratelimit.redis_url`) are a string, or
//! `{file: /path}` to read it from a file such as a mounted Kubernetes Secret (one trailing
//! newline dropped): `MCP_AUTHZ__GRAPH__CLIENT_SECRET__FILE=/var/run/secrets/graph/secret`.
//! A secret never appears in debug output, logs or error messages.
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
mod defaults;
mod entra;
mod env;
mod error;
mod oauth;
mod secret;
mod serve;
mod store;
pub mod traces;

pub use entra::*;
use env::{deserialize_with_overrides, override_path, set_at};
pub use error::{ConfigError, ENV_PREFIX};
pub use oauth::*;
pub use secret::Secret;
pub use serve::*;
pub use store::*;
mod validate;
mod workload;
mod xds;
pub use xds::{XdsConfig, check_origin, is_envoy_file};
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: ListenConfig,
    pub entra: EntraConfig,
    pub policy: PolicyConfig,
    #[serde(default)]
    pub mcp: McpConfig,
    #[serde(default)]
    pub log: LogConfig,
    pub database: Option<DatabaseConfig>,
    #[serde(default)]
    pub audit: AuditConfig,
    /// Decisions as JSON lines on stdout, beside the audit sink.
    #[serde(default)]
    pub decision_log: DecisionLogConfig,
    /// Microsoft Graph, to resolve groups overage. Without it an overage token is refused.
    pub graph: Option<GraphConfig>,
    /// On-behalf-of exchange, for servers with `token_forwarding: obo`.
    pub obo: Option<OboConfig>,
    /// Where rate-limit state lives. The limits themselves are policy (`rate_limits`, tenants).
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Sessions bound to users (`Mcp-Session-Id`); shared through `rate_limit.redis_url`.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// A signed identity assertion for upstreams (`x-mcp-identity-assertion`), opt-in.
    #[serde(default)]
    pub identity_assertion: IdentityAssertionConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The gateway as the OAuth authorization server MCP clients sign in through, in front of
    /// Entra. Off unless set.
    pub oauth: Option<OAuthConfig>,
    /// Envoy's routes and clusters served over xDS from the policy's servers. Off unless
    /// `xds.enabled`.
    #[serde(default)]
    pub xds: XdsConfig,
    /// OpenTelemetry traces, from the standard `OTEL_*` environment variables (off unless an
    /// OTLP endpoint or `OTEL_TRACES_EXPORTER=otlp` is set).
    #[serde(skip)]
    pub traces: traces::TracesConfig,
}
impl Config {
    /// Reads the file, applies the process environment, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, env)?;
        // Relative paths in the file are relative to the file, so a config can travel with its
        // policy.
        if let (Some(file), Some(dir)) = (&config.policy.file, path.parent())
            && file.is_relative()
        {
            config.policy.file = Some(dir.join(file));
        }
        if let (Some(file), Some(dir)) = (&config.audit.file, path.parent())
            && file.is_relative()
        {
            config.audit.file = Some(dir.join(file));
        }
        if let Some(dir) = path.parent() {
            let relative_to_file = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            };
            if let Some(key) = config.identity_assertion.key_file.as_mut() {
                relative_to_file(key);
            }
            if let Some(tls) = config.listen.grpc_tls.as_mut() {
                relative_to_file(&mut tls.cert_file);
                relative_to_file(&mut tls.key_file);
                relative_to_file(&mut tls.client_ca_file);
            }
        }
        Ok(config)
    }

    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree: Value =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        if tree.is_null() {
            tree = Value::Mapping(Default::default());
        }
        let mut overrides: BTreeMap<String, String> = BTreeMap::new();
        let mut otel: BTreeMap<String, String> = BTreeMap::new();
        let mut azure: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in env {
            if k.starts_with(ENV_PREFIX) {
                overrides.insert(k, v);
            } else if k.starts_with("OTEL_") {
                otel.insert(k, v);
            } else if workload::VARS.contains(&k.as_str()) && !v.is_empty() {
                azure.insert(k, v);
            }
        }
        let mut applied = Vec::with_capacity(overrides.len());
        for (var, raw) in overrides {
            let path = override_path(&var)?;
            let value = if raw.is_empty() {
                Value::Null
            } else {
                Value::String(raw.clone())
            };
            set_at(&mut tree, &path, value, &var)?;
            applied.push((var, path.join("."), raw));
        }
        let mut config: Config = deserialize_with_overrides(tree, &applied)?;
        config.traces = traces::TracesConfig::from_env(&otel).map_err(ConfigError::Invalid)?;
        config.apply_workload_identity(&azure)?;
        config.validate()?;
        Ok(config)
    }

    pub fn http_timeout(&self) -> Duration {
        Duration::from_millis(self.entra.http_timeout_ms)
    }

    /// Scopes named to clients in challenges and metadata.
    pub fn advertised_scopes(&self) -> &[String] {
        if self.mcp.advertised_scopes.is_empty() {
            &self.entra.required_scopes
        } else {
            &self.mcp.advertised_scopes
        }
    }
}
#[cfg(test)]
mod tests;
