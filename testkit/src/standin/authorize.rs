//! The v2 authorization code flow, as Entra speaks it (ENTRA.md): the authorize endpoint (the
//! user signed in automatically: the one `sign_in` chose, or the `login_hint`), and the token
//! endpoint's `authorization_code` and `refresh_token` grants, PKCE included.
//!
//! What Entra refuses, this refuses the same way: an unknown client or a redirect URI not
//! registered is an error page (never a redirect); after that, errors go back to the redirect URI
//! (`error`, `error_description` with the AADSTS code, `state`). The RFC 8707 `resource`
//! parameter is refused (`invalid_target`, AADSTS9010010), on authorize and on the token
//! endpoint. Scopes must name one API's exposed scopes (`api://…/mcp.access`) or OIDC's; a bare
//! name is resolved against Microsoft Graph and refused. Codes are single-use and live 10
//! minutes; every refresh returns a new refresh token and, as Entra, does not revoke the old one.
//! There is no registration endpoint, as Entra has none.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

use super::token::TokenForm;
use super::*;

/// How long an authorization code may be redeemed.
const CODE_LIFETIME_SECS: u64 = 600;
/// Most codes and refresh tokens held (the oldest go first).
const MAX_GRANTS: usize = 10_000;
/// Scopes every app may ask for besides one API's.
const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

/// A user of the directory who can sign in.
#[derive(Debug, Clone)]
pub struct User {
    pub tid: String,
    pub oid: String,
    pub upn: String,
    pub name: String,
}

/// An app registration that exposes an API ("Expose an API"): the audience of its v2 tokens is
/// `client_id`; its scopes are asked for as `{app_id_uri}/{scope}`.
#[derive(Debug, Clone)]
pub struct Api {
    pub client_id: String,
    pub app_id_uri: String,
    pub scopes: Vec<String>,
}

/// What a code or refresh token stands for.
#[derive(Debug, Clone)]
pub(super) struct Grant {
    client_id: String,
    tid: String,
    oid: String,
    /// The API and the scope names of it granted (`None`: OIDC scopes only).
    api: Option<(Api, Vec<String>)>,
    openid: bool,
    offline: bool,
}

#[derive(Debug, Clone)]
pub(super) struct Code {
    grant: Grant,
    redirect_uri: String,
    challenge: Option<(String, String)>,
    nonce: Option<String>,
    expires: u64,
    redeemed: bool,
}

/// Codes and refresh tokens, bounded.
#[derive(Default)]
pub(super) struct Grants {
    codes: HashMap<String, Code>,
    refresh: HashMap<String, (Grant, u64)>,
    revoked: std::collections::HashSet<String>,
}

impl Grants {
    fn keep_bounded(&mut self) {
        if self.codes.len() >= MAX_GRANTS {
            let now = unix_now();
            self.codes.retain(|_, c| c.expires > now && !c.redeemed);
            if self.codes.len() >= MAX_GRANTS {
                self.codes.clear();
            }
        }
        if self.refresh.len() >= MAX_GRANTS {
            let oldest = self.refresh.values().map(|(_, t)| *t).min().unwrap_or(0);
            self.refresh.retain(|_, (_, t)| *t > oldest);
        }
    }
}

fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::rng(), &mut b[..]);
    B64.encode(b)
}

impl Authority {
    /// Adds (or replaces) a user who can sign in.
    pub fn add_user(&self, user: User) {
        write(&self.users).insert(user.oid.to_ascii_lowercase(), user);
    }

    /// The user the browser is signed in as: the authorize endpoint signs this one in without
    /// asking (unless a `login_hint` names another). `None` signs everyone out.
    pub fn sign_in(&self, oid: Option<&str>) {
        *write(&self.signed_in) = oid.map(str::to_ascii_lowercase);
    }

    /// Registers an app that exposes an API.
    pub fn register_api(&self, api: Api) {
        let mut apis = write(&self.apis);
        apis.retain(|a| a.app_id_uri != api.app_id_uri);
        apis.push(api);
    }

