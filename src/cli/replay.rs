//! `mcp-authz policy replay`: which past decisions a candidate policy would change. The audit
//! trail (PostgreSQL rows or a JSON-lines file) holds each decision's subject (directory,
//! object id, upn, groups) and request (server, method, tool); each is asked again of the
//! candidate through [`decide`] (the code of the Check's own `policy::permit`, with the rows it
//! used), and the answers compared.
//!
//! Only the policy's own answers are compared: an allow, or a denial (or shadow mode's
//! `would_deny`) for a policy reason. Decisions made before the policy was asked (no or a bad
//! token, a refused body) or after it (rate limits, sessions, upstream credentials) say nothing
//! of the policy and are counted as not replayable, as are events without recorded groups
//! (written before groups were recorded).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

use crate::ids::{DirectoryId, GroupId, ObjectId, ServerName, ToolName};
use crate::mcp::{Call, RequestFacts, RpcFacts};
use crate::policy::{DenyReason, Snapshot, Subject, decide};

/// One past decision, as the audit trail stores it.
#[derive(Debug, Clone, Default, Deserialize, sqlx::FromRow)]
pub struct Past {
    #[serde(default)]
    pub authenticated: bool,
    pub user_oid: Option<String>,
    pub upn: Option<String>,
    pub directory_tid: Option<String>,
    pub server: Option<String>,
    pub method: Option<String>,
    pub tool: Option<String>,
    pub result: String,
    pub reason: String,
    pub groups: Option<Vec<String>>,
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Answer {
    Allow,
    Deny(String),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Allow => f.write_str("allow"),
            Answer::Deny(r) => write!(f, "deny ({r})"),
        }
    }
}

const POLICY_REASONS: [DenyReason; 7] = [
    DenyReason::UnknownServer,
    DenyReason::ServerDisabled,
    DenyReason::NoGrant,
    DenyReason::ServerNotGranted,
    DenyReason::ToolDenied,
    DenyReason::ToolNotAllowed,
    DenyReason::AccessLevelTooLow,
];

/// Why a past decision is not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// Decided before or after the policy (token, request shape, rate limit, …).
    NotPolicy,
    /// Written before groups were recorded.
    NoGroups,
    /// A field the decision needs does not parse.
    Unreadable,
}

impl Past {
    /// What the policy answered then, when it was the policy that answered.
    pub fn policy_answer(&self) -> Option<Answer> {
        match self.result.as_str() {
            "allow" if self.reason == "allowed" => Some(Answer::Allow),
            "deny" | "would_deny" if POLICY_REASONS.iter().any(|r| r.code() == self.reason) => {
                Some(Answer::Deny(self.reason.clone()))
            }
            _ => None,
        }
    }

    /// The candidate's answer to the same question.
    pub fn replay(&self, candidate: &Snapshot) -> Result<(Answer, Answer), Skip> {
        let then = self.policy_answer().ok_or(Skip::NotPolicy)?;
        if !self.authenticated {
            return Err(Skip::NotPolicy);
        }
        let groups = self.groups.as_ref().ok_or(Skip::NoGroups)?;
        let tid = self
            .directory_tid
            .as_deref()
            .and_then(DirectoryId::parse)
            .ok_or(Skip::Unreadable)?;
        let oid = self
            .user_oid
            .as_deref()
            .and_then(ObjectId::parse)
            .ok_or(Skip::Unreadable)?;
        let groups: Vec<GroupId> = groups
            .iter()
            .map(|g| GroupId::parse(g).ok_or(Skip::Unreadable))
            .collect::<Result<_, _>>()?;
        let server = self
            .server
            .as_deref()
            .and_then(ServerName::parse)
            .ok_or(Skip::Unreadable)?;
        let tool = match self.tool.as_deref() {
            Some(t) => Some(ToolName::parse(t).ok_or(Skip::Unreadable)?),
            None => None,
        };
        let facts = RequestFacts {
            server,
            call: Call::Rpc(RpcFacts {
                method: self.method.clone(),
                tool,
                uri: None,
                prompt: None,
            }),
        };
        let subject = Subject {
            tid: &tid,
            oid: &oid,
            upn: self.upn.as_deref(),
            groups: &groups,
        };
        let now = match decide(candidate, &subject, &facts).result {
            Ok(_) => Answer::Allow,
            Err(r) => Answer::Deny(r.code().to_owned()),
        };
        Ok((then, now))
    }
}

/// What changed, and how often.
#[derive(Debug, Default)]
pub struct Report {
    pub replayed: u64,
    pub unchanged: u64,
    pub skipped: BTreeMap<Skip, u64>,
    /// (then, now, user, server, method, tool) → count.
    pub changes: BTreeMap<(Answer, Answer, String, String, String, String), u64>,
}

impl Report {
    pub fn add(&mut self, past: &Past, candidate: &Snapshot) {
        match past.replay(candidate) {
            Err(skip) => *self.skipped.entry(skip).or_default() += 1,
            Ok((then, now)) => {
                self.replayed += 1;
                if then == now {
                    self.unchanged += 1;
                } else {
                    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                    let user = past.upn.clone().unwrap_or_else(|| text(&past.user_oid));
                    *self
                        .changes
                        .entry((
                            then,
                            now,
                            user,
                            text(&past.server),
                            text(&past.method),
                            text(&past.tool),
                        ))
                        .or_default() += 1;
                }
            }
        }
    }

