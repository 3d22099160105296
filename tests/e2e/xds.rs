//! Servers from rows: mcp-authz serves Envoy's routes and clusters (ADS) from the policy, with
//! real Envoy (envoy/envoy-xds.yaml), real PostgreSQL and upstream MCP servers of the three
//! SDKs on their own ports. A row's change is live through Envoy within a second; what Envoy
//! refuses is counted and leaves it on its last good version; mcp-authz gone leaves Envoy on
//! its last routes (and authorization failing closed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_authz_testkit::sample_server::{self, ReceivedLog};
use mcp_authz_testkit::standin::Authority;
use serde_json::Value;
use tokio::process::Child;

use super::support::helpers::*;
use super::support::pg::TestDb;

/// An rmcp upstream on its own port serving one MCP endpoint at `/mcp/svc`, with its own log.
async fn rmcp_upstream() -> (u16, ReceivedLog) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let port = listener.local_addr().expect("addr").port();
    let log = ReceivedLog::default();
    let router = sample_server::router(&["svc".into()], log.clone());
    tokio::spawn(async move { axum::serve(mcp_authz_testkit::nodelay(listener), router).await });
    (port, log)
}

/// Envoy from the xDS bootstrap, and the mcp-authz replica(s) it is programmed by.
struct Gateway {
    dir: tempfile::TempDir,
    authority: Arc<Authority>,
    cfg: String,
    authz: Option<Instance>,
    envoy: Option<Child>,
    rendered: PathBuf,
    envoy_port: u16,
    envoy_url: String,
    admin: String,
    http: reqwest::Client,
}

impl Gateway {
    /// `policy`: the `policy:` (and `database:`) lines of mcp-authz's configuration.
    async fn start(policy: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (authority, idp_url) = standin().await;
        let (grpc, metadata, envoy_port) = (free_port(), free_port(), free_port());
        let envoy_url = format!("http://127.0.0.1:{envoy_port}");
        let cfg = format!(
            r#"
listen: {{grpc: "127.0.0.1:{grpc}", admin: "127.0.0.1:0", metadata: "127.0.0.1:{metadata}", drain_seconds: 1}}
entra:
  authority: {idp_url}
  allow_insecure_authority: true
  tenants: ["{TID}"]
  audiences: ["{API_CLIENT_ID}", "{API_URI}"]
  required_scopes: ["{SCOPE}"]
  http_timeout_ms: 2000
{policy}
mcp: {{public_base_url: "{envoy_url}"}}
xds: {{enabled: true, cors_allowed_origins: ["https://inspector.example"]}}
log: {{format: text}}
"#
        );
        let authz = Instance::start(&cfg).await;
        let rendered = dir.path().join("envoy.yaml");
        let out = std::process::Command::new(repo_path("envoy/render.sh"))
            .arg(repo_path("envoy/envoy-xds.yaml"))
            .env("ENVOY_ADMIN_PORT", free_port().to_string())
            .env("ENVOY_STATS_ADDRESS", "127.0.0.1")
            .env("ENVOY_STATS_PORT", free_port().to_string())
            .env("ENVOY_LISTEN_ADDRESS", "127.0.0.1")
            .env("ENVOY_LISTEN_PORT", envoy_port.to_string())
            .env("ENVOY_NODE_ID", "xds-test-envoy")
            .env("PUBLIC_BASE_URL", &envoy_url)
            .env("AUTHZ_CLUSTER", "mcp_authz_tcp")
            .env("AUTHZ_HOST", "127.0.0.1")
            .env("AUTHZ_PORT", grpc.to_string())
            .env("METADATA_HOST", "127.0.0.1")
            .env("METADATA_PORT", metadata.to_string())
            .output()
            .expect("render.sh");
        assert!(
            out.status.success(),
            "render.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&rendered, &out.stdout).expect("write envoy.yaml");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let (envoy, admin) = launch_envoy(dir.path(), &rendered, envoy_port, &http).await;
        Self {
            dir,
            authority,
            cfg,
            authz: Some(authz),
            envoy: Some(envoy),
            rendered,
            envoy_port,
            envoy_url,
            admin,
            http,
        }
    }

    fn token(&self) -> String {
        mint_user(&self.authority, ALICE, &[ENG_GROUP])
    }

    fn authz(&self) -> &Instance {
        self.authz.as_ref().expect("mcp-authz running")
    }

    /// `initialize` at `/mcp/<route>` through Envoy: the status and the body.
    async fn initialize(&self, route: &str, token: &str) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}/mcp/{route}", self.envoy_url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(initialize_body(1))
            .send()
            .await;
        match r {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    }

