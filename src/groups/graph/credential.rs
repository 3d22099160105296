//! How mcp-authz proves itself at the token endpoint: a client secret, or a client assertion
//! signed with a certificate's key (Entra's recommended credential).

/// How the app proves itself at the token endpoint.
#[derive(Clone)]
pub enum Credential {
    Secret(String),
    /// A client assertion signed with the certificate's key (Entra's recommended credential).
    Certificate(std::sync::Arc<CertificateKey>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Secret(_) => f.write_str("Secret(***)"),
            Credential::Certificate(c) => write!(f, "Certificate(x5t={})", c.x5t),
        }
    }
}

/// A certificate credential: the private key and the certificate's SHA-1 thumbprint.
pub struct CertificateKey {
    pair: aws_lc_rs::signature::RsaKeyPair,
    pub x5t: String,
}

/// The DER bodies of the PEM blocks labelled `label`.
fn pem_blocks(text: &str, label: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let (begin, end) = (
        format!("-----BEGIN {label}-----"),
        format!("-----END {label}-----"),
    );
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let body_start = start + begin.len();
        let Some(stop) = rest[body_start..].find(&end) else {
            break;
        };
        let body: String = rest[body_start..body_start + stop]
            .split_whitespace()
            .collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body) {
            out.push(der);
        }
        rest = &rest[body_start + stop + end.len()..];
    }
    out
}

impl CertificateKey {
    /// From a PEM private key (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`) and the PEM
    /// certificate registered on the app (its first certificate is the one hashed).
    pub fn from_pem(key_pem: &str, cert_pem: &str) -> Result<Self, String> {
        use base64::Engine;
        let pair = if let Some(der) = pem_blocks(key_pem, "PRIVATE KEY").first() {
            aws_lc_rs::signature::RsaKeyPair::from_pkcs8(der)
                .map_err(|e| format!("private key: {e}"))?
        } else if let Some(der) = pem_blocks(key_pem, "RSA PRIVATE KEY").first() {
            aws_lc_rs::signature::RsaKeyPair::from_der(der)
                .map_err(|e| format!("private key: {e}"))?
        } else {
            return Err("no PEM RSA private key found".into());
        };
        let cert = pem_blocks(cert_pem, "CERTIFICATE")
            .into_iter()
            .next()
            .ok_or("no PEM certificate found")?;
        let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert);
        Ok(Self {
            pair,
            x5t: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha1.as_ref()),
        })
    }

    /// A client assertion for `client_id` at `token_endpoint`, valid ten minutes.
    pub fn assertion(&self, client_id: &str, token_endpoint: &str) -> Result<String, String> {
        use base64::Engine;
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let now = crate::clock::unix_now();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": self.x5t});
        let claims = serde_json::json!({
            "aud": token_endpoint, "iss": client_id, "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(), "nbf": now, "iat": now, "exp": now + 600,
        });
        let signed = format!("{}.{}", b64(&header), b64(&claims));
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                signed.as_bytes(),
                &mut sig,
            )
            .map_err(|_| "signing the client assertion failed".to_string())?;
        Ok(format!(
            "{signed}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
        ))
    }
}
