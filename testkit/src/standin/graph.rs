//! Microsoft Graph, the two calls that resolve a groups overage (ENTRA.md):
//! `POST /v1.0/users/{oid}/getMemberObjects` and
//! `GET /v1.0/users/{oid}/transitiveMemberOf/microsoft.graph.group` with `@odata.nextLink`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::jwt;
use super::{Authority, GRAPH_RESOURCE, time_string};
use crate::unix_now;

/// The application ID of Microsoft Graph, which v1 tokens for Graph carry as `aud`.
const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// Application permissions that allow reading a user's memberships.
const READ_PERMISSIONS: [&str; 3] = [
    "GroupMember.Read.All",
    "User.Read.All",
    "Directory.Read.All",
];
const MAX_TOP: usize = 999;
const DEFAULT_TOP: usize = 100;

pub(super) fn router() -> Router<Arc<Authority>> {
    Router::new()
        .route(
            "/v1.0/users/{oid}/getMemberObjects",
            post(get_member_objects),
        )
        .route(
            "/v1.0/users/{oid}/transitiveMemberOf/microsoft.graph.group",
            get(transitive_member_of),
        )
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": time_string().replace(' ', "T"),
                    "request-id": uuid::Uuid::new_v4().to_string(),
                    "client-request-id": uuid::Uuid::new_v4().to_string(),
                }
            }
        })),
    )
        .into_response()
}

/// Authentication, permission and injected faults, in the order Graph applies them.
async fn admit(a: &Authority, headers: &HeaderMap) -> Result<(), Response> {
    a.graph_calls.fetch_add(1, Ordering::Relaxed);
    let faults = a.take_graph_fault();
    if faults.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.delay_ms)).await;
    }
    if faults.down {
        return Err(graph_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "serviceNotAvailable",
            "The service is temporarily unavailable. Please retry later.",
        ));
    }
    if faults.throttle_next > 0 {
        let mut resp = graph_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests are being sent from this application. Please try again later.",
        );
        if let Some(ra) = faults.retry_after.as_deref().and_then(|v| v.parse().ok()) {
            resp.headers_mut().insert("retry-after", ra);
        }
        return Err(resp);
    }
    let invalid = || {
        graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        )
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(invalid)?;
    let c = jwt::verified_claims(a, token).ok_or_else(invalid)?;
    let base = a.base_url();
    let aud = c["aud"].as_str();
    let aud_ok =
        matches!(aud, Some(GRAPH_RESOURCE) | Some(GRAPH_APP_ID)) || aud == Some(base.as_str());
    if !aud_ok || c["exp"].as_u64().is_none_or(|e| e <= unix_now()) {
        return Err(invalid());
    }
    let roles: Vec<&str> = c["roles"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !roles.iter().any(|r| READ_PERMISSIONS.contains(r)) {
        return Err(graph_error(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        ));
    }
    Ok(())
}

fn not_found(oid: &str) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{oid}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MemberObjectsBody {
    // Required on the wire; every stand-in group is security-enabled, so both answers agree.
    #[allow(dead_code)]
    security_enabled_only: bool,
}

async fn get_member_objects(
    State(a): State<Arc<Authority>>,
    Path(oid): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(resp) = admit(&a, &headers).await {
        return resp;
    }
    if serde_json::from_slice::<MemberObjectsBody>(&body).is_err() {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            "Invalid request body: securityEnabledOnly is required.",
        );
    }
    let Some(groups) = a.user_groups(&oid) else {
        return not_found(&oid);
    };
    Json(json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(Edm.String)",
        "value": groups,
    }))
    .into_response()
}

async fn transitive_member_of(
    State(a): State<Arc<Authority>>,
    Path(oid): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = admit(&a, &headers).await {
        return resp;
    }
    let Some(groups) = a.user_groups(&oid) else {
        return not_found(&oid);
    };
    let top = match query.get("$top").map(|t| t.parse::<usize>()) {
        None => DEFAULT_TOP,
        Some(Ok(t)) if (1..=MAX_TOP).contains(&t) => t,
        Some(_) => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "Request_UnsupportedQuery",
                "Invalid page size specified: '$top'. Must be between 1 and 999 inclusive.",
            );
        }
    };
    let top = top.min(a.graph_page_size.load(Ordering::Relaxed).max(1));
    let start = match query.get("$skiptoken") {
        None => 0,
        Some(t) => match URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.strip_prefix("offset:")
                    .and_then(|n| n.parse::<usize>().ok())
            }) {
            Some(n) => n,
            None => {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "Request_BadRequest",
                    "Invalid paging token.",
                );
            }
        },
    };
    let page: Vec<_> = groups
        .iter()
        .skip(start)
        .take(top)
        .map(|id| json!({"@odata.type": "#microsoft.graph.group", "id": id}))
        .collect();
    let mut doc = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects(id)",
        "value": page,
    });
    if start + top < groups.len() {
        let token = URL_SAFE_NO_PAD.encode(format!("offset:{}", start + top));
        doc["@odata.nextLink"] = json!(format!(
            "{}/v1.0/users/{oid}/transitiveMemberOf/microsoft.graph.group?$select=id&$top={top}&$skiptoken={token}",
            a.base_url()
        ));
    }
    Json(doc).into_response()
}
