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
/// row.
pub fn upstream(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let list: &'static str = Box::leak(tools_list_answer().into_boxed_str());
        let app = axum::Router::new().fallback(move |body: String| async move {
            let answer = if body.contains(r#""tools/list""#) {
                list
            } else {
                r#"{"jsonrpc":"2.0","id":1,"result":{}}"#
            };
            ([(http::header::CONTENT_TYPE, "application/json")], answer)
        });
        axum::serve(mcp_authz_testkit::nodelay(listener), app).await?;
        Ok(())
    })
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
/// allocator and runtime settings as mcp-authz (`--workers` threads, TCP_NODELAY).
struct Noop;

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(
        &self,
        _r: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(Status {
                code: 0,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

pub fn noop(listen: std::net::SocketAddr, workers: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(Noop))
            .serve_with_incoming(incoming)
            .await?;
        Ok(())
    })
}
