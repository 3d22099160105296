//! The pages the browser sees: the consent page (a minijinja template, auto-escaped as HTML)
//! and the error page for requests that cannot be sent back to a client. Both forbid framing
//! and caching.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

const CONSENT: &str = include_str!("consent.html");

/// What the consent page shows.
pub struct Consent<'a> {
    pub client_name: Option<&'a str>,
    pub client_id: &'a str,
    pub redirect_host: &'a str,
    pub scopes: &'a str,
    pub resource: Option<&'a str>,
    pub resource_name: &'a str,
    pub action: &'a str,
    pub request: &'a str,
    pub csrf: &'a str,
}

/// The security headers of every page; `form_action` lists where the consent form may lead
/// (the gateway, then Entra or the client's redirect).
fn headers(form_action: &str) -> [(header::HeaderName, String); 6] {
    [
        (header::CONTENT_TYPE, "text/html; charset=utf-8".into()),
        (
            header::CONTENT_SECURITY_POLICY,
            format!(
                "default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
            ),
        ),
        (header::X_FRAME_OPTIONS, "DENY".into()),
        (header::CACHE_CONTROL, "no-store".into()),
        (header::REFERRER_POLICY, "no-referrer".into()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
    ]
}

pub fn consent(c: &Consent<'_>, form_action: &str, cookies: Vec<String>) -> Response {
    let mut env = minijinja::Environment::new();
    let rendered = env
        .add_template("consent.html", CONSENT)
        .and_then(|()| env.get_template("consent.html"))
        .and_then(|t| {
            t.render(minijinja::context! {
                client_name => c.client_name.unwrap_or("An unnamed application"),
                named => c.client_name.is_some(),
                client_id => c.client_id,
                redirect_host => c.redirect_host,
                scopes => c.scopes,
                resource => c.resource,
                resource_name => c.resource_name,
                action => c.action,
                request => c.request,
                csrf => c.csrf,
            })
        });
    match rendered {
        Ok(html) => {
            let mut resp = (StatusCode::OK, headers(form_action), html).into_response();
            for cookie in cookies {
                if let Ok(v) = cookie.parse() {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "oauth: the consent page did not render");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The consent page could not be shown.",
            )
        }
    }
}

/// An error the browser shows: nothing is sent to a redirect URI that could not be trusted.
pub fn error(status: StatusCode, text: &str) -> Response {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    (
        status,
        headers("'none'"),
        format!(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign-in failed</title></head><body><h1>Sign-in failed</h1><p id=\"error\">{escaped}</p></body></html>"
        ),
    )
        .into_response()
}
