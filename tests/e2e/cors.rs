//! Browser-based MCP clients through real Envoy: the CORS filter answers preflights for the
//! configured origins without a token (mcp-authz is never asked), refuses every other origin
//! before ext_authz, and marks real answers (401s included) readable by the allowed origin only.

use crate::support::helpers::*;

const ALLOWED: &str = "https://inspector.example";

async fn preflight(env: &TestEnv, origin: &str, method: &str, headers: &str) -> Reply {
    Reply::from(
        env.http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/mcp/github", env.envoy_url),
            )
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .send()
            .await
            .expect("preflight"),
    )
    .await
}

/// ext_authz Checks Envoy has made so far (its own counters: allowed, denied, errors).
async fn checks(env: &TestEnv) -> u64 {
    let stats = env.envoy_admin_text("/stats?filter=ext_authz").await;
    stats
        .lines()
        .filter(|l| {
            l.starts_with("http.mcp.ext_authz.")
                && [".ok:", ".denied:", ".error:", ".failure_mode_allowed:"]
                    .iter()
                    .any(|k| l.contains(k))
        })
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}

/// Before: `OPTIONS` reached ext_authz, which answered 401 (no token), so no browser client
/// could ever send its first request. Now Envoy answers the preflight itself.
#[tokio::test]
async fn preflight_from_an_allowed_origin_is_answered_without_a_token_or_a_check() {
    let env = TestEnv::start(Options::default()).await;
    let before = checks(&env).await;
    let r = preflight(
        &env,
        ALLOWED,
        "POST",
        "authorization, content-type, mcp-session-id, mcp-protocol-version",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(ALLOWED));
    let methods = r.header("access-control-allow-methods").unwrap_or("");
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let headers = r.header("access-control-allow-headers").unwrap_or("");
    for h in ["authorization", "mcp-session-id", "mcp-protocol-version"] {
        assert!(headers.contains(h), "{h} not allowed: {headers}");
    }
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert_eq!(
        checks(&env).await,
        before,
        "the preflight reached ext_authz"
    );
    assert!(
        env.upstream_log().await.received.is_empty(),
        "the preflight reached the upstream"
    );
    // The second allowed origin too (a local MCP Inspector).
    let r = preflight(&env, "http://localhost:6274", "POST", "authorization").await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:6274")
    );
}

/// The attack: a page on another site (or one whose name merely contains an allowed origin)
/// preflights a request to the gateway. It gets no CORS grant, so the browser never sends the
/// request; and the preflight goes neither to mcp-authz nor to the upstream.
#[tokio::test]
async fn preflight_from_any_other_origin_gets_no_grant_and_goes_nowhere() {
    let env = TestEnv::start(Options::default()).await;
    let before = checks(&env).await;
    for origin in [
        "https://evil.example",
        "https://inspector.example.evil.example",
        "http://inspector.example",
        "null",
    ] {
        let r = preflight(&env, origin, "POST", "authorization").await;
        assert_eq!(
            r.header("access-control-allow-origin"),
            None,
            "{origin}: {r:?}"
        );
        // (Envoy still lists the methods; without Access-Control-Allow-Origin a browser
        // grants nothing.)
        assert_eq!(r.status, 200, "{origin}: {r:?}");
        assert_ne!(r.status, 401, "{origin}: the preflight reached ext_authz");
    }
    assert_eq!(checks(&env).await, before, "a preflight reached ext_authz");
    assert!(env.upstream_log().await.received.is_empty());
}

/// A real request still needs a token: the browser client's first POST gets the 401 with the
/// MCP challenge, readable by the allowed origin (WWW-Authenticate exposed), so it can find the
/// resource metadata; with a token it goes through, still readable by that origin only.
#[tokio::test]
async fn requests_from_an_allowed_origin_are_authorized_as_always_and_readable() {
    let env = TestEnv::start(Options::default()).await;
    let r = env
        .post(
            "/mcp/github",
            None,
            &initialize_body(1),
            &[("origin", ALLOWED)],
        )
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(ALLOWED));
    let exposed = r.header("access-control-expose-headers").unwrap_or("");
    assert!(exposed.contains("www-authenticate"), "{exposed}");
    assert!(exposed.contains("mcp-session-id"), "{exposed}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|w| w.contains("resource_metadata=")),
        "{r:?}"
    );

    let token = env.user_token(ALICE, &[ENG_GROUP]);
    let r = env
        .post(
            "/mcp/github",
            Some(&token),
            &initialize_body(1),
            &[("origin", ALLOWED)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(ALLOWED));
    // The same request from another origin is authorized the same way (CORS is the
    // browser's rule, not an authorization), but carries no grant to read it.
    let r = env
        .post(
            "/mcp/github",
            Some(&token),
            &initialize_body(2),
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), None);
    // The public metadata a browser client fetches first is readable cross-origin too.
    let r = Reply::from(
        env.http
            .get(format!(
                "{}/.well-known/oauth-protected-resource/mcp/github",
                env.envoy_url
            ))
            .header("origin", ALLOWED)
            .send()
            .await
            .expect("metadata"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(ALLOWED));
}
