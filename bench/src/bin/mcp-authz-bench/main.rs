//! `mcp-authz-bench` (run by `make bench`): the speed of an authorization hop, measured side by
//! side in one run on loopback.
//!
//! Every component is its own process: a minimal HTTP upstream, the release `mcp-authz`, a
//! no-op Check server of the same build, one Envoy per configuration (the same binary), and
//! the load generators (wrk for HTTP, `grpc-load` for direct Checks). The rows are measured in
//! interleaved rounds and the report quotes medians; CPU time of each server is read from
//! /proc around every run.

mod envoy_cfg;
mod load;
mod login;
mod mcp_load;
mod procs;
mod report;
mod rows;
mod sanity;
mod servers;
mod stage;
mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mcp_authz_testkit::standin::Authority;

use envoy_cfg::Variant;
use load::Wrk;
use mcp_authz_bench::free_port;
use procs::{Proc, port_open, wait_for};
pub(crate) use rows::{
    CALL_BODY, DENIED_BODY, ENVOYS, FIRST_AUTHZ_ENVOY, LIST_BODY, LIST_TOOLS, NOOP_ANSWER_ENVOY,
    NOOP_ENVOY, PING_BODY, Phase, ROWS, Run, Target, Tokens, VERDICT_ROWS, asks_authz, asks_noop,
    round_order, row_index,
};
use stage::{Stage, expect_status};
use tokens::{forged, mint, new_token_us, rs256_verify_us, rules_of, write_tokens};

pub const TID: &str = "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c";
pub const API: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
const ENG_GROUP: &str = "e0000000-0000-4000-8000-0000000000e1";
const POLICY: &str = r#"
tenants: [{name: engineering, servers: [github]}]
servers: [{name: github}]
group_grants: [{group: "e0000000-0000-4000-8000-0000000000e1", tenant: engineering, access_level: write}]
tool_rules:
  - {server: github, tool: "delete_*", effect: deny}
  - {server: github, tool: "search_*", effect: allow, min_access_level: read}
  - {server: github, tool: "odd_*", effect: deny}
"#;
const PATH: &str = "/mcp/github";

#[derive(Parser)]
#[command(about = "mcp-authz against Envoy's jwt_authn and a no-op Check server, in one run")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// (internal) The minimal HTTP upstream every Envoy row forwards to.
    Upstream {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// (internal) A Check server that answers OK at once.
    Noop {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Writes the first CheckRequest it gets (from Envoy) here, encoded: the direct rows
        /// send Checks of that shape.
        #[arg(long)]
        capture: Option<PathBuf>,
        /// Verifies each Check's RS256 signature with these keys (a JWKS file): the bound of
        /// a never-seen token.
        #[arg(long)]
        verify_jwks: Option<PathBuf>,
        /// A second listener, in the same process, whose Checks all get the answer in
        /// `--answer` (an encoded CheckResponse) instead of a bare OK.
        #[arg(long, requires = "answer")]
        answer_listen: Option<SocketAddr>,
        #[arg(long, requires = "answer_listen")]
        answer: Option<PathBuf>,
    },
    /// (internal) Direct gRPC Check load; prints one MCPBENCH line.
    GrpcLoad(load::GrpcLoadArgs),
    /// (internal) MCP clients through Envoy; prints one MCPBENCH line.
    McpLoad(mcp_load::McpLoadArgs),
    /// (investigation) Validate never-seen tokens in process with the run's rules; prints µs
    /// per token. With `--untimed`, for `valgrind --tool=callgrind`.
    NewTokens {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long)]
        untimed: bool,
    },
}

