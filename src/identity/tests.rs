//! Token validation, and one named test per attack of RFC 8725 / ENTRA.md. Each attack test
//! states what it tries and asserts the exact refusal.

use super::*;
use crate::ids::is_guid;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mcp_authz_testkit::standin::{Authority, SigningKey};
use serde_json::{Map, Value, json};

const TID: &str = "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c";
const OTHER_TID: &str = "9d1c2b3a-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
const API: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
const API_URI: &str = "api://mcp-gateway";
const OID: &str = "00000000-0000-4000-8000-000000000b0b";
const AUTHORITY: &str = "https://login.example";

fn rules() -> ValidationRules {
    ValidationRules {
        authority: AUTHORITY.into(),
        tenants: [TID, OTHER_TID]
            .iter()
            .map(|t| crate::ids::DirectoryId::parse(t).expect("guid"))
            .collect(),
        audiences: vec![API.into(), API_URI.into()],
        accept_v1: true,
        accept_v2: true,
        v1_issuer: "https://sts.windows.net/{tenantid}/".into(),
        required_scopes: vec!["mcp.access".into()],
        required_roles: vec!["MCP.Invoke".into()],
        allow_app_tokens: false,
        leeway: 30,
        max_token_bytes: 16 * 1024,
        allowed_client_apps: Vec::new(),
    }
}

struct Fixture {
    authority: std::sync::Arc<Authority>,
    validator: Validator,
}

fn fixture_with(rules: ValidationRules, key_issuer: Option<String>) -> Fixture {
    let authority = Authority::new(vec![TID.into(), OTHER_TID.into()]);
    authority.set_base_url(AUTHORITY);
    let issuer = key_issuer.unwrap_or_else(|| format!("{AUTHORITY}/{{tenantid}}/v2.0"));
    let jwks = authority.jwks(Some(&issuer)).to_string();
    let keys = KeySet::from_jwks(jwks.as_bytes(), "test").expect("jwks");
    let validator = Validator::new(rules, Arc::new(KeyStore::fixed(keys)), 1000);
    Fixture {
        authority,
        validator,
    }
}

fn fixture() -> Fixture {
    fixture_with(rules(), None)
}

