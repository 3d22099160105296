//! `mcp-authz check-config`: the configuration, and each dependency it names reached once.

use crate::app::{Parts, build};
use crate::config::Config;
use crate::config::DatabaseConfig;
use crate::db::{migration_status, pool};
use crate::identity::JwksError;
use crate::policy::{self, Source};

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
        .and_then(|p| build(cfg, None, None, p));
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
                if let Some(db) = &cfg.database {
                    let _ = writeln!(out, "      {}", database_cause(db).await);
                }
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
            if cfg.xds.enabled {
                let r = crate::xds::build(&s, &crate::xds::Settings::from_config(cfg));
                let unrouted: Vec<&str> = s
                    .servers()
                    .iter()
                    .filter(|v| v.enabled && v.upstream.is_none())
                    .map(|v| &*v.name)
                    .collect();
                let _ = writeln!(
                    out,
                    "ok    xds: version {}, {} routes to Envoy{}",
                    r.version,
                    r.served.len(),
                    if unrouted.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; enabled servers without an upstream, not routed: {}",
                            unrouted.join(", ")
                        )
                    }
                );
            }
        }
        Err(e) => {
            ok = false;
            let _ = writeln!(out, "FAIL  policy: {e}");
            if e.starts_with("cannot read ") {
                let _ = writeln!(
                    out,
                    "      fix: policy.file names a file that cannot be read; a relative path is relative to {} (the config file's directory)",
                    path.parent()
                        .map(|p| p.display().to_string())
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| ".".into())
                );
            }
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
                    let _ = writeln!(out, "      fix: {}", discovery_fix(&e, cfg));
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
    if let Ok(Parts { oauth: Some(f), .. }) = &built
        && !check_oauth(f, out).await
    {
        ok = false;
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

/// The login facade: where its state lives, and whether Entra accepts its app.
async fn check_oauth(f: &crate::oauth::Facade, out: &mut impl std::io::Write) -> bool {
    let _ = match f.store.kind() {
        "memory" => writeln!(
            out,
            "ok    oauth: state store memory (this process only: run ONE replica, or set oauth.state_store: postgres)"
        ),
        kind => writeln!(
            out,
            "ok    oauth: state store {kind} (sign-ins, codes, refresh tokens and registrations shared by every replica)"
        ),
    };
    let e = &f.entra;
    match e.probe().await {
        Ok(code) => {
            let _ = writeln!(
                out,
                "ok    oauth: Entra's token endpoint {} accepts the gateway's app {} (a probe code was refused as expected{})",
                e.token_endpoint(),
                e.client_id,
                if code == 0 {
                    String::new()
                } else {
                    format!(": AADSTS{code}")
                }
            );
            true
        }
        Err(err) => {
            let _ = writeln!(
                out,
                "FAIL  oauth: Entra refused the gateway's app {}: {}",
                e.client_id,
                oauth_fix(&err, e)
            );
            false
        }
    }
}

/// What to change when Entra refuses the gateway's own app, by its AADSTS code.
fn oauth_fix(e: &crate::oauth::entra::EntraError, c: &crate::oauth::entra::EntraClient) -> String {
    use crate::oauth::entra::EntraError;
    match e {
        EntraError::Client(700016) => format!(
            "AADSTS700016: no app {} in directory {}: oauth.client_id is the Application (client) ID of the gateway's app registration, in oauth.tenant (or entra.tenants[0])",
            c.client_id, c.tenant
        ),
        EntraError::Client(7000215) => "AADSTS7000215: the client secret is wrong: oauth.client_secret is the secret's Value (not its ID), and not expired".into(),
        EntraError::Client(7000222) => "AADSTS7000222: the client secret has expired: create a new one under Certificates & secrets".into(),
        EntraError::Client(700027) | EntraError::Client(700024) => format!(
            "AADSTS{}: the client assertion is refused: the certificate (oauth.client_certificate) must be uploaded to the app registration, or the federated credential (oauth.workload_identity) must name this issuer and subject",
            match e { EntraError::Client(c) => *c, _ => 0 }
        ),
        EntraError::Client(50011) => format!(
            "AADSTS50011: the redirect URI {} is not registered: add it to the app registration as a Web platform redirect URI",
            c.redirect_uri
        ),
        EntraError::Client(code) => format!(
            "AADSTS{code}: check oauth.client_id, its credential and the app registration (Web platform, redirect URI {})",
            c.redirect_uri
        ),
        EntraError::Unavailable(why) => format!(
            "{why}: {} cannot be reached from here (entra.authority, egress rules, proxy)",
            c.token_endpoint()
        ),
        EntraError::Grant(_) => "unexpected".into(),
    }
}

/// What to change when discovery or the JWKS fails: the key and the fix, for the failures a
/// new deployment meets.
fn discovery_fix(e: &JwksError, cfg: &Config) -> String {
    let directory = match &cfg.entra.discovery_tenant {
        Some(t) => format!("entra.discovery_tenant ({t})"),
        None => format!(
            "entra.tenants[0] ({})",
            cfg.entra.tenants.first().map(String::as_str).unwrap_or("?")
        ),
    };
    match e {
        JwksError::Status {
            entra_error: Some(code),
            ..
        } if code.contains("AADSTS90002") || code.starts_with("invalid_tenant") => format!(
            "{directory} is not a directory Entra knows: use the Directory (tenant) ID from the Entra admin center → Overview"
        ),
        JwksError::Status { status: 404, .. } => format!(
            "entra.authority ({}) answers 404 for discovery: it is the authority host alone (https://login.microsoftonline.com, or your cloud's), without a tenant or /v2.0",
            cfg.entra.authority
        ),
        JwksError::Http { .. } => format!(
            "entra.authority ({}) cannot be reached from here: check the URL (https://login.microsoftonline.com for the public cloud) and that this host may connect to it (egress rules, proxy)",
            cfg.entra.authority
        ),
        JwksError::Status { .. } | JwksError::Json { .. } => format!(
            "entra.authority ({}) did not answer as Entra does: check that it is Entra's authority host",
            cfg.entra.authority
        ),
        JwksError::ForeignJwksUri(_) => format!(
            "the discovery document of entra.authority ({}) points its keys elsewhere: entra.authority must be the host that issues the tokens",
            cfg.entra.authority
        ),
        JwksError::NoUsableKeys { .. } => {
            "the key set has no RS256 signing key: entra.authority must be Entra's (or the stand-in's)".to_string()
        }
    }
}

/// Why the database cannot be used, from one direct connection (a pool only says it timed
/// out): the server's own reason (`password authentication failed for user "…"`, `database
/// "…" does not exist`, connection refused), never the URL's password.
async fn database_cause(db: &DatabaseConfig) -> String {
    use sqlx::ConnectOptions as _;
    use std::str::FromStr as _;
    let fix = "check database.url (MCP_AUTHZ__DATABASE__URL): host, port, user, password, database name and sslmode";
    let options = match sqlx::postgres::PgConnectOptions::from_str(db.url.expose()) {
        Ok(o) => o,
        Err(_) => {
            return format!(
                "fix: database.url is not a PostgreSQL URL (postgres://user@host:5432/db?sslmode=require); {fix}"
            );
        }
    };
    let timeout = std::time::Duration::from_millis(db.acquire_timeout_ms);
    let cause = match tokio::time::timeout(timeout, options.connect()).await {
        Err(_) => format!("no answer within database.acquire_timeout_ms ({} ms)", db.acquire_timeout_ms),
        Ok(Err(sqlx::Error::Database(e))) => e.message().to_owned(),
        Ok(Err(sqlx::Error::Io(e))) => e.to_string(),
        Ok(Err(sqlx::Error::Tls(_))) => "the TLS handshake failed (sslmode, the server's certificate)".into(),
        Ok(Err(_)) => "the connection failed".into(),
        Ok(Ok(_)) => return "fix: a direct connection works: the pool's limits (database.max_connections, acquire_timeout_ms) or the server's load".into(),
    };
    format!(
        "cause: {}; fix: {fix}",
        without_secret(&cause, db.url.expose())
    )
}

/// `text` with the URL's password, if any, masked (a server message can echo what it was sent).
fn without_secret(text: &str, url: &str) -> String {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    {
        Some(p) if !p.is_empty() => text.replace(&p, "***"),
        _ => text.to_owned(),
    }
}
