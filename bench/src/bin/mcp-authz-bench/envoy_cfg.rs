//! The Envoy configurations of the benchmark. Every one is the product's own `envoy/envoy.yaml`
//! rendered as a deployment would render it; the baselines differ from it only in the HTTP
//! filter chain: none (no auth), or Envoy's in-process `jwt_authn` in place of ext_authz (and
//! neither has the list filter, ext_proc to mcp-authz).

use std::collections::HashMap;

use anyhow::Context as _;
use serde_yaml_ng::Value;

pub enum Variant {
    /// No authorization filter at all.
    NoAuth,
    /// `jwt_authn` with the JWKS inline; `cache` sets `jwt_cache_config.jwt_cache_size`.
    JwtAuthn {
        issuer: String,
        audience: String,
        jwks: String,
        cache: Option<usize>,
    },
    /// The product config: ext_authz to mcp-authz over TCP or the unix socket; `lists: false`
    /// without its list filter (ext_proc), for the unfiltered list row.
    ExtAuthz { unix: bool, lists: bool },
}

const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
/// The list filter (the composite filter that creates ext_proc to mcp-authz for list
/// requests): part of the product, so not of a baseline.
const LIST_FILTER: &str = "envoy.filters.http.composite";

/// `template` rendered with `vars` (plus `AUTHZ_CLUSTER`, from the variant), then changed
/// as the variant says.
pub fn render(
    template: &str,
    vars: &HashMap<String, String>,
    variant: &Variant,
) -> anyhow::Result<String> {
    let mut vars = vars.clone();
    let cluster = match variant {
        Variant::ExtAuthz { unix: true, .. } => "mcp_authz_uds",
        _ => "mcp_authz_tcp",
    };
    vars.insert("AUTHZ_CLUSTER".into(), cluster.into());
    let text = mcp_authz::cli::render_template(template, &vars)
        .map_err(|e| anyhow::anyhow!("envoy template: {e}"))?;
    if let Variant::ExtAuthz { lists: true, .. } = variant {
        return Ok(text);
    }
    let mut doc: Value = serde_yaml_ng::from_str(&text).context("parse rendered envoy.yaml")?;
    let filters = http_filters(&mut doc)?;
    filters.retain(|f| f.get("name").and_then(Value::as_str) != Some(LIST_FILTER));
    if let Variant::ExtAuthz { .. } = variant {
        return serde_yaml_ng::to_string(&doc).context("write envoy.yaml");
    }
    let at = filters
        .iter()
        .position(|f| f.get("name").and_then(Value::as_str) == Some(EXT_AUTHZ))
        .ok_or_else(|| anyhow::anyhow!("envoy.yaml has no {EXT_AUTHZ} filter"))?;
    match variant {
        Variant::NoAuth => {
            filters.remove(at);
        }
        Variant::JwtAuthn {
            issuer,
            audience,
            jwks,
            cache,
        } => {
            let mut provider = serde_json::json!({
                "issuer": issuer,
                "audiences": [audience],
                "local_jwks": {"inline_string": jwks},
                "forward": true,
            });
            if let Some(size) = cache {
                provider["jwt_cache_config"] = serde_json::json!({"jwt_cache_size": size});
            }
            let filter = serde_json::json!({
                "name": "envoy.filters.http.jwt_authn",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                    "providers": {"entra": provider},
                    "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "entra"}}],
                },
            });
            filters[at] = serde_yaml_ng::to_value(filter)?;
        }
        Variant::ExtAuthz { .. } => {}
    }
    Ok(serde_yaml_ng::to_string(&doc)?)
}

