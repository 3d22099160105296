//! The outcome of one Check: the answer for Envoy, its reason code, and what the phases learned
//! on the way. It is the one record of a decision: the metric, the audit event, the log line
//! and the span attributes are all derived from it here, never copied field by field.

use std::sync::Arc;

use opentelemetry::KeyValue;

use crate::audit::{AuditEvent, MAX_FIELD_CHARS, clean_text, field_limit};
use crate::groups::GroupsSource;
use crate::identity::Principal;
use crate::ids::{DirectoryId, ObjectId, ServerName, ToolName};
use crate::mcp::RequestFacts;
use crate::policy::Snapshot;
use crate::response::Verdict;

/// The reason code of every allow.
pub const ALLOWED: &str = "allowed";

/// What a Check learned, phase by phase. Fields stay `None` for phases it did not reach.
#[derive(Debug, Default)]
pub struct Seen {
    /// The request facts, as the client sent them (unverified until the token is).
    pub server: Option<ServerName>,
    pub method: Option<String>,
    pub tool: Option<ToolName>,
    /// Who the token names (its oid, tid and label are read from it): shared with the
    /// verified-token cache, never copied on the Check's path.
    pub principal: Option<Arc<Principal>>,
    pub token_cache_hit: Option<bool>,
    pub groups_source: Option<GroupsSource>,
    /// The policy the Check was decided on (its version is read from it).
    pub snapshot: Option<Arc<Snapshot>>,
    /// The policy tenant the request was allowed under (set from the policy phase on, so a
    /// later refusal, a rate limit say, names it too).
    pub tenant: Option<Arc<str>>,
    /// Shadow mode allowed a request the policy denied, for this reason.
    pub would_deny: Option<crate::reason::Reason>,
    /// The groups the policy decided with, when something records decisions (the audit,
    /// the decision log): shared, never copied on the Check's path.
    pub groups: Option<SeenGroups>,
}

/// Where the subject's groups came from, held by reference: the token's (read from
/// [`Seen::principal`]) or Graph's.
#[derive(Debug, Clone)]
pub enum SeenGroups {
    Token,
    Graph(Arc<[crate::ids::GroupId]>),
}

impl Seen {
    pub fn oid(&self) -> Option<&ObjectId> {
        self.principal.as_ref().map(|p| &p.oid)
    }

    pub fn directory_tid(&self) -> Option<&DirectoryId> {
        self.principal.as_ref().map(|p| &p.tid)
    }

    pub fn label(&self) -> Option<&str> {
        self.principal.as_ref().and_then(|p| p.label.as_deref())
    }

    /// The groups the policy decided with, when they were recorded.
    pub fn recorded_groups(&self) -> Option<&[crate::ids::GroupId]> {
        match self.groups.as_ref()? {
            SeenGroups::Token => match &self.principal.as_ref()?.groups {
                crate::identity::GroupsClaim::Listed(g) => Some(g),
                _ => Some(&[]),
            },
            SeenGroups::Graph(g) => Some(g),
        }
    }

    pub fn policy_version(&self) -> Option<&str> {
        self.snapshot.as_ref().map(|s| s.version.as_str())
    }

    pub fn from_facts(facts: Option<&RequestFacts>) -> Self {
        Seen {
            server: facts.map(|f| f.server.clone()),
            method: facts.and_then(|f| f.call.method().map(str::to_owned)),
            tool: facts.and_then(|f| f.call.tool_name().cloned()),
            ..Seen::default()
        }
    }
}

/// The result of one Check.
#[derive(Debug)]
pub struct CheckOutcome {
    pub decision_id: String,
    /// What Envoy is told: allow with headers, or deny with a status and body.
    pub verdict: Verdict,
    /// [`ALLOWED`], or the denial's reason code (also of a shadow mode `would_deny`).
    pub reason: &'static str,
    pub seen: Seen,
}

/// The fields a client chose (server, method, tool), cleaned of control characters and
/// bounded, tighter without a valid token: what the audit and a denial's log line write.
pub struct Chosen {
    pub server: Option<String>,
    pub method: Option<String>,
    pub tool: Option<String>,
}

/// One log line per Check, the same fields at either level.
macro_rules! check_line {
    ($level:expr, $o:expr, $server:expr, $method:expr, $tool:expr, $elapsed_us:expr) => {
        tracing::event!(
            $level,
            decision_id = %$o.decision_id, result = $o.result(), reason = $o.reason,
            server = $server, method = $method, tool = $tool,
            tenant = $o.seen.tenant.as_deref(), oid = $o.seen.oid().map(|o| o.as_str()),
            token_cache_hit = $o.seen.token_cache_hit,
            policy_version = $o.seen.policy_version(), elapsed_us = $elapsed_us, "check"
        )
    };
}

