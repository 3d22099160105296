//! An HTTPS server on loopback that publishes Client ID Metadata Documents for the login tests:
//! its certificate is for 127.0.0.1, from a test CA whose PEM the gateway is given as
//! `oauth.client_metadata_documents.ca_file`. It answers HTTP/1.1, one request per connection,
//! with what `publish` set for a path, and counts the fetches of each path.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a path answers.
#[derive(Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(body: &serde_json::Value) -> Self {
        Self {
            status: 200,
            content_type: "application/json".into(),
            headers: Vec::new(),
            body: body.to_string(),
        }
    }
}

#[derive(Default)]
struct Site {
    answers: HashMap<String, Answer>,
    hits: HashMap<String, u32>,
}

pub struct DocServer {
    pub base: String,
    pub ca_file: PathBuf,
    site: Arc<Mutex<Site>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DocServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DocServer {
    pub async fn start(dir: &std::path::Path) -> Self {
        let pki = super::helpers::Pki::new(&dir.join("docs-pki"));
        let ca_file = dir.join("docs-ca.pem");
        std::fs::write(&ca_file, pki.ca_pem()).expect("write CA");
        let acceptor = pki.acceptor("127.0.0.1", false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        let site = Arc::new(Mutex::new(Site::default()));
        let serving = site.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let site = serving.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let answer = {
                        let mut s = site.lock().expect("site");
                        *s.hits.entry(path.clone()).or_default() += 1;
                        s.answers.get(&path).cloned()
                    };
                    let a = answer.unwrap_or(Answer {
                        status: 404,
                        content_type: "text/plain".into(),
                        headers: Vec::new(),
                        body: "not found".into(),
                    });
                    let mut resp = format!(
                        "HTTP/1.1 {} X\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
                        a.status,
                        a.content_type,
                        a.body.len()
                    );
                    for (k, v) in &a.headers {
                        resp.push_str(&format!("{k}: {v}\r\n"));
                    }
                    resp.push_str("\r\n");
                    resp.push_str(&a.body);
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            base,
            ca_file,
            site,
            task,
        }
    }

    /// `{base}{path}`, answering `answer`.
    pub fn publish(&self, path: &str, answer: Answer) -> String {
        self.site
            .lock()
            .expect("site")
            .answers
            .insert(path.to_owned(), answer);
        format!("{}{path}", self.base)
    }

    /// A client's document at `path`, naming its own URL as client_id.
    pub fn publish_client(&self, path: &str, name: &str, redirect_uris: &[&str]) -> String {
        let url = format!("{}{path}", self.base);
        self.publish(
            path,
            Answer::json(&serde_json::json!({
                "client_id": url,
                "client_name": name,
                "redirect_uris": redirect_uris,
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
                "application_type": "native",
            })),
        )
    }

    pub fn hits(&self, path: &str) -> u32 {
        self.site
            .lock()
            .expect("site")
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}