fn http_filters(doc: &mut Value) -> anyhow::Result<&mut Vec<Value>> {
    doc.get_mut("static_resources")
        .and_then(|v| v.get_mut("listeners"))
        .and_then(Value::as_sequence_mut)
        .and_then(|ls| {
            ls.iter_mut()
                .find(|l| l.get("name").and_then(Value::as_str) == Some("mcp"))
        })
        .and_then(|v| v.get_mut("filter_chains"))
        .and_then(|v| v.get_mut(0))
        .and_then(|v| v.get_mut("filters"))
        .and_then(|v| v.get_mut(0))
        .and_then(|v| v.get_mut("typed_config"))
        .and_then(|v| v.get_mut("http_filters"))
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "envoy.yaml: no listener mcp with filter_chains[0].filters[0].typed_config.http_filters"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> HashMap<String, String> {
        [
            "ENVOY_ADMIN_PORT",
            "ENVOY_LISTEN_PORT",
            "AUTHZ_PORT",
            "METADATA_PORT",
            "UPSTREAM_PORT",
        ]
        .iter()
        .map(|k| (k.to_string(), "1".to_string()))
        .chain(
            [
                "ENVOY_LISTEN_ADDRESS",
                "AUTHZ_HOST",
                "METADATA_HOST",
                "UPSTREAM_HOST",
            ]
            .iter()
            .map(|k| (k.to_string(), "127.0.0.1".to_string())),
        )
        .chain([
            ("AUTHZ_SOCKET".to_string(), "/tmp/x.sock".to_string()),
            (
                "PUBLIC_BASE_URL".to_string(),
                "https://mcp.bench.example".to_string(),
            ),
        ])
        .collect()
    }

    /// Every row keeps the shipped CORS filter (it answers only requests with an Origin).
    const CORS: &str = "envoy.filters.http.cors";

    fn filters(text: &str) -> Vec<Value> {
        let mut doc: Value = serde_yaml_ng::from_str(text).expect("yaml");
        http_filters(&mut doc).expect("filters").clone()
    }

    fn names(text: &str) -> Vec<String> {
        filters(text)
            .iter()
            .filter_map(|f| f.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }

    fn template() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/envoy.yaml"))
            .expect("envoy/envoy.yaml")
    }

    /// The baselines differ from the shipped config only in the filter chain; the mcp-authz
    /// rows are the shipped config itself, with the cluster the row names.
    #[test]
    fn each_row_gets_the_filter_chain_it_claims() {
        let t = template();
        let tcp = render(
            &t,
            &vars(),
            &Variant::ExtAuthz {
                unix: false,
                lists: true,
            },
        )
        .expect("tcp");
        assert_eq!(
            names(&tcp),
            [CORS, EXT_AUTHZ, LIST_FILTER, "envoy.filters.http.router"]
        );
        assert!(tcp.contains("cluster_name: mcp_authz_tcp"));
        let uds = render(
            &t,
            &vars(),
            &Variant::ExtAuthz {
                unix: true,
                lists: true,
            },
        )
        .expect("uds");
        assert!(uds.contains("cluster_name: mcp_authz_uds"));
        let unfiltered = render(
            &t,
            &vars(),
            &Variant::ExtAuthz {
                unix: false,
                lists: false,
            },
        )
        .expect("no list filter");
        assert_eq!(
            names(&unfiltered),
            [CORS, EXT_AUTHZ, "envoy.filters.http.router"]
        );
        let none = render(&t, &vars(), &Variant::NoAuth).expect("no auth");
        assert_eq!(names(&none), [CORS, "envoy.filters.http.router"]);
        for cache in [None, Some(1000)] {
            let jwt = render(
                &t,
                &vars(),
                &Variant::JwtAuthn {
                    issuer: "https://issuer/v2.0".into(),
                    audience: "api".into(),
                    jwks: r#"{"keys":[]}"#.into(),
                    cache,
                },
            )
            .expect("jwt_authn");
            assert_eq!(
                names(&jwt),
                [
                    CORS,
                    "envoy.filters.http.jwt_authn",
                    "envoy.filters.http.router"
                ]
            );
            let f = filters(&jwt);
            let provider = &f[1]["typed_config"]["providers"]["entra"];
            assert_eq!(provider["issuer"].as_str(), Some("https://issuer/v2.0"));
            assert_eq!(
                provider["jwt_cache_config"]["jwt_cache_size"].as_u64(),
                cache.map(|c| c as u64)
            );
        }
    }

    #[test]
    fn an_unset_placeholder_is_refused() {
        let mut v = vars();
        v.remove("UPSTREAM_PORT");
        let err = render(&template(), &v, &Variant::NoAuth).expect_err("must refuse");
        assert!(err.to_string().contains("UPSTREAM_PORT"), "{err}");
    }
}
