//! Trace context of a Check (W3C `traceparent`, B3) and the spans of its children and of
//! background work.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};

pub const TRACER: &str = "mcp-authz";

/// The parent of a Check's span: W3C `traceparent` (+ `tracestate`), else B3 (single `b3`
/// header or the `x-b3-*` set), else none (a root span).
pub fn parent_context(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
    b3: Option<&str>,
    b3_multi: (Option<&str>, Option<&str>, Option<&str>),
) -> Context {
    let sc = traceparent
        .and_then(|tp| parse_traceparent(tp, tracestate))
        .or_else(|| b3.and_then(parse_b3_single))
        .or_else(|| match b3_multi {
            (Some(t), Some(s), sampled) => b3_context(t, s, sampled),
            _ => None,
        });
    match sc {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    }
}

fn parse_traceparent(tp: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut parts = tp.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may add more.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version) || !lower_hex(trace) || !lower_hex(span) || !lower_hex(flags) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        state,
    ))
}

fn b3_context(trace: &str, span: &str, sampled: Option<&str>) -> Option<SpanContext> {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if !(trace.len() == 32 || trace.len() == 16) || span.len() != 16 || !hex(trace) || !hex(span) {
        return None;
    }
    // 64-bit B3 trace ids are left-padded to 128 bits.
    let trace = format!("{trace:0>32}").to_ascii_lowercase();
    let trace_id = TraceId::from_hex(&trace).ok()?;
    let span_id = SpanId::from_hex(&span.to_ascii_lowercase()).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = match sampled {
        Some("1") | Some("d") | Some("true") => TraceFlags::SAMPLED,
        _ => TraceFlags::default(),
    };
    Some(SpanContext::new(
        trace_id,
        span_id,
        flags,
        true,
        TraceState::default(),
    ))
}

fn parse_b3_single(b3: &str) -> Option<SpanContext> {
    let mut parts = b3.trim().split('-');
    let trace = parts.next()?;
    let span = parts.next()?;
    b3_context(trace, span, parts.next())
}

/// A child span of the current context's span, when there is a sampled one (else nothing, at
/// the cost of one thread-local read).
pub fn child_span(name: &'static str) -> Option<opentelemetry::global::BoxedSpan> {
    use opentelemetry::trace::Tracer;
    let cx = Context::current();
    let parent = cx.span().span_context().clone();
    if !parent.is_valid() || !parent.is_sampled() || parent.is_remote() {
        return None;
    }
    Some(opentelemetry::global::tracer(TRACER).start_with_context(name, &cx))
}

/// Ends a child span with an error status when the operation failed.
pub fn end_child(span: Option<opentelemetry::global::BoxedSpan>, error: Option<&str>) {
    use opentelemetry::trace::{Span, Status};
    if let Some(mut s) = span {
        if let Some(e) = error {
            s.set_status(Status::error(e.to_owned()));
        }
        s.end();
    }
}

/// Runs `fut` in a child span of the current Check's span (nothing when there is none), with
/// the error's text as the span status on failure.
pub async fn in_child<T, E: std::fmt::Display>(
    name: &'static str,
    attrs: Vec<KeyValue>,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    use opentelemetry::trace::Span as _;
    let Some(mut span) = child_span(name) else {
        return fut.await;
    };
    span.set_attributes(attrs);
    finish(span, fut).await
}

/// Runs `fut` in a root span (background work such as a policy reload or an audit write);
/// a no-op span when traces are off.
pub async fn in_root<T, E: std::fmt::Display>(
    name: &'static str,
    attrs: Vec<KeyValue>,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    use opentelemetry::trace::{Span as _, Tracer as _};
    let mut span = opentelemetry::global::tracer(TRACER).start_with_context(name, &Context::new());
    if !span.is_recording() {
        return fut.await;
    }
    span.set_attributes(attrs);
    finish(span, fut).await
}

async fn finish<T, E: std::fmt::Display>(
    span: opentelemetry::global::BoxedSpan,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    use opentelemetry::trace::{FutureExt as _, Status};
    let cx = Context::current().with_span(span);
    let result = fut.with_context(cx.clone()).await;
    let span = cx.span();
    if let Err(e) = &result {
        span.set_status(Status::error(e.to_string()));
    }
    span.end();
    result
}
