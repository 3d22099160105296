//! The gateway end to end: real Envoy, real MCP client and server (rmcp), mcp-authz,
//! stand-in Entra.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::helpers::*;
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

fn text_of(result: &rmcp::model::CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("")
}

#[tokio::test]
async fn allowed_user_initializes_lists_tools_and_calls_one() {
    let env = TestEnv::start(Options::default()).await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let client = env
        .mcp_client("/mcp/github", &token, HashMap::new())
        .await
        .expect("initialize");
    let tools = client.list_tools(None).await.expect("tools/list");
    let names: Vec<_> = tools.tools.iter().map(|t| t.name.to_string()).collect();
    assert!(names.contains(&"echo".to_string()), "tools: {names:?}");

    let echoed = client
        .call_tool(
            CallToolRequestParams::new("echo").with_arguments(
                json!({"text": "hello"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        )
        .await
        .expect("tools/call echo");
    assert_eq!(text_of(&echoed), "hello");

    let who = client
        .call_tool(CallToolRequestParams::new("whoami"))
        .await
        .expect("whoami");
    let who: Value = serde_json::from_str(&text_of(&who)).expect("whoami JSON");
    assert_eq!(who["x-mcp-user-oid"], BOB);
    assert_eq!(who["x-mcp-tenant"], "engineering");
    assert_eq!(who["x-mcp-access-level"], "write");
    assert_eq!(who["x-mcp-directory"], TID);
    assert_eq!(
        who["authorization-present"], "false",
        "the client's token must not reach the upstream"
    );
    assert!(
        who["x-mcp-decision-id"]
            .as_str()
            .is_some_and(|s| s.len() == 36)
    );
    client.cancel().await.ok();
}

/// Attack: the client sends identity headers of its own to impersonate another user or tenant.
#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let env = TestEnv::start(Options::default()).await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let mut spoof = HashMap::new();
    spoof.insert(
        http::HeaderName::from_static("x-mcp-user-oid"),
        http::HeaderValue::from_static(ALICE),
    );
    spoof.insert(
        http::HeaderName::from_static("x-mcp-tenant"),
        http::HeaderValue::from_static("admin"),
    );
    spoof.insert(
        http::HeaderName::from_static("x-mcp-role"),
        http::HeaderValue::from_static("superuser"),
    );
    let client = env
        .mcp_client("/mcp/github", &token, spoof)
        .await
        .expect("initialize");
    let who = client
        .call_tool(CallToolRequestParams::new("whoami"))
        .await
        .expect("whoami");
    let who: Value = serde_json::from_str(&text_of(&who)).expect("whoami JSON");
    assert_eq!(who["x-mcp-user-oid"], BOB);
    assert_eq!(who["x-mcp-tenant"], "engineering");
    assert!(
        who.get("x-mcp-role").is_none(),
        "unknown x-mcp-* header reached upstream: {who}"
    );
    client.cancel().await.ok();

    let received = env.received.all();
    let mcp: Vec<_> = received
        .iter()
        .filter(|r| r.path.starts_with("/mcp/"))
        .collect();
    assert!(mcp.len() >= 3, "upstream saw {} MCP requests", mcp.len());
    for r in mcp {
        assert_eq!(
            r.headers.get("x-mcp-user-oid"),
            Some(&vec![BOB.to_string()]),
            "{r:?}"
        );
        assert_eq!(
            r.headers.get("x-mcp-tenant"),
            Some(&vec!["engineering".to_string()])
        );
        assert!(!r.headers.contains_key("x-mcp-role"));
        assert!(
            !r.headers.contains_key("authorization"),
            "token passed through: {r:?}"
        );
    }
}

#[tokio::test]
async fn user_of_another_tenant_gets_403() {
    let env = TestEnv::start(Options::default()).await;
    let carol = env.user_token(CAROL, &[SALES_GROUP]);
    let r = env
        .post("/mcp/github", Some(&carol), &initialize_body(7), &[])
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.reason(), "server_not_granted");
    // A policy denial is not a scope problem: no challenge, or MCP clients loop on sign-in.
    assert_eq!(r.header("www-authenticate"), None, "{r:?}");
    let body = r.json();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 7);
    assert_eq!(body["error"]["code"], -32003);
    assert_eq!(body["error"]["data"]["reason"], "server_not_granted");

    let err = env.mcp_client("/mcp/github", &carol, HashMap::new()).await;
    assert!(err.is_err(), "rmcp client must fail to initialize");

    // Her own tenant's server works.
    let ok = env
        .post("/mcp/jira", Some(&carol), &initialize_body(8), &[])
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(
        env.received.all().iter().all(|r| r.path != "/mcp/github"),
        "a denied request reached the upstream"
    );
}

