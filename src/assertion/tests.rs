//! Identity assertions: what an upstream verifies, key rotation, the cache.

use super::*;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

fn write_key(path: &std::path::Path) {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .expect("generate");
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(doc.as_ref())
    );
    std::fs::write(path, pem).expect("write key");
}

fn config(key_file: Option<PathBuf>) -> IdentityAssertionConfig {
    IdentityAssertionConfig {
        enabled: true,
        key_file,
        lifetime_seconds: 300,
        key_reload_seconds: 10,
        cache_capacity: 100,
    }
}

fn subject<'a>(server: &'a str, oid: &'a str) -> Subject<'a> {
    Subject {
        server,
        tid: "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c",
        oid,
        label: Some("bob@contoso.example"),
        tenant: "engineering",
        access_level: "write",
    }
}

/// Verifies `token` against `jwks` as an upstream would; its claims.
fn verify(jwks: &Value, token: &str) -> Result<Value, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not three parts".into());
    };
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    if header["alg"] != "ES256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["kid"] == header["kid"]))
        .ok_or("no such kid")?;
    let mut point = vec![4u8];
    for c in ["x", "y"] {
        point.extend(
            URL_SAFE_NO_PAD
                .decode(jwk[c].as_str().unwrap_or_default())
                .map_err(|e| e.to_string())?,
        );
    }
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|e| e.to_string())?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| "signature".to_string())?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())
}

#[test]
fn an_assertion_verifies_against_the_published_keys_and_names_the_user_and_server() {
    let a = IdentityAssertions::new(&config(None), "https://mcp.example.com".into()).expect("new");
    let token = a
        .assertion(&subject("github", "00000000-0000-4000-8000-000000000b0b"))
        .expect("signed");
    let claims = verify(&a.jwks(), &token).expect("verifies");
    assert_eq!(claims["iss"], "https://mcp.example.com");
    assert_eq!(claims["aud"], "github");
    assert_eq!(claims["oid"], "00000000-0000-4000-8000-000000000b0b");
    assert_eq!(claims["sub"], claims["oid"]);
    assert_eq!(claims["tenant"], "engineering");
    assert_eq!(claims["access_level"], "write");
    assert_eq!(claims["upn"], "bob@contoso.example");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    assert!(exp > iat && exp - iat <= 300, "{claims}");
    // Tampered: another user in the same signature.
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(claims.to_string().replace("000000000b0b", "0000000a11ce"));
    parts[1] = &forged;
    assert_eq!(verify(&a.jwks(), &parts.join(".")), Err("signature".into()));
}

#[test]
fn one_assertion_per_user_and_server_is_reused() {
    let a = IdentityAssertions::new(&config(None), "iss".into()).expect("new");
    let bob = "00000000-0000-4000-8000-000000000b0b";
    let first = a.assertion(&subject("github", bob)).expect("signed");
    assert_eq!(
        a.assertion(&subject("github", bob)).as_deref(),
        Some(&*first)
    );
    let other_server = a.assertion(&subject("jira", bob)).expect("signed");
    assert_ne!(other_server, first);
    let other_user = a
        .assertion(&subject("github", "00000000-0000-4000-8000-0000000a11ce"))
        .expect("signed");
    assert_ne!(other_user, first);
}

/// A new key file signs from the next reload on, without a restart; the replaced key stays
/// published so assertions already issued keep verifying.
#[test]
fn the_key_rotates_without_a_restart_and_the_old_one_stays_published() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("key.pem");
    write_key(&path);
    let a = IdentityAssertions::new(&config(Some(path.clone())), "iss".into()).expect("new");
    let bob = "00000000-0000-4000-8000-000000000b0b";
    let before = a.assertion(&subject("github", bob)).expect("signed");
    let old_kid = a.current_kid();
    assert!(!a.reload_key().expect("same file"));
    write_key(&path);
    assert!(a.reload_key().expect("new key"));
    assert_ne!(a.current_kid(), old_kid);
    let after = a.assertion(&subject("github", bob)).expect("signed");
    assert_ne!(after, before, "the cache is renewed with the new key");
    let jwks = a.jwks();
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(2));
    verify(&jwks, &before).expect("old assertion still verifies");
    verify(&jwks, &after).expect("new assertion verifies");
    // A broken file keeps the current key.
    std::fs::write(&path, "not a key").expect("write");
    assert!(a.reload_key().is_err());
    verify(
        &a.jwks(),
        &a.assertion(&subject("github", bob)).expect("signed"),
    )
    .expect("still signs");
}

#[test]
fn a_key_file_that_is_not_a_p256_key_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("key.pem");
    std::fs::write(
        &path,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let err = IdentityAssertions::new(&config(Some(path)), "iss".into())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not a P-256 private key"), "{err}");
}