/// Claims of a valid v2 user token.
fn claims() -> Map<String, Value> {
    let now = unix_now() as i64;
    json!({
        "aud": API, "iss": format!("{AUTHORITY}/{TID}/v2.0"), "iat": now, "nbf": now, "exp": now + 3600,
        "ver": "2.0", "tid": TID, "oid": OID, "sub": "x", "scp": "mcp.access",
        "groups": ["E0000000-0000-4000-8000-0000000000E1"], "preferred_username": "bob@contoso.example",
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

impl Fixture {
    fn header(&self) -> Value {
        json!({"typ": "JWT", "alg": "RS256", "kid": self.authority.active_key().kid})
    }
    fn sign(&self, header: &Value, payload: &str) -> String {
        self.authority.active_key().sign_jwt(header, payload)
    }
    fn token(&self, claims: &Map<String, Value>) -> String {
        self.sign(&self.header(), &Value::Object(claims.clone()).to_string())
    }
    fn with(&self, k: &str, v: Value) -> String {
        let mut c = claims();
        c.insert(k.into(), v);
        self.token(&c)
    }
    fn without(&self, k: &str) -> String {
        let mut c = claims();
        c.remove(k);
        self.token(&c)
    }
    async fn validate(&self, token: &str) -> Result<Verified, TokenError> {
        self.validator.validate(token).await
    }
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

fn assembled(header: &Value, payload: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(&header.to_string()),
        b64(&payload.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[tokio::test]
async fn valid_v2_user_token_is_accepted_and_then_cached() {
    let f = fixture();
    let token = f.token(&claims());
    let v = f.validate(&token).await.expect("valid");
    assert!(!v.cache_hit);
    let p = &v.principal;
    assert_eq!((p.tid.as_str(), p.oid.as_str()), (TID, OID));
    assert_eq!(p.kind, PrincipalKind::User);
    assert_eq!(p.version, TokenVersion::V2);
    assert_eq!(p.label.as_deref(), Some("bob@contoso.example"));
    // Group ids are normalised to lower case.
    assert_eq!(
        p.groups,
        GroupsClaim::Listed(vec![
            crate::ids::GroupId::parse("e0000000-0000-4000-8000-0000000000e1").expect("guid")
        ])
    );
    let again = f.validate(&token).await.expect("valid");
    assert!(
        again.cache_hit,
        "second validation must come from the cache"
    );
    assert_eq!(f.validator.cached_tokens(), 1);
}

#[tokio::test]
async fn valid_v1_token_with_app_id_uri_is_accepted() {
    let f = fixture();
    let mut c = claims();
    c.insert("ver".into(), json!("1.0"));
    c.insert("aud".into(), json!(API_URI));
    c.insert(
        "iss".into(),
        json!(format!("https://sts.windows.net/{TID}/")),
    );
    let v = f.validate(&f.token(&c)).await.expect("v1 token");
    assert_eq!(v.principal.version, TokenVersion::V1);
}

#[tokio::test]
async fn overage_claims_mark_the_groups_as_unresolved() {
    let f = fixture();
    let mut c = claims();
    c.remove("groups");
    c.insert("_claim_names".into(), json!({"groups": "src1"}));
    c.insert(
        "_claim_sources".into(),
        json!({"src1": {"endpoint": "https://graph.windows.net/x/users/y/getMemberObjects"}}),
    );
    assert_eq!(
        f.validate(&f.token(&c)).await.expect("ok").principal.groups,
        GroupsClaim::Overage
    );
    let t = f.with("hasgroups", json!(true));
    assert_eq!(
        f.validate(&t).await.expect("ok").principal.groups,
        GroupsClaim::Overage
    );
    assert_eq!(
        f.validate(&f.without("groups"))
            .await
            .expect("ok")
            .principal
            .groups,
        GroupsClaim::Absent
    );
}

/// Attack: `alg: none` with an empty signature, in each capitalisation.
#[tokio::test]
async fn attack_alg_none_is_rejected() {
    let f = fixture();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"typ": "JWT", "alg": alg, "kid": f.authority.active_key().kid});
        let unsigned = format!(
            "{}.{}.",
            b64(&header.to_string()),
            b64(&Value::Object(claims()).to_string())
        );
        assert_eq!(
            f.validate(&unsigned).await.unwrap_err(),
            TokenError::AlgorithmNotAllowed,
            "{alg}"
        );
        // ... and with a signature attached anyway.
        let signed = f.sign(&header, &Value::Object(claims()).to_string());
        assert_eq!(
            f.validate(&signed).await.unwrap_err(),
            TokenError::AlgorithmNotAllowed,
            "{alg}"
        );
    }
}

/// Attack: RS256 → HS256 confusion, using the published public key as the HMAC secret.
#[tokio::test]
async fn attack_hs256_with_public_key_as_secret_is_rejected() {
    let f = fixture();
    let key = f.authority.active_key();
    let header = json!({"typ": "JWT", "alg": "HS256", "kid": key.kid});
    let signed = format!(
        "{}.{}",
        b64(&header.to_string()),
        b64(&Value::Object(claims()).to_string())
    );
    for secret in [
        key.n.as_bytes().to_vec(),
        URL_SAFE_NO_PAD.decode(&key.n).expect("n"),
    ] {
        let hmac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
        let tag = aws_lc_rs::hmac::sign(&hmac_key, signed.as_bytes());
        let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert_eq!(
            f.validate(&token).await.unwrap_err(),
            TokenError::AlgorithmNotAllowed
        );
    }
}

/// Attack: the token carries its own key (`jwk`) or a URL to fetch one (`jku`, `x5u`), or a
/// certificate chain (`x5c`). Keys only ever come from the pinned JWKS.
#[tokio::test]
async fn attack_embedded_or_remote_keys_in_header_are_rejected() {
    let f = fixture();
    let attacker = SigningKey::generate();
    for (name, value) in [
        ("jwk", attacker.jwk(None)),
        ("jku", json!("https://attacker.example/keys")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("x5c", json!(["MIIBIjANBgkqh"])),
    ] {
        let mut header = json!({"typ": "JWT", "alg": "RS256", "kid": attacker.kid});
        header[name] = value;
        let token = attacker.sign_jwt(&header, &Value::Object(claims()).to_string());
        assert_eq!(
            f.validate(&token).await.unwrap_err(),
            TokenError::ForbiddenHeader(name)
        );
    }
}

/// Attack: `kid` values that would be dangerous if used as a path or in SQL, and unknown kids.
/// The kid is an opaque map key; a fixed key set never refetches.
#[tokio::test]
async fn attack_hostile_or_unknown_kid_is_an_opaque_miss() {
    let f = fixture();
    for kid in [
        "../../../../etc/passwd",
        "' OR '1'='1' --",
        "x\u{0}y",
        "unknown-kid",
        "%2e%2e%2f",
    ] {
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": kid});
        let token = f.sign(&header, &Value::Object(claims()).to_string());
        assert_eq!(
            f.validate(&token).await.unwrap_err(),
            TokenError::UnknownKeyId,
            "{kid:?}"
        );
    }
    let header = json!({"typ": "JWT", "alg": "RS256"});
    let token = f.sign(&header, &Value::Object(claims()).to_string());
    assert_eq!(
        f.validate(&token).await.unwrap_err(),
        TokenError::MissingKeyId
    );
}

/// Attack: other algorithms (EC, PSS, HMAC family, lower-case) when only RS256 is configured.
#[tokio::test]
async fn attack_other_algorithms_are_rejected() {
    let f = fixture();
    for alg in [
        "ES256", "ES384", "ES512", "PS256", "PS512", "RS384", "RS512", "HS512", "EdDSA", "rs256",
        "",
    ] {
        let header = json!({"typ": "JWT", "alg": alg, "kid": f.authority.active_key().kid});
        let token = f.sign(&header, &Value::Object(claims()).to_string());
        assert_eq!(
            f.validate(&token).await.unwrap_err(),
            TokenError::AlgorithmNotAllowed,
            "{alg}"
        );
    }
    let token = f.sign(
        &json!({"typ": "JWT", "kid": "k"}),
        &Value::Object(claims()).to_string(),
    );
    assert_eq!(
        f.validate(&token).await.unwrap_err(),
        TokenError::AlgorithmNotAllowed,
        "missing alg"
    );
}

#[tokio::test]
async fn attack_expired_token_is_rejected_beyond_the_leeway_only() {
    let f = fixture();
    let now = unix_now() as i64;
    assert_eq!(
        f.validate(&f.with("exp", json!(now - 31)))
            .await
            .unwrap_err(),
        TokenError::Expired
    );
    assert_eq!(
        f.validate(&f.with("exp", json!(now - 100_000)))
            .await
            .unwrap_err(),
        TokenError::Expired
    );
    assert!(
        f.validate(&f.with("exp", json!(now - 5))).await.is_ok(),
        "within the 30 s leeway"
    );
}

#[tokio::test]
async fn attack_not_yet_valid_or_future_issued_token_is_rejected() {
    let f = fixture();
    let now = unix_now() as i64;
    assert_eq!(
        f.validate(&f.with("nbf", json!(now + 120)))
            .await
            .unwrap_err(),
        TokenError::NotYetValid
    );
    assert_eq!(
        f.validate(&f.with("iat", json!(now + 120)))
            .await
            .unwrap_err(),
        TokenError::IssuedInFuture
    );
    assert!(
        f.validate(&f.with("nbf", json!(now + 10))).await.is_ok(),
        "within leeway"
    );
}

#[tokio::test]
async fn attack_missing_exp_is_rejected() {
    let f = fixture();
    assert_eq!(
        f.validate(&f.without("exp")).await.unwrap_err(),
        TokenError::MissingExpiry
    );
}

#[tokio::test]
async fn attack_wrong_audience_is_rejected() {
    let f = fixture();
    for aud in [
        "api://someone-else",
        "c0ffee00-1234-4abc-8def-0123456789ac",
        "",
        "API://MCP-GATEWAY",
    ] {
        assert_eq!(
            f.validate(&f.with("aud", json!(aud))).await.unwrap_err(),
            TokenError::WrongAudience,
            "{aud}"
        );
    }
    assert_eq!(
        f.validate(&f.without("aud")).await.unwrap_err(),
        TokenError::WrongAudience
    );
}

/// Attack: a token issued for Microsoft Graph (it has a `nonce` header; only Graph can verify it).
#[tokio::test]
async fn attack_graph_token_is_rejected_as_wrong_audience() {
    let f = fixture();
    let mut header = f.header();
    header["nonce"] = json!("abc123");
    let mut c = claims();
    c.insert("aud".into(), json!(crate::ids::GRAPH_APP_ID));
    assert_eq!(
        f.validate(&f.sign(&header, &Value::Object(c.clone()).to_string()))
            .await
            .unwrap_err(),
        TokenError::GraphToken
    );
    c.insert("aud".into(), json!("https://graph.microsoft.com"));
    assert_eq!(
        f.validate(&f.token(&c)).await.unwrap_err(),
        TokenError::GraphToken
    );
    // The nonce header alone marks a Graph token, even with our audience.
    assert_eq!(
        f.validate(&f.sign(&header, &Value::Object(claims()).to_string()))
            .await
            .unwrap_err(),
        TokenError::GraphToken
    );
}

#[tokio::test]
async fn attack_wrong_issuer_is_rejected() {
    let f = fixture();
    for iss in [
        "https://login.example/3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c/v2.0/",
        "https://attacker.example/3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c/v2.0",
        "https://sts.windows.net/3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c/",
        "https://login.example/common/v2.0",
        "https://login.example/{tenantid}/v2.0",
    ] {
        assert_eq!(
            f.validate(&f.with("iss", json!(iss))).await.unwrap_err(),
            TokenError::WrongIssuer,
            "{iss}"
        );
    }
}

/// Attack: `iss` of one allowed directory with `tid` of another.
#[tokio::test]
async fn attack_iss_tid_mismatch_is_rejected() {
    let f = fixture();
    let mut c = claims();
    c.insert("tid".into(), json!(OTHER_TID));
    assert_eq!(
        f.validate(&f.token(&c)).await.unwrap_err(),
        TokenError::WrongIssuer
    );
}

#[tokio::test]
async fn attack_tenant_not_on_the_allow_list_is_rejected() {
    let f = fixture();
    let stranger = "11111111-2222-4333-8444-555555555555";
    let mut c = claims();
    c.insert("tid".into(), json!(stranger));
    c.insert("iss".into(), json!(format!("{AUTHORITY}/{stranger}/v2.0")));
    assert_eq!(
        f.validate(&f.token(&c)).await.unwrap_err(),
        TokenError::TenantNotAllowed
    );
    for tid in ["common", "not-a-guid", ""] {
        let mut c = claims();
        c.insert("tid".into(), json!(tid));
        c.insert("iss".into(), json!(format!("{AUTHORITY}/{tid}/v2.0")));
        assert_eq!(
            f.validate(&f.token(&c)).await.unwrap_err(),
            TokenError::TenantNotAllowed,
            "{tid}"
        );
    }
}

/// Attack: a key published for one directory verifying a token that claims another.
#[tokio::test]
async fn attack_key_issuer_mismatch_is_rejected() {
    let f = fixture_with(rules(), Some(format!("{AUTHORITY}/{OTHER_TID}/v2.0")));
    assert_eq!(
        f.validate(&f.token(&claims())).await.unwrap_err(),
        TokenError::KeyIssuerMismatch
    );
    // The same key does verify its own directory's tokens.
    let mut c = claims();
    c.insert("tid".into(), json!(OTHER_TID));
    c.insert("iss".into(), json!(format!("{AUTHORITY}/{OTHER_TID}/v2.0")));
    assert!(f.validate(&f.token(&c)).await.is_ok());
}

/// Attack: an ID token (no `scp`, no `roles`) presented as an access token.
#[tokio::test]
async fn attack_id_token_is_rejected() {
    let f = fixture();
    let mut c = claims();
    c.remove("scp");
    c.insert("nonce".into(), json!("n-0S6_WzA2Mj"));
    c.insert("at_hash".into(), json!("77QmUPtjPfzWtF2AnpK9RQ"));
    assert_eq!(
        f.validate(&f.token(&c)).await.unwrap_err(),
        TokenError::NotAccessToken
    );
}

#[tokio::test]
async fn attack_crit_header_is_rejected() {
    let f = fixture();
    let mut header = f.header();
    header["crit"] = json!(["exp"]);
    let token = f.sign(&header, &Value::Object(claims()).to_string());
    assert_eq!(
        f.validate(&token).await.unwrap_err(),
        TokenError::CriticalHeader
    );
}

/// Attack: a genuine token whose payload was edited (a claim changed) or whose signature was
/// altered.
#[tokio::test]
async fn attack_tampered_payload_or_signature_is_rejected() {
    let f = fixture();
    let token = f.token(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = claims();
    c.insert("oid".into(), json!("00000000-0000-4000-8000-0000000a11ce"));
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&Value::Object(c).to_string()),
        parts[2]
    );
    assert_eq!(
        f.validate(&tampered).await.unwrap_err(),
        TokenError::BadSignature
    );

    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("sig");
    sig[10] ^= 0x01;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&sig));
    assert_eq!(
        f.validate(&flipped).await.unwrap_err(),
        TokenError::BadSignature
    );
    let truncated = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(&sig[..100])
    );
    assert_eq!(
        f.validate(&truncated).await.unwrap_err(),
        TokenError::BadSignature
    );
}