    /// Revokes every refresh token of a user (an administrator's "revoke sessions").
    pub fn revoke_sessions(&self, oid: &str) {
        lock(&self.grants).revoked.insert(oid.to_ascii_lowercase());
    }

    pub(super) fn user(&self, oid: &str) -> Option<User> {
        read(&self.users).get(&oid.to_ascii_lowercase()).cloned()
    }
}

/// Entra's error page: shown in the browser, never sent to a redirect URI it cannot trust.
fn error_page(code: u32, text: &str) -> Response {
    let text = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!(
            "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body><h1>Sorry, but we're having trouble signing you in.</h1><p>AADSTS{code}: {text}</p></body></html>"
        ),
    )
        .into_response()
}

/// The redirect URI with these parameters added to its query.
fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return error_page(50011, "The redirect URI is not a URL.");
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}

/// An OAuth error sent back to the (trusted) redirect URI.
fn redirect_error(
    redirect_uri: &str,
    state: Option<&str>,
    error: &str,
    code: u32,
    text: &str,
) -> Response {
    let description = format!(
        "AADSTS{code}: {text} Trace ID: {} Correlation ID: {} Timestamp: {}",
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        time_string()
    );
    let mut params = vec![("error", error), ("error_description", &description)];
    if let Some(s) = state {
        params.push(("state", s));
    }
    redirect_with(redirect_uri, &params)
}

/// Whether `requested` is one of `registered`, exactly, but for the port of a loopback URI
/// (`http://localhost`, `http://127.0.0.1`, `http://[::1]`), which Entra ignores.
pub(super) fn redirect_matches(registered: &[String], requested: &str) -> bool {
    if registered.iter().any(|r| r == requested) {
        return true;
    }
    let Ok(req) = url::Url::parse(requested) else {
        return false;
    };
    let loopback = |u: &url::Url| {
        u.scheme() == "http"
            && matches!(
                u.host_str(),
                Some("localhost") | Some("127.0.0.1") | Some("[::1]")
            )
    };
    loopback(&req)
        && registered.iter().any(|r| {
            url::Url::parse(r).is_ok_and(|reg| {
                loopback(&reg)
                    && reg.host_str() == req.host_str()
                    && reg.path() == req.path()
                    && reg.query() == req.query()
            })
        })
}

/// The API and its scope names granted, `openid`, `offline_access`.
type Scopes = (Option<(Api, Vec<String>)>, bool, bool);

