//! Filtered lists: each caller sees only the tools, prompts and resources it may use.
//!
//! ext_authz cannot see answers, so the answer to a list request goes through Envoy's external
//! processing filter, served by this module (`extproc.rs`) from the same binary and the same
//! policy snapshot as the Check:
//!
//! 1. The Check allows a `tools/list`, `prompts/list`, `resources/list` or
//!    `resources/templates/list` POST as any other, and names it in its dynamic metadata: the
//!    list method, the caller, the server and the request's JSON-RPC id ([`ListCaller`]).
//!    Envoy's composite filter, after ext_authz, creates the ext_proc filter for a request
//!    whose metadata holds the list method, and for no other: every other request, local
//!    replies included, never meets ext_proc, and no request meets it on the way in.
//! 2. ext_proc reads the answer's headers and asks for its body: whole for `application/json`,
//!    chunk by chunk for `text/event-stream` (`sse.rs`).
//! 3. The JSON-RPC response to the list request is rewritten (`filter.rs`): an item stays if
//!    and only if the call that names it would be allowed now ([`visible`], which runs the
//!    Check's own `policy::permit`).
//!
//! Fails closed: an answer that cannot be read as the upstream's client would read it
//! (malformed, oversized, compressed, another content type, no metadata from the Check) reaches
//! the client as a JSON-RPC error, never unfiltered.

mod extproc;
mod filter;
mod sse;

#[cfg(test)]
mod tests;

use crate::ids::{DirectoryId, GroupId, ObjectId, ServerName};

pub use extproc::{ExternalProcessorServer, ListFilterService, to_metadata};
pub use filter::{Hidden, MAX_LIST_BYTES, Rewrite, rewrite, visible};
pub use sse::SseRewriter;

/// The dynamic-metadata namespace of Envoy's ext_authz filter, forwarded to ext_proc.
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// A list method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl ListKind {
    pub const ALL: [ListKind; 4] = [
        ListKind::Tools,
        ListKind::Prompts,
        ListKind::Resources,
        ListKind::ResourceTemplates,
    ];

    /// The list method, e.g. `tools/list`.
    pub fn method(&self) -> &'static str {
        match self {
            ListKind::Tools => "tools/list",
            ListKind::Prompts => "prompts/list",
            ListKind::Resources => "resources/list",
            ListKind::ResourceTemplates => "resources/templates/list",
        }
    }

    /// From the name `explain --list` takes: `tools`, `prompts`, `resources`, `templates`.
    pub fn from_cli(name: &str) -> Option<Self> {
        match name {
            "tools" => Some(ListKind::Tools),
            "prompts" => Some(ListKind::Prompts),
            "resources" => Some(ListKind::Resources),
            "templates" | "resource-templates" => Some(ListKind::ResourceTemplates),
            _ => None,
        }
    }

    pub fn from_method(method: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.method() == method)
    }

    /// The call an item of the list names.
    pub fn call_method(&self) -> &'static str {
        match self {
            ListKind::Tools => "tools/call",
            ListKind::Prompts => "prompts/get",
            ListKind::Resources | ListKind::ResourceTemplates => "resources/read",
        }
    }

    /// The array of the result that holds the items.
    pub fn array_key(&self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::ResourceTemplates => "resourceTemplates",
        }
    }

    /// The member of an item that the call names it by.
    pub fn item_key(&self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
            ListKind::ResourceTemplates => "uriTemplate",
        }
    }
}

/// Who asked for a list, on which server, as the Check established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCaller {
    pub kind: ListKind,
    /// The route key the Check decided on.
    pub server: ServerName,
    pub tid: DirectoryId,
    pub oid: ObjectId,
    pub upn: Option<String>,
    /// The groups the Check decided with (from the token, or Graph on an overage).
    pub groups: Vec<GroupId>,
    /// The request's JSON-RPC id, as JSON text.
    pub rpc_id: String,
}

/// Why a list answer was not passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("the list answer is malformed: {0}")]
    Malformed(&'static str),
    #[error("the list answer is larger than {MAX_LIST_BYTES} bytes")]
    TooLarge,
    #[error("the list answer is {0}, which cannot be filtered")]
    Unreadable(&'static str),
    #[error("the request came without the Check's list metadata")]
    NoCaller,
}

impl ListError {
    /// The reason code, for the metric, the log and the client's error data.
    pub fn code(&self) -> &'static str {
        match self {
            ListError::Malformed(_) => "list_malformed",
            ListError::TooLarge => "list_too_large",
            ListError::Unreadable(_) => "list_unreadable",
            ListError::NoCaller => "list_no_caller",
        }
    }
}

/// The JSON-RPC error the client gets instead of a list that could not be filtered.
pub fn error_body(rpc_id: Option<&str>, e: &ListError) -> Vec<u8> {
    let id = rpc_id
        .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
        .unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": -32603,
            "message": "The server's list could not be filtered for this caller",
            "data": {"reason": e.code()},
        },
    }))
    .unwrap_or_default()
}
