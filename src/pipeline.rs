//! One Check, phase by phase: request facts → identity → groups → policy → response.
//!
//! Order matters for what a client learns: without a valid token the answer is 401 whatever
//! the request asks for (no probing of server names or body rules before authentication);
//! request-shape errors come next; the policy decides last. Every failure is a denial with a
//! reason code; nothing here can allow by accident, since the only `Verdict::Allow` is built
//! from a policy `Allow`.

use std::sync::Arc;
use std::time::Instant;

use crate::groups::{GroupResolver, GroupsError};
use crate::identity::{self, Principal, PrincipalKind, TokenError, Validator};
use crate::mcp::{self, HttpView};
use crate::obo::OboError;
use crate::policy::{self, PolicyHandle, Subject};
use crate::response::{self, Denial, Identity, ResponseSettings, UpstreamAuth, Verdict};

/// Everything a Check needs; shared by all requests.
pub struct Authorizer {
    pub validator: Arc<Validator>,
    pub groups: GroupResolver,
    pub policy: Arc<PolicyHandle>,
    pub settings: ResponseSettings,
    /// The audit trail; `None` when no sink is configured.
    pub audit: Option<Arc<crate::audit::Auditor>>,
    /// On-behalf-of exchange, for servers with `token_forwarding: obo`.
    pub obo: Option<Arc<crate::obo::OboClient>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Rate limits; `None` switches them off whatever the policy says.
    pub limiter: Option<Arc<crate::ratelimit::Limiter>>,
    /// Signed identity assertions for upstreams (`identity_assertion`), when enabled.
    pub assertions: Option<Arc<crate::assertion::IdentityAssertions>>,
    /// Sessions bound to the identity that first used them; `None` switches that off.
    pub sessions: Option<Arc<crate::sessions::SessionBinder>>,
    /// Set when traces are exported: every Check gets a span.
    pub tracer: Option<opentelemetry::global::BoxedTracer>,
}

/// The result of one Check, with what the log line and audit need.
#[derive(Debug)]
pub struct CheckOutcome {
    pub decision_id: String,
    pub verdict: Verdict,
    pub reason: &'static str,
    pub allowed: bool,
    pub server: Option<String>,
    pub method: Option<String>,
    pub tool: Option<String>,
    pub tenant: Option<String>,
    pub oid: Option<String>,
    pub directory_tid: Option<String>,
    pub label: Option<String>,
    pub token_cache_hit: Option<bool>,
    /// `token`, `graph_cache`, `graph` or `stale`.
    pub groups_source: Option<&'static str>,
    pub policy_version: Option<String>,
}

/// The request as the pipeline sees it.
pub struct CheckInput<'a> {
    pub view: HttpView<'a>,
    /// Every `authorization` header value, as separate entries when the proxy kept them apart.
    pub authorization: Vec<&'a str>,
    /// Names of all inbound headers (to strip spoofed `x-mcp-*`).
    pub header_names: Vec<&'a str>,
    /// Trace context headers, to parent the Check's span.
    pub trace: TraceHeaders<'a>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct TraceHeaders<'a> {
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    pub b3: Option<&'a str>,
    pub b3_trace_id: Option<&'a str>,
    pub b3_span_id: Option<&'a str>,
    pub b3_sampled: Option<&'a str>,
}

impl Authorizer {
    /// The upstream's `authorization` for an `obo` server, or why there is none.
    async fn on_behalf_of(
        &self,
        principal: &Principal,
        allow: &policy::Allow,
        token: &str,
    ) -> Result<UpstreamAuth, Denial> {
        if principal.kind != PrincipalKind::User {
            return Err(Denial::Forbidden {
                code: "obo_user_only",
            });
        }
        let (Some(obo), Some(scope)) = (&self.obo, allow.server.obo_scope.as_deref()) else {
            tracing::error!(server = %allow.server.name, "server wants on-behalf-of tokens but no obo section is configured");
            return Err(Denial::Unavailable {
                code: "obo_unavailable",
            });
        };
        match obo
            .token(&principal.tid, &principal.oid, scope, token)
            .await
        {
            Ok(t) => Ok(UpstreamAuth::Replace(format!("Bearer {t}"))),
            Err(OboError::InteractionRequired { claims }) => {
                Err(Denial::ClaimsChallenge { claims })
            }
            Err(e) => {
                tracing::warn!(error = %e, server = %allow.server.name, "on-behalf-of exchange failed");
                Err(Denial::Unavailable { code: "obo_failed" })
            }
        }
    }

    pub fn ready(&self) -> bool {
        self.policy.is_loaded() && self.validator.keys().is_loaded()
    }