/// Attack: a token already verified and cached, replayed with its header and payload kept and
/// the signature changed, cut, or followed by one more segment. The cache key is taken from the
/// signed part's digest and the rest of the token; none of these may find the verified token's
/// entry, each must be read and refused as the token it is.
#[tokio::test]
async fn attack_a_cached_tokens_signed_part_with_another_ending_misses_the_cache() {
    let f = fixture();
    let token = f.token(&claims());
    assert!(!f.validate(&token).await.expect("valid").cache_hit);
    let (signed, sig_b64) = token.rsplit_once('.').expect("three segments");
    let genuine = URL_SAFE_NO_PAD.decode(sig_b64).expect("sig");
    let mut sig = genuine.clone();
    sig[200] ^= 0x80;
    let flipped = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&sig));
    assert_eq!(
        f.validate(&flipped).await.unwrap_err(),
        TokenError::BadSignature
    );
    let cut = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&genuine[..252]));
    assert_eq!(
        f.validate(&cut).await.unwrap_err(),
        TokenError::BadSignature
    );
    for longer in [format!("{token}."), format!("{token}.{sig_b64}")] {
        assert_eq!(
            f.validate(&longer).await.unwrap_err(),
            TokenError::Malformed("not three segments")
        );
    }
    assert_eq!(
        f.validate(signed).await.unwrap_err(),
        TokenError::Malformed("not three segments")
    );
    assert!(f.validate(&token).await.expect("valid").cache_hit);
    assert_eq!(f.validator.cached_tokens(), 1);
}

/// The digest a new token's signature is verified against is the SHA-256 of the very bytes the
/// parse calls signed, and the cache key changes with any byte of the token.
#[test]
fn the_token_digest_covers_the_parsed_signed_part_and_the_whole_token() {
    let f = fixture();
    let token = f.token(&claims());
    let mut payload = Vec::new();
    let parsed = parse_jwt(&token, &mut payload).expect("parses");
    let d = TokenDigest::of(&token);
    assert_eq!(
        d.signed.as_slice(),
        Sha256::digest(parsed.signed_part()).as_slice()
    );
    let mut keys = std::collections::HashSet::new();
    keys.insert(d.key);
    // Every one-byte change, and every cut, gives another key.
    for i in (0..token.len()).step_by(7) {
        let mut b = token.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(b).expect("ascii");
        assert!(keys.insert(TokenDigest::of(&changed).key), "byte {i}");
        assert!(keys.insert(TokenDigest::of(&token[..i]).key), "cut at {i}");
    }
    // No '.' and a trailing '.': the same bytes before it, not the same key.
    assert_ne!(TokenDigest::of("abc").key, TokenDigest::of("abc.").key);
}

