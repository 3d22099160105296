//! The JWT attacks of RFC 8725 / ENTRA.md, end to end: each crafted token goes through the real
//! Envoy to mcp-authz, and must come back 401 with its reason code (a JSON-RPC error echoing the
//! id), never reaching the upstream. The same list is unit-tested in src/identity/tests.rs.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use crate::support::helpers::*;

struct Forge<'a> {
    env: &'a TestEnv,
}

impl Forge<'_> {
    fn kid(&self) -> String {
        self.env.authority.active_key().kid.clone()
    }
    fn header(&self) -> Value {
        json!({"typ": "JWT", "alg": "RS256", "kid": self.kid()})
    }
    fn claims(&self) -> Map<String, Value> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        json!({
            "aud": API_CLIENT_ID, "iss": self.env.authority.v2_issuer(TID), "iat": now, "nbf": now,
            "exp": now + 3600, "ver": "2.0", "tid": TID, "oid": BOB, "sub": "x", "scp": SCOPE,
            "groups": [ENG_GROUP],
        })
        .as_object()
        .cloned()
        .unwrap_or_default()
    }
    /// Signed by the directory's real key: only the part under attack is wrong.
    fn signed(&self, header: &Value, payload: &str) -> String {
        self.env.authority.active_key().sign_jwt(header, payload)
    }
    fn with(&self, k: &str, v: Value) -> String {
        let mut c = self.claims();
        c.insert(k.into(), v);
        self.signed(&self.header(), &Value::Object(c).to_string())
    }
    fn without(&self, k: &str) -> String {
        let mut c = self.claims();
        c.remove(k);
        self.signed(&self.header(), &Value::Object(c).to_string())
    }
    fn with_header(&self, k: &str, v: Value) -> String {
        let mut h = self.header();
        h[k] = v;
        self.signed(&h, &Value::Object(self.claims()).to_string())
    }
    fn unsigned(&self, header: &Value, payload: &str, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }
}

