//! The gateway toward Entra: the authorize URL it sends the browser to (its own client id,
//! PKCE pair and state; never the client's `resource`), and the token endpoint, where it
//! redeems Entra's code and refreshes, proving itself with its credential (secret, certificate
//! or workload identity). Entra's answers are read here and never passed on as text: a refusal
//! becomes [`EntraError`], which the caller maps to a safe OAuth error.

use serde::Deserialize;

use crate::credential::Credential;

/// Largest token answer read from Entra.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

pub struct EntraClient {
    http: reqwest::Client,
    pub authority: String,
    pub tenant: String,
    pub client_id: String,
    credential: Credential,
    /// `{api scope} offline_access`.
    scope: String,
    /// `{public base}/oauth/callback`.
    pub redirect_uri: String,
}

/// Entra's tokens for the signed-in user.
#[derive(Debug, Clone, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: u64,
    pub refresh_token: Option<String>,
}

/// Why Entra gave no tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntraError {
    /// The grant is no good any more (expired, revoked, consent withdrawn): the user must sign
    /// in again. The AADSTS code, for the operator's log.
    Grant(u64),
    /// Entra refused the gateway itself (its credential, its registration): the operator's
    /// problem, never the client's.
    Client(u64),
    /// Entra could not be reached, timed out or answered garbage.
    Unavailable(&'static str),
}

impl EntraClient {
    pub fn new(
        http: reqwest::Client,
        authority: String,
        tenant: String,
        client_id: String,
        credential: Credential,
        api_scope: &str,
        redirect_uri: String,
    ) -> Self {
        Self {
            http,
            authority,
            tenant,
            client_id,
            credential,
            scope: format!("{api_scope} offline_access"),
            redirect_uri,
        }
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority, self.tenant)
    }

    /// Where the browser signs in: Entra's authorize endpoint with the gateway's request.
    pub fn authorize_url(&self, state: &str, verifier: &str) -> String {
        let mut url = match url::Url::parse(&format!(
            "{}/{}/oauth2/v2.0/authorize",
            self.authority, self.tenant
        )) {
            Ok(u) => u,
            Err(_) => return String::new(),
        };
        url.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("response_mode", "query")
            .append_pair("scope", &self.scope)
            .append_pair("state", state)
            .append_pair("code_challenge", &super::seal::s256(verifier))
            .append_pair("code_challenge_method", "S256");
        url.to_string()
    }

    /// Redeems Entra's code with the gateway's verifier.
    pub async fn redeem(&self, code: &str, verifier: &str) -> Result<Tokens, EntraError> {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.redirect_uri),
            ("code_verifier", verifier),
            ("scope", &self.scope),
        ])
        .await
    }

    /// Whether Entra accepts the gateway's app and credential (for `check-config`): a code
    /// that cannot exist is redeemed, and Entra, which authenticates the client first, answers
    /// `invalid_grant` when the app is fine and an AADSTS client error when it is not. `Ok` is
    /// the code of that expected refusal.
    pub async fn probe(&self) -> Result<u64, EntraError> {
        let verifier = super::seal::random_token(48);
        match self.redeem("mcp-authz-check-config-probe", &verifier).await {
            Err(EntraError::Grant(code)) => Ok(code),
            Ok(_) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// A new access token (and refresh token) from Entra's refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, EntraError> {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("scope", &self.scope),
        ])
        .await
    }

    async fn token(&self, fields: &[(&str, &str)]) -> Result<Tokens, EntraError> {
        #[derive(Deserialize)]
        struct Refusal {
            error: Option<String>,
            error_codes: Option<Vec<u64>>,
        }
        let endpoint = self.token_endpoint();
        let auth = self
            .credential
            .form_fields(&self.client_id, &endpoint)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "oauth: no client credential to present to Entra");
                EntraError::Unavailable("client credential unavailable")
            })?;
        let mut form: Vec<(&str, &str)> = vec![("client_id", self.client_id.as_str())];
        form.extend_from_slice(fields);
        form.extend(auth.iter().map(|(k, v)| (*k, v.as_str())));
        let resp = self
            .http
            .post(&endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                EntraError::Unavailable(if e.is_timeout() {
                    "timed out"
                } else {
                    "request failed"
                })
            })?;
        let status = resp.status();
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(EntraError::Unavailable("answer too large"));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|_| EntraError::Unavailable("answer unreadable"))?;
        if body.len() > MAX_ANSWER_BYTES {
            return Err(EntraError::Unavailable("answer too large"));
        }
        if status.is_success() {
            return serde_json::from_slice::<Tokens>(&body)
                .map_err(|_| EntraError::Unavailable("answer not a token response"));
        }
        let refusal: Refusal = serde_json::from_slice(&body)
            .map_err(|_| EntraError::Unavailable("refusal not JSON"))?;
        let code = refusal
            .error_codes
            .and_then(|c| c.first().copied())
            .unwrap_or(0);
        match refusal.error.as_deref() {
            Some("invalid_grant") | Some("interaction_required") | Some("consent_required") => {
                Err(EntraError::Grant(code))
            }
            Some(_) if status.is_server_error() => Err(EntraError::Unavailable("Entra failed")),
            _ if status.is_server_error() => Err(EntraError::Unavailable("Entra failed")),
            _ => Err(EntraError::Client(code)),
        }
    }
}
