//! Login through the gateway (issue 16): an MCP client that holds nothing but the gateway's URL
//! discovers the gateway as its authorization server, registers, sends the user through the
//! consent page and Entra (the stand-in), trades its code for Entra's access token and calls a
//! tool through Envoy with it. Every step goes through real Envoy; each refusal is the OAuth
//! error the spec names.

use serde_json::json;

use crate::support::browser::{Browser, Landed, pkce};
use crate::support::helpers::*;

const MCP_SCOPE: &str = "api://mcp-gateway/mcp.access";

async fn oauth_env() -> TestEnv {
    TestEnv::start(Options {
        oauth: true,
        ..Options::default()
    })
    .await
}

/// A client as an MCP client registers itself (RFC 7591): public, native, a loopback redirect.
struct App {
    client_id: String,
    redirect_uri: String,
}

async fn register(env: &TestEnv, name: &str) -> App {
    let redirect_uri = format!("http://127.0.0.1:{}/callback", free_port());
    let r = Reply::from(
        env.http
            .post(format!("{}/oauth/register", env.envoy_url))
            .json(&json!({
                "redirect_uris": [redirect_uri],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "application_type": "native",
                "client_name": name,
            }))
            .send()
            .await
            .expect("register"),
    )
    .await;
    assert_eq!(r.status, 201, "registration: {r:?}");
    let doc = r.json();
    assert_eq!(doc["redirect_uris"], json!([redirect_uri]));
    assert!(
        doc.get("client_secret").is_none(),
        "a public client gets no secret: {doc}"
    );
    App {
        client_id: doc["client_id"].as_str().expect("client_id").to_owned(),
        redirect_uri,
    }
}

fn authorize_url(env: &TestEnv, app: &App, challenge: &str, extra: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(&format!("{}/oauth/authorize", env.envoy_url)).expect("url");
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &app.client_id)
            .append_pair("redirect_uri", &app.redirect_uri)
            .append_pair("state", "st-123")
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("scope", MCP_SCOPE);
        for (k, v) in extra {
            q.append_pair(k, v);
        }
    }
    url.to_string()
}

fn resource(env: &TestEnv, server: &str) -> String {
    format!("{}/mcp/{server}", env.envoy_url)
}

async fn token_request(env: &TestEnv, form: &[(&str, &str)]) -> Reply {
    token_at(&env.http, &env.envoy_url, form).await
}

/// A token request to the gateway at `base` (Envoy, or a replica directly).
async fn token_at(http: &reqwest::Client, base: &str, form: &[(&str, &str)]) -> Reply {
    Reply::from(
        http.post(format!("{base}/oauth/token"))
            .form(form)
            .send()
            .await
            .expect("token request"),
    )
    .await
}

async fn redeem(env: &TestEnv, app: &App, code: &str, verifier: &str) -> Reply {
    token_request(
        env,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &app.redirect_uri),
            ("client_id", &app.client_id),
            ("code_verifier", verifier),
        ],
    )
    .await
}

/// A full sign-in of the stand-in's current user for `app`, approved; the landing at the client.
async fn signed_in(env: &TestEnv, browser: &Browser, app: &App, challenge: &str) -> Landed {
    let url = authorize_url(
        env,
        app,
        challenge,
        &[("resource", &resource(env, "github"))],
    );
    browser
        .sign_in(&url, "approve", &app.redirect_uri)
        .await
        .unwrap_or_else(|page| panic!("the sign-in stopped at a page: {page:?}"))
}

