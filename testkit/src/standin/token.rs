//! The v2 token endpoint: client credentials (secret or certificate assertion) and
//! on-behalf-of, with Entra's error shapes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;

pub(super) const CLIENT_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Checks a client assertion (RFC 7523 as Entra profiles it): signed by the client's registered
/// certificate named by `x5t`, `aud` the token endpoint, `iss` = `sub` = the client, in time.
pub(super) fn assertion_ok(
    client: &Client,
    client_id: &str,
    token_endpoint: &str,
    d: &jwt::Decoded<'_>,
) -> bool {
    let Some(cert) = &client.certificate else {
        return false;
    };
    let now = unix_now();
    let (header, claims) = (&d.header, &d.claims);
    header["alg"] == "RS256"
        && header["x5t"].as_str() == Some(cert.x5t.as_str())
        && d.verify_with_spki(&cert.public_key_der)
        && claims["aud"].as_str() == Some(token_endpoint)
        && claims["iss"].as_str() == Some(client_id)
        && claims["sub"].as_str() == Some(client_id)
        && claims["exp"].as_u64().is_some_and(|e| e > now)
        && claims["nbf"].as_u64().is_none_or(|n| n <= now + 300)
}

#[derive(Deserialize)]
pub(super) struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    pub(super) scope: Option<String>,
    assertion: Option<String>,
    requested_token_use: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
    pub(super) code: Option<String>,
    pub(super) redirect_uri: Option<String>,
    pub(super) code_verifier: Option<String>,
    pub(super) refresh_token: Option<String>,
    /// RFC 8707: refused, as Entra refuses it.
    pub(super) resource: Option<String>,
}

pub(super) const OBO_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The on-behalf-of grant: the API (client) trades the user's token for one for `scope`.
pub(super) fn on_behalf_of(
    a: &Authority,
    tenant: &str,
    client_id: &str,
    form: &TokenForm,
) -> Response {
    if form.requested_token_use.as_deref() != Some("on_behalf_of") {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'requested_token_use'.",
        );
    }
    let bad_assertion =
        |code: u32, text: &str| aad_error(StatusCode::BAD_REQUEST, "invalid_grant", code, text);
    let Some(assertion) = form.assertion.as_deref() else {
        return bad_assertion(50027, "JWT token is invalid or malformed.");
    };
    if jwt::decode(assertion).is_none() {
        return bad_assertion(50027, "JWT token is invalid or malformed.");
    }
    let Some(c) = jwt::verified_claims(a, assertion) else {
        return bad_assertion(50013, "Assertion failed signature validation.");
    };
    if c["exp"].as_u64().is_none_or(|e| e <= unix_now()) {
        return bad_assertion(500133, "Assertion is not within its valid time range.");
    }
    if c["aud"].as_str() != Some(client_id) {
        return bad_assertion(
            500131,
            "Assertion audience does not match the Client app presenting the assertion.",
        );
    }
    if c.get("scp").is_none() {
        return bad_assertion(
            50013,
            "Assertion is not a user token: on-behalf-of needs a delegated token.",
        );
    }
    if a.obo_interaction_required.load(Ordering::Relaxed) {
        let now = time_string();
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": "interaction_required",
                "error_description": format!("AADSTS50076: Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '{}'. Trace ID: {} Correlation ID: {} Timestamp: {now}", form.scope.as_deref().unwrap_or(""), uuid::Uuid::new_v4(), uuid::Uuid::new_v4()),
                "error_codes": [50076],
                "timestamp": now,
                "trace_id": uuid::Uuid::new_v4().to_string(),
                "correlation_id": uuid::Uuid::new_v4().to_string(),
                "error_uri": format!("{}/error?code=50076", a.base_url()),
                "suberror": "basic_action",
                "claims": "{\"access_token\":{\"capolids\":{\"essential\":true,\"values\":[\"c1a7f6f4-2f7e-4c1a-9d4e-3b8f0c2a1d11\"]}}}",
            })),
        )
            .into_response();
    }
    let scope = form.scope.clone().unwrap_or_default();
    let (resource, scp) = match scope.rsplit_once('/') {
        Some((r, ".default")) => (r.to_owned(), "access_as_user".to_owned()),
        Some((r, s)) if !r.is_empty() && !s.is_empty() => (r.to_owned(), s.to_owned()),
        _ => {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                70011,
                &format!(
                    "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
                ),
            );
        }
    };
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let req = MintRequest {
        tid: tenant.to_ascii_lowercase(),
        oid: text(&c["oid"]).unwrap_or_default(),
        aud: resource,
        ver: "2.0".into(),
        scp: Some(scp),
        roles: Vec::new(),
        groups: Vec::new(),
        overage: false,
        hasgroups: false,
        upn: text(&c["preferred_username"]).or_else(|| text(&c["upn"])),
        name: text(&c["name"]),
        azp: Some(client_id.to_owned()),
        expires_in: 3599,
        nbf_offset: 0,
        iat_offset: 0,
        kid: None,
        iss: None,
        extra: serde_json::Map::new(),
    };
    match a.mint(&req) {
        Ok(token) => Json(json!({
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": token,
        }))
        .into_response(),
        Err(e) => aad_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", 50000, &e),
    }
}

