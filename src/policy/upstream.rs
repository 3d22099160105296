//! A server's upstream ([`UpstreamDoc`]) checked and compiled into the [`Upstream`] the xDS
//! server turns into Envoy's route and cluster. Everything Envoy would refuse, or would read
//! another way than intended, is refused here with the field that is wrong, so a bad row never
//! reaches Envoy: the policy does not compile and the last good one keeps serving.

use std::net::IpAddr;
use std::time::Duration;

use super::document::UpstreamDoc;

pub const MAX_ENDPOINTS: usize = 16;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u32 = 5000;
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u32 = 300;

/// One address of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Endpoint {
    /// A DNS name or an IP address (without brackets).
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }
}

/// TLS toward the upstream. Always verified: the certificate must chain to `ca_file` (or the
/// configured default) and name `sni`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamTls {
    /// Sent as SNI and matched against the certificate's names; None: the endpoint's host.
    pub sni: Option<String>,
    pub ca_file: Option<String>,
    /// Certificate and key files, for an upstream that asks for a client certificate.
    pub client_cert: Option<(String, String)>,
}

/// A compiled upstream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Upstream {
    /// The route is served (false: out of Envoy, the server still in the policy).
    pub enabled: bool,
    pub endpoints: Vec<Endpoint>,
    pub tls: Option<UpstreamTls>,
    /// The path `/mcp/<route_key>` is rewritten to; None: unchanged.
    pub path: Option<String>,
    /// The `Host` sent; None: the endpoint's host.
    pub host: Option<String>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// A DNS name (labels of letters, digits and `-`, not starting or ending with `-`) or an IP
/// address.
pub fn valid_host(h: &str) -> bool {
    if h.parse::<IpAddr>().is_ok() {
        return true;
    }
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A path on the upstream: absolute, of unreserved characters and `/`, no empty, `.` or `..`
/// segment, no trailing `/` except the root itself.
pub fn valid_path(p: &str) -> bool {
    if p == "/" {
        return true;
    }
    p.len() <= 256
        && p.starts_with('/')
        && p[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        })
}

/// `host:port`, `[v6]:port`, or, with `default_port`, a host alone.
fn host_port(s: &str, default_port: Option<u16>) -> Option<Endpoint> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return None,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        // Digits only: `u16::from_str` would take a sign.
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().ok().filter(|&p| p != 0)?
        }
        Some(_) => return None,
        None => default_port?,
    };
    // A bare IPv6 address (`::1:80`) is ambiguous: brackets are required.
    if host.contains(':') && !s.starts_with('[') {
        return None;
    }
    valid_host(host).then(|| Endpoint {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// One endpoint's text: (tls, endpoint, path of its URL).
fn parse_endpoint(s: &str) -> Result<(bool, Endpoint, Option<String>), String> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
        (true, Some(r))
    } else if let Some(r) = s.strip_prefix("http://") {
        (false, Some(r))
    } else {
        (false, None)
    };
    let bad = || {
        format!(
            "endpoint {s:?} must be host:port, http://host[:port][/path] or https://host[:port][/path]"
        )
    };
    match rest {
        None => host_port(s, None).map(|e| (false, e, None)).ok_or_else(bad),
        Some(r) => {
            let (authority, path) = match r.find('/') {
                Some(i) => (&r[..i], Some(&r[i..])),
                None => (r, None),
            };
            let ep = host_port(authority, Some(if tls { 443 } else { 80 })).ok_or_else(bad)?;
            match path {
                // `https://host/` is the root: no rewrite asked for.
                None | Some("/") => Ok((tls, ep, None)),
                Some(p) if valid_path(p) => Ok((tls, ep, Some(p.to_owned()))),
                Some(p) => Err(format!(
                    "endpoint {s:?}: path {p:?} must be /segment[/segment…] of letters, digits and -._~"
                )),
            }
        }
    }
}

