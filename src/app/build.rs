//! The parts of a running mcp-authz, built from a validated configuration: keys, groups,
//! policy source, audit, limits, sessions, assertions, and the authorizer that holds them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::admin::MetadataSettings;
use crate::audit::Auditor;
use crate::config::{Config, PolicySourceKind};
use crate::groups::GroupResolver;
use crate::identity::{JwksSource, KeyStore, ValidationRules, Validator};
use crate::pipeline::Authorizer;
use crate::policy::postgres::PostgresSource;
use crate::policy::{FileSource, PolicyHandle, Source};
use crate::response::ResponseSettings;

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

/// The credential a section names (validated: exactly one), loaded.
fn credential(
    section: &str,
    secret: Option<&crate::config::Secret>,
    certificate: Option<&crate::config::CertificateFiles>,
    workload_identity: Option<&crate::config::WorkloadIdentity>,
) -> anyhow::Result<crate::credential::Credential> {
    use crate::credential::{CertificateKey, Credential, FederatedToken};
    match (secret, certificate, workload_identity) {
        (Some(secret), _, _) => Ok(Credential::Secret(secret.expose().to_owned())),
        (None, Some(files), _) => {
            let read = |path: &std::path::Path, key: &str| {
                std::fs::read_to_string(path).with_context(|| {
                    format!("{section}.client_certificate.{key} {}", path.display())
                })
            };
            let key = read(&files.key_file, "key_file")?;
            let cert = read(&files.cert_file, "cert_file")?;
            let loaded = CertificateKey::from_pem(&key, &cert)
                .map_err(|e| anyhow::anyhow!("{section}.client_certificate: {e}"))?;
            Ok(Credential::Certificate(Arc::new(loaded)))
        }
        (None, None, Some(wi)) => {
            let path = wi
                .token_file
                .clone()
                .with_context(|| format!("{section}.workload_identity.token_file"))?;
            tracing::info!(section, token_file = %path.display(), "workload identity: the federated token file is the client credential");
            Ok(Credential::Federated(Arc::new(FederatedToken::new(
                path,
                Duration::from_secs(wi.reread_seconds),
            ))))
        }
        (None, None, None) => anyhow::bail!("{section}: no credential (validated config expected)"),
    }
}

/// The long-lived parts, built from configuration.
pub struct Parts {
    pub authorizer: Arc<Authorizer>,
    pub keys: Arc<KeyStore>,
    pub policy_source: Source,
    pub metadata: MetadataSettings,
    pub pool: Option<sqlx::PgPool>,
    /// The login facade, when `oauth` is configured.
    pub oauth: Option<Arc<crate::oauth::Facade>>,
}

