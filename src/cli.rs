//! Operator commands: `migrate`, `policy export/import/validate/test`, `explain`. Each writes its
//! report to `out` and returns whether it succeeded; `main` maps that to the exit code.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

mod audit;
mod check_config;
mod explain_list;
mod policy_test;
mod render;
mod replay;

pub use audit::{audit_partitions, audit_prune};
pub use check_config::check_config;
pub use explain_list::{ListItems, explain_list};
pub use policy_test::{policy_directories, policy_test, policy_validate};
pub use render::{RenderError, origin_matchers, render_envoy, render_template};
pub use replay::{AuditSource, Past, Report, policy_replay};

use crate::config::{Config, PolicySourceKind};
use crate::db::{MIGRATOR, migration_status, pool};
use crate::policy::{self, PolicyDocument};

pub(crate) fn database(cfg: &Config) -> anyhow::Result<sqlx::PgPool> {
    let db = cfg
        .database
        .as_ref()
        .context("this command needs a database section (database.url) in the config")?;
    pool(db)
}

/// `mcp-authz migrate`: applies pending migrations.
pub async fn migrate(cfg: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    let pool = database(cfg)?;
    let (_, pending) = migration_status(&pool)
        .await
        .context("database unreachable")?;
    MIGRATOR.run(&pool).await.context("apply migrations")?;
    writeln!(
        out,
        "applied {} migrations ({pending:?}); schema is current",
        pending.len()
    )?;
    Ok(())
}

/// `mcp-authz policy export`: the database's policy as a YAML document.
pub async fn export(cfg: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    let pool = database(cfg)?;
    let (version, doc) = policy::postgres::read_document(&pool).await?;
    let text = serde_yaml_ng::to_string(&doc).context("render YAML")?;
    writeln!(
        out,
        "# exported from PostgreSQL, policy version db-{version}"
    )?;
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// `mcp-authz policy import FILE [--dry-run]`: makes the database hold exactly the file, in one
/// transaction, after the file compiles. Prints the changes.
pub async fn import(
    cfg: &Config,
    file: &Path,
    dry_run: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let doc: PolicyDocument = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{} is not a policy document", file.display()))?;
    // A dry run needs no database: without one it says what an empty database would get.
    if dry_run && cfg.database.is_none() {
        let changes = policy::postgres::changes_into_empty(&doc, &cfg.entra.tenants)?;
        for c in &changes {
            writeln!(out, "{c}")?;
        }
        writeln!(
            out,
            "would change {} rows (dry run without a database section: the rows an empty database would get; with one, the difference from its rows)",
            changes.len()
        )?;
        return Ok(());
    }
    // import_document refuses what the server would refuse, before touching the database.
    let pool = database(cfg)?;
    let changes =
        policy::postgres::import_document(&pool, &doc, dry_run, &cfg.entra.tenants).await?;
    for c in &changes {
        writeln!(out, "{c}")?;
    }
    let verb = if dry_run { "would change" } else { "changed" };
    writeln!(
        out,
        "{verb} {} rows{}",
        changes.len(),
        if dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        }
    )?;
    Ok(())
}

/// The policy the server would decide on now: its file, or its rows.
pub(crate) async fn current_snapshot(cfg: &Config) -> anyhow::Result<policy::Snapshot> {
    Ok(match cfg.policy.source {
        PolicySourceKind::Postgres => {
            policy::postgres::load_snapshot(&database(cfg)?, &cfg.entra.tenants).await??
        }
        PolicySourceKind::File => policy::load_file(
            cfg.policy.file.as_deref().context("policy.file")?,
            &cfg.entra.tenants,
        )?,
    })
}

/// The first lines of an `explain` answer: the policy, and the question as resolved.
pub(crate) fn write_question(
    out: &mut impl Write,
    snapshot: &policy::Snapshot,
    q: &ExplainQuery,
    asked: &policy::cases::Resolved,
    what: &str,
) -> std::io::Result<()> {
    writeln!(
        out,
        "policy:   {} version {}",
        snapshot.source, snapshot.version
    )?;
    let groups: Vec<&str> = asked.groups.iter().map(|g| g.as_str()).collect();
    writeln!(
        out,
        "request:  user {} (tid {}), groups [{}], server {}, {what}",
        q.user,
        asked.tid,
        groups.join(", "),
        q.server,
    )
}

/// Where Envoy sends the server's traffic when mcp-authz serves its routes (xDS).
fn route_line(s: &policy::Server, prefix: &str) -> String {
    let Some(u) = &s.upstream else {
        return "none over xDS (the server has no upstream; static Envoy routes reach it)".into();
    };
    if !s.enabled {
        return "none over xDS (the server is disabled)".into();
    }
    if !u.enabled {
        return "none over xDS (its upstream is disabled: upstream_enabled false)".into();
    }
    let endpoints: Vec<String> = u
        .endpoints
        .iter()
        .map(|e| {
            if e.host.contains(':') {
                format!("[{}]:{}", e.host, e.port)
            } else {
                format!("{}:{}", e.host, e.port)
            }
        })
        .collect();
    let mut line = format!(
        "{prefix}{} -> cluster {} ({}, {})",
        s.route_key,
        crate::xds::resources::cluster_name(&s.name),
        if u.tls.is_some() { "TLS" } else { "plaintext" },
        endpoints.join(", ")
    );
    if let Some(p) = &u.path {
        line.push_str(&format!(", path rewritten to {p}"));
    }
    if let Some(h) = &u.host {
        line.push_str(&format!(", Host {h}"));
    }
    line
}

/// What `explain` asks about.
pub type ExplainQuery = policy::cases::Ask;

/// `mcp-authz explain`: the decision the server would make, and the rows behind it.
pub async fn explain(cfg: &Config, q: &ExplainQuery, out: &mut impl Write) -> anyhow::Result<bool> {
    let snapshot = current_snapshot(cfg).await?;
    let asked = q
        .resolve(cfg.entra.tenants.first().map(String::as_str))
        .map_err(|e| anyhow::anyhow!("explain: {e}"))?;
    let decision = asked.decide(&snapshot);
    let tool = q
        .tool
        .as_deref()
        .map(|t| format!(" {t}"))
        .unwrap_or_default();
    write_question(
        out,
        &snapshot,
        q,
        &asked,
        &format!("{}{tool}", asked.method),
    )?;
    let allowed = match &decision.result {
        Ok(a) => {
            writeln!(
                out,
                "decision: ALLOW as tenant {} with access level {}",
                a.tenant, a.level
            )?;
            true
        }
        Err(reason) => {
            writeln!(out, "decision: DENY ({})", reason.code())?;
            if policy::shadow_permit(&snapshot, &asked.facts, *reason).is_some() {
                writeln!(
                    out,
                    "shadow:   server {} is in shadow mode: the gateway allows this request (tenant {}, level read) and records it as would_deny ({})",
                    asked.facts.server,
                    policy::SHADOW_TENANT,
                    reason.code()
                )?;
            }
            false
        }
    };
    if decision.basis.is_empty() {
        writeln!(out, "rows:     none matched")?;
    } else {
        writeln!(out, "rows:")?;
        for b in &decision.basis {
            writeln!(out, "  {b}")?;
        }
    }
    if let Some(s) = snapshot.server_by_route(&q.server) {
        writeln!(out, "route:    {}", route_line(s, &cfg.mcp.path_prefix))?;
    }
    Ok(allowed)
}