    pub async fn check(&self, input: &CheckInput<'_>) -> CheckOutcome {
        let started = Instant::now();
        let decision_id = uuid::Uuid::now_v7().to_string();
        let outcome = match &self.tracer {
            None => self.decide(input, decision_id).await,
            Some(tracer) => self.decide_traced(tracer, input, decision_id).await,
        };
        let elapsed = started.elapsed();
        let elapsed_us = elapsed.as_micros() as u64;
        self.metrics.check_seconds.observe(elapsed.as_secs_f64());
        self.metrics.decision(outcome.allowed, outcome.reason);
        if let Some(hit) = outcome.token_cache_hit {
            self.metrics.token_cache_lookup(hit);
        }
        use crate::audit::{MAX_FIELD_CHARS, clean_text, field_limit};
        // What the client chose is cleaned and bounded (tighter without a valid token) for the
        // audit and the denial log line, once; an allowed Check without an audit needs neither.
        let authenticated = outcome.oid.is_some();
        let text = |v: &Option<String>, max| v.as_deref().map(|s| clean_text(s, max));
        let chosen = (self.audit.is_some() || !outcome.allowed).then(|| {
            let max = field_limit(authenticated);
            (
                text(&outcome.server, max),
                text(&outcome.method, max),
                text(&outcome.tool, max),
            )
        });
        if let (Some(audit), Some((server, method, tool))) = (&self.audit, &chosen) {
            audit.record(crate::audit::AuditEvent {
                at: crate::audit::now_seconds(),
                decision_id: outcome.decision_id.clone(),
                authenticated,
                user_oid: outcome.oid.clone(),
                upn: text(&outcome.label, MAX_FIELD_CHARS),
                directory_tid: outcome.directory_tid.clone(),
                tenant: text(&outcome.tenant, MAX_FIELD_CHARS),
                server: server.clone(),
                method: method.clone(),
                tool: tool.clone(),
                result: if outcome.allowed { "allow" } else { "deny" },
                reason: outcome.reason,
                policy_version: text(&outcome.policy_version, MAX_FIELD_CHARS),
                trace_id: crate::audit::trace_id(input.view.traceparent),
            });
        }
        if outcome.allowed {
            tracing::debug!(
                decision_id = %outcome.decision_id, result = "allow", reason = outcome.reason,
                server = outcome.server.as_deref(), method = outcome.method.as_deref(),
                tool = outcome.tool.as_deref(), tenant = outcome.tenant.as_deref(),
                oid = outcome.oid.as_deref(), token_cache_hit = outcome.token_cache_hit,
                policy_version = outcome.policy_version.as_deref(), elapsed_us, "check"
            );
        } else if let Some((server, method, tool)) = &chosen {
            // A denial's fields are the client's own choice, logged at info: bounded as in the
            // audit, so that a request cannot write a quarter megabyte into every log line.
            tracing::info!(
                decision_id = %outcome.decision_id, result = "deny", reason = outcome.reason,
                server = server.as_deref(), method = method.as_deref(),
                tool = tool.as_deref(), tenant = outcome.tenant.as_deref(),
                oid = outcome.oid.as_deref(), token_cache_hit = outcome.token_cache_hit,
                policy_version = outcome.policy_version.as_deref(), elapsed_us, "check"
            );
        }
        outcome
    }

    /// `decide` inside a span that is a child of the caller's trace (Envoy's), so that the
    /// JWKS, Graph and Redis calls it makes become its children.
    async fn decide_traced(
        &self,
        tracer: &opentelemetry::global::BoxedTracer,
        input: &CheckInput<'_>,
        decision_id: String,
    ) -> CheckOutcome {
        use opentelemetry::KeyValue;
        use opentelemetry::trace::{FutureExt as _, SpanKind, Status, TraceContextExt, Tracer};
        let t = &input.trace;
        let parent = crate::telemetry::parent_context(
            t.traceparent,
            t.tracestate,
            t.b3,
            (t.b3_trace_id, t.b3_span_id, t.b3_sampled),
        );
        let span = tracer
            .span_builder("mcp-authz check")
            .with_kind(SpanKind::Server)
            .start_with_context(tracer, &parent);
        let cx = parent.with_span(span);
        let out = self
            .decide(input, decision_id)
            .with_context(cx.clone())
            .await;
        let span = cx.span();
        let mut attrs = vec![
            KeyValue::new(
                "mcp_authz.decision",
                if out.allowed { "allow" } else { "deny" },
            ),
            KeyValue::new("mcp_authz.reason", out.reason),
            KeyValue::new("mcp_authz.decision_id", out.decision_id.clone()),
        ];
        let opt = |k: &'static str, v: &Option<String>| v.clone().map(|v| KeyValue::new(k, v));
        attrs.extend(
            [
                opt("mcp_authz.tenant", &out.tenant),
                opt("mcp_authz.server", &out.server),
                opt("mcp.method.name", &out.method),
                opt("gen_ai.tool.name", &out.tool),
                opt("mcp_authz.policy_version", &out.policy_version),
            ]
            .into_iter()
            .flatten(),
        );
        if let Some(hit) = out.token_cache_hit {
            attrs.push(KeyValue::new("mcp_authz.token_cache_hit", hit));
        }
        if let Some(source) = out.groups_source {
            attrs.push(KeyValue::new("mcp_authz.groups_source", source));
            attrs.push(KeyValue::new(
                "mcp_authz.groups_cache_hit",
                matches!(source, "token" | "graph_cache"),
            ));
        }
        if let Verdict::Deny { status, .. } = &out.verdict {
            attrs.push(KeyValue::new(
                "http.response.status_code",
                i64::from(*status),
            ));
            if *status >= 500 {
                span.set_status(Status::error(out.reason));
            }
        }
        span.set_attributes(attrs);
        span.end();
        out
    }

