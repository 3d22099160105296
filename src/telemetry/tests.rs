use super::*;
use crate::config::traces::{SamplerConfig, TracesConfig};
use opentelemetry::trace::TraceContextExt;
use std::collections::BTreeMap;

#[test]
fn traceparent_is_parsed_strictly() {
    let cx = parent_context(
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        Some("congo=t61rcWkgMzE"),
        None,
        (None, None, None),
    );
    let sc = cx.span().span_context().clone();
    assert_eq!(
        sc.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
    assert!(sc.is_sampled() && sc.is_remote());
    assert_eq!(sc.trace_state().get("congo"), Some("t61rcWkgMzE"));
    for bad in [
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
        "garbage",
    ] {
        let cx = parent_context(Some(bad), None, None, (None, None, None));
        assert!(!cx.span().span_context().is_valid(), "accepted {bad}");
    }
}

#[test]
fn b3_single_and_multi_headers_are_understood() {
    let cx = parent_context(
        None,
        None,
        Some("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        (None, None, None),
    );
    let sc = cx.span().span_context().clone();
    assert_eq!(
        sc.trace_id().to_string(),
        "80f198ee56343ba864fe8b2a57d3eff7"
    );
    assert!(sc.is_sampled());
    let cx = parent_context(
        None,
        None,
        None,
        (
            Some("64fe8b2a57d3eff7"),
            Some("e457b5a2e4d86bd1"),
            Some("0"),
        ),
    );
    let sc = cx.span().span_context().clone();
    assert_eq!(
        sc.trace_id().to_string(),
        "000000000000000064fe8b2a57d3eff7"
    );
    assert!(!sc.is_sampled());
    // traceparent wins over B3.
    let cx = parent_context(
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        None,
        Some("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        (None, None, None),
    );
    assert_eq!(
        cx.span().span_context().trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
}

#[test]
fn otel_environment_is_read_and_checked() {
    let env = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        TracesConfig::from_env(&env(&[])).expect("ok").endpoint,
        None
    );
    let c = TracesConfig::from_env(&env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20abc,x-tenant=ops",
        ),
        ("OTEL_SERVICE_NAME", "authz-eu"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
    ]))
    .expect("ok");
    assert_eq!(c.endpoint.as_deref(), Some("http://collector:4317"));
    assert_eq!(c.headers[0], ("authorization".into(), "Bearer abc".into()));
    assert_eq!(c.service_name, "authz-eu");
    assert_eq!(
        c.sampler,
        SamplerConfig::ParentBased(Box::new(SamplerConfig::Ratio(0.25)))
    );
    assert!(!format!("{c:?}").contains("abc"), "header value printed");
    let c = TracesConfig::from_env(&env(&[("OTEL_TRACES_EXPORTER", "otlp")])).expect("ok");
    assert_eq!(c.endpoint.as_deref(), Some("http://localhost:4317"));
    let c = TracesConfig::from_env(&env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        ("OTEL_SDK_DISABLED", "true"),
    ]))
    .expect("ok");
    assert_eq!(c.endpoint, None);
    for bad in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
    ] {
        let e = TracesConfig::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            bad,
        ]))
        .expect_err("refused");
        assert!(e.contains(bad.0), "{e}");
    }
}
