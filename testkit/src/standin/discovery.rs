//! OIDC discovery (v1 and v2) and the JWKS endpoints, per tenant.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::*;

pub(super) fn unknown_tenant(tenant: &str) -> Response {
    aad_error(
        StatusCode::BAD_REQUEST,
        "invalid_tenant",
        90002,
        &format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
        ),
    )
}

pub(super) async fn discovery_v2(
    State(a): State<Arc<Authority>>,
    Path(tenant): Path<String>,
) -> Response {
    if let Some(resp) = a.oidc_refusal(&tenant) {
        return resp;
    }
    let base = a.base_url();
    let issuer_tid = a.issuer_tid(&tenant);
    Json(json!({
        "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/{issuer_tid}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/{tenant}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{base}/{tenant}/kerberos"),
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }))
    .into_response()
}

pub(super) async fn discovery_v1(
    State(a): State<Arc<Authority>>,
    Path(tenant): Path<String>,
) -> Response {
    if let Some(resp) = a.oidc_refusal(&tenant) {
        return resp;
    }
    let base = a.base_url();
    let issuer_tid = a.issuer_tid(&tenant);
    Json(json!({
        "token_endpoint": format!("{base}/{tenant}/oauth2/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/{tenant}/discovery/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
        "scopes_supported": ["openid"],
        "issuer": Authority::v1_issuer(&issuer_tid),
        "microsoft_multi_refresh_token": true,
        "authorization_endpoint": format!("{base}/{tenant}/oauth2/authorize"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/{tenant}/oauth2/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "amr", "nonce", "email", "given_name", "family_name", "nickname"],
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }))
    .into_response()
}

pub(super) async fn keys_v2(
    State(a): State<Arc<Authority>>,
    Path(tenant): Path<String>,
) -> Response {
    if let Some(resp) = a.oidc_refusal(&tenant) {
        return resp;
    }
    a.jwks_requests.fetch_add(1, Ordering::Relaxed);
    // The tenant-specific endpoint names that tenant; common/organizations the template.
    Json(a.jwks(Some(&a.v2_issuer(&a.issuer_tid(&tenant))))).into_response()
}

pub(super) async fn keys_v1(
    State(a): State<Arc<Authority>>,
    Path(tenant): Path<String>,
) -> Response {
    if let Some(resp) = a.oidc_refusal(&tenant) {
        return resp;
    }
    a.jwks_requests.fetch_add(1, Ordering::Relaxed);
    Json(a.jwks(None)).into_response()
}
