//! `/oauth/authorize`, the consent form and `/oauth/callback`.
//!
//! Until the client and its redirect URI are known to match, a refusal is an error page; after
//! that it goes back to the redirect URI with `error`, `state` and `iss` (RFC 9207).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Form, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::clients::Client;
use super::entra::EntraError;
use super::page;
use super::seal::{Purpose, random_token, same};
use super::store::{Issued, Pending, Request};
use super::{CONSENT_PATH, Facade};
use crate::clock::unix_now;

const CSRF_COOKIE: &str = "__Host-mcp-authz-csrf";
const CONSENT_COOKIE_PREFIX: &str = "__Host-mcp-authz-consent-";
/// The consent form must be answered within this.
const FORM_TTL_SECS: u64 = 600;
/// Largest query or form read.
const MAX_PARAMS_BYTES: usize = 8 * 1024;

/// The query's parameters; `Err` names one sent twice (RFC 6749 §3.1: at most once) or a query
/// too large.
pub(super) fn params(raw: &str) -> Result<HashMap<String, String>, String> {
    if raw.len() > MAX_PARAMS_BYTES {
        return Err("the request is too large".into());
    }
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        if out.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(format!("the parameter {k} is sent more than once"));
        }
    }
    Ok(out)
}

/// A redirect to the client: its redirect URI with these parameters and `iss`.
fn to_client(f: &Facade, redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return page::error(
            StatusCode::BAD_REQUEST,
            "The application's redirect URI is not a URL.",
        );
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        q.append_pair("iss", &f.settings.issuer);
    }
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, url.to_string()),
            (header::CACHE_CONTROL, "no-store".into()),
        ],
    )
        .into_response()
}

fn client_error(f: &Facade, r: &Request, error: &str, description: &str) -> Response {
    let mut p = vec![("error", error), ("error_description", description)];
    if let Some(s) = &r.state {
        p.push(("state", s));
    }
    to_client(f, &r.redirect_uri, &p)
}

/// `GET /oauth/authorize`.
pub(super) async fn authorize(
    State(f): State<Arc<Facade>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let q = match params(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(why) => {
            f.count("login", "invalid_request");
            return page::error(StatusCode::BAD_REQUEST, &why);
        }
    };
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let client = match get("client_id") {
        Some(id) => f.client(id).await,
        None => Err("the request names no client_id".into()),
    };
    let client = match client {
        Ok(c) => c,
        Err(why) => {
            f.count("login", "invalid_client");
            return page::error(
                StatusCode::BAD_REQUEST,
                &format!("This application cannot sign in here: {why}."),
            );
        }
    };
    let redirect_uri = match get("redirect_uri") {
        Some(r) if client.redirect_allowed(r) => r.to_owned(),
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        _ => {
            f.count("login", "invalid_redirect_uri");
            return page::error(
                StatusCode::BAD_REQUEST,
                "The redirect URI is not one this application registered.",
            );
        }
    };
    let mut r = Request {
        client_id: client.client_id.clone(),
        redirect_uri,
        state: get("state").map(str::to_owned),
        challenge: String::new(),
        scope: String::new(),
        resource: None,
    };
    let refuse = |r: &Request, error: &'static str, text: &str| {
        f.count("login", error);
        client_error(&f, r, error, text)
    };
    if get("response_type") != Some("code") {
        return refuse(
            &r,
            "unsupported_response_type",
            "response_type must be code",
        );
    }
    match (get("code_challenge"), get("code_challenge_method")) {
        (Some(c), Some("S256")) if valid_challenge(c) => r.challenge = c.to_owned(),
        (Some(_), Some("S256")) => {
            return refuse(
                &r,
                "invalid_request",
                "code_challenge is not a base64url SHA-256 (43 characters)",
            );
        }
        _ => {
            return refuse(
                &r,
                "invalid_request",
                "PKCE is required: code_challenge with code_challenge_method S256",
            );
        }
    }
    if let Some(resource) = get("resource") {
        if !f.known_resource(resource) {
            return refuse(
                &r,
                "invalid_target",
                "resource is not an MCP server of this gateway",
            );
        }
        r.resource = Some(resource.to_owned());
    }
    r.scope = match granted_scopes(&f.settings.scopes, get("scope")) {
        Ok(s) => s,
        Err(word) => {
            return refuse(&r, "invalid_scope", &format!("unknown scope {word:.64}"));
        }
    };
    if has_consent(&f, &headers, &client.client_id) {
        return start_sign_in(&f, r, Vec::new()).await;
    }
    show_consent(&f, &client, &r)
}

