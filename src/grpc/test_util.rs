//! Builders of Envoy's messages for tests, benchmarks and fuzzing seeds (feature `test-util`;
//! not in the production build).

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

/// A CheckRequest as Envoy sends it for a POST with a bearer token and a body (load
/// generators, fuzzing seeds, tests).
pub fn http_check_request(token: Option<&str>, path: &str, body: &[u8]) -> CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    let mut headers = std::collections::HashMap::new();
    headers.insert("content-type".to_string(), "application/json".to_string());
    if let Some(t) = token {
        headers.insert("authorization".to_string(), format!("Bearer {t}"));
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: path.into(),
                    host: "gateway.example".into(),
                    scheme: "https".into(),
                    headers,
                    raw_body: body.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