#[tokio::test]
async fn every_jwt_attack_is_refused_through_envoy_with_its_reason() {
    let env = TestEnv::start(Options::default()).await;
    let f = Forge { env: &env };
    let claims = Value::Object(f.claims()).to_string();
    let now = f.claims()["iat"].as_i64().unwrap_or(0);

    // RS256 → HS256 with the public key (its JWK `n`) as the HMAC secret.
    let n = env.authority.active_key().jwk(None)["n"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let hs_header = json!({"typ": "JWT", "alg": "HS256", "kid": f.kid()});
    let hs_signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(hs_header.to_string()),
        URL_SAFE_NO_PAD.encode(&claims)
    );
    let mac = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, n.as_bytes()),
        hs_signed.as_bytes(),
    );
    let hs256 = format!("{hs_signed}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));

    let good = f.signed(&f.header(), &claims);
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let tampered_payload = {
        let mut c = f.claims();
        c.insert("oid".into(), json!(ALICE));
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(Value::Object(c).to_string()),
            parts[2]
        )
    };
    let tampered_signature = {
        let mut sig = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap_or_default();
        if let Some(b) = sig.first_mut() {
            *b ^= 1;
        }
        parts[2] = URL_SAFE_NO_PAD.encode(sig);
        parts.join(".")
    };
    let graph_token = f.signed(
        &json!({"typ": "JWT", "alg": "RS256", "kid": f.kid(), "nonce": "abc"}),
        &{
            let mut c = f.claims();
            c.insert("aud".into(), json!("00000003-0000-0000-c000-000000000000"));
            Value::Object(c).to_string()
        },
    );
    let id_token = {
        let mut c = f.claims();
        c.remove("scp");
        f.signed(&f.header(), &Value::Object(c).to_string())
    };
    let duplicate = f.signed(
        &f.header(),
        &claims.replacen('{', &format!("{{\"oid\":\"{ALICE}\","), 1),
    );
    let foreign_iss = f.with("iss", json!(env.authority.v2_issuer(FOREIGN_TID)));

    let attacks: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            f.unsigned(&json!({"typ": "JWT", "alg": "none"}), &claims, b""),
            "token_alg_not_allowed",
        ),
        (
            "alg None",
            f.unsigned(&json!({"typ": "JWT", "alg": "None"}), &claims, b""),
            "token_alg_not_allowed",
        ),
        (
            "alg NONE",
            f.unsigned(&json!({"typ": "JWT", "alg": "NONE"}), &claims, b""),
            "token_alg_not_allowed",
        ),
        (
            "RS256→HS256 with the public key",
            hs256,
            "token_alg_not_allowed",
        ),
        (
            "embedded jwk",
            f.with_header("jwk", json!({"kty": "RSA", "n": n, "e": "AQAB"})),
            "token_header_forbidden",
        ),
        (
            "jku",
            f.with_header("jku", json!("https://evil.example/keys")),
            "token_header_forbidden",
        ),
        (
            "x5u",
            f.with_header("x5u", json!("https://evil.example/cert.pem")),
            "token_header_forbidden",
        ),
        (
            "kid path traversal",
            f.with_header("kid", json!("../../../etc/passwd")),
            "token_kid_unknown",
        ),
        (
            "kid SQL",
            f.with_header("kid", json!("' OR 1=1 --")),
            "token_kid_unknown",
        ),
        (
            "kid unknown",
            f.with_header("kid", json!("no-such-key")),
            "token_kid_unknown",
        ),
        (
            "ES256",
            f.with_header("alg", json!("ES256")),
            "token_alg_not_allowed",
        ),
        (
            "PS256",
            f.with_header("alg", json!("PS256")),
            "token_alg_not_allowed",
        ),
        ("expired", f.with("exp", json!(now - 120)), "token_expired"),
        (
            "nbf in the future",
            f.with("nbf", json!(now + 600)),
            "token_not_yet_valid",
        ),
        (
            "iat in the future",
            f.with("iat", json!(now + 600)),
            "token_iat_future",
        ),
        ("no exp", f.without("exp"), "token_exp_missing"),
        (
            "wrong aud",
            f.with("aud", json!("api://someone-else")),
            "token_audience",
        ),
        (
            "wrong iss",
            f.with("iss", json!("https://evil.example/v2.0")),
            "token_issuer",
        ),
        (
            "tid not allowed",
            f.with("tid", json!(FOREIGN_TID)),
            "token_tenant",
        ),
        ("iss of another tid", foreign_iss, "token_issuer"),
        ("Graph token", graph_token, "token_graph_audience"),
        ("ID token", id_token, "token_not_access_token"),
        (
            "crit header",
            f.with_header("crit", json!(["exp"])),
            "token_crit_header",
        ),
        (
            "tampered payload",
            tampered_payload,
            "token_signature_invalid",
        ),
        (
            "tampered signature",
            tampered_signature,
            "token_signature_invalid",
        ),
        (
            "bad base64url",
            good.replacen('.', ".+/=", 1),
            "token_malformed",
        ),
        (
            "payload not an object",
            f.signed(&f.header(), "[1,2,3]"),
            "token_malformed",
        ),
        (
            "aud of the wrong type",
            f.with("aud", json!([API_CLIENT_ID])),
            "token_malformed",
        ),
        (
            "exp not a number",
            f.with("exp", json!("tomorrow")),
            "token_malformed",
        ),
        ("duplicate claim names", duplicate, "token_duplicate_name"),
        (
            "oversized",
            format!("{}.{}.{}", "a".repeat(9000), "b".repeat(9000), "c"),
            "token_too_large",
        ),
        (
            "two tokens in one header",
            format!("{good} {good}"),
            "token_multiple",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (name, token, reason)) in attacks.iter().enumerate() {
        let r = env
            .post(
                "/mcp/github",
                Some(token),
                &tool_call_body(i as u64 + 1, "echo"),
                &[],
            )
            .await;
        let ok = r.status == 401
            && r.reason() == *reason
            && r.header("www-authenticate")
                .is_some_and(|w| w.contains("error=\"invalid_token\""))
            && r.json()["id"] == json!(i + 1);
        if !ok {
            failures.push(format!("{name}: {} {} {}", r.status, r.reason(), r.body));
        }
    }
    assert!(
        failures.is_empty(),
        "attacks not refused as expected:\n{}",
        failures.join("\n")
    );
    // The control: the untampered token passes.
    let r = env
        .post("/mcp/github", Some(&good), &initialize_body(99), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        env.received.all().len(),
        1,
        "only the control request may reach the upstream"
    );
}

