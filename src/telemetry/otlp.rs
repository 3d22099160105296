//! The OTLP/gRPC trace exporter, installed as the global tracer provider.

use opentelemetry::KeyValue;

use crate::config::traces::{SamplerConfig, TracesConfig};

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