/// The login facade from the `oauth` section (validated).
fn oauth_facade(
    cfg: &Config,
    o: &crate::config::OAuthConfig,
    validator: Arc<Validator>,
    policy: Arc<PolicyHandle>,
    metrics: Arc<crate::metrics::Metrics>,
    pool: Option<&sqlx::PgPool>,
) -> anyhow::Result<crate::oauth::Facade> {
    use crate::oauth::{
        Facade, Settings, clients::Registry, entra::EntraClient, seal::Sealer, store::Store,
    };
    let issuer = cfg
        .mcp
        .public_base_url
        .clone()
        .context("oauth needs mcp.public_base_url (validated config expected)")?;
    let keys = o
        .seal_keys
        .iter()
        .map(crate::config::decode_seal_key)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("oauth.seal_keys: {e}"))?;
    let sealer = Sealer::new(&keys).map_err(|e| anyhow::anyhow!("oauth.seal_keys: {e}"))?;
    let day = Duration::from_secs(86_400);
    let settings = Settings {
        issuer: issuer.trim_end_matches('/').to_owned(),
        path_prefix: cfg.mcp.path_prefix.clone(),
        scopes: cfg.advertised_scopes().to_vec(),
        registration: o.registration.enabled,
        code_ttl: Duration::from_secs(o.code_seconds),
        refresh_ttl: day * o.refresh_days as u32,
        consent_ttl: day * o.consent_days as u32,
    };
    let entra = EntraClient::new(
        http_client(Duration::from_millis(o.timeout_ms))?,
        cfg.entra.authority.clone(),
        o.tenant
            .clone()
            .unwrap_or_else(|| cfg.entra.tenants[0].clone()),
        o.client_id.clone(),
        credential(
            "oauth",
            o.client_secret.as_ref(),
            o.client_certificate.as_ref(),
            o.workload_identity.as_ref(),
        )?,
        &o.api_scope,
        format!("{}{}", settings.issuer, crate::oauth::CALLBACK_PATH),
    );
    let registry = Registry::new(
        o.registration.max_clients,
        day * o.registration.lifetime_days as u32,
        o.registration.per_minute,
    )
    .with_fixed(
        o.clients
            .iter()
            .map(|c| crate::oauth::clients::preregistered(c, crate::clock::unix_now()))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("oauth.clients: {e}"))?,
    );
    let (store, client_rows) = match (o.state_store, pool) {
        (crate::config::StateStoreKind::Memory, _) => (
            Store::memory(
                Duration::from_secs(o.pending_seconds),
                settings.code_ttl,
                settings.refresh_ttl,
            ),
            None,
        ),
        (crate::config::StateStoreKind::Postgres, Some(pool)) => (
            Store::postgres(
                pool.clone(),
                Sealer::new(&keys).map_err(|e| anyhow::anyhow!("oauth.seal_keys: {e}"))?,
                Duration::from_secs(o.pending_seconds),
                settings.code_ttl,
                settings.refresh_ttl,
            ),
            Some(crate::oauth::clients::ClientRows::new(
                pool.clone(),
                day * o.registration.lifetime_days as u32,
                o.registration.max_clients,
            )),
        ),
        (crate::config::StateStoreKind::Postgres, None) => {
            anyhow::bail!("oauth.state_store: postgres needs the database section")
        }
    };
    let d = &o.client_metadata_documents;
    let documents = if d.enabled {
        let mut extra_roots = Vec::new();
        if let Some(ca) = &d.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
            extra_roots = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not a PEM bundle of certificates", ca.display()))?;
        }
        if d.allow_private_addresses {
            tracing::warn!(
                "oauth.client_metadata_documents.allow_private_addresses is on: client metadata documents may be fetched from loopback and private addresses (a test setting; never in production)"
            );
        }
        Some(crate::oauth::cimd::Documents::new(
            crate::oauth::cimd::Settings {
                max_clients: d.max_clients,
                fetches_per_minute: d.fetches_per_minute,
                max_ttl: Duration::from_secs(d.cache_seconds),
                timeout: Duration::from_millis(o.timeout_ms),
                allow_private_addresses: d.allow_private_addresses,
                extra_roots,
            },
        )?)
    } else {
        None
    };
    Ok(Facade::new(
        settings, registry, store, sealer, entra, validator, policy, metrics,
    )
    .with_documents(documents)
    .with_client_rows(client_rows))
}

/// `pool` is the process's one database pool (see [`crate::db::pool`]), when a database is configured.
pub fn build(
    cfg: &Config,
    audit: Option<Arc<Auditor>>,
    decision_log: Option<Arc<crate::audit::DecisionLog>>,
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
                    credential: credential(
                        "graph",
                        g.client_secret.as_ref(),
                        g.client_certificate.as_ref(),
                        g.workload_identity.as_ref(),
                    )?,
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
                credential: credential(
                    "obo",
                    o.client_secret.as_ref(),
                    o.client_certificate.as_ref(),
                    o.workload_identity.as_ref(),
                )?,
            },
            o.cache_capacity,
        ))),
    };
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let limiter = Arc::new(crate::ratelimit::Limiter::new(
        &cfg.rate_limit,
        metrics.clone(),
    )?);
    let oauth = match &cfg.oauth {
        None => None,
        Some(o) => Some(Arc::new(oauth_facade(
            cfg,
            o,
            validator.clone(),
            policy.clone(),
            metrics.clone(),
            pool.as_ref(),
        )?)),
    };
    let authorizer = Arc::new(Authorizer {
        validator,
        groups,
        obo,
        metrics,
        policy,
        settings: response.clone(),
        audit,
        decision_log,
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
        // With the login facade the gateway is the authorization server clients talk to;
        // without it, Entra's v2 issuers (clients registered in Entra by hand).
        authorization_servers: match &oauth {
            Some(f) => vec![f.settings.issuer.clone()],
            None => cfg
                .entra
                .tenants
                .iter()
                .map(|t| format!("{}/{t}/v2.0", cfg.entra.authority))
                .collect(),
        },
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
        oauth,
    })
}
