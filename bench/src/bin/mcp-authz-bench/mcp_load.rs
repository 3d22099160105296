//! `mcp-authz-bench mcp-load`: MCP traffic as clients send it, through Envoy (row m).
//!
//! Each connection is one client after another on its own keep-alive connection, each client
//! with its own user's token, alternating the two kinds clients are today:
//! - a 2025-11-25 client: `initialize` (the upstream assigns an `Mcp-Session-Id`),
//!   `notifications/initialized`, `tools/list`, `--calls` `tools/call`s, then `DELETE` of the
//!   session; every request after `initialize` carries the session and `MCP-Protocol-Version`;
//! - a 2026-07-28 client (no sessions, no `initialize`): `tools/list` and the calls, each with
//!   `Mcp-Method` and `Mcp-Name` (the tool) beside `MCP-Protocol-Version: 2026-07-28`.
//!
//! Every JSON-RPC id is new; the upstream answers even ids as an event stream and odd ones as
//! JSON. Each answer is checked: the status, and for a call its id in the body.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::load::Sample;

#[derive(clap::Args)]
pub struct McpLoadArgs {
    /// host:port of the Envoy.
    #[arg(long)]
    target: String,
    #[arg(long, default_value = "/mcp/github")]
    path: String,
    /// One token per line; one client per token, round robin.
    #[arg(long)]
    tokens: PathBuf,
    #[arg(long)]
    seconds: u64,
    /// Connections, each running one client after another.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// `tools/call`s per client.
    #[arg(long, default_value_t = 8)]
    calls: usize,
    /// Clients send no `tools/list` (row m0: the rest of (m) without the list filter's work).
    #[arg(long)]
    no_list: bool,
}

/// The request kinds of one client, in order.
#[derive(Clone, Copy)]
enum Step {
    Initialize,
    Initialized,
    List,
    Call,
    Delete,
}

struct Client<'a> {
    http: &'a reqwest::Client,
    url: &'a str,
    token: &'a str,
    /// 2025-11-25 with a session, or 2026-07-28 without.
    session: Option<String>,
    stateless: bool,
    next_id: &'a std::cell::Cell<u64>,
}

const TOOLS: [&str; 4] = ["search_code", "search_issues", "get_file", "list_commits"];

impl Client<'_> {
    /// One request; `Ok(true)` when the answer is the expected one.
    async fn step(&mut self, step: Step, call: usize) -> anyhow::Result<bool> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (method, name, body) = match step {
            Step::Initialize => (
                "initialize",
                None,
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"2025-11-25","capabilities":{{}},"clientInfo":{{"name":"bench","version":"1"}}}}}}"#
                ),
            ),
            Step::Initialized => (
                "notifications/initialized",
                None,
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_string(),
            ),
            Step::List => (
                "tools/list",
                None,
                format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list","params":{{}}}}"#),
            ),
            Step::Call => {
                let tool = TOOLS[call % TOOLS.len()];
                (
                    "tools/call",
                    Some(tool),
                    format!(
                        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"query":"fn main language:rust","page":{call}}}}}}}"#
                    ),
                )
            }
            Step::Delete => ("", None, String::new()),
        };
        let mut req = if matches!(step, Step::Delete) {
            self.http.delete(self.url)
        } else {
            self.http
                .post(self.url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(body)
        };
        req = req.header("authorization", format!("Bearer {}", self.token));
        if self.stateless {
            req = req
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", method);
            if let Some(n) = name {
                req = req.header("mcp-name", n);
            }
        } else if let Some(s) = &self.session {
            req = req
                .header("mcp-protocol-version", "2025-11-25")
                .header("mcp-session-id", s);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        if let Step::Initialize = step {
            self.session = resp
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
        let text = resp.text().await?;
        let ok = match step {
            Step::Initialized => status == 202,
            Step::Initialize => status == 200 && self.session.is_some(),
            Step::List | Step::Delete => status == 200,
            Step::Call => status == 200 && text.contains(&format!(r#""id":{id},"#)),
        };
        if !ok && self.next_id.get() < 50 {
            eprintln!(
                "mcp-load: {method:?} (session {:?}) answered {status}: {text:.300}",
                self.session
            );
        }
        Ok(ok)
    }
}

pub fn mcp_load_main(args: McpLoadArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sample = rt.block_on(async move {
        let tokens = std::fs::read_to_string(&args.tokens)
            .with_context(|| format!("read {}", args.tokens.display()))?;
        let tokens: Rc<Vec<String>> = Rc::new(
            tokens
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        );
        anyhow::ensure!(!tokens.is_empty(), "no tokens in {}", args.tokens.display());
        let url: Rc<str> = format!("http://{}{}", args.target, args.path).into();
        let local = tokio::task::LocalSet::new();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.seconds);
        let next_client = Rc::new(std::cell::Cell::new(0usize));
        let (calls, list) = (args.calls, !args.no_list);
        let mut tasks = Vec::new();
        for _ in 0..args.connections.max(1) {
            let (tokens, url, next_client) = (tokens.clone(), url.clone(), next_client.clone());
            tasks.push(local.spawn_local(async move {
                // One keep-alive HTTP/1.1 connection per task, as a client holds one.
                let http = reqwest::Client::builder()
                    .http1_only()
                    .pool_max_idle_per_host(1)
                    .tcp_nodelay(true)
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let ids = std::cell::Cell::new(0u64);
                let (mut lat, mut errors) = (Vec::<u32>::with_capacity(1 << 14), 0u64);
                'clients: while Instant::now() < deadline {
                    let n = next_client.get();
                    next_client.set(n + 1);
                    let stateless = n % 2 == 1;
                    let mut client = Client {
                        http: &http,
                        url: &url,
                        token: &tokens[n % tokens.len()],
                        session: None,
                        stateless,
                        next_id: &ids,
                    };
                    let mut steps = Vec::with_capacity(calls + 4);
                    if !stateless {
                        steps.extend([Step::Initialize, Step::Initialized]);
                    }
                    if list {
                        steps.push(Step::List);
                    }
                    steps.extend(std::iter::repeat_n(Step::Call, calls));
                    if !stateless {
                        steps.push(Step::Delete);
                    }
                    for (i, step) in steps.into_iter().enumerate() {
                        if Instant::now() >= deadline {
                            break 'clients;
                        }
                        let t = Instant::now();
                        match client.step(step, i).await {
                            Ok(true) => {
                                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32)
                            }
                            // A client whose session failed starts over.
                            Err(e) => {
                                if errors < 3 {
                                    eprintln!("mcp-load: request failed: {e:#}");
                                }
                                errors += 1;
                                continue 'clients;
                            }
                            Ok(false) => {
                                errors += 1;
                                continue 'clients;
                            }
                        }
                    }
                }
                Ok::<_, anyhow::Error>((lat, errors))
            }));
        }
        let (mut all, mut errors) = (Vec::new(), 0);
        local
            .run_until(async {
                for t in tasks {
                    match t.await {
                        Ok(Ok((l, e))) => {
                            all.extend(l);
                            errors += e;
                        }
                        _ => errors += 1,
                    }
                }
            })
            .await;
        Ok::<_, anyhow::Error>(Sample::from_latencies(
            all,
            errors,
            started.elapsed().as_micros() as u64,
        ))
    })?;
    println!("MCPBENCH {}", serde_json::to_string(&sample)?);
    Ok(())
}