    /// A POST through Envoy: status, headers, body.
    async fn post(
        &self,
        route: &str,
        token: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut req = self
            .http
            .post(format!("{}/mcp/{route}", self.envoy_url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_owned());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("post through Envoy");
        let (status, h) = (r.status().as_u16(), r.headers().clone());
        (status, h, r.text().await.unwrap_or_default())
    }

    /// How long until `initialize` at `route` answers `want` (polled every 5 ms, at most
    /// `limit`), and that answer's body.
    async fn until_status(
        &self,
        route: &str,
        token: &str,
        want: u16,
        limit: Duration,
    ) -> (Duration, String) {
        let start = Instant::now();
        loop {
            let (status, body) = self.initialize(route, token).await;
            if status == want {
                return (start.elapsed(), body);
            }
            assert!(
                start.elapsed() < limit,
                "/mcp/{route} still {status} (not {want}) after {limit:?}: {body}\nEnvoy log: {}",
                self.envoy_log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// How long until `initialize` at `route` answers 200 (at most 10 s).
    async fn until_reachable(&self, route: &str, token: &str) -> Duration {
        self.until_status(route, token, 200, Duration::from_secs(10))
            .await
            .0
    }

    async fn config_dump(&self) -> Value {
        self.http
            .get(format!("http://{}/config_dump", self.admin))
            .send()
            .await
            .expect("config_dump")
            .json()
            .await
            .expect("json")
    }

    /// The dynamic route configuration Envoy holds: its version and its route paths.
    async fn envoy_routes(&self) -> (String, Vec<String>) {
        let dump = self.config_dump().await;
        let routes = dump["configs"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.RoutesConfigDump")
            })
            .and_then(|c| c["dynamic_route_configs"].get(0))
            .cloned()
            .unwrap_or(Value::Null);
        let paths = routes["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| r["match"]["path_separated_prefix"].as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        (
            routes["version_info"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            paths,
        )
    }

    /// The dynamic clusters Envoy holds, by name.
    async fn envoy_clusters(&self) -> Vec<String> {
        let dump = self.config_dump().await;
        dump["configs"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump")
            })
            .and_then(|c| c["dynamic_active_clusters"].as_array())
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["cluster"]["name"].as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn envoy_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    async fn xds_status(&self, i: &Instance) -> Value {
        i.status().await["xds"].clone()
    }

    async fn restart_envoy(&mut self) {
        if let Some(mut e) = self.envoy.take() {
            let _ = e.kill().await;
        }
        let (envoy, admin) =
            launch_envoy(self.dir.path(), &self.rendered, self.envoy_port, &self.http).await;
        self.envoy = Some(envoy);
        self.admin = admin;
    }
}

fn p99(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    (at(0.5), at(0.99), samples[samples.len() - 1])
}

/// One tenant whose engineers may use the servers granted to it.
fn seed() -> String {
    format!(
        "INSERT INTO tenants (name) VALUES ('eng');
         INSERT INTO group_tenants (entra_group_id, tenant, access_level) VALUES ('{ENG_GROUP}', 'eng', 'write');"
    )
}

/// `cfg` with its `listen:` line replaced (a second replica on ports of its own) and, when
/// given, its `policy:` line.
fn variant(cfg: &str, listen: &str, policy: Option<&str>) -> String {
    cfg.lines()
        .map(|l| {
            if l.starts_with("listen:") {
                listen.to_owned()
            } else if let (true, Some(p)) = (l.starts_with("policy:"), policy) {
                p.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const OWN_PORTS: &str = "listen: {grpc: \"127.0.0.1:0\", admin: \"127.0.0.1:0\", drain_seconds: 1}";

/// A server row with its upstream and its grant, in one statement (as README shows it).
fn add_server(name: &str, endpoints: &str, path: Option<&str>) -> String {
    let path = path.map(|p| format!("'{p}'")).unwrap_or("NULL".into());
    format!(
        "WITH s AS (INSERT INTO mcp_servers (name, route_key, upstream_endpoints, upstream_path)
                    VALUES ('{name}', '{name}', ARRAY[{endpoints}], {path}) RETURNING name)
         INSERT INTO tenant_servers (tenant, server) SELECT 'eng', name FROM s"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_row_is_a_route_through_envoy_within_a_second() {
    let db = TestDb::create().await;
    db.exec(&seed()).await;
    let (a_port, a_log) = rmcp_upstream().await;
    let (b_port, b_log) = rmcp_upstream().await;
    let peers_dir = tempfile::tempdir().expect("tmp");
    let shape = sample_server::Shape::default();
    let (_py, py_port) = Upstream::Python
        .spawn(peers_dir.path(), "http://127.0.0.1:1/jwks", "unused", shape)
        .await
        .expect("python peer");
    let (_ts, ts_port) = Upstream::TypeScriptNodeHttp
        .spawn(peers_dir.path(), "http://127.0.0.1:1/jwks", "unused", shape)
        .await
        .expect("typescript peer");
    let gw = Gateway::start(&format!(
        "policy: {{source: postgres, db_poll_interval_ms: 500}}\ndatabase: {{url: \"{}\", max_connections: 4, acquire_timeout_ms: 1000, statement_timeout_ms: 2000}}",
        db.url
    ))
    .await;
    let token = gw.token();

    // 30 servers, one row each, to the rmcp upstream at `/mcp/svc` (a prefix rewrite): from the
    // commit to the first 200 through Envoy.
    let mut took = Vec::new();
    for i in 0..30 {
        let name = format!("s{i:02}");
        db.exec(&add_server(
            &name,
            &format!("'127.0.0.1:{a_port}'"),
            Some("/mcp/svc"),
        ))
        .await;
        took.push(gw.until_reachable(&name, &token).await);
    }
    let (p50, p99, max) = p99(&mut took);
    println!("row → route through Envoy, 30 trials: p50 {p50:?}, p99 {p99:?}, max {max:?}");
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?} over 30 trials");
    assert!(
        a_log.all().iter().all(|r| r.path.starts_with("/mcp/svc")),
        "the upstream saw the rewritten path only"
    );
    let (_, routes) = gw.envoy_routes().await;
    assert_eq!(routes.len(), 30 + 1, "30 servers and /oauth: {routes:?}");
    assert_eq!(gw.envoy_clusters().await.len(), 30);

    // The Python and TypeScript SDKs' servers, each on its own port, the path unchanged.
    db.exec(&add_server(
        "py",
        &format!("'http://127.0.0.1:{py_port}'"),
        None,
    ))
    .await;
    db.exec(&add_server("ts", &format!("'127.0.0.1:{ts_port}'"), None))
        .await;
    gw.until_reachable("py", &token).await;
    gw.until_reachable("ts", &token).await;
    let (_, body) = gw.initialize("py", &token).await;
    assert!(body.contains("python-peer"), "{body}");
    let (_, body) = gw.initialize("ts", &token).await;
    assert!(body.contains("typescript-peer"), "{body}");

    // UPDATE its endpoint: the traffic moves to the other upstream.
    let before_b = b_log.all().len();
    db.exec(&format!(
        "UPDATE mcp_servers SET upstream_endpoints = ARRAY['127.0.0.1:{b_port}'] WHERE name = 's00'"
    ))
    .await;
    let start = Instant::now();
    while b_log.all().len() == before_b {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "traffic did not move within 1 s"
        );
        gw.initialize("s00", &token).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let a_now = a_log.all().len();
    for _ in 0..5 {
        assert_eq!(gw.initialize("s00", &token).await.0, 200);
    }
    assert_eq!(a_log.all().len(), a_now, "nothing reaches the old endpoint");

    // Disabled: refused within a second, its route and cluster gone from Envoy.
    db.exec("UPDATE mcp_servers SET enabled = false WHERE name = 's01'")
        .await;
    let (_, body) = gw
        .until_status("s01", &token, 403, Duration::from_secs(1))
        .await;
    assert!(
        body.contains("server_disabled") || body.contains("-32"),
        "{body}"
    );
    wait_until("route of s01 removed", Duration::from_secs(1), || async {
        !gw.envoy_routes().await.1.contains(&"/mcp/s01".to_owned())
    })
    .await;
    assert!(
        !gw.envoy_clusters()
            .await
            .contains(&"mcp-server/s01".to_owned())
    );

    // The route alone taken out of Envoy (upstream_enabled false): the server stays in the
    // policy, so an allowed request meets the catch-all's 404, within a second.
    db.exec("UPDATE mcp_servers SET upstream_enabled = false WHERE name = 's02'")
        .await;
    let (_, body) = gw
        .until_status("s02", &token, 404, Duration::from_secs(1))
        .await;
    assert!(body.contains("not routed by the gateway"), "{body}");

    // A second replica on the same rows serves the same version, and Envoy holds it.
    let replica = Instance::start(&variant(&gw.cfg, OWN_PORTS, None)).await;
    let first = gw.xds_status(gw.authz()).await;
    let second = gw.xds_status(&replica).await;
    assert!(first["version"].is_string(), "{first}");
    assert_eq!(first["version"], second["version"]);
    assert_eq!(first["routes"], second["routes"]);
    let (envoy_version, _) = gw.envoy_routes().await;
    assert_eq!(first["version"].as_str(), Some(envoy_version.as_str()));
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_keeps_its_last_config_through_refusals_and_outages() {
    let db = TestDb::create().await;
    db.exec(&seed()).await;
    let (a_port, _a_log) = rmcp_upstream().await;
    let (b_port, _b_log) = rmcp_upstream().await;
    let (c_port, _c_log) = rmcp_upstream().await;
    let mut gw = Gateway::start(&format!(
        "policy: {{source: postgres, db_poll_interval_ms: 500}}\ndatabase: {{url: \"{}\", max_connections: 4, acquire_timeout_ms: 1000, statement_timeout_ms: 2000}}",
        db.url
    ))
    .await;
    let token = gw.token();
    for (name, port) in [("a", a_port), ("b", b_port), ("c", c_port)] {
        db.exec(&add_server(
            name,
            &format!("'127.0.0.1:{port}'"),
            Some("/mcp/svc"),
        ))
        .await;
    }
    for name in ["a", "b", "c"] {
        gw.until_reachable(name, &token).await;
    }
    let version = gw.xds_status(gw.authz()).await["version"].clone();

    // A row the compiler refuses (SNI on a plaintext upstream; the column itself is valid):
    // nothing changes in Envoy, and the policy's refusal is loud.
    db.exec("UPDATE mcp_servers SET upstream_sni = 'b.example' WHERE name = 'b'")
        .await;
    wait_until("the refusal shows", Duration::from_secs(3), || async {
        scrape_metrics(&gw.http, gw.authz().addrs.admin)
            .await
            .contains("mcp_authz_policy_reload_failing 1")
    })
    .await;
    assert_eq!(gw.xds_status(gw.authz()).await["version"], version);
    assert_eq!(gw.initialize("b", &token).await.0, 200);
    db.exec("UPDATE mcp_servers SET upstream_sni = NULL WHERE name = 'b'")
        .await;

    // A configuration Envoy refuses (a CA file it does not have): Envoy's reason is logged and
    // counted, and Envoy keeps its last accepted clusters: every server still answers.
    db.exec(&format!(
        "UPDATE mcp_servers SET upstream_endpoints = ARRAY['https://127.0.0.1:{c_port}'],
                upstream_ca_file = '/nonexistent/mcp-authz-test-ca.pem' WHERE name = 'c'"
    ))
    .await;
    wait_until("Envoy's NACK", Duration::from_secs(5), || async {
        scrape_metrics(&gw.http, gw.authz().addrs.admin)
            .await
            .contains("mcp_authz_xds_responses_total{kind=\"clusters\",result=\"nack\"}")
    })
    .await;
    let envoys = gw.xds_status(gw.authz()).await["envoys"].clone();
    let rejected = envoys
        .as_array()
        .and_then(|es| {
            es.iter()
                .find(|e| e["kind"] == "clusters" && !e["rejected"].is_null())
        })
        .unwrap_or_else(|| panic!("no rejection in {envoys}"));
    assert_eq!(rejected["node"], "xds-test-envoy");
    assert!(
        rejected["rejected"][1]
            .as_str()
            .is_some_and(|r| r.contains("nonexistent")),
        "Envoy's reason: {rejected}"
    );
    assert!(
        scrape_metrics(&gw.http, gw.authz().addrs.admin)
            .await
            .contains("mcp_authz_xds_rejected 1")
    );
    for name in ["a", "b"] {
        assert_eq!(gw.initialize(name, &token).await.0, 200, "{name}");
    }
    db.exec(&format!(
        "UPDATE mcp_servers SET upstream_endpoints = ARRAY['127.0.0.1:{c_port}'],
                upstream_ca_file = NULL WHERE name = 'c'"
    ))
    .await;
    gw.until_reachable("c", &token).await;
    wait_until("the refusal is over", Duration::from_secs(2), || async {
        scrape_metrics(&gw.http, gw.authz().addrs.admin)
            .await
            .contains("mcp_authz_xds_rejected 0")
    })
    .await;

    // mcp-authz down: Envoy keeps its routes, and authorization fails closed (503).
    let (version, routes) = gw.envoy_routes().await;
    gw.authz.take().expect("running").stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = gw.initialize("a", &token).await;
    assert_eq!(status, 503, "fails closed without mcp-authz");
    assert_eq!(gw.envoy_routes().await, (version.clone(), routes.clone()));
    // Back on the same address: Envoy reconnects and traffic flows.
    gw.authz = Some(Instance::start(&gw.cfg).await);
    gw.until_reachable("a", &token).await;

    // Envoy restarted: it gets the current configuration at start.
    db.exec(&add_server(
        "d",
        &format!("'127.0.0.1:{a_port}'"),
        Some("/mcp/svc"),
    ))
    .await;
    gw.until_reachable("d", &token).await;
    gw.restart_envoy().await;
    for name in ["a", "b", "c", "d"] {
        gw.until_reachable(name, &token).await;
    }
    let current = gw.xds_status(gw.authz()).await["version"].clone();
    assert_eq!(Some(gw.envoy_routes().await.0.as_str()), current.as_str());
}

/// The file policy source drives xDS the same way, to the same version as the same policy in
/// rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_policy_file_drives_xds_the_same_way() {
    let (a_port, a_log) = rmcp_upstream().await;
    let (b_port, b_log) = rmcp_upstream().await;
    let dir = tempfile::tempdir().expect("tmp");
    let policy_path = dir.path().join("policy.yaml");
    let policy = |port: u16| {
        format!(
            "tenants: [{{name: eng, servers: [files]}}]
group_grants: [{{group: \"{ENG_GROUP}\", tenant: eng, access_level: write}}]
servers:
- name: files
  upstream: {{endpoints: [\"http://127.0.0.1:{port}/mcp/svc\"], connect_timeout_ms: 1000}}
tool_rules: [{{server: files, tool: \"delete_*\", effect: deny}}]
"
        )
    };
    std::fs::write(&policy_path, policy(a_port)).expect("write policy");
    let gw = Gateway::start(&format!(
        "policy: {{file: {}, reload_interval_ms: 100}}",
        policy_path.display()
    ))
    .await;
    let token = gw.token();
    gw.until_reachable("files", &token).await;
    assert!(!a_log.all().is_empty());
    assert!(a_log.all().iter().all(|r| r.path.starts_with("/mcp/svc")));

    // The routes carry what the static ones do: the list filter (tools/list holds only what
    // the caller may call) and the CORS policy of xds.cors_allowed_origins.
    let (status, headers, _) = gw.post("files", &token, &initialize_body(1), &[]).await;
    assert_eq!(status, 200);
    let sid = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("session id")
        .to_owned();
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let (status, _, _) = gw
        .post("files", &token, initialized, &[("mcp-session-id", &sid)])
        .await;
    assert_eq!(status, 202);
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let (status, _, body) = gw
        .post("files", &token, list, &[("mcp-session-id", &sid)])
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"echo\"") && !body.contains("delete_repository"),
        "{body}"
    );
    for (origin, allowed) in [
        ("https://inspector.example", true),
        ("https://evil.example", false),
    ] {
        let r = gw
            .http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/mcp/files", gw.envoy_url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .await
            .expect("preflight");
        assert_eq!(
            r.headers()
                .get("access-control-allow-origin")
                .and_then(|v| v.to_str().ok()),
            allowed.then_some(origin),
            "{origin}"
        );
    }

    // Edit the file: the traffic moves.
    let before = b_log.all().len();
    write_atomically(&policy_path, &policy(b_port));
    wait_until(
        "traffic on the new endpoint",
        Duration::from_secs(2),
        || async {
            gw.initialize("files", &token).await;
            b_log.all().len() > before
        },
    )
    .await;

    // The same document in rows: the same xDS version.
    let db = TestDb::create().await;
    db.import(&policy(b_port), false).await;
    let from_rows = Instance::start(&variant(
        &gw.cfg,
        OWN_PORTS,
        Some(&format!(
            "policy: {{source: postgres, db_poll_interval_ms: 500}}\ndatabase: {{url: \"{}\", max_connections: 2}}",
            db.url
        )),
    ))
    .await;
    assert_eq!(
        gw.xds_status(gw.authz()).await["version"],
        gw.xds_status(&from_rows).await["version"]
    );
    from_rows.stop().await;
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A TLS front for a plaintext upstream: certificate for `mcp-tls.test` from the test CA, and
/// (with `client_ca`) a client certificate of that CA required. Counts the connections it
/// proxied (past a completed handshake).
async fn tls_front(
    pki: &Pki,
    to: u16,
    require_client_cert: bool,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let acceptor = pki.acceptor("mcp-tls.test", require_client_cert);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let proxied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = proxied.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (port, proxied)
}

/// TLS upstreams are verified: the right CA and name pass, a name the certificate does not
/// carry or the default CA bundle (which does not hold the test CA) fail closed, and a client
/// certificate is presented when the row names one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_upstreams_are_verified_and_can_present_a_client_certificate() {
    let db = TestDb::create().await;
    db.exec(&seed()).await;
    let (plain, log) = rmcp_upstream().await;
    let pki_dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(pki_dir.path());
    let ca = pki_dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, pki.ca_pem()).expect("CA");
    let (open_port, open_count) = tls_front(&pki, plain, false).await;
    let (mtls_port, mtls_count) = tls_front(&pki, plain, true).await;
    let gw = Gateway::start(&format!(
        "policy: {{source: postgres, db_poll_interval_ms: 500}}\ndatabase: {{url: \"{}\", max_connections: 4, acquire_timeout_ms: 1000, statement_timeout_ms: 2000}}",
        db.url
    ))
    .await;
    let token = gw.token();
    let ca = ca.display();
    let client = pki.dir.join("envoy");
    let (cert, key) = (client.join("tls.crt"), client.join("tls.key"));
    db.exec(&format!(
        "{};
         UPDATE mcp_servers SET upstream_sni = 'mcp-tls.test', upstream_ca_file = '{ca}' WHERE name = 'good';
         {};
         UPDATE mcp_servers SET upstream_sni = 'other.test', upstream_ca_file = '{ca}' WHERE name = 'wrong-name';
         {};
         UPDATE mcp_servers SET upstream_sni = 'mcp-tls.test' WHERE name = 'default-ca';
         {};
         UPDATE mcp_servers SET upstream_sni = 'mcp-tls.test', upstream_ca_file = '{ca}',
             upstream_client_cert_file = '{}', upstream_client_key_file = '{}' WHERE name = 'mtls';
         {};
         UPDATE mcp_servers SET upstream_sni = 'mcp-tls.test', upstream_ca_file = '{ca}' WHERE name = 'no-cert'",
        add_server("good", &format!("'https://127.0.0.1:{open_port}'"), Some("/mcp/svc")),
        add_server("wrong-name", &format!("'https://127.0.0.1:{open_port}'"), Some("/mcp/svc")),
        add_server("default-ca", &format!("'https://127.0.0.1:{open_port}'"), Some("/mcp/svc")),
        add_server("mtls", &format!("'https://127.0.0.1:{mtls_port}'"), Some("/mcp/svc")),
        cert.display(),
        key.display(),
        add_server("no-cert", &format!("'https://127.0.0.1:{mtls_port}'"), Some("/mcp/svc")),
    ))
    .await;
    gw.until_reachable("good", &token).await;
    gw.until_reachable("mtls", &token).await;
    let through_open = open_count.load(std::sync::atomic::Ordering::SeqCst);
    let seen = log.all().len();
    // Attack: an upstream whose certificate does not name the server Envoy asked for, or
    // does not chain to the CA the row names (here: the default bundle). Envoy refuses the
    // handshake (503); nothing reaches the upstream.
    for name in ["wrong-name", "default-ca"] {
        let (status, body) = gw.initialize(name, &token).await;
        assert_eq!(status, 503, "{name}: {body}");
    }
    // Attack: a client without the certificate the upstream requires gets no session.
    let (status, body) = gw.initialize("no-cert", &token).await;
    assert_eq!(status, 503, "no-cert: {body}");
    assert_eq!(
        open_count.load(std::sync::atomic::Ordering::SeqCst),
        through_open,
        "a refused handshake was proxied"
    );
    assert_eq!(
        log.all().len(),
        seen,
        "a refused TLS upstream got a request"
    );
    assert!(mtls_count.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}
