//! Load generators, each its own process: wrk (HTTP through Envoy, Lua script written here) and
//! `mcp-authz-bench grpc-load` (direct gRPC Checks). Both print one `MCPBENCH {json}` line.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use serde::{Deserialize, Serialize};

/// What one load run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub requests: u64,
    pub duration_us: u64,
    /// Connect, read, write and timeout errors, and responses that were not the expected one.
    pub errors: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// Times the token list was used up and started again (a cold run must show 0).
    pub wrapped: u64,
}

impl Sample {
    /// From each answered request's latency (µs), the failed ones and the run's length.
    pub fn from_latencies(mut all: Vec<u32>, errors: u64, duration_us: u64) -> Self {
        all.sort_unstable();
        let pct = |p: f64| mcp_authz_bench::percentile(&all, p);
        Sample {
            requests: all.len() as u64 + errors,
            duration_us,
            errors,
            p50: pct(0.50),
            p99: pct(0.99),
            p999: pct(0.999),
            max: all.last().copied().unwrap_or(0) as u64,
            wrapped: 0,
        }
    }

    pub fn rate(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }
}

/// How a run offers load.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Closed loop, `connections` requests in flight: requests/s at saturation.
    Saturation { connections: usize },
    /// A fixed schedule of `rate` requests/s over `connections`: latency at a set load.
    Fixed { connections: usize, rate: u64 },
}

impl Mode {
    pub fn connections(&self) -> usize {
        match *self {
            Mode::Saturation { connections } | Mode::Fixed { connections, .. } => connections,
        }
    }
    pub fn rate(&self) -> Option<u64> {
        match *self {
            Mode::Saturation { .. } => None,
            Mode::Fixed { rate, .. } => Some(rate),
        }
    }
}

// wrk's Lua (LuaJIT). Requests are built once, in init() (at top level the Host header is not
// known yet). The paced variant adds delay(): each request takes the next slot of a fixed
// schedule (CLOCK_MONOTONIC through the FFI), so the offered rate holds whatever the latency.
const WRK_LUA: &str = r#"
local reqs, n, i = {}, 0, 0
wrapped = 0
local interval, next_at = nil, nil
function init(args)
  local path, token_file, body_file = args[1], args[2], args[3]
  if args[4] then interval = 1000.0 / tonumber(args[4]) end
  local f = assert(io.open(body_file, "rb"))
  local body = f:read("*a")
  f:close()
  for token in io.lines(token_file) do
    local headers = {
      ["Content-Type"] = "application/json",
      ["Accept"] = "application/json, text/event-stream",
      ["Authorization"] = "Bearer " .. token,
    }
    n = n + 1
    reqs[n] = wrk.format("POST", path, headers, body)
  end
  assert(n > 0, "no tokens in " .. token_file)
end
function request()
  i = i + 1
  if i > n then
    i = 1
    wrapped = wrapped + 1
  end
  return reqs[i]
end
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do w = w + (t:get("wrapped") or 0) end
  local e = summary.errors
  io.write(string.format(
    'MCPBENCH {"requests":%d,"duration_us":%d,"errors":%d,"p50":%d,"p99":%d,"p999":%d,"max":%d,"wrapped":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max, w))
end
"#;

const WRK_PACING: &str = r#"
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } mcpbench_timespec;
int clock_gettime(int clk, mcpbench_timespec *tp);
]]
local ts = ffi.new("mcpbench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
function delay()
  local now = now_ms()
  if next_at == nil then next_at = now end
  local at = next_at
  next_at = next_at + interval
  if at <= now then return 0 end
  return at - now
end
"#;

/// Writes the two wrk scripts into `dir`: (closed loop, paced).
pub fn write_wrk_scripts(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let plain = dir.join("load.lua");
    let paced = dir.join("load-paced.lua");
    std::fs::write(&plain, WRK_LUA)?;
    std::fs::write(&paced, format!("{WRK_LUA}\n{WRK_PACING}"))?;
    Ok((plain, paced))
}

pub struct Wrk {
    pub bin: PathBuf,
    pub plain: PathBuf,
    pub paced: PathBuf,
}

impl Wrk {
    /// The command line, for the report and for running.
    pub fn args(
        &self,
        port: u16,
        path: &str,
        tokens: &Path,
        body: &Path,
        seconds: u64,
        mode: Mode,
    ) -> Vec<String> {
        let script = if mode.rate().is_some() {
            &self.paced
        } else {
            &self.plain
        };
        let mut a = vec![
            "-t1".to_string(),
            format!("-c{}", mode.connections()),
            format!("-d{seconds}s"),
            "--timeout".into(),
            "10s".into(),
            "-s".into(),
            script.display().to_string(),
            format!("http://127.0.0.1:{port}"),
            "--".into(),
            path.into(),
            tokens.display().to_string(),
            body.display().to_string(),
        ];
        if let Some(rate) = mode.rate() {
            a.push(rate.to_string());
        }
        a
    }

    pub async fn run(&self, args: &[String]) -> anyhow::Result<Sample> {
        let out = tokio::process::Command::new(&self.bin)
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("run {}", self.bin.display()))?;
        parse_output("wrk", &out)
    }
}

fn parse_output(what: &str, out: &std::process::Output) -> anyhow::Result<Sample> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("MCPBENCH "))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{what} printed no result ({}): {}{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    serde_json::from_str(line).with_context(|| format!("{what} result: {line}"))
}

/// Runs `mcp-authz-bench mcp-load` (this same executable) as its own process.
pub async fn run_mcp_load(args: &[String]) -> anyhow::Result<Sample> {
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .arg("mcp-load")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("start mcp-load")?
        .wait_with_output()
        .await
        .context("run mcp-load")?;
    parse_output("mcp-load", &out)
}

