//! RSA signing keys of the stand-in directory.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// One RS256 key pair with its JWK fields.
pub struct SigningKey {
    pub kid: String,
    pair: RsaKeyPair,
    pub n: String,
    pub e: String,
}

impl SigningKey {
    /// A fresh 2048-bit key; the kid looks like Entra's (27 base64url characters).
    pub fn generate() -> Self {
        Self::generate_sized(KeySize::Rsa2048)
    }

    pub fn generate_sized(size: KeySize) -> Self {
        // Key generation failing means the crypto library is broken: nothing to recover.
        #[allow(clippy::expect_used)]
        let pair = RsaKeyPair::generate(size).expect("RSA key generation");
        let public = pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let kid = URL_SAFE_NO_PAD.encode(&uuid::Uuid::new_v4().as_bytes()[..]);
        let kid = kid[..kid.len().min(27)].to_owned();
        Self { kid, pair, n, e }
    }

    /// The key as a JWK, with `issuer` where Entra's v2 keys endpoint shows one.
    pub fn jwk(&self, issuer: Option<&str>) -> Value {
        let mut jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": self.n,
            "e": self.e,
        });
        if let Some(issuer) = issuer {
            jwk["issuer"] = json!(issuer);
        }
        jwk
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let mut signature = vec![0; self.pair.public_modulus_len()];
        // Signing with a valid key into a buffer of the modulus length cannot fail.
        #[allow(clippy::expect_used)]
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut signature,
            )
            .expect("RSA signing");
        signature
    }

    /// Whether `signature` is this key's RS256 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, self.pair.public_key().as_ref())
            .verify(message, signature)
            .is_ok()
    }

    /// Builds a compact JWS from a header and the payload text exactly as given (so tests can
    /// craft payloads a JSON serializer would not produce, such as repeated names).
    pub fn sign_jwt(&self, header: &Value, payload: &str) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = self.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}
