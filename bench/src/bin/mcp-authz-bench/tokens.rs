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
    let jwt = parse_jwt(token).map_err(|e| anyhow::anyhow!("bench token: {e:?}"))?;
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