/// A no-op Check server (`noop`, with more options) on a free port, once it listens (and
/// listens on `also`).
async fn spawn_noop(
    exe: &Path,
    dir: &Path,
    workers: usize,
    name: &str,
    options: &[(&str, &std::ffi::OsStr)],
    also: Option<u16>,
) -> anyhow::Result<(Proc, u16)> {
    let port = free_port()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["noop", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--workers")
        .arg(workers.to_string());
    for (option, value) in options {
        cmd.arg(option).arg(value);
    }
    let mut p = Proc::spawn(name, cmd, dir)?;
    for port in std::iter::once(port).chain(also) {
        wait_for(&mut p, "port", || port_open(port)).await?;
    }
    Ok((p, port))
}

/// The answer of the Check server on `port` to a warm `ping` Check with `token`.
async fn ping_answer(
    port: u16,
    token: &str,
) -> anyhow::Result<envoy_types::pb::envoy::service::auth::v3::CheckResponse> {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect()
        .await?;
    Ok(AuthorizationClient::new(channel)
        .check(mcp_authz::grpc::http_check_request(
            Some(token),
            PATH,
            PING_BODY.as_bytes(),
        ))
        .await?
        .into_inner())
}

/// mcp-authz's answer to one warm `ping` Check (its identity headers, its removals), written
/// encoded to `path` for the no-op server to give every Check of row (c-noop-id).
async fn write_allow_answer(
    grpc: u16,
    token: &str,
    path: &Path,
) -> anyhow::Result<envoy_types::pb::envoy::service::auth::v3::CheckResponse> {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let answer = ping_answer(grpc, token).await?;
    let set = match (&answer.status, &answer.http_response) {
        (Some(s), Some(HttpResponse::OkResponse(ok))) if s.code == 0 => ok.headers.len(),
        _ => 0,
    };
    anyhow::ensure!(
        set > 0,
        "mcp-authz did not allow a warm ping with identity headers: {answer:?}"
    );
    std::fs::write(path, prost::Message::encode_to_vec(&answer))?;
    Ok(answer)
}

/// The `entra` line of the config every run gives mcp-authz.
pub(crate) fn entra_config(idp: &str) -> String {
    format!(
        r#"entra: {{authority: "{idp}", allow_insecure_authority: true, tenants: ["{TID}"], audiences: ["{API}"], required_scopes: [mcp.access]}}"#
    )
}

#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// Seconds of each saturation and fixed-load run.
    #[arg(long, default_value_t = 2)]
    pub seconds: u64,
    /// Seconds of each one-connection run.
    #[arg(long, default_value_t = 2)]
    pub latency_seconds: u64,
    /// Interleaved rounds: figures are their medians, ratios the medians of each round's
    /// paired ratio (five, so that one disturbed round cannot decide a verdict).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Saturation rounds more, after `rounds`, of the rows a ratio target compares
    /// (`VERDICT_ROWS`): their figures at saturation and their paired ratios are medians of
    /// `rounds + verdict_rounds` rounds.
    #[arg(long, default_value_t = 8)]
    pub verdict_rounds: usize,
    /// Connections (wrk) or Checks in flight (gRPC) at saturation and fixed load.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Distinct users in the warm token pool.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// mcp-authz's `runtime.worker_threads` (the sidecar overlay's setting), also given to the
    /// no-op Check server so the two run the same runtime.
    #[arg(long, default_value_t = 1)]
    pub authz_workers: usize,
    /// Envoy worker threads (--concurrency).
    #[arg(long, default_value_t = 2)]
    pub envoy_concurrency: usize,
    #[arg(long, env = "ENVOY_BIN", default_value = "envoy")]
    pub envoy: PathBuf,
    #[arg(long, env = "WRK_BIN", default_value = "wrk")]
    pub wrk: PathBuf,
    #[arg(long, default_value = "envoy/envoy.yaml")]
    pub envoy_template: PathBuf,
    /// Measure only these rows (keys as in the report, comma-separated: a,b,b',c,d,e,f,c0,
    /// c-noop,c-noop-id,m,m0,l,l0,g0,g,g0-rs256,g-cold, and `login` for the login timings);
    /// for investigating. The report needs every row.
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<String>,
    /// Write the report into this Markdown file (other runs' sections are kept).
    #[arg(long)]
    pub write: Option<PathBuf>,
    /// Full logins through the gateway timed after the rows (0: none).
    #[arg(long, default_value_t = 30)]
    pub logins: usize,
    /// Token refreshes timed after the logins.
    #[arg(long, default_value_t = 100)]
    pub refreshes: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Upstream { listen }) => servers::upstream(listen),
        Some(Cmd::Noop {
            listen,
            workers,
            capture,
            verify_jwks,
            answer_listen,
            answer,
        }) => servers::noop(
            listen,
            workers,
            capture,
            verify_jwks,
            answer_listen.zip(answer),
        ),
        Some(Cmd::GrpcLoad(a)) => load::grpc_load_main(a),
        Some(Cmd::McpLoad(a)) => mcp_load::mcp_load_main(a),
        Some(Cmd::NewTokens { count, untimed }) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(tokens::new_tokens_main(count, untimed)),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run(cli.run)),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("mcp-authz-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    match &args.write {
        Some(p) => {
            let old = std::fs::read_to_string(p).unwrap_or_default();
            std::fs::write(p, report::merge(&report, &old))?;
            eprintln!("bench: wrote {}", p.display());
        }
        None => print!("{report}"),
    }
    Ok(())
}

