//! `mcp-authz`: serve, check-config, --version.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = match &cli.command {
        Command::Serve { config } | Command::CheckConfig { config } => config.clone(),
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mcp-authz: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        Command::Serve { .. } => runtime.block_on(serve(config)),
        Command::CheckConfig { .. } => {
            let ok = runtime.block_on(mcp_authz::app::check_config(
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
