//! `mcp-authz policy validate` and `mcp-authz policy test`: policy as code, offline (no
//! database, no network), for a GitOps job that checks a change before it is imported.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;

use crate::config::Config;
use crate::policy::{self, cases::CaseFile};

/// The directories a policy is compiled against, as the server would: `entra.tenants` of the
/// configuration when one is given, else the `--tenant` values (possibly none).
pub fn policy_directories(
    config: Option<&Path>,
    tenants: &[String],
) -> anyhow::Result<Vec<String>> {
    match config {
        Some(path) => Ok(Config::load(path)
            .with_context(|| format!("config {}", path.display()))?
            .entra
            .tenants),
        None => Ok(tenants.to_vec()),
    }
}

fn note_without_directories(directories: &[String], out: &mut impl Write) -> std::io::Result<()> {
    if directories.is_empty() {
        writeln!(
            out,
            "note  compiled without allowed directories: grants that name no tid are not scoped to one; give --config or --tenant to compile as the server does"
        )?;
    }
    Ok(())
}

/// `mcp-authz policy validate FILE`: the file compiles as the server would compile it.
/// Every problem is one line; false when there is any.
pub fn policy_validate(
    file: &Path,
    directories: &[String],
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    note_without_directories(directories, out)?;
    match policy::load_file(file, directories) {
        Ok(s) => {
            writeln!(
                out,
                "ok    policy {}: version {}, {} servers, {} tenants, {} grants",
                file.display(),
                s.version,
                s.servers().len(),
                s.tenant_count(),
                s.grant_count()
            )?;
            Ok(true)
        }
        Err(e) => {
            for p in e.problems() {
                writeln!(out, "FAIL  {p}")?;
            }
            Ok(false)
        }
    }
}

/// `mcp-authz policy test FILE CASES`: each case's question answered by the decision the
/// gateway runs, against the answer the case expects. False when any case fails.
pub fn policy_test(
    file: &Path,
    cases: &Path,
    directories: &[String],
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    note_without_directories(directories, out)?;
    let snapshot = match policy::load_file(file, directories) {
        Ok(s) => s,
        Err(e) => {
            for p in e.problems() {
                writeln!(out, "FAIL  {p}")?;
            }
            writeln!(out, "the policy does not compile: no case was run")?;
            return Ok(false);
        }
    };
    let text =
        std::fs::read_to_string(cases).with_context(|| format!("read {}", cases.display()))?;
    let file_of_cases: CaseFile = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{} is not a file of policy test cases", cases.display()))?;
    let results = file_of_cases.run(&snapshot, directories.first().map(String::as_str));
    let mut failed = 0;
    for r in &results {
        if r.passed {
            writeln!(out, "ok    {}: {}", r.name, r.got)?;
        } else {
            failed += 1;
            writeln!(out, "FAIL  {}", r.name)?;
            writeln!(out, "        want: {}", r.want)?;
            writeln!(out, "        got:  {}", r.got)?;
            for b in &r.basis {
                writeln!(out, "        row:  {b}")?;
            }
        }
    }
    writeln!(
        out,
        "{} cases: {} passed, {failed} failed (policy version {})",
        results.len(),
        results.len() - failed,
        snapshot.version
    )?;
    Ok(failed == 0)
}
