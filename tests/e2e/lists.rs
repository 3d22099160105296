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

async fn list_tools(env: &TestEnv, token: &str, sid: Option<&str>, id: u64) -> Reply {
    let session: Vec<(&str, &str)> = sid.map(|s| ("mcp-session-id", s)).into_iter().collect();
    tokio::time::timeout(
        Duration::from_secs(10),
        env.post(
            "/mcp/github",
            Some(token),
            &list_body(id, "tools/list"),
            &session,
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("tools/list did not answer in 10 s"))
}

/// How Envoy reaches mcp-authz (ext_authz and ext_proc both).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Via {
    Tcp,
    Unix,
    Mtls,
}

/// Every SDK's upstream, in both answer forms of Streamable HTTP (an event stream; JSON): the
/// list a caller gets holds exactly the tools the policy lets it call, the denied one is still
/// refused by name, and the mark never reaches the upstream or the client. Over each way Envoy
/// reaches mcp-authz.
#[tokio::test]
async fn tools_list_through_envoy_shows_only_the_allowed_tools() {
    // (upstream, JSON answers, how Envoy reaches mcp-authz)
    let cases = [
        (Upstream::Rmcp, false, Via::Tcp),
        (Upstream::Rmcp, false, Via::Unix),
        (Upstream::Rmcp, false, Via::Mtls),
        // rmcp answers JSON only statelessly: no session.
        (Upstream::Rmcp, true, Via::Tcp),
        (Upstream::Python, false, Via::Tcp),
        (Upstream::Python, true, Via::Tcp),
        (Upstream::TypeScriptNodeHttp, false, Via::Tcp),
        (Upstream::TypeScriptNodeHttp, true, Via::Tcp),
    ];
    for (upstream, json, via) in cases {
        let what = format!(
            "{upstream:?} ({}, {via:?})",
            if json { "JSON" } else { "SSE" },
        );
        let env = TestEnv::start(Options {
            upstream,
            upstream_json: json,
            unix_socket: via == Via::Unix,
            mtls: via == Via::Mtls,
            ..Options::default()
        })
        .await;
        let token = env.user_token(BOB, &[ENG_GROUP]);
        let stateless = upstream == Upstream::Rmcp && json;
        let sid = if stateless {
            None
        } else {
            Some(env.open_session("/mcp/github", &token).await)
        };
        let session: Vec<(&str, &str)> = sid
            .as_deref()
            .map(|s| ("mcp-session-id", s))
            .into_iter()
            .collect();
        let r = list_tools(&env, &token, sid.as_deref(), 5).await;
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
            "{what}: a list mark reached the client (the Check marks list requests in its metadata only)"
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
                &session,
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

/// Envoy's list-filter counters: the composite filter's ext_proc creations
/// (`filter_delegation_success`) and failures to create it (`filter_delegation_error`); `None`
/// when Envoy has no such counter.
async fn list_filter_creations(env: &TestEnv) -> (Option<u64>, Option<u64>) {
    let stats = env.envoy_admin_text("/stats?filter=composite").await;
    let counter = |name: &str| {
        stats.lines().find_map(|l| {
            l.strip_prefix(&format!("http.mcp.composite.{name}: "))?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    (
        counter("filter_delegation_success"),
        counter("filter_delegation_error"),
    )
}

/// The list filter exists only for list requests: Envoy's composite filter creates ext_proc
/// for a request the Check named a list in its dynamic metadata, and for no other (a session's
/// `initialize`, a `ping`, an allowed and a denied `tools/call`), and never fails to create it
/// (which would pass the list unfiltered). Before, ext_proc sat behind a matcher that skipped
/// it on every answer not marked a list, and Envoy created the skipped filter for every
/// request anyway: 8–13 % more of Envoy's CPU per request.
#[tokio::test]
async fn only_list_requests_create_the_list_filter() {
    let env = TestEnv::start(Options::default()).await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let sid = env.open_session("/mcp/github", &token).await;
    let session = [("mcp-session-id", sid.as_str())];
    // The series the McpAuthzListFilterNotCreated alert reads, as Envoy names it for
    // Prometheus: an alert on a name Envoy does not export would never fire.
    let prometheus = env
        .envoy_admin_text("/stats/prometheus?filter=composite")
        .await;
    assert!(
        prometheus.lines().any(|l| l.starts_with(
            r#"envoy_http_composite_filter_delegation_error{envoy_http_conn_manager_prefix="mcp"} "#
        )),
        "{prometheus}"
    );
    let (created, failed) = list_filter_creations(&env).await;
    assert_eq!(
        (created, failed),
        (Some(0), Some(0)),
        "the shipped Envoy has no list filter of its own, or created it for initialize"
    );
    for (what, body, status) in [
        (
            "ping",
            r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#.to_owned(),
            200,
        ),
        ("allowed tools/call", tool_call_body(3, "echo"), 200),
        (
            "denied tools/call",
            tool_call_body(4, "delete_repository"),
            403,
        ),
    ] {
        let r = env.post("/mcp/github", Some(&token), &body, &session).await;
        assert_eq!(r.status, status, "{what}: {r:?}");
    }
    assert_eq!(
        list_filter_creations(&env).await,
        (Some(0), Some(0)),
        "the list filter was created for a request that is not a list"
    );
    let r = list_tools(&env, &token, Some(&sid), 5).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(tool_names(&message_of(&r)), ["echo", "whoami"], "{r:?}");
    assert_eq!(
        list_filter_creations(&env).await,
        (Some(1), Some(0)),
        "the list filter was not created once for the list request"
    );
}

/// Paged lists, as each SDK pages them: the upstream answers tools/list one tool a page in name
/// order, so its first page holds only delete_repository, which the caller may not call. Each
/// page is filtered on its own and keeps its `nextCursor`, so the first arrives empty with the
/// cursor and a client that follows cursors reaches the rest; no page ever shows the denied
/// tool. The SDK clients (Python and TypeScript following `nextCursor` by hand, as their APIs
/// ask; rmcp's `list_all_tools`) see exactly the allowed tools.
#[tokio::test]
async fn paged_lists_are_filtered_page_by_page_and_the_sdk_clients_follow_the_cursor() {
    for upstream in [
        Upstream::Rmcp,
        Upstream::Python,
        Upstream::TypeScriptNodeHttp,
    ] {
        let env = TestEnv::start(Options {
            upstream,
            upstream_page_size: Some(1),
            ..Options::default()
        })
        .await;
        let token = env.user_token(BOB, &[ENG_GROUP]);
        let sid = env.open_session("/mcp/github", &token).await;
        let mut pages: Vec<Vec<String>> = Vec::new();
        let mut cursor: Option<String> = None;
        for id in 10..20 {
            let params = match &cursor {
                Some(c) => serde_json::json!({ "cursor": c }),
                None => serde_json::json!({}),
            };
            let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": params});
            let r = env
                .post(
                    "/mcp/github",
                    Some(&token),
                    &body.to_string(),
                    &[("mcp-session-id", &sid)],
                )
                .await;
            assert_eq!(r.status, 200, "{upstream:?} page {}: {r:?}", pages.len());
            let msg = message_of(&r);
            assert_eq!(msg["id"], id, "{upstream:?}: {msg}");
            pages.push(tool_names(&msg));
            match msg["result"]["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(
            pages,
            [vec![], vec!["echo".to_owned()], vec!["whoami".to_owned()]],
            "{upstream:?}: the pages as the caller got them"
        );

        let url = format!("{}/mcp/github", env.envoy_url);
        for (client, report) in sdk_client_reports(&url, &token).await {
            assert_eq!(
                report["tools"],
                serde_json::json!(["echo", "whoami"]),
                "{client} client → {upstream:?}: {report}"
            );
            assert_eq!(
                report["pages"], 3,
                "{client} client → {upstream:?}: {report}"
            );
        }
        let client = env
            .mcp_client("/mcp/github", &token, Default::default())
            .await
            .unwrap_or_else(|e| panic!("rmcp client → {upstream:?}: {e}"));
        let mut names: Vec<String> = client
            .list_all_tools()
            .await
            .unwrap_or_else(|e| panic!("rmcp list_all_tools → {upstream:?}: {e}"))
            .into_iter()
            .map(|t| t.name.into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["echo", "whoami"], "rmcp client → {upstream:?}");
        client.cancel().await.ok();
    }
}

/// The next list after `change` shows delete_repository within a second.
async fn next_list_shows_the_change(env: &TestEnv, change: impl std::future::Future<Output = ()>) {
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let sid = env.open_session("/mcp/github", &token).await;
    let before = message_of(&list_tools(env, &token, Some(&sid), 2).await);
    assert_eq!(tool_names(&before), ["echo", "whoami"], "{before}");
    change.await;
    let changed = std::time::Instant::now();
    let mut id = 3;
    loop {
        let now = message_of(&list_tools(env, &token, Some(&sid), id).await);
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

/// A policy change reaches the next list within a second: once the policy file allows
/// delete_repository, the same caller's next list shows it.
#[tokio::test]
async fn a_policy_file_change_changes_the_next_list_within_a_second() {
    let env = TestEnv::start(Options::default()).await;
    next_list_shows_the_change(&env, async {
        env.write_policy(&POLICY.replace("effect: deny", "effect: allow"));
    })
    .await;
}

/// The same with the policy in PostgreSQL: the rule's row deleted.
#[tokio::test]
async fn a_policy_row_change_changes_the_next_list_within_a_second() {
    let db = crate::support::pg::TestDb::create().await;
    db.import(POLICY, false).await;
    let env = TestEnv::start(Options {
        database_url: Some(db.url.clone()),
        ..Options::default()
    })
    .await;
    next_list_shows_the_change(&env, async {
        sqlx::query("DELETE FROM tool_rules WHERE server = 'github' AND tool_pattern = 'delete_*'")
            .execute(&db.pool)
            .await
            .expect("delete the rule");
    })
    .await;
}

/// A hostile upstream: answers every POST with the scripted content type and body, sent in the
/// chunks given (flushed apart), whatever was asked.
#[derive(Clone, Default)]
struct Script(std::sync::Arc<std::sync::Mutex<Answer>>);

/// Extra response headers.
type Headers = Vec<(&'static str, &'static str)>;

/// A scripted answer: content type, extra headers, body chunks.
type Answer = (String, Headers, Vec<Vec<u8>>);

impl Script {
    fn set(
        &self,
        content_type: &str,
        headers: Vec<(&'static str, &'static str)>,
        chunks: Vec<Vec<u8>>,
    ) {
        if let Ok(mut s) = self.0.lock() {
            *s = (content_type.to_owned(), headers, chunks);
        }
    }

    async fn serve(self) -> u16 {
        use axum::body::Body;
        use futures::StreamExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let app = axum::Router::new().fallback(move || {
            let script = self.clone();
            async move {
                let (ct, headers, chunks) = script.0.lock().map(|s| s.clone()).unwrap_or_default();
                let stream = futures::stream::iter(chunks).then(|c| async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, std::io::Error>(bytes::Bytes::from(c))
                });
                let mut r = axum::response::Response::builder()
                    .status(200)
                    .header("content-type", ct);
                for (k, v) in headers {
                    r = r.header(k, v);
                }
                r.body(Body::from_stream(stream)).expect("response")
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        port
    }
}

/// Attack: a hostile upstream's list answer — invalid or truncated JSON, oversized, compressed,
/// another charset or content type, duplicate keys, invalid JSON in an event, a stream cut
/// mid-event, an event split mid-UTF-8 — never reaches the client unfiltered through real
/// Envoy: it gets an error (or, for what a client itself would drop, nothing), and the one
/// readable answer is filtered.
#[tokio::test]
async fn a_hostile_upstream_never_gets_an_unfiltered_list_to_the_client() {
    let script = Script::default();
    let port = script.clone().serve().await;
    let env = TestEnv::start(Options {
        upstream: Upstream::Port(port),
        ..Options::default()
    })
    .await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let list = r#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"echo","description":"é"},{"name":"delete_repository"}]}}"#;
    let sse = |data: &str| format!("event: message\ndata: {data}\n\n").into_bytes();
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":5,"result":{{"tools":[{{"name":"delete_repository","description":"{}"}}]}}}}"#,
        "x".repeat(5 << 20)
    );
    let json = "application/json";
    let cases: Vec<(&str, &str, Headers, Vec<Vec<u8>>)> = vec![
        (
            "truncated JSON",
            json,
            vec![],
            vec![list.as_bytes()[..60].to_vec()],
        ),
        (
            "not JSON",
            json,
            vec![],
            vec![b"delete_repository".to_vec()],
        ),
        (
            "oversized JSON",
            json,
            vec![],
            vec![big.clone().into_bytes()],
        ),
        (
            "gzip",
            json,
            vec![("content-encoding", "gzip")],
            vec![list.as_bytes().to_vec()],
        ),
        (
            "charset=utf-16",
            "application/json; charset=utf-16",
            vec![],
            vec![list.as_bytes().to_vec()],
        ),
        (
            "text/plain",
            "text/plain",
            vec![],
            vec![list.as_bytes().to_vec()],
        ),
        (
            "invalid JSON in an event",
            "text/event-stream",
            vec![],
            vec![sse(&list[..70])],
        ),
        (
            "a stream cut mid-event",
            "text/event-stream",
            vec![],
            vec![format!("data: {list}\n").into_bytes()],
        ),
        (
            "an oversized event",
            "text/event-stream",
            vec![],
            vec![sse(&big)],
        ),
    ];
    for (attack, ct, headers, chunks) in cases {
        script.set(ct, headers, chunks);
        let r = list_tools(&env, &token, None, 5).await;
        assert!(
            !r.body.contains("delete_repository"),
            "{attack}: the denied tool reached the client: {} {}",
            r.status,
            &r.body[..r.body.len().min(300)]
        );
        assert!(
            r.status >= 500 || r.body.contains("list_") || r.body.is_empty(),
            "{attack}: neither an error nor nothing: {r:?}"
        );
    }
    // A list request sent as a notification (no id), which a lenient upstream answers anyway.
    script.set(json, vec![], vec![list.as_bytes().to_vec()]);
    let r = env
        .post(
            "/mcp/github",
            Some(&token),
            r#"{"jsonrpc":"2.0","method":"tools/list"}"#,
            &[],
        )
        .await;
    assert!(!r.body.contains("delete_repository"), "{r:?}");
    // Duplicate names: the item is re-encoded with the one name decided on (the last, as
    // most clients read it), so the client cannot read the other.
    script.set(
        json,
        vec![],
        vec![br#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"delete_repository","name":"echo"}]}}"#.to_vec()],
    );
    let r = list_tools(&env, &token, None, 5).await;
    assert!(!r.body.contains("delete_repository"), "{r:?}");
    assert_eq!(tool_names(&message_of(&r)), ["echo"], "{r:?}");
    // The one readable answer, split mid-UTF-8 (inside "é") over two chunks, is filtered; a
    // notifications/tools/list_changed before it on the stream passes untouched.
    let changed = r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#;
    let whole = [sse(changed), sse(list)].concat();
    let cut = whole
        .windows(2)
        .position(|w| w == "é".as_bytes())
        .expect("é")
        + 1;
    script.set(
        "text/event-stream",
        vec![],
        vec![whole[..cut].to_vec(), whole[cut..].to_vec()],
    );
    let r = list_tools(&env, &token, None, 5).await;
    assert_eq!(r.status, 200, "{r:?}");
    let msg = message_of(&r);
    assert_eq!(tool_names(&msg), ["echo"], "{msg}");
    assert_eq!(msg["result"]["tools"][0]["description"], "é");
    assert!(
        r.body
            .starts_with(&format!("event: message\ndata: {changed}\n\n")),
        "the notification did not pass untouched: {}",
        r.body
    );
}

/// The server catalog: `GET /mcp` answers the servers this caller may use (name, URL,
/// description from policy) and nothing else; 401 without a token; disabled servers and
/// servers of other tenants are not in it.
#[tokio::test]
async fn the_server_catalog_lists_what_each_caller_may_use() {
    let policy = POLICY.replace(
        "  - name: github\n",
        "  - name: github\n    description: \"Repositories, issues and pull requests\"\n",
    );
    let env = TestEnv::start(Options {
        policy,
        ..Options::default()
    })
    .await;
    let catalog = |token: Option<String>| {
        let req = env.http.get(format!("{}/mcp", env.envoy_url));
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        async move { Reply::from(req.send().await.expect("GET /mcp")).await }
    };
    let names = |r: &Reply| -> Vec<String> {
        r.json()["servers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let r = catalog(Some(env.user_token(BOB, &[ENG_GROUP]))).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
    assert_eq!(names(&r), ["github", "jira"], "{r:?}");
    let github = &r.json()["servers"][0];
    assert_eq!(github["url"], format!("{}/mcp/github", env.envoy_url));
    assert_eq!(
        github["description"],
        "Repositories, issues and pull requests"
    );
    let r = catalog(Some(env.user_token(CAROL, &[SALES_GROUP]))).await;
    assert_eq!(names(&r), ["jira"], "{r:?}");
    // An admin may use every enabled server; `legacy` is disabled.
    let r = catalog(Some(env.user_token(CAROL, &[ADMIN_GROUP]))).await;
    assert_eq!(names(&r), ["github", "jira"], "{r:?}");
    // No grant: an empty catalog, not an error.
    let r = catalog(Some(env.user_token(CAROL, &[]))).await;
    assert_eq!((r.status, names(&r).len()), (200, 0), "{r:?}");
    let r = catalog(None).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("www-authenticate").is_some(), "{r:?}");
    // Nothing of it reached the upstream.
    let log = env.upstream_log().await;
    assert!(
        log.received.iter().all(|q| q.path != "/mcp"),
        "{:?}",
        log.received
    );
}

/// Prompts, resources and resource templates of a real SDK server (Python) through the filter:
/// each list arrives whole and well-formed for a caller who may use the server (the policy
/// grants them with the server), with its id; a caller without the server is refused the list
/// itself.
#[tokio::test]
async fn prompts_resources_and_templates_lists_of_a_python_server() {
    let env = TestEnv::start(Options {
        upstream: Upstream::Python,
        ..Options::default()
    })
    .await;
    let token = env.user_token(BOB, &[ENG_GROUP]);
    let sid = env.open_session("/mcp/github", &token).await;
    for (id, method, key, item, want) in [
        (11, "prompts/list", "prompts", "name", "review"),
        (
            12,
            "resources/list",
            "resources",
            "uri",
            "file:///readme.md",
        ),
        (
            13,
            "resources/templates/list",
            "resourceTemplates",
            "uriTemplate",
            "file:///repos/{name}",
        ),
    ] {
        let r = env
            .post(
                "/mcp/github",
                Some(&token),
                &list_body(id, method),
                &[("mcp-session-id", &sid)],
            )
            .await;
        assert_eq!(r.status, 200, "{method}: {r:?}");
        let msg = message_of(&r);
        assert_eq!(msg["id"], id, "{method}: {msg}");
        let names: Vec<&str> = msg["result"][key]
            .as_array()
            .map(|a| a.iter().filter_map(|i| i[item].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, [want], "{method}: {msg}");
    }
    let sales = env.user_token(CAROL, &[SALES_GROUP]);
    let r = env
        .post(
            "/mcp/github",
            Some(&sales),
            &list_body(14, "prompts/list"),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    // Every one of them went through the filter (none was refused or passed unread).
    let metrics = scrape_metrics(&env.http, env.authz.admin).await;
    for method in ["prompts/list", "resources/list", "resources/templates/list"] {
        let series = format!("mcp_authz_lists_total{{method=\"{method}\",result=\"filtered\"}} 1");
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }
}
