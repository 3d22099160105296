//! Traces over OTLP/gRPC into a real receiver: the collector's `TraceService`, served with the
//! OpenTelemetry protobuf definitions. The Check span is a child of the caller's trace; JWKS,
//! Graph and Redis calls are its children; policy reloads and audit writes have spans of their
//! own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::support::helpers::*;
use crate::support::redis_server::RedisServer;

#[derive(Clone, Default)]
struct Receiver {
    /// (service.name, span)
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(AnyValue::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    async fn start() -> (Self, String) {
        let me = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let svc = TraceServiceServer::new(me.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        (me, url)
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().expect("lock").clone()
    }
}

fn attrs(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|a| {
            let v = match a.value.as_ref().and_then(|v| v.value.clone()) {
                Some(AnyValue::StringValue(s)) => s,
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (a.key.clone(), v)
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn otel_env(url: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), url.into()),
        ("OTEL_SERVICE_NAME".into(), "mcp-authz-test".into()),
    ]
}

const TRACE_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_B: &str = "0af7651916cd43dd8448eb211c80319c";
const ENVOY_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn check_spans_are_children_of_envoys_trace_with_jwks_graph_and_redis_children() {
    let (receiver, otlp) = Receiver::start().await;
    let redis = RedisServer::start();
    let (authority, dir, mut cfg) =
        super::graph::setup("get_member_objects", 300, 3600, &["GroupMember.Read.All"]).await;
    std::fs::write(
        dir.path().join("policy.yaml"),
        format!("{POLICY}rate_limits: {{user_per_minute: 600}}\n"),
    )
    .expect("policy");
    cfg.push_str(&format!("rate_limit: {{redis_url: \"{}\"}}\n", redis.url()));
    let inst = Instance::start_with_env(&cfg, otel_env(&otlp), true).await;
    let mut checker = Checker::connect(inst.addrs.grpc.expect("grpc")).await;

    // 1. An overage user (groups from Graph) under a user limit (Redis).
    let token = super::graph::overage_token(&authority, BOB, vec![ENG_GROUP.into()]);
    let tp = format!("00-{TRACE_A}-{ENVOY_SPAN}-01");
    let a = checker
        .check(
            Some(&token),
            "github",
            &tool_call_body(1, "echo"),
            Some(&tp),
        )
        .await
        .expect("check");
    assert_eq!(a.http_status, 200, "{a:?}");
    // 2. The same token again: cache hits, no Graph.
    checker
        .check(
            Some(&token),
            "github",
            &tool_call_body(2, "echo"),
            Some(&tp),
        )
        .await
        .expect("check");
    // 3. A key the gateway has not seen: a JWKS fetch inside the Check.
    let kid = authority.rotate(false);
    let rotated = mint_user(&authority, ALICE, &[]);
    assert!(rotated.len() > 10 && !kid.is_empty());
    let tp_b = format!("00-{TRACE_B}-{ENVOY_SPAN}-01");
    let b = checker
        .check(Some(&rotated), "github", &initialize_body(3), Some(&tp_b))
        .await
        .expect("check");
    assert_eq!(b.http_status, 200, "{b:?}");
    // 4. A denial without a trace context: a root span.
    let d = checker
        .check(None, "github", &initialize_body(4), None)
        .await
        .expect("check");
    assert_eq!(d.http_status, 401);

    // Stopping flushes the exporter.
    inst.stop().await;
    drop(dir);
    let spans = receiver.spans();
    assert!(
        spans.iter().all(|(svc, _)| svc == "mcp-authz-test"),
        "service names: {:?}",
        spans.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    let checks: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "mcp-authz check")
        .collect();
    assert_eq!(
        checks.len(),
        4,
        "{:#?}",
        spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
    );

    let first = checks
        .iter()
        .find(|s| {
            attrs(s)
                .get("mcp_authz.token_cache_hit")
                .map(String::as_str)
                == Some("false")
                && hex(&s.trace_id) == TRACE_A
        })
        .expect("the first Check's span");
    assert_eq!(
        hex(&first.parent_span_id),
        ENVOY_SPAN,
        "not a child of Envoy's span"
    );
    assert_eq!(first.kind, 2, "SPAN_KIND_SERVER");
    let at = attrs(first);
    for (k, v) in [
        ("mcp_authz.decision", "allow"),
        ("mcp_authz.reason", "allowed"),
        ("mcp_authz.tenant", "engineering"),
        ("mcp_authz.server", "github"),
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "echo"),
        ("mcp_authz.groups_source", "graph"),
        ("mcp_authz.groups_cache_hit", "false"),
    ] {
        assert_eq!(at.get(k).map(String::as_str), Some(v), "{k} in {at:?}");
    }
    assert!(at.contains_key("mcp_authz.policy_version"), "{at:?}");
    let children = |parent: &Span| -> Vec<String> {
        spans
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
            .map(|s| s.name.clone())
            .collect()
    };
    let mut names = children(first);
    names.sort();
    // The Graph app token was fetched at start by the renewal loop, outside any Check.
    assert_eq!(
        names,
        ["graph member groups", "redis rate limit"],
        "children of the first Check"
    );

    let second = checks
        .iter()
        .find(|s| {
            attrs(s)
                .get("mcp_authz.token_cache_hit")
                .map(String::as_str)
                == Some("true")
                && hex(&s.trace_id) == TRACE_A
        })
        .expect("the second Check's span");
    assert_eq!(
        attrs(second)
            .get("mcp_authz.groups_source")
            .map(String::as_str),
        Some("graph_cache")
    );
    assert_eq!(children(second), ["redis rate limit"]);

    let third = checks
        .iter()
        .find(|s| hex(&s.trace_id) == TRACE_B)
        .expect("the rotated-key Check's span");
    assert!(
        children(third).contains(&"jwks fetch".to_string()),
        "{:?}",
        children(third)
    );

    let denied = checks
        .iter()
        .find(|s| attrs(s).get("mcp_authz.decision").map(String::as_str) == Some("deny"))
        .expect("the denial's span");
    assert!(
        denied.parent_span_id.is_empty(),
        "a Check without trace context is a root"
    );
    assert_eq!(
        attrs(denied)
            .get("http.response.status_code")
            .map(String::as_str),
        Some("401")
    );
    assert_eq!(
        attrs(denied).get("mcp_authz.reason").map(String::as_str),
        Some("token_missing")
    );
}

#[tokio::test]
async fn policy_reloads_and_audit_writes_have_database_spans() {
    let (receiver, otlp) = Receiver::start().await;
    let db = crate::support::pg::TestDb::create().await;
    let (authority, url) = standin().await;
    let doc: mcp_authz::policy::PolicyDocument = serde_yaml_ng::from_str(POLICY).expect("policy");
    mcp_authz::policy::postgres::import_document(&db.pool, &doc, false, &directories())
        .await
        .expect("import");
    let inst =
        Instance::start_with_env(&db_config_yaml(&url, &db.url, true), otel_env(&otlp), true).await;
    let mut checker = Checker::connect(inst.addrs.grpc.expect("grpc")).await;
    let token = mint_user(&authority, ALICE, &[]);
    let a = checker
        .check(Some(&token), "github", &initialize_body(1), None)
        .await
        .expect("check");
    assert_eq!(a.http_status, 200);
    wait_until("audit written", std::time::Duration::from_secs(10), || {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_events")
                .fetch_one(&pool)
                .await
                .is_ok_and(|n| n >= 1)
        }
    })
    .await;
    inst.stop().await;
    let spans = receiver.spans();
    for name in ["policy reload", "audit write"] {
        let s = spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name:?} span"));
        assert_eq!(
            attrs(s).get("db.system.name").map(String::as_str),
            Some("postgresql")
        );
    }
}
