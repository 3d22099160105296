//! `mcp-authz`: serve, check-config, migrate, policy, explain, render-envoy, --version.

// The command line is where output meets the operator: the library writes through `impl Write`
// and `tracing`, the binary prints what a command answers and why it could not start.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mcp_authz::cli;
use mcp_authz::config::Config;

/// Exit code for a configuration that does not load (sysexits EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "mcp-authz",
    version,
    about = "Envoy ext_authz server for MCP with Entra ID"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC ext_authz, health, readiness and protected-resource metadata.
    Serve {
        #[arg(long, short, env = "MCP_AUTHZ_CONFIG")]
        config: PathBuf,
    },
    /// Validate the config and policy, reach the issuer's discovery and JWKS; non-zero on any problem.
    CheckConfig {
        #[arg(long, short, env = "MCP_AUTHZ_CONFIG")]
        config: PathBuf,
    },
    /// Apply pending database migrations.
    Migrate {
        #[arg(long, short, env = "MCP_AUTHZ_CONFIG")]
        config: PathBuf,
    },
    /// The policy: export/import the PostgreSQL rows as YAML, validate or test a file offline.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// The PostgreSQL audit trail's month partitions: list them, drop those past retention.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Fill the `${NAME}` placeholders of a template (envoy/envoy.yaml) from the environment;
    /// refuses to leave one unset. For an init container (no shell in the image).
    RenderEnvoy {
        /// Rendered one after the other (envoy/envoy.yaml, then fragments such as
        /// envoy/authz-mtls.yaml).
        #[arg(required = true)]
        templates: Vec<PathBuf>,
        /// Written whole or not at all; stdout when absent.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Another template to its own file, `SRC:DEST` (e.g. an SDS file); repeatable.
        #[arg(long)]
        extra: Vec<String>,
    },
    /// Print the decision for a user, server and tool, and the rows that made it.
    Explain {
        #[arg(long, short, env = "MCP_AUTHZ_CONFIG")]
        config: PathBuf,
        /// Object id (GUID), or a upn.
        #[arg(long)]
        user: String,
        /// The user's directory; defaults to the first allowed one.
        #[arg(long)]
        tid: Option<String>,
        /// A group the user is in; repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long)]
        server: String,
        #[arg(long)]
        tool: Option<String>,
        /// JSON-RPC method; `tools/call` with --tool, else `initialize`.
        #[arg(long)]
        method: Option<String>,
        /// What the user would see of a list instead: `tools`, `prompts`, `resources` or
        /// `templates`, with the items from --item and --items.
        #[arg(long, value_parser = ["tools", "prompts", "resources", "templates"])]
        list: Option<String>,
        /// With --list: an item's name (or URI); repeatable.
        #[arg(long = "item", requires = "list")]
        items: Vec<String>,
        /// With --list: a saved answer of the server to the list method (JSON).
        #[arg(long = "items", requires = "list")]
        items_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Database → YAML on stdout (or --output).
    Export {
        #[arg(long, short, env = "MCP_AUTHZ_CONFIG")]
        config: PathBuf,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// YAML → database in one transaction (idempotent); --dry-run shows the changes only.
    Import {
        file: PathBuf,
        #[arg(long, short, env = "MCP_AUTHZ_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
    /// A policy file compiles as the server would compile it (no database, no network).
    Validate {
        file: PathBuf,
        #[command(flatten)]
        directories: Directories,
    },
    /// Which past decisions a candidate policy would change: the audit trail (a JSON-lines file
    /// with --audit, else PostgreSQL of --config) asked again of the candidate. Exit 0, or 1
    /// with --fail-on-change when any decision changes (or the candidate does not compile).
    Replay {
        #[arg(long)]
        candidate: PathBuf,
        /// A JSON-lines audit file (audit.sink: jsonl, or a captured decision log).
        #[arg(long)]
        audit: Option<PathBuf>,
        /// PostgreSQL: how far back.
        #[arg(long, default_value_t = 168)]
        since_hours: u32,
        /// PostgreSQL: at most this many events, newest first.
        #[arg(long, default_value_t = 200_000)]
        limit: i64,
        #[arg(long)]
        fail_on_change: bool,
        #[command(flatten)]
        directories: Directories,
    },
    /// Runs a YAML file of cases (user, groups, server, method, tool → the decision expected)
    /// through the gateway's decision; exit 1 when any fails (no database, no network).
    Test {
        file: PathBuf,
        cases: PathBuf,
        #[command(flatten)]
        directories: Directories,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Each month partition of audit_events, its approximate rows, and whether retention
    /// would drop it.
    Partitions {
        #[arg(long, short, env = "MCP_AUTHZ_CONFIG")]
        config: PathBuf,
    },
    /// Drops the months whose last day is older than the retention (audit.retention_days,
    /// or --retention-days); --dry-run names them only.
    Prune {
        #[arg(long, short, env = "MCP_AUTHZ_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        retention_days: Option<u32>,
        #[arg(long)]
        dry_run: bool,
    },
}

/// The allowed directories a policy compiles against.
#[derive(clap::Args)]
struct Directories {
    /// Take them from this configuration's entra.tenants.
    #[arg(long, short, env = "MCP_AUTHZ_CONFIG")]
    config: Option<PathBuf>,
    /// Or name them (repeatable); without either, grants that name no tid are not scoped.
    #[arg(long = "tenant", conflicts_with = "config")]
    tenants: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = match &cli.command {
        Command::RenderEnvoy {
            templates,
            output,
            extra,
        } => {
            return match cli::render_envoy(templates, output.as_deref(), extra, std::env::vars()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mcp-authz render-envoy: {e:#}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
            };
        }
        Command::Policy {
            action:
                PolicyAction::Replay {
                    candidate,
                    audit,
                    since_hours,
                    limit,
                    fail_on_change,
                    directories,
                },
        } => {
            return replay(
                candidate,
                audit.as_deref(),
                (*since_hours, *limit),
                *fail_on_change,
                directories,
            );
        }
        Command::Policy {
            action:
                PolicyAction::Validate { file, directories }
                | PolicyAction::Test {
                    file, directories, ..
                },
        } => {
            let cases = match &cli.command {
                Command::Policy {
                    action: PolicyAction::Test { cases, .. },
                } => Some(cases),
                _ => None,
            };
            return offline_policy(file, cases.map(|c| c.as_path()), directories);
        }
        Command::Serve { config }
        | Command::CheckConfig { config }
        | Command::Migrate { config }
        | Command::Audit {
            action: AuditAction::Partitions { config } | AuditAction::Prune { config, .. },
        }
        | Command::Explain { config, .. }
        | Command::Policy {
            action: PolicyAction::Export { config, .. } | PolicyAction::Import { config, .. },
        } => config.clone(),
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mcp-authz: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match mcp_authz::config::runtime_builder(&config.runtime)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mcp-authz: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        // Answered before the config was read.
        Command::RenderEnvoy { .. }
        | Command::Policy {
            action:
                PolicyAction::Validate { .. } | PolicyAction::Test { .. } | PolicyAction::Replay { .. },
        } => ExitCode::SUCCESS,
        Command::Serve { .. } => runtime.block_on(serve(config)),
        Command::CheckConfig { .. } => {
            let ok = runtime.block_on(mcp_authz::cli::check_config(
                &config,
                &path,
                &mut std::io::stdout(),
            ));
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Migrate { .. } => {
            report(runtime.block_on(cli::migrate(&config, &mut std::io::stdout())))
        }
        Command::Audit {
            action: AuditAction::Partitions { .. },
        } => report(runtime.block_on(cli::audit_partitions(&config, &mut std::io::stdout()))),
        Command::Audit {
            action:
                AuditAction::Prune {
                    retention_days,
                    dry_run,
                    ..
                },
        } => report(runtime.block_on(cli::audit_prune(
            &config,
            retention_days,
            dry_run,
            &mut std::io::stdout(),
        ))),
        Command::Policy {
            action: PolicyAction::Export { output, .. },
        } => match output {
            Some(file) => {
                let mut buf = Vec::new();
                let result = runtime
                    .block_on(cli::export(&config, &mut buf))
                    .and_then(|()| {
                        std::fs::write(&file, buf)
                            .map_err(|e| anyhow::anyhow!("write {}: {e}", file.display()))
                    });
                report(result)
            }
            None => report(runtime.block_on(cli::export(&config, &mut std::io::stdout()))),
        },
        Command::Policy {
            action: PolicyAction::Import { file, dry_run, .. },
        } => report(runtime.block_on(cli::import(&config, &file, dry_run, &mut std::io::stdout()))),
        Command::Explain {
            user,
            tid,
            groups,
            server,
            tool,
            method,
            list,
            items,
            items_file,
            ..
        } => {
            let q = cli::ExplainQuery {
                user,
                tid,
                groups,
                server,
                tool,
                method,
            };
            if let Some(kind) = list
                .as_deref()
                .and_then(mcp_authz::lists::ListKind::from_cli)
            {
                let items = cli::ListItems {
                    names: items,
                    file: items_file,
                };
                let mut stdout = std::io::stdout();
                let run = cli::explain_list(&config, &q, kind, &items, &mut stdout);
                return report(runtime.block_on(run).map(|_| ()));
            }
            match runtime.block_on(cli::explain(&config, &q, &mut std::io::stdout())) {
                Ok(true) => ExitCode::SUCCESS,
                // A denial is an answer, not an error: exit 2 so scripts can tell them apart.
                Ok(false) => ExitCode::from(2),
                Err(e) => report(Err(e)),
            }
        }
    }
}

/// `policy validate` and `policy test`: 0 when the policy compiles (and every case passes),
/// 1 when not, 64 when a file or the configuration cannot be read.
fn offline_policy(
    file: &std::path::Path,
    cases: Option<&std::path::Path>,
    directories: &Directories,
) -> ExitCode {
    let dirs = match cli::policy_directories(directories.config.as_deref(), &directories.tenants) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("mcp-authz: {e:#}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let mut out = std::io::stdout();
    let result = match cases {
        None => cli::policy_validate(file, &dirs, &mut out),
        Some(c) => cli::policy_test(file, c, &dirs, &mut out),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("mcp-authz: {e:#}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

/// `policy replay`: from a JSON-lines file offline, or from PostgreSQL of `--config`.
fn replay(
    candidate: &std::path::Path,
    audit: Option<&std::path::Path>,
    (since_hours, limit): (u32, i64),
    fail_on_change: bool,
    directories: &Directories,
) -> ExitCode {
    let fail = |e: anyhow::Error| {
        eprintln!("mcp-authz policy replay: {e:#}");
        ExitCode::from(EXIT_BAD_CONFIG)
    };
    let dirs = match cli::policy_directories(directories.config.as_deref(), &directories.tenants) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(e.into()),
    };
    let result = runtime.block_on(async {
        let source = match (audit, directories.config.as_deref()) {
            (Some(file), _) => cli::AuditSource::Jsonl(file),
            (None, Some(path)) => {
                let cfg = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
                let db = cfg.database.as_ref().ok_or_else(|| {
                    anyhow::anyhow!("no --audit file and no database section in the config")
                })?;
                anyhow::ensure!(limit > 0, "--limit must be positive");
                cli::AuditSource::Postgres {
                    pool: mcp_authz::db::pool(db)?,
                    since_hours,
                    limit,
                }
            }
            (None, None) => {
                anyhow::bail!("give --audit FILE, or --config for the PostgreSQL audit")
            }
        };
        cli::policy_replay(
            candidate,
            &dirs,
            source,
            fail_on_change,
            &mut std::io::stdout(),
        )
        .await
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => fail(e),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcp-authz: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    mcp_authz::telemetry::init(&config.log);
    let listeners = match mcp_authz::app::Listeners::bind(&config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot bind listeners");
            return ExitCode::FAILURE;
        }
    };
    match mcp_authz::app::run(config, listeners, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "mcp-authz stopped");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
