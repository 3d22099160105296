//! Operator commands: `migrate`, `policy export/import/validate/test`, `explain`. Each writes its
//! report to `out` and returns whether it succeeded; `main` maps that to the exit code.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

mod check_config;
mod policy_test;

pub use check_config::check_config;
pub use policy_test::{policy_directories, policy_test, policy_validate};

use crate::config::{Config, PolicySourceKind};
use crate::db::{MIGRATOR, migration_status, pool};
use crate::policy::{self, PolicyDocument};

fn database(cfg: &Config) -> anyhow::Result<sqlx::PgPool> {
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

/// What `explain` asks about.
pub type ExplainQuery = policy::cases::Ask;

/// `mcp-authz explain`: the decision the server would make, and the rows behind it.
pub async fn explain(cfg: &Config, q: &ExplainQuery, out: &mut impl Write) -> anyhow::Result<bool> {
    let snapshot = match cfg.policy.source {
        PolicySourceKind::Postgres => {
            policy::postgres::load_snapshot(&database(cfg)?, &cfg.entra.tenants).await??
        }
        PolicySourceKind::File => policy::load_file(
            cfg.policy.file.as_deref().context("policy.file")?,
            &cfg.entra.tenants,
        )?,
    };
    let asked = q
        .resolve(cfg.entra.tenants.first().map(String::as_str))
        .map_err(|e| anyhow::anyhow!("explain: {e}"))?;
    let decision = asked.decide(&snapshot);
    let (tid, groups, method) = (&asked.tid, &asked.groups, &asked.method);
    writeln!(
        out,
        "policy:   {} version {}",
        snapshot.source, snapshot.version
    )?;
    writeln!(
        out,
        "request:  user {} (tid {tid}), groups [{}], server {}, {method}{}",
        q.user,
        groups.join(", "),
        q.server,
        q.tool
            .as_deref()
            .map(|t| format!(" {t}"))
            .unwrap_or_default()
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
    Ok(allowed)
}

/// Fills every `${NAME}` (upper-case letters, digits, `_`) of `text` from `env`, and every
/// `${NAME:-default}` from `env` or, when the value is unset or empty, the default (up to the
/// next `}`); every unset name without a default is listed in the error. The same rule as
/// `envoy/render.sh`.
pub fn render_template(
    text: &str,
    env: &std::collections::HashMap<String, String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut missing: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
            .count();
        let name = &after[..name_len];
        let tail = &after[name_len..];
        // `}` ends a plain placeholder; `:-default}` one with a default.
        let (default, end) = if tail.starts_with('}') {
            (None, name_len + 1)
        } else if let Some(d) = tail.strip_prefix(":-")
            && let Some(close) = d.find('}')
        {
            (Some(&d[..close]), name_len + 2 + close + 1)
        } else {
            (None, 0)
        };
        let valid = name_len > 0 && end > 0 && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            // Not a placeholder: keep the text as it is.
            out.push_str("${");
            rest = after;
            continue;
        }
        match (env.get(name), default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                if !missing.iter().any(|m| m == name) {
                    missing.push(name.to_owned());
                }
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        missing.sort();
        Err(missing)
    }
}

/// `mcp-authz render-envoy`: the template with the environment's values, to a file (written to
/// a temporary name and renamed, so Envoy never reads half a config) or stdout.
/// `render-envoy TEMPLATE... [--output FILE] [--extra SRC:DEST]...`: the templates, one after
/// the other (a fragment such as envoy/authz-mtls.yaml continues envoy.yaml's cluster list),
/// rendered to `output`, and each `extra` template rendered to its own file. Nothing is written
/// when a placeholder is unset.
pub fn render_envoy(
    templates: &[std::path::PathBuf],
    output: Option<&std::path::Path>,
    extra: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let env: std::collections::HashMap<String, String> = env.into_iter().collect();
    let render = |paths: &[&std::path::Path]| -> anyhow::Result<String> {
        let mut text = String::new();
        for p in paths {
            text.push_str(
                &std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
            );
        }
        render_template(&text, &env)
            .map_err(|names| anyhow::anyhow!("not set: {}", names.join(", ")))
    };
    let mut extras = Vec::new();
    for pair in extra {
        let (src, dest) = pair
            .split_once(':')
            .with_context(|| format!("--extra {pair}: SRC:DEST"))?;
        extras.push((
            render(&[std::path::Path::new(src)])?,
            std::path::PathBuf::from(dest),
        ));
    }
    let paths: Vec<&std::path::Path> = templates.iter().map(|p| p.as_path()).collect();
    let rendered = render(&paths)?;
    for (text, dest) in extras {
        write_whole(&dest, &text)?;
    }
    match output {
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(rendered.as_bytes())
                .context("write stdout")?;
        }
        Some(path) => write_whole(path, &rendered)?,
    }
    Ok(())
}

/// Written to a temporary file and renamed, so a reader never sees half of it.
fn write_whole(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

#[cfg(test)]
mod render_tests {
    use super::render_template;

    fn env(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn placeholders_are_filled_and_unset_ones_named() {
        let env = env(&[("A_1", "x"), ("PORT", "9001")]);
        assert_eq!(
            render_template("a ${A_1} b ${PORT} ${lower} $${ ${1X} end", &env),
            Ok("a x b 9001 ${lower} $${ ${1X} end".to_string())
        );
        assert_eq!(
            render_template("${MISSING} ${A_1} ${OTHER} ${MISSING}", &env),
            Err(vec!["MISSING".to_string(), "OTHER".to_string()])
        );
    }

    /// A placeholder that does not apply to every setup (the unix socket path of a TCP
    /// setup) has a default, so it need not be set.
    #[test]
    fn defaults_fill_unset_or_empty_names_only() {
        let env = env(&[("SET", "x"), ("EMPTY", "")]);
        assert_eq!(
            render_template(
                "${SET:-d} ${EMPTY:-d} ${UNSET:-/run/a.sock} ${EMPTY} ${UNSET:-}",
                &env
            ),
            Ok("x d /run/a.sock  ".to_string())
        );
        // A default without its closing brace is not a placeholder.
        assert_eq!(
            render_template("${UNSET:-open", &env),
            Ok("${UNSET:-open".to_string())
        );
    }
}
