//! The sample MCP server answered 22 requests a second on one kept-alive connection while it
//! lacked `TCP_NODELAY` (each SSE answer waited ~40 ms for the client's delayed ACK): anyone
//! who benchmarked through it measured the stall, not the gateway. The bench checks it before
//! measuring anything.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;

use crate::procs::{Proc, port_open, wait_for};

/// Sequential `tools/call`s on one connection: fewer than this a second is a stall, not a
/// slow machine (an unoptimised build answers several hundred).
const MIN_PER_SECOND: f64 = 200.0;
const REQUESTS: usize = 200;

/// The sample server's requests per second on one kept-alive connection; an error below
/// [`MIN_PER_SECOND`].
pub(crate) async fn sample_server_one_connection(exe: &Path, dir: &Path) -> anyhow::Result<f64> {
    let port = mcp_authz_bench::free_port()?;
    let mut cmd = tokio::process::Command::new(exe.with_file_name("mcp-sample-server"));
    cmd.args(["--name", "github", "--listen", &format!("127.0.0.1:{port}")]);
    let mut server = Proc::spawn("mcp-sample-server", cmd, dir)?;
    wait_for(&mut server, "port", || port_open(port)).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hi"}, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}},
    })
    .to_string();
    let url = format!("http://127.0.0.1:{port}/mcp/github");
    let started = Instant::now();
    for _ in 0..REQUESTS {
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "echo")
            .body(body.clone())
            .send()
            .await
            .context("sample server")?;
        anyhow::ensure!(r.status() == 200, "sample server answered {}", r.status());
        r.bytes().await?;
    }
    let rate = REQUESTS as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(
        rate >= MIN_PER_SECOND,
        "sanity check failed: the sample MCP server answers {rate:.0} requests/s on one connection (a Nagle stall?), below {MIN_PER_SECOND}"
    );
    Ok(rate)
}
