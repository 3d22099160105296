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
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::admin::{self};
use crate::audit::{Auditor, Sink};
use crate::config::{AuditSinkKind, Config, ListenConfig};
use crate::db::{MIGRATOR, pool};
use crate::grpc::CheckServer;
use crate::policy::{self, Source};

mod build;

pub use build::{Parts, build, http_client};

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

/// Serves until `shutdown` completes, then drains.
pub async fn run(
    cfg: Config,
    mut listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Traces first, so the tracer the Checks use is the exporting one.
    let traces = crate::telemetry::start_traces(&cfg.traces)?;
    // One pool for the process: policy source, audit and migrations share it.
    let db_pool = cfg.database.as_ref().map(pool).transpose()?;
    let mut writers = Vec::new();
    let audit = match cfg.audit.sink {
        AuditSinkKind::None => None,
        kind => {
            let sink = match (kind, &db_pool, &cfg.audit.file) {
                (AuditSinkKind::Postgres, Some(p), _) => Sink::Postgres(p.clone()),
                (AuditSinkKind::Jsonl, _, Some(file)) => Sink::JsonLines(file.clone()),
                _ => anyhow::bail!("audit sink and its settings disagree"),
            };
            let (auditor, writer) =
                Auditor::start(sink, cfg.audit.queue_capacity, cfg.audit.batch_size);
            writers.push(writer);
            Some(auditor)
        }
    };
    let decision_log = cfg.decision_log.enabled.then(|| {
        let (writer, task) = Auditor::start(Sink::Stdout, cfg.decision_log.queue_capacity, 500);
        writers.push(task);
        tracing::info!(
            allow_sample_rate = cfg.decision_log.allow_sample_rate,
            "decision log on stdout: every denial and this share of allows"
        );
        Arc::new(crate::audit::DecisionLog::new(
            writer,
            cfg.decision_log.allow_sample_rate,
            cfg.decision_log.include_groups,
        ))
    });
    let parts = build(&cfg, audit.clone(), decision_log.clone(), db_pool)?;
    if let (Some(pool), Some(db)) = (&parts.pool, &cfg.database)
        && db.migrate_on_start
    {
        MIGRATOR
            .run(pool)
            .await
            .context("apply migrations at start")?;
        tracing::info!("migrations applied");
    }
    match &parts.policy_source {
        // A policy file that does not load at start is a configuration error.
        Source::File(_) => {
            let file = cfg.policy.file.as_deref().context("policy.file")?;
            parts
                .authorizer
                .policy
                .install(policy::load_file(file, &cfg.entra.tenants).context("load policy")?);
        }
        // The database may be down at start: not ready until the source loads a snapshot.
        Source::Postgres(source) => {
            if let Err(e) = source.reload_if_changed().await {
                tracing::warn!(error = %e, "policy not loaded from PostgreSQL yet; not ready, retrying");
            }
        }
    }

    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    {
        let keys = parts.keys.clone();
        let stop = stop.clone();
        let every = Duration::from_secs(cfg.entra.jwks_refresh_seconds);
        tasks.spawn(async move { keys.run_refresh(every, stop.cancelled_owned()).await });
    }
    {
        let stop = stop.clone();
        match parts.policy_source.clone() {
            Source::File(source) => {
                tasks.spawn(async move { source.run(stop.cancelled_owned()).await })
            }
            Source::Postgres(source) => {
                tasks.spawn(async move { source.run(stop.cancelled_owned()).await })
            }
        };
    }

    if let Some(client) = parts.authorizer.groups.graph().cloned() {
        let stop = stop.clone();
        tasks.spawn(async move { client.run_renewal(stop.cancelled_owned()).await });
    }
    if let Some(assertions) = parts.authorizer.assertions.clone() {
        let stop = stop.clone();
        tasks.spawn(async move { assertions.run(stop.cancelled_owned()).await });
    }

    if cfg.audit.sink == AuditSinkKind::Postgres
        && let (Some(pool), Some(auditor)) = (parts.pool.clone(), &audit)
    {
        let (stats, stop) = (auditor.stats.clone(), stop.clone());
        let days = cfg.audit.retention_days;
        tasks.spawn(async move {
            crate::audit::partitions::maintain(pool, days, stats, stop.cancelled_owned()).await
        });
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

    // Envoy's routes and clusters from the policy's servers, on the same listeners.
    let xds = cfg.xds.enabled.then(|| {
        Arc::new(crate::xds::Xds::new(
            crate::xds::Settings::from_config(&cfg),
            parts.authorizer.metrics.clone(),
        ))
    });
    if let Some(x) = &xds {
        let (x, policy, stop) = (x.clone(), parts.authorizer.policy.clone(), stop.clone());
        tasks.spawn(async move { x.run(policy, stop).await });
    }
    let ads = xds.as_ref().map(|x| {
        crate::xds::AggregatedDiscoveryServiceServer::new(crate::xds::AdsService::new(
            x.clone(),
            stop.clone(),
        ))
    });
    let authz = CheckServer::new(parts.authorizer.clone());
    // The list filter (Envoy's ext_proc) on the same listeners, from the same snapshot. A
    // buffered list answer is one message: room for the largest one read, and its framing.
    let lists = crate::lists::ExternalProcessorServer::new(crate::lists::ListFilterService::new(
        parts.authorizer.policy.clone(),
        parts.authorizer.metrics.clone(),
    ))
    .max_decoding_message_size(crate::lists::MAX_LIST_BYTES + (64 << 10));
    let addrs = listeners.addrs();
    let mut servers = tokio::task::JoinSet::new();
    let grpc_tls = match &cfg.listen.grpc_tls {
        Some(t) => Some(Arc::new(
            crate::tls::ReloadingTls::new(t).context("listen.grpc_tls")?,
        )),
        None => None,
    };
    // The TCP listener serves mTLS when it is configured, plaintext otherwise (never both).
    if let Some(tls) = grpc_tls
        && let Some(l) = listeners.grpc.take()
    {
        let (authz, lists, ads, health, stop) = (
            authz.clone(),
            lists.clone(),
            ads.clone(),
            health_service.clone(),
            stop.clone(),
        );
        servers.spawn(async move {
            tonic::transport::Server::builder()
                .layer(authz)
                .add_service(health)
                .add_service(lists)
                .add_optional_service(ads)
                .serve_with_incoming_shutdown(tls.incoming(l, stop.clone()), stop.cancelled_owned())
                .await
                .context("gRPC (TCP, mTLS) server")
        });
    }
    if let Some(l) = listeners.grpc {
        let (authz, lists, ads, health, stop) = (
            authz.clone(),
            lists.clone(),
            ads.clone(),
            health_service.clone(),
            stop.clone(),
        );
        servers.spawn(async move {
            tonic::transport::Server::builder()
                .layer(authz)
                .add_service(health)
                .add_service(lists)
                .add_optional_service(ads)
                .serve_with_incoming_shutdown(
                    crate::grpc::tcp_connections(l),
                    stop.cancelled_owned(),
                )
                .await
                .context("gRPC (TCP) server")
        });
    }
    if let Some((l, path)) = listeners.grpc_unix {
        let (authz, lists, ads, health, stop) = (
            authz.clone(),
            lists.clone(),
            ads.clone(),
            health_service.clone(),
            stop.clone(),
        );
        servers.spawn(async move {
            let result = tonic::transport::Server::builder()
                .layer(authz)
                .add_service(health)
                .add_service(lists)
                .add_optional_service(ads)
                .serve_with_incoming_shutdown(
                    tokio_stream::StreamExt::map(UnixListenerStream::new(l), |c| {
                        c.map(crate::grpc::Unvectored)
                    }),
                    stop.cancelled_owned(),
                )
                .await
                .context("gRPC (unix) server");
            let _ = std::fs::remove_file(&path);
            result
        });
    }
    {
        let observed = admin::Observed {
            authorizer: parts.authorizer.clone(),
            policy_source: parts.policy_source.clone(),
            audit: audit.clone(),
            xds: xds.clone(),
        };
        parts
            .authorizer
            .metrics
            .register_collector(Box::new(observed.clone()));
        let router = admin::admin_router(observed);
        let stop = stop.clone();
        let l = listeners.admin;
        servers.spawn(async move {
            axum::serve(nodelay(l), router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("admin server")
        });
    }
    if let Some(l) = listeners.metadata {
        let mut router = admin::metadata_router(parts.authorizer.clone(), parts.metadata.clone());
        if let Some(f) = &parts.oauth {
            router = router.merge(crate::oauth::router(f.clone()));
        }
        let stop = stop.clone();
        servers.spawn(async move {
            axum::serve(nodelay(l), router)
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
    // Let the audit writer drain what is queued (bounded by the drain period).
    if let Some(a) = &audit {
        a.close();
    }
    if let Some(d) = &decision_log {
        d.writer.close();
    }
    drop(parts);
    drop(audit);
    drop(decision_log);
    for w in writers {
        let _ = tokio::time::timeout(drain, w).await;
    }
    if let Some(t) = traces {
        t.shutdown().await;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// An HTTP listener whose connections send at once (`TCP_NODELAY`): an answer written in more
/// than one segment is not held back for the client's delayed ACK (~40 ms on a kept-alive
/// connection).
fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on an HTTP connection");
        }
    })
}
