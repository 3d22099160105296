//! One Check: [`Authorizer::check`] runs the phases (`phases.rs`: token → identity → request
//! facts → groups → policy → limits → upstream auth, each `Result<_, Denial>`, joined with
//! `?`) and records the [`CheckOutcome`] (`outcome.rs`) it yields, from which the metric, the
//! audit event, the log line and the span are all derived.

mod outcome;
mod phases;

use std::sync::Arc;
use std::time::Instant;

use crate::groups::GroupResolver;
use crate::identity::Validator;
use crate::mcp::HttpView;
use crate::policy::PolicyHandle;
use crate::response::ResponseSettings;

pub use outcome::{ALLOWED, CheckOutcome, Chosen, Seen};

/// Everything a Check needs; shared by all requests.
pub struct Authorizer {
    pub validator: Arc<Validator>,
    pub groups: GroupResolver,
    pub policy: Arc<PolicyHandle>,
    pub settings: ResponseSettings,
    /// The audit trail; `None` when no sink is configured.
    pub audit: Option<Arc<crate::audit::Auditor>>,
    /// Decisions as JSON lines on stdout (`decision_log`), when enabled.
    pub decision_log: Option<Arc<crate::audit::DecisionLog>>,
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
        self.metrics.check_seconds.observe(elapsed.as_secs_f64());
        self.metrics.decision(outcome.result(), outcome.reason);
        if let Some(hit) = outcome.seen.token_cache_hit {
            self.metrics.token_cache_lookup(hit);
        }
        // What the client chose is cleaned and bounded for the audit, the decision log and the
        // denial log line, once; an allowed Check that none of them records needs none of it.
        let logged = self
            .decision_log
            .as_ref()
            .filter(|d| d.wants(outcome.plain_allow(), &outcome.decision_id));
        let chosen = (self.audit.is_some() || logged.is_some() || !outcome.plain_allow())
            .then(|| outcome.chosen());
        if let Some(chosen) = &chosen
            && (self.audit.is_some() || logged.is_some())
        {
            let event = outcome.audit_event(
                chosen,
                crate::clock::unix_seconds_f64(),
                crate::audit::trace_id(input.view.traceparent),
            );
            match (&self.audit, logged) {
                (Some(audit), Some(log)) => {
                    log.record(event.clone());
                    audit.record(event);
                }
                (Some(audit), None) => audit.record(event),
                (None, Some(log)) => log.record(event),
                (None, None) => {}
            }
        }
        outcome.log(chosen.as_ref(), elapsed.as_micros() as u64);
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
        if out.is_server_error() {
            span.set_status(Status::error(out.reason));
        }
        span.set_attributes(out.span_attributes());
        span.end();
        out
    }
}

/// An authorizer built from a minimal config (one tenant, one server, a JWKS that is never
/// reached), for tests of what surrounds the decision; the directory holds its policy file.
#[cfg(test)]
pub(crate) fn test_parts() -> (tempfile::TempDir, crate::app::Parts) {
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
    let parts = crate::app::build(&cfg, None, None, None).expect("build");
    (dir, parts)
}

#[cfg(test)]
mod tests {
    /// The Check future is boxed and moved on every Check. Before the slow paths (Graph,
    /// JWKS refresh, Redis, OBO) were boxed it was 20 KB, and copying it was ~8 % of a warm
    /// Check's CPU (perf, `make bench`). This keeps it from growing back.
    #[test]
    fn a_check_future_stays_small() {
        let (_dir, parts) = super::test_parts();
        let req = crate::grpc::http_check_request(Some("a.b.c"), "/mcp/github", b"{}");
        let wire = crate::grpc::CheckWire::from_request(&req).expect("read back");
        let headers = crate::grpc::RequestHeaders::from_wire(&wire).expect("headers");
        let input = crate::grpc::check_input(&wire, &headers).expect("input");
        let fut = parts.authorizer.check(&input);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 4096, "the Check future is {size} bytes");
    }
}
