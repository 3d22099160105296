//! Client ID Metadata Documents (the MCP specification's preferred registration, SEP-991 /
//! draft-ietf-oauth-client-id-metadata-document): the `client_id` is an HTTPS URL, and the
//! document there is the client's metadata. The gateway fetches it, which makes every
//! authorize request a request the gateway sends to a URL a stranger chose, so:
//!
//! - only `https`, a path below the root, no fragment, user information or dot segments;
//! - the host must resolve to public addresses only (no loopback, private, link-local, CGNAT,
//!   documentation or multicast range, IPv4 embedded in IPv6 checked as IPv4), and the
//!   connection goes to the very addresses that were checked (the resolver is the check, so a
//!   second DNS answer cannot swap in a private one); an IP literal is checked the same way;
//!   `allow_private_addresses` lifts this for test setups only;
//! - no redirect is followed, no proxy from the environment is used, the body is read up to
//!   `MAX_DOCUMENT_BYTES`, the whole fetch is bounded by `oauth.timeout_ms`;
//! - the document's `client_id` must equal the URL, its redirect URIs pass the registration's
//!   checks, and it cannot hold a shared secret (`client_secret_*` refused);
//! - a document is kept for its `Cache-Control: max-age` (at most `cache_seconds`), in a
//!   bounded cache; concurrent sign-ins of one client share one fetch.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clients::{self, Client, Refused};

/// Largest document read (the registration's bound).
pub const MAX_DOCUMENT_BYTES: usize = clients::MAX_REGISTRATION_BYTES;
const MAX_URL_LEN: usize = 2048;
/// Kept this long when the response names no max-age.
const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Why a metadata document could not be used; `Display` is safe to show the user and to log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DocumentError {
    #[error("the client_id URL is not usable: {0}")]
    Url(&'static str),
    #[error("the client_id URL's host is not a public address")]
    NotPublic,
    #[error("the metadata document could not be fetched: {0}")]
    Fetch(String),
    #[error("the metadata document is not valid: {0}")]
    Invalid(String),
    #[error(
        "too many client metadata documents were fetched in the last minute; try again shortly"
    )]
    Busy,
}

pub struct Settings {
    pub max_clients: u64,
    /// Fetches (cache misses) per minute, over all callers: a stranger cannot make the gateway
    /// fetch more than this from the internet on its behalf.
    pub fetches_per_minute: u32,
    pub max_ttl: Duration,
    pub timeout: Duration,
    pub allow_private_addresses: bool,
    /// Extra roots trusted for the fetch (PEM), besides the system's.
    pub extra_roots: Vec<reqwest::Certificate>,
}

/// The documents fetched, cached.
pub struct Documents {
    http: reqwest::Client,
    cache: moka::future::Cache<String, (Arc<Client>, Duration)>,
    allow_private: bool,
    max_ttl: Duration,
    budget: super::PerMinute,
}

struct PerEntry;

impl moka::Expiry<String, (Arc<Client>, Duration)> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &(Arc<Client>, Duration),
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }
}

/// Whether a CIMD `client_id` (rather than a registered one): an `https://` URL.
pub fn is_document_id(client_id: &str) -> bool {
    client_id.starts_with("https://")
}

impl Documents {
    pub fn new(s: Settings) -> anyhow::Result<Self> {
        let mut b = reqwest::Client::builder()
            .timeout(s.timeout)
            .connect_timeout(s.timeout.min(Duration::from_secs(3)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(true)
            .user_agent(concat!("mcp-authz/", env!("CARGO_PKG_VERSION")));
        if !s.allow_private_addresses {
            b = b.dns_resolver(PublicOnly);
        }
        for root in s.extra_roots {
            b = b.add_root_certificate(root);
        }
        let max_ttl = s.max_ttl;
        Ok(Self {
            http: b.build()?,
            cache: moka::future::Cache::builder()
                .max_capacity(s.max_clients)
                .expire_after(PerEntry)
                .time_to_live(max_ttl.max(Duration::from_secs(1)))
                .build(),
            allow_private: s.allow_private_addresses,
            max_ttl,
            budget: super::PerMinute::new(s.fetches_per_minute),
        })
    }

    /// The client a document URL names: from the cache, or fetched and checked.
    pub async fn client(&self, url: &str) -> Result<Arc<Client>, DocumentError> {
        let parsed = check_url(url)?;
        if !self.allow_private
            && let Some(ip) = literal_ip(&parsed)
            && !is_public(ip)
        {
            return Err(DocumentError::NotPublic);
        }
        self.cache
            .try_get_with(url.to_owned(), async {
                let (client, ttl) = self.fetch(url).await?;
                Ok::<_, DocumentError>((Arc::new(client), ttl.min(self.max_ttl)))
            })
            .await
            .map(|(c, _)| c)
            .map_err(|e| (*e).clone())
    }

    async fn fetch(&self, url: &str) -> Result<(Client, Duration), DocumentError> {
        if !self.budget.admit() {
            return Err(DocumentError::Busy);
        }
        let resp = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| fetch_error(&e))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(DocumentError::Fetch(format!(
                "HTTP {} (a redirect is not followed)",
                resp.status().as_u16()
            )));
        }
        let json = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .and_then(|c| c.split(';').next())
            .is_some_and(|t| {
                let t = t.trim().to_ascii_lowercase();
                t == "application/json" || t.ends_with("+json")
            });
        if !json {
            return Err(DocumentError::Fetch(
                "the answer is not application/json".into(),
            ));
        }
        let ttl = max_age(resp.headers());
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fetch_error(&e))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(DocumentError::Fetch(format!(
                    "the document is larger than {MAX_DOCUMENT_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let client = clients::from_document(url, &body, crate::clock::unix_now())
            .map_err(|Refused { description, .. }| DocumentError::Invalid(description))?;
        Ok((client, ttl))
    }
}

fn fetch_error(e: &reqwest::Error) -> DocumentError {
    // The resolver's refusal arrives as a connect error whose source says why.
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.to_string().contains(NOT_PUBLIC) {
            return DocumentError::NotPublic;
        }
        source = s.source();
    }
    DocumentError::Fetch(if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        "the request failed".into()
    })
}

