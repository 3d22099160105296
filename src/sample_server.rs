//! A sample upstream MCP server (rmcp, Streamable HTTP) for tests, `make demo` and `make bench`.
//!
//! Tools: `echo`, `whoami` (the identity headers the gateway set), `delete_repository` (a
//! "dangerous" tool that the sample policy denies). Every request's headers are recorded and
//! served at `GET /_received`, so tests can prove what reached the upstream (and what did not);
//! `GET /_log` answers the same requests and the tools that ran, in the shape the Python and
//! TypeScript peers of the conformance matrix use (`{"received": [...], "executed": [...]}`).
//! `GET /plain` answers 200 with no MCP at all, as a minimal upstream for benchmarks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};

/// Most requests kept in the received-headers log.
const LOG_CAPACITY: usize = 1000;

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct EchoArgs {
    pub text: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct DeleteArgs {
    pub name: String,
}

#[derive(Clone)]
pub struct SampleServer {
    tool_router: ToolRouter<Self>,
    log: ReceivedLog,
}

impl SampleServer {
    pub fn new(log: ReceivedLog) -> Self {
        Self {
            tool_router: Self::tool_router(),
            log,
        }
    }
}

#[tool_router]
impl SampleServer {
    #[tool(description = "Echo the text back")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        self.log.executed("echo");
        text
    }

    #[tool(description = "The identity headers the gateway set for this request")]
    fn whoami(&self, Extension(parts): Extension<http::request::Parts>) -> String {
        self.log.executed("whoami");
        let mut seen = BTreeMap::new();
        for (name, value) in &parts.headers {
            if name.as_str().starts_with("x-mcp-") {
                seen.insert(
                    name.as_str().to_owned(),
                    value.to_str().unwrap_or("?").to_owned(),
                );
            }
        }
        seen.insert(
            "authorization-present".into(),
            parts.headers.contains_key("authorization").to_string(),
        );
        serde_json::to_string(&seen).unwrap_or_default()
    }

    #[tool(description = "Delete a repository (dangerous; the sample policy denies it)")]
    fn delete_repository(&self, Parameters(DeleteArgs { name }): Parameters<DeleteArgs>) -> String {
        self.log.executed("delete_repository");
        format!("deleted {name}")
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SampleServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("Sample MCP server behind mcp-authz")
    }
}

/// One request as the upstream saw it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, Vec<String>>,
}

/// What reached the upstream: every request's headers, and the name of every tool that ran.
#[derive(Clone, Default)]
pub struct ReceivedLog {
    requests: Arc<Mutex<Vec<Received>>>,
    tools: Arc<Mutex<Vec<String>>>,
}

impl ReceivedLog {
    pub fn all(&self) -> Vec<Received> {
        self.requests.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The tools that ran, in order.
    pub fn tools_run(&self) -> Vec<String> {
        self.tools.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn executed(&self, tool: &str) {
        if let Ok(mut v) = self.tools.lock() {
            if v.len() >= LOG_CAPACITY {
                v.remove(0);
            }
            v.push(tool.to_owned());
        }
    }
}

async fn record(State(log): State<ReceivedLog>, request: Request, next: Next) -> Response {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in request.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let entry = Received {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        headers,
    };
    if let Ok(mut v) = log.requests.lock() {
        if v.len() >= LOG_CAPACITY {
            v.remove(0);
        }
        v.push(entry);
    }
    next.run(request).await
}

/// The router: MCP at `/mcp/<name>` for each name, plus `/_received` and `/plain`.
pub fn router(names: &[String], log: ReceivedLog) -> Router {
    let mut app = Router::new();
    for name in names {
        let config = StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .with_sse_keep_alive(None);
        let for_tools = log.clone();
        let service: StreamableHttpService<SampleServer, LocalSessionManager> =
            StreamableHttpService::new(
                move || Ok(SampleServer::new(for_tools.clone())),
                Default::default(),
                config,
            );
        app = app.nest_service(&format!("/mcp/{name}"), service);
    }
    let received = {
        let log = log.clone();
        get(move || {
            let log = log.clone();
            async move { axum::Json(log.all()).into_response() }
        })
    };
    let both = {
        let log = log.clone();
        get(move || {
            let log = log.clone();
            async move {
                axum::Json(serde_json::json!({"received": log.all(), "executed": log.tools_run()}))
                    .into_response()
            }
        })
    };
    app.layer(middleware::from_fn_with_state(log.clone(), record))
        .route("/_received", received)
        .route("/_log", both)
        .route("/plain", get(|| async { "ok" }))
}
