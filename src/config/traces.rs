//! The trace exporter's settings, from the standard `OTEL_*` environment variables.

use std::collections::BTreeMap;
use std::time::Duration;

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
