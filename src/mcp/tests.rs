//! Request-fact parsing: servers from routes and paths, JSON-RPC bodies, hostile shapes.

use super::*;

fn post(body: &str) -> HttpView<'_> {
    HttpView {
        method: "POST",
        path: "/mcp/github",
        body: body.as_bytes(),
        content_type: HeaderField::One("application/json"),
        ..Default::default()
    }
}

fn facts(view: &HttpView<'_>) -> Result<RequestFacts, FactsError> {
    parse(view, "/mcp/").facts
}

fn rpc(view: &HttpView<'_>) -> Result<RpcFacts, FactsError> {
    facts(view).map(|f| match f.call {
        Call::Rpc(r) => r,
        other => panic!("not rpc: {other:?}"),
    })
}

#[test]
fn server_from_route_context_wins_over_path() {
    let mut v = post(r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#);
    v.route_server = Some("jira");
    assert_eq!(facts(&v).map(|f| f.server.to_string()), Ok("jira".into()));
}

#[test]
fn server_from_path() {
    for (path, server) in [
        ("/mcp/github", "github"),
        ("/mcp/github/", "github"),
        ("/mcp/github/sub/path", "github"),
        ("/mcp/github?session=1", "github"),
        ("/mcp/gh-2.x_y", "gh-2.x_y"),
    ] {
        let mut v = post(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        v.path = path;
        assert_eq!(
            facts(&v).map(|f| f.server.to_string()),
            Ok(server.into()),
            "{path}"
        );
    }
}

/// Attack: path tricks that try to be checked as one server and routed to another.
#[test]
fn attack_path_tricks_are_refused() {
    for path in [
        "/mcp/a/../github",
        "/mcp/../mcp/github",
        "/mcp/./github",
        "/mcp/git%68ub",
        "/mcp/github%2f..%2fjira",
        "/mcp/%2e%2e/jira",
        "/mcp/git hub",
        "/mcp/gith\u{00fc}b",
    ] {
        let mut v = post(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        v.path = path;
        assert_eq!(facts(&v), Err(FactsError::BadPath), "{path}");
    }
    for path in ["/other/github", "/mcp/", "/mcp", "/", ""] {
        let mut v = post(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        v.path = path;
        assert_eq!(facts(&v), Err(FactsError::NoServer), "{path}");
    }
}

#[test]
fn tools_call_yields_the_tool_name() {
    let v = post(
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#,
    );
    let r = rpc(&v).expect("parses");
    assert_eq!(r.method.as_deref(), Some("tools/call"));
    assert_eq!(r.tool.as_deref(), Some("echo"));
    assert!(parse(&v, "/mcp/").is_jsonrpc());
}

#[test]
fn resources_read_and_prompts_get_yield_their_names() {
    let v = post(
        r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///etc/motd"}}"#,
    );
    assert_eq!(
        rpc(&v).expect("ok").uri.as_deref(),
        Some("file:///etc/motd")
    );
    let v = post(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"summary"}}"#);
    assert_eq!(rpc(&v).expect("ok").prompt.as_deref(), Some("summary"));
}

#[test]
fn notifications_and_responses_are_accepted() {
    let v = post(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    assert_eq!(
        rpc(&v).expect("ok").method.as_deref(),
        Some("notifications/initialized")
    );
    let v = post(r#"{"jsonrpc":"2.0","id":"s-1","result":{}}"#);
    assert_eq!(rpc(&v).expect("ok").method, None);
    let v = post(r#"{"jsonrpc":"2.0","id":"s-1","error":{"code":1,"message":"no"}}"#);
    assert_eq!(rpc(&v).expect("ok").method, None);
}

#[test]
fn get_and_delete_need_no_body() {
    let v = HttpView {
        method: "GET",
        path: "/mcp/github",
        ..Default::default()
    };
    assert_eq!(facts(&v).map(|f| f.call), Ok(Call::OpenStream));
    let v = HttpView {
        method: "DELETE",
        path: "/mcp/github",
        ..Default::default()
    };
    assert_eq!(facts(&v).map(|f| f.call), Ok(Call::EndSession));
    for m in ["PUT", "PATCH", "OPTIONS", "HEAD", "TRACE", ""] {
        let v = HttpView {
            method: m,
            path: "/mcp/github",
            ..Default::default()
        };
        assert_eq!(facts(&v), Err(FactsError::MethodNotAllowed), "{m}");
    }
}

/// Attack: a batch, so that one message is checked and another executed.
#[test]
fn attack_batch_is_refused() {
    let v = post(
        r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_repository"}}]"#,
    );
    assert_eq!(facts(&v), Err(FactsError::Batch));
    let v = post("  \n [ ]");
    assert_eq!(facts(&v), Err(FactsError::Batch));
}

/// Attack: a body Envoy cut short must not be authorized on its visible part.
#[test]
fn attack_partial_body_is_refused() {
    let mut v = post(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#);
    v.partial_body = true;
    assert_eq!(facts(&v), Err(FactsError::BodyTruncated));
}

/// Attack: the same member twice, so this parser sees one tool and a last-wins upstream another.
#[test]
fn attack_duplicate_members_are_refused() {
    let v = post(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"delete_repository"}}"#,
    );
    assert_eq!(facts(&v), Err(FactsError::InvalidParams));
    let v = post(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}"#,
    );
    assert_eq!(facts(&v), Err(FactsError::NotJsonRpc));
}

#[test]
fn malformed_bodies_are_refused_with_their_reason() {
    for (body, err) in [
        ("", FactsError::EmptyBody),
        ("   ", FactsError::EmptyBody),
        ("hello", FactsError::InvalidJson),
        ("{", FactsError::InvalidJson),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"} {}"#,
            FactsError::InvalidJson,
        ),
        ("\"str\"", FactsError::InvalidJson),
        (r#"{"id":1,"method":"ping"}"#, FactsError::NotJsonRpc),
        (
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            FactsError::NotJsonRpc,
        ),
        (r#"{"jsonrpc":"2.0","id":1}"#, FactsError::NotJsonRpc),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            FactsError::NotJsonRpc,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            FactsError::InvalidParams,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":""}}"#,
            FactsError::InvalidParams,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#,
            FactsError::InvalidParams,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["echo"]}"#,
            FactsError::InvalidParams,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{}}"#,
            FactsError::InvalidParams,
        ),
    ] {
        assert_eq!(facts(&post(body)), Err(err), "{body}");
    }
}

/// Attack: invalid UTF-8 and very deep nesting (a parser-exhaustion attempt).
#[test]
fn attack_invalid_utf8_and_deep_nesting_are_refused() {
    let mut bytes =
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ec"#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(br#"ho"}}"#);
    let v = HttpView {
        method: "POST",
        path: "/mcp/github",
        body: &bytes,
        content_type: HeaderField::One("application/json"),
        ..Default::default()
    };
    assert!(facts(&v).is_err());
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{}{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert_eq!(facts(&post(&deep)), Err(FactsError::TooDeep));
    // The limit is exact; brackets inside strings do not count.
    // Depth: the envelope, params and arguments objects, then n arrays.
    let nest = |n: usize| {
        let open = "[".repeat(n);
        let close = "]".repeat(n);
        String::from(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"e","arguments":{"a":"#,
        ) + &open
            + r#""[[[[\"]""#
            + &close
            + "}}}"
    };
    assert!(facts(&post(&nest(MAX_JSON_DEPTH - 3))).is_ok());
    assert_eq!(
        facts(&post(&nest(MAX_JSON_DEPTH - 2))),
        Err(FactsError::TooDeep)
    );
}

/// Attack: `Mcp-Method`/`Mcp-Name` headers naming something other than the body.
#[test]
fn attack_mcp_headers_must_match_the_body() {
    let body =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_repository"}}"#;
    let mut v = post(body);
    v.mcp_method_header = Some("tools/call");
    v.mcp_name_header = Some("echo");
    assert_eq!(facts(&v), Err(FactsError::HeaderMismatch));
    v.mcp_name_header = Some("delete_repository");
    assert!(facts(&v).is_ok());
    v.mcp_method_header = Some("tools/list");
    assert_eq!(facts(&v), Err(FactsError::HeaderMismatch));
    let mut v = post(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    v.mcp_name_header = Some("echo");
    assert_eq!(facts(&v), Err(FactsError::HeaderMismatch));
}

#[test]
fn rpc_id_is_kept_for_error_bodies_even_when_facts_fail() {
    let v = post(r#"{"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{}}"#);
    let p = parse(&v, "/mcp/");
    assert_eq!(p.facts, Err(FactsError::InvalidParams));
    assert_eq!(p.rpc_id.map(|r| r.get()), Some("\"abc\""));
}

#[test]
fn error_codes_and_statuses() {
    assert_eq!(FactsError::BodyTruncated.http_status(), 413);
    assert_eq!(FactsError::MethodNotAllowed.http_status(), 405);
    assert_eq!(FactsError::NoServer.http_status(), 404);
    assert_eq!(FactsError::Batch.http_status(), 400);
    assert_eq!(FactsError::HeaderMismatch.rpc_code(), -32020);
    assert_eq!(FactsError::InvalidJson.rpc_code(), -32700);
}

fn with_headers<'a>(
    body: &'a str,
    content_type: HeaderField<'a>,
    content_encoding: HeaderField<'a>,
) -> HttpView<'a> {
    HttpView {
        content_type,
        content_encoding,
        ..post(body)
    }
}

const DENIED_AS_UTF7: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"+AGQ-elete_repository","arguments":{}}}"#;

/// Attack: a body whose tool name reads as harmless UTF-8 but as `delete_repository` in the
/// charset the request names (the TypeScript SDK's Express helper decodes `charset=utf-7`), or a
/// body the upstream inflates first. The Check must never read other bytes than the upstream.
#[test]
fn attack_another_charset_or_content_coding_is_refused_before_the_body_is_read() {
    use HeaderField::{Absent, One, Repeated};
    for ct in [
        One("application/json; charset=utf-7"),
        One("application/json;charset=UTF-16"),
        One("application/json; charset=utf-8; charset=utf-7"),
        One("application/json; charset=utf-8, application/json; charset=utf-7"),
        One("application/json; boundary=x"),
        One("application/json;"),
        One("application/json; charset = utf-8"),
        One("text/plain"),
        One("application/json-seq"),
        One("application/vnd.api+json"),
        One(""),
        Absent,
        Repeated,
    ] {
        let v = with_headers(DENIED_AS_UTF7, ct, Absent);
        assert_eq!(facts(&v), Err(FactsError::UnsupportedMediaType), "{ct:?}");
    }
    for ce in [
        One("gzip"),
        One("deflate"),
        One("br"),
        One("identity, gzip"),
        One(""),
        Repeated,
    ] {
        let v = with_headers(DENIED_AS_UTF7, One("application/json"), ce);
        assert_eq!(facts(&v), Err(FactsError::UnsupportedEncoding), "{ce:?}");
    }
    let e = FactsError::UnsupportedMediaType;
    assert_eq!((e.http_status(), e.code()), (415, "unsupported_media_type"));
    let e = FactsError::UnsupportedEncoding;
    assert_eq!(
        (e.http_status(), e.code()),
        (415, "unsupported_content_encoding")
    );
}

#[test]
fn plain_json_in_its_equivalent_spellings_is_read() {
    use HeaderField::{Absent, One};
    for ct in [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "application/json ;\tcharset=\"utf-8\"",
    ] {
        for ce in [Absent, One("identity"), One("IDENTITY")] {
            let v = with_headers(DENIED_AS_UTF7, One(ct), ce);
            assert_eq!(
                rpc(&v).map(|r| r.tool.map(|t| t.to_string())),
                Ok(Some("+AGQ-elete_repository".into())),
                "{ct} / {ce:?}"
            );
        }
    }
}

/// GET and DELETE carry no body: their content headers are not read.
#[test]
fn content_headers_do_not_matter_without_a_body() {
    for method in ["GET", "DELETE"] {
        let v = HttpView {
            method,
            path: "/mcp/github",
            content_type: HeaderField::One("text/plain; charset=utf-7"),
            content_encoding: HeaderField::One("gzip"),
            ..Default::default()
        };
        assert!(facts(&v).is_ok(), "{method}");
    }
}

/// A refused media type still answers in JSON-RPC (id null: the body was not read).
#[test]
fn a_refused_media_type_answers_with_a_null_jsonrpc_id() {
    let v = with_headers(
        DENIED_AS_UTF7,
        HeaderField::One("application/json; charset=utf-7"),
        HeaderField::Absent,
    );
    let parsed = parse(&v, "/mcp/");
    assert_eq!(parsed.rpc_id.map(RawValue::get), Some("null"));
}

/// The body's surrounding whitespace is JSON's own (RFC 8259), as the upstreams' parsers read
/// it: a form feed or a vertical tab is not JSON whitespace.
#[test]
fn only_json_whitespace_surrounds_the_body() {
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#;
    assert!(rpc(&post(&format!(" \t\r\n{body}\n\r\t "))).is_ok());
    for odd in ["\x0c", "\x0b"] {
        assert_eq!(
            rpc(&post(&format!("{odd}{body}"))),
            Err(FactsError::InvalidJson),
            "{odd:?} before"
        );
    }
    assert_eq!(rpc(&post(" \n ")), Err(FactsError::EmptyBody));
}