#[tokio::test]
async fn attack_bad_base64url_is_rejected() {
    let f = fixture();
    let token = f.token(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    for bad in [
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]), // padding
        format!("{}.{}+.{}", parts[0], parts[1], parts[2]), // standard alphabet
        format!("{}.{}.{}/", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], "!!!!", parts[2]),
        format!("{}.{}", parts[0], parts[1]),  // two segments
        format!("{token}.extra"),              // four segments
        format!(".{}.{}", parts[1], parts[2]), // empty header
    ] {
        assert!(
            matches!(
                f.validate(&bad).await.unwrap_err(),
                TokenError::Malformed(_)
            ),
            "{bad}"
        );
    }
    // A non-canonical final character (same bytes, different trailing bits) is refused too, so
    // each token has exactly one spelling (and one cache entry).
    let last = parts[2].chars().last().expect("last");
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).expect("alphabet");
    let sibling = alphabet.chars().nth(idx ^ 1).expect("sibling");
    let respelled = format!(
        "{}.{}.{}{}",
        parts[0],
        parts[1],
        &parts[2][..parts[2].len() - 1],
        sibling
    );
    assert!(f.validate(&respelled).await.is_err());
}

#[tokio::test]
async fn attack_non_object_json_is_rejected() {
    let f = fixture();
    let key = f.authority.active_key();
    let kid = key.kid.clone();
    for payload in [
        "[]",
        "\"a string\"",
        "42",
        "null",
        "{\"a\":1} trailing",
        "[{\"aud\":\"x\"}]",
    ] {
        let token = key.sign_jwt(&json!({"alg": "RS256", "kid": kid}), payload);
        assert_eq!(
            f.validate(&token).await.unwrap_err(),
            TokenError::Malformed("claims are not a JSON object"),
            "{payload}"
        );
    }
    let header_array = format!(
        "{}.{}.{}",
        b64("[\"RS256\"]"),
        b64(&Value::Object(claims()).to_string()),
        b64("sig")
    );
    assert_eq!(
        f.validate(&header_array).await.unwrap_err(),
        TokenError::Malformed("header is not a JSON object")
    );
}

#[tokio::test]
async fn attack_claims_of_the_wrong_type_are_rejected() {
    let f = fixture();
    for (claim, value) in [
        ("aud", json!([API])),
        ("aud", json!(42)),
        ("exp", json!("9999999999")),
        ("exp", json!(null)),
        ("nbf", json!({"t": 1})),
        ("scp", json!(["mcp.access"])),
        ("groups", json!("e0000000-0000-4000-8000-0000000000e1")),
        ("roles", json!("Admin")),
    ] {
        let token = f.with(claim, value.clone());
        assert_eq!(
            f.validate(&token).await.unwrap_err(),
            TokenError::Malformed("claim of the wrong type"),
            "{claim}={value}"
        );
    }
}

/// Attack: repeated claim names, which different parsers resolve differently.
#[tokio::test]
async fn attack_duplicate_claim_or_header_names_are_rejected() {
    let f = fixture();
    let body = Value::Object(claims()).to_string();
    let dup_aud = format!("{{\"aud\":\"api://someone-else\",{}", &body[1..]);
    let token = f.sign(&f.header(), &dup_aud);
    assert_eq!(
        f.validate(&token).await.unwrap_err(),
        TokenError::DuplicateName("claims")
    );
    // A repeated claim we do not even read is refused too.
    let dup_other = format!("{{\"xyz\":1,\"xyz\":2,{}", &body[1..]);
    assert_eq!(
        f.validate(&f.sign(&f.header(), &dup_other))
            .await
            .unwrap_err(),
        TokenError::DuplicateName("claims")
    );
    // Escaped spelling of the same name.
    let dup_escaped = format!("{{\"\\u0061ud\":\"x\",{}", &body[1..]);
    assert_eq!(
        f.validate(&f.sign(&f.header(), &dup_escaped))
            .await
            .unwrap_err(),
        TokenError::DuplicateName("claims")
    );

    let kid = f.authority.active_key().kid.clone();
    let header = format!("{{\"alg\":\"none\",\"alg\":\"RS256\",\"kid\":\"{kid}\"}}");
    let signed = format!("{}.{}", b64(&header), b64(&body));
    let sig = f.authority.active_key().sign(signed.as_bytes());
    let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig));
    assert_eq!(
        f.validate(&token).await.unwrap_err(),
        TokenError::DuplicateName("header")
    );
}

/// Attack: header members a verifier must not act on, spelled so that a reader which skips a
/// `null` differently, or keeps whitespace around it, would miss them. `null` reads as absent
/// (as serde's `Option` reads it); any other value counts as present.
#[tokio::test]
async fn attack_header_members_are_present_unless_null() {
    let f = fixture();
    let kid = f.authority.active_key().kid.clone();
    let body = Value::Object(claims()).to_string();
    let signed_with = |header: &str| {
        let signed = format!("{}.{}", b64(header), b64(&body));
        let sig = f.authority.active_key().sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    };
    let nulls = format!(
        "{{\"alg\":\"RS256\",\"kid\":\"{kid}\", \"jku\" : null ,\"crit\":null,\"nonce\":\n null,\"x5c\":null}}"
    );
    f.validate(&signed_with(&nulls))
        .await
        .expect("null header members are absent");
    for (member, refused) in [
        ("\"jku\": {}", TokenError::ForbiddenHeader("jku")),
        ("\"jwk\": false", TokenError::ForbiddenHeader("jwk")),
        ("\"x5u\": \"\"", TokenError::ForbiddenHeader("x5u")),
        ("\"x5c\" : [ ]", TokenError::ForbiddenHeader("x5c")),
        ("\"crit\": []", TokenError::CriticalHeader),
        ("\"nonce\": 0", TokenError::GraphToken),
        // An escaped name is the name: `\u006aku` is `jku`.
        (
            "\"\\u006aku\": \"https://evil.example/keys\"",
            TokenError::ForbiddenHeader("jku"),
        ),
    ] {
        let header = format!("{{\"alg\":\"RS256\",\"kid\":\"{kid}\",{member}}}");
        assert_eq!(
            f.validate(&signed_with(&header)).await.unwrap_err(),
            refused,
            "{header}"
        );
    }
    // A header field we read, of the wrong type.
    let header = format!("{{\"alg\":\"RS256\",\"kid\":7,\"k\":\"{kid}\"}}");
    assert_eq!(
        f.validate(&signed_with(&header)).await.unwrap_err(),
        TokenError::Malformed("header fields")
    );
}

