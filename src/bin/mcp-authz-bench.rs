//! `mcp-authz-bench` (run by `make bench`): direct gRPC Check load on loopback, in interleaved
//! rounds, against mcp-authz and a no-op Check server of the same build. Writes a Markdown report.
//!
//! Everything runs in this one process on this machine's cores (load generator included), so
//! compare rows with each other, not with other machines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::rpc::Status;
use mcp_authz::app::{self, Listeners};
use mcp_authz::config::Config;
use mcp_authz::standin::{Authority, Client};
use serde_json::json;

const TID: &str = "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c";
const API: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
const ENG_GROUP: &str = "e0000000-0000-4000-8000-0000000000e1";
const POLICY: &str = r#"
tenants: [{name: engineering, servers: [github]}]
servers: [{name: github}]
group_grants: [{group: "e0000000-0000-4000-8000-0000000000e1", tenant: engineering, access_level: write}]
tool_rules: [{server: github, tool: "delete_*", effect: deny}]
"#;

#[derive(Parser)]
#[command(about = "Direct gRPC Check benchmark of mcp-authz")]
struct Args {
    /// Seconds of load per scenario and round.
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Distinct users (tokens) per scenario.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Write the Markdown report here (stdout when absent).
    #[arg(long)]
    write: Option<std::path::PathBuf>,
}

/// A Check server that answers OK at once: the cost of gRPC itself.
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

fn request(token: &str) -> CheckRequest {
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search_code","arguments":{"q":"fn main"}}}"#;
    mcp_authz::grpc::http_check_request(Some(token), "/mcp/github", body.as_bytes())
}

struct Sample {
    rate: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

async fn load(
    addr: std::net::SocketAddr,
    reqs: Arc<Vec<CheckRequest>>,
    seconds: u64,
    concurrency: usize,
) -> Sample {
    let mut channels = Vec::new();
    for _ in 0..4 {
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .map(|e| e.tcp_nodelay(true))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        channels.push(ch);
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let mut client = AuthorizationClient::new(channels[i % channels.len()].clone());
        let reqs = reqs.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut n) = (Vec::with_capacity(100_000), 0u64, i);
            while Instant::now() < deadline {
                let req = reqs[n % reqs.len()].clone();
                n += concurrency;
                let t = Instant::now();
                match client.check(req).await {
                    Ok(r) if r.get_ref().status.as_ref().is_some_and(|s| s.code == 0) => {
                        lat.push(t.elapsed().as_micros() as u64)
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let started = Instant::now();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.expect("join");
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Sample {
        rate: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (authority, idp) = Authority::spawn_local(vec![TID.into()]).await?;
    authority.register_client(
        "bench-graph",
        Client {
            secret: "s".into(),
            graph_roles: vec!["GroupMember.Read.All".into()],
            certificate: None,
        },
    );
    let dir = tempfile_dir()?;
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY)?;
    let cfg = Config::parse(
        &format!(
            r#"
listen: {{grpc: "127.0.0.1:0", admin: "127.0.0.1:0"}}
entra: {{authority: "{idp}", allow_insecure_authority: true, tenants: ["{TID}"], audiences: ["{API}"], required_scopes: [mcp.access]}}
policy: {{file: "{}"}}
graph: {{base_url: "{idp}", client_id: bench-graph, client_secret: s, cache_ttl_seconds: 3600, max_stale_seconds: 3600}}
"#,
            policy.display()
        ),
        Vec::new(),
    )?;
    let listeners = Listeners::bind(&cfg.listen).await?;
    let authz = listeners
        .addrs()
        .grpc
        .ok_or_else(|| anyhow::anyhow!("no gRPC listener"))?;
    let admin = listeners.addrs().admin;
    tokio::spawn(app::run(cfg, listeners, std::future::pending()));
    let http = reqwest::Client::new();
    while !http
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let noop_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let noop = noop_listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(Noop))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                noop_listener,
            )),
    );

