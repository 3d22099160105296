//! A sample upstream MCP server (rmcp, Streamable HTTP) for tests, `make demo` and `make bench`.
//!
//! Tools: `echo`, `whoami` (the identity headers the gateway set), `delete_repository` (a
//! "dangerous" tool that the sample policy denies). Every request's headers are recorded and
//! served at `GET /_received`, so tests can prove what reached the upstream (and what did not).
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
}

impl Default for SampleServer {
    fn default() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }
}

#[tool_router]
impl SampleServer {
    #[tool(description = "Echo the text back")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "The identity headers the gateway set for this request")]
    fn whoami(&self, Extension(parts): Extension<http::request::Parts>) -> String {
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

#[derive(Clone, Default)]
pub struct ReceivedLog(Arc<Mutex<Vec<Received>>>);

impl ReceivedLog {
    pub fn all(&self) -> Vec<Received> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
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
    if let Ok(mut v) = log.0.lock() {
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
        let service: StreamableHttpService<SampleServer, LocalSessionManager> =
            StreamableHttpService::new(|| Ok(SampleServer::default()), Default::default(), config);
        app = app.nest_service(&format!("/mcp/{name}"), service);
    }
    let received = {
        let log = log.clone();
        get(move || {
            let log = log.clone();
            async move { axum::Json(log.all()).into_response() }
        })
    };
    app.layer(middleware::from_fn_with_state(log.clone(), record))
        .route("/_received", received)
        .route("/plain", get(|| async { "ok" }))
}
