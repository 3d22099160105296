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

use crate::admin::{self, MetadataSettings};
use crate::audit::{Auditor, Sink};
use crate::config::{AuditSinkKind, Config, DatabaseConfig, ListenConfig, PolicySourceKind};
use crate::groups::GroupResolver;
use crate::grpc::{AuthorizationServer, AuthorizationService};
use crate::identity::{JwksSource, KeyStore, ValidationRules, Validator};
use crate::pipeline::Authorizer;
use crate::policy::postgres::PostgresSource;
use crate::policy::{self, FileSource, PolicyHandle, Source};
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

/// Migrations embedded in the binary (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The one connection pool, created once. Lazy: the process starts (not ready) while the
/// database is down, and connects when it comes back.
pub fn pool(db: &DatabaseConfig) -> anyhow::Result<sqlx::PgPool> {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(db.url.expose())
        .context("database.url is not a valid PostgreSQL URL")?
        .application_name("mcp-authz")
        .options([("statement_timeout", db.statement_timeout_ms.to_string())]);
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(db.max_connections)
        .acquire_timeout(Duration::from_millis(db.acquire_timeout_ms))
        .connect_lazy_with(options))
}

/// Applied and pending migration versions.
pub async fn migration_status(pool: &sqlx::PgPool) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .context("query migrations")?;
    let applied: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await
            .context("query migrations")?
    } else {
        Vec::new()
    };
    let pending = MIGRATOR
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    Ok((applied, pending))
}

fn graph_credential(
    g: &crate::config::GraphConfig,
) -> anyhow::Result<crate::groups::graph::Credential> {
    use crate::groups::graph::{CertificateKey, Credential};
    match (&g.client_secret, &g.client_certificate) {
        (Some(secret), _) => Ok(Credential::Secret(secret.expose().to_owned())),
        (None, Some(files)) => {
            let key = std::fs::read_to_string(&files.key_file).with_context(|| {
                format!(
                    "graph.client_certificate.key_file {}",
                    files.key_file.display()
                )
            })?;
            let cert = std::fs::read_to_string(&files.cert_file).with_context(|| {
                format!(
                    "graph.client_certificate.cert_file {}",
                    files.cert_file.display()
                )
            })?;
            let loaded = CertificateKey::from_pem(&key, &cert)
                .map_err(|e| anyhow::anyhow!("graph.client_certificate: {e}"))?;
            Ok(Credential::Certificate(Arc::new(loaded)))
        }
        (None, None) => anyhow::bail!("graph: no credential (validated config expected)"),
    }
}

/// The long-lived parts, built from configuration.
pub struct Parts {
    pub authorizer: Arc<Authorizer>,
    pub keys: Arc<KeyStore>,
    pub policy_source: Source,
    pub metadata: MetadataSettings,
    pub pool: Option<sqlx::PgPool>,
}

