//! The app-only Graph token: cached per directory, renewed before expiry on use and by a
//! background loop, kept while valid when a renewal fails.

use std::time::{Duration, Instant};

use serde::Deserialize;

use std::sync::atomic::Ordering;

use super::{AppToken, GraphClient, GraphError, RENEW_BEFORE, jitter, transport};

/// How long use-time renewal waits after a failure, so an outage of the token endpoint is not
/// met with one request per Graph lookup.
const RENEWAL_HOLD_OFF: Duration = Duration::from_secs(30);

impl GraphClient {
    /// An app-only Graph token for directory `tid`, from the cache when it has time left.
    pub async fn app_token(&self, tid: &str) -> Result<String, GraphError> {
        let mut tokens = self.tokens.lock().await;
        let now = Instant::now();
        if let Some(t) = tokens.get(tid)
            && (t.expires_at > now + RENEW_BEFORE
                || (t.expires_at > now && t.retry_renewal_at.is_some_and(|r| now < r)))
        {
            return Ok(t.value.clone());
        }
        match self.fetch_token(tid).await {
            Ok(t) => {
                let v = t.value.clone();
                tokens.insert(tid.to_owned(), t);
                Ok(v)
            }
            // A failed renewal keeps the current token while it is valid.
            Err(e) => match tokens.get_mut(tid).filter(|t| t.expires_at > now) {
                Some(t) => {
                    tracing::warn!(error = %e, "Graph app token renewal failed; using the current token until it expires");
                    t.retry_renewal_at = Some(now + jitter(RENEWAL_HOLD_OFF));
                    Ok(t.value.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Renews tokens that are close to expiry, until `shutdown`.
    pub async fn run_renewal(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let base = Duration::from_secs(30);
        let mut wait = base;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(jitter(wait)) => {}
                _ = &mut shutdown => return,
            }
            // Back off while renewals fail (30 s doubling to 4 min: still several tries inside
            // the ten-minute window), back to 30 s after a success.
            wait = base;
            let due: Vec<String> = {
                let tokens = self.tokens.lock().await;
                tokens
                    .iter()
                    .filter(|(_, t)| t.expires_at < Instant::now() + RENEW_BEFORE * 2)
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            for tid in due {
                match self.fetch_token(&tid).await {
                    Ok(t) => {
                        self.tokens.lock().await.insert(tid, t);
                    }
                    Err(e) => {
                        wait = (wait * 2).min(Duration::from_secs(240));
                        tracing::warn!(error = %e, %tid, retry_in_s = wait.as_secs(), "background Graph token renewal failed; will retry")
                    }
                }
            }
        }
    }

    async fn fetch_token(&self, tid: &str) -> Result<AppToken, GraphError> {
        crate::telemetry::in_child(
            "graph app token",
            vec![opentelemetry::KeyValue::new(
                "mcp_authz.directory",
                tid.to_owned(),
            )],
            self.fetch_token_inner(tid),
        )
        .await
    }

    async fn fetch_token_inner(&self, tid: &str) -> Result<AppToken, GraphError> {
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
            expires_in: u64,
        }
        #[derive(Deserialize)]
        struct TokenError {
            error: Option<String>,
            error_codes: Option<Vec<u64>>,
        }
        self.stats.token_requests.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}/{tid}/oauth2/v2.0/token", self.s.authority);
        let scope = format!("{}/.default", self.s.base_url);
        let fail = |e: GraphError| {
            self.stats.token_failures.fetch_add(1, Ordering::Relaxed);
            e
        };
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", self.s.client_id.clone()),
            ("scope", scope),
        ];
        let auth = self
            .s
            .credential
            .form_fields(&self.s.client_id, &url)
            .await
            .map_err(|e| fail(GraphError::Token(e)))?;
        form.extend(auth);
        let sent = self.http.post(&url).form(&form).send().await;
        let resp = sent.map_err(|e| fail(GraphError::Token(transport(&e).into())))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|_| fail(GraphError::Token("unreadable response".into())))?;
        if !status.is_success() {
            // error + AADSTS code are safe to log; the description may echo request data.
            let detail = serde_json::from_slice::<TokenError>(&body)
                .map(|e| {
                    format!(
                        "{} {:?}",
                        e.error.unwrap_or_default(),
                        e.error_codes.unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            return Err(fail(GraphError::Token(format!(
                "HTTP {} {detail}",
                status.as_u16()
            ))));
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| fail(GraphError::Token("not a token response".into())))?;
        Ok(AppToken {
            value: t.access_token,
            expires_at: Instant::now() + Duration::from_secs(t.expires_in),
            retry_renewal_at: None,
        })
    }
}
