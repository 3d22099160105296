//! The stage: every process of a run (upstream, mcp-authz, the no-op server, the Envoys) and
//! one measured run of a row against it.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context as _;
use mcp_authz_testkit::standin::Authority;

use crate::load::{Mode, Wrk};
use crate::procs::Proc;
use crate::rows::{Phase, Row, Run, Target, Tokens};
use crate::tokens::{mint, write_tokens};
use crate::{PATH, load, procs};

pub(crate) struct Stage {
    pub(crate) dir: PathBuf,
    pub(crate) wrk: Wrk,
    pub(crate) envoys: Vec<(Proc, u16)>,
    pub(crate) authz: Proc,
    pub(crate) authz_port: u16,
    pub(crate) noop: Proc,
    pub(crate) noop_port: u16,
    /// The no-op server that verifies each token's signature (row g0-rs256).
    pub(crate) noop_verify: Proc,
    pub(crate) noop_verify_port: u16,
    pub(crate) _upstream: Proc,
    pub(crate) warm_file: PathBuf,
    /// The CheckRequest Envoy sent (captured by the no-op server): the direct rows' shape.
    pub(crate) check_template: PathBuf,
    pub(crate) bodies: HashMap<&'static str, PathBuf>,
    pub(crate) authority: std::sync::Arc<Authority>,
    pub(crate) users: usize,
    /// Index of the next never-seen token to mint.
    pub(crate) cold_next: usize,
    pub(crate) seconds: u64,
    pub(crate) latency_seconds: u64,
    pub(crate) connections: usize,
}

impl Stage {
    pub(crate) fn body_file(&self, body: &'static str) -> anyhow::Result<&PathBuf> {
        self.bodies
            .get(body)
            .ok_or_else(|| anyhow::anyhow!("no body file"))
    }

    /// One run of `row` in `phase`; `cold_budget` tokens are taken from the cold pool for Cold rows.
    pub(crate) async fn measure(
        &mut self,
        row: &Row,
        phase: Phase,
        fixed_rate: u64,
        cold_budget: usize,
    ) -> anyhow::Result<Run> {
        let (seconds, mode) = match phase {
            Phase::Saturation => (
                self.seconds,
                Mode::Saturation {
                    connections: self.connections,
                },
            ),
            Phase::Fixed => (
                self.seconds,
                Mode::Fixed {
                    connections: self.connections,
                    rate: fixed_rate,
                },
            ),
            Phase::OneConnection => (self.latency_seconds, Mode::Saturation { connections: 1 }),
        };
        let tokens = match row.tokens {
            Tokens::Warm => self.warm_file.clone(),
            Tokens::Cold => {
                // Minted just before the run (RSA signing is what bounds the pool), never reused.
                let path = self.dir.join("tokens-cold-run.txt");
                let fresh = mint(
                    &self.authority,
                    self.cold_next,
                    cold_budget,
                    self.users,
                    "cold",
                )?;
                self.cold_next += cold_budget;
                write_tokens(&path, &fresh)?;
                path
            }
        };
        let body = self.body_file(row.body)?.clone();
        let other_pid = match row.target {
            Target::Envoy(i) | Target::McpTraffic(i, _) => Some(self.envoys[i].0.pid),
            Target::Noop => Some(self.noop.pid),
            Target::NoopVerify => Some(self.noop_verify.pid),
            Target::Authz => None,
        };
        let ticks0 = procs::machine_ticks();
        let (authz0, other0, noop0) = (
            self.authz.cpu_ns(),
            other_pid.map(procs::cpu_ns).unwrap_or(0),
            procs::cpu_ns(self.noop.pid),
        );
        let (sample, command) = match row.target {
            Target::Envoy(i) => {
                let args = self
                    .wrk
                    .args(self.envoys[i].1, PATH, &tokens, &body, seconds, mode);
                let command = format!("{} {}", self.wrk.bin.display(), args.join(" "));
                (self.wrk.run(&args).await?, command)
            }
            Target::McpTraffic(i, list) => {
                let mut args = vec![
                    "--target".to_string(),
                    format!("127.0.0.1:{}", self.envoys[i].1),
                    "--tokens".into(),
                    tokens.display().to_string(),
                    "--seconds".into(),
                    seconds.to_string(),
                    "--connections".into(),
                    mode.connections().to_string(),
                ];
                if !list {
                    args.push("--no-list".into());
                }
                let command = format!("mcp-authz-bench mcp-load {}", args.join(" "));
                (load::run_mcp_load(&args).await?, command)
            }
            Target::Authz | Target::Noop | Target::NoopVerify => {
                let port = match row.target {
                    Target::Noop => self.noop_port,
                    Target::NoopVerify => self.noop_verify_port,
                    _ => self.authz_port,
                };
                let args = load::grpc_load_args(
                    port,
                    &tokens,
                    &body,
                    &self.check_template,
                    seconds,
                    mode.connections(),
                    mode.rate(),
                );
                let command = format!("mcp-authz-bench grpc-load {}", args.join(" "));
                (load::grpc_load(&args).await?, command)
            }
        };
        let ticks1 = procs::machine_ticks();
        let (authz1, other1, noop1) = (
            self.authz.cpu_ns(),
            other_pid.map(procs::cpu_ns).unwrap_or(0),
            procs::cpu_ns(self.noop.pid),
        );
        if row.tokens == Tokens::Cold {
            let _ = std::fs::remove_file(&tokens);
        }
        self.authz.alive()?;
        self.noop.alive()?;
        self.noop_verify.alive()?;
        for (e, _) in &mut self.envoys {
            e.alive()?;
        }
        // Through the no-op server, its CPU stands where mcp-authz's would.
        let authz_cpu_ns = if row.through_noop() {
            noop1.saturating_sub(noop0)
        } else {
            authz1.saturating_sub(authz0)
        };
        Ok(Run {
            sample,
            authz_cpu_ns,
            other_cpu_ns: other1.saturating_sub(other0),
            command,
            machine: procs::shares_between(ticks0, ticks1),
        })
    }
}

pub(crate) async fn expect_status(
    http: &reqwest::Client,
    port: u16,
    token: Option<&str>,
    body: &str,
    want: u16,
    what: &str,
) -> anyhow::Result<()> {
    let mut req = http
        .post(format!("http://127.0.0.1:{port}{PATH}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_owned());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let got = req
        .send()
        .await
        .with_context(|| what.to_string())?
        .status()
        .as_u16();
    anyhow::ensure!(
        got == want,
        "sanity check failed: {what}: got {got}, want {want}"
    );
    Ok(())
}

/// The number of tools in the `tools/list` answer through the Envoy on `port`.
pub(crate) async fn list_len(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    body: &str,
) -> anyhow::Result<usize> {
    let text = http
        .post(format!("http://127.0.0.1:{port}{PATH}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {token}"))
        .body(body.to_owned())
        .send()
        .await
        .context("tools/list")?
        .text()
        .await
        .context("tools/list body")?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("tools/list answered {text:.200}"))?;
    Ok(v["result"]["tools"].as_array().map_or(0, Vec::len))
}
