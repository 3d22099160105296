//! The conformance matrix: every hostile body through real Envoy against an upstream of each of
//! the three official MCP SDKs (rmcp, Python `mcp`, TypeScript `@modelcontextprotocol/sdk` on
//! node:http and through its Express helper), and the SDKs' own clients through the gateway.
//!
//! The question each hostile case asks is not only "did the gateway refuse?" but "did a denied
//! tool run upstream?": every peer logs the tools it ran (`GET /_log`), and the attack requests
//! are sent inside a live MCP session, so an upstream that parsed them differently from the
//! Check would execute them. A positive control (the same tool on a server whose policy allows
//! it) proves that the log would have shown it.

use serde_json::Value;

use crate::support::helpers::*;

const DENIED: &str = "delete_repository";

/// A POST with exactly these headers (besides auth, accept and the session).
async fn raw_post(
    env: &TestEnv,
    path: &str,
    token: &str,
    sid: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let mut req = env
        .http
        .post(format!("{}{path}", env.envoy_url))
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", sid)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Reply::from(req.send().await.expect("POST through Envoy")).await
}

fn call(tool: &str) -> String {
    tool_call_body(7, tool)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    // A stored (uncompressed) deflate block in a gzip member: what express.json() inflates.
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.push(1);
    let len = bytes.len() as u16;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(&crc32(bytes).to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One hostile request: what it is, its headers and body, and the status the gateway answers.
struct Hostile {
    attack: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    reason: &'static str,
}

fn hostile_cases() -> Vec<Hostile> {
    let json_ct = ("content-type", "application/json");
    // `+AGQ-` is "d" in UTF-7: the Check would read a harmless unknown tool.
    let utf7 = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"+AGQ-elete_repository","arguments":{"name":"x"}}}"#.to_vec();
    let denied = call(DENIED).into_bytes();
    let mut utf16 = Vec::new();
    for unit in String::from_utf8_lossy(&denied).encode_utf16() {
        utf16.extend_from_slice(&unit.to_le_bytes());
    }
    let mut bom = vec![0xef, 0xbb, 0xbf];
    bom.extend_from_slice(&denied);
    let mut invalid_utf8 =
        br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_reposito"#
            .to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe]);
    invalid_utf8.extend_from_slice(br#"ry","arguments":{"name":"x"}}}"#);
    let oversized = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{DENIED}","arguments":{{"name":"x","pad":"{}"}}}}}}"#,
        "p".repeat(300 * 1024)
    );
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{DENIED}","arguments":{{"name":"x","a":{}1{}}}}}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    vec![
        Hostile {
            attack: "charset=utf-7: the Express helper decodes the name as delete_repository",
            headers: vec![("content-type", "application/json; charset=utf-7")],
            body: utf7.clone(),
            status: 415,
            reason: "unsupported_media_type",
        },
        Hostile {
            attack: "charset=utf-16le body",
            headers: vec![("content-type", "application/json; charset=utf-16le")],
            body: utf16.clone(),
            status: 415,
            reason: "unsupported_media_type",
        },
        Hostile {
            attack: "UTF-16 body under a plain content type (Python's json.loads detects it)",
            headers: vec![json_ct],
            body: utf16,
            status: 400,
            reason: "invalid_json",
        },
        Hostile {
            attack: "two Content-Type headers, the second with charset=utf-7",
            headers: vec![json_ct, ("content-type", "application/json; charset=utf-7")],
            body: utf7,
            status: 415,
            reason: "unsupported_media_type",
        },
        Hostile {
            attack: "gzip content coding (express.json() inflates it)",
            headers: vec![json_ct, ("content-encoding", "gzip")],
            body: gzip(&denied),
            status: 415,
            reason: "unsupported_content_encoding",
        },
        Hostile {
            attack: "no Content-Type at all",
            headers: vec![],
            body: denied.clone(),
            status: 415,
            reason: "unsupported_media_type",
        },
        Hostile {
            attack: "the denied tool, plainly",
            headers: vec![json_ct],
            body: denied.clone(),
            status: 403,
            reason: "tool_denied",
        },
        Hostile {
            attack: "the denied tool's name with a JSON escape",
            headers: vec![json_ct],
            body: br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"\u0064elete_repository","arguments":{"name":"x"}}}"#.to_vec(),
            status: 403,
            reason: "tool_denied",
        },
        Hostile {
            attack: "duplicate name members (a last-wins parser runs the second)",
            headers: vec![json_ct],
            body: br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","name":"delete_repository","arguments":{"name":"x"}}}"#.to_vec(),
            status: 400,
            reason: "invalid_params",
        },
        Hostile {
            attack: "duplicate method members",
            headers: vec![json_ct],
            body: br#"{"jsonrpc":"2.0","id":7,"method":"tools/list","method":"tools/call","params":{"name":"delete_repository","arguments":{"name":"x"}}}"#.to_vec(),
            status: 400,
            reason: "invalid_jsonrpc",
        },
        Hostile {
            attack: "a batch carrying the denied tool",
            headers: vec![json_ct],
            body: format!("[{}]", call(DENIED)).into_bytes(),
            status: 400,
            reason: "batch_not_supported",
        },
        Hostile {
            attack: "not JSON at all",
            headers: vec![json_ct],
            body: b"delete_repository please".to_vec(),
            status: 400,
            reason: "invalid_json",
        },
        Hostile {
            attack: "an empty body",
            headers: vec![json_ct],
            body: Vec::new(),
            status: 400,
            reason: "empty_body",
        },
        Hostile {
            attack: "a form feed before the body (not JSON whitespace)",
            headers: vec![json_ct],
            body: [b"\x0c".as_slice(), &denied].concat(),
            status: 400,
            reason: "invalid_json",
        },
        Hostile {
            attack: "a UTF-8 byte-order mark before the body",
            headers: vec![json_ct],
            body: bom,
            status: 400,
            reason: "invalid_json",
        },
        Hostile {
            attack: "invalid UTF-8 inside the tool name (a lossy decoder keeps going)",
            headers: vec![json_ct],
            body: invalid_utf8,
            status: 400,
            reason: "invalid_json",
        },
        Hostile {
            attack: "JSON nested past the limit",
            headers: vec![json_ct],
            body: deep.into_bytes(),
            status: 400,
            reason: "json_too_deep",
        },
        Hostile {
            attack: "Mcp-Name names an allowed tool, the body the denied one",
            headers: vec![json_ct, ("mcp-method", "tools/call"), ("mcp-name", "echo")],
            body: denied.clone(),
            status: 400,
            reason: "header_mismatch",
        },
        Hostile {
            attack: "a body past Envoy's buffer, with the client's own partial-body header",
            headers: vec![json_ct, ("x-envoy-auth-partial-body", "false")],
            body: oversized.into_bytes(),
            status: 413,
            reason: "body_truncated",
        },
    ]
}