fn oauth_count(metrics: &str, event: &str, result: &str) -> u64 {
    let prefix = format!("mcp_authz_oauth_total{{event=\"{event}\",result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_client_with_only_the_gateway_url_signs_in_and_calls_a_tool() {
    let env = oauth_env().await;

    // 1. Discovery: the 401 names the resource metadata, which names the gateway.
    let r = env
        .post("/mcp/github", None, &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    let challenge_header = r.header("www-authenticate").expect("WWW-Authenticate");
    let prm_url = format!(
        "{}/.well-known/oauth-protected-resource/mcp/github",
        env.envoy_url
    );
    assert!(
        challenge_header.contains(&format!("resource_metadata=\"{prm_url}\"")),
        "{challenge_header}"
    );
    let prm = env
        .get("/.well-known/oauth-protected-resource/mcp/github")
        .await
        .json();
    assert_eq!(prm["authorization_servers"], json!([env.envoy_url]));
    assert_eq!(prm["resource"], resource(&env, "github"));
    assert!(
        !prm["scopes_supported"]
            .as_array()
            .expect("scopes")
            .contains(&json!("offline_access")),
        "{prm}"
    );

    // 2. RFC 8414 metadata at both paths an MCP client tries, through Envoy.
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let r = env.get(path).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let doc = r.json();
        assert_eq!(doc["issuer"], env.envoy_url);
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(
            doc["authorization_endpoint"],
            format!("{}/oauth/authorize", env.envoy_url)
        );
        assert_eq!(
            doc["token_endpoint"],
            format!("{}/oauth/token", env.envoy_url)
        );
        assert_eq!(
            doc["registration_endpoint"],
            format!("{}/oauth/register", env.envoy_url)
        );
        assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    }

    // 3. Registration, then the consent page.
    let app = register(&env, "Login Test Client").await;
    let (verifier, challenge) = pkce();
    let browser = Browser::new();
    let url = authorize_url(
        &env,
        &app,
        &challenge,
        &[("resource", &resource(&env, "github"))],
    );
    let page = browser.get(&url).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body.contains("Login Test Client") && page.body.contains("127.0.0.1"),
        "the consent page names the client and where it sends the user: {}",
        page.body
    );
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let set_cookie: Vec<&str> = page
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(
        set_cookie
            .iter()
            .any(|c| c.starts_with("__Host-mcp-authz-csrf=")
                && c.contains("Secure")
                && c.contains("HttpOnly")
                && c.contains("SameSite=Lax")
                && c.contains("Path=/")),
        "{set_cookie:?}"
    );

    // 4. Approve: to Entra with the gateway's own client, PKCE pair and state; no `resource`.
    let form = crate::support::browser::ConsentForm::read(&page.body).expect("consent form");
    let r = browser.answer(&form, "approve", None).await;
    assert_eq!(r.status, 302, "{r:?}");
    let to_entra = url::Url::parse(r.header("location").expect("Location")).expect("URL");
    assert!(
        to_entra.as_str().starts_with(&format!(
            "{}/{TID}/oauth2/v2.0/authorize",
            env.authority.base_url()
        )),
        "{to_entra}"
    );
    let q: std::collections::HashMap<_, _> = to_entra.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], GATEWAY_APP);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_ne!(
        q["code_challenge"], challenge,
        "the gateway's own PKCE pair"
    );
    assert_ne!(q.get("state").map(String::as_str), Some("st-123"));
    assert!(!q.contains_key("resource"), "resource is not sent to Entra");
    assert!(
        q["scope"].contains(MCP_SCOPE) && q["scope"].contains("offline_access"),
        "{q:?}"
    );
    assert!(
        browser
            .cookie_names()
            .iter()
            .any(|n| n.starts_with("__Host-mcp-authz-consent-")),
        "the approval is remembered: {:?}",
        browser.cookie_names()
    );
    let landed = browser
        .follow(r, &app.redirect_uri)
        .await
        .unwrap_or_else(|p| panic!("stopped at {p:?}"));
    assert_eq!(landed.param("state").as_deref(), Some("st-123"));
    assert_eq!(landed.param("iss").as_deref(), Some(env.envoy_url.as_str()));
    let code = landed.param("code").expect("code");

    // 5. The token: Entra's access token for the API, and the gateway's refresh token.
    let r = redeem(&env, &app, &code, &verifier).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let tokens = r.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["scope"], MCP_SCOPE);
    let access = tokens["access_token"].as_str().expect("access_token");
    let refresh = tokens["refresh_token"].as_str().expect("refresh_token");
    assert!(
        access.split('.').count() == 3,
        "a JWS, Entra's own: {access:.20}"
    );

    // 6. A tool through Envoy with it: the request path validates Entra's token as always.
    let sid = env.open_session("/mcp/github", access).await;
    let r = env
        .post(
            "/mcp/github",
            Some(access),
            &tool_call_body(2, "echo"),
            &[("mcp-session-id", &sid)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = env
        .post(
            "/mcp/github",
            Some(access),
            &tool_call_body(3, "delete_repository"),
            &[("mcp-session-id", &sid)],
        )
        .await;
    assert_eq!(
        (r.status, r.reason()),
        (403, "tool_denied"),
        "policy still decides"
    );

    // 7. The code is single-use: the replay is invalid_grant.
    let r = redeem(&env, &app, &code, &verifier).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("invalid_grant"))
    );

    // 8. Refresh: a new access token and a new refresh token; the used one is refused after.
    let r = token_request(
        &env,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", &app.client_id),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let renewed = r.json();
    let access2 = renewed["access_token"].as_str().expect("access_token");
    let refresh2 = renewed["refresh_token"].as_str().expect("refresh_token");
    assert_ne!(refresh2, refresh, "rotated");
    let r = env
        .post("/mcp/github", Some(access2), &initialize_body(9), &[])
        .await;
    assert_eq!(r.status, 200, "the refreshed token works: {r:?}");
    let r = token_request(
        &env,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", &app.client_id),
        ],
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("invalid_grant")),
        "attack: a stolen, already used refresh token replayed"
    );

    // 9. The family counts what happened.
    let metrics = scrape_metrics(&env.http, env.authz.admin).await;
    assert_eq!(oauth_count(&metrics, "registration", "registered"), 1);
    assert_eq!(oauth_count(&metrics, "login", "success"), 1);
    assert_eq!(oauth_count(&metrics, "login", "code_invalid"), 1);
    assert_eq!(oauth_count(&metrics, "refresh", "success"), 1);
    assert_eq!(oauth_count(&metrics, "refresh", "replayed"), 1);
}