/// `pool` is the process's one database pool (see [`pool`]), when a database is configured.
pub fn build(
    cfg: &Config,
    audit: Option<Arc<Auditor>>,
    pool: Option<sqlx::PgPool>,
) -> anyhow::Result<Parts> {
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
    let policy_source = match (cfg.policy.source, &pool, &cfg.policy.file) {
        (PolicySourceKind::Postgres, Some(pool), _) => {
            Source::Postgres(Arc::new(PostgresSource::new(
                pool.clone(),
                policy.clone(),
                Duration::from_millis(cfg.policy.db_poll_interval_ms),
                cfg.entra.tenants.clone(),
            )))
        }
        (PolicySourceKind::File, _, Some(file)) => Source::File(Arc::new(FileSource::new(
            file.clone(),
            policy.clone(),
            Duration::from_millis(cfg.policy.reload_interval_ms),
            cfg.entra.tenants.clone(),
        ))),
        _ => anyhow::bail!("policy source and its settings disagree (validated config expected)"),
    };
    let scopes = cfg.advertised_scopes().to_vec();
    let response = ResponseSettings {
        public_base_url: cfg.mcp.public_base_url.clone(),
        path_prefix: cfg.mcp.path_prefix.clone(),
        scope: scopes.join(" "),
    };
    let groups = match &cfg.graph {
        None => GroupResolver::new(),
        Some(g) => {
            let http = http_client(Duration::from_millis(g.timeout_ms))?;
            let client = Arc::new(crate::groups::graph::GraphClient::new(
                http,
                crate::groups::graph::GraphSettings {
                    authority: cfg.entra.authority.clone(),
                    base_url: g.base_url.clone(),
                    client_id: g.client_id.clone(),
                    credential: graph_credential(g)?,
                    method: g.method,
                    security_enabled_only: g.security_enabled_only,
                    max_retries: g.max_retries,
                    max_retry_wait: Duration::from_millis(g.max_retry_wait_ms),
                },
            ));
            GroupResolver::with_graph(crate::groups::GraphResolver::new(
                client,
                Duration::from_secs(g.cache_ttl_seconds),
                Duration::from_secs(g.max_stale_seconds),
                g.cache_capacity,
            ))
        }
    };
    let obo = match &cfg.obo {
        None => None,
        Some(o) => Some(Arc::new(crate::obo::OboClient::new(
            http_client(Duration::from_millis(o.timeout_ms))?,
            crate::obo::OboSettings {
                authority: cfg.entra.authority.clone(),
                client_id: o.client_id.clone(),
                client_secret: o.client_secret.expose().to_owned(),
            },
            o.cache_capacity,
        ))),
    };
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let limiter = Arc::new(crate::ratelimit::Limiter::new(
        &cfg.rate_limit,
        metrics.clone(),
    )?);
    let authorizer = Arc::new(Authorizer {
        validator,
        groups,
        obo,
        metrics,
        policy,
        settings: response.clone(),
        audit,
        limiter: Some(limiter),
        sessions: if cfg.sessions.enabled {
            Some(Arc::new(crate::sessions::SessionBinder::new(
                &cfg.sessions,
                &cfg.rate_limit,
            )?))
        } else {
            None
        },
        assertions: match (&cfg.identity_assertion, &cfg.mcp.public_base_url) {
            (ia, Some(issuer)) if ia.enabled => Some(Arc::new(
                crate::assertion::IdentityAssertions::new(ia, issuer.clone())
                    .context("identity_assertion")?,
            )),
            _ => None,
        },
        tracer: cfg
            .traces
            .endpoint
            .is_some()
            .then(|| opentelemetry::global::tracer(crate::telemetry::TRACER)),
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
        pool,
    })
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
    let parts = build(&cfg, audit.clone(), db_pool)?;
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
        let (authz, health, stop) = (authz.clone(), health_service.clone(), stop.clone());
        servers.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(authz)
                .serve_with_incoming_shutdown(tls.incoming(l, stop.clone()), stop.cancelled_owned())
                .await
                .context("gRPC (TCP, mTLS) server")
        });
    }
    if let Some(l) = listeners.grpc {
        let (authz, health, stop) = (authz.clone(), health_service.clone(), stop.clone());
        servers.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(authz)
                .serve_with_incoming_shutdown(
                    // Small gRPC frames must not wait for Nagle's algorithm (40 ms with delayed ACKs).
                    tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
                    stop.cancelled_owned(),
                )
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
        parts
            .authorizer
            .metrics
            .register_collector(Box::new(crate::metrics::StateCollector {
                authorizer: parts.authorizer.clone(),
                policy_source: parts.policy_source.clone(),
                audit: audit.clone(),
            }));
        let router = admin::admin_router(admin::Observed {
            authorizer: parts.authorizer.clone(),
            policy_source: parts.policy_source.clone(),
            audit: audit.clone(),
        });
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
    // Let the audit writer drain what is queued (bounded by the drain period).
    drop(parts);
    drop(audit);
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

/// `mcp-authz check-config`: every check prints one line; false when any failed.
pub async fn check_config(
    cfg: &Config,
    path: &std::path::Path,
    out: &mut impl std::io::Write,
) -> bool {
    let mut ok = true;
    let _ = writeln!(out, "ok    config {} is valid", path.display());
    if let Some(t) = &cfg.listen.grpc_tls {
        match crate::tls::ReloadingTls::new(t) {
            Ok(_) => {
                let _ = writeln!(out, "ok    gRPC mTLS certificates load");
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "FAIL  listen.grpc_tls: {e}");
            }
        }
    }
    let built = cfg
        .database
        .as_ref()
        .map(pool)
        .transpose()
        .and_then(|p| build(cfg, None, p));
    if let Ok(parts) = &built
        && let Some(pool) = &parts.pool
    {
        match migration_status(pool).await {
            Ok((applied, pending)) if pending.is_empty() => {
                let _ = writeln!(
                    out,
                    "ok    database reachable; migrations current ({} applied)",
                    applied.len()
                );
            }
            Ok((_, pending)) => {
                ok = false;
                let _ = writeln!(
                    out,
                    "FAIL  database reachable; {} migrations pending ({pending:?}): run `mcp-authz migrate`",
                    pending.len()
                );
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "FAIL  database: {e:#}");
            }
        }
    }
    if let Some(url) = &cfg.rate_limit.redis_url {
        let result = match crate::ratelimit::RedisStore::new(url.expose(), &cfg.rate_limit) {
            Ok(store) => store.ping().await,
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => {
                let _ = writeln!(
                    out,
                    "ok    redis reachable: rate limits shared by every replica"
                );
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(
                    out,
                    "FAIL  redis: {e} (mcp-authz would start and limit in process until it answers)"
                );
            }
        }
    }
    let loaded = match &built {
        Ok(Parts {
            policy_source: Source::Postgres(_),
            pool: Some(pool),
            ..
        }) => crate::policy::postgres::load_snapshot(pool, &cfg.entra.tenants)
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string())),
        _ => match &cfg.policy.file {
            Some(file) => policy::load_file(file, &cfg.entra.tenants).map_err(|e| e.to_string()),
            None => Err("no policy source".to_string()),
        },
    };
    match loaded {
        Ok(s) => {
            let _ = writeln!(
                out,
                "ok    policy {}: version {}, {} servers, {} tenants, {} grants",
                s.source,
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
    match &built {
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
    if let (Some(g), Ok(parts)) = (&cfg.graph, &built)
        && let Some(client) = parts.authorizer.groups.graph()
    {
        let tid = &cfg.entra.tenants[0];
        match client.probe(tid).await {
            Ok(()) => {
                let _ = writeln!(
                    out,
                    "ok    graph {}: app token for {tid} and a getMemberObjects call",
                    g.base_url
                );
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "FAIL  graph {}: {e}", g.base_url);
            }
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
