//! Wires the parts and runs them until shutdown.
//!
//! The caller binds the listeners and hands in the shutdown signal, so tests bind port 0 and
//! stop cleanly. On shutdown the listeners stop accepting, in-flight Checks get
//! `listen.drain_seconds` to finish, and background tasks end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::admin::{self, MetadataSettings};
use crate::config::{Config, ListenConfig};
use crate::groups::GroupResolver;
use crate::grpc::{AuthorizationServer, AuthorizationService};
use crate::identity::{JwksSource, KeyStore, ValidationRules, Validator};
use crate::pipeline::Authorizer;
use crate::policy::{self, FileSource, PolicyHandle};
use crate::response::ResponseSettings;

/// Bound sockets, before serving.
pub struct Listeners {
    pub grpc: Option<TcpListener>,
    pub grpc_unix: Option<(UnixListener, PathBuf)>,
    pub admin: TcpListener,
    pub metadata: Option<TcpListener>,
}

#[derive(Debug, Clone)]
pub struct BoundAddrs {
    pub grpc: Option<SocketAddr>,
    pub grpc_unix: Option<PathBuf>,
    pub admin: SocketAddr,
    pub metadata: Option<SocketAddr>,
}

impl Listeners {
    pub async fn bind(cfg: &ListenConfig) -> anyhow::Result<Self> {
        let grpc = match cfg.grpc {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("bind gRPC {addr}"))?,
            ),
            None => None,
        };
        let grpc_unix = match &cfg.grpc_unix {
            Some(path) => {
                // A socket file left by a previous run would make bind fail.
                if path.exists() {
                    std::fs::remove_file(path)
                        .with_context(|| format!("remove stale socket {}", path.display()))?;
                }
                let l = UnixListener::bind(path)
                    .with_context(|| format!("bind unix socket {}", path.display()))?;
                Some((l, path.clone()))
            }
            None => None,
        };
        let admin = TcpListener::bind(cfg.admin)
            .await
            .with_context(|| format!("bind admin {}", cfg.admin))?;
        let metadata = match cfg.metadata {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("bind metadata {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            grpc,
            grpc_unix,
            admin,
            metadata,
        })
    }

    pub fn addrs(&self) -> BoundAddrs {
        BoundAddrs {
            grpc: self.grpc.as_ref().and_then(|l| l.local_addr().ok()),
            grpc_unix: self.grpc_unix.as_ref().map(|(_, p)| p.clone()),
            admin: self
                .admin
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            metadata: self.metadata.as_ref().and_then(|l| l.local_addr().ok()),
        }
    }
}

/// The HTTP client for Entra: bounded connect and total time.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("mcp-authz/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("build HTTP client")
}

/// The long-lived parts, built from configuration.
pub struct Parts {
    pub authorizer: Arc<Authorizer>,
    pub keys: Arc<KeyStore>,
    pub policy_source: Arc<FileSource>,
    pub metadata: MetadataSettings,
}

pub fn build(cfg: &Config) -> anyhow::Result<Parts> {
    let http = http_client(cfg.http_timeout())?;
    let discovery_tenant = cfg
        .entra
        .discovery_tenant
        .clone()
        .unwrap_or_else(|| cfg.entra.tenants[0].clone());
    let source = JwksSource::new(http, &cfg.entra.authority, &discovery_tenant)
        .map_err(anyhow::Error::msg)?;
    let keys = Arc::new(KeyStore::new(
        source,
        Duration::from_secs(cfg.entra.unknown_kid_refresh_seconds),
    ));
    let validator = Arc::new(Validator::new(
        ValidationRules::from_config(&cfg.entra),
        keys.clone(),
        cfg.entra.token_cache_capacity,
    ));
    let policy = Arc::new(PolicyHandle::default());
    let policy_source = Arc::new(FileSource::new(
        cfg.policy.file.clone(),
        policy.clone(),
        Duration::from_millis(cfg.policy.reload_interval_ms),
    ));
    let scopes = cfg.advertised_scopes().to_vec();
    let response = ResponseSettings {
        public_base_url: cfg.mcp.public_base_url.clone(),
        path_prefix: cfg.mcp.path_prefix.clone(),
        scope: scopes.join(" "),
    };
    let authorizer = Arc::new(Authorizer {
        validator,
        groups: GroupResolver::new(),
        policy,
        settings: response.clone(),
    });
    let metadata = MetadataSettings {
        authorization_servers: cfg
            .entra
            .tenants
            .iter()
            .map(|t| format!("{}/{t}/v2.0", cfg.entra.authority))
            .collect(),
        scopes,
        resource_name: cfg.mcp.resource_name.clone(),
        resource_documentation: cfg.mcp.resource_documentation.clone(),
        response,
    };
    Ok(Parts {
        authorizer,
        keys,
        policy_source,
        metadata,
    })
}

