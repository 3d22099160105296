//! The login facade's two timed operations, through Envoy (the ext_authz TCP configuration):
//! a full login of a new browser (authorize → consent page → approve → the stand-in Entra's
//! authorize → the gateway's callback, which redeems Entra's code and validates its token →
//! the client's token request), and a token refresh (the gateway opens its refresh token,
//! refreshes at Entra, seals a new one). Sequential, one at a time: these are latencies of one
//! user's sign-in, not a throughput.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use mcp_authz_testkit::standin::{Api, Authority, Client, User};
use sha2::Digest as _;

use crate::procs::Proc;
use crate::{API, ENG_GROUP, TID};

/// The gateway's own app at the stand-in, and its secret.
pub(crate) const GATEWAY_APP: &str = "6a7e3a1e-0b5c-4d2e-9f80-5a1e6a7e3a1e";
pub(crate) const GATEWAY_SECRET: &str = "bench-gateway-secret";
const USER: &str = "00000000-0000-4000-8000-0000000a11ce";
const REDIRECT: &str = "http://127.0.0.1:1/callback";

/// The `oauth` section of the bench's mcp-authz.
pub(crate) fn config_section() -> String {
    format!(
        "oauth: {{client_id: \"{GATEWAY_APP}\", client_secret: {GATEWAY_SECRET}, api_scope: \"api://mcp-gateway/mcp.access\", seal_keys: [\"q1Xv3XqkzJ0m9r8bq8W2u2v7nq3Yk6H4e9Yx2M0p1aE=\"]}}\n"
    )
}

/// Registers the gateway's app, the API and the user at the stand-in.
pub(crate) fn prepare(authority: &Authority, gateway: &str) {
    authority.register_api(Api {
        client_id: API.into(),
        app_id_uri: "api://mcp-gateway".into(),
        scopes: vec!["mcp.access".into()],
    });
    authority.register_client(
        GATEWAY_APP,
        Client {
            secret: GATEWAY_SECRET.into(),
            graph_roles: Vec::new(),
            certificate: None,
            federated: Vec::new(),
            redirect_uris: vec![format!("{gateway}/oauth/callback")],
        },
    );
    authority.add_user(User {
        tid: TID.into(),
        oid: USER.into(),
        upn: "alice@contoso.example".into(),
        name: "Alice".into(),
    });
    authority.set_user_groups(USER, vec![ENG_GROUP.into()]);
    authority.sign_in(Some(USER));
}

pub struct Figures {
    pub logins: Vec<Duration>,
    pub refreshes: Vec<Duration>,
    /// mcp-authz CPU per login and per refresh.
    pub login_cpu: Duration,
    pub refresh_cpu: Duration,
}

fn pkce(i: usize) -> (String, String) {
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let verifier = b64.encode(sha2::Sha256::digest(
        format!("bench-verifier-{i}").as_bytes(),
    ));
    let challenge = b64.encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn keep(jar: &mut BTreeMap<String, String>, r: &reqwest::Response) {
    for v in r.headers().get_all("set-cookie") {
        let Some((name, value)) = v
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .and_then(|c| c.split_once('='))
        else {
            continue;
        };
        jar.insert(name.to_owned(), value.to_owned());
    }
}

fn cookie(jar: &BTreeMap<String, String>) -> String {
    jar.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn attr(html: &str, anchor: &str, name: &str) -> anyhow::Result<String> {
    let rest = &html[html.find(anchor).context("consent form field")?..];
    let start = rest.find(&format!("{name}=\"")).context("attribute")? + name.len() + 2;
    let end = rest[start..].find('"').context("attribute end")?;
    Ok(rest[start..start + end].replace("&#x2f;", "/"))
}

/// One login of a new browser; the refresh token.
async fn login(
    http: &reqwest::Client,
    gw: &str,
    client_id: &str,
    i: usize,
) -> anyhow::Result<String> {
    let mut jar = BTreeMap::new();
    let (verifier, challenge) = pkce(i);
    let mut url = url::Url::parse(&format!("{gw}/oauth/authorize"))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("state", "s")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("resource", &format!("{gw}/mcp/github"));
    let r = http.get(url.as_str()).send().await?;
    keep(&mut jar, &r);
    anyhow::ensure!(r.status() == 200, "authorize: {}", r.status());
    let html = r.text().await?;
    let r = http
        .post(attr(&html, "<form", "action")?)
        .header("cookie", cookie(&jar))
        .form(&[
            ("request", attr(&html, "name=\"request\"", "value")?),
            ("csrf", attr(&html, "name=\"csrf\"", "value")?),
            ("decision", "approve".into()),
        ])
        .send()
        .await?;
    let mut r = r;
    let mut code = None;
    for _ in 0..5 {
        anyhow::ensure!(r.status().is_redirection(), "sign-in: {}", r.status());
        let to = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .context("Location")?
            .to_owned();
        if to.starts_with(REDIRECT) {
            code = url::Url::parse(&to)?
                .query_pairs()
                .find(|(k, _)| k == "code")
                .map(|(_, v)| v.into_owned());
            break;
        }
        r = http.get(&to).send().await?;
    }
    let code = code.context("no code at the redirect URI")?;
    let r = http
        .post(format!("{gw}/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", client_id),
            ("code_verifier", &verifier),
        ])
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "token: {}", r.status());
    let body: serde_json::Value = r.json().await?;
    body["refresh_token"]
        .as_str()
        .map(str::to_owned)
        .context("no refresh_token")
}

pub(crate) async fn measure(
    gw: &str,
    authz: &Proc,
    logins: usize,
    refreshes: usize,
) -> anyhow::Result<Figures> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?;
    let r = http
        .post(format!("{gw}/oauth/register"))
        .json(&serde_json::json!({
            "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
            "application_type": "native", "client_name": "bench"}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "register: {}", r.status());
    let client_id = r.json::<serde_json::Value>().await?["client_id"]
        .as_str()
        .context("client_id")?
        .to_owned();
    // Warm-up: connections open, the stand-in's and the gateway's first-use costs paid.
    let mut refresh = login(&http, gw, &client_id, 0).await?;
    let mut times = Vec::with_capacity(logins);
    let cpu0 = authz.cpu_ns();
    for i in 0..logins {
        let t = Instant::now();
        refresh = login(&http, gw, &client_id, i + 1).await?;
        times.push(t.elapsed());
    }
    let login_cpu = Duration::from_nanos((authz.cpu_ns() - cpu0) / logins.max(1) as u64);
    let mut rtimes = Vec::with_capacity(refreshes);
    let cpu0 = authz.cpu_ns();
    for _ in 0..refreshes {
        let t = Instant::now();
        let r = http
            .post(format!("{gw}/oauth/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
                ("client_id", client_id.as_str()),
            ])
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "refresh: {}", r.status());
        let body: serde_json::Value = r.json().await?;
        refresh = body["refresh_token"]
            .as_str()
            .context("no rotated refresh_token")?
            .to_owned();
        rtimes.push(t.elapsed());
    }
    let refresh_cpu = Duration::from_nanos((authz.cpu_ns() - cpu0) / refreshes.max(1) as u64);
    Ok(Figures {
        logins: times,
        refreshes: rtimes,
        login_cpu,
        refresh_cpu,
    })
}

/// p50 and p99 of a sample, ms.
pub fn percentiles(v: &[Duration]) -> (f64, f64) {
    let mut v: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}
