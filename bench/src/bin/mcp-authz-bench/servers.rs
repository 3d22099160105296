//! The two reference servers of the benchmark, each run as its own process so that its CPU can
//! be read from /proc: the upstream every Envoy row forwards to, and the no-op Check server.

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::rpc::Status;

/// The upstream: answers every request 200 with a small JSON-RPC result, on one thread, as an
/// MCP server's cheapest reply would look; a `tools/list` with [`LIST_TOOLS`] tools (each with
/// a description and an input schema, as real servers list them). Identical for every Envoy
/// row. For the MCP traffic row (m) it answers as a Streamable HTTP server does: `initialize`
/// with a new `Mcp-Session-Id`, a notification with 202 and no body, `DELETE` with 200, and a
/// `tools/call` with its own id, as an event stream when the id is even and as JSON when odd.
pub fn upstream(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let list: &'static str = Box::leak(tools_list_answer().into_boxed_str());
        let sessions = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let app = axum::Router::new().fallback(move |method: http::Method, body: String| {
            let sessions = sessions.clone();
            async move { answer(&method, &body, list, &sessions) }
        });
        axum::serve(mcp_authz_testkit::nodelay(listener), app).await?;
        Ok(())
    })
}

fn answer(
    method: &http::Method,
    body: &str,
    list: &'static str,
    sessions: &std::sync::atomic::AtomicU64,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    const JSON: &str = "application/json";
    if method == http::Method::DELETE {
        return http::StatusCode::OK.into_response();
    }
    let id = || {
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["id"].as_u64())
            .unwrap_or(0)
    };
    if body.contains(r#""tools/list""#) {
        // The answer carries the request's id (the list filter checks it).
        let answer = match id() {
            1 => list.to_string(),
            n => list.replacen(r#""id":1,"#, &format!(r#""id":{n},"#), 1),
        };
        return ([(http::header::CONTENT_TYPE, JSON)], answer).into_response();
    }
    if body.contains(r#""method":"notifications/"#) {
        return http::StatusCode::ACCEPTED.into_response();
    }
    if body.contains(r#""method":"initialize""#) {
        let n = sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return (
            [
                (http::header::CONTENT_TYPE, JSON.to_string()),
                (
                    http::HeaderName::from_static("mcp-session-id"),
                    format!("bench-session-{n:016x}"),
                ),
            ],
            format!(
                r#"{{"jsonrpc":"2.0","id":{},"result":{{"protocolVersion":"2025-11-25","capabilities":{{"tools":{{}}}},"serverInfo":{{"name":"bench","version":"1"}}}}}}"#,
                id()
            ),
        )
            .into_response();
    }
    if body.contains(r#""method":"tools/call""#) {
        let id = id();
        let result = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":"42 results for the query; the first is src/main.rs"}}],"isError":false}}}}"#
        );
        return if id.is_multiple_of(2) {
            (
                [(http::header::CONTENT_TYPE, "text/event-stream")],
                format!("event: message\ndata: {result}\n\n"),
            )
                .into_response()
        } else {
            ([(http::header::CONTENT_TYPE, JSON)], result).into_response()
        };
    }
    (
        [(http::header::CONTENT_TYPE, JSON)],
        r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
    )
        .into_response()
}

fn tools_list_answer() -> String {
    let tools: Vec<serde_json::Value> = (0..crate::LIST_TOOLS)
        .map(|i| {
            let name = if i % 2 == 0 { format!("even_{i:02}") } else { format!("odd_{i:02}") };
            serde_json::json!({
                "name": name,
                "description": format!("Tool number {i}: does one thing to a repository and reports what it did."),
                "inputSchema": {"type": "object", "properties": {"repo": {"type": "string"}, "limit": {"type": "integer"}}, "required": ["repo"]},
            })
        })
        .collect();
    serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}).to_string()
}

