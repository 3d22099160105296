//! `mcp-authz explain --list KIND`: what a user would see of a server's list, and why each
//! hidden item is hidden, by the function the list filter runs (`lists::visible`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::{ExplainQuery, current_snapshot, write_question};
use crate::config::Config;
use crate::lists::{self, Hidden, ListCaller, ListKind};

/// The items asked about: named one by one, or read from a saved list answer.
#[derive(Debug, Default)]
pub struct ListItems {
    pub names: Vec<String>,
    /// A server's answer to the list method as JSON: the JSON-RPC response, its `result`, or
    /// the array of items.
    pub file: Option<PathBuf>,
}

impl ListItems {
    fn resolve(&self, kind: ListKind) -> anyhow::Result<Vec<String>> {
        let mut names = self.names.clone();
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            let items = v
                .get("result")
                .and_then(|r| r.get(kind.array_key()))
                .or_else(|| v.get(kind.array_key()))
                .or(Some(&v))
                .and_then(serde_json::Value::as_array)
                .with_context(|| {
                    format!(
                        "{} holds no {} array (a {} answer, its result, or the array itself)",
                        path.display(),
                        kind.array_key(),
                        kind.method()
                    )
                })?;
            for item in items {
                let name = item
                    .get(kind.item_key())
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default();
                names.push(name.to_owned());
            }
        }
        anyhow::ensure!(
            !names.is_empty(),
            "no items: name them with --item, or give a saved {} answer with --items",
            kind.method()
        );
        Ok(names)
    }
}

/// Prints each item as shown or hidden (with the reason and the rows behind it); returns how
/// many are shown.
pub async fn explain_list(
    cfg: &Config,
    q: &ExplainQuery,
    kind: ListKind,
    items: &ListItems,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let snapshot = current_snapshot(cfg).await?;
    let names = items.resolve(kind)?;
    let default_tid = cfg.entra.tenants.first().map(String::as_str);
    let asked = q
        .resolve(default_tid)
        .map_err(|e| anyhow::anyhow!("explain: {e}"))?;
    let caller = ListCaller {
        kind,
        server: asked.facts.server.clone(),
        tid: asked.tid.clone(),
        oid: asked.oid.clone(),
        upn: asked.upn.clone(),
        groups: asked.groups.clone(),
        rpc_id: "1".into(),
    };
    write_question(out, &snapshot, q, &asked, kind.method())?;
    let mut shown = 0;
    for name in &names {
        match lists::visible(&snapshot, &caller, name) {
            Ok(()) => {
                shown += 1;
                writeln!(out, "  shown   {name}")?;
            }
            Err(Hidden::NoName) => {
                writeln!(out, "  hidden  {name:?}: names no {}", kind.call_method())?;
            }
            Err(hidden @ Hidden::Policy(_)) => {
                // The rows behind it: the decision on the call the item names.
                let call = ExplainQuery {
                    tool: (kind == ListKind::Tools).then(|| name.clone()),
                    method: Some(kind.call_method().to_owned()),
                    ..q.clone()
                };
                let rows = call
                    .resolve(default_tid)
                    .map(|r| r.decide(&snapshot).basis)
                    .unwrap_or_default();
                writeln!(
                    out,
                    "  hidden  {name}: {} {name} is refused ({}){}",
                    kind.call_method(),
                    hidden.code(),
                    if rows.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; rows: {}",
                            rows.iter()
                                .map(|r| r.as_ref())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                )?;
            }
        }
    }
    writeln!(
        out,
        "list:     {shown} of {} shown{}",
        names.len(),
        if snapshot.shadowed().contains(&q.server.as_str()) {
            " (the server is in shadow mode: what the policy would deny is shown)"
        } else {
            ""
        }
    )?;
    Ok(shown)
}
