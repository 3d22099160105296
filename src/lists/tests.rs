//! The list filter, case by case: what each caller sees, and every hostile answer refused.

use super::*;
use crate::ids::{DirectoryId, GroupId, ObjectId, ServerName};
use crate::policy::{PolicyDocument, Snapshot};

const TID: &str = "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c";
const ENG: &str = "e0000000-0000-4000-8000-0000000000e1";
const SALES: &str = "50000000-0000-4000-8000-000000000051";
const BOB: &str = "00000000-0000-4000-8000-000000000b0b";

const DOC: &str = r#"
tenants:
  - {name: engineering, servers: [github]}
  - {name: sales, servers: [github]}
servers:
  - {name: github}
  - {name: shadowed, shadow: true, tools_default: deny}
group_grants:
  - {group: "e0000000-0000-4000-8000-0000000000e1", tenant: engineering, access_level: read}
  - {group: "50000000-0000-4000-8000-000000000051", tenant: sales, access_level: write}
tool_rules:
  - {server: github, tool: "delete_*", effect: deny}
  - {server: github, tool: "merge_*", effect: allow, min_access_level: write}
"#;

fn snap() -> Snapshot {
    let doc: PolicyDocument = serde_yaml_ng::from_str(DOC).expect("yaml");
    Snapshot::compile(&doc, "test", &[]).expect("compiles")
}

fn caller(kind: ListKind, group: &str) -> ListCaller {
    ListCaller {
        kind,
        server: ServerName::parse("github").expect("name"),
        tid: DirectoryId::parse(TID).expect("tid"),
        oid: ObjectId::parse(BOB).expect("oid"),
        upn: None,
        groups: vec![GroupId::parse(group).expect("group")],
        rpc_id: "7".into(),
    }
}

fn tools_answer(id: &str, names: &[&str]) -> String {
    let tools: Vec<String> = names
        .iter()
        .map(|n| format!(r#"{{"name":"{n}","inputSchema":{{"type":"object"}}}}"#))
        .collect();
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":[{}],"nextCursor":"c2","_meta":{{"k":1}}}}}}"#,
        tools.join(",")
    )
}

fn names_in(body: &[u8], key: &str, item: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    v["result"][key]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| t[item].as_str().expect("name").to_owned())
        .collect()
}

fn filtered(r: Result<Rewrite, ListError>) -> (Vec<u8>, usize) {
    match r {
        Ok(Rewrite::Filtered { body, hidden, .. }) => (body, hidden),
        other => panic!("not filtered: {other:?}"),
    }
}

#[test]
fn each_caller_sees_exactly_the_tools_it_may_call() {
    let snap = snap();
    let all = ["echo", "delete_repository", "merge_pr"];
    let answer = tools_answer("7", &all);
    // Engineering reads: delete_* is denied, merge_* needs write.
    let (body, hidden) = filtered(rewrite(
        &snap,
        &caller(ListKind::Tools, ENG),
        answer.as_bytes(),
    ));
    assert_eq!(names_in(&body, "tools", "name"), ["echo"]);
    assert_eq!(hidden, 2);
    // Sales writes: merge_pr is theirs too.
    let (body, _) = filtered(rewrite(
        &snap,
        &caller(ListKind::Tools, SALES),
        answer.as_bytes(),
    ));
    assert_eq!(names_in(&body, "tools", "name"), ["echo", "merge_pr"]);
    // What else the result and each item held is kept.
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(v["id"], 7);
    assert_eq!(v["result"]["nextCursor"], "c2");
    assert_eq!(v["result"]["_meta"]["k"], 1);
    assert_eq!(v["result"]["tools"][0]["inputSchema"]["type"], "object");
}

/// A filtered list is the caller's own: a result with caching hints (MCP 2026-07-28) is marked
/// private, so that no shared cache serves it to another caller; one without them gets none.
#[test]
fn a_filtered_list_with_caching_hints_is_marked_private() {
    let snap = snap();
    let who = caller(ListKind::Tools, ENG);
    let body = br#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"echo"}],"ttlMs":60000,"cacheScope":"public"}}"#;
    let (out, _) = filtered(rewrite(&snap, &who, body));
    let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(v["result"]["cacheScope"], "private");
    assert_eq!(v["result"]["ttlMs"], 60000);
    let (out, _) = filtered(rewrite(
        &snap,
        &who,
        tools_answer("7", &["echo"]).as_bytes(),
    ));
    let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    assert!(v["result"].get("cacheScope").is_none(), "{v}");
}

