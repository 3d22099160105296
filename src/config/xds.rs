//! `xds`: mcp-authz as Envoy's route and cluster source (ADS), from the policy's servers.

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsConfig {
    /// Serve Envoy's routes and clusters (ADS, state of the world) on the gRPC listeners, from
    /// the servers that have an `upstream`. Off: Envoy's own static routes reach the servers.
    #[serde(default)]
    pub enabled: bool,
    /// The route configuration Envoy's listener asks for (its `rds.route_config_name`).
    #[serde(default = "default_route_config_name")]
    pub route_config_name: String,
    /// The bootstrap's cluster for mcp-authz's public HTTP endpoints (resource and
    /// authorization-server metadata, the login facade, the assertion keys).
    #[serde(default = "default_metadata_cluster")]
    pub metadata_cluster: String,
    /// Web origins whose CORS preflights Envoy answers (`scheme://host[:port]`, exact; never
    /// `*`). Empty: none.
    #[serde(default)]
    pub cors_allowed_origins: Vec<String>,
    /// The CA bundle (a path on Envoy's filesystem) a TLS upstream's certificate must chain to
    /// when its row names no `ca_file`. A TLS upstream is always verified.
    #[serde(default = "default_upstream_ca_file")]
    pub upstream_ca_file: String,
}

impl Default for XdsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            route_config_name: default_route_config_name(),
            metadata_cluster: default_metadata_cluster(),
            cors_allowed_origins: Vec::new(),
            upstream_ca_file: default_upstream_ca_file(),
        }
    }
}

fn default_route_config_name() -> String {
    "mcp".into()
}
fn default_metadata_cluster() -> String {
    "mcp_authz_metadata".into()
}
fn default_upstream_ca_file() -> String {
    "/etc/ssl/certs/ca-certificates.crt".into()
}

/// `scheme://host[:port]` in lower case: what a browser sends as `Origin`.
pub fn is_origin(o: &str) -> bool {
    let Some(rest) = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (rest, None),
    };
    let port_ok = port.is_none_or(|p| {
        p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|p| p > 0)
    });
    let host_ok = !host.is_empty()
        && (host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            || (host.starts_with('[')
                && host.ends_with(']')
                && host[1..host.len() - 1]
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok()));
    port_ok && host_ok
}

impl XdsConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !name_ok(&self.route_config_name) {
            return bad(format!(
                "xds.route_config_name {:?} must be 1-128 of [A-Za-z0-9._-]",
                self.route_config_name
            ));
        }
        if !name_ok(&self.metadata_cluster) {
            return bad(format!(
                "xds.metadata_cluster {:?} must be 1-128 of [A-Za-z0-9._-]",
                self.metadata_cluster
            ));
        }
        for o in &self.cors_allowed_origins {
            if !is_origin(o) {
                return bad(format!(
                    "xds.cors_allowed_origins: {o:?} is not an origin (scheme://host[:port], lower case, no '*', no path)"
                ));
            }
        }
        if !self.upstream_ca_file.starts_with('/')
            || self.upstream_ca_file.chars().any(char::is_control)
        {
            return bad(format!(
                "xds.upstream_ca_file {:?} must be an absolute path (on Envoy's filesystem)",
                self.upstream_ca_file
            ));
        }
        Ok(())
    }
}
