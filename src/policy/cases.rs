//! Questions asked of a snapshot without a server: `mcp-authz explain` asks one, `mcp-authz
//! policy test` a file of them with the answers expected (policy as code, in a GitOps job: no
//! database, no network). Both go through [`decide`], the code of the Check's own [`permit`]
//! (with the rows it used), so a test that passes here is what the gateway answers.
//!
//! [`permit`]: super::permit

use serde::Deserialize;

use super::decision::{Decision, Subject, decide};
use super::document::AccessLevel;
use super::snapshot::Snapshot;
use crate::ids::{DirectoryId, GroupId, ObjectId, ServerName, ToolName};
use crate::mcp::{Call, RequestFacts, RpcFacts};

/// The object id a question about a upn runs under: the nil GUID, which Entra never assigns
/// (a upn names no object; only upn grants, where the policy allows them, can match it).
const NO_OBJECT: &str = "00000000-0000-0000-0000-000000000000";

/// Who asks for what, as an operator writes it.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// An object id (GUID), or a upn.
    pub user: String,
    /// The user's directory; the default directory when absent.
    pub tid: Option<String>,
    pub groups: Vec<String>,
    pub server: String,
    pub tool: Option<String>,
    /// The JSON-RPC method: `tools/call` when a tool is named, else `initialize`.
    pub method: Option<String>,
}

/// An [`Ask`] parsed: the subject and request facts the decision reads.
#[derive(Debug)]
pub struct Resolved {
    pub tid: DirectoryId,
    pub oid: ObjectId,
    pub upn: Option<String>,
    pub groups: Vec<GroupId>,
    pub method: String,
    pub facts: RequestFacts,
}

impl Ask {
    /// Parses every field once, naming the one that is wrong.
    pub fn resolve(&self, default_tid: Option<&str>) -> Result<Resolved, String> {
        let tid = self
            .tid
            .as_deref()
            .or(default_tid)
            .ok_or("no directory: give tid (or a default directory)")?;
        let tid = DirectoryId::parse(tid).ok_or_else(|| format!("tid {tid:?} is not a GUID"))?;
        let (oid, upn) = match ObjectId::parse(&self.user) {
            Some(oid) => (oid, None),
            None if self.user.is_empty() => return Err("user is empty".into()),
            None => (
                ObjectId::parse(NO_OBJECT).ok_or("the nil GUID")?,
                Some(self.user.clone()),
            ),
        };
        let groups = self
            .groups
            .iter()
            .map(|g| {
                GroupId::parse(g)
                    .ok_or_else(|| format!("group {g:?} is not a group object id (GUID)"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let server = ServerName::parse(&self.server).ok_or_else(|| {
            format!(
                "server {:?} is not a server name ([A-Za-z0-9._-]+)",
                self.server
            )
        })?;
        let tool = self
            .tool
            .as_deref()
            .map(|t| ToolName::parse(t).ok_or("tool is empty"))
            .transpose()?;
        let method = self.method.clone().unwrap_or_else(|| {
            if tool.is_some() {
                "tools/call".into()
            } else {
                "initialize".into()
            }
        });
        Ok(Resolved {
            tid,
            oid,
            upn,
            groups,
            facts: RequestFacts {
                server,
                call: Call::Rpc(RpcFacts {
                    method: Some(method.clone()),
                    tool,
                    uri: None,
                    prompt: None,
                }),
            },
            method,
        })
    }
}

impl Resolved {
    /// The decision the gateway would make now on `snapshot`.
    pub fn decide<'s>(&self, snapshot: &'s Snapshot) -> Decision<'s> {
        let subject = Subject {
            tid: &self.tid,
            oid: &self.oid,
            upn: self.upn.as_deref(),
            groups: &self.groups,
        };
        decide(snapshot, &subject, &self.facts)
    }
}

/// A file of cases for `mcp-authz policy test`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The directory of cases that name none.
    #[serde(default)]
    pub tid: Option<String>,
    pub cases: Vec<Case>,
}

/// One case: a question and the answer expected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub user: String,
    #[serde(default)]
    pub tid: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub server: String,
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    pub expect: Expect,
    /// For `deny`: the reason code expected (`tool_denied`, `server_not_granted`, …).
    #[serde(default)]
    pub reason: Option<String>,
    /// For `allow`: the policy tenant expected.
    #[serde(default)]
    pub tenant: Option<String>,
    /// For `allow`: the access level expected.
    #[serde(default)]
    pub level: Option<AccessLevel>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
}

/// What one case found.
#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    /// The answer: `allow as engineering (write)`, `deny (tool_denied)`, or why the case could
    /// not be asked.
    pub got: String,
    /// The answer expected, in the same words.
    pub want: String,
    /// The rows behind the answer.
    pub basis: Vec<String>,
}

impl Case {
    fn ask(&self) -> Ask {
        Ask {
            user: self.user.clone(),
            tid: self.tid.clone(),
            groups: self.groups.clone(),
            server: self.server.clone(),
            tool: self.tool.clone(),
            method: self.method.clone(),
        }
    }

    fn want(&self) -> String {
        match self.expect {
            Expect::Allow => format!(
                "allow{}{}",
                self.tenant
                    .as_deref()
                    .map(|t| format!(" as {t}"))
                    .unwrap_or_default(),
                self.level.map(|l| format!(" ({l})")).unwrap_or_default()
            ),
            Expect::Deny => format!(
                "deny{}",
                self.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        }
    }

    /// Runs the case on `snapshot`.
    pub fn run(&self, snapshot: &Snapshot, default_tid: Option<&str>) -> CaseResult {
        let want = self.want();
        let resolved = match self.ask().resolve(default_tid) {
            Ok(r) => r,
            Err(e) => {
                return CaseResult {
                    name: self.name.clone(),
                    passed: false,
                    got: format!("not asked: {e}"),
                    want,
                    basis: Vec::new(),
                };
            }
        };
        let decision = resolved.decide(snapshot);
        let (got, passed) = match &decision.result {
            Ok(p) => (
                format!("allow as {} ({})", p.tenant, p.level),
                self.expect == Expect::Allow
                    && self.tenant.as_deref().is_none_or(|t| t == &**p.tenant)
                    && self.level.is_none_or(|l| l == p.level),
            ),
            Err(r) => (
                format!("deny ({})", r.code()),
                self.expect == Expect::Deny
                    && self.reason.as_deref().is_none_or(|want| want == r.code()),
            ),
        };
        CaseResult {
            name: self.name.clone(),
            passed,
            got,
            want,
            basis: decision.basis.iter().map(|o| o.to_string()).collect(),
        }
    }
}

impl CaseFile {
    /// Every case on `snapshot`, in file order. `default_tid` (the first allowed directory)
    /// applies where neither the case nor the file names one.
    pub fn run(&self, snapshot: &Snapshot, default_tid: Option<&str>) -> Vec<CaseResult> {
        let default_tid = self.tid.as_deref().or(default_tid);
        self.cases
            .iter()
            .map(|c| c.run(snapshot, default_tid))
            .collect()
    }
}
