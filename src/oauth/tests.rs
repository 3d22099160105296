//! The OAuth facade's parts that need no network: sealing, registration, redirect matching,
//! scopes and parameter parsing. Each refusal states the attack or mistake it stops.

use super::clients::{self, ApplicationType, AuthMethod, Registry};
use super::flow::{granted_scopes, params};
use super::seal::{Purpose, Sealer, s256};

fn sealer(keys: &[u8]) -> Sealer {
    let raw: Vec<[u8; 32]> = keys.iter().map(|b| [*b; 32]).collect();
    Sealer::new(&raw).expect("keys")
}

/// A sealed value opens only for its purpose, unaltered, under a key held; rotation keeps
/// values sealed by the old key opening.
#[test]
fn sealed_values_open_only_unaltered_for_their_purpose() {
    let s = sealer(&[1]);
    let v = s.seal(Purpose::RefreshToken, b"entra refresh token");
    assert_eq!(
        s.open(Purpose::RefreshToken, &v).as_deref(),
        Some(&b"entra refresh token"[..])
    );
    // A consent cookie cannot be replayed as a refresh token, nor the other way round.
    assert_eq!(s.open(Purpose::ConsentCookie, &v), None);
    // Any flipped character fails the tag.
    let mut chars: Vec<char> = v.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    assert_eq!(s.open(Purpose::RefreshToken, &tampered), None);
    assert_eq!(s.open(Purpose::RefreshToken, "not-base64!"), None);
    assert_eq!(s.open(Purpose::RefreshToken, ""), None);
    // Another deployment's key opens nothing.
    assert_eq!(sealer(&[2]).open(Purpose::RefreshToken, &v), None);
    // Rotation: a new first key seals, the old one still opens what it sealed.
    let rotated = sealer(&[2, 1]);
    assert!(rotated.open(Purpose::RefreshToken, &v).is_some());
    let new = rotated.seal(Purpose::RefreshToken, b"x");
    assert!(sealer(&[2]).open(Purpose::RefreshToken, &new).is_some());
    assert_eq!(sealer(&[1]).open(Purpose::RefreshToken, &new), None);
    // Two seals of one value differ (a fresh nonce each time).
    assert_ne!(
        s.seal(Purpose::RefreshToken, b"x"),
        s.seal(Purpose::RefreshToken, b"x")
    );
}