    async fn decide(&self, input: &CheckInput<'_>, decision_id: String) -> CheckOutcome {
        let view = &input.view;
        let parsed = mcp::parse(view, &self.settings.path_prefix);
        let facts_ok = parsed.facts.as_ref().ok();
        let mut out = CheckOutcome {
            decision_id,
            verdict: Verdict::Deny {
                status: 500,
                headers: Vec::new(),
                body: String::new(),
            },
            reason: "",
            allowed: false,
            server: facts_ok.map(|f| f.server.clone()),
            method: facts_ok.and_then(|f| f.call.method().map(str::to_owned)),
            tool: facts_ok.and_then(|f| f.call.tool().map(str::to_owned)),
            tenant: None,
            oid: None,
            directory_tid: None,
            label: None,
            token_cache_hit: None,
            groups_source: None,
            policy_version: None,
        };
        let rpc_id = parsed.rpc_id;
        let deny = |out: &mut CheckOutcome, denial: Denial| {
            out.reason = denial.code();
            out.verdict = response::deny(
                denial,
                rpc_id,
                &out.decision_id,
                &self.settings,
                view,
                out.server.as_deref(),
            );
        };

        let token = match identity::bearer_token(&input.authorization) {
            Ok(t) => t,
            Err(e) => {
                let token_sent = e != TokenError::Missing;
                deny(
                    &mut out,
                    Denial::Unauthenticated {
                        code: e.code(),
                        token_sent,
                    },
                );
                return out;
            }
        };
        let verified = match self.validator.validate(token).await {
            Ok(v) => v,
            Err(e) => {
                let denial = if e.is_insufficient_scope() {
                    Denial::InsufficientScope { code: e.code() }
                } else if e.is_forbidden() {
                    Denial::Forbidden { code: e.code() }
                } else if e == TokenError::KeysUnavailable {
                    Denial::Unavailable { code: e.code() }
                } else {
                    Denial::Unauthenticated {
                        code: e.code(),
                        token_sent: true,
                    }
                };
                deny(&mut out, denial);
                return out;
            }
        };
        let principal = verified.principal;
        out.token_cache_hit = Some(verified.cache_hit);
        out.oid = Some(principal.oid.clone());
        out.directory_tid = Some(principal.tid.clone());
        out.label = principal.label.clone();

        let facts = match parsed.facts {
            Ok(f) => f,
            Err(e) => {
                deny(&mut out, Denial::BadRequest(e));
                return out;
            }
        };
        let Some(snapshot) = self.policy.load() else {
            deny(
                &mut out,
                Denial::Unavailable {
                    code: "policy_unavailable",
                },
            );
            return out;
        };
        out.policy_version = Some(snapshot.version.clone());
        let groups = match self.groups.groups(&principal).await {
            Ok((g, source)) => {
                out.groups_source = Some(source);
                g
            }
            Err(e @ GroupsError::OverageUnresolved) => {
                deny(&mut out, Denial::Forbidden { code: e.code() });
                return out;
            }
            // Graph is down or throttling and nothing usable is cached: a transient refusal.
            Err(e @ GroupsError::GraphUnavailable(_)) => {
                deny(&mut out, Denial::Unavailable { code: e.code() });
                return out;
            }
        };
        let subject = Subject {
            tid: &principal.tid,
            oid: &principal.oid,
            upn: principal.label.as_deref(),
            groups: &groups,
        };
        let decision = policy::decide(&snapshot, &subject, &facts);
        match decision.result {
            Ok(allow) => {
                if let Some(limiter) = &self.limiter {
                    let req = snapshot.rate_request(&allow, &principal.tid, &principal.oid, &facts);
                    if !req.is_empty() {
                        // Boxed, as every slow path here: keeps the Check future small.
                        let o = Box::pin(limiter.check(&req)).await;
                        if !o.allowed {
                            out.tenant = Some(allow.tenant.to_string());
                            deny(
                                &mut out,
                                Denial::RateLimited(response::RateLimitInfo::from_outcome(&o)),
                            );
                            return out;
                        }
                    }
                }
                // An allowed request in a session binds it, or is refused when the session is
                // someone else's.
                if let (Some(sessions), mcp::HeaderField::One(sid)) =
                    (&self.sessions, view.session_id)
                {
                    let owner = format!("{}/{}", principal.tid, principal.oid);
                    if Box::pin(sessions.bind(sid, &owner)).await.is_err() {
                        out.tenant = Some(allow.tenant.to_string());
                        deny(
                            &mut out,
                            Denial::Forbidden {
                                code: "session_not_owned",
                            },
                        );
                        return out;
                    }
                }
                let upstream_auth = match UpstreamAuth::for_forwarding(allow.token_forwarding) {
                    Some(a) => a,
                    None => match Box::pin(self.on_behalf_of(&principal, &allow, token)).await {
                        Ok(a) => a,
                        Err(denial) => {
                            out.tenant = Some(allow.tenant.to_string());
                            deny(&mut out, denial);
                            return out;
                        }
                    },
                };
                // The signed identity for the upstream, when it gets one: without it the upstream
                // would refuse or, worse, fall back, so a failure to sign fails closed.
                let assertion = match &self.assertions {
                    None => None,
                    Some(assertions) => {
                        let who = crate::assertion::Subject {
                            server: &allow.server.name,
                            tid: &principal.tid,
                            oid: &principal.oid,
                            label: principal.label.as_deref(),
                            tenant: &allow.tenant,
                            access_level: allow.level.as_str(),
                        };
                        match assertions.assertion(&who) {
                            Some(token) => Some(token),
                            None => {
                                out.tenant = Some(allow.tenant.to_string());
                                deny(
                                    &mut out,
                                    Denial::Unavailable {
                                        code: "identity_assertion_failed",
                                    },
                                );
                                return out;
                            }
                        }
                    }
                };
                out.allowed = true;
                out.reason = "allowed";
                out.tenant = Some(allow.tenant.to_string());
                out.verdict = response::allow(
                    &Identity {
                        oid: &principal.oid,
                        tid: &principal.tid,
                        label: principal.label.as_deref(),
                        tenant: &allow.tenant,
                        level: allow.level.as_str(),
                    },
                    &out.decision_id,
                    upstream_auth,
                    input.header_names.iter().copied(),
                );
                if let (Some(token), Verdict::Allow { set, remove }) = (assertion, &mut out.verdict)
                {
                    // Set (replacing a client's own), so not also removed: Envoy removes after it
                    // sets.
                    remove.retain(|n| n != crate::assertion::HEADER);
                    set.push((crate::assertion::HEADER, token.to_string()));
                }
            }
            Err(reason) => deny(
                &mut out,
                Denial::Forbidden {
                    code: reason.code(),
                },
            ),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    /// tonic boxes the Check future and moves it on every Check. Before the slow paths (Graph,
    /// JWKS refresh, Redis, OBO) were boxed it was 20 KB, and copying it was ~8 % of a warm
    /// Check's CPU (perf, `make bench`). This keeps it from growing back.
    #[test]
    fn a_check_future_stays_small() {
        let dir = tempfile::tempdir().expect("temp dir");
        let policy = dir.path().join("policy.yaml");
        std::fs::write(
            &policy,
            "tenants: [{name: t, servers: [github]}]\nservers: [{name: github}]\n",
        )
        .expect("write policy");
        let cfg = crate::config::Config::parse(
            &format!(
                r#"
listen: {{grpc: "127.0.0.1:0", admin: "127.0.0.1:0"}}
entra: {{authority: "http://127.0.0.1:9", allow_insecure_authority: true, tenants: ["3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c"], audiences: [api://x]}}
policy: {{file: "{}"}}
graph: {{base_url: "http://127.0.0.1:9", client_id: c, client_secret: s}}
mcp: {{public_base_url: "https://gw.example"}}
"#,
                policy.display()
            ),
            Vec::new(),
        )
        .expect("config");
        let parts = crate::app::build(&cfg, None, None).expect("build");
        let req = crate::grpc::http_check_request(Some("a.b.c"), "/mcp/github", b"{}");
        let headers = crate::grpc::RequestHeaders::from_check(&req);
        let input = crate::grpc::check_input(&req, &headers);
        let fut = parts.authorizer.check(&input);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 4096, "the Check future is {size} bytes");
    }
}