/// A Check server that answers OK at once: the cost of gRPC itself, with the same tonic build,
/// allocator and runtime as mcp-authz (`--workers` threads, built as mcp-authz builds its
/// runtime for that many; TCP_NODELAY).
/// With `capture`, the first CheckRequest it gets is written there (encoded), once.
///
/// With `verify` it does one thing more, and only that: it verifies the RS256 signature of the
/// request's bearer token with mcp-authz's own key type (aws-lc-rs, the key parsed once, found
/// by the header's `kid`) on every Check, with no cache and no claim read, and answers
/// UNAUTHENTICATED when it does not verify. That is the least any server that takes never-seen
/// tokens must do: a no-op Check plus one RS256 verification, under the same load.
struct Noop {
    capture: std::sync::Mutex<Option<std::path::PathBuf>>,
    verify: Option<mcp_authz::identity::KeyStore>,
}

/// The bearer token of a CheckRequest: the raw header list (`encode_raw_headers`, as the
/// shipped Envoy sends it) or the merged map.
fn bearer(r: &CheckRequest) -> Option<&str> {
    let http = r.attributes.as_ref()?.request.as_ref()?.http.as_ref()?;
    let raw = http.header_map.as_ref().and_then(|m| {
        m.headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case("authorization"))
            .and_then(|h| std::str::from_utf8(&h.raw_value).ok())
    });
    raw.or_else(|| http.headers.get("authorization").map(String::as_str))?
        .strip_prefix("Bearer ")
}

