//! Tokens for the load: minted by the stand-in authority, written for the load generators, and
//! the cost of one RS256 verification on this machine.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mcp_authz_testkit::standin::{Authority, MintRequest};
use serde_json::json;

use crate::{API, ENG_GROUP, TID};

pub(crate) fn mint_one(
    authority: &Authority,
    i: usize,
    users: usize,
    tag: &str,
) -> anyhow::Result<String> {
    let req: MintRequest = serde_json::from_value(json!({
        "tid": TID, "oid": format!("00000000-0000-4000-8000-{:012}", i % users),
        "aud": API, "scp": "mcp.access", "groups": [ENG_GROUP],
        "extra": {"uti": format!("{tag}-{i}")},
    }))?;
    authority
        .mint(&req)
        .map_err(|e| anyhow::anyhow!("mint: {e}"))
}

/// Tokens `from..from + count` (RSA signing on every core).
pub(crate) fn mint(
    authority: &Authority,
    from: usize,
    count: usize,
    users: usize,
    tag: &str,
) -> anyhow::Result<Vec<String>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let parts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (from + t..from + count)
                        .step_by(threads)
                        .map(|i| mint_one(authority, i, users, tag))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("minting thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(parts.into_iter().flatten().collect())
}

pub(crate) fn write_tokens(path: &Path, tokens: &[String]) -> anyhow::Result<()> {
    let mut text = String::with_capacity(tokens.iter().map(|t| t.len() + 1).sum());
    for t in tokens {
        text.push_str(t);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("{}", path.display()))
}

/// A token whose signature is changed in the middle (a forgery every verifier must refuse).
pub(crate) fn forged(token: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    let at = b.len().saturating_sub(20);
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8_lossy(&b).into_owned()
}

/// Microseconds of one RS256 verification with a key parsed once (what mcp-authz does on a
/// token-cache miss), on one thread of this machine.
pub(crate) fn rs256_verify_us(authority: &Authority, token: &str) -> anyhow::Result<f64> {
    use mcp_authz::identity::{KeySet, KeyStore, parse_jwt};
    let jwks = serde_json::to_vec(&authority.jwks(None))?;
    let keys = KeyStore::fixed(KeySet::from_jwks(&jwks, "stand-in")?);
    let mut payload = Vec::new();
    let jwt = parse_jwt(token, &mut payload).map_err(|e| anyhow::anyhow!("bench token: {e:?}"))?;
    let key = keys
        .keys_for(&jwt.header.kid)
        .and_then(|k| k.first().cloned())
        .ok_or_else(|| anyhow::anyhow!("no key {} in the stand-in's JWKS", jwt.header.kid))?;
    let (message, sig) = (jwt.signed_part(), jwt.signature.as_slice());
    anyhow::ensure!(key.verify(message, sig), "signature does not verify");
    let (started, mut n) = (Instant::now(), 0u64);
    while started.elapsed() < Duration::from_millis(700) {
        for _ in 0..100 {
            std::hint::black_box(key.verify(std::hint::black_box(message), sig));
        }
        n += 100;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// `mcp-authz-bench new-tokens`: mints `count` tokens as the run does, then validates them in
/// process as [`new_token_us`] does, without any server. Untimed (`--untimed`), every token is
/// validated once and parsed once, so `valgrind --tool=callgrind` counts the same instructions
/// on every run: the before/after of a change to the new-token path, free of the machine's noise.
pub(crate) async fn new_tokens_main(count: usize, untimed: bool) -> anyhow::Result<()> {
    let authority = Authority::new(vec![crate::TID.into()]);
    let idp = "http://127.0.0.1:9";
    authority.set_base_url(idp);
    let dir = std::env::temp_dir().join(format!("mcp-authz-new-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.yaml");
    // The run's entra section; the rest only as much as a valid file needs.
    let text = format!(
        "listen: {{grpc: \"127.0.0.1:9\", admin: \"127.0.0.1:9\"}}\n{}\npolicy: {{file: policy.yaml}}\nmcp: {{public_base_url: \"http://127.0.0.1:9\"}}\n",
        crate::entra_config(idp)
    );
    let written = std::fs::write(&config, text);
    let rules = written
        .map_err(anyhow::Error::from)
        .and_then(|()| rules_of(&config));
    let _ = std::fs::remove_dir_all(&dir);
    let tokens = mint(&authority, 0, count, count, "new-tokens")?;
    let (validate, parse) = new_token_us(&authority, &rules?, &tokens, !untimed).await?;
    println!("new token: validate {validate:.2} µs, JWS parse {parse:.2} µs ({count} tokens)");
    Ok(())
}

/// The validation rules of a mcp-authz configuration file.
pub(crate) fn rules_of(config: &Path) -> anyhow::Result<mcp_authz::identity::ValidationRules> {
    let config = mcp_authz::config::Config::load_with_env(config, std::iter::empty())
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
    Ok(mcp_authz::identity::ValidationRules::from_config(
        &config.entra,
    ))
}

/// What a token-cache miss costs inside mcp-authz, on one thread of this machine, without the
/// gRPC around it: [`Validator::validate`] of tokens it has never seen (a fresh validator with
/// mcp-authz's rules for every pass), and the JWS parse alone. At least `passes` passes, and
/// more until 0.7 s is spent (0 passes: exactly one, for counting instructions). Microseconds
/// per token: (validate, parse).
///
/// [`Validator::validate`]: mcp_authz::identity::Validator::validate
pub(crate) async fn new_token_us(
    authority: &Authority,
    rules: &mcp_authz::identity::ValidationRules,
    tokens: &[String],
    timed: bool,
) -> anyhow::Result<(f64, f64)> {
    use mcp_authz::identity::{KeySet, KeyStore, Validator, parse_jwt};
    use std::sync::Arc;
    anyhow::ensure!(!tokens.is_empty(), "no tokens to validate");
    let jwks = serde_json::to_vec(&authority.jwks(None))?;
    let keys = Arc::new(KeyStore::fixed(KeySet::from_jwks(&jwks, "stand-in")?));
    let (mut validate_s, mut validated) = (0.0, 0u64);
    let budget = if timed { 0.7 } else { 0.0 };
    // Each pass is a new validator, so every token is a miss.
    while validated == 0 || validate_s < budget {
        let v = Validator::new(rules.clone(), keys.clone(), tokens.len() as u64 * 2);
        let started = Instant::now();
        for t in tokens {
            let verified = v
                .validate(std::hint::black_box(t))
                .await
                .map_err(|e| anyhow::anyhow!("bench token refused: {e:?}"))?;
            anyhow::ensure!(!verified.cache_hit, "a new validator hit its cache");
        }
        validate_s += started.elapsed().as_secs_f64();
        validated += tokens.len() as u64;
    }
    let (started, mut parsed) = (Instant::now(), 0u64);
    let budget = Duration::from_millis(if timed { 300 } else { 0 });
    while parsed == 0 || started.elapsed() < budget {
        for t in tokens {
            // A new buffer for each, as `Validator::validate` has.
            let mut payload = Vec::new();
            std::hint::black_box(parse_jwt(std::hint::black_box(t), &mut payload).is_ok());
        }
        parsed += tokens.len() as u64;
    }
    Ok((
        validate_s * 1e6 / validated as f64,
        started.elapsed().as_secs_f64() * 1e6 / parsed as f64,
    ))
}
