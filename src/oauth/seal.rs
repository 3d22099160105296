//! Sealing: AES-256-GCM (aws-lc-rs) over what the gateway hands out and reads back: refresh
//! tokens (which carry Entra's), consent cookies, and the CSRF value of the consent form. The
//! purpose is the associated data, so a value sealed for one use never opens as another; the
//! key is named by a short id, so rotation (a new first key, the old one still opening) works.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

/// What a sealed value is for: its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    RefreshToken,
    ConsentCookie,
    ConsentForm,
    /// Transient state kept in a shared store.
    State,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Purpose::RefreshToken => b"mcp-authz/oauth/refresh-token/v1",
            Purpose::ConsentCookie => b"mcp-authz/oauth/consent-cookie/v1",
            Purpose::ConsentForm => b"mcp-authz/oauth/consent-form/v1",
            Purpose::State => b"mcp-authz/oauth/state/v1",
        }
    }
}

struct Key {
    id: [u8; 4],
    key: LessSafeKey,
}

/// The keys: the first seals, every one opens.
pub struct Sealer {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({} keys)", self.keys.len())
    }
}

impl Sealer {
    /// At least one key of 32 bytes.
    pub fn new(raw: &[[u8; 32]]) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("no seal key".into());
        }
        let mut keys = Vec::with_capacity(raw.len());
        for k in raw {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, k);
            let mut id = [0u8; 4];
            id.copy_from_slice(&digest.as_ref()[..4]);
            let unbound = UnboundKey::new(&AES_256_GCM, k).map_err(|_| "bad seal key")?;
            keys.push(Key {
                id,
                key: LessSafeKey::new(unbound),
            });
        }
        Ok(Self { keys })
    }

    /// `plaintext` sealed for `purpose`: base64url of key id, nonce, ciphertext and tag.
    pub fn seal(&self, purpose: Purpose, plaintext: &[u8]) -> String {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::Rng::fill(&mut rand::rng(), &mut nonce[..]);
        let mut out = Vec::with_capacity(4 + NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        // Sealing a buffer in memory with a fresh nonce cannot fail but on a length overflow.
        if key
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.aad()),
                &mut body,
            )
            .is_err()
        {
            return String::new();
        }
        out.extend_from_slice(&body);
        B64.encode(out)
    }

    /// The plaintext, if `sealed` was sealed for `purpose` by one of the keys and not altered.
    pub fn open(&self, purpose: Purpose, sealed: &str) -> Option<Vec<u8>> {
        if sealed.len() > 64 * 1024 {
            return None;
        }
        let raw = B64.decode(sealed).ok()?;
        if raw.len() < 4 + NONCE_LEN + 16 {
            return None;
        }
        let (id, rest) = raw.split_at(4);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let key = self.keys.iter().find(|k| k.id == id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(purpose.aad()), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// `n` random bytes, base64url: codes, states, verifiers, client ids.
pub fn random_token(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::Rng::fill(&mut rand::rng(), &mut b[..]);
    B64.encode(b)
}

/// base64url(SHA-256(verifier)): the PKCE S256 challenge (RFC 7636).
pub fn s256(verifier: &str) -> String {
    B64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
