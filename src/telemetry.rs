//! Logs, traces and spans:
//! - logging (here): structured JSON by default; `RUST_LOG` overrides the configured level;
//! - `otlp`: the OTLP/gRPC exporter of traces;
//! - `span`: a Check's trace context and the spans of its children and of background work.

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

mod otlp;
mod span;

pub use otlp::{Traces, start_traces};
pub use span::{TRACER, child_span, end_child, in_child, in_root, parent_context};

#[cfg(test)]
mod tests;
