//! One list answer filtered: a JSON-RPC response to `tools/list`, `prompts/list`,
//! `resources/list` or `resources/templates/list` rewritten to the items the caller may use.
//!
//! The answer is re-encoded, never patched: every object on the way to an item (the message,
//! its `result`, each item) is read as a map and written back with one value per key, so a
//! duplicate key (`{"name":"echo","name":"delete_repository"}`) can never show the client
//! another item than the one decided on. Everything else in `result` (`nextCursor`, `_meta`,
//! `ttlMs`) and in an item is kept as it came, but for `cacheScope`: a result with caching
//! hints (MCP 2026-07-28) is marked `private`, as it now holds what one caller may use.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::{ListCaller, ListError, ListKind};
use crate::ids::ToolName;
use crate::mcp::{Call, RequestFacts, RpcFacts};
use crate::policy::{self, DenyReason, Snapshot, Subject};

/// Largest list answer read (one JSON body, or one event of a stream).
pub const MAX_LIST_BYTES: usize = 4 << 20;

type Object = BTreeMap<String, Box<RawValue>>;

/// Why an item is not listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hidden {
    /// The policy refuses the call it names.
    Policy(DenyReason),
    /// It names nothing a call could name (no `name`/`uri`, or an empty one).
    NoName,
}

impl Hidden {
    pub fn code(&self) -> &'static str {
        match self {
            Hidden::Policy(r) => r.code(),
            Hidden::NoName => "no_name",
        }
    }
}

/// Whether `who` may use the item named `name` of a `kind` list: exactly whether the call that
/// names it (`tools/call`, `prompts/get`, `resources/read`) would be allowed now, shadow mode
/// included.
pub fn visible(snap: &Snapshot, who: &ListCaller, name: &str) -> Result<(), Hidden> {
    if name.is_empty() {
        return Err(Hidden::NoName);
    }
    let mut rpc = RpcFacts {
        method: Some(who.kind.call_method().to_owned()),
        tool: None,
        uri: None,
        prompt: None,
    };
    match who.kind {
        ListKind::Tools => rpc.tool = Some(ToolName::parse(name).ok_or(Hidden::NoName)?),
        ListKind::Prompts => rpc.prompt = Some(name.to_owned()),
        ListKind::Resources | ListKind::ResourceTemplates => rpc.uri = Some(name.to_owned()),
    }
    let facts = RequestFacts {
        server: who.server.clone(),
        call: Call::Rpc(rpc),
    };
    let subject = Subject {
        tid: &who.tid,
        oid: &who.oid,
        upn: who.upn.as_deref(),
        groups: &who.groups,
    };
    policy::lets_through(snap, &subject, &facts).map_err(Hidden::Policy)
}

/// What to do with one JSON-RPC message of the answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// Not the list (a request or notification of the server's, an error answer): as it came.
    Unchanged,
    /// The list answer, filtered and re-encoded; `hidden` items were left out.
    Filtered {
        body: Vec<u8>,
        kept: usize,
        hidden: usize,
    },
}

/// Filters one JSON-RPC message (`message`, UTF-8 JSON) answering `who`'s list request.
pub fn rewrite(snap: &Snapshot, who: &ListCaller, message: &[u8]) -> Result<Rewrite, ListError> {
    if message.len() > MAX_LIST_BYTES {
        return Err(ListError::TooLarge);
    }
    let text = std::str::from_utf8(message).map_err(|_| ListError::Malformed("not UTF-8"))?;
    let trimmed = text.trim_start_matches([' ', '\t', '\r', '\n']);
    if !trimmed.starts_with('{') {
        // An array (a batch) or a scalar is no answer to one request.
        return Err(ListError::Malformed("not a JSON-RPC message"));
    }
    let mut top: Object =
        serde_json::from_str(text).map_err(|_| ListError::Malformed("invalid JSON"))?;
    let is_response = top.contains_key("result") || top.contains_key("error");
    if !is_response {
        return if top.contains_key("method") {
            Ok(Rewrite::Unchanged)
        } else {
            Err(ListError::Malformed("neither a request nor a response"))
        };
    }
    let id = top
        .get("id")
        .ok_or(ListError::Malformed("response without id"))?;
    if !same_json(id.get(), &who.rpc_id) {
        // The only response on this request's stream is the one to it.
        return Err(ListError::Malformed("response to another request"));
    }
    let Some(result) = top.get("result") else {
        return Ok(Rewrite::Unchanged);
    };
    if top.contains_key("error") {
        return Err(ListError::Malformed("both result and error"));
    }
    let mut result: Object = serde_json::from_str(result.get())
        .map_err(|_| ListError::Malformed("result is not an object"))?;
    let key = who.kind.array_key();
    let items = result
        .get(key)
        .ok_or(ListError::Malformed("result without its list"))?;
    let items: Vec<Object> = serde_json::from_str(items.get())
        .map_err(|_| ListError::Malformed("list items are not objects"))?;
    let total = items.len();
    let mut kept = Vec::with_capacity(total);
    for item in items {
        let name = match item.get(who.kind.item_key()) {
            Some(raw) => serde_json::from_str::<String>(raw.get()).ok(),
            None => None,
        };
        if name.is_some_and(|n| visible(snap, who, &n).is_ok()) {
            kept.push(item);
        }
    }
    let kept_count = kept.len();
    result.insert(key.to_owned(), to_raw(&kept)?);
    // MCP 2026-07-28 caching hints: the list is now this caller's, never to be served to
    // another authorization context from a shared cache, whatever the server said.
    if result.contains_key("cacheScope") || result.contains_key("ttlMs") {
        result.insert("cacheScope".to_owned(), to_raw(&"private")?);
    }
    top.insert("result".to_owned(), to_raw(&result)?);
    let body = serde_json::to_vec(&top).map_err(|_| ListError::Malformed("re-encoding"))?;
    Ok(Rewrite::Filtered {
        body,
        kept: kept_count,
        hidden: total - kept_count,
    })
}

fn to_raw<T: serde::Serialize>(value: &T) -> Result<Box<RawValue>, ListError> {
    serde_json::value::to_raw_value(value).map_err(|_| ListError::Malformed("re-encoding"))
}

/// Whether two JSON texts are the same value (`1` and `1.0` are not: ids compare as sent).
fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
