//! The stand-in speaks Entra's and Graph's wire format (ENTRA.md).

use super::*;

const TID: &str = "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c";

/// The stand-in on loopback with two registered applications.
async fn served() -> (Arc<Authority>, String) {
    let (a, url) = Authority::spawn_local(vec![TID.into()])
        .await
        .expect("serve");
    register_apps(&a);
    (a, url)
}

fn authority() -> Arc<Authority> {
    let a = Authority::new(vec![TID.into()]);
    register_apps(&a);
    a
}

fn register_apps(a: &Authority) {
    a.register_client(
        "app-1",
        Client {
            secret: "s3cret".into(),
            graph_roles: vec!["GroupMember.Read.All".into()],
            certificate: None,
            federated: Vec::new(),
            redirect_uris: Vec::new(),
        },
    );
    a.register_client(
        "app-noperm",
        Client {
            secret: "s3cret".into(),
            graph_roles: vec![],
            certificate: None,
            federated: Vec::new(),
            redirect_uris: Vec::new(),
        },
    );
}

async fn graph_token(http: &reqwest::Client, url: &str, client: &str) -> String {
    let r: Value = http
        .post(format!("{url}/{TID}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", "s3cret"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    r["access_token"].as_str().expect("access_token").to_owned()
}

#[tokio::test]
async fn discovery_documents_and_keys() {
    let (_a, url) = served().await;
    let http = reqwest::Client::new();
    let v2: Value = http
        .get(format!("{url}/{TID}/v2.0/.well-known/openid-configuration"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(v2["issuer"], format!("{url}/{TID}/v2.0"));
    assert_eq!(v2["jwks_uri"], format!("{url}/{TID}/discovery/v2.0/keys"));
    assert_eq!(
        v2["token_endpoint"],
        format!("{url}/{TID}/oauth2/v2.0/token")
    );
    let common: Value = http
        .get(format!(
            "{url}/common/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(common["issuer"], format!("{url}/{{tenantid}}/v2.0"));
    let v1: Value = http
        .get(format!("{url}/{TID}/.well-known/openid-configuration"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(v1["issuer"], format!("https://sts.windows.net/{TID}/"));
    assert_eq!(v1["jwks_uri"], format!("{url}/{TID}/discovery/keys"));

    let keys: Value = http
        .get(format!("{url}/{TID}/discovery/v2.0/keys"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let k = &keys["keys"][0];
    assert_eq!(
        (k["kty"].as_str(), k["use"].as_str(), k["e"].as_str()),
        (Some("RSA"), Some("sig"), Some("AQAB"))
    );
    assert_eq!(k["issuer"], format!("{url}/{TID}/v2.0"));
    assert_eq!(k["kid"], k["x5t"]);
    let v1keys: Value = http
        .get(format!("{url}/{TID}/discovery/keys"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(v1keys["keys"][0].get("issuer").is_none());

    let unknown = http
        .get(format!(
            "{url}/11111111-2222-4333-8444-555555555555/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(unknown.status(), 400);
    let e: Value = unknown.json().await.expect("json");
    assert_eq!(e["error"], "invalid_tenant");
    assert_eq!(e["error_codes"], json!([90002]));
    assert!(
        e["error_description"]
            .as_str()
            .expect("d")
            .starts_with("AADSTS90002:")
    );
}

#[tokio::test]
async fn rotation_adds_and_retires_keys() {
    let a = authority();
    let first = a.active_key().kid.clone();
    let second = a.rotate(false);
    let kids: Vec<String> = a.jwks(None)["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(kids, vec![first.clone(), second.clone()]);
    let third = a.rotate(true);
    let kids: Vec<String> = a.jwks(None)["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(kids, vec![third]);
}

#[tokio::test]
async fn client_credentials_success_and_errors() {
    let (a, url) = served().await;
    let http = reqwest::Client::new();
    let ok: Value = http
        .post(format!("{url}/{TID}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app-1"),
            ("client_secret", "s3cret"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(ok["token_type"], "Bearer");
    assert_eq!(ok["expires_in"], 3599);
    assert_eq!(ok["ext_expires_in"], 3599);
    let claims = jwt::verified_claims(&a, ok["access_token"].as_str().expect("t")).expect("jwt");
    assert_eq!(claims["aud"], GRAPH_RESOURCE);
    assert_eq!(claims["roles"], json!(["GroupMember.Read.All"]));
    assert_eq!(claims["idtyp"], "app");

    let bad = http
        .post(format!("{url}/{TID}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app-1"),
            ("client_secret", "wrong"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), 401);
    let e: Value = bad.json().await.expect("json");
    assert_eq!(e["error"], "invalid_client");
    for field in [
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
    ] {
        assert!(e.get(field).is_some(), "{field}");
    }
    let scope = http
        .post(format!("{url}/{TID}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app-1"),
            ("client_secret", "s3cret"),
            ("scope", "https://graph.microsoft.com/User.Read"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(scope.status(), 400);
    assert_eq!(
        scope.json::<Value>().await.expect("json")["error"],
        "invalid_scope"
    );
}

#[tokio::test]
async fn minted_overage_token_and_graph_paging() {
    let (a, url) = served().await;
    let http = reqwest::Client::new();
    let oid = "00000000-0000-4000-8000-000000000b0b";
    let groups: Vec<String> = (0..500)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    let token = a
        .mint(
            &serde_json::from_value(
                json!({"tid": TID, "oid": oid, "aud": "api://x", "scp": "s", "groups": groups}),
            )
            .expect("req"),
        )
        .expect("mint");
    let claims = jwt::verified_claims(&a, &token).expect("jwt");
    assert!(claims.get("groups").is_none());
    // The overage form of ENTRA.md: `_claim_names.groups` names a source in `_claim_sources`.
    let source = claims["_claim_names"]["groups"]
        .as_str()
        .expect("overage claim name");
    assert!(claims["_claim_sources"][source].is_object(), "{claims}");

    let bearer = graph_token(&http, &url, "app-1").await;
    let objs: Value = http
        .post(format!("{url}/v1.0/users/{oid}/getMemberObjects"))
        .bearer_auth(&bearer)
        .json(&json!({"securityEnabledOnly": true}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(objs["value"].as_array().map(Vec::len), Some(500));
    assert!(objs["@odata.context"].as_str().is_some());

    let mut next = Some(format!(
        "{url}/v1.0/users/{oid}/transitiveMemberOf/microsoft.graph.group?$select=id&$top=200"
    ));
    let mut seen = Vec::new();
    let mut pages = 0;
    while let Some(link) = next {
        let page: Value = http
            .get(&link)
            .bearer_auth(&bearer)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        for g in page["value"].as_array().expect("value") {
            assert_eq!(g["@odata.type"], "#microsoft.graph.group");
            seen.push(g["id"].as_str().expect("id").to_owned());
        }
        next = page["@odata.nextLink"].as_str().map(str::to_owned);
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, groups);
}

#[tokio::test]
async fn graph_errors_are_wire_exact() {
    let (a, url) = served().await;
    let http = reqwest::Client::new();
    let oid = "00000000-0000-4000-8000-000000000b0b";
    a.set_user_groups(oid, vec!["g".into()]);
    let call = |bearer: Option<String>| {
        let mut r = http
            .post(format!("{url}/v1.0/users/{oid}/getMemberObjects"))
            .json(&json!({"securityEnabledOnly": false}));
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        r.send()
    };
    let r = call(None).await.expect("post");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"]["code"],
        "InvalidAuthenticationToken"
    );

    let noperm = graph_token(&http, &url, "app-noperm").await;
    let r = call(Some(noperm)).await.expect("post");
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"]["code"],
        "Authorization_RequestDenied"
    );

    let bearer = graph_token(&http, &url, "app-1").await;
    a.set_graph_faults(GraphFaults {
        throttle_next: 2,
        retry_after: Some("0.5".into()),
        ..Default::default()
    });
    for _ in 0..2 {
        let r = call(Some(bearer.clone())).await.expect("post");
        assert_eq!(r.status(), 429);
        assert_eq!(
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
            Some("0.5")
        );
        let e: Value = r.json().await.expect("json");
        assert_eq!(e["error"]["code"], "TooManyRequests");
        assert!(e["error"]["innerError"]["request-id"].as_str().is_some());
    }
    assert_eq!(
        call(Some(bearer.clone())).await.expect("post").status(),
        200,
        "throttling ends after N calls"
    );

    a.set_graph_faults(GraphFaults {
        down: true,
        ..Default::default()
    });
    assert_eq!(
        call(Some(bearer.clone())).await.expect("post").status(),
        503
    );
    a.set_graph_faults(GraphFaults::default());

    let r = http
        .post(format!(
            "{url}/v1.0/users/00000000-0000-4000-8000-00000000dead/getMemberObjects"
        ))
        .bearer_auth(&bearer)
        .json(&json!({"securityEnabledOnly": true}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"]["code"],
        "Request_ResourceNotFound"
    );
    assert!(a.graph_calls.load(Ordering::Relaxed) >= 7);
}

#[test]
fn civil_dates() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
}
