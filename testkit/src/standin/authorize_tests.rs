//! The v2 authorization code flow speaks Entra's wire format (ENTRA.md): what it grants, and
//! each refusal with Entra's error and AADSTS code.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::*;

const TID: &str = "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c";
const OTHER_TID: &str = "9d1c2b3a-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
const API_ID: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
const API_URI: &str = "api://mcp-gateway";
const GATEWAY: &str = "gateway-app";
const CALLBACK: &str = "https://gw.example/oauth/callback";
const OID: &str = "00000000-0000-4000-8000-000000000b0b";
const GROUP: &str = "e0000000-0000-4000-8000-0000000000e1";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-and-some-more";

struct Flow {
    a: Arc<Authority>,
    url: String,
    http: reqwest::Client,
}

async fn flow() -> Flow {
    let (a, url) = Authority::spawn_local(vec![TID.into(), OTHER_TID.into()])
        .await
        .expect("serve");
    a.register_api(Api {
        client_id: API_ID.into(),
        app_id_uri: API_URI.into(),
        scopes: vec!["mcp.access".into()],
    });
    a.register_api(Api {
        client_id: "other-api".into(),
        app_id_uri: "api://other".into(),
        scopes: vec!["read".into()],
    });
    a.register_client(
        GATEWAY,
        Client {
            secret: "gw-secret".into(),
            redirect_uris: vec![CALLBACK.into(), "http://127.0.0.1/cb".into()],
            ..Client::default()
        },
    );
    a.add_user(User {
        tid: TID.into(),
        oid: OID.into(),
        upn: "bob@contoso.example".into(),
        name: "Bob".into(),
    });
    a.add_user(User {
        tid: OTHER_TID.into(),
        oid: "00000000-0000-4000-8000-00000000f0e1".into(),
        upn: "eve@fabrikam.example".into(),
        name: "Eve".into(),
    });
    a.set_user_groups(OID, vec![GROUP.into()]);
    a.sign_in(Some(OID));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    Flow { a, url, http }
}

fn challenge(verifier: &str) -> String {
    B64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// The query of a redirect's `Location`, by name.
fn location_query(r: &reqwest::Response) -> (String, HashMap<String, String>) {
    let loc = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no Location: {r:?}"))
        .to_owned();
    let url = url::Url::parse(&loc).expect("Location is a URL");
    let q = url.query_pairs().into_owned().collect();
    let base = format!("{}://{}{}", url.scheme(), url.authority(), url.path());
    (base, q)
}

impl Flow {
    async fn authorize(&self, extra: &[(&str, &str)]) -> reqwest::Response {
        let challenge = challenge(VERIFIER);
        let mut params: Vec<(&str, &str)> = vec![
            ("client_id", GATEWAY),
            ("response_type", "code"),
            ("redirect_uri", CALLBACK),
            (
                "scope",
                "api://mcp-gateway/mcp.access offline_access openid",
            ),
            ("state", "st-123"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ];
        for (k, v) in extra {
            params.retain(|(p, _)| p != k);
            if !v.is_empty() {
                params.push((k, v));
            }
        }
        let mut url =
            url::Url::parse(&format!("{}/{TID}/oauth2/v2.0/authorize", self.url)).expect("url");
        url.query_pairs_mut().extend_pairs(&params);
        self.http.get(url).send().await.expect("authorize")
    }

    /// A fresh code for the default request.
    async fn code(&self) -> String {
        let r = self.authorize(&[]).await;
        assert_eq!(r.status(), 302, "{r:?}");
        let (base, q) = location_query(&r);
        assert_eq!(base, CALLBACK);
        q.get("code")
            .cloned()
            .unwrap_or_else(|| panic!("no code: {q:?}"))
    }

    async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let mut all: Vec<(&str, &str)> =
            vec![("client_id", GATEWAY), ("client_secret", "gw-secret")];
        for (k, v) in form {
            all.retain(|(p, _)| p != k);
            if !v.is_empty() {
                all.push((k, v));
            }
        }
        let r = self
            .http
            .post(format!("{}/{TID}/oauth2/v2.0/token", self.url))
            .form(&all)
            .send()
            .await
            .expect("token");
        let status = r.status().as_u16();
        (status, r.json().await.expect("token answer is JSON"))
    }

    async fn redeem(&self, code: &str, verifier: &str) -> (u16, Value) {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", verifier),
        ])
        .await
    }
}