#[test]
fn an_item_is_listed_if_and_only_if_its_call_is_allowed() {
    let snap = snap();
    for group in [ENG, SALES] {
        let who = caller(ListKind::Tools, group);
        for tool in ["echo", "delete_repository", "merge_pr", "merge_x"] {
            let facts = crate::mcp::RequestFacts {
                server: who.server.clone(),
                call: crate::mcp::Call::Rpc(crate::mcp::RpcFacts {
                    method: Some("tools/call".into()),
                    tool: crate::ids::ToolName::parse(tool),
                    uri: None,
                    prompt: None,
                }),
            };
            let subject = crate::policy::Subject {
                tid: &who.tid,
                oid: &who.oid,
                upn: None,
                groups: &who.groups,
            };
            let allowed = crate::policy::decide(&snap, &subject, &facts)
                .result
                .is_ok();
            assert_eq!(
                visible(&snap, &who, tool).is_ok(),
                allowed,
                "{group} {tool}"
            );
        }
    }
}

#[test]
fn shadow_mode_lists_what_it_would_deny() {
    let snap = snap();
    let mut who = caller(ListKind::Tools, ENG);
    who.server = ServerName::parse("shadowed").expect("name");
    // Nothing is granted on `shadowed` and its tools default to deny; shadow mode allows the
    // calls, so the list shows them.
    assert!(visible(&snap, &who, "anything").is_ok());
}

#[test]
fn prompts_resources_and_templates_are_filtered_by_their_own_calls() {
    let snap = snap();
    let body = br#"{"jsonrpc":"2.0","id":7,"result":{"prompts":[{"name":"p1"},{"description":"no name"}]}}"#;
    let (out, hidden) = filtered(rewrite(&snap, &caller(ListKind::Prompts, ENG), body));
    assert_eq!(names_in(&out, "prompts", "name"), ["p1"]);
    assert_eq!(hidden, 1, "an item without a name names no call");
    let body = br#"{"jsonrpc":"2.0","id":7,"result":{"resources":[{"uri":"file:///a"}]}}"#;
    let (out, _) = filtered(rewrite(&snap, &caller(ListKind::Resources, ENG), body));
    assert_eq!(names_in(&out, "resources", "uri"), ["file:///a"]);
    let body = br#"{"jsonrpc":"2.0","id":7,"result":{"resourceTemplates":[{"uriTemplate":"file:///{x}"}]}}"#;
    let (out, _) = filtered(rewrite(
        &snap,
        &caller(ListKind::ResourceTemplates, ENG),
        body,
    ));
    assert_eq!(
        names_in(&out, "resourceTemplates", "uriTemplate"),
        ["file:///{x}"]
    );
}

/// Attack: an item with two names, the first allowed and the second denied (or the reverse):
/// a client whose parser keeps another duplicate than ours would see a denied tool. The item is
/// re-encoded with the one name decided on.
#[test]
fn duplicate_keys_cannot_smuggle_a_denied_item() {
    let snap = snap();
    let who = caller(ListKind::Tools, ENG);
    for body in [
        r#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"delete_repository","name":"echo"}]}}"#,
        r#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"echo","name":"delete_repository"}]}}"#,
        r#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"echo"}],"tools":[{"name":"delete_repository"}]}}"#,
        r#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"delete_repository"}]},"result":{"tools":[{"name":"echo"}]}}"#,
    ] {
        match rewrite(&snap, &who, body.as_bytes()) {
            Ok(Rewrite::Filtered { body: out, .. }) => {
                let text = String::from_utf8(out).expect("UTF-8");
                assert!(!text.contains("delete_repository"), "{body} → {text}");
            }
            Err(_) => {}
            Ok(Rewrite::Unchanged) => panic!("{body} passed unchanged"),
        }
    }
}