/// Identity mix-ups the issue names: another directory, another audience, an app-only token
/// where a user is required, a user token without the scope.
#[tokio::test]
async fn wrong_kinds_of_valid_tokens_are_refused_through_envoy() {
    let env = TestEnv::start(Options::default()).await;
    let cases = [
        (env.mint(json!({"tid": FOREIGN_TID, "oid": BOB, "aud": API_CLIENT_ID, "scp": SCOPE})), 401, "token_tenant"),
        (env.mint(json!({"tid": TID, "oid": BOB, "aud": "api://other-api", "scp": SCOPE})), 401, "token_audience"),
        (env.mint(json!({"tid": TID, "oid": BOB, "aud": API_CLIENT_ID, "roles": ["MCP.Invoke"], "extra": {"idtyp": "app"}})), 401, "token_app_not_allowed"),
        (env.mint(json!({"tid": TID, "oid": BOB, "aud": API_CLIENT_ID, "scp": "User.Read", "groups": [ENG_GROUP]})), 403, "token_scope_missing"),
    ];
    for (token, status, reason) in cases {
        let r = env
            .post("/mcp/github", Some(&token), &initialize_body(1), &[])
            .await;
        assert_eq!((r.status, r.reason()), (status, reason), "{}", r.body);
    }
    assert!(env.received.all().is_empty());
}