#[test]
fn pkce_s256_is_rfc_7636s_example() {
    assert_eq!(
        s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
}

fn register(
    body: serde_json::Value,
) -> Result<(clients::Client, serde_json::Value), clients::Refused> {
    clients::register(body.to_string().as_bytes(), 1_700_000_000)
}

#[test]
fn a_desktop_client_registers_with_loopback_and_gets_a_public_client_id() {
    let (c, answer) = register(serde_json::json!({
        "client_name": "MCP Inspector",
        "redirect_uris": ["http://127.0.0.1:6274/oauth/callback"],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none",
    }))
    .expect("registered");
    assert_eq!(c.application_type, ApplicationType::Native);
    assert_eq!(c.auth_method, AuthMethod::None);
    assert!(c.client_id.starts_with("mcp-") && c.client_id.len() > 20);
    assert_eq!(answer["client_id"], c.client_id.as_str());
    assert!(answer.get("client_secret").is_none());
    assert!(c.secret_matches(None));
    // RFC 8252 §7.3: a loopback redirect may come back on any port, nothing else may differ.
    assert!(c.redirect_allowed("http://127.0.0.1:50123/oauth/callback"));
    assert!(!c.redirect_allowed("http://127.0.0.1:50123/oauth/other"));
    assert!(!c.redirect_allowed("http://localhost:6274/oauth/callback"));
    assert!(!c.redirect_allowed("https://127.0.0.1:6274/oauth/callback"));
    assert!(!c.redirect_allowed("http://127.0.0.1.attacker.example:6274/oauth/callback"));
}

#[test]
fn a_confidential_client_gets_a_secret_shown_once_and_kept_hashed() {
    let (c, answer) = register(serde_json::json!({
        "redirect_uris": ["https://app.example/cb"],
        "token_endpoint_auth_method": "client_secret_post",
    }))
    .expect("registered");
    assert_eq!(c.application_type, ApplicationType::Web);
    let secret = answer["client_secret"].as_str().expect("a secret");
    assert!(c.secret_matches(Some(secret)));
    assert!(!c.secret_matches(Some("guess")));
    assert!(!c.secret_matches(None));
    assert!(
        !format!("{c:?}").contains(secret),
        "the secret is not kept in clear"
    );
    // An https redirect matches exactly, port included.
    assert!(c.redirect_allowed("https://app.example/cb"));
    assert!(!c.redirect_allowed("https://app.example:8443/cb"));
    assert!(!c.redirect_allowed("https://app.example/cb?x=1"));
}

/// Registrations that would let a code reach someone else, or that the gateway cannot honour.
#[test]
fn registrations_that_would_leak_a_code_are_refused() {
    let refused = |body: serde_json::Value| register(body).map(|_| ()).unwrap_err().error;
    let uri = |u: &str| serde_json::json!({ "redirect_uris": [u] });
    // No redirect URI at all.
    assert_eq!(refused(serde_json::json!({})), "invalid_redirect_uri");
    // Plain http to a network host: the code crosses the network in clear.
    assert_eq!(
        refused(uri("http://app.example/cb")),
        "invalid_redirect_uri"
    );
    // A script or inline document instead of an app.
    assert_eq!(refused(uri("javascript:alert(1)")), "invalid_redirect_uri");
    assert_eq!(refused(uri("data:text/html,hi")), "invalid_redirect_uri");
    // A fragment (RFC 6749 §3.1.2) and user information.
    assert_eq!(
        refused(uri("https://app.example/cb#x")),
        "invalid_redirect_uri"
    );
    assert_eq!(
        refused(uri("https://user:pw@app.example/cb")),
        "invalid_redirect_uri"
    );
    assert_eq!(refused(uri("/relative")), "invalid_redirect_uri");
    // A web client claiming a loopback URI.
    assert_eq!(
        refused(
            serde_json::json!({"application_type": "web", "redirect_uris": ["http://127.0.0.1/cb"]})
        ),
        "invalid_redirect_uri"
    );
    // Grants and methods the gateway does not do.
    assert_eq!(
        refused(
            serde_json::json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["client_credentials"]})
        ),
        "invalid_client_metadata"
    );
    assert_eq!(
        refused(
            serde_json::json!({"redirect_uris": ["https://a.example/cb"], "response_types": ["token"]})
        ),
        "invalid_client_metadata"
    );
    assert_eq!(
        refused(
            serde_json::json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"})
        ),
        "invalid_client_metadata"
    );
    // A name that would spoof the consent page's layout.
    assert_eq!(
        refused(
            serde_json::json!({"redirect_uris": ["https://a.example/cb"], "client_name": "Good\napp"})
        ),
        "invalid_client_metadata"
    );
    assert_eq!(
        refused(
            serde_json::json!({"redirect_uris": ["https://a.example/cb"], "client_name": "x".repeat(201)})
        ),
        "invalid_client_metadata"
    );
    // Not JSON, and too large.
    assert!(clients::register(b"redirect_uris=x", 0).is_err());
    let big = format!(
        "{{\"redirect_uris\":[\"https://a.example/{}\"]}}",
        "a".repeat(20_000)
    );
    assert_eq!(
        clients::register(big.as_bytes(), 0)
            .map(|_| ())
            .unwrap_err()
            .error,
        "invalid_client_metadata"
    );
    // A private-use scheme is a native app's.
    let (c, _) = register(uri("cursor://anysphere.cursor-mcp/oauth/callback")).expect("native");
    assert_eq!(c.application_type, ApplicationType::Native);
}

#[test]
fn registration_is_bounded_and_rate_limited() {
    let r = Registry::new(10, std::time::Duration::from_secs(3600), 3);
    assert!(r.admit() && r.admit() && r.admit());
    assert!(!r.admit(), "the fourth registration in a minute is refused");
    for _ in 0..50 {
        let (c, _) =
            register(serde_json::json!({"redirect_uris": ["https://a.example/cb"]})).expect("ok");
        r.insert(c);
    }
    assert!(r.len() <= 10, "{} clients held", r.len());
    assert!(r.get(&"x".repeat(300)).is_none());
}

#[test]
fn scopes_are_those_offered_and_offline_access_is_implied() {
    let offered = vec!["mcp.access".to_owned(), "mcp.admin".to_owned()];
    assert_eq!(
        granted_scopes(&offered, None).as_deref(),
        Ok("mcp.access mcp.admin")
    );
    assert_eq!(
        granted_scopes(&offered, Some("mcp.access offline_access")).as_deref(),
        Ok("mcp.access")
    );
    assert_eq!(
        granted_scopes(&offered, Some("mcp.access mcp.access")).as_deref(),
        Ok("mcp.access")
    );
    assert_eq!(
        granted_scopes(&offered, Some("offline_access")).as_deref(),
        Ok("mcp.access mcp.admin")
    );
    // A scope the gateway never offered (an Entra scope of another API, say) is refused.
    assert_eq!(
        granted_scopes(&offered, Some("https://graph.microsoft.com/.default")),
        Err("https://graph.microsoft.com/.default".to_owned())
    );
}

/// RFC 6749 §3.1: a parameter sent twice makes the request invalid (which of two redirect URIs
/// or states would win is how parameter-pollution attacks work).
#[test]
fn a_parameter_sent_twice_is_refused() {
    assert!(params("client_id=a&redirect_uri=x&redirect_uri=y").is_err());
    let p = params("client_id=a&state=s%20t").expect("ok");
    assert_eq!(p["state"], "s t");
    assert!(params(&"a".repeat(9000)).is_err());
}
