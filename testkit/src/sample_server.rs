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
    /// The server's name (`/mcp/<name>`): the audience of the identity assertions it accepts.
    name: String,
    verifier: Option<Arc<IdentityVerifier>>,
    /// Tools per `tools/list` page; `None` answers them all at once.
    page_size: Option<usize>,
}

impl SampleServer {
    pub fn new(log: ReceivedLog, name: String, verifier: Option<Arc<IdentityVerifier>>) -> Self {
        Self {
            tool_router: Self::tool_router(),
            log,
            name,
            verifier,
            page_size: None,
        }
    }

    /// The tools of one `tools/list` page. Paged, they come in name order and the cursor is
    /// the index of the page's first tool (opaque to the client, as MCP requires).
    fn tool_page(
        &self,
        cursor: Option<&str>,
    ) -> Result<(Vec<rmcp::model::Tool>, Option<String>), rmcp::ErrorData> {
        let mut tools = self.tool_router.list_all();
        let Some(size) = self.page_size.filter(|s| *s > 0) else {
            return Ok((tools, None));
        };
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        let start = match cursor {
            None => 0,
            Some(c) => c
                .parse::<usize>()
                .ok()
                .filter(|s| *s < tools.len())
                .ok_or_else(|| rmcp::ErrorData::invalid_params("unknown cursor", None))?,
        };
        let end = (start + size).min(tools.len());
        let next = (end < tools.len()).then(|| end.to_string());
        Ok((tools.drain(start..end).collect(), next))
    }
}

/// How the sample server answers: the Streamable HTTP answer form and `tools/list` paging.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// Stateless, answering `application/json` (rmcp's `json_response`, which it honours only
    /// without legacy sessions); otherwise sessions and event streams.
    pub json: bool,
    /// Tools per `tools/list` page (`nextCursor`); `None` lists them all at once.
    pub page_size: Option<usize>,
}

/// How an upstream written with rmcp verifies mcp-authz's identity assertion
/// (`x-mcp-identity-assertion`): an ES256 JWS checked with aws-lc-rs against the gateway's
/// JWKS (fetched on first use and again on an unknown `kid`, at most every few seconds), its
/// issuer, this server's name as audience, and its lifetime. Written here on its own, not with
/// mcp-authz's code, as any upstream would.
pub struct IdentityVerifier {
    jwks_url: String,
    issuer: String,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<(Option<std::time::Instant>, serde_json::Value)>,
}

impl IdentityVerifier {
    pub fn new(jwks_url: String, issuer: String) -> Self {
        IdentityVerifier {
            jwks_url,
            issuer,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            keys: tokio::sync::Mutex::new((None, serde_json::Value::Null)),
        }
    }

    /// The verified `oid`, or why not.
    pub async fn verify(&self, token: &str, audience: &str) -> Result<String, String> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWS".into());
        };
        let json = |p: &str| -> Result<serde_json::Value, String> {
            let bytes = B64.decode(p).map_err(|_| "bad base64url")?;
            serde_json::from_slice(&bytes).map_err(|_| "bad JSON".to_string())
        };
        let header = json(h)?;
        if header["alg"] != "ES256" {
            return Err("alg".into());
        }
        let kid = header["kid"].as_str().ok_or("no kid")?;
        let jwk = self.key(kid).await?;
        let mut point = vec![4u8];
        for coord in ["x", "y"] {
            let b = B64
                .decode(jwk[coord].as_str().unwrap_or_default())
                .map_err(|_| "bad key")?;
            point.extend(b);
        }
        let sig = B64.decode(s).map_err(|_| "bad signature encoding")?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| "signature")?;
        let claims = json(c)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let num = |k: &str| claims[k].as_u64().ok_or(format!("no {k}"));
        if claims["iss"] != self.issuer.as_str() {
            return Err("iss".into());
        }
        if claims["aud"] != audience {
            return Err("aud".into());
        }
        if num("exp")? <= now || num("nbf")? > now + 60 || num("exp")? - num("iat")? > 300 {
            return Err("lifetime".into());
        }
        claims["oid"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "no oid".into())
    }

    async fn key(&self, kid: &str) -> Result<serde_json::Value, String> {
        let find = |jwks: &serde_json::Value| {
            jwks["keys"]
                .as_array()
                .and_then(|keys| keys.iter().find(|k| k["kid"] == kid).cloned())
        };
        let mut keys = self.keys.lock().await;
        if let Some(k) = find(&keys.1) {
            return Ok(k);
        }
        // An unknown kid (first use, or a rotated key): fetch again, at most every 2 s.
        if keys
            .0
            .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(2))
        {
            return Err("unknown kid".into());
        }
        keys.0 = Some(std::time::Instant::now());
        let fetched: serde_json::Value = self
            .http
            .get(&self.jwks_url)
            .send()
            .await
            .map_err(|_| "JWKS unreachable")?
            .json()
            .await
            .map_err(|_| "JWKS not JSON")?;
        keys.1 = fetched;
        find(&keys.1).ok_or_else(|| "unknown kid".into())
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
    async fn whoami(&self, Extension(parts): Extension<http::request::Parts>) -> String {
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
        let assertion = parts
            .headers
            .get("x-mcp-identity-assertion")
            .and_then(|v| v.to_str().ok());
        let verified = match (assertion, &self.verifier) {
            (None, _) => "absent".to_string(),
            (Some(_), None) => "invalid: no verifier configured".to_string(),
            (Some(token), Some(v)) => match v.verify(token, &self.name).await {
                Ok(oid) => format!("verified {oid}"),
                Err(why) => format!("invalid: {why}"),
            },
        };
        seen.insert("identity-verified".into(), verified);
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
    async fn list_tools(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let (tools, next_cursor) =
            self.tool_page(request.as_ref().and_then(|r| r.cursor.as_deref()))?;
        // As rmcp's own generated handler answers, with the cursor of the next page.
        let supports_cache_hints = context
            .protocol_version()
            .is_some_and(|version| version >= rmcp::model::ProtocolVersion::V_2026_07_28);
        Ok(rmcp::model::ListToolsResult {
            result_type: Some(rmcp::model::ResultType::COMPLETE),
            tools,
            meta: None,
            next_cursor,
            ttl_ms: supports_cache_hints.then_some(0),
            cache_scope: supports_cache_hints.then_some(rmcp::model::CacheScope::Public),
        })
    }

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
    router_verifying(names, log, None)
}

/// The router, with whoami verifying identity assertions when `verifier` is given.
pub fn router_verifying(
    names: &[String],
    log: ReceivedLog,
    verifier: Option<Arc<IdentityVerifier>>,
) -> Router {
    router_shaped(names, log, verifier, Shape::default())
}

/// The router, answering in the given shape.
pub fn router_shaped(
    names: &[String],
    log: ReceivedLog,
    verifier: Option<Arc<IdentityVerifier>>,
    shape: Shape,
) -> Router {
    let mut app = Router::new();
    for name in names {
        let config = StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .with_sse_keep_alive(None)
            .with_legacy_session_mode(!shape.json)
            .with_json_response(shape.json);
        let (for_tools, name_of, verifier) = (log.clone(), name.clone(), verifier.clone());
        let service: StreamableHttpService<SampleServer, LocalSessionManager> =
            StreamableHttpService::new(
                move || {
                    let mut server =
                        SampleServer::new(for_tools.clone(), name_of.clone(), verifier.clone());
                    server.page_size = shape.page_size;
                    Ok(server)
                },
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