/// A claim name spelled with an escape is read as the name it spells, as every JSON parser
/// reads it: `\u0061ud` is the audience, so a token cannot hide its `aud` from us.
#[tokio::test]
async fn an_escaped_claim_name_is_the_name_it_spells() {
    let f = fixture();
    let mut c = claims();
    c.remove("aud");
    let body = Value::Object(c).to_string();
    let with_aud = |aud: &str| format!("{{\"\\u0061ud\":\"{aud}\",{}", &body[1..]);
    f.validate(&f.sign(&f.header(), &with_aud(API)))
        .await
        .expect("escaped aud read");
    assert_eq!(
        f.validate(&f.sign(&f.header(), &with_aud("api://someone-else")))
            .await
            .unwrap_err(),
        TokenError::WrongAudience
    );
}

/// Attack: a huge token meant to cost decoding and hashing time; refused on length alone.
#[tokio::test]
async fn attack_oversized_token_is_rejected_before_decoding() {
    let f = fixture();
    let huge = "A".repeat(16 * 1024 + 1);
    assert_eq!(f.validate(&huge).await.unwrap_err(), TokenError::TooLarge);
    let mut c = claims();
    c.insert("pad".into(), json!("x".repeat(20_000)));
    assert_eq!(
        f.validate(&f.token(&c)).await.unwrap_err(),
        TokenError::TooLarge
    );
}

/// Attack: two Authorization headers, or two tokens in one, hoping one gets checked and the
/// other used.
#[test]
fn attack_two_authorization_headers_or_tokens_are_rejected() {
    assert_eq!(
        bearer_token(&["Bearer a.b.c", "Bearer d.e.f"]),
        Err(TokenError::Multiple)
    );
    assert_eq!(
        bearer_token(&["Bearer a.b.c,Bearer d.e.f"]),
        Err(TokenError::Multiple)
    );
    assert_eq!(
        bearer_token(&["Bearer a.b.c, Bearer d.e.f"]),
        Err(TokenError::Multiple)
    );
    assert_eq!(
        bearer_token(&["Bearer a.b.c d.e.f"]),
        Err(TokenError::Multiple)
    );
    assert_eq!(
        bearer_token(&["Basic dXNlcjpwYXNz"]),
        Err(TokenError::NotBearer)
    );
    assert_eq!(bearer_token(&["a.b.c"]), Err(TokenError::NotBearer));
    assert_eq!(bearer_token(&[]), Err(TokenError::Missing));
    assert_eq!(bearer_token(&["Bearer "]), Err(TokenError::Missing));
    assert_eq!(bearer_token(&[""]), Err(TokenError::Missing));
    assert_eq!(bearer_token(&["bearer a.b.c"]), Ok("a.b.c"));
    assert_eq!(bearer_token(&["Bearer  a.b.c "]), Ok("a.b.c"));
}

#[tokio::test]
async fn app_only_token_is_refused_unless_allowed_and_needs_a_role() {
    let f = fixture();
    let mut app = claims();
    app.remove("scp");
    app.insert("roles".into(), json!(["MCP.Invoke"]));
    app.insert("idtyp".into(), json!("app"));
    assert_eq!(
        f.validate(&f.token(&app)).await.unwrap_err(),
        TokenError::AppTokenNotAllowed
    );

    let mut r = rules();
    r.allow_app_tokens = true;
    let f = fixture_with(r, None);
    let v = f.validate(&f.token(&app)).await.expect("app token allowed");
    assert_eq!(v.principal.kind, PrincipalKind::App);
    app.insert("roles".into(), json!(["Something.Else"]));
    assert_eq!(
        f.validate(&f.token(&app)).await.unwrap_err(),
        TokenError::MissingRole
    );
    assert!(TokenError::MissingRole.is_insufficient_scope());
}