/// Two allowed directories; the JWKS (of the first) names its keys' issuer. A token of the
/// second directory signed with such a key is refused: a key verifies only its own issuer.
#[tokio::test]
async fn a_key_of_one_directory_never_verifies_another_directorys_token_through_envoy() {
    let env = TestEnv::start(Options {
        // Two directories: the grants name the one they belong to.
        policy: policy_of_directory(TID),
        env: vec![(
            "MCP_AUTHZ__ENTRA__TENANTS".into(),
            format!("[\"{TID}\", \"{FOREIGN_TID}\"]"),
        )],
        ..Default::default()
    })
    .await;
    let other = env.mint(json!({"tid": FOREIGN_TID, "oid": BOB, "aud": API_CLIENT_ID, "scp": SCOPE, "groups": [ENG_GROUP]}));
    let r = env
        .post("/mcp/github", Some(&other), &initialize_body(1), &[])
        .await;
    assert_eq!(
        (r.status, r.reason()),
        (401, "token_key_issuer"),
        "{}",
        r.body
    );
    // The control: the first directory's token passes.
    let own = env.user_token(BOB, &[ENG_GROUP]);
    let r = env
        .post("/mcp/github", Some(&own), &initialize_body(2), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Outside review: a policy denial answered `WWW-Authenticate: Bearer error="insufficient_scope"`,
/// which MCP clients (the Python SDK among them) treat as a step-up prompt: they run a second
/// authorization, get a token with the same scope, and are refused again, in a loop. Through
/// Envoy: a policy denial has no challenge; only a token lacking the scope gets one.
#[tokio::test]
async fn policy_denials_never_prompt_a_step_up() {
    let env = TestEnv::start(Options::default()).await;
    let bob = env.user_token(BOB, &[ENG_GROUP]);
    let carol = env.user_token(CAROL, &[SALES_GROUP]);
    for (token, body, reason) in [
        (&bob, tool_call_body(1, "delete_repository"), "tool_denied"),
        (&carol, initialize_body(1), "server_not_granted"),
    ] {
        let r = env.post("/mcp/github", Some(token), &body, &[]).await;
        assert_eq!((r.status, r.reason()), (403, reason), "{r:?}");
        assert_eq!(r.header("www-authenticate"), None, "{reason}: {r:?}");
    }
    let no_scope = env.mint(json!({"tid": TID, "oid": BOB, "aud": API_CLIENT_ID, "scp": "User.Read", "groups": [ENG_GROUP]}));
    let r = env
        .post("/mcp/github", Some(&no_scope), &initialize_body(1), &[])
        .await;
    assert_eq!((r.status, r.reason()), (403, "token_scope_missing"));
    let c = r.header("www-authenticate").unwrap_or_default();
    assert!(c.starts_with("Bearer error=\"insufficient_scope\""), "{c}");
    assert!(c.contains(&format!("scope=\"{API_URI}/{SCOPE}\"")), "{c}");
}

/// Attack: a client sets `Host: evil.example`, so that the 401 challenge and the resource
/// metadata (which name the authorization server a client signs in at) point at its server,
/// and a shared cache keeps that answer for everyone. With `mcp.public_base_url` (required)
/// they name the configured URL whatever the Host; the Host-derived development mode marks its
/// answers no-store.
#[tokio::test]
async fn challenges_and_metadata_never_follow_a_client_chosen_host() {
    let env = TestEnv::start(Options::default()).await;
    let r = env
        .post(
            "/mcp/github",
            None,
            &initialize_body(1),
            &[("host", "evil.example")],
        )
        .await;
    assert_eq!(r.status, 401);
    let c = r.header("www-authenticate").unwrap_or_default();
    assert!(
        c.contains(&format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp/github\"",
            env.envoy_url
        )),
        "{c}"
    );
    assert!(!c.contains("evil"), "{c}");
    let meta = Reply::from(
        env.http
            .get(format!(
                "{}/.well-known/oauth-protected-resource/mcp/github",
                env.envoy_url
            ))
            .header("host", "evil.example")
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .expect("metadata"),
    )
    .await;
    assert_eq!(meta.status, 200, "{meta:?}");
    assert_eq!(
        meta.json()["resource"],
        format!("{}/mcp/github", env.envoy_url)
    );
    assert_eq!(meta.header("cache-control"), Some("public, max-age=300"));

    // Development mode: derived from the Host, and never kept by a shared cache.
    let dev = TestEnv::start(Options {
        env: vec![
            ("MCP_AUTHZ__MCP__PUBLIC_BASE_URL".into(), String::new()),
            (
                "MCP_AUTHZ__MCP__ALLOW_HOST_DERIVED_URLS".into(),
                "true".into(),
            ),
        ],
        ..Options::default()
    })
    .await;
    let meta = dev
        .get("/.well-known/oauth-protected-resource/mcp/github")
        .await;
    assert_eq!(meta.status, 200, "{meta:?}");
    assert_eq!(meta.header("cache-control"), Some("no-store"));
    assert_eq!(meta.header("vary"), Some("host, x-forwarded-proto"));
}

/// POLICY with every group grant and admin group scoped to `tid`.
fn policy_of_directory(tid: &str) -> String {
    POLICY
        .replace(
            &format!("groups: [\"{ADMIN_GROUP}\"]"),
            &format!("groups: [{{group: \"{ADMIN_GROUP}\", tid: \"{tid}\"}}]"),
        )
        .replace("  - group: \"", "  - tid: \"TID\"\n    group: \"")
        .replace("TID\"\n", &format!("{tid}\"\n"))
}

/// Attack (outside review): with two allowed directories, group and admin grants matched the
/// tokens of either, so a user of directory B in a group carrying directory A's admin group id
/// (B's admin creates it; where Entra emits group names, naming it so is enough) was an admin of
/// A. Grants now name their directory and match only its tokens; a `groups` value that is not
/// an object id refuses the token; a client-app allow-list keeps out apps of other directories.
#[tokio::test]
async fn directories_are_not_interchangeable() {
    let policy = policy_of_directory(TID).replace(
        "user_grants:",
        &format!(
            "  - {{group: \"{ENG_GROUP}\", tid: \"{FOREIGN_TID}\", tenant: sales, access_level: read}}\nuser_grants:"
        ),
    );
    let env = TestEnv::start(Options {
        policy,
        env: vec![
            (
                "MCP_AUTHZ__ENTRA__TENANTS".into(),
                format!("[\"{TID}\", \"{FOREIGN_TID}\"]"),
            ),
            // Keys whose issuer is the {tenantid} template, as a multi-directory app uses.
            (
                "MCP_AUTHZ__ENTRA__DISCOVERY_TENANT".into(),
                "organizations".into(),
            ),
        ],
        ..Default::default()
    })
    .await;
    let foreign = |groups: &[&str]| {
        env.mint(json!({"tid": FOREIGN_TID, "oid": CAROL, "aud": API_CLIENT_ID, "scp": SCOPE, "groups": groups}))
    };
    for (token, path, want) in [
        // Directory B's group named after directory A's admin group: not an admin of A.
        (foreign(&[ADMIN_GROUP]), "/mcp/github", (403, "no_grant")),
        // Directory A's engineering grant does not apply to B's group of that id ...
        (
            foreign(&[ENG_GROUP]),
            "/mcp/github",
            (403, "server_not_granted"),
        ),
        // ... only B's own grant does.
        (foreign(&[ENG_GROUP]), "/mcp/jira", (200, "")),
        (env.user_token(BOB, &[ENG_GROUP]), "/mcp/github", (200, "")),
        (
            env.user_token(ALICE, &[ADMIN_GROUP]),
            "/mcp/github",
            (200, ""),
        ),
        // Display names where object ids belong refuse the token.
        (
            env.user_token(BOB, &["Engineering"]),
            "/mcp/github",
            (403, "token_groups_not_object_ids"),
        ),
    ] {
        let r = env.post(path, Some(&token), &initialize_body(1), &[]).await;
        assert_eq!((r.status, r.reason()), want, "{path}: {r:?}");
    }

    // A grant without its directory cannot be written with two directories.
    env.write_policy(POLICY);
    let mut out = Vec::new();
    let cfg = mcp_authz::config::Config::parse(
        &config_yaml("http://127.0.0.1:9", &env.policy_path, None, 300),
        vec![(
            "MCP_AUTHZ__ENTRA__TENANTS".into(),
            format!("[\"{TID}\", \"{FOREIGN_TID}\"]"),
        )],
    )
    .expect("config");
    assert!(!mcp_authz::cli::check_config(&cfg, &env.policy_path, &mut out).await);
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("must name its directory (tid)"), "{out}");
}

