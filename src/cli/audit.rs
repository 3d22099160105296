//! `mcp-authz audit partitions` and `audit prune`: the PostgreSQL audit trail's months.

use std::io::Write;

use anyhow::Context;

use crate::audit::partitions;
use crate::config::Config;

/// `mcp-authz audit partitions`: each month, its approximate rows, and whether the configured
/// retention would drop it.
pub async fn audit_partitions(cfg: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    let pool = super::database(cfg)?;
    let days = cfg.audit.retention_days;
    let list = partitions::list(&pool, days)
        .await
        .context("read the audit partitions (is the schema migrated?)")?;
    match days {
        Some(d) => writeln!(out, "retention: {d} days (audit.retention_days)")?,
        None => writeln!(
            out,
            "retention: none (audit.retention_days unset: kept forever)"
        )?,
    }
    for p in &list {
        writeln!(
            out,
            "{:<24} until {}  ~{} rows{}",
            p.name,
            p.ends,
            p.approx_rows,
            if p.expired { "  past retention" } else { "" }
        )?;
    }
    writeln!(out, "{} month partitions", list.len())?;
    Ok(())
}

/// `mcp-authz audit prune`: drops the months past retention (`--retention-days` or
/// `audit.retention_days`); `--dry-run` names them only.
pub async fn audit_prune(
    cfg: &Config,
    retention_days: Option<u32>,
    dry_run: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let days = retention_days
        .or(cfg.audit.retention_days)
        .context("no retention: set audit.retention_days in the config or pass --retention-days")?;
    anyhow::ensure!(days >= 1, "--retention-days must be at least 1");
    let pool = super::database(cfg)?;
    let dropped = partitions::prune(&pool, days, dry_run)
        .await
        .context("prune the audit partitions")?;
    let verb = if dry_run { "would drop" } else { "dropped" };
    for p in &dropped {
        writeln!(
            out,
            "{verb} {} (events before {}, ~{} rows)",
            p.name, p.ends, p.approx_rows
        )?;
    }
    writeln!(
        out,
        "{} month partitions {verb}, retention {days} days{}",
        dropped.len(),
        if dry_run {
            " (dry run: nothing dropped)"
        } else {
            ""
        }
    )?;
    Ok(())
}
