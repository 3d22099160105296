//! Test support for mcp-authz, in a crate of its own so that none of it ships in the production
//! build, and independent of mcp-authz so that the fakes do not share the code they test.
//!
//! - [`standin`]: the stand-in Entra ID / Microsoft Graph (wire format of the real ones).
//! - [`sa_issuer`]: a cluster's service-account token issuer, for workload identity.
//! - [`sample_server`]: a sample upstream MCP server (rmcp) for tests, `make demo` and benchmarks.
//! - [`free_port`]: a loopback port for a child process to bind later.
//! - [`nodelay`]: a listener whose connections send at once (`TCP_NODELAY`).

pub mod sa_issuer;
pub mod sample_server;
pub mod standin;

use std::time::{SystemTime, UNIX_EPOCH};

/// `listener` for `axum::serve`, with `TCP_NODELAY` on every accepted connection. Without it a
/// kept-alive connection stalls ~40 ms per answer written in more than one segment (an SSE
/// answer is): Nagle holds the last segment until the client's delayed ACK arrives. The sample
/// server answered 22 requests a second on one connection that way.
pub fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(|tcp| {
        // Only fails on a socket already closed; the connection then ends on its own.
        let _ = tcp.set_nodelay(true);
    })
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A loopback TCP port for a child process to bind later (Envoy's listener, the demo's ports,
/// a Redis server stopped and resumed).
///
/// Binding port 0 and releasing it is not enough: between the release and the child's bind, the
/// kernel hands the same port to any socket of the machine that asks for an ephemeral one (the
/// other tests' listeners, outgoing connections), and the child fails with "address already in
/// use". So the port comes from below the kernel's ephemeral range, where no port-0 bind lands,
/// and is reserved across processes with a lock file held until this process exits; it is
/// bound once to check that nothing else of the machine uses it.
pub fn free_port() -> std::io::Result<u16> {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Below the ephemeral range and above the well-known and the usual service ports.
    let (from, to) = (10_000u16, low.max(10_001));
    let dir = std::env::temp_dir().join("mcp-authz-test-ports");
    std::fs::create_dir_all(&dir)?;
    for _ in 0..1000 {
        let port = rand::random_range(from..to);
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{port}.lock")))
        else {
            continue;
        };
        if file.try_lock().is_err() {
            continue; // another process holds it
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue; // something else of the machine uses it
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
        return Ok(port);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port in {from}..{to} after 1000 tries"),
    ))
}