    pub fn changed(&self) -> u64 {
        self.changes.values().sum()
    }

    pub fn write(&self, out: &mut impl Write, show: usize) -> std::io::Result<()> {
        let count = |pred: &dyn Fn(&Answer, &Answer) -> bool| -> u64 {
            self.changes
                .iter()
                .filter(|((a, b, ..), _)| pred(a, b))
                .map(|(_, n)| n)
                .sum()
        };
        let to_deny = count(&|a, b| *a == Answer::Allow && *b != Answer::Allow);
        let to_allow = count(&|a, b| *a != Answer::Allow && *b == Answer::Allow);
        let reason = count(&|a, b| *a != Answer::Allow && *b != Answer::Allow);
        let skipped = |s: Skip| self.skipped.get(&s).copied().unwrap_or(0);
        writeln!(out, "replayed   {} decisions", self.replayed)?;
        writeln!(out, "unchanged  {}", self.unchanged)?;
        writeln!(out, "allow → deny         {to_deny}")?;
        writeln!(out, "deny → allow         {to_allow}")?;
        writeln!(out, "deny, other reason   {reason}")?;
        writeln!(
            out,
            "not replayable: {} not decided by the policy (token, request, rate limit, session), {} without recorded groups, {} unreadable",
            skipped(Skip::NotPolicy),
            skipped(Skip::NoGroups),
            skipped(Skip::Unreadable)
        )?;
        if self.changes.is_empty() {
            return Ok(());
        }
        writeln!(out, "changes, most frequent first:")?;
        let mut rows: Vec<_> = self.changes.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        for ((then, now, user, server, method, tool), n) in rows.iter().take(show) {
            writeln!(
                out,
                "  {n:>6}× {then} → {now}   user {user}  server {server}  {method} {tool}"
            )?;
        }
        if rows.len() > show {
            writeln!(out, "  … and {} more kinds of change", rows.len() - show)?;
        }
        Ok(())
    }
}

/// Events of a JSON-lines audit file (`audit.sink: jsonl`, or the decision log captured from
/// stdout): each line one event; a line that is not one is counted unreadable, with the first
/// few line numbers named.
pub fn read_jsonl(
    path: &Path,
    mut each: impl FnMut(&Past),
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut bad = Vec::new();
    let mut bad_count = 0u64;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Past>(&line) {
            Ok(p) => each(&p),
            Err(_) => {
                bad_count += 1;
                if bad.len() < 5 {
                    bad.push(i + 1);
                }
            }
        }
    }
    if bad_count > 0 {
        writeln!(
            out,
            "note  {bad_count} lines of {} are not audit events (lines {bad:?}…): skipped",
            path.display()
        )?;
    }
    Ok(())
}

/// The audit rows of the last `since_hours` hours (at most `limit`, newest first), with their
/// group sets; how many were read.
pub async fn read_postgres(
    pool: &sqlx::PgPool,
    since_hours: u32,
    limit: i64,
    mut each: impl FnMut(&Past),
) -> anyhow::Result<usize> {
    let rows: Vec<Past> = sqlx::query_as(
        "SELECT e.authenticated, e.user_oid::text AS user_oid, e.upn,
                e.directory_tid::text AS directory_tid, e.server, e.method, e.tool,
                e.result, e.reason, g.groups::text[] AS groups
         FROM audit_events e LEFT JOIN audit_group_sets g ON g.id = e.group_set
         WHERE e.at >= now() - make_interval(hours => $1::int)
         ORDER BY e.at DESC LIMIT $2",
    )
    .bind(since_hours as i32)
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("read audit_events")?;
    rows.iter().for_each(&mut each);
    Ok(rows.len())
}

/// Where the past decisions come from.
pub enum AuditSource<'a> {
    Jsonl(&'a Path),
    Postgres {
        pool: sqlx::PgPool,
        since_hours: u32,
        limit: i64,
    },
}

/// `mcp-authz policy replay`: the report; `Ok(false)` when decisions change and the caller
/// asked to fail on change.
pub async fn policy_replay(
    candidate: &Path,
    directories: &[String],
    source: AuditSource<'_>,
    fail_on_change: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let snapshot = match crate::policy::load_file(candidate, directories) {
        Ok(s) => s,
        Err(e) => {
            for p in e.problems() {
                writeln!(out, "FAIL  {p}")?;
            }
            return Ok(false);
        }
    };
    let mut report = Report::default();
    let from = match source {
        AuditSource::Jsonl(path) => {
            read_jsonl(path, |p| report.add(p, &snapshot), out)?;
            path.display().to_string()
        }
        AuditSource::Postgres {
            pool,
            since_hours,
            limit,
        } => {
            let n = read_postgres(&pool, since_hours, limit, |p| report.add(p, &snapshot)).await?;
            format!("PostgreSQL audit_events, last {since_hours} h ({n} rows, at most {limit})")
        }
    };
    writeln!(
        out,
        "candidate  {} (version {}) against {from}",
        candidate.display(),
        snapshot.version
    )?;
    report.write(out, 50)?;
    Ok(!(fail_on_change && report.changed() > 0))
}
