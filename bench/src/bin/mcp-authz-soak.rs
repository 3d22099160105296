//! `mcp-authz-soak` (run by `make soak`): a bounded run of `--tokens` distinct valid tokens
//! (1,000,000 by default) from `--users` users against the release `mcp-authz` as a separate
//! process, direct gRPC. Every token is new, so every Check verifies a signature and inserts
//! into the verified-token cache, which must stay bounded. Per window it records Checks/s,
//! latency, resident memory of the mcp-authz process and cache entries; it fails (exit 1) when
//! memory passes `--rss-limit-mib`, any Check errs, or p99 of the last window is more than 3×
//! that of the first. Writes a Markdown table into BENCHMARKS.md with `--write`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use mcp_authz_testkit::standin::{Authority, MintRequest};
use serde_json::json;

const TID: &str = "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c";
const API: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
const POLICY: &str = r#"
tenants: [{name: engineering, servers: [github]}]
servers: [{name: github}]
group_grants: [{group: "e0000000-0000-4000-8000-0000000000e1", tenant: engineering, access_level: write}]
"#;
const BODY: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search_code","arguments":{"q":"fn main"}}}"#;

#[derive(Parser)]
#[command(about = "Soak test of mcp-authz with many distinct tokens")]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    tokens: u64,
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Checks per reported window.
    #[arg(long, default_value_t = 100_000)]
    window: u64,
    /// The verified-token cache's capacity (entra.token_cache_capacity).
    #[arg(long, default_value_t = 100_000)]
    token_cache: u64,
    /// Fail when mcp-authz's resident memory passes this.
    #[arg(long, default_value_t = 256)]
    rss_limit_mib: u64,
    #[arg(long)]
    write: Option<std::path::PathBuf>,
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn cpu_seconds(pid: u32) -> f64 {
    // utime + stime, fields 14 and 15 of /proc/pid/stat (after the command in parentheses).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

struct Row {
    checks: u64,
    rate: f64,
    p50_us: u64,
    p99_us: u64,
    rss_mib: f64,
    cache_entries: u64,
    errors: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (authority, idp) = Authority::spawn_local(vec![TID.into()]).await?;
    let dir = std::env::temp_dir().join(format!("mcp-authz-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("policy.yaml"), POLICY)?;
    let free_port = mcp_authz_bench::free_port;
    let (grpc, admin) = (free_port()?, free_port()?);
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            r#"
listen: {{grpc: "127.0.0.1:{grpc}", admin: "127.0.0.1:{admin}"}}
entra: {{authority: "{idp}", allow_insecure_authority: true, tenants: ["{TID}"], audiences: ["{API}"], required_scopes: [mcp.access], token_cache_capacity: {}}}
policy: {{file: policy.yaml}}
mcp: {{public_base_url: "https://mcp.soak.example"}}
log: {{level: warn}}
"#,
            args.token_cache
        ),
    )?;
    let bin = std::env::current_exe()?.with_file_name("mcp-authz");
    let mut child = tokio::process::Command::new(&bin)
        .args(["serve", "--config"])
        .arg(dir.join("config.yaml"))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("start {}: {e}", bin.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("mcp-authz exited"))?;
    let http = reqwest::Client::new();
    let ready_by = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        anyhow::ensure!(Instant::now() < ready_by, "mcp-authz did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_start = rss_mib(pid);
    let cpu_start = cpu_seconds(pid);

    // Minting (RSA signing) on every core but one, into a bounded queue.
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(8192);
    let minters = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
        - 1;
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..minters {
        let (tx, next, authority) = (tx.clone(), next.clone(), authority.clone());
        let (total, users) = (args.tokens, args.users);
        std::thread::spawn(move || {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let req: MintRequest = match serde_json::from_value(json!({
                    "tid": TID, "oid": format!("00000000-0000-4000-8000-{:012}", i % users),
                    "aud": API, "scp": "mcp.access", "groups": ["e0000000-0000-4000-8000-0000000000e1"],
                    "extra": {"uti": format!("soak-{i}")},
                })) {
                    Ok(r) => r,
                    Err(_) => return,
                };
                let Ok(token) = authority.mint(&req) else {
                    return;
                };
                if tx.blocking_send(token).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);

    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::with_capacity(200_000)));
    let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (rx, lat, done, errors) = (rx.clone(), latencies.clone(), done.clone(), errors.clone());
        let mut client = AuthorizationClient::new(channel.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(token) = rx.lock().await.recv().await else {
                    return;
                };
                let req = mcp_authz::grpc::http_check_request(
                    Some(&token),
                    "/mcp/github",
                    BODY.as_bytes(),
                );
                let t = Instant::now();
                let ok = client
                    .check(req)
                    .await
                    .is_ok_and(|r| r.get_ref().status.as_ref().is_some_and(|s| s.code == 0));
                let us = t.elapsed().as_micros() as u64;
                if ok {
                    if let Ok(mut l) = lat.lock() {
                        l.push(us);
                    }
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let cache_entries = || async {
        http.get(format!("http://127.0.0.1:{admin}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?
            .lines()
            .find(|l| l.starts_with("mcp_authz_token_cache_entries "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
    };
    let mut rows: Vec<Row> = Vec::new();
    let (mut last_done, mut last_errors, mut last_t) = (0u64, 0u64, Instant::now());
    let mut peak_rss = rss_start;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = done.load(Ordering::Relaxed);
        let finished = workers.iter().all(|w| w.is_finished());
        peak_rss = peak_rss.max(rss_mib(pid));
        if n - last_done >= args.window || (finished && n > last_done) {
            let mut lat = latencies
                .lock()
                .map(|mut l| std::mem::take(&mut *l))
                .unwrap_or_default();
            lat.sort_unstable();
            let pct = |p: f64| mcp_authz_bench::percentile(&lat, p);
            let e = errors.load(Ordering::Relaxed);
            let row = Row {
                checks: n,
                rate: (n - last_done) as f64 / last_t.elapsed().as_secs_f64(),
                p50_us: pct(0.5),
                p99_us: pct(0.99),
                rss_mib: rss_mib(pid),
                cache_entries: cache_entries().await.unwrap_or(0),
                errors: e - last_errors,
            };
            eprintln!(
                "{:>9} Checks  {:>7.0}/s  p50 {:>5} µs  p99 {:>6} µs  RSS {:>6.1} MiB  cache {:>7}  errors {}",
                row.checks,
                row.rate,
                row.p50_us,
                row.p99_us,
                row.rss_mib,
                row.cache_entries,
                row.errors
            );
            rows.push(row);
            (last_done, last_errors, last_t) = (n, e, Instant::now());
        }
        if finished {
            break;
        }
    }
    let elapsed = started.elapsed();
    let total = done.load(Ordering::Relaxed);
    let cpu = cpu_seconds(pid) - cpu_start;
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);

    let total_errors: u64 = rows.iter().map(|r| r.errors).sum();
    let first_p99 = rows.first().map(|r| r.p99_us).unwrap_or(0);
    let last_p99 = rows.last().map(|r| r.p99_us).unwrap_or(0);
    let mut failures = Vec::new();
    if total != args.tokens {
        failures.push(format!("{total} Checks made of {}", args.tokens));
    }
    if total_errors > 0 {
        failures.push(format!("{total_errors} Checks failed"));
    }
    if peak_rss > args.rss_limit_mib as f64 {
        failures.push(format!(
            "resident memory {peak_rss:.0} MiB > {} MiB",
            args.rss_limit_mib
        ));
    }
    if first_p99 > 0 && last_p99 > 3 * first_p99.max(1000) {
        failures.push(format!("p99 grew from {first_p99} µs to {last_p99} µs"));
    }

    let mut md = format!(
        "Latest `make soak` ({} UTC, {}; command: `mcp-authz-soak --tokens {} --users {} --concurrency {} --token-cache {}`, {} build, mcp-authz as its own process, direct gRPC, every token new so every Check verifies an RS256 signature; tokens are minted by {minters} thread(s) of the load process on the same cores):\n\n",
        mcp_authz_bench::utc_minute(),
        mcp_authz_bench::machine(),
        args.tokens,
        args.users,
        args.concurrency,
        args.token_cache,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    md.push_str("| Checks so far | Checks/s | p50 µs | p99 µs | RSS MiB | cached tokens | errors |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.0} | {} | {} | {:.1} | {} | {} |\n",
            r.checks, r.rate, r.p50_us, r.p99_us, r.rss_mib, r.cache_entries, r.errors
        ));
    }
    md.push_str(&format!(
        "\n{total} Checks in {:.0} s; mcp-authz used {cpu:.1} CPU seconds ({:.1} s per 10k Checks, signature verified each time); resident memory {rss_start:.1} MiB at start, peak {peak_rss:.1} MiB (bound {} MiB, token cache capacity {}); {}.\n",
        elapsed.as_secs_f64(),
        cpu / (total.max(1) as f64 / 10_000.0),
        args.rss_limit_mib,
        args.token_cache,
        if failures.is_empty() {
            "all bounds held".to_string()
        } else {
            format!("FAILED: {}", failures.join("; "))
        }
    ));
    println!("{md}");
    if let Some(path) = &args.write {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let out = mcp_authz_bench::replace_block(&text, "soak", "Soak", &md);
        std::fs::write(path, out)?;
    }
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("soak failed: {}", failures.join("; "))
    }
}