#[tokio::test]
async fn refusals_are_the_oauth_errors_the_spec_names() {
    let env = oauth_env().await;
    let app = register(&env, "Refusals").await;
    let browser = Browser::new();

    // Attack: a stolen code redeemed without the client's verifier.
    let (verifier, challenge) = pkce();
    let landed = signed_in(&env, &browser, &app, &challenge).await;
    let code = landed.param("code").expect("code");
    let (wrong, _) = pkce();
    assert_ne!(wrong, verifier);
    let r = redeem(&env, &app, &code, &wrong).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("invalid_grant")),
        "{r:?}"
    );
    // ... and the code is gone after that one try (RFC 6749 §4.1.2: used once, whatever the outcome).
    let r = redeem(&env, &app, &code, &verifier).await;
    assert_eq!(r.json()["error"], "invalid_grant");

    // Attack: a code sent to a redirect URI the client never registered (an open redirector).
    let (_, challenge) = pkce();
    let evil = App {
        client_id: app.client_id.clone(),
        redirect_uri: "https://evil.example/steal".into(),
    };
    let r = browser
        .get(&authorize_url(&env, &evil, &challenge, &[]))
        .await;
    assert_eq!(r.status, 400, "an error page, no redirect: {r:?}");
    assert!(r.header("location").is_none());
    assert!(r.body.contains("redirect URI"), "{}", r.body);

    // Attack: a token for another host's server (RFC 8707 audience confusion).
    let r = browser
        .get(&authorize_url(
            &env,
            &app,
            &challenge,
            &[("resource", "https://other.example/mcp/github")],
        ))
        .await;
    assert_eq!(r.status, 302, "{r:?}");
    let to = url::Url::parse(r.header("location").expect("Location")).expect("URL");
    assert!(to.as_str().starts_with(&app.redirect_uri), "{to}");
    let q: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
    assert_eq!(q["error"], "invalid_target");
    assert_eq!(q["state"], "st-123");
    assert_eq!(q["iss"], env.envoy_url);
    // ... and a disabled server of this gateway is not a resource either.
    let r = browser
        .get(&authorize_url(
            &env,
            &app,
            &challenge,
            &[("resource", &resource(&env, "legacy"))],
        ))
        .await;
    assert!(
        r.header("location")
            .is_some_and(|l| l.contains("error=invalid_target")),
        "{r:?}"
    );

    // Without PKCE there is no sign-in (OAuth 2.1).
    let mut no_pkce = url::Url::parse(&format!("{}/oauth/authorize", env.envoy_url)).expect("url");
    no_pkce
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &app.client_id)
        .append_pair("redirect_uri", &app.redirect_uri);
    let r = browser.get(no_pkce.as_str()).await;
    assert!(
        r.header("location")
            .is_some_and(|l| l.contains("error=invalid_request")),
        "{r:?}"
    );

    // An unknown client id is an error page.
    let ghost = App {
        client_id: "never-registered".into(),
        redirect_uri: app.redirect_uri.clone(),
    };
    let r = browser
        .get(&authorize_url(&env, &ghost, &challenge, &[]))
        .await;
    assert_eq!(r.status, 400, "{r:?}");

    // A token request for another client's code.
    let other = register(&env, "Other").await;
    let (verifier, challenge) = pkce();
    let landed = signed_in(&env, &browser, &app, &challenge).await;
    let r = token_request(
        &env,
        &[
            ("grant_type", "authorization_code"),
            ("code", &landed.param("code").expect("code")),
            ("redirect_uri", &app.redirect_uri),
            ("client_id", &other.client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_grant", "{r:?}");

    // An unknown grant type.
    let r = token_request(
        &env,
        &[("grant_type", "password"), ("client_id", &app.client_id)],
    )
    .await;
    assert_eq!(r.json()["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn a_denial_returns_access_denied_and_remembers_nothing() {
    let env = oauth_env().await;
    let app = register(&env, "Denied").await;
    let browser = Browser::new();
    let (_, challenge) = pkce();
    let landed = browser
        .sign_in(
            &authorize_url(&env, &app, &challenge, &[]),
            "deny",
            &app.redirect_uri,
        )
        .await
        .unwrap_or_else(|p| panic!("{p:?}"));
    assert_eq!(landed.param("error").as_deref(), Some("access_denied"));
    assert_eq!(landed.param("state").as_deref(), Some("st-123"));
    assert!(landed.param("code").is_none());
    assert!(
        !browser
            .cookie_names()
            .iter()
            .any(|n| n.starts_with("__Host-mcp-authz-consent-")),
        "{:?}",
        browser.cookie_names()
    );
    // The next try asks again.
    let r = browser
        .get(&authorize_url(&env, &app, &challenge, &[]))
        .await;
    assert_eq!(r.status, 200, "the consent page again: {r:?}");
}

#[tokio::test]
async fn a_consent_posted_from_another_site_is_refused() {
    // Attack: a page on another site posts a consent form it got from the gateway (its own
    // request, its csrf field) from the victim's browser: the browser sends no __Host- cookie
    // with a cross-site POST (SameSite=Lax), so the approval is refused.
    let env = oauth_env().await;
    let app = register(&env, "Csrf").await;
    let attacker = Browser::new();
    let (_, challenge) = pkce();
    let page = attacker
        .get(&authorize_url(&env, &app, &challenge, &[]))
        .await;
    let form = crate::support::browser::ConsentForm::read(&page.body).expect("form");
    let victim = Browser::new();
    let r = victim.answer(&form, "approve", None).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.header("location").is_none());
    // A forged csrf field with the attacker's own cookie fails the same way.
    let r = attacker
        .post_form(
            &form.action,
            &[
                ("request", &form.request),
                ("csrf", "forged"),
                ("decision", "approve"),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
}

#[tokio::test]
async fn a_second_user_signs_in_and_is_refused_what_their_policy_denies() {
    let env = oauth_env().await;
    let app = register(&env, "Two Users").await;

    env.authority.sign_in(Some(BOB));
    // Bob's own browser: no consent remembered, the page again.
    let browser = Browser::new();
    let (verifier, challenge) = pkce();
    let url = authorize_url(&env, &app, &challenge, &[]);
    let landed = browser
        .sign_in(&url, "approve", &app.redirect_uri)
        .await
        .unwrap_or_else(|p| panic!("{p:?}"));
    let r = redeem(&env, &app, &landed.param("code").expect("code"), &verifier).await;
    assert_eq!(r.status, 200, "{r:?}");
    let access = r.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    // Sales has jira, not github.
    let r = env
        .post("/mcp/github", Some(&access), &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = env
        .post("/mcp/jira", Some(&access), &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// What every SDK's OAuth client must have done: signed in through the consent page with
/// nothing but the URL, called a tool, been refused the denied one, refreshed, and seen the used
/// refresh token refused.
fn assert_sdk_login(sdk: &str, report: &serde_json::Value) {
    assert!(report.get("error").is_none(), "{sdk}: {report}");
    assert_eq!(report["initialized"], true, "{sdk}: {report}");
    assert_eq!(report["consent_page"], true, "{sdk}: {report}");
    assert!(
        report["tools"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("echo"))),
        "{sdk}: {report}"
    );
    assert_eq!(
        report["echo"],
        format!("hello from {sdk}"),
        "{sdk}: {report}"
    );
    assert_eq!(report["delete"]["ok"], false, "{sdk}: {report}");
    assert_eq!(report["refreshed"], true, "{sdk}: {report}");
    assert_eq!(
        report["tools_after_refresh"], report["tools"],
        "{sdk}: {report}"
    );
    assert_eq!(
        report["replayed_refresh"],
        json!({"status": 400, "error": "invalid_grant"}),
        "{sdk}: attack: the used refresh token replayed: {report}"
    );
}

fn peer_script(rel: &str) -> String {
    repo_path(rel).display().to_string()
}

#[tokio::test]
async fn the_python_sdk_oauth_client_signs_in_by_registration() {
    let env = oauth_env().await;
    let report = run_client(
        &peers_python(),
        &[
            peer_script("tests/peers/python/oauth_client.py"),
            resource(&env, "github"),
            "approve".into(),
        ],
    )
    .await;
    assert_sdk_login("python", &report);
    assert_eq!(report["registered_by"], "dcr", "{report}");
    assert!(
        report["whoami"].as_str().is_some_and(|w| w.contains(ALICE)),
        "the upstream sees the user who signed in: {report}"
    );
    let params = report["authorize_params"].as_array().expect("params");
    for p in [
        "code_challenge",
        "code_challenge_method",
        "resource",
        "state",
        "scope",
    ] {
        assert!(params.contains(&json!(p)), "{p} sent: {report}");
    }
    let metrics = scrape_metrics(&env.http, env.authz.admin).await;
    assert_eq!(oauth_count(&metrics, "registration", "registered"), 1);
    assert_eq!(oauth_count(&metrics, "login", "success"), 1);
    assert_eq!(oauth_count(&metrics, "refresh", "success"), 1);
}

#[tokio::test]
async fn the_typescript_sdk_oauth_client_signs_in_by_registration() {
    let env = oauth_env().await;
    let report = run_client(
        "node",
        &[
            peer_script("tests/peers/typescript/oauth_client.mjs"),
            resource(&env, "github"),
            "approve".into(),
        ],
    )
    .await;
    assert_sdk_login("typescript", &report);
    assert_eq!(report["registered_by"], "dcr", "{report}");
    assert_eq!(report["refresh_result"], "AUTHORIZED", "{report}");
    assert_eq!(report["iss"], env.envoy_url, "{report}");
    let params = report["authorize_params"].as_array().expect("params");
    for p in [
        "code_challenge",
        "code_challenge_method",
        "resource",
        "state",
        "scope",
    ] {
        assert!(params.contains(&json!(p)), "{p} sent: {report}");
    }
}

#[tokio::test]
async fn the_rmcp_oauth_client_signs_in_by_registration() {
    use rmcp::ServiceExt;
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::auth::{AuthClient, AuthorizationRequest, OAuthState};
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

    let env = oauth_env().await;
    let server = resource(&env, "github");
    let redirect_uri = format!("http://127.0.0.1:{}/callback", free_port());

    // The first request is refused; its challenge seeds the SDK's discovery.
    let r = env
        .post("/mcp/github", None, &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").expect("challenge").to_owned();

    let mut state = OAuthState::new(server.as_str(), None)
        .await
        .expect("oauth state");
    state
        .start_authorization(
            AuthorizationRequest::new(redirect_uri.clone())
                .with_client_name("rmcp login test")
                .with_application_type("native")
                .with_challenge(challenge),
        )
        .await
        .expect("discovery and registration");
    let authorize = state.get_authorization_url().await.expect("authorize URL");
    let sent: std::collections::HashMap<_, _> = url::Url::parse(&authorize)
        .expect("url")
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(sent["code_challenge_method"], "S256");
    assert_eq!(sent["resource"], server);
    let landed = Browser::new()
        .sign_in(&authorize, "approve", &redirect_uri)
        .await
        .unwrap_or_else(|p| panic!("{p:?}"));
    state
        .handle_callback_url(landed.url.as_str())
        .await
        .expect("the code redeemed, iss checked");
    let manager = state
        .into_authorization_manager()
        .expect("authorized manager");
    let (client_id, first) = manager.get_credentials().await.expect("credentials");
    assert!(
        client_id.starts_with("mcp-"),
        "a registered client: {client_id}"
    );
    let first = first.expect("tokens");

    // A tool through Envoy with the SDK's authorized client.
    let transport = StreamableHttpClientTransport::with_client(
        AuthClient::new(reqwest::Client::new(), manager),
        StreamableHttpClientTransportConfig::with_uri(server.clone()),
    );
    let client = ().serve(transport).await.expect("initialize through Envoy");
    let echo = client
        .call_tool(
            CallToolRequestParams::new("echo").with_arguments(
                json!({"text": "hello from rmcp"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        )
        .await
        .expect("echo");
    assert!(format!("{echo:?}").contains("hello from rmcp"), "{echo:?}");
    let denied = client
        .call_tool(CallToolRequestParams::new("delete_repository"))
        .await;
    assert!(denied.is_err(), "policy denies it: {denied:?}");
    client.cancel().await.ok();

    // Refresh with the SDK, then the used refresh token is refused.
    let mut again = OAuthState::new(server.as_str(), None).await.expect("state");
    again
        .set_credentials(&client_id, first.clone())
        .await
        .expect("stored credentials");
    again
        .refresh_token()
        .await
        .expect("refresh through the gateway");
    let manager = again.into_authorization_manager().expect("manager");
    let (_, renewed) = manager.get_credentials().await.expect("credentials");
    // The SDK's token response is oauth2's; its JSON form names the refresh token.
    let refresh_of = |t: &rmcp::transport::auth::OAuthTokenResponse| {
        serde_json::to_value(t).expect("token JSON")["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_owned()
    };
    let old_refresh = refresh_of(&first);
    assert_ne!(
        refresh_of(&renewed.expect("tokens")),
        old_refresh,
        "rotated"
    );
    let r = token_request(
        &env,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &old_refresh),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(
        r.json()["error"],
        "invalid_grant",
        "attack: the used refresh token replayed"
    );
}

// Client ID Metadata Documents.

use crate::support::docserver::{Answer, DocServer};

async fn documents_env(docs: &DocServer) -> TestEnv {
    TestEnv::start(Options {
        oauth: true,
        oauth_documents_ca: Some(docs.ca_file.clone()),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_client_id_metadata_document_client_signs_in_without_registering() {
    let dir = tempfile::tempdir().expect("dir");
    let docs = DocServer::start(dir.path()).await;
    let env = documents_env(&docs).await;
    let meta = env
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(meta["client_id_metadata_document_supported"], true);

    let redirect_uri = format!("http://127.0.0.1:{}/callback", free_port());
    let client_id = docs.publish_client("/apps/tool.json", "Published Tool", &[&redirect_uri]);
    let app = App {
        client_id: client_id.clone(),
        redirect_uri,
    };
    let (verifier, challenge) = pkce();
    let browser = Browser::new();
    let page = browser
        .get(&authorize_url(&env, &app, &challenge, &[]))
        .await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("Published Tool"), "{}", page.body);
    let landed = browser
        .sign_in(
            &authorize_url(&env, &app, &challenge, &[]),
            "approve",
            &app.redirect_uri,
        )
        .await
        .unwrap_or_else(|p| panic!("{p:?}"));
    let r = redeem(&env, &app, &landed.param("code").expect("code"), &verifier).await;
    assert_eq!(r.status, 200, "{r:?}");
    let access = r.json()["access_token"].as_str().expect("token").to_owned();
    let r = env
        .post("/mcp/github", Some(&access), &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        docs.hits("/apps/tool.json"),
        1,
        "two authorizes and a token request, one fetch: the document is cached"
    );
}

#[tokio::test]
async fn a_client_id_url_at_a_private_address_is_never_fetched() {
    // Attack (SSRF): a client_id URL that points the gateway at its own network: loopback, a
    // name that resolves to loopback, the cloud metadata address, a private range. The gateway
    // must refuse each without connecting.
    let dir = tempfile::tempdir().expect("dir");
    let docs = DocServer::start(dir.path()).await;
    let env = oauth_env().await; // the production setting: private addresses refused
    let port = docs.base.rsplit(':').next().expect("port").to_owned();
    let redirect_uri = format!("http://127.0.0.1:{}/callback", free_port());
    docs.publish_client("/c.json", "Internal", &[&redirect_uri]);
    let (_, challenge) = pkce();
    let browser = Browser::new();
    for client_id in [
        format!("https://127.0.0.1:{port}/c.json"),
        format!("https://localhost:{port}/c.json"),
        format!("https://[::1]:{port}/c.json"),
        "https://169.254.169.254/latest/meta-data/c.json".to_owned(),
        "https://10.0.0.1/c.json".to_owned(),
        format!("https://[::ffff:127.0.0.1]:{port}/c.json"),
    ] {
        let app = App {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
        };
        let r = browser
            .get(&authorize_url(&env, &app, &challenge, &[]))
            .await;
        assert_eq!(r.status, 400, "{client_id}: {r:?}");
        assert!(
            r.body.contains("not a public address"),
            "{client_id}: {}",
            r.body
        );
        let r = token_request(
            &env,
            &[
                ("grant_type", "authorization_code"),
                ("code", "x"),
                ("code_verifier", &"v".repeat(43)),
                ("client_id", &client_id),
            ],
        )
        .await;
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (401, json!("invalid_client")),
            "{client_id}"
        );
    }
    assert_eq!(docs.hits("/c.json"), 0, "no connection was made");
}

#[tokio::test]
async fn metadata_documents_that_break_the_rules_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let docs = DocServer::start(dir.path()).await;
    let env = documents_env(&docs).await;
    let redirect_uri = format!("http://127.0.0.1:{}/callback", free_port());
    let doc = |client_id: &str| {
        json!({"client_id": client_id, "client_name": "x", "redirect_uris": [redirect_uri],
               "token_endpoint_auth_method": "none"})
    };
    let cases: Vec<(&str, Answer, &str)> = vec![
        // Attack: a document that claims another client's id (impersonation).
        (
            "/claims-other.json",
            Answer::json(&doc("https://trusted.example/app.json")),
            "client_id is not the URL",
        ),
        // A shared secret cannot be published.
        (
            "/secret.json",
            Answer::json(&{
                let mut d = doc(&format!("{}/secret.json", docs.base));
                d["token_endpoint_auth_method"] = json!("client_secret_basic");
                d
            }),
            "public",
        ),
        // Attack: a redirect to an internal address, which must not be followed.
        (
            "/moved.json",
            Answer {
                status: 302,
                content_type: "text/plain".into(),
                headers: vec![("location".into(), "http://169.254.169.254/".into())],
                body: String::new(),
            },
            "HTTP 302",
        ),
        (
            "/huge.json",
            Answer::json(&json!({"client_id": format!("{}/huge.json", docs.base),
                "redirect_uris": [redirect_uri], "pad": "x".repeat(40_000)})),
            "larger than",
        ),
        (
            "/page.json",
            Answer {
                status: 200,
                content_type: "text/html".into(),
                headers: Vec::new(),
                body: "<html></html>".into(),
            },
            "not application/json",
        ),
        (
            "/bad-redirect.json",
            Answer::json(
                &json!({"client_id": format!("{}/bad-redirect.json", docs.base),
                "redirect_uris": ["http://evil.example/cb"]}),
            ),
            "loopback",
        ),
    ];
    let (_, challenge) = pkce();
    let browser = Browser::new();
    for (path, answer, why) in cases {
        let client_id = docs.publish(path, answer);
        let app = App {
            client_id,
            redirect_uri: redirect_uri.clone(),
        };
        let r = browser
            .get(&authorize_url(&env, &app, &challenge, &[]))
            .await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert!(r.body.contains(why), "{path}: {why}: {}", r.body);
        assert!(r.header("location").is_none(), "{path}");
    }
    // A valid document, but the authorize request's redirect URI is not one it lists.
    let client_id = docs.publish_client("/ok.json", "Ok", &[&redirect_uri]);
    let app = App {
        client_id,
        redirect_uri: "https://evil.example/steal".into(),
    };
    let r = browser
        .get(&authorize_url(&env, &app, &challenge, &[]))
        .await;
    assert_eq!(r.status, 400, "{r:?}");
}

/// The SDK clients' documents, at the redirect URIs their scripts use.
fn publish_sdk_documents(docs: &DocServer) -> (String, String) {
    (
        docs.publish_client(
            "/python-client.json",
            "Python SDK login test",
            &["http://127.0.0.1:33418/callback"],
        ),
        docs.publish_client(
            "/typescript-client.json",
            "TypeScript SDK login test",
            &["http://127.0.0.1:33419/callback"],
        ),
    )
}

#[tokio::test]
async fn the_python_and_typescript_sdk_oauth_clients_sign_in_by_metadata_document() {
    let dir = tempfile::tempdir().expect("dir");
    let docs = DocServer::start(dir.path()).await;
    let env = documents_env(&docs).await;
    let (python_doc, typescript_doc) = publish_sdk_documents(&docs);
    let python = run_client(
        &peers_python(),
        &[
            peer_script("tests/peers/python/oauth_client.py"),
            resource(&env, "github"),
            "approve".into(),
            python_doc.clone(),
        ],
    )
    .await;
    assert_sdk_login("python", &python);
    assert_eq!(python["client_id"], python_doc, "{python}");
    assert_eq!(python["registered_by"], "cimd", "{python}");
    let typescript = run_client(
        "node",
        &[
            peer_script("tests/peers/typescript/oauth_client.mjs"),
            resource(&env, "github"),
            "approve".into(),
            typescript_doc.clone(),
        ],
    )
    .await;
    assert_sdk_login("typescript", &typescript);
    assert_eq!(typescript["client_id"], typescript_doc, "{typescript}");
    let metrics = scrape_metrics(&env.http, env.authz.admin).await;
    assert_eq!(
        oauth_count(&metrics, "registration", "registered"),
        0,
        "no registration: the documents are the clients"
    );
    assert_eq!(oauth_count(&metrics, "login", "success"), 2);
}

#[tokio::test]
async fn the_rmcp_oauth_client_signs_in_by_metadata_document() {
    use rmcp::transport::auth::{AuthorizationRequest, OAuthState};
    let dir = tempfile::tempdir().expect("dir");
    let docs = DocServer::start(dir.path()).await;
    let env = documents_env(&docs).await;
    let redirect_uri = format!("http://127.0.0.1:{}/callback", free_port());
    let doc = docs.publish_client("/rmcp-client.json", "rmcp login test", &[&redirect_uri]);
    let server = resource(&env, "github");
    let r = env
        .post("/mcp/github", None, &initialize_body(1), &[])
        .await;
    let challenge = r.header("www-authenticate").expect("challenge").to_owned();
    let mut state = OAuthState::new(server.as_str(), None).await.expect("state");
    state
        .start_authorization(
            AuthorizationRequest::new(redirect_uri.clone())
                .with_client_metadata_url(doc.clone())
                .with_challenge(challenge),
        )
        .await
        .expect("discovery");
    let authorize = state.get_authorization_url().await.expect("authorize URL");
    let landed = Browser::new()
        .sign_in(&authorize, "approve", &redirect_uri)
        .await
        .unwrap_or_else(|p| panic!("{p:?}"));
    state
        .handle_callback_url(landed.url.as_str())
        .await
        .expect("code redeemed");
    let manager = state.into_authorization_manager().expect("manager");
    let (client_id, tokens) = manager.get_credentials().await.expect("credentials");
    assert_eq!(client_id, doc, "the document URL is the client id");
    let access = serde_json::to_value(tokens.expect("tokens")).expect("json")["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    let r = env
        .post("/mcp/github", Some(&access), &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// Debian's Chromium: `MCP_AUTHZ_TEST_CHROMIUM` (`make test` sets it from
/// tests/env/ensure-chromium.sh), else /usr/bin/chromium.
fn chromium() -> String {
    std::env::var("MCP_AUTHZ_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

#[tokio::test]
async fn the_consent_page_works_in_a_real_browser() {
    let env = oauth_env().await;
    let shots = env.dir.path();
    for decision in ["approve", "deny"] {
        let app = register(&env, &format!("Browser Test {decision}")).await;
        let (verifier, challenge) = pkce();
        let url = authorize_url(
            &env,
            &app,
            &challenge,
            &[("resource", &resource(&env, "github"))],
        );
        let shot = shots.join(format!("consent-{decision}.png"));
        let report = run_client(
            "node",
            &[
                peer_script("tests/peers/typescript/consent_browser.mjs"),
                chromium(),
                url,
                app.redirect_uri.clone(),
                decision.into(),
                shot.display().to_string(),
            ],
        )
        .await;
        assert!(report.get("error").is_none(), "{decision}: {report}");
        assert_eq!(report["status"], 200, "{report}");
        assert_eq!(
            report["client"],
            format!("Browser Test {decision}"),
            "{report}"
        );
        assert_eq!(report["redirect_host"], "127.0.0.1", "{report}");
        // The page's own styles applied (CSP lets its inline style in) and it laid out.
        assert_eq!(report["approve_background"], "rgb(11, 92, 173)", "{report}");
        assert!(
            report["main_width"].as_f64().is_some_and(|w| w > 300.0),
            "{report}"
        );
        assert!(
            !report["console"]
                .as_array()
                .expect("console")
                .iter()
                .any(|m| m
                    .as_str()
                    .is_some_and(|m| m.contains("Content Security Policy"))),
            "the page breaks none of its own CSP: {report}"
        );
        // Attack (clickjacking): the page framed by another site does not load.
        assert_eq!(report["framed_has_form"], false, "{report}");
        // The browser kept the CSRF cookie with its attributes (__Host-: Secure, Path=/).
        assert!(
            report["cookies_before"]
                .as_array()
                .expect("cookies")
                .iter()
                .any(|c| c["name"] == "__Host-mcp-authz-csrf"
                    && c["secure"] == true
                    && c["httpOnly"] == true
                    && c["sameSite"] == "Lax"),
            "{report}"
        );
        let png = std::fs::read(&shot).expect("screenshot");
        // Kept for a look when asked (MCP_AUTHZ_TEST_SCREENSHOTS=dir).
        if let Some(keep) = std::env::var_os("MCP_AUTHZ_TEST_SCREENSHOTS") {
            std::fs::create_dir_all(&keep).expect("screenshot dir");
            std::fs::write(
                std::path::Path::new(&keep).join(format!("consent-{decision}.png")),
                &png,
            )
            .expect("keep screenshot");
        }
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
            "a rendered screenshot, not an empty one: {} bytes",
            png.len()
        );
        let landed = Landed {
            url: url::Url::parse(report["landed"].as_str().expect("landed")).expect("url"),
        };
        assert_eq!(landed.param("state").as_deref(), Some("st-123"));
        if decision == "approve" {
            assert!(
                report["cookies_after"]
                    .as_array()
                    .expect("cookies")
                    .iter()
                    .any(|c| c
                        .as_str()
                        .is_some_and(|c| c.starts_with("__Host-mcp-authz-consent-"))),
                "{report}"
            );
            let r = redeem(&env, &app, &landed.param("code").expect("code"), &verifier).await;
            assert_eq!(r.status, 200, "the browser's code redeems: {r:?}");
        } else {
            assert_eq!(
                landed.param("error").as_deref(),
                Some("access_denied"),
                "{report}"
            );
        }
    }
}

#[tokio::test]
async fn operator_registered_clients_sign_in_and_a_confidential_one_must_prove_its_secret() {
    let env = TestEnv::start(Options {
        oauth: true,
        oauth_extra: r#"clients: [{client_id: team-agent, client_name: "Team Agent", redirect_uris: ["https://agent.example/oauth/cb"], client_secret: "team-agent-secret-0123"}, {client_id: desk-tool, redirect_uris: ["http://127.0.0.1/cb"]}]"#.into(),
        ..Options::default()
    })
    .await;
    let agent = App {
        client_id: "team-agent".into(),
        redirect_uri: "https://agent.example/oauth/cb".into(),
    };
    let (verifier, challenge) = pkce();
    let browser = Browser::new();
    let page = browser
        .get(&authorize_url(&env, &agent, &challenge, &[]))
        .await;
    assert!(page.body.contains("Team Agent"), "{page:?}");
    let landed = browser
        .sign_in(
            &authorize_url(&env, &agent, &challenge, &[]),
            "approve",
            &agent.redirect_uri,
        )
        .await
        .unwrap_or_else(|p| panic!("{p:?}"));
    let code = landed.param("code").expect("code");
    let form = |code: &str| {
        vec![
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), code.to_owned()),
            ("redirect_uri".to_owned(), agent.redirect_uri.clone()),
            ("code_verifier".to_owned(), verifier.clone()),
        ]
    };
    let post = |auth: Option<(&str, &str)>, form: Vec<(String, String)>| {
        let mut req = env
            .http
            .post(format!("{}/oauth/token", env.envoy_url))
            .form(&form);
        if let Some((id, secret)) = auth {
            req = req.basic_auth(id, Some(secret));
        }
        async move { Reply::from(req.send().await.expect("token")).await }
    };
    // Attack: a stolen code redeemed without the confidential client's secret, or a wrong one.
    let mut public = form(&code);
    public.push(("client_id".into(), "team-agent".into()));
    let r = post(None, public).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("invalid_client")),
        "{r:?}"
    );
    let r = post(Some(("team-agent", "wrong-secret-000000")), form(&code)).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("invalid_client")),
        "{r:?}"
    );
    // The failed attempts did not spend the code: client authentication comes first.
    let r = post(Some(("team-agent", "team-agent-secret-0123")), form(&code)).await;
    assert_eq!(r.status, 200, "{r:?}");

    // A public operator client (PKCE only), loopback at any port.
    let desk = App {
        client_id: "desk-tool".into(),
        redirect_uri: format!("http://127.0.0.1:{}/cb", free_port()),
    };
    let (verifier, challenge) = pkce();
    let landed = browser
        .sign_in(
            &authorize_url(&env, &desk, &challenge, &[]),
            "approve",
            &desk.redirect_uri,
        )
        .await
        .unwrap_or_else(|p| panic!("{p:?}"));
    let r = redeem(&env, &desk, &landed.param("code").expect("code"), &verifier).await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn check_config_refuses_a_bad_operator_client() {
    for (client, why) in [
        (
            r#"{client_id: "mcp-x", redirect_uris: ["https://a.example/cb"]}"#,
            "mcp-",
        ),
        (
            r#"{client_id: "ok", redirect_uris: ["http://a.example/cb"]}"#,
            "loopback",
        ),
        (
            r#"{client_id: "ok", redirect_uris: ["https://a.example/cb"], client_secret: "short"}"#,
            "16",
        ),
        (
            r#"{client_id: "a b", redirect_uris: ["https://a.example/cb"]}"#,
            "client_id",
        ),
    ] {
        let dir = tempfile::tempdir().expect("dir");
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, POLICY).expect("policy");
        let mut cfg = config_yaml("http://127.0.0.1:1", &policy, None, 300)
            .replace("mcp.example.test", "gw.example.test");
        cfg.push_str(&format!(
            "oauth: {{client_id: \"{GATEWAY_APP}\", client_secret: x, api_scope: \"{API_URI}/{SCOPE}\", seal_keys: [\"{SEAL_KEY}\"], clients: [{client}]}}\n"
        ));
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, cfg).expect("config");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-authz"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run check-config");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{client}: {text}");
        assert!(
            text.contains("oauth.clients[0]") && text.contains(why),
            "{client}: {why}: {text}"
        );
    }
}

/// Two replicas behind one issuer: `env`'s (through Envoy) and a second started from the same
/// configuration, reached directly on its metadata listener.
async fn two_replicas(store: &str) -> (TestEnv, Instance, crate::support::pg::TestDb) {
    let db = crate::support::pg::TestDb::create().await;
    db.import(POLICY, false).await;
    let env = TestEnv::start(Options {
        oauth: true,
        database_url: Some(db.url.clone()),
        oauth_extra: format!("state_store: {store}"),
        ..Options::default()
    })
    .await;
    let other = Instance::start(env.config_text()).await;
    (env, other, db)
}

#[tokio::test]
async fn with_the_postgres_store_each_step_may_reach_another_replica() {
    let (env, other, db) = two_replicas("postgres").await;
    let b = format!("http://{}", other.addrs.metadata.expect("metadata"));
    // Registered at A (through Envoy) ...
    let app = register(&env, "Two Replicas").await;
    let (verifier, challenge) = pkce();
    let browser = Browser::new();
    // ... authorized at B (its consent page, its redirect to Entra) ...
    let url = authorize_url(&env, &app, &challenge, &[]).replace(&env.envoy_url, &b);
    let page = browser.get(&url).await;
    assert_eq!(page.status, 200, "B knows A's registration: {page:?}");
    let form = crate::support::browser::ConsentForm::read(&page.body).expect("form");
    let at_b = form.action.replace(&env.envoy_url, &b);
    let r = browser.answer(&form, "approve", Some(&at_b)).await;
    assert_eq!(r.status, 302, "{r:?}");
    // ... Entra's callback lands at A (Envoy) ...
    let landed = browser
        .follow(r, &app.redirect_uri)
        .await
        .unwrap_or_else(|p| panic!("A finds B's sign-in in flight: {p:?}"));
    let code = landed.param("code").expect("code");
    // ... and the code is redeemed at B.
    let r = token_at(
        &other.http,
        &b,
        &[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", &app.redirect_uri),
            ("client_id", &app.client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "B redeems A's code: {r:?}");
    let refresh = r.json()["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    // Attack: the code replayed at the other replica is still used up.
    let r = redeem(&env, &app, &code, &verifier).await;
    assert_eq!(r.json()["error"], "invalid_grant", "{r:?}");
    // A refresh at A, then the same refresh token at B: refused there.
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("client_id", app.client_id.as_str()),
    ];
    let r = token_request(&env, &form).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = token_at(&other.http, &b, &form).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("invalid_grant")),
        "attack: a used refresh token replayed at another replica"
    );
    // What the table holds: hashed keys and sealed values, no token in the clear.
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT kind || ' ' || key || ' ' || value FROM oauth_transient")
            .fetch_all(&db.pool)
            .await
            .expect("rows");
    let rows: Vec<String> = rows.into_iter().map(|(r,)| r).collect();
    assert!(!rows.is_empty());
    for row in &rows {
        assert!(!row.contains(&code) && !row.contains("eyJ"), "{row}");
    }
}

#[tokio::test]
async fn with_the_memory_store_another_replica_knows_nothing() {
    // The contrast that makes the test above meaningful: in memory, B never saw A's client.
    let (env, other, _db) = two_replicas("memory").await;
    let b = format!("http://{}", other.addrs.metadata.expect("metadata"));
    let app = register(&env, "One Replica").await;
    let (_, challenge) = pkce();
    let url = authorize_url(&env, &app, &challenge, &[]).replace(&env.envoy_url, &b);
    let r = Browser::new().get(&url).await;
    assert_eq!(r.status, 400, "{r:?}");
}

/// check-config names the store in use and reaches Entra with the gateway's app: the two
/// mistakes an operator makes first (the secret's ID pasted for its value, a client id from
/// another directory) are each named with their fix.
#[tokio::test]
async fn check_config_reports_the_login_facade_and_what_entra_says_of_its_app() {
    let env = oauth_env().await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, env.config_text()).expect("config");
    let run = |extra: Vec<(&'static str, String)>| {
        let path = path.clone();
        async move {
            use std::ffi::OsStr;
            run_mcp_authz(
                &[
                    OsStr::new("check-config"),
                    OsStr::new("--config"),
                    path.as_os_str(),
                ],
                &extra,
            )
            .await
        }
    };
    let (code, out, _) = run(Vec::new()).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ok    oauth: state store memory (this process only: run ONE replica"),
        "{out}"
    );
    assert!(
        out.contains(&format!("accepts the gateway's app {GATEWAY_APP}")),
        "{out}"
    );
    let (code, out, _) = run(vec![(
        "MCP_AUTHZ__OAUTH__CLIENT_SECRET",
        "the-secret-id".into(),
    )])
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL  oauth: Entra refused")
            && out.contains("AADSTS7000215")
            && out.contains("Value (not its ID)"),
        "{out}"
    );
    let (code, out, _) = run(vec![(
        "MCP_AUTHZ__OAUTH__CLIENT_ID",
        "0badc0de-0000-4000-8000-000000000000".into(),
    )])
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("AADSTS700016") && out.contains("Application (client) ID"),
        "{out}"
    );
    assert!(
        !out.contains(GATEWAY_SECRET),
        "the secret is never printed: {out}"
    );
}

#[tokio::test]
async fn metadata_document_fetches_are_bounded_per_minute() {
    // Attack: a stranger sends authorize requests with ever new client_id URLs to make the
    // gateway fetch from the internet on their behalf. Past the budget it fetches nothing.
    let dir = tempfile::tempdir().expect("dir");
    let docs = DocServer::start(dir.path()).await;
    let env = TestEnv::start(Options {
        oauth: true,
        oauth_extra: format!(
            "client_metadata_documents: {{allow_private_addresses: true, ca_file: {}, fetches_per_minute: 2}}",
            docs.ca_file.display()
        ),
        ..Options::default()
    })
    .await;
    let redirect_uri = format!("http://127.0.0.1:{}/callback", free_port());
    let (_, challenge) = pkce();
    let browser = Browser::new();
    let mut statuses = Vec::new();
    for n in 0..3 {
        let path = format!("/c{n}.json");
        let app = App {
            client_id: docs.publish_client(&path, "c", &[&redirect_uri]),
            redirect_uri: redirect_uri.clone(),
        };
        let r = browser
            .get(&authorize_url(&env, &app, &challenge, &[]))
            .await;
        statuses.push(r.status);
        if n == 2 {
            assert!(r.body.contains("too many"), "{}", r.body);
        }
    }
    assert_eq!(statuses, [200, 200, 400]);
    assert_eq!(docs.hits("/c2.json"), 0, "the third was never fetched");
    // A cached client is not a fetch: it still signs in.
    let app = App {
        client_id: format!("{}/c0.json", docs.base),
        redirect_uri,
    };
    let r = browser
        .get(&authorize_url(&env, &app, &challenge, &[]))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}
