//! `mcp-authz check-config`: the configuration, and each dependency it names reached once.

use crate::app::{Parts, build};
use crate::config::Config;
use crate::db::{migration_status, pool};
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