/// With `entra.allowed_client_apps`, a token minted for another client app (say one
/// registered in another directory under the same App ID URI) is refused.
#[tokio::test]
async fn only_allowed_client_apps_are_accepted() {
    const CLIENT: &str = "11111111-2222-4333-8444-555555555555";
    let env = TestEnv::start(Options {
        env: vec![(
            "MCP_AUTHZ__ENTRA__ALLOWED_CLIENT_APPS".into(),
            format!("[\"{CLIENT}\"]"),
        )],
        ..Default::default()
    })
    .await;
    let with_azp = |azp: Option<&str>| {
        let mut req = json!({"tid": TID, "oid": BOB, "aud": API_CLIENT_ID, "scp": SCOPE, "groups": [ENG_GROUP]});
        if let Some(a) = azp {
            req["azp"] = json!(a);
        }
        env.mint(req)
    };
    for (token, want) in [
        (with_azp(Some(CLIENT)), (200, "")),
        (
            with_azp(Some("99999999-2222-4333-8444-555555555555")),
            (403, "token_client_app_not_allowed"),
        ),
        (with_azp(None), (403, "token_client_app_not_allowed")),
    ] {
        let r = env
            .post("/mcp/github", Some(&token), &initialize_body(1), &[])
            .await;
        assert_eq!((r.status, r.reason()), want, "{r:?}");
        assert_eq!(r.header("www-authenticate"), None);
    }
}