/// Entra's refusal: the OAuth error, the AADSTS code, the text.
type Refusal = (&'static str, u32, String);

/// The scopes asked for, checked as Entra checks them: OIDC scopes, plus the scopes of at most
/// one API.
fn resolve_scopes(a: &Authority, client_id: &str, scope: &str) -> Result<Scopes, Refusal> {
    let mut api: Option<(Api, Vec<String>)> = None;
    let (mut openid, mut offline) = (false, false);
    let words: Vec<&str> = scope.split(' ').filter(|w| !w.is_empty()).collect();
    if words.is_empty() {
        return Err((
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.".into(),
        ));
    }
    for word in words {
        if OIDC_SCOPES.contains(&word) {
            openid |= word == "openid";
            offline |= word == "offline_access";
            continue;
        }
        let Some((resource, name)) = word
            .rsplit_once('/')
            .filter(|(r, n)| !r.is_empty() && !n.is_empty())
        else {
            // A bare scope is a Microsoft Graph permission; an API's needs its App ID URI.
            return Err((
                "invalid_client",
                650053,
                format!(
                    "The application '{client_id}' asked for scope '{word}' that doesn't exist on the resource '00000003-0000-0000-c000-000000000000'. Contact the app vendor."
                ),
            ));
        };
        let found = read(&a.apis)
            .iter()
            .find(|x| x.app_id_uri == resource || x.client_id == resource)
            .cloned();
        let Some(found) = found else {
            return Err((
                "invalid_resource",
                500011,
                format!(
                    "The resource principal named {resource} was not found in the tenant. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."
                ),
            ));
        };
        if name != ".default" && !found.scopes.iter().any(|s| s == name) {
            return Err((
                "invalid_client",
                650053,
                format!(
                    "The application '{client_id}' asked for scope '{name}' that doesn't exist on the resource '{}'. Contact the app vendor.",
                    found.client_id
                ),
            ));
        }
        let granted: Vec<String> = if name == ".default" {
            found.scopes.clone()
        } else {
            vec![name.to_owned()]
        };
        match &mut api {
            None => api = Some((found, granted)),
            Some((held, names)) if held.client_id == found.client_id => {
                for g in granted {
                    if !names.contains(&g) {
                        names.push(g);
                    }
                }
            }
            Some(_) => {
                return Err((
                    "invalid_request",
                    28000,
                    "Provided value for the input parameter scope is not valid because it contains more than one resource. Scope "
                        .to_owned()
                        + scope
                        + " is not valid.",
                ));
            }
        }
    }
    Ok((api, openid, offline))
}

/// `GET /{tenant}/oauth2/v2.0/authorize`.
pub(super) async fn authorize_endpoint(
    State(a): State<Arc<Authority>>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let mut q: HashMap<String, String> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        q.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    let get = |k: &str| q.get(k).map(String::as_str);
    if !a.known_tenant(&tenant) {
        return error_page(
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    let Some(client_id) = get("client_id") else {
        return error_page(
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let Some(client) = read(&a.clients).get(client_id).cloned() else {
        return error_page(
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        );
    };
    let Some(redirect_uri) =
        get("redirect_uri").filter(|r| redirect_matches(&client.redirect_uris, r))
    else {
        return error_page(
            50011,
            &format!(
                "The redirect URI '{}' specified in the request does not match the redirect URIs configured for the application '{client_id}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal. Navigate to https://aka.ms/redirectUriMismatchError to learn more about how to fix this.",
                get("redirect_uri").unwrap_or("")
            ),
        );
    };
    let state = get("state");
    let fail =
        |error: &str, code: u32, text: &str| redirect_error(redirect_uri, state, error, code, text);
    if get("response_type") != Some("code") {
        return fail(
            "unsupported_response_type",
            700054,
            &format!(
                "response_type '{}' is not enabled for the application.",
                get("response_type").unwrap_or("")
            ),
        );
    }
    if get("resource").is_some() {
        return fail(
            "invalid_target",
            9010010,
            "The resource parameter provided in the request doesn't match with the requested scopes.",
        );
    }
    let (api, openid, offline) = match resolve_scopes(&a, client_id, get("scope").unwrap_or("")) {
        Ok(s) => s,
        Err((error, code, text)) => return fail(error, code, &text),
    };
    let challenge = match (get("code_challenge"), get("code_challenge_method")) {
        (None, None) => None,
        (Some(c), None | Some("plain")) => Some((c.to_owned(), "plain".to_owned())),
        (Some(c), Some("S256")) => Some((c.to_owned(), "S256".to_owned())),
        (None, Some(_)) => {
            return fail(
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'code_challenge'.",
            );
        }
        (Some(_), Some(m)) => {
            return fail(
                "invalid_request",
                50146,
                &format!("The code_challenge_method '{m}' is not supported."),
            );
        }
    };
    // Sign-in: the login_hint's user, else the browser's session.
    let hinted = get("login_hint").and_then(|hint| {
        read(&a.users)
            .values()
            .find(|u| u.upn.eq_ignore_ascii_case(hint))
            .cloned()
    });
    let session = read(&a.signed_in).clone().and_then(|oid| a.user(&oid));
    let Some(user) = hinted.or(session) else {
        if get("prompt") == Some("none") {
            return fail(
                "login_required",
                50058,
                "A silent sign-in request was sent but no user is signed in.",
            );
        }
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body><h1>Sign in</h1><p>No user is signed in to the stand-in directory (POST /_standin/signin).</p></body></html>",
        )
            .into_response();
    };
    if a.serves(&tenant) && !user.tid.eq_ignore_ascii_case(&tenant) {
        return fail(
            "invalid_request",
            50020,
            &format!(
                "User account '{}' from identity provider '{}' does not exist in tenant '{tenant}' and cannot access the application '{client_id}' in that tenant.",
                user.upn,
                a.v2_issuer(&user.tid)
            ),
        );
    }
    let code = random_token(48);
    let entry = Code {
        grant: Grant {
            client_id: client_id.to_owned(),
            tid: user.tid.to_ascii_lowercase(),
            oid: user.oid.to_ascii_lowercase(),
            api,
            openid,
            offline,
        },
        redirect_uri: redirect_uri.to_owned(),
        challenge,
        nonce: get("nonce").map(str::to_owned),
        expires: unix_now() + CODE_LIFETIME_SECS,
        redeemed: false,
    };
    {
        let mut g = lock(&a.grants);
        g.keep_bounded();
        g.codes.insert(code.clone(), entry);
    }
    let session_state = uuid::Uuid::new_v4().to_string();
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = state {
        params.push(("state", s));
    }
    params.push(("session_state", &session_state));
    redirect_with(redirect_uri, &params)
}

fn bad_grant(code: u32, text: &str) -> Response {
    aad_error(StatusCode::BAD_REQUEST, "invalid_grant", code, text)
}

fn missing(name: &str) -> Response {
    aad_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        &format!("The request body must contain the following parameter: '{name}'."),
    )
}

fn refuse_resource(form: &TokenForm) -> Option<Response> {
    form.resource.as_ref().map(|_| {
        aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            9010010,
            "The resource parameter provided in the request doesn't match with the requested scopes.",
        )
    })
}

/// `grant_type=authorization_code`, the client already authenticated.
pub(super) fn redeem_code(a: &Authority, client_id: &str, form: &TokenForm) -> Response {
    if let Some(refusal) = refuse_resource(form) {
        return refusal;
    }
    let Some(code) = form.code.as_deref() else {
        return missing("code");
    };
    let Some(redirect_uri) = form.redirect_uri.as_deref() else {
        return missing("redirect_uri");
    };
    let entry = {
        let mut g = lock(&a.grants);
        let Some(entry) = g.codes.get_mut(code) else {
            return bad_grant(9002313, "Invalid request. Request is malformed or invalid.");
        };
        if entry.redeemed {
            return bad_grant(
                54005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
            );
        }
        if entry.expires <= unix_now() {
            return bad_grant(
                70008,
                "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
            );
        }
        if entry.grant.client_id != client_id {
            return bad_grant(
                70000,
                "The provided value for the 'code' parameter is not valid. The code was issued to a different client.",
            );
        }
        if entry.redirect_uri != redirect_uri {
            return bad_grant(
                70000,
                "The provided value for the 'redirect_uri' is not valid. The value must exactly match the redirect URI used to obtain the authorization code.",
            );
        }
        if let Some((challenge, method)) = &entry.challenge {
            let Some(verifier) = form.code_verifier.as_deref() else {
                return missing("code_verifier");
            };
            let derived = if method == "S256" {
                B64.encode(aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    verifier.as_bytes(),
                ))
            } else {
                verifier.to_owned()
            };
            if derived != *challenge {
                return bad_grant(
                    501481,
                    "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                );
            }
        }
        entry.redeemed = true;
        entry.clone()
    };
    issue(a, &entry.grant, entry.nonce.as_deref())
}

/// `grant_type=refresh_token`, the client already authenticated.
pub(super) fn redeem_refresh(a: &Authority, client_id: &str, form: &TokenForm) -> Response {
    if let Some(refusal) = refuse_resource(form) {
        return refusal;
    }
    let Some(token) = form.refresh_token.as_deref() else {
        return missing("refresh_token");
    };
    let grant = {
        let g = lock(&a.grants);
        let Some((grant, _)) = g.refresh.get(token) else {
            return bad_grant(9002313, "Invalid request. Request is malformed or invalid.");
        };
        if g.revoked.contains(&grant.oid) {
            return bad_grant(
                50173,
                "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.",
            );
        }
        grant.clone()
    };
    if grant.client_id != client_id {
        return bad_grant(
            70000,
            "The provided value for the 'refresh_token' is not valid. The token was issued to a different client.",
        );
    }
    // A scope, when sent, must stay within what was granted.
    if let Some(scope) = form.scope.as_deref() {
        match resolve_scopes(a, client_id, scope) {
            Ok((api, _, _)) => {
                let within = match (&api, &grant.api) {
                    (None, _) => true,
                    (Some((x, names)), Some((held, granted))) => {
                        x.client_id == held.client_id && names.iter().all(|n| granted.contains(n))
                    }
                    (Some(_), None) => false,
                };
                if !within {
                    return aad_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        65001,
                        &format!(
                            "The user or administrator has not consented to use the application with ID '{client_id}'. Send an interactive authorization request for this user and resource."
                        ),
                    );
                }
            }
            Err((error, code, text)) => {
                return aad_error(StatusCode::BAD_REQUEST, error, code, &text);
            }
        }
    }
    issue(a, &grant, None)
}

/// The token response for a grant: the API's access token, an ID token for `openid`, and a new
/// refresh token for `offline_access`.
fn issue(a: &Authority, grant: &Grant, nonce: Option<&str>) -> Response {
    let Some(user) = a.user(&grant.oid) else {
        return bad_grant(50034, "The user account does not exist in the directory.");
    };
    let groups = a.user_groups(&grant.oid).unwrap_or_default();
    let (aud, scp, scope) = match &grant.api {
        Some((api, names)) => (
            api.client_id.clone(),
            names.join(" "),
            names
                .iter()
                .map(|n| format!("{}/{n}", api.app_id_uri))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        None => (
            "00000003-0000-0000-c000-000000000000".to_owned(),
            "openid profile email".to_owned(),
            "openid profile email".to_owned(),
        ),
    };
    let access = MintRequest {
        tid: grant.tid.clone(),
        oid: grant.oid.clone(),
        aud,
        ver: "2.0".into(),
        scp: Some(scp),
        roles: Vec::new(),
        groups,
        overage: false,
        hasgroups: false,
        upn: Some(user.upn.clone()),
        name: Some(user.name.clone()),
        azp: Some(grant.client_id.clone()),
        expires_in: 3599,
        nbf_offset: 0,
        iat_offset: 0,
        kid: None,
        iss: None,
        extra: serde_json::Map::new(),
    };
    let access_token = match a.mint(&access) {
        Ok(t) => t,
        Err(e) => return aad_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", 50000, &e),
    };
    let mut body = json!({
        "token_type": "Bearer",
        "scope": scope,
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": access_token,
    });
    if grant.openid {
        let mut extra = serde_json::Map::new();
        extra.insert("preferred_username".into(), Value::from(user.upn.clone()));
        if let Some(n) = nonce {
            extra.insert("nonce".into(), Value::from(n));
        }
        let id = MintRequest {
            aud: grant.client_id.clone(),
            scp: None,
            groups: Vec::new(),
            azp: None,
            upn: None,
            extra,
            ..access
        };
        match a.mint(&id) {
            Ok(t) => body["id_token"] = Value::from(t),
            Err(e) => {
                return aad_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", 50000, &e);
            }
        }
    }
    if grant.offline {
        let refresh = format!("1.A{}", random_token(96));
        let mut g = lock(&a.grants);
        g.keep_bounded();
        g.refresh
            .insert(refresh.clone(), (grant.clone(), unix_now()));
        body["refresh_token"] = Value::from(refresh);
    }
    axum::Json(body).into_response()
}