    let mint = |i: usize, overage: bool| {
        let oid = format!("00000000-0000-4000-8000-{i:012}");
        let req = json!({"tid": TID, "oid": oid, "aud": API, "scp": "mcp.access", "groups": [ENG_GROUP], "overage": overage});
        authority
            .mint(&serde_json::from_value(req).expect("mint request"))
            .expect("mint")
    };
    let listed = Arc::new(
        (0..args.users)
            .map(|i| request(&mint(i, false)))
            .collect::<Vec<_>>(),
    );
    let overage = Arc::new(
        (args.users..2 * args.users)
            .map(|i| request(&mint(i, true)))
            .collect::<Vec<_>>(),
    );
    // Warm: every token verified once, every overage user's groups fetched once.
    load(authz, listed.clone(), 1, args.concurrency).await;
    load(authz, overage.clone(), 1, args.concurrency).await;
    let graph_calls_warm = authority
        .graph_calls
        .load(std::sync::atomic::Ordering::Relaxed);

    let scenarios: [(&str, std::net::SocketAddr, &Arc<Vec<CheckRequest>>); 3] = [
        ("no-op Check server (gRPC floor, same build)", noop, &listed),
        (
            "mcp-authz, groups in token, warm token cache",
            authz,
            &listed,
        ),
        (
            "mcp-authz, groups overage via Graph, warm caches",
            authz,
            &overage,
        ),
    ];
    let mut results: Vec<Vec<Sample>> = scenarios.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for (i, (name, addr, reqs)) in scenarios.iter().enumerate() {
            let s = load(*addr, (*reqs).clone(), args.seconds, args.concurrency).await;
            eprintln!(
                "round {} {name}: {:.0} Checks/s p50 {} µs p99 {} µs errors {}",
                round + 1,
                s.rate,
                s.p50_us,
                s.p99_us,
                s.errors
            );
            results[i].push(s);
        }
    }
    let graph_calls_after = authority
        .graph_calls
        .load(std::sync::atomic::Ordering::Relaxed);

    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(&format!(
        "Written by `make bench` on {} (UTC, unix {}).\n\nMachine: {}. Command: `mcp-authz-bench --seconds {} --concurrency {} --users {} --rounds {}` ({} build).\n\n",
        mcp_authz::report::utc_minute(),
        mcp_authz::identity::unix_now(),
        mcp_authz::report::machine(),
        args.seconds,
        args.concurrency,
        args.users,
        args.rounds,
        if cfg!(debug_assertions) { "debug" } else { "release" }
    ));
    md.push_str("## Direct gRPC Check (no Envoy)\n\n");
    md.push_str("The load generator runs in the same process and on the same cores as the servers; each Check is a `tools/call` with a JSON-RPC body and a per-tool rule. Medians of interleaved rounds.\n\n");
    md.push_str("| scenario | Checks/s (median) | p50 µs | p99 µs | rounds (Checks/s) | errors |\n| --- | --- | --- | --- | --- | --- |\n");
    let noop_rate = median(results[0].iter().map(|s| s.rate).collect());
    for ((name, _, _), samples) in scenarios.iter().zip(&results) {
        let rate = median(samples.iter().map(|s| s.rate).collect());
        let p50 = median(samples.iter().map(|s| s.p50_us as f64).collect());
        let p99 = median(samples.iter().map(|s| s.p99_us as f64).collect());
        let rounds: Vec<String> = samples.iter().map(|s| format!("{:.0}", s.rate)).collect();
        let errors: u64 = samples.iter().map(|s| s.errors).sum();
        md.push_str(&format!(
            "| {name} | {rate:.0} ({:.2}× no-op) | {p50:.0} | {p99:.0} | {} | {errors} |\n",
            rate / noop_rate,
            rounds.join(", ")
        ));
    }
    md.push_str(&format!(
        "\nGraph calls: {graph_calls_warm} during warm-up ({} overage users), {} during the measured rounds (warm cache: none expected).\n",
        args.users,
        graph_calls_after - graph_calls_warm
    ));
    md.push_str("\nNot yet measured here: Envoy configurations, CPU per Check, fixed-load latency (issue 9).\n");
    match &args.write {
        Some(p) => {
            // Sections other runs own (`make fuzz`, `make soak`) are kept.
            let old = std::fs::read_to_string(p).unwrap_or_default();
            for name in ["fuzz", "soak"] {
                if let Some(section) = mcp_authz::report::section(&old, name) {
                    md.push('\n');
                    md.push_str(section);
                    md.push('\n');
                }
            }
            std::fs::write(p, md)?
        }
        None => print!("{md}"),
    }
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("mcp-authz-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