/// Attack: answers a client would read as a list but the filter cannot: each is refused,
/// never passed.
#[test]
fn malformed_answers_fail_closed() {
    let snap = snap();
    let who = caller(ListKind::Tools, ENG);
    let huge = tools_answer("7", &["echo"])
        .replace("\"echo\"", &format!("\"{}\"", "e".repeat(MAX_LIST_BYTES)));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "truncated",
            tools_answer("7", &["echo"]).as_bytes()[..30].to_vec(),
        ),
        ("not JSON", b"tools: echo, delete_repository".to_vec()),
        (
            "a batch",
            format!("[{}]", tools_answer("7", &["echo"])).into_bytes(),
        ),
        (
            "another id",
            tools_answer("8", &["delete_repository"]).into_bytes(),
        ),
        (
            "id 7 as a string",
            tools_answer("\"7\"", &["delete_repository"]).into_bytes(),
        ),
        (
            "no tools array",
            br#"{"jsonrpc":"2.0","id":7,"result":{"Tools":[{"name":"delete_repository"}]}}"#
                .to_vec(),
        ),
        (
            "tools not an array",
            br#"{"jsonrpc":"2.0","id":7,"result":{"tools":{"name":"delete_repository"}}}"#.to_vec(),
        ),
        (
            "result and error",
            br#"{"jsonrpc":"2.0","id":7,"result":{"tools":[]},"error":{"code":1,"message":"x"}}"#
                .to_vec(),
        ),
        (
            "invalid UTF-8",
            [
                &tools_answer("7", &["delete_repository"]).as_bytes()[..40],
                b"\xff\xfe",
            ]
            .concat(),
        ),
        ("too large", huge.into_bytes()),
    ];
    for (what, body) in cases {
        assert!(
            rewrite(&snap, &who, &body).is_err(),
            "{what} was not refused"
        );
    }
    // An error answer holds no list: it passes as it came.
    let error = br#"{"jsonrpc":"2.0","id":7,"error":{"code":-32601,"message":"no"}}"#;
    assert_eq!(rewrite(&snap, &who, error), Ok(Rewrite::Unchanged));
}

fn run_sse(chunks: &[&[u8]], who: &ListCaller) -> (Vec<u8>, Option<ListError>) {
    let snap = snap();
    let mut sse = SseRewriter::default();
    let mut out = Vec::new();
    let mut decide = |d: &[u8]| rewrite(&snap, who, d);
    let error_event =
        |e: &ListError| format!("event: message\ndata: ERROR {}\n\n", e.code()).into_bytes();
    for (i, c) in chunks.iter().enumerate() {
        match sse.push(c, i + 1 == chunks.len(), &mut decide, &error_event) {
            Ok(bytes) => out.extend(bytes),
            Err((bytes, e)) => {
                out.extend(bytes);
                return (out, Some(e));
            }
        }
    }
    (out, None)
}

/// The events a client would dispatch: their data.
fn client_events(stream: &[u8]) -> Vec<String> {
    let text = String::from_utf8(stream.to_vec()).expect("UTF-8 stream");
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    text.split("\n\n")
        .filter_map(|ev| {
            let data: Vec<&str> = ev
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("data:")
                        .map(|d| d.strip_prefix(' ').unwrap_or(d))
                })
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

#[test]
fn an_event_stream_is_filtered_at_every_chunk_boundary_and_line_ending() {
    let who = caller(ListKind::Tools, ENG);
    let note = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"é"}}"#;
    let list = tools_answer("7", &["echo", "delete_repository", "merge_pr"]);
    for eol in ["\n", "\r\n", "\r"] {
        let stream = format!(
            ": primed{eol}{eol}id: 1{eol}event: message{eol}data: {note}{eol}{eol}id: 2{eol}event: message{eol}data: {list}{eol}{eol}"
        );
        let bytes = stream.as_bytes();
        // Every split point, so chunks end inside a line, a CRLF and the two bytes of "é".
        for cut in 0..bytes.len() {
            let (out, err) = run_sse(&[&bytes[..cut], &bytes[cut..]], &who);
            assert_eq!(err, None, "eol {eol:?} cut {cut}");
            let events = client_events(&out);
            assert_eq!(events.len(), 2, "eol {eol:?} cut {cut}: {events:?}");
            assert_eq!(events[0], note, "a notification passes untouched");
            assert_eq!(names_in(events[1].as_bytes(), "tools", "name"), ["echo"]);
            let text = String::from_utf8_lossy(&out);
            assert!(text.contains("id: 2"), "the event id is kept: {text}");
            assert!(!text.contains("delete_repository"), "eol {eol:?} cut {cut}");
        }
    }
}