/// Runs `mcp-authz-bench grpc-load` (this same executable) as its own process.
/// The arguments of one `grpc-load` run: Checks of the `template` shape to `port`, each with
/// the next token of `tokens` and the `body`, `concurrency` in flight, closed loop unless a
/// `rate` is given.
pub fn grpc_load_args(
    port: u16,
    tokens: &Path,
    body: &Path,
    template: &Path,
    seconds: u64,
    concurrency: usize,
    rate: Option<u64>,
) -> Vec<String> {
    let mut args = vec![
        "--target".to_string(),
        format!("127.0.0.1:{port}"),
        "--tokens".into(),
        tokens.display().to_string(),
        "--body".into(),
        body.display().to_string(),
        "--seconds".into(),
        seconds.to_string(),
        "--concurrency".into(),
        concurrency.to_string(),
        "--template".into(),
        template.display().to_string(),
    ];
    if let Some(rate) = rate {
        args.extend(["--rate".to_string(), rate.to_string()]);
    }
    args
}

pub async fn grpc_load(args: &[String]) -> anyhow::Result<Sample> {
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .arg("grpc-load")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("run grpc-load")?;
    parse_output("grpc-load", &out)
}

#[derive(clap::Args)]
pub struct GrpcLoadArgs {
    /// host:port of the Check server.
    #[arg(long)]
    target: String,
    /// One token per line; one Check per token, round robin.
    #[arg(long)]
    tokens: PathBuf,
    /// The HTTP body each Check carries.
    #[arg(long)]
    body: PathBuf,
    #[arg(long, default_value = "/mcp/github")]
    path: String,
    #[arg(long)]
    seconds: u64,
    /// Checks in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the Checks are spread over (Envoy opens one per worker).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Offered Checks/s on a fixed schedule; closed loop when absent.
    #[arg(long)]
    rate: Option<u64>,
    /// A CheckRequest as Envoy sent it (encoded): each Check is this one with its own token
    /// and `--body`. Without it, a minimal CheckRequest (two headers, no peers).
    #[arg(long)]
    template: Option<PathBuf>,
}

/// `template` with `token`'s authorization header and `body` (and its content-length).
fn from_template(template: &CheckRequest, token: &str, body: &[u8]) -> CheckRequest {
    let mut req = template.clone();
    if let Some(http) = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.raw_body = body.to_vec();
        http.size = body.len() as i64;
        if let Some(map) = http.header_map.as_mut() {
            for h in &mut map.headers {
                match h.key.as_str() {
                    "authorization" => h.raw_value = format!("Bearer {token}").into_bytes(),
                    "content-length" => h.raw_value = body.len().to_string().into_bytes(),
                    _ => {}
                }
            }
        }
    }
    req
}

/// The direct gRPC load generator: one thread (as wrk -t1), requests built before the clock
/// starts, latency from send to answer.
pub fn grpc_load_main(args: GrpcLoadArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sample = rt.block_on(async move {
        let body = std::fs::read(&args.body)?;
        let tokens = std::fs::read_to_string(&args.tokens)?;
        let template = match &args.template {
            Some(p) => Some(
                <CheckRequest as prost::Message>::decode(std::fs::read(p)?.as_slice())
                    .with_context(|| format!("decode {}", p.display()))?,
            ),
            None => None,
        };
        let reqs: Rc<Vec<CheckRequest>> = Rc::new(
            tokens
                .lines()
                .filter(|l| !l.is_empty())
                .map(|t| match &template {
                    Some(tpl) => from_template(tpl, t, &body),
                    None => mcp_authz::grpc::http_check_request(Some(t), &args.path, &body),
                })
                .collect(),
        );
        anyhow::ensure!(!reqs.is_empty(), "no tokens in {}", args.tokens.display());
        let mut channels = Vec::new();
        for _ in 0..args.connections.max(1) {
            channels.push(
                tonic::transport::Channel::from_shared(format!("http://{}", args.target))?
                    .tcp_nodelay(true)
                    .connect()
                    .await?,
            );
        }
        let local = tokio::task::LocalSet::new();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.seconds);
        let interval = args
            .rate
            .map(|r| Duration::from_secs_f64(1.0 / r.max(1) as f64));
        let next = Rc::new(std::cell::Cell::new(0u64));
        let mut tasks = Vec::new();
        for w in 0..args.concurrency.max(1) {
            let mut client = AuthorizationClient::new(channels[w % channels.len()].clone());
            let (reqs, next) = (reqs.clone(), next.clone());
            tasks.push(local.spawn_local(async move {
                let (mut lat, mut errors) = (Vec::<u32>::with_capacity(1 << 16), 0u64);
                loop {
                    let k = next.get();
                    next.set(k + 1);
                    if let Some(iv) = interval {
                        let at = started + iv.mul_f64(k as f64);
                        if at >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(at.into()).await;
                    } else if Instant::now() >= deadline {
                        break;
                    }
                    let req = reqs[(k % reqs.len() as u64) as usize].clone();
                    let t = Instant::now();
                    let ok = client
                        .check(req)
                        .await
                        .is_ok_and(|r| r.get_ref().status.as_ref().is_some_and(|s| s.code == 0));
                    if ok {
                        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            }));
        }
        let (mut all, mut errors) = (Vec::new(), 0);
        local
            .run_until(async {
                for t in tasks {
                    if let Ok((l, e)) = t.await {
                        all.extend(l);
                        errors += e;
                    }
                }
            })
            .await;
        let mut sample = Sample::from_latencies(all, errors, started.elapsed().as_micros() as u64);
        sample.wrapped = sample.requests.saturating_sub(1) / reqs.len() as u64;
        Ok::<_, anyhow::Error>(sample)
    })?;
    println!("MCPBENCH {}", serde_json::to_string(&sample)?);
    Ok(())
}
