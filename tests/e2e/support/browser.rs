//! A browser without a screen for the login tests: a reqwest client that follows no redirect by
//! itself and keeps cookies the way a browser does for one site (`Set-Cookie` stored, sent back,
//! `Max-Age=0` removes), so each step of a sign-in can be seen and asserted. The real browser
//! test (Chromium) is `login::the_consent_page_works_in_a_real_browser`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::helpers::Reply;

pub struct Browser {
    http: reqwest::Client,
    cookies: Mutex<BTreeMap<String, String>>,
}

/// Where a sign-in ended: at the client's redirect URI, with its query.
#[derive(Debug)]
pub struct Landed {
    pub url: url::Url,
}

impl Landed {
    pub fn param(&self, name: &str) -> Option<String> {
        self.url
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .expect("reqwest client"),
            cookies: Mutex::new(BTreeMap::new()),
        }
    }

    fn cookie_header(&self) -> Option<String> {
        let jar = self.cookies.lock().expect("cookie jar");
        (!jar.is_empty()).then(|| {
            jar.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn keep(&self, reply: &Reply) {
        let mut jar = self.cookies.lock().expect("cookie jar");
        for v in reply.headers.get_all("set-cookie") {
            let Ok(v) = v.to_str() else { continue };
            let mut parts = v.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
                continue;
            };
            let gone = parts.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            if gone || value.is_empty() {
                jar.remove(name);
            } else {
                jar.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    pub fn cookie_names(&self) -> Vec<String> {
        self.cookies
            .lock()
            .expect("cookie jar")
            .keys()
            .cloned()
            .collect()
    }

    /// Sends with this browser's cookies and keeps the ones the answer sets.
    async fn send(&self, mut req: reqwest::RequestBuilder, what: &str) -> Reply {
        if let Some(c) = self.cookie_header() {
            req = req.header("cookie", c);
        }
        let r = Reply::from(req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"))).await;
        self.keep(&r);
        r
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send(self.http.get(url), &format!("GET {url}")).await
    }

    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Reply {
        self.send(self.http.post(url).form(form), &format!("POST {url}"))
            .await
    }

    /// The consent form posted as its buttons would: `decision` is `approve` or `deny`; `action`
    /// replaces the form's own target when given (another replica).
    pub async fn answer(&self, form: &ConsentForm, decision: &str, action: Option<&str>) -> Reply {
        self.post_form(
            action.unwrap_or(&form.action),
            &[
                ("request", &form.request),
                ("csrf", &form.csrf),
                ("decision", decision),
            ],
        )
        .await
    }

    /// Follows redirects from `url` until one leads to `stop_prefix` (the client's redirect
    /// URI), or a page that is not a redirect is shown (`Err` with it).
    pub async fn follow(&self, first: Reply, stop_prefix: &str) -> Result<Landed, Reply> {
        let mut r = first;
        for _ in 0..10 {
            if !(300..400).contains(&r.status) {
                return Err(r);
            }
            let to = r.header("location").expect("a redirect names its Location");
            if to.starts_with(stop_prefix) {
                return Ok(Landed {
                    url: url::Url::parse(to).expect("the redirect is a URL"),
                });
            }
            r = self.get(to).await;
        }
        panic!("more than 10 redirects");
    }

    /// A whole sign-in from the client's authorize URL: the consent page, when shown, answered
    /// with `decision` (`approve` or `deny`), then Entra and the gateway's callback, to the
    /// client's redirect URI. `Err` is a page shown instead of a redirect.
    pub async fn sign_in(
        &self,
        authorize_url: &str,
        decision: &str,
        redirect_prefix: &str,
    ) -> Result<Landed, Reply> {
        let r = self.get(authorize_url).await;
        let r = if r.status == 200 {
            let form = ConsentForm::read(&r.body).ok_or(r)?;
            self.answer(&form, decision, None).await
        } else {
            r
        };
        self.follow(r, redirect_prefix).await
    }
}

/// The consent page's form, read from its HTML.
pub struct ConsentForm {
    pub action: String,
    pub request: String,
    pub csrf: String,
}

impl ConsentForm {
    pub fn read(html: &str) -> Option<Self> {
        let attr_after = |anchor: &str, attr: &str| -> Option<String> {
            let at = html.find(anchor)?;
            let rest = &html[at..];
            let start = rest.find(&format!("{attr}=\""))? + attr.len() + 2;
            let end = rest[start..].find('"')?;
            Some(unescape(&rest[start..start + end]))
        };
        Some(Self {
            action: attr_after("<form", "action")?,
            request: attr_after("name=\"request\"", "value")?,
            csrf: attr_after("name=\"csrf\"", "value")?,
        })
    }
}

fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A PKCE pair (RFC 7636): the verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    use base64::Engine;
    use sha2::Digest;
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut raw = [0u8; 32];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = rand_byte(i);
    }
    let verifier = b64.encode(raw);
    let challenge = b64.encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// A byte that differs per call and position (a test's PKCE verifier need not be secret, only
/// different per login).
fn rand_byte(i: usize) -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(i);
    (h.finish() & 0xff) as u8
}
