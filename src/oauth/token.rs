//! `POST /oauth/token`: the gateway's code for Entra's access token, and the gateway's refresh
//! token for a new one. Errors are RFC 6749 §5.2 JSON; Entra's own text never reaches a client.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::clients::{AuthMethod, Client};
use super::entra::EntraError;
use super::flow::{granted_scopes, log_entra, params};
use super::seal::{Purpose, random_token, s256, same};
use super::{Facade, json_error};
use crate::clock::unix_now;

/// What a gateway refresh token carries, sealed: Entra's refresh token and what it was granted
/// for. The id makes it single-use.
#[derive(Serialize, Deserialize)]
struct Refresh {
    id: String,
    client_id: String,
    scope: String,
    resource: Option<String>,
    oid: String,
    entra: String,
    exp: u64,
}

/// The state store failed: 503, retry later (RFC 6749's temporarily_unavailable).
fn store_failed(f: &Facade, e: &super::store::StoreError) -> Response {
    tracing::error!(error = %e, store = f.store.kind(), "oauth: the state store failed");
    f.count("token", "store_failed");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the authorization server is unavailable; retry later",
    )
}

fn invalid_grant(description: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

/// The client named by the request, authenticated as it registered (RFC 6749 §2.3): a public
/// client by its id, a confidential one by its secret (form or Basic).
#[allow(clippy::result_large_err)] // the refusal is the response, built once per request
async fn authenticate(
    f: &Facade,
    headers: &HeaderMap,
    form: &std::collections::HashMap<String, String>,
) -> Result<Arc<Client>, Response> {
    let unauthorized = || {
        json_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )
    };
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (id, secret) = s.split_once(':')?;
            let dec = |x: &str| {
                url::form_urlencoded::parse(format!("x={x}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((dec(id)?, dec(secret)?))
        });
    let (client_id, secret, method) = match (&basic, form.get("client_id")) {
        (Some((id, s)), form_id) => {
            if form_id.is_some_and(|f| f != id) {
                return Err(unauthorized());
            }
            (id.clone(), Some(s.clone()), AuthMethod::ClientSecretBasic)
        }
        (None, Some(id)) => match form.get("client_secret") {
            Some(s) => (id.clone(), Some(s.clone()), AuthMethod::ClientSecretPost),
            None => (id.clone(), None, AuthMethod::None),
        },
        (None, None) => {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client_id is required",
            ));
        }
    };
    let client = f.client(&client_id).await.map_err(|_| unauthorized())?;
    if !client.accepts(method) || !client.secret_matches(secret.as_deref()) {
        return Err(unauthorized());
    }
    Ok(client)
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

pub(super) async fn token(
    axum::extract::State(f): axum::extract::State<Arc<Facade>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the token request is a form (application/x-www-form-urlencoded)",
        );
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the form is not UTF-8",
        );
    };
    let form = match params(text) {
        Ok(p) => p,
        Err(why) => return json_error(StatusCode::BAD_REQUEST, "invalid_request", &why),
    };
    let client = match authenticate(&f, &headers, &form).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => by_code(&f, &client, &form).await,
        Some("refresh_token") => by_refresh(&f, &client, &form).await,
        Some(_) => json_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type: authorization_code or refresh_token",
        ),
        None => json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type is required",
        ),
    }
}

async fn by_code(
    f: &Facade,
    client: &Client,
    form: &std::collections::HashMap<String, String>,
) -> Response {
    let get = |k: &str| form.get(k).map(String::as_str);
    let (Some(code), Some(verifier)) = (get("code"), get("code_verifier")) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code and code_verifier are required",
        );
    };
    // Taken before any check: a code presented once is gone, whatever the outcome.
    let issued = match f.store.take_code(code).await {
        Ok(i) => i,
        Err(e) => return store_failed(f, &e),
    };
    let Some(issued) = issued else {
        f.count("login", "code_invalid");
        return invalid_grant("the code is unknown, expired or already used");
    };
    let r = &issued.request;
    if r.client_id != client.client_id {
        f.count("login", "code_invalid");
        return invalid_grant("the code was issued to another client");
    }
    if get("redirect_uri").is_some_and(|u| u != r.redirect_uri) {
        f.count("login", "code_invalid");
        return invalid_grant("redirect_uri differs from the authorization request's");
    }
    if !valid_verifier(verifier) || !same(&s256(verifier), &r.challenge) {
        f.count("login", "pkce_failed");
        return invalid_grant("code_verifier does not match the code_challenge");
    }
    if let Some(resource) = get("resource")
        && r.resource.as_deref() != Some(resource)
    {
        f.count("login", "invalid_target");
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "resource differs from the authorization request's",
        );
    }
    f.count("login", "success");
    answer(
        f,
        client,
        &r.scope,
        r.resource.clone(),
        &issued.oid,
        &issued.access_token,
        issued.expires_in,
        issued.entra_refresh.as_deref(),
    )
}