/// Serves until `shutdown` completes, then drains.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // A policy that does not load at start is a configuration error, not a degraded mode.
    let first = policy::load_file(&cfg.policy.file).context("load policy")?;
    let parts = build(&cfg)?;
    parts.authorizer.policy.install(first);

    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    {
        let keys = parts.keys.clone();
        let stop = stop.clone();
        let every = Duration::from_secs(cfg.entra.jwks_refresh_seconds);
        tasks.spawn(async move { keys.run_refresh(every, stop.cancelled_owned()).await });
    }
    {
        let source = parts.policy_source.clone();
        let stop = stop.clone();
        tasks.spawn(async move { source.run(stop.cancelled_owned()).await });
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    {
        let authorizer = parts.authorizer.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut last = None;
            loop {
                let status = if authorizer.ready() && !stop.is_cancelled() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                if last != Some(status) {
                    health_reporter.set_service_status("", status).await;
                    health_reporter
                        .set_service_status("envoy.service.auth.v3.Authorization", status)
                        .await;
                    tracing::info!(?status, "gRPC health");
                    last = Some(status);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.cancelled() => {
                        health_reporter.set_service_status("", ServingStatus::NotServing).await;
                        return;
                    }
                }
            }
        });
    }

    let authz = AuthorizationServer::new(AuthorizationService::new(parts.authorizer.clone()));
    let addrs = listeners.addrs();
    let mut servers = tokio::task::JoinSet::new();
    if let Some(l) = listeners.grpc {
        let (authz, health, stop) = (authz.clone(), health_service.clone(), stop.clone());
        servers.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(authz)
                .serve_with_incoming_shutdown(TcpListenerStream::new(l), stop.cancelled_owned())
                .await
                .context("gRPC (TCP) server")
        });
    }
    if let Some((l, path)) = listeners.grpc_unix {
        let (authz, health, stop) = (authz.clone(), health_service.clone(), stop.clone());
        servers.spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(authz)
                .serve_with_incoming_shutdown(UnixListenerStream::new(l), stop.cancelled_owned())
                .await
                .context("gRPC (unix) server");
            let _ = std::fs::remove_file(&path);
            result
        });
    }
    {
        let router = admin::admin_router(parts.authorizer.clone());
        let stop = stop.clone();
        let l = listeners.admin;
        servers.spawn(async move {
            axum::serve(l, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("admin server")
        });
    }
    if let Some(l) = listeners.metadata {
        let router = admin::metadata_router(parts.authorizer.clone(), parts.metadata.clone());
        let stop = stop.clone();
        servers.spawn(async move {
            axum::serve(l, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("metadata server")
        });
    }
    tracing::info!(?addrs, "mcp-authz serving");

    let mut failed = None;
    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested; draining"),
        Some(result) = servers.join_next() => {
            // A listener ended on its own: stop the rest and report it.
            failed = Some(match result {
                Ok(Ok(())) => anyhow::anyhow!("a listener stopped unexpectedly"),
                Ok(Err(e)) => e,
                Err(e) => anyhow::anyhow!("listener task failed: {e}"),
            });
        }
    }
    stop.cancel();
    let drain = Duration::from_secs(cfg.listen.drain_seconds);
    let drained = tokio::time::timeout(drain, async {
        while let Some(r) = servers.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "listener ended with an error during drain");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            seconds = cfg.listen.drain_seconds,
            "drain period over; abandoning in-flight requests"
        );
        servers.abort_all();
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `mcp-authz check-config`: every check prints one line; false when any failed.
pub async fn check_config(
    cfg: &Config,
    path: &std::path::Path,
    out: &mut impl std::io::Write,
) -> bool {
    let mut ok = true;
    let _ = writeln!(out, "ok    config {} is valid", path.display());
    match policy::load_file(&cfg.policy.file) {
        Ok(s) => {
            let _ = writeln!(
                out,
                "ok    policy {}: version {}, {} servers, {} tenants, {} grants",
                cfg.policy.file.display(),
                s.version,
                s.servers().len(),
                s.tenant_count(),
                s.grant_count()
            );
        }
        Err(e) => {
            ok = false;
            let _ = writeln!(out, "FAIL  policy: {e}");
        }
    }
    match build(cfg) {
        Ok(parts) => {
            let url = parts.keys.discovery_url().unwrap_or_default().to_owned();
            match parts.keys.refresh().await {
                Ok(n) => {
                    let set = parts.keys.snapshot();
                    let _ = writeln!(
                        out,
                        "ok    discovery {url} → jwks_uri {}: {n} signing keys ({})",
                        set.jwks_uri.as_deref().unwrap_or("?"),
                        set.kids().join(", ")
                    );
                }
                Err(e) => {
                    ok = false;
                    let _ = writeln!(out, "FAIL  discovery/JWKS: {e}");
                }
            }
        }
        Err(e) => {
            ok = false;
            let _ = writeln!(out, "FAIL  {e:#}");
        }
    }
    let _ = writeln!(
        out,
        "{}",
        if ok {
            "config check passed"
        } else {
            "config check FAILED"
        }
    );
    ok
}