#[test]
fn a_list_split_over_data_lines_is_read_as_the_client_reads_it() {
    let who = caller(ListKind::Tools, ENG);
    let list = tools_answer("7", &["echo", "delete_repository"]);
    let (head, tail) = list.split_at(list.find("delete").expect("in it"));
    let stream = format!("data: {head}\ndata:{tail}\n\n");
    // Cut inside the name: joined with LF, the data has a raw newline in a string, which is
    // invalid JSON for every client too → refused.
    let (out, err) = run_sse(&[stream.as_bytes()], &who);
    assert!(err.is_some(), "{}", String::from_utf8_lossy(&out));
    assert!(!String::from_utf8_lossy(&out).contains("delete_repository"));
    // Cut between tokens instead, it is valid JSON and filtered.
    let cut = list.find("\"tools\"").expect("in it");
    let stream = format!("data: {}\ndata: {}\n\n", &list[..cut], &list[cut..]);
    let (out, err) = run_sse(&[stream.as_bytes()], &who);
    assert_eq!(err, None);
    assert_eq!(
        names_in(client_events(&out)[0].as_bytes(), "tools", "name"),
        ["echo"]
    );
}

/// Attack: a hostile upstream's stream — invalid JSON, truncated, oversized, an event split
/// mid-UTF-8 then never finished — never shows the unfiltered list; the client gets an error
/// event for its request (or nothing, for an event the stream never finished).
#[test]
fn hostile_event_streams_never_leak_the_list() {
    let who = caller(ListKind::Tools, ENG);
    let list = tools_answer("7", &["echo", "delete_repository"]);
    let invalid = format!("data: {}\n\n", &list[..list.len() - 3]);
    let (out, err) = run_sse(&[invalid.as_bytes()], &who);
    assert!(err.is_some());
    assert!(String::from_utf8_lossy(&out).contains("ERROR list_malformed"));
    // Truncated: the stream ends without the blank line; SSE clients drop the event, so do we.
    let truncated = format!("data: {list}\n");
    let (out, err) = run_sse(&[truncated.as_bytes()], &who);
    assert_eq!((out.as_slice(), err), (&b""[..], None));
    // Split mid-UTF-8, then ended.
    let e_acute =
        "data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"tools\":[{\"name\":\"delete_repositoryé"
            .as_bytes();
    let (out, _) = run_sse(
        &[&e_acute[..e_acute.len() - 1], &e_acute[e_acute.len() - 1..]],
        &who,
    );
    assert!(!String::from_utf8_lossy(&out).contains("delete_repository"));
    // Oversized: an event that never ends past the bound.
    let big = vec![b'x'; MAX_LIST_BYTES + 1];
    let (out, err) = run_sse(&[b"data: ", &big, b"\n\n"], &who);
    assert_eq!(err, Some(ListError::TooLarge));
    assert!(String::from_utf8_lossy(&out).contains("ERROR list_too_large"));
    // After a failure nothing more passes.
    let after = format!("{invalid}data: {list}\n\n");
    let (out, _) = run_sse(&[after.as_bytes()], &who);
    assert!(!String::from_utf8_lossy(&out).contains("delete_repository"));
}

#[test]
fn the_checks_metadata_round_trips_and_a_tampered_one_is_refused() {
    let who = caller(ListKind::Prompts, SALES);
    let md = extproc::metadata_for_test(&who);
    assert_eq!(
        extproc::caller_from_metadata_for_test(&md),
        Some(who.clone())
    );
    let mut bad = md.clone();
    if let Some(s) = bad.filter_metadata.get_mut(METADATA_NAMESPACE) {
        s.fields.remove("oid");
    }
    assert_eq!(extproc::caller_from_metadata_for_test(&bad), None);
    let mut other = md;
    let ns = other
        .filter_metadata
        .remove(METADATA_NAMESPACE)
        .expect("ns");
    other
        .filter_metadata
        .insert("envoy.filters.http.other".into(), ns);
    assert_eq!(extproc::caller_from_metadata_for_test(&other), None);
}