async fn by_refresh(
    f: &Facade,
    client: &Client,
    form: &std::collections::HashMap<String, String>,
) -> Response {
    let Some(sealed) = form.get("refresh_token") else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is required",
        );
    };
    let refresh = f
        .sealer
        .open(Purpose::RefreshToken, sealed)
        .and_then(|p| serde_json::from_slice::<Refresh>(&p).ok());
    let Some(refresh) = refresh else {
        f.count("refresh", "invalid");
        return invalid_grant("the refresh token is not valid");
    };
    if refresh.client_id != client.client_id {
        f.count("refresh", "invalid");
        return invalid_grant("the refresh token was issued to another client");
    }
    if refresh.exp <= unix_now() {
        f.count("refresh", "expired");
        return invalid_grant("the refresh token has expired; sign in again");
    }
    // A narrower scope may be asked for, never a wider one (RFC 6749 §6): the scopes held are
    // what this refresh may grant, read as authorize reads what the gateway offers.
    let held: Vec<String> = refresh.scope.split(' ').map(str::to_owned).collect();
    let scope = match granted_scopes(&held, form.get("scope").map(String::as_str)) {
        Ok(s) => s,
        Err(_) => {
            f.count("refresh", "invalid_scope");
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "the scope exceeds the one granted",
            );
        }
    };
    if let Some(resource) = form.get("resource")
        && refresh.resource.as_deref() != Some(resource.as_str())
    {
        f.count("refresh", "invalid_target");
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "resource differs from the one granted",
        );
    }
    let fresh = match f.store.use_refresh(&refresh.id).await {
        Ok(fresh) => fresh,
        Err(e) => return store_failed(f, &e),
    };
    if !fresh {
        tracing::warn!(client_id = %client.client_id, oid = %refresh.oid, "oauth: a used refresh token was presented again (replay, or a client that lost the rotated one)");
        f.count("refresh", "replayed");
        return invalid_grant("the refresh token was already used");
    }
    let tokens = match f.entra.refresh(&refresh.entra).await {
        Ok(t) => t,
        Err(e) => {
            log_entra("refresh", &e);
            return match e {
                EntraError::Grant(_) => {
                    f.count("refresh", "entra_refused");
                    invalid_grant("the sign-in is no longer valid; sign in again")
                }
                _ => {
                    // Not the client's fault: the token stays usable for a retry.
                    if let Err(e) = f.store.unuse_refresh(&refresh.id).await {
                        tracing::error!(error = %e, "oauth: a refresh token could not be released after Entra failed; the client must sign in again");
                    }
                    f.count("refresh", "entra_unavailable");
                    json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "the identity provider is unavailable; retry later",
                    )
                }
            };
        }
    };
    f.count("refresh", "success");
    // Entra may not send a new refresh token; the one held then stays Entra's.
    let entra = tokens
        .refresh_token
        .as_deref()
        .unwrap_or(&refresh.entra)
        .to_owned();
    answer(
        f,
        client,
        &scope,
        refresh.resource.clone(),
        &refresh.oid,
        &tokens.access_token,
        tokens.expires_in,
        Some(&entra),
    )
}

#[allow(clippy::too_many_arguments)]
fn answer(
    f: &Facade,
    client: &Client,
    scope: &str,
    resource: Option<String>,
    oid: &str,
    access_token: &str,
    expires_in: u64,
    entra_refresh: Option<&str>,
) -> Response {
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": scope,
    });
    if let Some(entra) = entra_refresh {
        let refresh = Refresh {
            id: random_token(18),
            client_id: client.client_id.clone(),
            scope: scope.to_owned(),
            resource,
            oid: oid.to_owned(),
            entra: entra.to_owned(),
            exp: unix_now() + f.settings.refresh_ttl.as_secs(),
        };
        let sealed = f.sealer.seal(
            Purpose::RefreshToken,
            &serde_json::to_vec(&refresh).unwrap_or_default(),
        );
        body["refresh_token"] = serde_json::Value::from(sealed);
    }
    (
        StatusCode::OK,
        [("cache-control", "no-store"), ("pragma", "no-cache")],
        axum::Json(body),
    )
        .into_response()
}
