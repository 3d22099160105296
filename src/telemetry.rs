//! Logging. Structured JSON by default; `RUST_LOG` overrides the configured level.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

// ---------------------------------------------------------------------------------------------
// Traces: OpenTelemetry over OTLP/gRPC, configured by the standard environment variables.

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};

/// What `OTEL_TRACES_SAMPLER` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum SamplerConfig {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    /// Follow the parent's sampling decision; use the inner sampler for roots.
    ParentBased(Box<SamplerConfig>),
}

/// Traces from `OTEL_*`. Off (no endpoint) unless `OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT` is set
/// or `OTEL_TRACES_EXPORTER=otlp` (which defaults the endpoint to `http://localhost:4317`).
/// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn them off.
#[derive(Clone, PartialEq)]
pub struct TracesConfig {
    pub endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP[_TRACES]_HEADERS` (values may be credentials: never printed).
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub service_name: String,
    pub resource: Vec<(String, String)>,
    pub sampler: SamplerConfig,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            endpoint: None,
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            service_name: "mcp-authz".into(),
            resource: Vec::new(),
            sampler: SamplerConfig::ParentBased(Box::new(SamplerConfig::AlwaysOn)),
        }
    }
}

impl std::fmt::Debug for TracesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracesConfig")
            .field("endpoint", &self.endpoint)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("service_name", &self.service_name)
            .field("sampler", &self.sampler)
            .finish()
    }
}

/// `k1=v1,k2=v2` with percent-decoding of values (W3C Baggage syntax, as the spec says).
fn key_values(var: &str, raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!("{var}: {item:?} is not key=value"));
        };
        let v =
            url::form_urlencoded::parse(format!("v={}", v.trim().replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
        out.push((k.trim().to_owned(), v));
    }
    Ok(out)
}

impl TracesConfig {
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Self, String> {
        let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let either = |specific: &str, general: &str| get(specific).or_else(|| get(general));
        let mut cfg = TracesConfig::default();
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(cfg);
        }
        let exporter = get("OTEL_TRACES_EXPORTER");
        match exporter {
            None | Some("otlp") | Some("none") => {}
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other}: only otlp (or none) is built in"
                ));
            }
        }
        if exporter == Some("none") {
            return Ok(cfg);
        }
        match either(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) {
            None | Some("grpc") => {}
            Some(p) => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={p}: only grpc is built in (point it at the collector's 4317)"
                ));
            }
        }
        cfg.endpoint = either(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        )
        .map(str::to_owned)
        .or_else(|| (exporter == Some("otlp")).then(|| "http://localhost:4317".to_owned()));
        if let Some(e) = &cfg.endpoint {
            let u = url::Url::parse(e).map_err(|err| format!("OTLP endpoint {e:?}: {err}"))?;
            if u.scheme() != "http" && u.scheme() != "https" {
                return Err(format!("OTLP endpoint {e:?}: http:// or https://"));
            }
        }
        if let Some(h) = either(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ) {
            cfg.headers = key_values("OTEL_EXPORTER_OTLP_HEADERS", h)?;
        }
        if let Some(t) = either(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            let ms: u64 = t
                .parse()
                .map_err(|_| format!("OTEL_EXPORTER_OTLP_TIMEOUT={t}: milliseconds"))?;
            cfg.timeout = Duration::from_millis(ms.clamp(1, 60_000));
        }
        if let Some(attrs) = get("OTEL_RESOURCE_ATTRIBUTES") {
            cfg.resource = key_values("OTEL_RESOURCE_ATTRIBUTES", attrs)?;
            if let Some((_, name)) = cfg.resource.iter().find(|(k, _)| k == "service.name") {
                cfg.service_name = name.clone();
            }
        }
        if let Some(name) = get("OTEL_SERVICE_NAME") {
            cfg.service_name = name.to_owned();
        }
        let ratio = || -> Result<f64, String> {
            match get("OTEL_TRACES_SAMPLER_ARG") {
                None => Ok(1.0),
                Some(a) => a
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| format!("OTEL_TRACES_SAMPLER_ARG={a}: a ratio in [0, 1]")),
            }
        };
        if let Some(s) = get("OTEL_TRACES_SAMPLER") {
            use SamplerConfig::*;
            cfg.sampler = match s {
                "always_on" => AlwaysOn,
                "always_off" => AlwaysOff,
                "traceidratio" => Ratio(ratio()?),
                "parentbased_always_on" => ParentBased(Box::new(AlwaysOn)),
                "parentbased_always_off" => ParentBased(Box::new(AlwaysOff)),
                "parentbased_traceidratio" => ParentBased(Box::new(Ratio(ratio()?))),
                other => return Err(format!("OTEL_TRACES_SAMPLER={other}: not a known sampler")),
            };
        }
        Ok(cfg)
    }
}

fn sampler(c: &SamplerConfig) -> opentelemetry_sdk::trace::Sampler {
    use opentelemetry_sdk::trace::Sampler;
    match c {
        SamplerConfig::AlwaysOn => Sampler::AlwaysOn,
        SamplerConfig::AlwaysOff => Sampler::AlwaysOff,
        SamplerConfig::Ratio(r) => Sampler::TraceIdRatioBased(*r),
        SamplerConfig::ParentBased(inner) => Sampler::ParentBased(Box::new(sampler(inner))),
    }
}

/// A running trace pipeline; `shutdown` flushes what is queued.
pub struct Traces {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

/// Starts the OTLP exporter (inside the Tokio runtime) and installs it as the global tracer
/// provider. `None` when traces are off.
pub fn start_traces(cfg: &TracesConfig) -> anyhow::Result<Option<Traces>> {
    use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
    let Some(endpoint) = &cfg.endpoint else {
        return Ok(None);
    };
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (k, v) in &cfg.headers {
        let key = tonic::metadata::AsciiMetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| anyhow::anyhow!("OTEL_EXPORTER_OTLP_HEADERS: bad header name {k:?}"))?;
        let value = v
            .parse()
            .map_err(|_| anyhow::anyhow!("OTEL_EXPORTER_OTLP_HEADERS: bad value for {k:?}"))?;
        metadata.insert(key, value);
    }
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(cfg.timeout)
        .with_metadata(metadata);
    if endpoint.starts_with("https://") {
        builder =
            builder.with_tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots());
    }
    let exporter = builder
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP exporter: {e}"))?;
    let mut attrs: Vec<KeyValue> = cfg
        .resource
        .iter()
        .filter(|(k, _)| k != "service.name")
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    attrs.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .with_attributes(attrs)
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler(&cfg.sampler))
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing::info!(endpoint = %endpoint, service = %cfg.service_name, "exporting traces over OTLP/gRPC");
    Ok(Some(Traces { provider }))
}

impl Traces {
    /// Flushes queued spans (bounded by the exporter timeout) and stops the exporter.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "trace exporter shutdown");
            }
        })
        .await;
    }
}

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

#[cfg(test)]
mod tests;