#[tokio::test]
async fn missing_token_gets_401_with_resource_metadata() {
    let env = TestEnv::start(Options::default()).await;
    let r = env
        .post("/mcp/github", None, &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.reason(), "token_missing");
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!(
            "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp/github\", scope=\"{API_URI}/{SCOPE}\"",
            env.envoy_url
        ).as_str())
    );
    assert_eq!(r.json()["error"]["code"], -32001);
    // Probing an unknown server without a token learns nothing but 401.
    let probe = env
        .post("/mcp/no-such-server", None, &initialize_body(1), &[])
        .await;
    assert_eq!(probe.status, 401);
}

#[tokio::test]
async fn expired_and_forged_tokens_get_401_invalid_token() {
    let env = TestEnv::start(Options::default()).await;
    let expired = env.mint(
        json!({"tid": TID, "oid": BOB, "aud": API_CLIENT_ID, "scp": SCOPE,
        "groups": [ENG_GROUP], "expires_in": -120}),
    );
    let r = env
        .post("/mcp/github", Some(&expired), &initialize_body(1), &[])
        .await;
    assert_eq!((r.status, r.reason()), (401, "token_expired"));
    let challenge = r.header("www-authenticate").expect("challenge");
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\""),
        "{challenge}"
    );
    assert!(challenge.contains("resource_metadata="), "{challenge}");

    // Attack: claims signed by a key the directory never published, under a published kid.
    let good = env.user_token(BOB, &[ENG_GROUP]);
    let forger = mcp_authz_testkit::standin::SigningKey::generate();
    let payload = good.split('.').nth(1).expect("payload");
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": env.authority.active_key().kid});
    let payload_json = String::from_utf8(base64_decode(payload)).expect("utf8");
    let forged = forger.sign_jwt(&header, &payload_json);
    let r = env
        .post("/mcp/github", Some(&forged), &initialize_body(1), &[])
        .await;
    assert_eq!((r.status, r.reason()), (401, "token_signature_invalid"));

    // A kid nobody published.
    let unknown = forger.sign_jwt(
        &json!({"typ": "JWT", "alg": "RS256", "kid": "not-a-real-kid"}),
        &payload_json,
    );
    let r = env
        .post("/mcp/github", Some(&unknown), &initialize_body(1), &[])
        .await;
    assert_eq!((r.status, r.reason()), (401, "token_kid_unknown"));
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

