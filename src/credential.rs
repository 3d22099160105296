//! How mcp-authz proves itself at Entra's token endpoint (Graph's app token, on-behalf-of): a
//! client secret, a client assertion signed with a certificate's key, or a federated credential
//! (workload identity): the projected service-account token of the pod, sent as the client
//! assertion, re-read as the kubelet rotates it. No secret to store or rotate in the last case.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `client_assertion_type` of both assertion kinds (RFC 7523).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the app proves itself at the token endpoint.
#[derive(Clone)]
pub enum Credential {
    Secret(String),
    /// A client assertion signed with the certificate's key (Entra's recommended credential).
    Certificate(Arc<CertificateKey>),
    /// The workload's federated token (Azure Workload Identity), as the client assertion.
    Federated(Arc<FederatedToken>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Secret(_) => f.write_str("Secret(***)"),
            Credential::Certificate(c) => write!(f, "Certificate(x5t={})", c.x5t),
            Credential::Federated(t) => write!(f, "Federated({})", t.path.display()),
        }
    }
}

impl Credential {
    /// The form fields that authenticate `client_id` at `token_endpoint` (the secret, or the
    /// assertion type and assertion). The error is safe to log: it never holds a credential.
    pub async fn form_fields(
        &self,
        client_id: &str,
        token_endpoint: &str,
    ) -> Result<Vec<(&'static str, String)>, String> {
        let assertion = match self {
            Credential::Secret(secret) => return Ok(vec![("client_secret", secret.clone())]),
            Credential::Certificate(cert) => cert.assertion(client_id, token_endpoint)?,
            Credential::Federated(token) => token.current().await?,
        };
        Ok(vec![
            ("client_assertion_type", ASSERTION_TYPE.to_owned()),
            ("client_assertion", assertion),
        ])
    }
}

/// The projected service-account token file (`AZURE_FEDERATED_TOKEN_FILE`): read when first
/// needed, then again once the copy held is `reread` old, so a rotated file is used within
/// that time. The kubelet rewrites the file well before the token expires (at 80 % of its
/// lifetime), so a copy up to `reread` old is still valid.
pub struct FederatedToken {
    path: PathBuf,
    reread: Duration,
    held: tokio::sync::Mutex<Option<(String, Instant)>>,
}

/// Tokens larger than this are refused (a projected token is about 1 KB).
const MAX_TOKEN_FILE_BYTES: u64 = 16 * 1024;

impl FederatedToken {
    pub fn new(path: PathBuf, reread: Duration) -> Self {
        Self {
            path,
            reread,
            held: tokio::sync::Mutex::new(None),
        }
    }

    /// The token to present now.
    pub async fn current(&self) -> Result<String, String> {
        let mut held = self.held.lock().await;
        if let Some((token, at)) = held.as_ref()
            && at.elapsed() < self.reread
        {
            return Ok(token.clone());
        }
        match self.read().await {
            Ok(token) => {
                *held = Some((token.clone(), Instant::now()));
                Ok(token)
            }
            // A file being rewritten or briefly missing: the copy held is used until it
            // is twice `reread` old (still well inside the token's lifetime).
            Err(e) => match held.as_ref() {
                Some((token, at)) if at.elapsed() < self.reread * 2 => {
                    tracing::warn!(error = %e, "workload identity: re-reading the token file failed; using the copy read {}s ago", at.elapsed().as_secs());
                    Ok(token.clone())
                }
                _ => Err(e),
            },
        }
    }

    async fn read(&self) -> Result<String, String> {
        let p = self.path.display();
        let meta = tokio::fs::metadata(&self.path)
            .await
            .map_err(|e| format!("workload identity token file {p}: {e}"))?;
        if meta.len() > MAX_TOKEN_FILE_BYTES {
            return Err(format!(
                "workload identity token file {p}: {} bytes, more than a service-account token",
                meta.len()
            ));
        }
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| format!("workload identity token file {p}: {e}"))?;
        let token = text.trim();
        let parts = token.split('.').count();
        if parts != 3
            || token
                .bytes()
                .any(|b| !(b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err(format!(
                "workload identity token file {p}: not a compact JWT (is it the projected service-account token?)"
            ));
        }
        Ok(token.to_owned())
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