/// Compiles an upstream; `at` names the server for the problems (`servers[2] github`).
pub fn compile(at: &str, u: &UpstreamDoc, problems: &mut Vec<String>) -> Option<Upstream> {
    let before = problems.len();
    let mut p = |m: String| problems.push(format!("{at}: upstream {m}"));
    if u.endpoints.is_empty() || u.endpoints.len() > MAX_ENDPOINTS {
        p(format!(
            "endpoints: 1 to {MAX_ENDPOINTS} endpoints, not {}",
            u.endpoints.len()
        ));
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut schemes = Vec::new();
    let mut paths = Vec::new();
    for e in &u.endpoints {
        match parse_endpoint(e) {
            Ok((tls, ep, path)) => {
                if endpoints.contains(&ep) {
                    p(format!("endpoint {e:?} is listed twice"));
                }
                endpoints.push(ep);
                schemes.push(tls);
                paths.push(path);
            }
            Err(m) => p(m),
        }
    }
    schemes.dedup();
    paths.dedup();
    if schemes.len() > 1 {
        p("endpoints mix TLS (https://) and plaintext: one scheme per upstream".into());
    }
    if paths.len() > 1 {
        p("endpoints name different paths: one path per upstream".into());
    }
    let tls = schemes.first().copied().unwrap_or(false);
    let url_path = paths.into_iter().next().flatten();
    let path = match (&u.path, url_path) {
        (Some(p1), _) if !valid_path(p1) => {
            p(format!(
                "path {p1:?} must be / or /segment[/segment…] of letters, digits and -._~"
            ));
            None
        }
        (Some(p1), Some(p2)) if *p1 != p2 => {
            p(format!(
                "path {p1:?} and the endpoints' path {p2:?} differ: give one"
            ));
            None
        }
        (Some(p1), _) => Some(p1.clone()),
        (None, p2) => p2,
    };
    if let Some(h) = &u.host
        && host_port(h, Some(0)).is_none()
        && !valid_host(h)
    {
        p(format!("host {h:?} must be name or name:port"));
    }
    if let Some(s) = &u.sni
        && (!valid_host(s) || s.parse::<IpAddr>().is_ok())
    {
        p(format!("sni {s:?} must be a DNS name"));
    }
    for (k, v) in [
        ("ca_file", &u.ca_file),
        ("client_cert_file", &u.client_cert_file),
        ("client_key_file", &u.client_key_file),
    ] {
        if let Some(f) = v
            && !crate::config::is_envoy_file(f)
        {
            p(format!("{k} {f:?} must be an absolute path"));
        }
    }
    if !tls
        && (u.sni.is_some()
            || u.ca_file.is_some()
            || u.client_cert_file.is_some()
            || u.client_key_file.is_some())
    {
        p("sni, ca_file and client certificates are for TLS: use https:// endpoints".into());
    }
    if tls
        && u.sni.is_none()
        && u.host.is_none()
        && endpoints
            .iter()
            .filter(|e| !e.is_ip())
            .map(|e| &e.host)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1
    {
        p("TLS endpoints of different names need the one name to verify: set sni".into());
    }
    let client_cert = match (&u.client_cert_file, &u.client_key_file) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            p("client_cert_file and client_key_file go together".into());
            None
        }
    };
    let connect = u.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS);
    if !(1..=60_000).contains(&connect) {
        p(format!("connect_timeout_ms {connect} must be 1-60000"));
    }
    let idle = u
        .idle_timeout_seconds
        .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECONDS);
    if !(1..=86_400).contains(&idle) {
        p(format!("idle_timeout_seconds {idle} must be 1-86400"));
    }
    if problems.len() > before {
        return None;
    }
    // Sorted: the same endpoints in another order are the same upstream (and xDS version).
    endpoints.sort();
    Some(Upstream {
        enabled: u.enabled,
        endpoints,
        tls: tls.then(|| UpstreamTls {
            sni: u.sni.clone(),
            ca_file: u.ca_file.clone(),
            client_cert,
        }),
        path,
        host: u.host.clone(),
        connect_timeout: Duration::from_millis(u64::from(connect)),
        idle_timeout: Duration::from_secs(u64::from(idle)),
    })
}