impl CheckOutcome {
    pub fn allowed(&self) -> bool {
        matches!(self.verdict, Verdict::Allow { .. } | Verdict::Answer { .. })
    }

    /// `allow`, `deny`, or `would_deny` (allowed by shadow mode; `reason` says why the
    /// policy refused).
    pub fn result(&self) -> &'static str {
        match (self.allowed(), self.seen.would_deny.is_some()) {
            (true, false) => "allow",
            (true, true) => "would_deny",
            (false, _) => "deny",
        }
    }

    /// An allow the policy made: logged at debug, sampled by the decision log. A `would_deny`
    /// is written and logged as a denial is.
    pub fn plain_allow(&self) -> bool {
        self.allowed() && self.seen.would_deny.is_none()
    }

    /// A valid token came with the request.
    pub fn authenticated(&self) -> bool {
        self.seen.principal.is_some()
    }

    pub fn chosen(&self) -> Chosen {
        let max = field_limit(self.authenticated());
        let text = |v: Option<&str>| v.map(|s| clean_text(s, max));
        Chosen {
            server: text(self.seen.server.as_deref()),
            method: text(self.seen.method.as_deref()),
            tool: text(self.seen.tool.as_deref()),
        }
    }

    pub fn audit_event(&self, chosen: &Chosen, at: f64, trace_id: Option<String>) -> AuditEvent {
        let text = |v: Option<&str>| v.map(|s| clean_text(s, MAX_FIELD_CHARS));
        AuditEvent {
            at,
            decision_id: self.decision_id.clone(),
            authenticated: self.authenticated(),
            user_oid: self.seen.oid().map(ToString::to_string),
            upn: text(self.seen.label()),
            directory_tid: self.seen.directory_tid().map(ToString::to_string),
            tenant: text(self.seen.tenant.as_deref()),
            server: chosen.server.clone(),
            method: chosen.method.clone(),
            tool: chosen.tool.clone(),
            result: self.result(),
            reason: self.reason,
            policy_version: text(self.seen.policy_version()),
            trace_id,
            groups: self
                .seen
                .recorded_groups()
                .map(|g| g.iter().map(ToString::to_string).collect()),
        }
    }

    /// The Check's log line: an allow at debug, a denial at info. A denial's fields are the
    /// client's own choice, so they are the cleaned and bounded ones (`chosen`), as in the
    /// audit: a request cannot write a quarter megabyte into every log line.
    pub fn log(&self, chosen: Option<&Chosen>, elapsed_us: u64) {
        match chosen {
            Some(c) if !self.plain_allow() => check_line!(
                tracing::Level::INFO,
                self,
                c.server.as_deref(),
                c.method.as_deref(),
                c.tool.as_deref(),
                elapsed_us
            ),
            _ => check_line!(
                tracing::Level::DEBUG,
                self,
                self.seen.server.as_deref(),
                self.seen.method.as_deref(),
                self.seen.tool.as_deref(),
                elapsed_us
            ),
        }
    }

    /// The attributes of the Check's span.
    pub fn span_attributes(&self) -> Vec<KeyValue> {
        let mut attrs = vec![
            KeyValue::new("mcp_authz.decision", self.result()),
            KeyValue::new("mcp_authz.reason", self.reason),
            KeyValue::new("mcp_authz.decision_id", self.decision_id.clone()),
        ];
        let opt = |k: &'static str, v: Option<&str>| v.map(|v| KeyValue::new(k, v.to_owned()));
        let s = &self.seen;
        attrs.extend(
            [
                opt("mcp_authz.tenant", s.tenant.as_deref()),
                opt("mcp_authz.server", s.server.as_deref()),
                opt("mcp.method.name", s.method.as_deref()),
                opt("gen_ai.tool.name", s.tool.as_deref()),
                opt("mcp_authz.policy_version", s.policy_version()),
            ]
            .into_iter()
            .flatten(),
        );
        if let Some(hit) = s.token_cache_hit {
            attrs.push(KeyValue::new("mcp_authz.token_cache_hit", hit));
        }
        if let Some(source) = s.groups_source {
            attrs.push(KeyValue::new("mcp_authz.groups_source", source.as_str()));
            attrs.push(KeyValue::new(
                "mcp_authz.groups_cache_hit",
                source.is_cached(),
            ));
        }
        if let Verdict::Deny { status, .. } = &self.verdict {
            attrs.push(KeyValue::new(
                "http.response.status_code",
                i64::from(*status),
            ));
        }
        attrs
    }

    /// A 5xx denial: the span's status is an error.
    pub fn is_server_error(&self) -> bool {
        matches!(&self.verdict, Verdict::Deny { status, .. } if *status >= 500)
    }
}