async fn run_in(args: &RunArgs, dir: &Path) -> anyhow::Result<String> {
    for key in args.rows.iter().filter(|k| *k != "login") {
        row_index(key).map_err(|_| {
            anyhow::anyhow!(
                "--rows: no row {key:?}; rows are {}",
                ROWS.iter().map(|r| r.key).collect::<Vec<_>>().join(",")
            )
        })?;
    }
    anyhow::ensure!(
        args.rows.is_empty() || args.write.is_none(),
        "--rows measures a subset for investigating; the report (--write) needs every row"
    );
    let template = std::fs::read_to_string(&args.envoy_template)
        .with_context(|| format!("read {}", args.envoy_template.display()))?;
    let envoy_version = std::process::Command::new(&args.envoy)
        .arg("--version")
        .output()
        .with_context(|| format!("run {} --version (ENVOY_BIN)", args.envoy.display()))?;
    let envoy_version = String::from_utf8_lossy(&envoy_version.stdout)
        .split_whitespace()
        .find(|w| w.contains('/') && w.chars().next().is_some_and(|c| c.is_ascii_hexdigit()))
        .map(|w| w.split('/').nth(1).unwrap_or(w).to_owned())
        .unwrap_or_else(|| "unknown".into());
    // `wrk -v` prints "wrk debian/4.1.0-3+b2 [epoll] …".
    let wrk_version = std::process::Command::new(&args.wrk)
        .arg("-v")
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "no wrk at {} (WRK_BIN; `make bench` installs Debian's): {e}",
                args.wrk.display()
            )
        })?;
    let wrk_version = String::from_utf8_lossy(&wrk_version.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or("unknown")
        .to_owned();

    let (authority, idp) = Authority::spawn_local(vec![TID.into()]).await?;
    let (plain, paced) = load::write_wrk_scripts(dir)?;
    let mut bodies = HashMap::new();
    for (name, body) in [
        ("ping", PING_BODY),
        ("list", LIST_BODY),
        ("call", CALL_BODY),
    ] {
        let p = dir.join(format!("body-{name}.json"));
        std::fs::write(&p, body)?;
        bodies.insert(body, p);
    }
    eprintln!("bench: minting {} warm tokens", args.users);
    let warm = mint(&authority, 0, args.users, args.users, "warm")?;
    let warm_file = dir.join("tokens-warm.txt");
    write_tokens(&warm_file, &warm)?;
    let exe = std::env::current_exe()?;

    // The upstream.
    let up_port = free_port()?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args(["upstream", "--listen", &format!("127.0.0.1:{up_port}")]);
    let mut upstream = Proc::spawn("upstream", cmd, dir)?;
    wait_for(&mut upstream, "port", || port_open(up_port)).await?;
    // The no-op Check server verifying each token's signature: the bound of (g-cold). (The
    // plain one starts after mcp-authz: its second listener gives mcp-authz's answer.)
    let jwks_file = dir.join("jwks.json");
    std::fs::write(&jwks_file, serde_json::to_vec(&authority.jwks(None))?)?;
    let (noop_verify, noop_verify_port) = spawn_noop(
        &exe,
        dir,
        args.authz_workers,
        "noop-verify",
        &[("--verify-jwks", jwks_file.as_os_str())],
        None,
    )
    .await?;

    // mcp-authz, release build, TCP and unix socket; its issuer is the ext_authz TCP Envoy
    // (the login facade is on, on the metadata listener, off the Check's path).
    let (grpc, admin, metadata) = (free_port()?, free_port()?, free_port()?);
    let gw_port = free_port()?;
    let gw = format!("http://127.0.0.1:{gw_port}");
    login::prepare(&authority, &gw);
    let socket = dir.join("authz.sock");
    std::fs::write(dir.join("policy.yaml"), POLICY)?;
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            r#"
listen: {{grpc: "127.0.0.1:{grpc}", grpc_unix: "{}", admin: "127.0.0.1:{admin}", metadata: "127.0.0.1:{metadata}"}}
{}
policy: {{file: policy.yaml}}
mcp: {{public_base_url: "{gw}"}}
log: {{level: warn}}
runtime: {{worker_threads: {}}}
{}"#,
            socket.display(),
            entra_config(&idp),
            args.authz_workers,
            // `--logins 0`: mcp-authz without the login facade (the A/B against a build before it).
            if args.logins > 0 {
                login::config_section()
            } else {
                String::new()
            },
        ),
    )?;
    let authz_bin = exe.with_file_name("mcp-authz");
    let mut cmd = tokio::process::Command::new(&authz_bin);
    cmd.args(["serve", "--config"]).arg(dir.join("config.yaml"));
    let mut authz = Proc::spawn("mcp-authz", cmd, dir)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    wait_for(&mut authz, "/readyz", || {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{admin}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await?;

    // The no-op server; its second listener gives every Check mcp-authz's allow answer.
    let capture = dir.join("check-request.bin");
    let answer = dir.join("check-answer.bin");
    let allow = write_allow_answer(grpc, &warm[0], &answer).await?;
    let answer_port = free_port()?;
    let answer_listen = format!("127.0.0.1:{answer_port}");
    let (noop, noop_port) = spawn_noop(
        &exe,
        dir,
        args.authz_workers,
        "noop",
        &[
            ("--capture", capture.as_os_str()),
            ("--answer-listen", answer_listen.as_ref()),
            ("--answer", answer.as_os_str()),
        ],
        Some(answer_port),
    )
    .await?;
    // Its answering listener gives mcp-authz's answer, to another user's Check too.
    let replayed = ping_answer(answer_port, &warm[1 % warm.len()]).await?;
    anyhow::ensure!(
        replayed == allow,
        "sanity check failed: the no-op server's answering listener gave {replayed:?}, not mcp-authz's answer {allow:?}"
    );

    // One Envoy per configuration, the same binary.
    let mut vars: HashMap<String, String> = [
        ("ENVOY_LISTEN_ADDRESS", "127.0.0.1".to_string()),
        ("AUTHZ_HOST", "127.0.0.1".into()),
        ("AUTHZ_PORT", grpc.to_string()),
        ("AUTHZ_SOCKET", socket.display().to_string()),
        ("METADATA_HOST", "127.0.0.1".into()),
        ("METADATA_PORT", metadata.to_string()),
        ("UPSTREAM_HOST", "127.0.0.1".into()),
        ("UPSTREAM_PORT", up_port.to_string()),
        ("PUBLIC_BASE_URL", "https://mcp.bench.example".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let jwks = authority.jwks(None).to_string();
    let jwt = |cache| Variant::JwtAuthn {
        issuer: authority.v2_issuer(TID),
        audience: API.into(),
        jwks: jwks.clone(),
        cache,
    };
    let variants = [
        Variant::NoAuth,
        jwt(None),
        jwt(Some(args.users)),
        Variant::ExtAuthz {
            unix: false,
            lists: true,
        },
        Variant::ExtAuthz {
            unix: true,
            lists: true,
        },
        Variant::ExtAuthz {
            unix: false,
            lists: false,
        },
        // The bound: the shipped template, its ext_authz cluster on the no-op server.
        Variant::ExtAuthz {
            unix: false,
            lists: true,
        },
        // The same, on the no-op server's listener that answers as mcp-authz does.
        Variant::ExtAuthz {
            unix: false,
            lists: true,
        },
    ];
    let mut envoys = Vec::new();
    for (i, variant) in variants.iter().enumerate() {
        let listen = if i == FIRST_AUTHZ_ENVOY {
            gw_port
        } else {
            free_port()?
        };
        let eadmin = free_port()?;
        vars.insert("ENVOY_LISTEN_PORT".into(), listen.to_string());
        vars.insert("ENVOY_ADMIN_PORT".into(), eadmin.to_string());
        let authz_port = match i {
            NOOP_ENVOY => noop_port,
            NOOP_ANSWER_ENVOY => answer_port,
            _ => grpc,
        };
        vars.insert("AUTHZ_PORT".into(), authz_port.to_string());
        let cfg = envoy_cfg::render(&template, &vars, variant)?;
        let path = dir.join(format!("envoy-{i}.yaml"));
        std::fs::write(&path, &cfg)?;
        let mut cmd = tokio::process::Command::new(&args.envoy);
        cmd.arg("-c")
            .arg(&path)
            .args(["--disable-hot-restart", "-l", "warning", "--concurrency"])
            .arg(args.envoy_concurrency.to_string());
        let mut p = Proc::spawn(&format!("envoy-{i}"), cmd, dir)?;
        wait_for(&mut p, "listener", || port_open(listen)).await?;
        envoys.push((p, listen));
    }

    // Each configuration does what its row says before it is timed: a benchmark of a filter
    // that lets everything through would be worthless.
    let token = warm[0].as_str();
    let bad = forged(token);
    for (i, (_, port)) in envoys.iter().enumerate() {
        let name = ENVOYS[i];
        expect_status(
            &http,
            *port,
            Some(token),
            PING_BODY,
            200,
            &format!("{name}: valid token"),
        )
        .await?;
        // No auth, and the no-op server, let everything through.
        let (none, forged_status) = if i == 0 || asks_noop(i) {
            (200, 200)
        } else {
            (401, 401)
        };
        expect_status(
            &http,
            *port,
            None,
            PING_BODY,
            none,
            &format!("{name}: no token"),
        )
        .await?;
        expect_status(
            &http,
            *port,
            Some(&bad),
            PING_BODY,
            forged_status,
            &format!("{name}: forged signature"),
        )
        .await?;
        if asks_authz(i) {
            expect_status(
                &http,
                *port,
                Some(token),
                CALL_BODY,
                200,
                &format!("{name}: allowed tool"),
            )
            .await?;
            expect_status(
                &http,
                *port,
                Some(token),
                DENIED_BODY,
                403,
                &format!("{name}: denied tool"),
            )
            .await?;
        }
    }
    // The list rows measure what they claim: filtered to half through the list filter, whole
    // without it.
    for (i, want) in [(3, LIST_TOOLS / 2), (5, LIST_TOOLS)] {
        let got = stage::list_len(&http, envoys[i].1, token, LIST_BODY).await?;
        anyhow::ensure!(
            got == want,
            "sanity check failed: {}: tools/list holds {got} tools, want {want}",
            ENVOYS[i]
        );
    }
    eprintln!(
        "bench: sanity checks passed (valid 200, missing/forged 401, denied tool 403, lists filtered 100 → 50)"
    );
    // The MCP clients of row (m) get the answers they expect, through the ext_authz Envoy.
    let m = load::run_mcp_load(&[
        "--target".into(),
        format!("127.0.0.1:{}", envoys[FIRST_AUTHZ_ENVOY].1),
        "--tokens".into(),
        warm_file.display().to_string(),
        "--seconds".into(),
        "1".into(),
        "--connections".into(),
        "2".into(),
    ])
    .await?;
    anyhow::ensure!(
        m.errors == 0 && m.requests > 20,
        "sanity check failed: MCP clients through {}: {} requests, {} errors",
        ENVOYS[FIRST_AUTHZ_ENVOY],
        m.requests,
        m.errors
    );
    // The no-op server kept the first Check Envoy sent it: the direct rows send that shape.
    anyhow::ensure!(
        capture.exists(),
        "the no-op Check server captured no CheckRequest from Envoy"
    );
    // The verifying no-op server answers OK to a valid token and refuses a forged one.
    let forged_file = dir.join("tokens-forged.txt");
    write_tokens(&forged_file, std::slice::from_ref(&bad))?;
    for (tokens, want_ok) in [(&warm_file, true), (&forged_file, false)] {
        let s = load::grpc_load(&load::grpc_load_args(
            noop_verify_port,
            tokens,
            &bodies[CALL_BODY],
            &capture,
            1,
            2,
            None,
        ))
        .await?;
        let ok = s.requests - s.errors;
        anyhow::ensure!(
            s.requests > 0 && if want_ok { s.errors == 0 } else { ok == 0 },
            "sanity check failed: the verifying no-op server answered OK to {ok} of {} {} tokens",
            s.requests,
            if want_ok { "valid" } else { "forged" }
        );
    }
    let rate = sanity::sample_server_one_connection(&exe, dir).await?;
    eprintln!("bench: the sample MCP server answers {rate:.0} requests/s on one connection");

    let mut stage = Stage {
        dir: dir.to_path_buf(),
        wrk: Wrk {
            bin: args.wrk.clone(),
            plain,
            paced,
        },
        envoys,
        authz,
        authz_port: grpc,
        noop,
        noop_port,
        noop_verify,
        noop_verify_port,
        _upstream: upstream,
        warm_file,
        check_template: capture,
        bodies,
        authority: authority.clone(),
        users: args.users,
        cold_next: 0,
        seconds: args.seconds,
        latency_seconds: args.latency_seconds,
        connections: args.connections,
    };

    // Warm-up: every warm token verified once by mcp-authz (both listeners share the cache),
    // every Envoy's connections open.
    stage.seconds = 1;
    for row in ROWS.iter().filter(|r| r.tokens == Tokens::Warm) {
        stage.measure(row, Phase::Saturation, 0, 0).await?;
    }

    // Calibration: the fixed load is half of (b)'s saturation; the cold pool is sized from the
    // cold rows' own rates.
    stage.seconds = 2;
    let b = stage
        .measure(&ROWS[row_index("b")?], Phase::Saturation, 0, 0)
        .await?;
    let fixed_rate = ((b.sample.rate() / 2.0 / 100.0).round() as u64 * 100).max(100);
    eprintln!(
        "bench: jwt_authn saturates at {:.0} req/s; fixed load {fixed_rate} req/s",
        b.sample.rate()
    );
    // A cold row is never faster than its warm twin: (e) than (c), (g-cold) than (g). Their
    // first runs get as many tokens as the warm twin's rate would use; later runs 1.5× the
    // cold row's own last rate (and a run that still runs out is measured again).
    stage.seconds = 1;
    stage.latency_seconds = 1;
    let mut rate_seen: HashMap<(usize, Phase), f64> = HashMap::new();
    for (warm, cold, phase) in [
        ("c", "e", Phase::Saturation),
        ("c", "e", Phase::OneConnection),
        ("g", "g-cold", Phase::Saturation),
    ] {
        let r = stage.measure(&ROWS[row_index(warm)?], phase, 0, 0).await?;
        rate_seen.insert((row_index(cold)?, phase), r.sample.rate());
    }
    (stage.seconds, stage.latency_seconds) = (args.seconds, args.latency_seconds);
    let phases = [Phase::Saturation, Phase::Fixed, Phase::OneConnection];
    // The full rounds measure every row in every phase; the verdict rounds after them only
    // the rows a ratio target compares, at saturation.
    let plan = |round: usize, row: usize, phase: Phase| {
        (args.rows.is_empty() || args.rows.iter().any(|k| k == ROWS[row].key))
            && (round < args.rounds
                || (phase == Phase::Saturation && VERDICT_ROWS.contains(&ROWS[row].key)))
            && match ROWS[row].target {
                Target::Envoy(_) => true,
                Target::Authz | Target::Noop | Target::NoopVerify => phase != Phase::OneConnection,
                // Clients run closed loop: saturation only.
                Target::McpTraffic(..) => phase == Phase::Saturation,
            }
    };

    // The measured rounds: each phase runs every row in turn, so drift hits all rows alike,
    // and every other round in the reverse order, so that no row always follows the same row
    // (and what that row leaves behind) or always comes early or late in its round.
    let mut runs: HashMap<(usize, Phase), Vec<Run>> = HashMap::new();
    for round in 0..args.rounds + args.verdict_rounds {
        for phase in phases {
            for i in round_order(round, ROWS.len()) {
                let row = &ROWS[i];
                if !plan(round, i, phase) {
                    continue;
                }
                let pool = |rate_seen: &HashMap<(usize, Phase), f64>| {
                    if row.tokens != Tokens::Cold {
                        return 0;
                    }
                    let (rate, secs) = match phase {
                        Phase::Fixed => (fixed_rate as f64, args.seconds),
                        Phase::Saturation => (
                            rate_seen.get(&(i, phase)).copied().unwrap_or(50_000.0),
                            args.seconds,
                        ),
                        Phase::OneConnection => (
                            rate_seen.get(&(i, phase)).copied().unwrap_or(10_000.0),
                            args.latency_seconds,
                        ),
                    };
                    (rate * 1.5 * secs as f64) as usize + 2 * args.connections + 200
                };
                // A cold run that used up its pool (the machine ran faster than the run before
                // it, which on this shared machine happens) is measured again with a pool sized
                // from its own rate: a token seen twice would make it a warm run.
                let mut n = pool(&rate_seen);
                let mut attempt = 0;
                let r = loop {
                    let r = stage.measure(row, phase, fixed_rate, n).await?;
                    if row.tokens == Tokens::Warm || r.sample.wrapped == 0 {
                        break r;
                    }
                    attempt += 1;
                    anyhow::ensure!(
                        attempt < 3,
                        "row {} ran out of never-seen tokens three times ({n}): {:?}",
                        row.key,
                        r.sample
                    );
                    eprintln!(
                        "round {} {:?} {}: {n} never-seen tokens were too few at {:.0} req/s; measuring again",
                        round + 1,
                        phase,
                        row.key,
                        r.sample.rate()
                    );
                    rate_seen.insert((i, phase), 2.0 * r.sample.rate());
                    n = pool(&rate_seen);
                };
                if row.tokens == Tokens::Cold && phase != Phase::Fixed {
                    rate_seen.insert((i, phase), r.sample.rate());
                }
                eprintln!(
                    "round {} {:?} {:>6} {:>8.0} req/s p50 {:>5} µs p99 {:>6} µs p99.9 {:>6} µs errors {} authz {:.3} other {:.3} s/10k idle {:.1} % stolen {:.1} %",
                    round + 1,
                    phase,
                    row.key,
                    r.sample.rate(),
                    r.sample.p50,
                    r.sample.p99,
                    r.sample.p999,
                    r.sample.errors,
                    r.per_10k(r.authz_cpu_ns),
                    r.per_10k(r.other_cpu_ns),
                    r.machine.map_or(f64::NAN, |m| 100.0 * m.idle),
                    r.machine.map_or(f64::NAN, |m| 100.0 * m.stolen),
                );
                runs.entry((i, phase)).or_default().push(r);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let logins = if args.logins > 0
        && (args.rows.is_empty() || args.rows.iter().any(|k| k == "login"))
    {
        eprintln!(
            "bench: {} logins and {} refreshes through {gw}",
            args.logins, args.refreshes
        );
        let l = login::measure(&gw, &stage.authz, args.logins, args.refreshes).await?;
        let ((lp50, lp99), (rp50, rp99)) = (
            login::percentiles(&l.logins),
            login::percentiles(&l.refreshes),
        );
        eprintln!(
            "bench: login p50 {lp50:.2} ms p99 {lp99:.2} ms; refresh p50 {rp50:.2} ms p99 {rp99:.2} ms"
        );
        Some(l)
    } else {
        None
    };
    let verify_us = rs256_verify_us(&authority, token)?;
    let fresh = mint(&authority, 0, 1000, args.users, "in-process")?;
    let rules = rules_of(&dir.join("config.yaml"))?;
    let (new_token_us, parse_us) = new_token_us(&authority, &rules, &fresh, true).await?;
    eprintln!(
        "bench: in process, one thread: a new token validates in {new_token_us:.1} µs (RS256 {verify_us:.1}, JWS parse {parse_us:.1})"
    );
    Ok(report::render(&report::Input {
        args,
        runs: &runs,
        fixed_rate,
        verify_us,
        new_token_us,
        parse_us,
        envoy_version: &envoy_version,
        wrk_version: &wrk_version,
        login: logins.as_ref(),
    }))
}
