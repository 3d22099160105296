//! Filtered lists through real Envoy: the ext_proc filter rewrites list answers to what the
//! caller may use, and leaves every other request alone.

use std::time::Duration;

use serde_json::Value;

use crate::support::helpers::*;

fn list_body(id: u64, method: &str) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}}).to_string()
}

/// The JSON-RPC message of an answer: the body, or the data of its SSE event.
fn message_of(r: &Reply) -> Value {
    let text = r.body.clone();
    if r.header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream"))
    {
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:").map(str::trim_start))
            .filter(|d| !d.is_empty())
            .collect();
        serde_json::from_str(data.last().copied().unwrap_or("null")).unwrap_or(Value::Null)
    } else {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

fn tool_names(v: &Value) -> Vec<String> {
    v["result"]["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn list_tools(env: &TestEnv, token: &str, sid: &str, id: u64) -> Reply {
    tokio::time::timeout(
        Duration::from_secs(10),
        env.post(
            "/mcp/github",
            Some(token),
            &list_body(id, "tools/list"),
            &[("mcp-session-id", sid)],
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("tools/list did not answer in 10 s"))
}

/// Every SDK's upstream, in both answer forms of Streamable HTTP (an event stream; JSON): the
/// list a caller gets holds exactly the tools the policy lets it call, the denied one is still
/// refused by name, and the mark never reaches the upstream or the client.
#[tokio::test]
async fn tools_list_through_envoy_shows_only_the_allowed_tools() {
    let cases = [
        (Upstream::Rmcp, false),
        (Upstream::Python, false),
        (Upstream::Python, true),
        (Upstream::TypeScriptNodeHttp, false),
        (Upstream::TypeScriptNodeHttp, true),
    ];
    for (upstream, json) in cases {
        let what = format!("{upstream:?} ({})", if json { "JSON" } else { "SSE" });
        let env = TestEnv::start(Options {
            upstream,
            upstream_json: json,
            ..Options::default()
        })
        .await;
        let token = env.user_token(BOB, &[ENG_GROUP]);
        let sid = env.open_session("/mcp/github", &token).await;
        let r = list_tools(&env, &token, &sid, 5).await;
        assert_eq!(r.status, 200, "{what}: {r:?}");
        let expected_type = if json {
            "application/json"
        } else {
            "text/event-stream"
        };
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with(expected_type)),
            "{what}: {r:?}"
        );
        assert_eq!(
            r.header("x-mcp-authz-list"),
            None,
            "{what}: the mark reached the client"
        );
        if json {
            assert_eq!(
                r.header("content-length")
                    .and_then(|l| l.parse::<usize>().ok()),
                Some(r.body.len()),
                "{what}: Content-Length is the filtered body's"
            );
        }
        let msg = message_of(&r);
        assert_eq!(msg["id"], 5, "{what}: {msg}");
        assert_eq!(tool_names(&msg), ["echo", "whoami"], "{what}: {msg}");
        // The denied tool is still refused when called by name.
        let r = env
            .post(
                "/mcp/github",
                Some(&token),
                &tool_call_body(6, "delete_repository"),
                &[("mcp-session-id", &sid)],
            )
            .await;
        assert_eq!(r.status, 403, "{what}: {r:?}");
        let log = env.upstream_log().await;
        assert!(
            log.received
                .iter()
                .all(|q| !q.headers.contains_key("x-mcp-authz-list")),
            "{what}: the list mark reached the upstream"
        );
    }
}

/// A policy change reaches the next list within a second: once the file allows
/// delete_repository, the same caller's next list shows it; an admin sees everything.
#[tokio::test]
async fn a_policy_change_changes_the_next_list_within_a_second() {
    let env = TestEnv::start(Options::default()).await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let sid = env.open_session("/mcp/github", &token).await;
    let before = message_of(&list_tools(&env, &token, &sid, 2).await);
    assert_eq!(tool_names(&before), ["echo", "whoami"], "{before}");
    env.write_policy(&POLICY.replace("effect: deny", "effect: allow"));
    let changed = std::time::Instant::now();
    let mut id = 3;
    loop {
        let now = message_of(&list_tools(&env, &token, &sid, id).await);
        if tool_names(&now) == ["delete_repository", "echo", "whoami"] {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "the list still hides delete_repository 1 s after the policy allowed it: {now}"
        );
        id += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