pub(super) async fn token_endpoint(
    State(a): State<Arc<Authority>>,
    Path(tenant): Path<String>,
    Form(form): Form<TokenForm>,
) -> Response {
    a.token_requests.fetch_add(1, Ordering::Relaxed);
    if a.token_endpoint_down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
    }
    if !a.serves(&tenant) {
        return unknown_tenant(&tenant);
    }
    let obo = form.grant_type.as_deref() == Some(OBO_GRANT);
    let user_grant = matches!(
        form.grant_type.as_deref(),
        Some("authorization_code") | Some("refresh_token")
    );
    match form.grant_type.as_deref() {
        Some("client_credentials") => {}
        Some(OBO_GRANT) => {}
        Some("authorization_code") | Some("refresh_token") => {}
        Some(other) => {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{other}'."),
            );
        }
        None => {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            );
        }
    }
    let Some(client_id) = form.client_id.clone() else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let client = read(&a.clients).get(&client_id).cloned();
    let endpoint = format!("{}/{tenant}/oauth2/v2.0/token", a.base_url());
    let wrong_secret = || {
        aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app.",
        )
    };
    // Entra names an app it does not know (before any credential is looked at).
    let Some(client) = client else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        );
    };
    match (
        &form.client_secret,
        &form.client_assertion_type,
        &form.client_assertion,
    ) {
        (Some(secret), None, None) if !client.secret.is_empty() && *secret == client.secret => {}
        // An assertion the app signed itself (`iss` = the app) is a certificate credential;
        // any other issuer's is matched against its federated credentials.
        (None, Some(t), Some(assertion)) if t == CLIENT_ASSERTION_TYPE => {
            let Some(d) = jwt::decode(assertion) else {
                return federated::malformed();
            };
            if d.claims["iss"].as_str() == Some(client_id.as_str()) {
                if !assertion_ok(&client, &client_id, &endpoint, &d) {
                    return wrong_secret();
                }
            } else if let Err(refusal) = federated::check(&a.http, &client, &d).await {
                return refusal;
            }
        }
        (None, None, None) if user_grant && client.is_public() => {}
        (None, None, None) => {
            return aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            );
        }
        _ => return wrong_secret(),
    }
    match form.grant_type.as_deref() {
        Some("authorization_code") => return authorize::redeem_code(&a, &client_id, &form),
        Some("refresh_token") => return authorize::redeem_refresh(&a, &client_id, &form),
        _ => {}
    }
    if obo {
        return on_behalf_of(&a, &tenant, &client_id, &form);
    }
    let scope = form.scope.clone().unwrap_or_default();
    let Some(resource) = scope.strip_suffix("/.default") else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        );
    };
    // The stand-in also serves Graph at its own base URL, which is then a Graph resource too.
    let roles = if resource == GRAPH_RESOURCE || resource == a.base_url() {
        client.graph_roles.clone()
    } else {
        Vec::new()
    };
    let lifetime = a.app_token_lifetime.load(Ordering::Relaxed);
    // Graph issues v1 app tokens; Entra adds `idtyp: app` when configured, as Graph's are.
    let req = MintRequest {
        tid: tenant.to_ascii_lowercase(),
        oid: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, client_id.as_bytes()).to_string(),
        aud: resource.to_owned(),
        ver: "1.0".into(),
        scp: None,
        roles,
        groups: Vec::new(),
        overage: false,
        hasgroups: false,
        upn: None,
        name: None,
        azp: Some(client_id),
        expires_in: lifetime as i64,
        nbf_offset: 0,
        iat_offset: 0,
        kid: None,
        iss: None,
        extra: serde_json::Map::from_iter([("idtyp".to_string(), json!("app"))]),
    };
    match a.mint(&req) {
        Ok(token) => Json(json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }))
        .into_response(),
        Err(e) => aad_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", 50000, &e),
    }
}