fn valid_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The MCP scopes granted: those asked for (all the advertised ones when none is named);
/// `offline_access` is understood and implied. `Err` names a scope not offered.
pub(super) fn granted_scopes(offered: &[String], asked: Option<&str>) -> Result<String, String> {
    let words: Vec<&str> = asked
        .unwrap_or("")
        .split(' ')
        .filter(|w| !w.is_empty() && *w != "offline_access")
        .collect();
    if words.is_empty() {
        return Ok(offered.join(" "));
    }
    let mut granted: Vec<&str> = Vec::new();
    for w in words {
        if !offered.iter().any(|o| o == w) {
            return Err(w.to_owned());
        }
        if !granted.contains(&w) {
            granted.push(w);
        }
    }
    Ok(granted.join(" "))
}

/// The consent cookie's name for a client: its id hashed (cookie names are tokens).
fn consent_cookie_name(client_id: &str) -> String {
    format!(
        "{CONSENT_COOKIE_PREFIX}{}",
        &super::seal::s256(client_id)[..16]
    )
}

#[derive(Serialize, Deserialize)]
struct ConsentCookie {
    client_id: String,
    exp: u64,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Whether this browser approved this client (a sealed cookie naming it, unexpired).
fn has_consent(f: &Facade, headers: &HeaderMap, client_id: &str) -> bool {
    cookie(headers, &consent_cookie_name(client_id))
        .and_then(|v| f.sealer.open(Purpose::ConsentCookie, v))
        .and_then(|plain| serde_json::from_slice::<ConsentCookie>(&plain).ok())
        .is_some_and(|c| c.client_id == client_id && c.exp > unix_now())
}

fn set_cookie(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

/// The consent form's hidden request: the checked request and the CSRF value, sealed.
#[derive(Serialize, Deserialize)]
struct FormState {
    request: Request,
    csrf: String,
    exp: u64,
}

fn show_consent(f: &Facade, client: &Client, r: &Request) -> Response {
    let csrf = random_token(24);
    let sealed = f.sealer.seal(
        Purpose::ConsentForm,
        &serde_json::to_vec(&FormState {
            request: r.clone(),
            csrf: csrf.clone(),
            exp: unix_now() + FORM_TTL_SECS,
        })
        .unwrap_or_default(),
    );
    let action = f.url(CONSENT_PATH);
    let host = Client::redirect_host(&r.redirect_uri);
    f.count("login", "consent_shown");
    page::consent(
        &page::Consent {
            client_name: client.client_name.as_deref(),
            client_id: &client.client_id,
            redirect_host: &host,
            scopes: &r.scope,
            resource: r.resource.as_deref(),
            resource_name: "the MCP gateway",
            action: &action,
            request: &sealed,
            csrf: &csrf,
        },
        &form_action(f, &r.redirect_uri),
        vec![set_cookie(CSRF_COOKIE, &csrf, FORM_TTL_SECS)],
    )
}

/// Where the consent form may lead: the gateway, Entra (after approval), the client (after a
/// denial).
fn form_action(f: &Facade, redirect_uri: &str) -> String {
    let origin = |u: &str| {
        url::Url::parse(u)
            .ok()
            .map(|u| match u.host_str() {
                Some(_) => u.origin().ascii_serialization(),
                None => format!("{}:", u.scheme()),
            })
            .unwrap_or_default()
    };
    format!(
        "'self' {} {} {}",
        origin(&f.settings.issuer),
        origin(&f.entra.authority),
        origin(redirect_uri)
    )
}

#[derive(Deserialize)]
pub(super) struct ConsentForm {
    request: String,
    csrf: String,
    decision: String,
}

/// `POST /oauth/consent`: the user's answer.
pub(super) async fn consent(
    State(f): State<Arc<Facade>>,
    headers: HeaderMap,
    Form(form): Form<ConsentForm>,
) -> Response {
    let state = f
        .sealer
        .open(Purpose::ConsentForm, &form.request)
        .and_then(|p| serde_json::from_slice::<FormState>(&p).ok());
    let Some(state) = state else {
        f.count("login", "consent_invalid");
        return page::error(
            StatusCode::BAD_REQUEST,
            "This consent form is not valid. Start the sign-in again from the application.",
        );
    };
    if state.exp <= unix_now() {
        f.count("login", "consent_expired");
        return page::error(
            StatusCode::BAD_REQUEST,
            "This consent form has expired. Start the sign-in again from the application.",
        );
    }
    // The cookie this browser got with the form, the form's field and the sealed value agree:
    // a form posted from another site carries no such cookie (__Host-, SameSite=Lax).
    let cookie_ok = cookie(&headers, CSRF_COOKIE).is_some_and(|c| same(c, &state.csrf));
    if !cookie_ok || !same(&form.csrf, &state.csrf) {
        f.count("login", "consent_csrf");
        return page::error(
            StatusCode::FORBIDDEN,
            "This consent was not sent from the page this browser was shown. Start the sign-in again from the application.",
        );
    }
    let clear_csrf = set_cookie(CSRF_COOKIE, "", 0);
    let r = state.request;
    match form.decision.as_str() {
        "approve" => {
            let remembered = f.sealer.seal(
                Purpose::ConsentCookie,
                &serde_json::to_vec(&ConsentCookie {
                    client_id: r.client_id.clone(),
                    exp: unix_now() + f.settings.consent_ttl.as_secs(),
                })
                .unwrap_or_default(),
            );
            let name = consent_cookie_name(&r.client_id);
            let cookies = vec![
                clear_csrf,
                set_cookie(&name, &remembered, f.settings.consent_ttl.as_secs()),
            ];
            start_sign_in(&f, r, cookies).await
        }
        _ => {
            f.count("login", "access_denied");
            let mut resp = client_error(&f, &r, "access_denied", "the user denied the request");
            if let Ok(v) = clear_csrf.parse() {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            resp
        }
    }
}

/// To Entra, with the gateway's own state and PKCE pair.
async fn start_sign_in(f: &Facade, r: Request, cookies: Vec<String>) -> Response {
    let state = random_token(32);
    let verifier = random_token(48);
    let url = f.entra.authorize_url(&state, &verifier);
    if let Err(e) = f
        .store
        .put_pending(
            state,
            Pending {
                request: r,
                entra_verifier: verifier,
            },
        )
        .await
    {
        return store_failed(f, &e);
    }
    let mut resp = (
        StatusCode::FOUND,
        [
            (header::LOCATION, url),
            (header::CACHE_CONTROL, "no-store".into()),
        ],
    )
        .into_response();
    for c in cookies {
        if let Ok(v) = c.parse() {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// `GET /oauth/callback`: Entra's answer.
pub(super) async fn callback(State(f): State<Arc<Facade>>, RawQuery(query): RawQuery) -> Response {
    let q = match params(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(why) => return page::error(StatusCode::BAD_REQUEST, &why),
    };
    let pending = match q.get("state") {
        Some(s) => match f.store.take_pending(s).await {
            Ok(p) => p,
            Err(e) => return store_failed(&f, &e),
        },
        None => None,
    };
    let Some(pending) = pending else {
        f.count("login", "unknown_state");
        return page::error(
            StatusCode::BAD_REQUEST,
            "This sign-in expired or was already completed. Start it again from the application.",
        );
    };
    let r = &pending.request;
    if let Some(error) = q.get("error") {
        // Entra's text is not passed on: the code goes to the log, a safe error to the client.
        let aadsts = q
            .get("error_description")
            .and_then(|d| d.split(':').next())
            .unwrap_or("");
        tracing::warn!(entra_error = %error, aadsts, client_id = %r.client_id, "oauth: Entra refused the sign-in");
        let (code, text) = if error == "access_denied" {
            ("access_denied", "the sign-in was cancelled or refused")
        } else {
            (
                "server_error",
                "the sign-in at the identity provider failed",
            )
        };
        f.count(
            "login",
            if code == "access_denied" {
                "access_denied"
            } else {
                "entra_refused"
            },
        );
        return client_error(&f, r, code, text);
    }
    let Some(code) = q.get("code") else {
        f.count("login", "entra_refused");
        return client_error(&f, r, "server_error", "the identity provider sent no code");
    };
    let tokens = match f.entra.redeem(code, &pending.entra_verifier).await {
        Ok(t) => t,
        Err(e) => {
            log_entra("redeem", &e);
            f.count("login", "entra_refused");
            return client_error(
                &f,
                r,
                "server_error",
                "the sign-in could not be completed; try again",
            );
        }
    };
    // What the client will present must pass the request path: validate it as a Check would.
    let principal = match f.validator.validate(&tokens.access_token).await {
        Ok(v) => v.principal,
        Err(e) => {
            tracing::error!(
                reason = e.reason().code(),
                "oauth: Entra's token for the signed-in user does not validate (oauth.api_scope and entra.audiences disagree?)"
            );
            f.count("login", "token_invalid");
            return client_error(&f, r, "server_error", "the sign-in could not be completed");
        }
    };
    let ours = random_token(32);
    tracing::info!(client_id = %r.client_id, oid = %principal.oid, scope = %r.scope, "oauth: user signed in and approved the client");
    if let Err(e) = f
        .store
        .put_code(
            ours.clone(),
            Issued {
                request: r.clone(),
                access_token: tokens.access_token,
                expires_in: tokens.expires_in,
                entra_refresh: tokens.refresh_token,
                oid: principal.oid.to_string(),
            },
        )
        .await
    {
        tracing::error!(error = %e, "oauth: the code could not be stored");
        f.count("login", "store_failed");
        return client_error(
            &f,
            r,
            "temporarily_unavailable",
            "the sign-in could not be completed; try again",
        );
    }
    let mut p = vec![("code", ours.as_str())];
    if let Some(s) = &r.state {
        p.push(("state", s));
    }
    to_client(&f, &r.redirect_uri, &p)
}

/// The state store failed: an error page, the sign-in is not started or completed.
fn store_failed(f: &Facade, e: &super::store::StoreError) -> Response {
    tracing::error!(error = %e, store = f.store.kind(), "oauth: the state store failed");
    f.count("login", "store_failed");
    page::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "The sign-in is unavailable right now. Try again in a moment.",
    )
}

pub(super) fn log_entra(what: &str, e: &EntraError) {
    match e {
        EntraError::Grant(code) => {
            tracing::info!(
                what,
                aadsts = code,
                "oauth: Entra refused the grant (the user must sign in again)"
            )
        }
        EntraError::Client(code) => {
            tracing::error!(
                what,
                aadsts = code,
                "oauth: Entra refused the gateway's app (check oauth.client_id, its credential and redirect URI)"
            )
        }
        EntraError::Unavailable(why) => tracing::warn!(what, why, "oauth: Entra unavailable"),
    }
}