/// `Cache-Control: max-age`, or the default; `no-store`/`no-cache` keep it for no time.
fn max_age(headers: &reqwest::header::HeaderMap) -> Duration {
    let Some(cc) = headers.get("cache-control").and_then(|v| v.to_str().ok()) else {
        return DEFAULT_TTL;
    };
    let mut ttl = DEFAULT_TTL;
    for d in cc.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if d == "no-store" || d == "no-cache" {
            return Duration::ZERO;
        }
        if let Some(v) = d.strip_prefix("max-age=")
            && let Ok(secs) = v.trim_matches('"').parse::<u64>()
        {
            ttl = Duration::from_secs(secs);
        }
    }
    ttl
}

/// The URL rules of a client id document URL.
pub fn check_url(url: &str) -> Result<url::Url, DocumentError> {
    if url.len() > MAX_URL_LEN {
        return Err(DocumentError::Url("longer than 2048 characters"));
    }
    // Dot segments are checked on the text: the parser would remove them.
    let path_text = url
        .strip_prefix("https://")
        .and_then(|r| r.find('/').map(|i| &r[i..]))
        .unwrap_or("");
    let path_only = path_text.split(['?', '#']).next().unwrap_or("");
    if path_only.split('/').any(|seg| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    }) {
        return Err(DocumentError::Url("it has a . or .. path segment"));
    }
    let u = url::Url::parse(url).map_err(|_| DocumentError::Url("not a URL"))?;
    if u.scheme() != "https" {
        return Err(DocumentError::Url("it must be https"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(DocumentError::Url("it has no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(DocumentError::Url("it has user information"));
    }
    if u.fragment().is_some() {
        return Err(DocumentError::Url("it has a fragment"));
    }
    if u.path() == "/" || u.path().is_empty() {
        return Err(DocumentError::Url("it needs a path below the root"));
    }
    Ok(u)
}

fn literal_ip(u: &url::Url) -> Option<IpAddr> {
    match u.host()? {
        url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
        url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
        url::Host::Domain(_) => None,
    }
}

/// Whether an address is one the public internet routes (what a metadata fetch may reach).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_public_v4(a),
        IpAddr::V6(a) => is_public_v6(a),
    }
}

fn is_public_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_broadcast()
        || a.is_multicast()
        || a.is_documentation()
        || o0 == 0
        || (o0 == 100 && (64..128).contains(&o1)) // CGNAT 100.64/10
        || (o0 == 192 && o1 == 0 && o2 == 0) // IETF protocol assignments 192.0.0/24
        || (o0 == 198 && (18..20).contains(&o1)) // benchmarking 198.18/15
        || o0 >= 240) // reserved 240/4
}

fn is_public_v6(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = a.segments();
    // NAT64 (64:ff9b::/96) reaches the IPv4 address it embeds.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return is_public_v4(v4);
    }
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible ::a.b.c.d (deprecated)
}

const NOT_PUBLIC: &str = "resolves to no public address";

/// The resolver of the fetch: the system's answers, only the public ones; none → refused.
/// reqwest connects to what this returns, so the check and the connection see one answer.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(
                    Box::new(std::io::Error::other(format!("{host} {NOT_PUBLIC}")))
                        as Box<dyn std::error::Error + Send + Sync>,
                );
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254", // cloud metadata
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::10.0.0.1",
            "2001:db8::1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "1.1.1.1",
            "20.190.160.1",
            "2606:4700::1111",
            "64:ff9b::1.1.1.1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn document_urls_follow_the_rules() {
        assert!(check_url("https://app.example/oauth/client.json").is_ok());
        for bad in [
            "http://app.example/client.json",
            "https://app.example/",
            "https://app.example",
            "https://user:pw@app.example/c.json",
            "https://app.example/c.json#x",
            "https://app.example/a/../c.json",
            "https://app.example/a/./c.json",
            "https://app.example/a/%2e%2e/c.json",
            "https://app.example/a/.%2E/c.json",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn max_age_is_read_and_no_store_keeps_nothing() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(max_age(&h), DEFAULT_TTL);
        h.insert("cache-control", "public, max-age=60".parse().unwrap());
        assert_eq!(max_age(&h), Duration::from_secs(60));
        h.insert("cache-control", "no-store".parse().unwrap());
        assert_eq!(max_age(&h), Duration::ZERO);
    }
}
