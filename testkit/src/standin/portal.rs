//! What a real directory does through its portal, under `/_standin/`: minting user tokens,
//! rotating keys, injecting Graph faults, counting calls.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::*;

pub(super) async fn mint_endpoint(
    State(a): State<Arc<Authority>>,
    Json(req): Json<MintRequest>,
) -> Response {
    match a.mint(&req) {
        Ok(token) => Json(json!({ "access_token": token })).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

#[derive(Deserialize)]
pub(super) struct RotateRequest {
    #[serde(default)]
    retire_old: bool,
}

pub(super) async fn rotate_endpoint(
    State(a): State<Arc<Authority>>,
    Json(req): Json<RotateRequest>,
) -> Response {
    Json(json!({ "kid": a.rotate(req.retire_old) })).into_response()
}

pub(super) async fn faults_endpoint(
    State(a): State<Arc<Authority>>,
    Json(faults): Json<GraphFaults>,
) -> Response {
    a.set_graph_faults(faults);
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn stats_endpoint(State(a): State<Arc<Authority>>) -> Response {
    Json(json!({
        "graph_calls": a.graph_calls.load(Ordering::Relaxed),
        "token_requests": a.token_requests.load(Ordering::Relaxed),
        "jwks_requests": a.jwks_requests.load(Ordering::Relaxed),
    }))
    .into_response()
}

#[derive(Deserialize)]
pub(super) struct SignInRequest {
    oid: Option<String>,
}

/// `POST /_standin/signin {"oid": …}`: the browser's session is now this user (`null`: nobody).
pub(super) async fn signin_endpoint(
    State(a): State<Arc<Authority>>,
    Json(req): Json<SignInRequest>,
) -> Response {
    if let Some(oid) = &req.oid
        && a.user(oid).is_none()
    {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no such user" })),
        )
            .into_response();
    }
    a.sign_in(req.oid.as_deref());
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UserRequest {
    tid: String,
    oid: String,
    upn: String,
    name: String,
    #[serde(default)]
    groups: Vec<String>,
}

/// `POST /_standin/users`: adds a user who can sign in, with their groups.
pub(super) async fn user_endpoint(
    State(a): State<Arc<Authority>>,
    Json(req): Json<UserRequest>,
) -> Response {
    a.set_user_groups(&req.oid, req.groups);
    a.add_user(User {
        tid: req.tid,
        oid: req.oid,
        upn: req.upn,
        name: req.name,
    });
    StatusCode::NO_CONTENT.into_response()
}