fn aadsts(v: &Value) -> u64 {
    v["error_codes"][0].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn a_signed_in_user_gets_a_code_and_the_code_an_api_token() {
    let f = flow().await;
    let r = f.authorize(&[]).await;
    assert_eq!(r.status(), 302);
    let (_, q) = location_query(&r);
    assert_eq!(q["state"], "st-123");
    assert!(q.contains_key("session_state"), "{q:?}");
    let (status, t) = f.redeem(&q["code"], VERIFIER).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["scope"], "api://mcp-gateway/mcp.access");
    assert_eq!(t["expires_in"], 3599);
    let access = jwt::verified_claims(&f.a, t["access_token"].as_str().expect("token"))
        .expect("a token the stand-in signed");
    assert_eq!(access["aud"], API_ID, "v2 tokens name the API's client id");
    assert_eq!(access["ver"], "2.0");
    assert_eq!(access["scp"], "mcp.access");
    assert_eq!(access["tid"], TID);
    assert_eq!(access["oid"], OID);
    assert_eq!(access["azp"], GATEWAY);
    assert_eq!(access["groups"], json!([GROUP]));
    let id = jwt::verified_claims(&f.a, t["id_token"].as_str().expect("id_token")).expect("id");
    assert_eq!(id["aud"], GATEWAY);
    assert_eq!(id["preferred_username"], "bob@contoso.example");
    assert!(
        t["refresh_token"].as_str().is_some_and(|r| r.len() > 64),
        "{t}"
    );

    // Without offline_access, no refresh token; without openid, no ID token.
    let r = f
        .authorize(&[("scope", "api://mcp-gateway/mcp.access")])
        .await;
    let (_, q) = location_query(&r);
    let (_, t) = f.redeem(&q["code"], VERIFIER).await;
    assert!(
        t.get("refresh_token").is_none() && t.get("id_token").is_none(),
        "{t}"
    );
}

#[tokio::test]
async fn a_code_is_single_use_bound_to_its_verifier_redirect_and_client() {
    let f = flow().await;
    let code = f.code().await;
    assert_eq!(f.redeem(&code, VERIFIER).await.0, 200);
    let (status, e) = f.redeem(&code, VERIFIER).await;
    assert_eq!(
        (status, e["error"].as_str(), aadsts(&e)),
        (400, Some("invalid_grant"), 54005),
        "{e}"
    );

    let code = f.code().await;
    let (_, e) = f
        .redeem(&code, "another-verifier-that-is-long-enough-to-be-valid-xx")
        .await;
    assert_eq!(
        (e["error"].as_str(), aadsts(&e)),
        (Some("invalid_grant"), 501481),
        "{e}"
    );
    let (_, e) = f.redeem(&code, "").await;
    assert_eq!(e["error"], "invalid_request", "{e}");

    let code = f.code().await;
    let (_, e) = f
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://gw.example/elsewhere"),
            ("code_verifier", VERIFIER),
        ])
        .await;
    assert_eq!(
        (e["error"].as_str(), aadsts(&e)),
        (Some("invalid_grant"), 70000),
        "{e}"
    );

    let (status, e) = f.redeem("not-a-code", VERIFIER).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "{e}"
    );

    // A confidential client must authenticate.
    let code = f.code().await;
    let (status, e) = f
        .token(&[
            ("client_secret", ""),
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", VERIFIER),
        ])
        .await;
    assert_eq!((status, aadsts(&e)), (401, 7000218), "{e}");
    // resource on the token endpoint: invalid_target, as on authorize.
    let (_, e) = f
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", VERIFIER),
            ("resource", "https://gw.example/mcp/github"),
        ])
        .await;
    assert_eq!(
        (e["error"].as_str(), aadsts(&e)),
        (Some("invalid_target"), 9010010),
        "{e}"
    );
}

#[tokio::test]
async fn refresh_returns_a_new_refresh_token_and_keeps_the_old_one_until_revoked() {
    let f = flow().await;
    let code = f.code().await;
    let (_, t) = f.redeem(&code, VERIFIER).await;
    let first = t["refresh_token"].as_str().expect("refresh").to_owned();
    let (status, r) = f
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &first)])
        .await;
    assert_eq!(status, 200, "{r}");
    let second = r["refresh_token"].as_str().expect("a new refresh token");
    assert_ne!(second, first);
    let access = jwt::verified_claims(&f.a, r["access_token"].as_str().expect("t")).expect("jwt");
    assert_eq!(
        (access["aud"].as_str(), access["oid"].as_str()),
        (Some(API_ID), Some(OID))
    );
    // Entra does not revoke a refresh token on use.
    assert_eq!(
        f.token(&[("grant_type", "refresh_token"), ("refresh_token", &first)])
            .await
            .0,
        200
    );
    // resource refused on refresh too.
    let (_, e) = f
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", second),
            ("resource", "https://gw.example/mcp/github"),
        ])
        .await;
    assert_eq!(aadsts(&e), 9010010, "{e}");
    // A scope beyond the grant.
    let (_, e) = f
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", second),
            ("scope", "api://other/read"),
        ])
        .await;
    assert_eq!(e["error"], "invalid_grant", "{e}");
    // Another client cannot use it.
    f.a.register_client(
        "another-app",
        Client {
            secret: "x".into(),
            ..Client::default()
        },
    );
    let (_, e) = f
        .token(&[
            ("client_id", "another-app"),
            ("client_secret", "x"),
            ("grant_type", "refresh_token"),
            ("refresh_token", second),
        ])
        .await;
    assert_eq!(aadsts(&e), 70000, "{e}");
    f.a.revoke_sessions(OID);
    let (_, e) = f
        .token(&[("grant_type", "refresh_token"), ("refresh_token", second)])
        .await;
    assert_eq!(
        (e["error"].as_str(), aadsts(&e)),
        (Some("invalid_grant"), 50173),
        "{e}"
    );
}

