//! Federated credentials (workload identity federation) as Entra checks them: a client
//! assertion that is not signed by the app itself is matched against the app's federated
//! identity credentials by issuer, subject and audience (case-sensitive), its signature
//! verified with the keys the issuer's OIDC discovery names, and its time range checked.
//! Failures answer with Entra's codes (AADSTS700211, 700213, 700212, 700024, 700027).

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::{Client, aad_error, jwt};
use crate::unix_now;

/// A federated identity credential on an app registration.
#[derive(Debug, Clone)]
pub struct FederatedCredential {
    pub issuer: String,
    /// e.g. `system:serviceaccount:mcp-gateway:mcp-authz`.
    pub subject: String,
    /// Entra's default: `api://AzureADTokenExchange`.
    pub audience: String,
}

const CHECK: &str = "Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation";

fn invalid_client(code: u32, text: &str) -> Response {
    aad_error(StatusCode::BAD_REQUEST, "invalid_client", code, text)
}

/// Entra's answer to a client assertion that is not a JWT at all.
pub(super) fn malformed() -> Response {
    invalid_client(50027, "JWT token is invalid or malformed.")
}

/// Checks the assertion `d` against `client`'s federated credentials; the refusal Entra would
/// send.
pub(super) async fn check(
    http: &reqwest::Client,
    client: &Client,
    d: &jwt::Decoded<'_>,
) -> Result<(), Response> {
    let iss = d.claims["iss"].as_str().unwrap_or_default();
    let sub = d.claims["sub"].as_str().unwrap_or_default();
    let audiences: Vec<&str> = match &d.claims["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let by_issuer: Vec<&FederatedCredential> = client
        .federated
        .iter()
        .filter(|f| f.issuer == iss)
        .collect();
    if by_issuer.is_empty() {
        return Err(invalid_client(
            700211,
            &format!(
                "No matching federated identity record found for presented assertion issuer '{iss}'. {CHECK}"
            ),
        ));
    }
    let by_subject: Vec<&&FederatedCredential> =
        by_issuer.iter().filter(|f| f.subject == sub).collect();
    if by_subject.is_empty() {
        return Err(invalid_client(
            700213,
            &format!(
                "No matching federated identity record found for presented assertion subject '{sub}'. {CHECK}"
            ),
        ));
    }
    if !by_subject
        .iter()
        .any(|f| audiences.contains(&f.audience.as_str()))
    {
        return Err(invalid_client(
            700212,
            &format!(
                "No matching federated identity record found for presented assertion audience '{}'. {CHECK}",
                audiences.join(",")
            ),
        ));
    }
    if !signed_by_issuer(http, iss, d).await {
        return Err(invalid_client(
            700027,
            "Client assertion failed signature validation.",
        ));
    }
    let now = unix_now();
    let exp = d.claims["exp"].as_u64().unwrap_or(0);
    let nbf = d.claims["nbf"].as_u64().unwrap_or(0);
    if exp <= now || nbf > now + 300 {
        return Err(invalid_client(
            700024,
            &format!(
                "Client assertion is not within its valid time range. Current time: {now}, assertion valid from {nbf}, expiry time of assertion {exp}."
            ),
        ));
    }
    Ok(())
}

/// Whether the issuer's published keys (discovery → `jwks_uri`) verify the assertion.
async fn signed_by_issuer(http: &reqwest::Client, iss: &str, d: &jwt::Decoded<'_>) -> bool {
    if d.header["alg"] != "RS256" {
        return false;
    }
    let fetch = |url: String| async move {
        let r = http.get(url).send().await.ok()?;
        r.status().is_success().then_some(())?;
        r.json::<Value>().await.ok()
    };
    let Some(discovery) = fetch(format!(
        "{}/.well-known/openid-configuration",
        iss.trim_end_matches('/')
    ))
    .await
    else {
        return false;
    };
    if discovery["issuer"].as_str() != Some(iss) {
        return false;
    }
    let Some(jwks_uri) = discovery["jwks_uri"].as_str() else {
        return false;
    };
    let Some(jwks) = fetch(jwks_uri.to_owned()).await else {
        return false;
    };
    let kid = d.header["kid"].as_str();
    jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|k| (kid.is_none() || k["kid"].as_str() == kid) && d.verify_with_jwk(k))
}