/// True when `token`'s RS256 signature verifies with the key its header names.
fn signature_verifies(keys: &mcp_authz::identity::KeyStore, token: &str) -> bool {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (Some(dot), Some(last)) = (token.find('.'), token.rfind('.')) else {
        return false;
    };
    let kid = b64
        .decode(&token[..dot])
        .ok()
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .and_then(|h| h["kid"].as_str().map(str::to_owned));
    let (Some(kid), Ok(sig)) = (kid, b64.decode(&token[last + 1..])) else {
        return false;
    };
    keys.keys_for(&kid)
        .is_some_and(|ks| ks.iter().any(|k| k.verify(&token.as_bytes()[..last], &sig)))
}

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(
        &self,
        r: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        if let Some(path) = self.capture.lock().ok().and_then(|mut c| c.take()) {
            std::fs::write(&path, prost::Message::encode_to_vec(r.get_ref()))
                .map_err(|e| tonic::Status::internal(format!("capture: {e}")))?;
        }
        // UNAUTHENTICATED when the signature does not verify.
        let code = match &self.verify {
            Some(keys) if !bearer(r.get_ref()).is_some_and(|t| signature_verifies(keys, t)) => 16,
            _ => 0,
        };
        Ok(tonic::Response::new(CheckResponse {
            status: Some(Status {
                code,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

/// The no-op server's second listener: every Check gets the same answer, mcp-authz's own allow
/// answer to a warm ping (its identity headers to set, its headers to remove), encoded once.
/// Envoy then does for each request all that mcp-authz's answer makes it do, while the server
/// does as little as a Check server can: it reads the request to its end (not decoding it) and
/// writes the answer's bytes, one message and `grpc-status: 0`, as mcp-authz's own Check path
/// writes an answer. Through tonic's unary path with prost's decode, the same listener cost
/// 0.24 s/10k, more CPU per Check than mcp-authz's whole Check (0.22-0.23).
#[derive(Clone)]
struct Answering {
    /// The answer as one gRPC message: no compression, its length, its bytes.
    message: prost::bytes::Bytes,
}

impl Answering {
    /// Answers every Check with `answer`, an encoded CheckResponse.
    fn new(answer: &[u8]) -> Self {
        let mut message = prost::bytes::BytesMut::with_capacity(5 + answer.len());
        prost::bytes::BufMut::put_u8(&mut message, 0);
        prost::bytes::BufMut::put_u32(&mut message, answer.len() as u32);
        prost::bytes::BufMut::put_slice(&mut message, answer);
        Self {
            message: message.freeze(),
        }
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for Answering
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let message = self.message.clone();
        Box::pin(async move {
            if req.uri().path() != "/envoy.service.auth.v3.Authorization/Check" {
                return Ok(tonic::Status::unimplemented("only Check").into_http());
            }
            let mut body = std::pin::pin!(req.into_body());
            while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                if frame.is_err() {
                    return Ok(tonic::Status::internal("request body").into_http());
                }
            }
            // The body mcp-authz's own Check path answers with: the message, then the trailers.
            let mut response =
                http::Response::new(tonic::body::Body::new(mcp_authz::grpc::GrpcBody::Answer {
                    message: Some(message),
                    trailers_sent: false,
                }));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            Ok(response)
        })
    }
}

impl tonic::server::NamedService for Answering {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

/// The no-op server of [`Noop`]; with `answering`, a second listener in the same process whose
/// Checks all get the answer in that file (an encoded CheckResponse): [`Answering`].
pub fn noop(
    listen: std::net::SocketAddr,
    workers: usize,
    capture: Option<std::path::PathBuf>,
    verify_jwks: Option<std::path::PathBuf>,
    answering: Option<(std::net::SocketAddr, std::path::PathBuf)>,
) -> anyhow::Result<()> {
    use mcp_authz::identity::{KeySet, KeyStore};
    let verify = match verify_jwks {
        Some(p) => {
            let bytes = std::fs::read(&p)?;
            let keys = KeySet::from_jwks(&bytes, &p.display().to_string())
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            Some(KeyStore::fixed(keys))
        }
        None => None,
    };
    let answering = match answering {
        Some((addr, p)) => {
            let bytes = std::fs::read(&p)?;
            <CheckResponse as prost::Message>::decode(bytes.as_slice())
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            Some((addr, Answering::new(&bytes)))
        }
        None => None,
    };
    // The runtime mcp-authz builds for the same `runtime.worker_threads`.
    let rt = mcp_authz::config::runtime_builder(&mcp_authz::config::RuntimeConfig {
        worker_threads: Some(workers.max(1)),
    })
    .enable_all()
    .build()?;
    rt.block_on(async move {
        // mcp-authz's own TCP transport (no Nagle delay, unvectored writes): without it an
        // answer of 256 bytes or more (the answering listener's identity headers) was written
        // by itself, a `writev` per Check that mcp-authz does not make.
        let incoming = |addr| async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            anyhow::Ok(mcp_authz::grpc::tcp_connections(listener))
        };
        let plain = async {
            tonic::transport::Server::builder()
                .add_service(AuthorizationServer::new(Noop {
                    capture: std::sync::Mutex::new(capture),
                    verify,
                }))
                .serve_with_incoming(incoming(listen).await?)
                .await?;
            anyhow::Ok(())
        };
        match answering {
            Some((addr, service)) => {
                let answering = async {
                    tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(incoming(addr).await?)
                        .await?;
                    anyhow::Ok(())
                };
                tokio::try_join!(plain, answering)?;
            }
            None => plain.await?,
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{
        HeaderValue, HeaderValueOption, header_value_option,
    };
    use envoy_types::pb::envoy::service::auth::v3::OkHttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;

    /// Row (c-noop-id) measures Envoy doing what mcp-authz's answer makes it do: the answering
    /// listener must give that answer, exactly, to every Check (a bare OK would measure
    /// (c-noop) again).
    #[tokio::test]
    async fn the_answering_listener_gives_every_check_the_recorded_answer() {
        let answer = CheckResponse {
            status: Some(Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "x-mcp-user-oid".into(),
                        value: "00000000-0000-4000-8000-000000000001".into(),
                        raw_value: Vec::new(),
                    }),
                    append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd
                        as i32,
                    ..Default::default()
                }],
                headers_to_remove: vec!["authorization".into()],
                ..Default::default()
            })),
            dynamic_metadata: None,
        };
        let bytes = prost::Message::encode_to_vec(&answer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Answering::new(&bytes))
                .serve_with_incoming(incoming),
        );
        let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = AuthorizationClient::new(channel);
        for token in ["first", "second"] {
            let got = client
                .check(mcp_authz::grpc::http_check_request(
                    Some(token),
                    "/mcp/github",
                    b"{}",
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got, answer);
        }
    }
}