#[tokio::test]
async fn denied_tool_is_refused_while_allowed_tool_works() {
    let env = TestEnv::start(Options::default()).await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let client = env
        .mcp_client("/mcp/github", &token, HashMap::new())
        .await
        .expect("initialize");
    let denied = client
        .call_tool(
            CallToolRequestParams::new("delete_repository").with_arguments(
                json!({"name": "prod"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        )
        .await;
    assert!(
        denied.is_err(),
        "delete_repository must be refused: {denied:?}"
    );
    let ok = client
        .call_tool(
            CallToolRequestParams::new("echo").with_arguments(
                json!({"text": "still fine"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        )
        .await
        .expect("echo after a denial");
    assert_eq!(text_of(&ok), "still fine");
    client.cancel().await.ok();

    let r = env
        .post(
            "/mcp/github",
            Some(&token),
            &tool_call_body(5, "delete_repository"),
            &[],
        )
        .await;
    assert_eq!((r.status, r.reason()), (403, "tool_denied"));
    assert_eq!(r.json()["id"], 5);
}

#[tokio::test]
async fn v1_tokens_with_app_id_uri_audience_are_accepted() {
    let env = TestEnv::start(Options::default()).await;
    let v1 = env.mint(json!({"tid": TID, "oid": BOB, "aud": API_URI, "ver": "1.0", "scp": SCOPE, "groups": [ENG_GROUP]}));
    let r = env
        .post("/mcp/github", Some(&v1), &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn protected_resource_metadata_is_served_through_envoy() {
    let env = TestEnv::start(Options::default()).await;
    let r = env
        .get("/.well-known/oauth-protected-resource/mcp/github")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let doc = r.json();
    assert_eq!(doc["resource"], format!("{}/mcp/github", env.envoy_url));
    assert_eq!(
        doc["authorization_servers"],
        json!([format!("{}/{TID}/v2.0", env.authority.base_url())])
    );
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    assert_eq!(
        doc["scopes_supported"],
        json!([format!("{API_URI}/{SCOPE}")])
    );
    let root = env.get("/.well-known/oauth-protected-resource").await;
    assert_eq!(root.json()["resource"], env.envoy_url);
    assert_eq!(
        env.get("/.well-known/oauth-protected-resource/mcp/no-such")
            .await
            .status,
        404
    );
    assert_eq!(
        env.get("/.well-known/oauth-protected-resource/mcp/legacy")
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn batch_truncated_and_mismatched_requests_are_refused() {
    let env = TestEnv::start(Options::default()).await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let batch = format!("[{}]", initialize_body(1));
    let r = env.post("/mcp/github", Some(&token), &batch, &[]).await;
    assert_eq!((r.status, r.reason()), (400, "batch_not_supported"));

    // Attack: a body larger than Envoy buffers, so the check would see only its start.
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x".repeat(300_000)}}})
    .to_string();
    let r = env.post("/mcp/github", Some(&token), &big, &[]).await;
    assert_eq!((r.status, r.reason()), (413, "body_truncated"));

    let r = env.post("/mcp/github", Some(&token), "not json", &[]).await;
    assert_eq!((r.status, r.reason()), (400, "invalid_json"));

    // Attack: headers name an allowed tool while the body calls a denied one.
    let r = env
        .post(
            "/mcp/github",
            Some(&token),
            &tool_call_body(2, "delete_repository"),
            &[("mcp-method", "tools/call"), ("mcp-name", "echo")],
        )
        .await;
    assert_eq!((r.status, r.reason()), (400, "header_mismatch"));
    assert_eq!(r.json()["error"]["code"], -32020);
}

/// `runtime.worker_threads: 1` (the sidecar's setting) runs the current-thread scheduler:
/// everything mcp-authz does shares one thread, so a Check, the list filter's stream and the
/// admin endpoints must all make progress there while many Checks are in flight together.
#[tokio::test]
async fn one_worker_thread_serves_sessions_lists_and_concurrent_checks() {
    let env = TestEnv::start(Options {
        extra_config: "runtime: {worker_threads: 1}\n".into(),
        ..Options::default()
    })
    .await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let client = env
        .mcp_client("/mcp/github", &token, HashMap::new())
        .await
        .expect("initialize");
    let tools = client.list_tools(None).await.expect("tools/list");
    assert!(tools.tools.iter().any(|t| t.name == "echo"), "{tools:?}");
    // 64 Checks in flight at once through Envoy, allowed and denied mixed: each gets its own
    // answer (answers leave the one thread in batches, never crossed: a denial carries its
    // request's JSON-RPC id).
    let sid = env.open_session("/mcp/github", &token).await;
    let replies = futures::future::join_all((0..64u64).map(|i| {
        let (env, token, sid) = (&env, &token, sid.as_str());
        let tool = if i % 4 == 0 {
            "delete_repository"
        } else {
            "echo"
        };
        async move {
            let session = [("mcp-session-id", sid)];
            let r = env
                .post(
                    "/mcp/github",
                    Some(token),
                    &tool_call_body(i, tool),
                    &session,
                )
                .await;
            (i, tool, r)
        }
    }))
    .await;
    for (i, tool, r) in &replies {
        if *tool == "echo" {
            assert_eq!(r.status, 200, "{r:?}");
        } else {
            assert_eq!((r.status, r.reason()), (403, "tool_denied"), "{r:?}");
            assert_eq!(r.json()["id"], *i, "{r:?}");
        }
    }
    assert_eq!(env.status().await["ready"], true);
    client.cancel().await.ok();
}

#[tokio::test]
async fn unix_socket_transport_works() {
    let env = TestEnv::start(Options {
        unix_socket: true,
        ..Options::default()
    })
    .await;
    assert!(env.authz.grpc.is_none());
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let r = env
        .post("/mcp/github", Some(&token), &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = env
        .post("/mcp/github", None, &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn policy_reload_takes_effect_and_a_bad_file_keeps_the_old_policy() {
    let env = TestEnv::start(Options::default()).await;
    let carol = env.user_token(CAROL, &[SALES_GROUP]);
    assert_eq!(
        env.post("/mcp/github", Some(&carol), &initialize_body(1), &[])
            .await
            .status,
        403
    );

    let granted = POLICY.replace(
        "servers: [jira]\nservers:",
        "servers: [jira, github]\nservers:",
    );
    assert_ne!(granted, POLICY);
    env.write_policy(&granted);
    let started = std::time::Instant::now();
    loop {
        let r = env
            .post("/mcp/github", Some(&carol), &initialize_body(1), &[])
            .await;
        if r.status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "reload not seen: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken file: rejected, the last good policy keeps serving.
    env.write_policy("tenants: [this is: not valid");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.post("/mcp/github", Some(&carol), &initialize_body(1), &[])
            .await
            .status,
        200
    );
    // A file that parses but names an unknown server: also rejected.
    env.write_policy(&POLICY.replace(
        "servers: [jira]\nservers:",
        "servers: [nonexistent]\nservers:",
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.post("/mcp/github", Some(&carol), &initialize_body(1), &[])
            .await
            .status,
        200
    );
    let ready = env
        .http
        .get(format!("http://{}/readyz", env.authz.admin))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn rotated_signing_key_is_picked_up() {
    let env = TestEnv::start(Options::default()).await;
    let before = env.user_token(BOB, &[ENG_GROUP]);
    assert_eq!(
        env.post("/mcp/github", Some(&before), &initialize_body(1), &[])
            .await
            .status,
        200
    );
    let new_kid = env.authority.rotate(false);
    let after = env.user_token(BOB, &[ENG_GROUP]);
    assert!(after.len() > 10 && new_kid.len() > 10);
    let r = env
        .post("/mcp/github", Some(&after), &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 200, "token signed by the rotated-in key: {r:?}");
}

#[tokio::test]
async fn admins_use_every_enabled_server_but_not_disabled_ones() {
    let env = TestEnv::start(Options::default()).await;
    let admin = env.user_token("00000000-0000-4000-8000-00000000ad00", &[ADMIN_GROUP]);
    let r = env
        .post("/mcp/github", Some(&admin), &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = env
        .post("/mcp/legacy", Some(&admin), &initialize_body(1), &[])
        .await;
    assert_eq!((r.status, r.reason()), (403, "server_disabled"));
    // /mcp/other is routed by the catch-all; the policy does not know it.
    let r = env
        .post("/mcp/other", Some(&admin), &initialize_body(1), &[])
        .await;
    assert_eq!((r.status, r.reason()), (403, "unknown_server"));
}

/// Envoy must fail closed when mcp-authz is gone (failure_mode_allow: false).
#[tokio::test]
async fn authz_down_fails_closed() {
    let mut env = TestEnv::start(Options::default()).await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    assert_eq!(
        env.post("/mcp/github", Some(&token), &initialize_body(1), &[])
            .await
            .status,
        200
    );
    let seen_before = env.received.all().len();
    env.stop_authz().await;
    let r = env
        .post("/mcp/github", Some(&token), &initialize_body(2), &[])
        .await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        env.received.all().len(),
        seen_before,
        "a request reached the upstream without a check"
    );
}

/// The shipped config starts and serves without a warning from Envoy (a deprecated field, or no
/// bound on downstream connections, were two): an operator should not learn to ignore them.
#[tokio::test]
async fn envoy_starts_and_serves_without_warnings() {
    let env = TestEnv::start(Options::default()).await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let r = env
        .post("/mcp/github", Some(&token), &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_no_envoy_warnings(&env.envoy_log());
}

/// A template rendered with the values of a production-like setup (render.sh), for `cluster`.
fn render_template(template: &str, cluster: &str) -> Vec<u8> {
    let out = std::process::Command::new(repo_path("envoy/render.sh"))
        .arg(repo_path(template))
        .env("ENVOY_ADMIN_PORT", "9901")
        .env("ENVOY_LISTEN_ADDRESS", "0.0.0.0")
        .env("ENVOY_LISTEN_PORT", "8080")
        .env("AUTHZ_CLUSTER", cluster)
        .env("AUTHZ_HOST", "127.0.0.1")
        .env("AUTHZ_PORT", "9001")
        .env("AUTHZ_SOCKET", "/run/mcp-authz/authz.sock")
        .env("METADATA_HOST", "127.0.0.1")
        .env("METADATA_PORT", "9003")
        .env("PUBLIC_BASE_URL", "https://mcp.example.com")
        .env("UPSTREAM_HOST", "localhost")
        .env("UPSTREAM_PORT", "8081")
        .output()
        .expect("render");
    assert!(
        out.status.success(),
        "{template}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn envoy_template_validates_for_tcp_and_unix() {
    // The static routes (envoy/envoy.yaml) and the xDS bootstrap (envoy/envoy-xds.yaml).
    for (template, cluster) in [
        ("envoy/envoy.yaml", "mcp_authz_tcp"),
        ("envoy/envoy.yaml", "mcp_authz_uds"),
        ("envoy/envoy-xds.yaml", "mcp_authz_tcp"),
        ("envoy/envoy-xds.yaml", "mcp_authz_uds"),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, render_template(template, cluster)).expect("write");
        let v = std::process::Command::new(envoy_bin())
            .args(["--mode", "validate", "-c"])
            .arg(&path)
            .output()
            .expect("envoy --mode validate");
        assert!(
            v.status.success(),
            "{template}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
        // Envoy 1.40 deprecated the cluster's own dns_refresh_rate; the shipped template
        // loaded with a deprecation warning until it used the DNS cluster extension.
        assert_no_envoy_warnings(&String::from_utf8_lossy(&v.stderr));
    }
    // A missing variable is refused, not rendered as an empty string.
    let out = std::process::Command::new(repo_path("envoy/render.sh"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("render");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UPSTREAM_PORT is not set"));
}

/// Every per-request gRPC call to mcp-authz (the Check, the list filter's ext_proc) goes
/// without the headers Envoy's gRPC client adds of its own (x-envoy-internal, x-forwarded-for):
/// mcp-authz reads neither, and both sides would build, encode and decode them on each call.
/// envoy/envoy-xds.yaml has the same filters, held to them by
/// `the_xds_bootstrap_is_the_static_config_but_for_routes_and_upstream`.
#[test]
fn the_calls_to_mcp_authz_carry_no_envoy_headers() {
    fn walk(v: &serde_yaml_ng::Value, found: &mut Vec<serde_yaml_ng::Value>) {
        match v {
            serde_yaml_ng::Value::Mapping(m) => {
                for (k, v) in m {
                    if k.as_str() == Some("envoy_grpc") {
                        found.push(v.clone());
                    }
                    walk(v, found);
                }
            }
            serde_yaml_ng::Value::Sequence(s) => s.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_slice(&render_template("envoy/envoy.yaml", "mcp_authz_tcp"))
            .expect("yaml");
    let mut calls = Vec::new();
    walk(&doc["static_resources"]["listeners"], &mut calls);
    assert_eq!(calls.len(), 2, "ext_authz and ext_proc: {calls:?}");
    for c in calls {
        assert_eq!(c["skip_envoy_headers"].as_bool(), Some(true), "{c:?}");
    }
}

/// Attack: two Authorization headers, hoping Envoy or the upstream uses a different one than
/// the one checked. `encode_raw_headers` keeps them apart and both are refused.
#[tokio::test]
async fn two_authorization_headers_are_refused_through_envoy() {
    let env = TestEnv::start(Options::default()).await;
    let good = env.user_token(BOB, &[ENG_GROUP]);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.append(
        "authorization",
        format!("Bearer {good}").parse().expect("value"),
    );
    headers.append("authorization", "Bearer a.b.c".parse().expect("value"));
    let r = env
        .http
        .post(format!("{}/mcp/github", env.envoy_url))
        .header("content-type", "application/json")
        .headers(headers)
        .body(initialize_body(1))
        .send()
        .await
        .expect("send");
    let r = Reply::from(r).await;
    assert_eq!((r.status, r.reason()), (401, "token_multiple"), "{r:?}");
}

#[tokio::test]
async fn passthrough_server_keeps_the_token_others_drop_it() {
    let policy = POLICY.replace(
        "  - name: jira\n",
        "  - name: jira\n    token_forwarding: passthrough\n",
    );
    assert_ne!(policy, POLICY);
    let env = TestEnv::start(Options {
        policy,
        ..Options::default()
    })
    .await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    assert_eq!(
        env.post("/mcp/jira", Some(&token), &initialize_body(1), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        env.post("/mcp/github", Some(&token), &initialize_body(1), &[])
            .await
            .status,
        200
    );
    let received = env.received.all();
    let auth_of = |path: &str| {
        received
            .iter()
            .find(|r| r.path == path)
            .map(|r| r.headers.get("authorization").cloned())
    };
    assert_eq!(
        auth_of("/mcp/jira"),
        Some(Some(vec![format!("Bearer {token}")]))
    );
    assert_eq!(auth_of("/mcp/github"), Some(None));
}

#[tokio::test]
async fn grpc_health_reports_serving_once_ready() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let env = TestEnv::start(Options::default()).await;
    let addr = env.authz.grpc.expect("grpc");
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = HealthClient::new(channel);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let mut status = 0;
        for _ in 0..100 {
            status = client
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health check")
                .into_inner()
                .status;
            if status == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(status, 1, "SERVING for {service:?}");
    }
}

/// An `obo` server receives a token Entra minted for it, never the client's; an
/// `interaction_required` answer reaches the client as a 401 claims challenge.
#[tokio::test]
async fn obo_server_receives_a_token_minted_for_it() {
    let policy = POLICY.replace(
        "  - name: jira\n",
        "  - name: jira\n    token_forwarding: obo\n    obo_scope: api://jira-mcp/.default\n",
    );
    assert_ne!(policy, POLICY);
    let env = TestEnv::start(Options {
        obo: true,
        policy,
        ..Options::default()
    })
    .await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    for id in 1..=3 {
        let r = env
            .post("/mcp/jira", Some(&token), &initialize_body(id), &[])
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let received = env.received.all();
    let sent: Vec<&String> = received
        .iter()
        .filter(|r| r.path == "/mcp/jira")
        .flat_map(|r| r.headers.get("authorization").into_iter().flatten())
        .collect();
    assert_eq!(
        sent.len(),
        3,
        "every request to the obo server carries a token"
    );
    let upstream_token = sent[0].strip_prefix("Bearer ").expect("bearer");
    assert_ne!(
        upstream_token, token,
        "the client's token must never reach the upstream"
    );
    let mut payload = Vec::new();
    let parsed = mcp_authz::identity::parse_jwt(upstream_token, &mut payload).expect("a JWT");
    assert_eq!(
        parsed.claims.aud.as_deref(),
        Some("api://jira-mcp"),
        "minted for the upstream"
    );
    assert_eq!(
        parsed.claims.oid.as_deref(),
        Some(BOB),
        "on behalf of the user"
    );
    assert_eq!(parsed.claims.azp.as_deref(), Some(API_CLIENT_ID));
    let key = env.authority.key(&parsed.header.kid).expect("stand-in key");
    let verifier =
        mcp_authz::identity::Key::from_components(&key.kid, &key.n, &key.e, None).expect("key");
    assert!(
        verifier.verify(parsed.signed_part(), &parsed.signature),
        "signed by the directory"
    );
    assert!(
        sent.iter().all(|s| **s == *sent[0]),
        "cached per (user, scope)"
    );
    assert_eq!(
        env.authority
            .token_requests
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one exchange for three requests"
    );

    env.authority
        .obo_interaction_required
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let alice = env.user_token(ALICE, &[]);
    let r = env
        .post("/mcp/jira", Some(&alice), &initialize_body(9), &[])
        .await;
    assert_eq!(
        (r.status, r.reason()),
        (401, "obo_interaction_required"),
        "{r:?}"
    );
    let challenge = r.header("www-authenticate").expect("challenge");
    assert!(
        challenge.starts_with("Bearer error=\"insufficient_claims\", claims=\""),
        "{challenge}"
    );
    let claims_b64 = challenge
        .split("claims=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("claims");
    use base64::Engine;
    let claims = base64::engine::general_purpose::STANDARD
        .decode(claims_b64)
        .expect("base64");
    let claims: Value = serde_json::from_slice(&claims).expect("claims JSON");
    assert!(
        claims["access_token"]["capolids"]["essential"] == true,
        "{claims}"
    );
    assert!(
        !r.body.contains("AADSTS"),
        "Entra's text must not reach the client: {}",
        r.body
    );
}

/// Attack: path tricks meant to be checked as one server and routed to another. Each is
/// normalised by Envoy before routing (and the check sees the normalised path) or refused; in
/// no case does a user of jira's tenant reach github.
#[tokio::test]
async fn path_tricks_never_reach_another_server() {
    let env = TestEnv::start(Options::default()).await;
    let carol = env.user_token(CAROL, &[SALES_GROUP]); // sales: jira only
    for path in [
        "/mcp/jira/../github",
        "/mcp/jira/%2e%2e/github",
        "/mcp/jira/..%2fgithub",
        "/mcp/jira%2f..%2fgithub",
        "/mcp/%67ithub",
        "/mcp/GITHUB",
        "/mcp//github",
        "/mcp/./github",
        "/mcp/github;jira",
        "/mcp/jira/../../mcp/github",
    ] {
        let r = env.post(path, Some(&carol), &initialize_body(1), &[]).await;
        assert_ne!(r.status, 200, "{path} was allowed: {r:?}");
        assert!(matches!(r.status, 400 | 403 | 404), "{path}: {r:?}");
    }
    let reached: Vec<_> = env.received.all().into_iter().map(|r| r.path).collect();
    assert!(
        reached.is_empty(),
        "requests reached the upstream: {reached:?}"
    );
    // Her own server still works, also through a path that normalises to it.
    assert_eq!(
        env.post(
            "/mcp/github/../jira",
            Some(&carol),
            &initialize_body(1),
            &[]
        )
        .await
        .status,
        200
    );
}

/// Hostile tokens and bodies through Envoy: each refused with its reason, none reaching the
/// upstream.
#[tokio::test]
async fn hostile_tokens_and_bodies_are_refused_through_envoy() {
    let env = TestEnv::start(Options::default()).await;
    let good = env.user_token(BOB, &[ENG_GROUP]);
    let huge = format!(
        "{}.{}.{}",
        "a".repeat(6000),
        "b".repeat(6000),
        "c".repeat(6000)
    );
    let foreign =
        env.mint(json!({"tid": FOREIGN_TID, "oid": BOB, "aud": API_CLIENT_ID, "scp": SCOPE}));
    let other_aud =
        env.mint(json!({"tid": TID, "oid": BOB, "aud": "api://someone-else", "scp": SCOPE}));
    let app_only = env.mint(json!({"tid": TID, "oid": BOB, "aud": API_CLIENT_ID, "roles": ["MCP.Invoke"], "extra": {"idtyp": "app"}}));
    for (token, reason) in [
        (huge.as_str(), "token_too_large"),
        (foreign.as_str(), "token_tenant"),
        (other_aud.as_str(), "token_audience"),
        (app_only.as_str(), "token_app_not_allowed"),
        ("not-a-jwt", "token_malformed"),
    ] {
        let r = env
            .post("/mcp/github", Some(token), &initialize_body(1), &[])
            .await;
        assert_eq!((r.status, r.reason()), (401, reason), "{r:?}");
    }
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"a":{}1{}}}}}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let r = env.post("/mcp/github", Some(&good), &deep, &[]).await;
    assert_eq!((r.status, r.reason()), (400, "json_too_deep"));
    let mut invalid_utf8 =
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ec"#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe]);
    invalid_utf8.extend_from_slice(br#"ho"}}"#);
    let r = Reply::from(
        env.http
            .post(format!("{}/mcp/github", env.envoy_url))
            .header("authorization", format!("Bearer {good}"))
            .header("content-type", "application/json")
            .body(invalid_utf8)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        env.received.all().is_empty(),
        "a hostile request reached the upstream"
    );
}

/// envoy/envoy-xds.yaml is envoy/envoy.yaml with the routes and the upstream cluster taken
/// from mcp-authz: the two templates must not drift apart anywhere else (the listener, its
/// filters, the local replies, the other clusters), or one of them would lose a protection.
#[test]
fn the_xds_bootstrap_is_the_static_config_but_for_routes_and_upstream() {
    let render = |template: &str| -> serde_yaml_ng::Value {
        serde_yaml_ng::from_slice(&render_template(template, "mcp_authz_tcp")).expect("yaml")
    };
    let mut fixed = render("envoy/envoy.yaml");
    let mut xds = render("envoy/envoy-xds.yaml");
    // What differs, by design: the routes' source and the upstream cluster.
    let hcm = |v: &mut serde_yaml_ng::Value| -> serde_yaml_ng::Mapping {
        let listeners = v["static_resources"]["listeners"]
            .as_sequence_mut()
            .expect("listeners");
        let mcp = listeners
            .iter_mut()
            .find(|l| l["name"] == "mcp")
            .expect("the mcp listener");
        mcp["filter_chains"][0]["filters"][0]["typed_config"]
            .as_mapping_mut()
            .expect("HCM")
            .clone()
    };
    let (mut a, mut b) = (hcm(&mut fixed), hcm(&mut xds));
    assert!(
        a.remove("route_config").is_some(),
        "envoy.yaml has static routes"
    );
    let rds = b.remove("rds").expect("envoy-xds.yaml takes routes by RDS");
    assert_eq!(
        rds["config_source"]["ads"],
        serde_yaml_ng::Value::Mapping(Default::default())
    );
    assert_eq!(a, b, "the HCMs differ beyond their routes");
    for v in [&mut fixed, &mut xds] {
        let listeners = v["static_resources"]["listeners"]
            .as_sequence_mut()
            .expect("listeners");
        for l in listeners.iter_mut().filter(|l| l["name"] == "mcp") {
            l["filter_chains"][0]["filters"][0]["typed_config"] = serde_yaml_ng::Value::Null;
        }
    }
    let clusters = fixed["static_resources"]["clusters"]
        .as_sequence_mut()
        .expect("clusters");
    let before = clusters.len();
    clusters.retain(|c| c["name"] != "mcp_upstream");
    assert_eq!(clusters.len(), before - 1);
    let dynamic = xds
        .as_mapping_mut()
        .expect("top level")
        .remove("dynamic_resources")
        .expect("envoy-xds.yaml has dynamic_resources");
    assert_eq!(
        dynamic["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"],
        "mcp_authz_tcp"
    );
    assert_eq!(
        fixed, xds,
        "the templates differ beyond their routes and upstream"
    );
}