async fn hostile_bodies_never_run_a_denied_tool(upstream: Upstream) {
    let env = TestEnv::start(Options {
        upstream,
        ..Options::default()
    })
    .await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let sid = env.open_session("/mcp/github", &token).await;

    // The session works: an allowed call runs upstream.
    let r = raw_post(
        &env,
        "/mcp/github",
        &token,
        &sid,
        &[("content-type", "application/json")],
        call("echo").replace("{}", r#"{"text":"hi"}"#).into_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{upstream:?}: echo in the session: {r:?}");

    for case in hostile_cases() {
        let r = raw_post(&env, "/mcp/github", &token, &sid, &case.headers, case.body).await;
        assert_eq!(
            (r.status, r.reason()),
            (case.status, case.reason),
            "{upstream:?}: {}: {r:?}",
            case.attack
        );
        assert!(
            r.body.contains("\"jsonrpc\""),
            "{upstream:?}: {}: not a JSON-RPC error: {}",
            case.attack,
            r.body
        );
    }

    // Positive control: on jira (no deny rule) the same tool runs, and the log shows it.
    let jira_sid = env.open_session("/mcp/jira", &token).await;
    let r = raw_post(
        &env,
        "/mcp/jira",
        &token,
        &jira_sid,
        &[("content-type", "application/json")],
        call(DENIED).replace("{}", r#"{"name":"x"}"#).into_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{upstream:?}: allowed delete on jira: {r:?}");
    let log = env.upstream_log().await;
    assert_eq!(
        log.executed.iter().filter(|t| *t == DENIED).count(),
        1,
        "{upstream:?}: a denied tool ran upstream, or the control did not: {:?}",
        log.executed
    );
    assert!(
        log.executed.iter().any(|t| t == "echo"),
        "{:?}",
        log.executed
    );
    // None of the refused requests reached the upstream at all: what did is the two sessions'
    // initialize and notifications/initialized, the echo and the control.
    let paths: Vec<&str> = log.received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/mcp/github",
            "/mcp/github",
            "/mcp/github",
            "/mcp/jira",
            "/mcp/jira",
            "/mcp/jira"
        ],
        "{upstream:?}: a refused request reached the upstream"
    );
}

#[tokio::test]
async fn hostile_bodies_never_run_a_denied_tool_on_rmcp() {
    hostile_bodies_never_run_a_denied_tool(Upstream::Rmcp).await;
}

#[tokio::test]
async fn hostile_bodies_never_run_a_denied_tool_on_python() {
    hostile_bodies_never_run_a_denied_tool(Upstream::Python).await;
}

#[tokio::test]
async fn hostile_bodies_never_run_a_denied_tool_on_typescript_node_http() {
    hostile_bodies_never_run_a_denied_tool(Upstream::TypeScriptNodeHttp).await;
}

#[tokio::test]
async fn hostile_bodies_never_run_a_denied_tool_on_typescript_express() {
    hostile_bodies_never_run_a_denied_tool(Upstream::TypeScriptExpress).await;
}

/// The clients of all three SDKs log in with a bearer token, list, call an allowed tool and are
/// refused the denied one, against an upstream of every SDK.
#[tokio::test]
async fn sdk_clients_through_the_gateway_against_every_upstream() {
    for upstream in Upstream::ALL {
        let env = TestEnv::start(Options {
            upstream,
            ..Options::default()
        })
        .await;
        let token = env.user_token(BOB, &[ENG_GROUP]);
        let url = format!("{}/mcp/github", env.envoy_url);
        let reports = sdk_client_reports(&url, &token).await;
        for (client, report) in reports {
            let what = format!("{client} client → {upstream:?} upstream");
            assert_eq!(report["initialized"], true, "{what}: {report}");
            let tools: Vec<&str> = report["tools"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            // The list is filtered to what the caller may call: delete_repository, which
            // the policy denies, is not in it.
            assert_eq!(tools, ["echo", "whoami"], "{what}: {report}");
            assert_eq!(
                report["echo"],
                format!("hello from {client}"),
                "{what}: {report}"
            );
            assert_eq!(report["delete"]["ok"], false, "{what}: {report}");
        }
        // The rmcp client too.
        let client = env
            .mcp_client("/mcp/github", &token, Default::default())
            .await
            .unwrap_or_else(|e| panic!("rmcp client → {upstream:?}: {e}"));
        let denied = client
            .call_tool(rmcp::model::CallToolRequestParams::new(DENIED))
            .await;
        assert!(denied.is_err(), "rmcp client → {upstream:?}: {denied:?}");
        client.cancel().await.ok();
        let log = env.upstream_log().await;
        assert!(
            !log.executed.iter().any(|t| t == DENIED),
            "{upstream:?}: {:?}",
            log.executed
        );
        assert!(
            log.executed.iter().filter(|t| *t == "echo").count() >= 2,
            "{upstream:?}: the SDK clients' echo calls did not run: {:?}",
            log.executed
        );
    }
}
