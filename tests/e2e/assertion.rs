//! The signed identity assertion, verified by an upstream of each SDK through the real Envoy:
//! rmcp (aws-lc-rs), Python (PyJWT), TypeScript (jose).

use serde_json::Value;

use crate::support::helpers::*;

/// The first JSON-RPC message of a response body, JSON or SSE.
fn rpc_message(body: &str) -> Value {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return v;
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .find_map(|d| serde_json::from_str(d.trim()).ok())
        .unwrap_or_else(|| panic!("no JSON-RPC message in {body:?}"))
}

/// whoami's report, through the gateway or straight to the upstream (`direct`).
async fn whoami(
    env: &TestEnv,
    base: &str,
    token: Option<&str>,
    sid: &str,
    extra: &[(&str, &str)],
) -> Value {
    let mut req = env
        .http
        .post(format!("{base}/mcp/github"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", sid)
        .body(tool_call_body(9, "whoami"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = Reply::from(req.send().await.expect("whoami")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let msg = rpc_message(&r.body);
    let text = msg["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {msg}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("whoami text {text:?}: {e}"))
}

/// Attack (outside review): anything that could reach an upstream could send `x-mcp-user-oid`
/// itself. With `identity_assertion` on, an upstream of every SDK verifies who is calling
/// from a signature, not from the network: through the gateway it verifies the user; sent to
/// the upstream directly, a forged assertion (or a real one replayed to another server) fails.
#[tokio::test]
async fn every_sdks_upstream_verifies_the_signed_identity() {
    for upstream in Upstream::ALL {
        let env = TestEnv::start(Options {
            upstream,
            extra_config: "identity_assertion: {enabled: true}\n".into(),
            ..Options::default()
        })
        .await;
        let bob = env.user_token(BOB, &[ENG_GROUP]);
        let sid = env.open_session("/mcp/github", &bob).await;
        let seen = whoami(&env, &env.envoy_url, Some(&bob), &sid, &[]).await;
        assert_eq!(
            seen["identity-verified"],
            format!("verified {BOB}"),
            "{upstream:?}: {seen}"
        );
        let assertion = seen["x-mcp-identity-assertion"]
            .as_str()
            .unwrap_or_else(|| panic!("{upstream:?}: no assertion header: {seen}"))
            .to_owned();
        // Straight to the upstream, past the gateway: spoofed headers and a forged assertion.
        let mut forged: Vec<&str> = assertion.split('.').collect();
        let payload = base64_url(&format!(
            r#"{{"iss":"{}","aud":"github","sub":"{ALICE}","oid":"{ALICE}","iat":1,"nbf":1,"exp":9999999999}}"#,
            env.envoy_url
        ));
        forged[1] = &payload;
        let forged = forged.join(".");
        let seen = whoami(
            &env,
            &env.upstream_url,
            None,
            &sid,
            &[
                ("x-mcp-user-oid", ALICE),
                ("x-mcp-identity-assertion", &forged),
            ],
        )
        .await;
        assert!(
            seen["identity-verified"]
                .as_str()
                .is_some_and(|v| v.starts_with("invalid")),
            "{upstream:?}: a forged assertion verified: {seen}"
        );
        assert_eq!(
            seen["x-mcp-user-oid"], ALICE,
            "the plain header proves nothing"
        );
        // Without the assertion the upstream knows it was not the gateway.
        let seen = whoami(
            &env,
            &env.upstream_url,
            None,
            &sid,
            &[("x-mcp-user-oid", ALICE)],
        )
        .await;
        assert_eq!(seen["identity-verified"], "absent", "{upstream:?}: {seen}");
    }
}

fn base64_url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// The JWKS is public through Envoy, and absent (404) when assertions are off.
#[tokio::test]
async fn the_assertion_keys_are_published_through_envoy() {
    let env = TestEnv::start(Options {
        extra_config: "identity_assertion: {enabled: true}\n".into(),
        ..Options::default()
    })
    .await;
    let r = env.get(mcp_authz::assertion::JWKS_PATH).await;
    assert_eq!(r.status, 200, "{r:?}");
    let keys = r.json()["keys"].clone();
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert_eq!(keys[0]["alg"], "ES256");
    assert!(
        keys[0].get("d").is_none(),
        "a private key part was published"
    );
    let off = TestEnv::start(Options::default()).await;
    assert_eq!(off.get(mcp_authz::assertion::JWKS_PATH).await.status, 404);
}
