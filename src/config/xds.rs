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

/// A web origin as a browser sends it in `Origin`: `http` or `https`, `://`, a lower-case host
/// (name, IPv4 or `[IPv6]`) and an optional port; nothing else (no `*`, `null`, path or
/// wildcard). Shared by `xds.cors_allowed_origins` and `render-envoy`'s `${NAME:origins}`.
pub fn check_origin(origin: &str) -> Result<(), &'static str> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or("is not an origin: it must start with https:// or http:// (no '*', no 'null')")?;
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("has an unclosed IPv6 address")?;
        if addr.is_empty()
            || !addr
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':')
        {
            return Err("has an invalid IPv6 address");
        }
        if !after.is_empty() && !after.starts_with(':') {
            return Err("has text after its IPv6 address");
        }
        (addr, after.strip_prefix(':'))
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err("has a path: an origin is scheme://host[:port] only");
    }
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b':'
        });
    if !host_ok {
        return Err("has an invalid host (lower-case letters, digits, '-' and '.'; no wildcards)");
    }
    if let Some(p) = port
        && !(p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0))
    {
        return Err("has an invalid port");
    }
    Ok(())
}

/// A file on Envoy's filesystem, as the xDS resources name it (a CA bundle, a certificate, a
/// key): an absolute path of at most 1024 bytes, without control characters.
pub fn is_envoy_file(p: &str) -> bool {
    p.starts_with('/') && p.len() <= 1024 && !p.chars().any(char::is_control)
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
            if let Err(e) = check_origin(o) {
                return bad(format!("xds.cors_allowed_origins: {o:?} {e}"));
            }
        }
        if !is_envoy_file(&self.upstream_ca_file) {
            return bad(format!(
                "xds.upstream_ca_file {:?} must be an absolute path (on Envoy's filesystem)",
                self.upstream_ca_file
            ));
        }
        Ok(())
    }
}
