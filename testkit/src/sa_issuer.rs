//! A stand-in for a Kubernetes cluster's service-account token issuer (the OIDC issuer an AKS
//! cluster publishes for workload identity): OIDC discovery and JWKS over HTTP, and projected
//! service-account tokens as the kubelet writes them into a pod (RS256, `iss` the issuer,
//! `sub` `system:serviceaccount:<namespace>:<name>`, `aud` `api://AzureADTokenExchange`).

use std::sync::{Arc, RwLock};

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::standin::SigningKey;

/// The audience Entra expects of a federated token.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

pub struct ServiceAccountIssuer {
    url: String,
    keys: RwLock<Vec<Arc<SigningKey>>>,
}

impl ServiceAccountIssuer {
    /// Serves on a loopback port; the issuer URL is `http://127.0.0.1:<port>`.
    pub async fn spawn_local() -> std::io::Result<Arc<Self>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let issuer = Arc::new(Self {
            url,
            keys: RwLock::new(vec![Arc::new(SigningKey::generate())]),
        });
        let router = {
            let (a, b) = (issuer.clone(), issuer.clone());
            Router::new()
                .route(
                    "/.well-known/openid-configuration",
                    get(move || {
                        let i = a.clone();
                        async move { Json(i.discovery()) }
                    }),
                )
                .route(
                    "/openid/v1/jwks",
                    get(move || {
                        let i = b.clone();
                        async move { Json(i.jwks()) }
                    }),
                )
        };
        tokio::spawn(async move { axum::serve(crate::nodelay(listener), router).await });
        Ok(issuer)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/openid/v1/jwks", self.url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })
    }

    fn jwks(&self) -> Value {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        json!({"keys": keys.iter().map(|k| k.jwk(None)).collect::<Vec<_>>()})
    }

    /// A new signing key replaces every other: tokens signed before no longer verify.
    pub fn rotate(&self) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) =
            vec![Arc::new(SigningKey::generate())];
    }

    /// A projected token for `subject` (`system:serviceaccount:<ns>:<name>`), valid `lifetime`
    /// seconds from now (negative: already expired).
    pub fn token(&self, subject: &str, audience: &str, lifetime: i64) -> String {
        let key = {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            keys[keys.len() - 1].clone()
        };
        let now = crate::unix_now() as i64;
        let claims = json!({
            "aud": [audience], "iss": self.url, "sub": subject,
            "iat": now, "nbf": now, "exp": now + lifetime,
            "kubernetes.io": {"namespace": "mcp-gateway", "serviceaccount": {"name": "mcp-authz"}},
        });
        key.sign_jwt(
            &json!({"alg": "RS256", "kid": key.kid}),
            &claims.to_string(),
        )
    }
}