#[tokio::test]
async fn user_token_without_the_required_scope_is_insufficient_scope() {
    let f = fixture();
    let err = f
        .validate(&f.with("scp", json!("User.Read openid")))
        .await
        .unwrap_err();
    assert_eq!(err, TokenError::MissingScope);
    assert!(err.is_insufficient_scope());
    assert!(
        f.validate(&f.with("scp", json!("openid mcp.access")))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn token_version_outside_the_configured_set_is_rejected() {
    let mut r = rules();
    r.accept_v1 = false;
    let f = fixture_with(r, None);
    let mut c = claims();
    c.insert("ver".into(), json!("1.0"));
    c.insert(
        "iss".into(),
        json!(format!("https://sts.windows.net/{TID}/")),
    );
    assert_eq!(
        f.validate(&f.token(&c)).await.unwrap_err(),
        TokenError::VersionNotAccepted
    );
    assert_eq!(
        f.validate(&f.with("ver", json!("3.0"))).await.unwrap_err(),
        TokenError::VersionNotAccepted
    );
    assert_eq!(
        f.validate(&f.without("ver")).await.unwrap_err(),
        TokenError::VersionNotAccepted
    );
}

#[tokio::test]
async fn missing_or_malformed_oid_is_rejected() {
    let f = fixture();
    assert_eq!(
        f.validate(&f.without("oid")).await.unwrap_err(),
        TokenError::MissingObjectId
    );
    assert_eq!(
        f.validate(&f.with("oid", json!("bob"))).await.unwrap_err(),
        TokenError::MissingObjectId
    );
}

#[test]
fn a_key_under_2048_bits_never_verifies() {
    let small = SigningKey::generate_sized(aws_lc_rs::rsa::KeySize::Rsa2048);
    let key = Key::from_components("k", &small.n, &small.e, None).expect("2048 is fine");
    assert!(key.verify(b"m", &small.sign(b"m")));
    // A 1024-bit modulus (built by hand) is refused at verify time by the algorithm's range.
    let n1024 = URL_SAFE_NO_PAD.encode([0xC3u8; 128]);
    if let Ok(k) = Key::from_components("weak", &n1024, "AQAB", None) {
        assert!(!k.verify(b"m", &[0u8; 128]));
    }
}

#[test]
fn guid_check_is_strict() {
    assert!(is_guid(TID));
    assert!(is_guid("3F8A4B2C-1D5E-4F6A-9B8C-7D6E5F4A3B2C"));
    for bad in [
        "",
        "3f8a4b2c1d5e4f6a9b8c7d6e5f4a3b2c",
        "{3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c}",
        "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2g",
        "common",
    ] {
        assert!(!is_guid(bad), "{bad}");
    }
}

#[test]
fn reason_codes_are_unique() {
    use std::collections::HashSet;
    let all = [
        TokenError::Missing,
        TokenError::Multiple,
        TokenError::NotBearer,
        TokenError::TooLarge,
        TokenError::Malformed("x"),
        TokenError::DuplicateName("x"),
        TokenError::AlgorithmNotAllowed,
        TokenError::ForbiddenHeader("x"),
        TokenError::CriticalHeader,
        TokenError::MissingKeyId,
        TokenError::UnknownKeyId,
        TokenError::KeysUnavailable,
        TokenError::BadSignature,
        TokenError::MissingExpiry,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::IssuedInFuture,
        TokenError::VersionNotAccepted,
        TokenError::TenantNotAllowed,
        TokenError::WrongIssuer,
        TokenError::KeyIssuerMismatch,
        TokenError::WrongAudience,
        TokenError::GraphToken,
        TokenError::NotAccessToken,
        TokenError::AppTokenNotAllowed,
        TokenError::MissingObjectId,
        TokenError::MissingScope,
        TokenError::MissingRole,
    ];
    let codes: HashSet<_> = all.iter().map(|e| e.code()).collect();
    assert_eq!(codes.len(), all.len());
}

#[test]
fn assembled_helper_round_trips() {
    // Guards the helper used by other tests: a signature over the wrong bytes never verifies.
    let f = fixture();
    let t = assembled(
        &f.header(),
        &Value::Object(claims()),
        &f.authority.active_key().sign(b"other"),
    );
    let mut payload = Vec::new();
    let parsed = parse_jwt(&t, &mut payload).expect("parses");
    let keys = f
        .validator
        .keys()
        .keys_for(&parsed.header.kid)
        .expect("key");
    assert_eq!(
        f.validator.check(parsed, &keys, unix_now()).unwrap_err(),
        TokenError::BadSignature
    );
}

// ---------------------------------------------------------------------------------------------
// Keys from a live (stand-in) directory: refetch on unknown kid, single flight, rate limit,
// last good set kept.

async fn served_directory() -> (std::sync::Arc<Authority>, String) {
    Authority::spawn_local(vec![TID.into()])
        .await
        .expect("serve")
}

fn live_validator(
    url: &str,
    unknown_kid_interval: std::time::Duration,
) -> (Arc<KeyStore>, Validator) {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("client");
    let source = JwksSource::new(http, url, TID).expect("source");
    let keys = Arc::new(KeyStore::new(source, unknown_kid_interval));
    let mut r = rules();
    r.authority = url.to_owned();
    (keys.clone(), Validator::new(r, keys, 1000))
}

fn live_token(a: &Authority) -> String {
    a.mint(
        &serde_json::from_value(json!({"tid": TID, "oid": OID, "aud": API, "scp": "mcp.access"}))
            .expect("req"),
    )
    .expect("mint")
}

#[tokio::test]
async fn unknown_kid_refetch_is_single_flight_and_rate_limited() {
    use std::sync::atomic::Ordering;
    let (a, url) = served_directory().await;
    let (keys, validator) = live_validator(&url, std::time::Duration::from_secs(1));
    keys.refresh().await.expect("first load");
    assert_eq!(a.jwks_requests.load(Ordering::Relaxed), 1);

    a.rotate(false);
    let fresh = live_token(&a);
    let validator = Arc::new(validator);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (v, t) = (validator.clone(), fresh.clone());
        tasks.push(tokio::spawn(
            async move { v.validate(&t).await.map(|_| ()) },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join"), Ok(()));
    }
    assert_eq!(
        a.jwks_requests.load(Ordering::Relaxed),
        2,
        "50 concurrent unknown-kid requests, one fetch"
    );

    // Attack: a stream of tokens with made-up kids must not turn into a stream of fetches:
    // none within the interval after the last one, then at most one per interval.
    let forger = SigningKey::generate();
    let made_up = |i: usize| {
        forger.sign_jwt(
            &json!({"alg": "RS256", "kid": format!("made-up-{i}")}),
            &Value::Object(claims()).to_string(),
        )
    };
    for i in 0..20 {
        assert_eq!(
            validator.validate(&made_up(i)).await.unwrap_err(),
            TokenError::UnknownKeyId
        );
    }
    assert_eq!(
        a.jwks_requests.load(Ordering::Relaxed),
        2,
        "no refetch within the interval"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for i in 20..40 {
        assert_eq!(
            validator.validate(&made_up(i)).await.unwrap_err(),
            TokenError::UnknownKeyId
        );
    }
    assert_eq!(
        a.jwks_requests.load(Ordering::Relaxed),
        3,
        "one refetch per interval, however many unknown kids"
    );
}

#[tokio::test]
async fn failed_refresh_keeps_the_last_good_keys() {
    let (a, url) = served_directory().await;
    let (keys, validator) = live_validator(&url, std::time::Duration::from_millis(0));
    keys.refresh().await.expect("first load");
    let token = live_token(&a);
    let before = keys.snapshot().kids();

    a.set_oidc_down(true);
    assert!(keys.refresh().await.is_err(), "the directory is down");
    assert_eq!(keys.snapshot().kids(), before, "the last good keys stay");
    assert!(
        validator.validate(&token).await.is_ok(),
        "and keep verifying"
    );
    assert_eq!(
        keys.refresh_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // A store that never loaded answers keys_unavailable (503), not a guess.
    let (empty, _) = live_validator(&url, std::time::Duration::from_millis(0));
    let v = Validator::new(rules(), empty, 10);
    assert_eq!(
        v.validate(&token).await.unwrap_err(),
        TokenError::KeysUnavailable
    );

    a.set_oidc_down(false);
    assert!(
        keys.refresh().await.is_ok(),
        "recovers when the directory is back"
    );
}

#[tokio::test]
async fn jwks_uri_on_another_origin_is_refused() {
    // Discovery is fetched from the authority; a jwks_uri elsewhere would let whoever controls
    // that document choose the keys.
    let evil = axum::Router::new().route(
        "/{tenant}/v2.0/.well-known/openid-configuration",
        axum::routing::get(|| async {
            axum::Json(json!({"jwks_uri": "http://attacker.invalid/keys"}))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, evil).await });
    let source = JwksSource::new(reqwest::Client::new(), &url, TID).expect("source");
    assert!(matches!(
        source.fetch().await,
        Err(JwksError::ForeignJwksUri(_))
    ));
}

#[tokio::test]
async fn cache_is_bounded_and_never_outlives_the_token() {
    let mut r = rules();
    r.leeway = 0;
    let f = fixture_with(r, None);
    let small = Validator::new(rules(), f.validator.keys().clone(), 8);
    for i in 0..50 {
        let t = f.with("sub", json!(format!("s{i}")));
        small.validate(&t).await.expect("valid");
    }
    assert!(
        small.cached_tokens() <= 8,
        "cache holds {}",
        small.cached_tokens()
    );

    let now = unix_now() as i64;
    let short = f.with("exp", json!(now + 2));
    assert!(!f.validate(&short).await.expect("valid").cache_hit);
    assert!(f.validate(&short).await.expect("valid").cache_hit);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        f.validate(&short).await.unwrap_err(),
        TokenError::Expired,
        "an expired token is not served from the cache"
    );
}

/// The issuer checks compare in place; they must agree with building the string (the old code
/// and the definition): `template.replace("{tenantid}", tid) == s`, for every shape of template.
#[test]
fn a_filled_template_is_compared_as_the_built_string() {
    let tid = TID;
    let templates = [
        "https://sts.windows.net/{tenantid}/",
        "https://login.microsoftonline.com/{tenantid}/v2.0",
        "{tenantid}",
        "{tenantid}{tenantid}",
        "a{tenantid}b{tenantid}c",
        "https://fixed.example/",
        "",
    ];
    let candidates = |t: &str| {
        let built = t.replace("{tenantid}", tid);
        vec![
            built.clone(),
            format!("{built}/"),
            built.trim_end_matches('/').to_string(),
            built.replace(tid, OTHER_TID),
            t.to_string(),
            format!("x{built}"),
            String::new(),
        ]
    };
    for t in templates {
        for s in candidates(t) {
            assert_eq!(
                jwks::is_filled_template(t, tid, &s),
                t.replace("{tenantid}", tid) == s,
                "{t:?} against {s:?}"
            );
        }
    }
    let r = rules();
    let tid_ = crate::ids::DirectoryId::parse(TID).expect("guid");
    assert!(r.is_expected_issuer(TokenVersion::V2, &tid_, &format!("{AUTHORITY}/{TID}/v2.0")));
    assert!(!r.is_expected_issuer(TokenVersion::V2, &tid_, &format!("{AUTHORITY}/{TID}/v2.0/")));
    assert!(!r.is_expected_issuer(TokenVersion::V2, &tid_, &format!("{AUTHORITY}{TID}/v2.0")));
    assert!(r.is_expected_issuer(
        TokenVersion::V1,
        &tid_,
        &format!("https://sts.windows.net/{TID}/")
    ));
    assert!(!r.is_expected_issuer(
        TokenVersion::V1,
        &tid_,
        &format!("https://sts.windows.net/{OTHER_TID}/")
    ));
}

/// A new token's claims are read where they lie in the decoded payload, not copied one by one:
/// parsing an Entra user token allocates for its three decoded segments, the two member lists,
/// the key id and the groups (the list read, then the ids), whatever the number of claims.
/// With each string claim copied (as before the claims borrowed), it takes 21.
#[test]
fn parsing_a_new_token_allocates_per_segment_not_per_claim() {
    let f = fixture();
    let mut c = claims();
    for (k, v) in [
        ("name", "Bob"),
        ("azp", "c0ffee00-0000-4000-8000-000000000001"),
        ("upn", "bob@contoso.example"),
    ] {
        c.insert(k.into(), json!(v));
    }
    let token = f.token(&c);
    let (n, label) = crate::test_alloc::allocations_in(|| {
        let mut payload = Vec::new();
        let parsed = parse_jwt(&token, &mut payload).expect("parses");
        parsed.claims.upn.as_deref().map(str::len)
    });
    assert_eq!(label, Some("bob@contoso.example".len()));
    assert!(n <= 8, "{n} allocations to parse one token");
}

/// The one-pass JWS reader against the two-pass reader it replaced (kept here as the
/// reference: a uniqueness pass over each object, then serde's derived structs): for thousands
/// of generated headers and claim sets (every name we read and others, escaped spellings,
/// repeats, every JSON type, `null`s, odd whitespace), both accept the same tokens with the
/// same fields, and refuse the same tokens with the same error.
#[test]
fn the_jws_reader_agrees_with_the_two_pass_reference() {
    let mut rng = reference::Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..6000 {
        let header = reference::object(&mut rng, reference::HEADER_NAMES);
        let payload = reference::object(&mut rng, reference::CLAIM_NAMES);
        let token = format!("{}.{}.c2ln", b64(&header), b64(&payload));
        let mut buf = Vec::new();
        let ours = crate::identity::jwt::parse(&token, &mut buf)
            .map(|p| format!("{:?} {:?}", p.header, p.claims));
        let theirs = reference::parse(&token).map(|(h, c)| format!("{h:?} {c:?}"));
        assert_eq!(ours, theirs, "header {header} payload {payload}");
        if ours.is_ok() {
            accepted += 1
        } else {
            refused += 1
        }
    }
    // The generator reaches both sides.
    assert!(
        accepted > 300 && refused > 300,
        "{accepted} accepted, {refused} refused"
    );
}

mod reference {
    use std::borrow::Cow;
    use std::collections::HashSet;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::Deserialize;
    use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

    use crate::identity::TokenError;
    use crate::identity::jwt::{ClaimNames, Claims, GroupsValue, Header};

    pub const HEADER_NAMES: &[&str] = &[
        "alg", "typ", "kid", "nonce", "jku", "jwk", "x5u", "x5c", "crit", "x5t", "cty",
    ];
    pub const CLAIM_NAMES: &[&str] = &[
        "iss",
        "aud",
        "exp",
        "nbf",
        "iat",
        "ver",
        "tid",
        "oid",
        "sub",
        "scp",
        "roles",
        "groups",
        "hasgroups",
        "_claim_names",
        "upn",
        "preferred_username",
        "email",
        "name",
        "azp",
        "appid",
        "idtyp",
        "uti",
        "wids",
    ];

    pub struct Rng(pub u64);
    impl Rng {
        pub fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    fn value(rng: &mut Rng, name: &str) -> String {
        if rng.below(5) > 0 {
            // Most values are of the name's own type, so that the reader gets past them.
            return match name {
                "exp" | "nbf" | "iat" => "1700000000.25".into(),
                "roles" | "groups" => "[\"a\",\"b\"]".into(),
                "hasgroups" => "true".into(),
                "_claim_names" => "{\"groups\":\"src1\"}".into(),
                "alg" => "\"RS256\"".into(),
                "typ" => "\"at+JWT\"".into(),
                "jku" | "jwk" | "x5u" | "x5c" | "crit" | "nonce" => "null".into(),
                _ => format!("\"{name}-\\u00e9\""),
            };
        }
        match rng.below(16) {
            0 => "null".into(),
            1 => "true".into(),
            2 => "17".into(),
            3 => "1.5e9".into(),
            4 => "-3".into(),
            5 => "1e400".into(),
            6 => "[\"a\",\"b\"]".into(),
            7 => "[1,\"a\"]".into(),
            8 => "{\"groups\":\"src1\"}".into(),
            9 => "{}".into(),
            10 => "\"RS256\"".into(),
            11 => "\"a\\u0062c\\n\"".into(),
            12 => "\"JWT\"".into(),
            13 => "[]".into(),
            14 => format!("\"{name}-value\""),
            _ => "\"E0000000-0000-4000-8000-0000000000E1\"".into(),
        }
    }

    fn spelled(rng: &mut Rng, name: &str) -> String {
        if rng.below(8) == 0 && !name.is_empty() {
            // The first letter as a `\u` escape: the same name to every JSON reader.
            let (first, rest) = name.split_at(1);
            format!("\\u{:04x}{rest}", first.as_bytes()[0])
        } else {
            name.into()
        }
    }

    /// A JSON text: usually an object of some of `names` (sometimes repeated), sometimes not an
    /// object at all, with whitespace here and there.
    pub fn object(rng: &mut Rng, names: &[&str]) -> String {
        match rng.below(40) {
            0 => return "[]".into(),
            1 => return "{\"a\":1} x".into(),
            2 => return "{\"a\":".into(),
            _ => {}
        }
        let ws = |rng: &mut Rng| [" ", "", "\n", "\t "][rng.below(4)];
        let mut members = Vec::new();
        // Most often alg and kid are right, so that the later checks are reached too.
        if names.contains(&"alg") && rng.below(3) > 0 {
            members.push("\"alg\":\"RS256\"".to_string());
            members.push("\"kid\":\"k1\"".to_string());
        }
        for _ in 0..rng.below(7) {
            let name = names[rng.below(names.len())];
            let v = value(rng, name);
            members.push(format!(
                "{}\"{}\"{}:{}{v}{}",
                ws(rng),
                spelled(rng, name),
                ws(rng),
                ws(rng),
                ws(rng)
            ));
        }
        format!("{{{}}}", members.join(","))
    }

    #[derive(Deserialize)]
    struct RawHeader {
        alg: Option<String>,
        typ: Option<String>,
        kid: Option<String>,
        nonce: Option<IgnoredAny>,
        jku: Option<IgnoredAny>,
        jwk: Option<IgnoredAny>,
        x5u: Option<IgnoredAny>,
        x5c: Option<IgnoredAny>,
        crit: Option<IgnoredAny>,
    }

    #[derive(Deserialize)]
    struct RawClaims {
        iss: Option<String>,
        #[serde(default, deserialize_with = "string_only")]
        aud: Option<String>,
        #[serde(default, deserialize_with = "numeric_date")]
        exp: Option<u64>,
        #[serde(default, deserialize_with = "numeric_date")]
        nbf: Option<u64>,
        #[serde(default, deserialize_with = "numeric_date")]
        iat: Option<u64>,
        ver: Option<String>,
        tid: Option<String>,
        oid: Option<String>,
        sub: Option<String>,
        scp: Option<String>,
        roles: Option<Vec<String>>,
        groups: Option<Vec<String>>,
        hasgroups: Option<bool>,
        #[serde(rename = "_claim_names")]
        claim_names: Option<ClaimNames>,
        upn: Option<String>,
        preferred_username: Option<String>,
        email: Option<String>,
        name: Option<String>,
        azp: Option<String>,
        appid: Option<String>,
        idtyp: Option<String>,
    }

    pub fn parse(token: &str) -> Result<(Header, Claims<'static>), TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed("not three segments"));
        };
        let header_bytes = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| TokenError::Malformed("header is not base64url"))?;
        let payload_bytes = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        unique(&header_bytes, "header")?;
        let raw: RawHeader = serde_json::from_slice(&header_bytes)
            .map_err(|_| TokenError::Malformed("header fields"))?;
        if raw.alg.as_deref() != Some("RS256") {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        if raw.crit.is_some() {
            return Err(TokenError::CriticalHeader);
        }
        for (present, name) in [
            (raw.jku.is_some(), "jku"),
            (raw.jwk.is_some(), "jwk"),
            (raw.x5u.is_some(), "x5u"),
            (raw.x5c.is_some(), "x5c"),
        ] {
            if present {
                return Err(TokenError::ForbiddenHeader(name));
            }
        }
        if let Some(typ) = raw.typ.as_deref()
            && !typ.eq_ignore_ascii_case("JWT")
            && !typ.eq_ignore_ascii_case("at+jwt")
        {
            return Err(TokenError::Malformed("typ is not JWT"));
        }
        let kid = raw
            .kid
            .filter(|k| !k.is_empty())
            .ok_or(TokenError::MissingKeyId)?;
        unique(&payload_bytes, "claims")?;
        let c: RawClaims = serde_json::from_slice(&payload_bytes)
            .map_err(|_| TokenError::Malformed("claim of the wrong type"))?;
        let claims = Claims {
            iss: c.iss.map(Cow::Owned),
            aud: c.aud.map(Cow::Owned),
            exp: c.exp,
            nbf: c.nbf,
            iat: c.iat,
            ver: c.ver.map(Cow::Owned),
            tid: c.tid.map(Cow::Owned),
            oid: c.oid.map(Cow::Owned),
            sub: c.sub.map(Cow::Owned),
            scp: c.scp.map(Cow::Owned),
            roles: c.roles,
            groups: c
                .groups
                .map(|g| GroupsValue::of(g.iter().map(String::as_str))),
            hasgroups: c.hasgroups,
            claim_names: c.claim_names,
            upn: c.upn.map(Cow::Owned),
            preferred_username: c.preferred_username.map(Cow::Owned),
            email: c.email.map(Cow::Owned),
            name: c.name.map(Cow::Owned),
            azp: c.azp.map(Cow::Owned),
            appid: c.appid.map(Cow::Owned),
            idtyp: c.idtyp.map(Cow::Owned),
        };
        let nonce = raw.nonce.is_some();
        Ok((Header { kid, nonce }, claims))
    }

    fn unique(bytes: &[u8], part: &'static str) -> Result<(), TokenError> {
        struct UniqueKeys;
        impl<'de> Visitor<'de> for UniqueKeys {
            type Value = bool;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
                let mut seen = HashSet::new();
                let mut unique = true;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    unique &= seen.insert(key);
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(unique)
            }
        }
        let not_object = TokenError::Malformed(if part == "header" {
            "header is not a JSON object"
        } else {
            "claims are not a JSON object"
        });
        let mut de = serde_json::Deserializer::from_slice(bytes);
        match de.deserialize_map(UniqueKeys) {
            Ok(true) => de.end().map_err(|_| not_object),
            Ok(false) => Err(TokenError::DuplicateName(part)),
            Err(_) => Err(not_object),
        }
    }

    fn string_only<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Some(s)),
            _ => Err(de::Error::custom("aud must be a string")),
        }
    }

    fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    Ok(Some(u))
                } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && *f >= 0.0) {
                    Ok(Some(f as u64))
                } else {
                    Err(de::Error::custom("time claim out of range"))
                }
            }
            _ => Err(de::Error::custom("time claim must be a number")),
        }
    }
}
