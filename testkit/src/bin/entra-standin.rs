//! `entra-standin`: the stand-in Entra ID + Microsoft Graph for `make demo` and tests.
//! Not for production: it mints tokens for anyone who asks.
//!
//! Prints one JSON line with its URL on stdout once listening.

// A development program: it prints the address it listens on (scripts read it) and why it
// could not start.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;

use clap::Parser;
use mcp_authz_testkit::standin::{Api, Authority, Client};

#[derive(Parser)]
#[command(
    name = "entra-standin",
    version,
    about = "Stand-in Entra ID and Graph (development only)"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Directory (tenant) id this stand-in serves; repeatable.
    #[arg(long = "tenant", required = true)]
    tenants: Vec<String>,
    /// A confidential client: `id:secret[:GraphRole,GraphRole]`; repeatable.
    #[arg(long = "client")]
    clients: Vec<String>,
    /// A web redirect URI of a `--client` (the authorization code flow): `id=url`; repeatable.
    #[arg(long = "redirect-uri")]
    redirect_uris: Vec<String>,
    /// An API (app registration exposing scopes): `client_id,app_id_uri,scope[,scope]`;
    /// repeatable.
    #[arg(long = "api")]
    apis: Vec<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let authority = Authority::new(args.tenants);
    for c in &args.clients {
        let mut parts = c.splitn(3, ':');
        let (Some(id), Some(secret)) = (parts.next(), parts.next()) else {
            eprintln!("entra-standin: --client wants id:secret[:roles]");
            return std::process::ExitCode::from(64);
        };
        let roles = parts
            .next()
            .map(|r| {
                r.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let redirect_uris = args
            .redirect_uris
            .iter()
            .filter_map(|r| r.split_once('='))
            .filter(|(rid, _)| *rid == id)
            .map(|(_, url)| url.to_owned())
            .collect();
        authority.register_client(
            id,
            Client {
                secret: secret.to_owned(),
                graph_roles: roles,
                certificate: None,
                federated: Vec::new(),
                redirect_uris,
            },
        );
    }
    if let Some(bad) = args.redirect_uris.iter().find(|r| !r.contains('=')) {
        eprintln!("entra-standin: --redirect-uri wants id=url, not {bad}");
        return std::process::ExitCode::from(64);
    }
    for api in &args.apis {
        let parts: Vec<&str> = api.split(',').collect();
        if parts.len() < 3 || parts.iter().any(|p| p.is_empty()) {
            eprintln!("entra-standin: --api wants client_id,app_id_uri,scope[,scope], not {api}");
            return std::process::ExitCode::from(64);
        }
        authority.register_api(Api {
            client_id: parts[0].to_owned(),
            app_id_uri: parts[1].to_owned(),
            scopes: parts[2..].iter().map(|s| (*s).to_owned()).collect(),
        });
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("entra-standin: bind {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let url = match listener.local_addr() {
        Ok(a) => format!("http://{a}"),
        Err(e) => {
            eprintln!("entra-standin: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    authority.set_base_url(&url);
    println!("{}", serde_json::json!({"url": url}));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match authority.serve(listener, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("entra-standin: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
