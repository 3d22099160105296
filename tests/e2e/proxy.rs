//! Envoy's own request handling in the shipped `envoy/envoy.yaml`: what it lets through to the
//! Check and to the upstream. Each test pins one rule, so that a change of config or an Envoy
//! upgrade that breaks it fails here.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::helpers::*;

/// Attack: a request authorized for `github` reached the upstream with a Host the client chose
/// (upstreams route, build URLs and check DNS rebinding on it). The upstream sees its own name.
#[tokio::test]
async fn the_upstream_gets_its_own_name_as_host_never_the_clients() {
    let env = TestEnv::start(Options::default()).await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let r = env
        .post(
            "/mcp/github",
            Some(&token),
            &initialize_body(1),
            &[("host", "evil.example")],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let hosts: Vec<Vec<String>> = env
        .received
        .all()
        .into_iter()
        .map(|r| r.headers.get("host").cloned().unwrap_or_default())
        .collect();
    assert_eq!(hosts, vec![vec!["127.0.0.1".to_string()]], "{hosts:?}");
}

/// Attack: `x_mcp_user_oid` is not an `x-mcp-*` header to Envoy or mcp-authz, so it is not
/// stripped, but some upstream stacks (CGI/WSGI-style header maps) read it as x-mcp-user-oid.
/// Envoy refuses any header with an underscore.
#[tokio::test]
async fn headers_with_underscores_are_refused() {
    let env = TestEnv::start(Options::default()).await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let r = env
        .post(
            "/mcp/github",
            Some(&token),
            &initialize_body(1),
            &[("x_mcp_user_oid", ALICE)],
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(env.received.all().is_empty(), "it reached the upstream");
}

/// The decision trusts `x-envoy-auth-partial-body` in the Check to mean "Envoy cut this body".
/// Pinned here: a client's own header of that name never reaches the Check (a small body with
/// the client's `true` is allowed, so the Check did not see it) nor the upstream; and a body
/// Envoy did cut is refused whatever the client sent.
#[tokio::test]
async fn a_clients_partial_body_header_reaches_neither_the_check_nor_the_upstream() {
    let env = TestEnv::start(Options::default()).await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let r = env
        .post(
            "/mcp/github",
            Some(&token),
            &initialize_body(1),
            &[
                ("x-envoy-auth-partial-body", "true"),
                ("x-http-method-override", "DELETE"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "the Check saw the client's header: {r:?}");
    let received = env.received.all();
    assert_eq!(received.len(), 1);
    for h in ["x-envoy-auth-partial-body", "x-http-method-override"] {
        assert!(
            !received[0].headers.contains_key(h),
            "{h} reached the upstream: {:?}",
            received[0].headers
        );
    }
    let big = tool_call_body(2, "echo")
        .replace("{}", &format!(r#"{{"text":"{}"}}"#, "x".repeat(300 * 1024)));
    for claim in ["false", "true"] {
        let r = env
            .post(
                "/mcp/github",
                Some(&token),
                &big,
                &[("x-envoy-auth-partial-body", claim)],
            )
            .await;
        assert_eq!((r.status, r.reason()), (413, "body_truncated"), "{r:?}");
    }
}

/// A token larger than Envoy's header limit (60 KiB) never reaches mcp-authz; the client still
/// gets the MCP-conformant 401 with a challenge, not Envoy's bare 431 text.
#[tokio::test]
async fn a_token_past_envoys_header_limit_gets_the_mcp_401() {
    let env = TestEnv::start(Options::default()).await;
    let huge = format!("{}.{}.{}", "a".repeat(40_000), "b".repeat(40_000), "c");
    let r = env
        .post("/mcp/github", Some(&huge), &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.reason(), "headers_too_large");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                "Bearer error=\"invalid_token\", error_description=\"Request headers too large\", resource_metadata=\"{}/.well-known/oauth-protected-resource\"",
                env.envoy_url
            )
            .as_str()
        )
    );
    let body = r.json();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["error"]["code"], -32001);
    assert!(env.received.all().is_empty());
}

/// A request with a transfer coding Envoy does not implement is refused by Envoy, never
/// forwarded for an upstream to decode in its own way.
#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused() {
    let env = TestEnv::start(Options::default()).await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let body = initialize_body(1);
    let addr = env.envoy_url.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let request = format!(
        "POST /mcp/github HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut answer))
        .await
        .expect("Envoy answers")
        .expect("read");
    let head = String::from_utf8_lossy(&answer[..n]);
    let status = head.split(' ').nth(1).unwrap_or_default();
    assert!(matches!(status, "400" | "501"), "Envoy answered {head:?}");
    assert!(env.received.all().is_empty(), "it reached the upstream");
}