/// The refusals Entra shows as a page, never redirecting to a URI it cannot trust.
#[tokio::test]
async fn an_unknown_client_or_redirect_uri_is_an_error_page_not_a_redirect() {
    let f = flow().await;
    for (extra, code) in [
        (("client_id", "nobody"), "AADSTS700016"),
        (
            ("redirect_uri", "https://attacker.example/cb"),
            "AADSTS50011",
        ),
        (
            ("redirect_uri", "https://gw.example/oauth/callback/"),
            "AADSTS50011",
        ),
        (("redirect_uri", "http://127.0.0.1/other"), "AADSTS50011"),
    ] {
        let r = f.authorize(&[extra]).await;
        assert_eq!(r.status(), 400, "{extra:?}");
        assert!(r.headers().get("location").is_none(), "{extra:?}");
        let page = r.text().await.expect("page");
        assert!(page.contains(code), "{extra:?}: {page}");
    }
    // Loopback: any port.
    let r = f
        .authorize(&[("redirect_uri", "http://127.0.0.1:53124/cb")])
        .await;
    assert_eq!(r.status(), 302);
    assert_eq!(location_query(&r).0, "http://127.0.0.1:53124/cb");
}

/// The refusals Entra sends back to the redirect URI, with the state.
#[tokio::test]
async fn refusals_after_the_redirect_uri_is_trusted_go_back_to_it() {
    let f = flow().await;
    for (extra, error, code) in [
        (
            vec![("resource", "https://gw.example/mcp/github")],
            "invalid_target",
            "AADSTS9010010",
        ),
        (
            vec![("scope", "mcp.access")],
            "invalid_client",
            "AADSTS650053",
        ),
        (
            vec![("scope", "api://mcp-gateway/admin")],
            "invalid_client",
            "AADSTS650053",
        ),
        (
            vec![("scope", "api://nowhere/mcp.access")],
            "invalid_resource",
            "AADSTS500011",
        ),
        (
            vec![("scope", "api://mcp-gateway/mcp.access api://other/read")],
            "invalid_request",
            "AADSTS28000",
        ),
        (
            vec![("response_type", "token")],
            "unsupported_response_type",
            "AADSTS700054",
        ),
        (
            vec![("code_challenge_method", "S512")],
            "invalid_request",
            "AADSTS50146",
        ),
    ] {
        let r = f.authorize(&extra).await;
        assert_eq!(r.status(), 302, "{extra:?}");
        let (base, q) = location_query(&r);
        assert_eq!(base, CALLBACK);
        assert_eq!(
            q.get("error").map(String::as_str),
            Some(error),
            "{extra:?}: {q:?}"
        );
        assert!(q["error_description"].starts_with(code), "{extra:?}: {q:?}");
        assert_eq!(q["state"], "st-123");
        assert!(!q.contains_key("code"));
    }
    // Nobody signed in: a silent request is refused, an interactive one shows a sign-in page.
    f.a.sign_in(None);
    let r = f.authorize(&[("prompt", "none")]).await;
    assert_eq!(location_query(&r).1["error"], "login_required");
    let r = f.authorize(&[]).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("location").is_none());
    // login_hint signs that user in; one of another directory is refused here.
    let r = f.authorize(&[("login_hint", "bob@contoso.example")]).await;
    assert!(location_query(&r).1.contains_key("code"));
    let r = f.authorize(&[("login_hint", "eve@fabrikam.example")]).await;
    assert!(location_query(&r).1["error_description"].starts_with("AADSTS50020"));
}

/// Entra has no registration endpoint and does not advertise PKCE methods: the reasons MCP
/// clients cannot talk to it directly.
#[tokio::test]
async fn there_is_no_registration_endpoint() {
    let f = flow().await;
    let d: Value = f
        .http
        .get(format!(
            "{}/{TID}/v2.0/.well-known/openid-configuration",
            f.url
        ))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    assert!(d.get("registration_endpoint").is_none());
    assert!(d.get("code_challenge_methods_supported").is_none());
    let r = f
        .http
        .post(format!("{}/{TID}/oauth2/v2.0/register", f.url))
        .json(&json!({"redirect_uris": ["http://127.0.0.1/cb"]}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 404);
    for path in [
        format!("/.well-known/oauth-authorization-server/{TID}/v2.0"),
        format!("/.well-known/openid-configuration/{TID}/v2.0"),
    ] {
        let r = f
            .http
            .get(format!("{}{path}", f.url))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 404, "{path}");
    }
}
