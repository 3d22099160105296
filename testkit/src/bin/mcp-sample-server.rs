//! `mcp-sample-server`: the sample upstream MCP server for `make demo` and `make bench`.
//! Prints one JSON line with its URL on stdout once listening.

// A development program: it prints the address it listens on (scripts read it) and why it
// could not start.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;

use clap::Parser;
use mcp_authz_testkit::sample_server::{ReceivedLog, router};

#[derive(Parser)]
#[command(
    name = "mcp-sample-server",
    version,
    about = "Sample MCP server (development only)"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serve MCP at /mcp/<name>; repeatable.
    #[arg(long = "name", default_values_t = ["github".to_string(), "jira".to_string()])]
    names: Vec<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mcp-sample-server: bind {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Ok(a) = listener.local_addr() {
        println!("{}", serde_json::json!({"url": format!("http://{a}")}));
    }
    let app = router(&args.names, ReceivedLog::default());
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match axum::serve(mcp_authz_testkit::nodelay(listener), app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcp-sample-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
