//! Groups overage resolved through (the stand-in) Microsoft Graph.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use mcp_authz_testkit::standin::{Authority, Client, GraphFaults};
use serde_json::json;

use crate::support::helpers::*;

pub(super) const APP: &str = "mcp-authz-graph";

/// A token with an overage: the groups are only in (stand-in) Graph.
pub(super) fn overage_token(authority: &Authority, oid: &str, groups: Vec<String>) -> String {
    let req = json!({"tid": TID, "oid": oid, "aud": API_CLIENT_ID, "scp": SCOPE, "groups": groups, "overage": true});
    authority
        .mint(&serde_json::from_value(req).expect("req"))
        .expect("mint")
}

struct GraphEnv {
    authority: Arc<Authority>,
    inst: Instance,
    _dir: tempfile::TempDir,
}

fn graph_section(url: &str, method: &str, ttl: u64, stale: u64) -> String {
    format!(
        "graph: {{base_url: \"{url}\", client_id: {APP}, client_secret: s3cret, method: {method}, cache_ttl_seconds: {ttl}, max_stale_seconds: {stale}, timeout_ms: 2000, max_retries: 2, max_retry_wait_ms: 2000}}\n"
    )
}

/// The stand-in with the Graph app registered (with `roles`), a policy file, and the config text.
pub(super) async fn setup(
    method: &str,
    ttl: u64,
    stale: u64,
    roles: &[&str],
) -> (Arc<Authority>, tempfile::TempDir, String) {
    let (authority, url) = standin().await;
    authority.register_client(
        APP,
        Client {
            secret: "s3cret".into(),
            graph_roles: roles.iter().map(|r| r.to_string()).collect(),
            certificate: None,
            federated: Vec::new(),
            redirect_uris: Vec::new(),
        },
    );
    let dir = tempfile::tempdir().expect("tmp");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("policy");
    let cfg = config_yaml(&url, &policy, None, 300) + &graph_section(&url, method, ttl, stale);
    (authority, dir, cfg)
}

async fn start(method: &str, ttl: u64, stale: u64, roles: &[&str]) -> GraphEnv {
    let (authority, dir, cfg) = setup(method, ttl, stale, roles).await;
    let inst = Instance::start(&cfg).await;
    GraphEnv {
        authority,
        inst,
        _dir: dir,
    }
}

impl GraphEnv {
    /// A token with an overage: the groups are only in (stand-in) Graph.
    fn overage_token(&self, oid: &str, groups: Vec<String>) -> String {
        overage_token(&self.authority, oid, groups)
    }
    fn calls(&self) -> u64 {
        self.authority.graph_calls.load(Relaxed)
    }
    async fn checker(&self) -> Checker {
        Checker::connect(self.inst.addrs.grpc.expect("grpc")).await
    }
}

fn many_groups(n: usize, eng_at: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i == eng_at {
                ENG_GROUP.to_string()
            } else {
                format!("00000000-0000-4000-8000-{i:012}")
            }
        })
        .collect()
}

#[tokio::test]
async fn a_group_on_a_later_page_authorizes_a_user_with_500_groups() {
    let env = start("transitive_member_of", 300, 3600, &["GroupMember.Read.All"]).await;
    env.authority.graph_page_size.store(100, Relaxed);
    let token = env.overage_token(BOB, many_groups(500, 450));
    let mut payload = Vec::new();
    let parsed = mcp_authz::identity::parse_jwt(&token, &mut payload).expect("jwt");
    assert!(
        parsed.claims.groups.is_none(),
        "the token itself lists no groups"
    );
    let mut c = env.checker().await;
    let r = c
        .check(Some(&token), "github", &initialize_body(1), None)
        .await
        .expect("check");
    assert_eq!(r.http_status, 200, "{r:?}");
    assert_eq!(env.calls(), 5, "500 groups in pages of 100");
    // Warm cache: no more Graph calls.
    for _ in 0..20 {
        assert_eq!(
            c.check(Some(&token), "github", &initialize_body(1), None)
                .await
                .expect("check")
                .http_status,
            200
        );
    }
    assert_eq!(env.calls(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_first_requests_make_one_graph_call() {
    let env = start("get_member_objects", 300, 3600, &["GroupMember.Read.All"]).await;
    env.authority.set_graph_faults(GraphFaults {
        delay_ms: 300,
        ..Default::default()
    });
    let token = env.overage_token(BOB, many_groups(250, 7));
    let before = env.calls();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let c = env.checker().await;
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut inner = Vec::new();
            for _ in 0..100 {
                let mut c2 = c.clone_client();
                let t = token.clone();
                inner.push(tokio::spawn(async move {
                    c2.check(Some(&t), "github", &initialize_body(1), None)
                        .await
                }));
            }
            let mut ok = 0;
            for h in inner {
                if h.await.expect("join").expect("check").http_status == 200 {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += t.await.expect("join");
    }
    assert_eq!(allowed, 1000);
    assert_eq!(
        env.calls() - before,
        1,
        "concurrent misses for one user share one Graph call"
    );
}

#[tokio::test]
async fn tokens_that_list_their_groups_never_touch_graph() {
    let env = start("get_member_objects", 300, 3600, &["GroupMember.Read.All"]).await;
    let mut c = env.checker().await;
    let token = mint_user(&env.authority, BOB, &[ENG_GROUP]);
    for _ in 0..10 {
        assert_eq!(
            c.check(Some(&token), "github", &initialize_body(1), None)
                .await
                .expect("check")
                .http_status,
            200
        );
    }
    assert_eq!(env.calls(), 0);
    assert_eq!(
        env.authority.token_requests.load(Relaxed),
        0,
        "not even an app token"
    );
}

#[tokio::test]
async fn throttling_honours_retry_after_and_a_long_one_denies_at_once() {
    let env = start("get_member_objects", 300, 3600, &["GroupMember.Read.All"]).await;
    let mut c = env.checker().await;
    env.authority.set_graph_faults(GraphFaults {
        throttle_next: 1,
        retry_after: Some("0.4".into()),
        ..Default::default()
    });
    let token = env.overage_token(BOB, vec![ENG_GROUP.into()]);
    let t0 = Instant::now();
    let r = c
        .check(Some(&token), "github", &initialize_body(1), None)
        .await
        .expect("check");
    assert_eq!(r.http_status, 200, "{r:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "waited {:?}, Retry-After was 0.4 s",
        t0.elapsed()
    );
    assert_eq!(env.calls(), 2);

    // A Retry-After beyond max_retry_wait: no waiting, no guessing: 503 groups_unavailable.
    env.authority.set_graph_faults(GraphFaults {
        throttle_next: 100,
        retry_after: Some("30".into()),
        ..Default::default()
    });
    let other = env.overage_token(ALICE, vec![ENG_GROUP.into()]);
    let t0 = Instant::now();
    let r = c
        .check(Some(&other), "github", &initialize_body(1), None)
        .await
        .expect("check");
    assert_eq!(
        (r.http_status, r.reason.as_str()),
        (503, "groups_unavailable")
    );
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
    // Meanwhile the cached user is unaffected.
    assert_eq!(
        c.check(Some(&token), "github", &initialize_body(1), None)
            .await
            .expect("check")
            .http_status,
        200
    );
}

#[tokio::test]
async fn graph_outage_serves_stale_groups_within_the_bound_then_denies() {
    let env = start("get_member_objects", 1, 3, &["GroupMember.Read.All"]).await;
    let mut c = env.checker().await;
    let token = env.overage_token(BOB, vec![ENG_GROUP.into()]);
    let check = |c: &mut Checker| {
        let t = token.clone();
        let mut c = c.clone_client();
        async move {
            c.check(Some(&t), "github", &initialize_body(1), None)
                .await
                .expect("check")
        }
    };
    assert_eq!(check(&mut c).await.http_status, 200);
    let loaded = Instant::now();
    env.authority.set_graph_faults(GraphFaults {
        down: true,
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        check(&mut c).await.http_status,
        200,
        "stale entry (older than the TTL, within the bound) serves"
    );
    while loaded.elapsed() < Duration::from_millis(3300) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = check(&mut c).await;
    assert_eq!(
        (r.http_status, r.reason.as_str()),
        (503, "groups_unavailable"),
        "beyond the bound: denied, never guessed"
    );
    // An attacker-relevant detail: Graph's error text is not in the answer.
    env.authority.set_graph_faults(GraphFaults::default());
    wait_until(
        "recovery after Graph returns",
        Duration::from_secs(20),
        || {
            let fut = check(&mut c);
            async move { fut.await.http_status == 200 }
        },
    )
    .await;
}

#[tokio::test]
async fn check_config_names_the_missing_graph_permission() {
    for (roles, want) in [
        (vec!["GroupMember.Read.All"], "ok    graph"),
        (vec![], "FAIL  graph"),
    ] {
        let (_authority, _dir, text) = setup("get_member_objects", 300, 3600, &roles).await;
        let cfg = mcp_authz::config::Config::parse(&text, Vec::new()).expect("config");
        let mut out = Vec::new();
        let ok = mcp_authz::cli::check_config(&cfg, std::path::Path::new("c"), &mut out).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains(want), "{out}");
        assert_eq!(ok, roles.len() == 1, "{out}");
        if roles.is_empty() {
            assert!(
                out.contains("Authorization_RequestDenied") && out.contains("GroupMember.Read.All"),
                "{out}"
            );
        }
    }
}

#[tokio::test]
async fn overage_without_graph_is_denied_not_guessed() {
    let env = TestEnv::start(Options::default()).await;
    let token = env.mint(json!({"tid": TID, "oid": BOB, "aud": API_CLIENT_ID, "scp": SCOPE, "groups": [ENG_GROUP], "overage": true}));
    let r = env
        .post("/mcp/github", Some(&token), &initialize_body(1), &[])
        .await;
    assert_eq!((r.status, r.reason()), (403, "groups_unavailable"));
}

#[test]
fn retry_after_parsing() {
    use mcp_authz::groups::graph::parse_retry_after;
    assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
    assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
    assert_eq!(
        parse_retry_after(" 1.25 "),
        Some(Duration::from_millis(1250))
    );
    assert_eq!(parse_retry_after("-1"), None);
    assert_eq!(parse_retry_after("soon"), None);
    assert_eq!(parse_retry_after("NaN"), None);
}

/// Client credentials with a certificate (a signed client assertion) instead of a secret. The
/// key and certificate come from openssl, and so does the thumbprint the stand-in expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_token_with_a_certificate_credential() {
    use base64::Engine;
    let dir = tempfile::tempdir().expect("tmp");
    let (key, cert, public) = (
        dir.path().join("key.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("pub.pem"),
    );
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let p = |x: &std::path::Path| x.to_str().expect("path").to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p(&key),
        "-out",
        &p(&cert),
        "-days",
        "1",
        "-subj",
        "/CN=mcp-authz-test",
    ]);
    openssl(&[
        "x509",
        "-in",
        &p(&cert),
        "-pubkey",
        "-noout",
        "-out",
        &p(&public),
    ]);
    let fingerprint = openssl(&["x509", "-in", &p(&cert), "-noout", "-fingerprint", "-sha1"]);
    let hex: String = fingerprint
        .split('=')
        .nth(1)
        .expect("fingerprint")
        .trim()
        .replace(':', "");
    let sha1: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha1);
    let spki_pem = std::fs::read_to_string(&public).expect("pub");
    let spki_b64: String = spki_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let spki = base64::engine::general_purpose::STANDARD
        .decode(spki_b64)
        .expect("spki");

    let (authority, url) = standin().await;
    authority.register_client(
        APP,
        Client {
            secret: String::new(),
            graph_roles: vec!["GroupMember.Read.All".into()],
            certificate: Some(mcp_authz_testkit::standin::ClientCertificate {
                x5t,
                public_key_der: spki,
            }),
            federated: Vec::new(),
            redirect_uris: Vec::new(),
        },
    );
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("policy");
    let graph = format!(
        "graph: {{base_url: \"{url}\", client_id: {APP}, client_certificate: {{key_file: {}, cert_file: {}}}}}\n",
        p(&key),
        p(&cert)
    );
    let cfg_text = config_yaml(&url, &policy, None, 300) + &graph;
    let cfg = mcp_authz::config::Config::parse(&cfg_text, Vec::new()).expect("config");
    let mut out = Vec::new();
    assert!(
        mcp_authz::cli::check_config(&cfg, std::path::Path::new("c"), &mut out).await,
        "{}",
        String::from_utf8_lossy(&out)
    );

    let inst = Instance::start(&cfg_text).await;
    let mut c = Checker::connect(inst.addrs.grpc.expect("grpc")).await;
    let token = overage_token(&authority, BOB, vec![ENG_GROUP.into()]);
    let r = c
        .check(Some(&token), "github", &initialize_body(1), None)
        .await
        .expect("check");
    assert_eq!(r.http_status, 200, "{r:?}");
    assert_eq!(
        authority.graph_calls.load(Relaxed),
        2,
        "check-config's probe and the lookup"
    );

    // A secret is refused for this app: the certificate is its only credential.
    let bad = cfg_text.replace(
        &format!(
            "client_certificate: {{key_file: {}, cert_file: {}}}",
            p(&key),
            p(&cert)
        ),
        "client_secret: guess",
    );
    let cfg = mcp_authz::config::Config::parse(&bad, Vec::new()).expect("config");
    let mut out = Vec::new();
    assert!(!mcp_authz::cli::check_config(&cfg, std::path::Path::new("c"), &mut out).await);
    assert!(
        String::from_utf8_lossy(&out).contains("invalid_client"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// The app token is renewed ahead of expiry; when the token endpoint is down, the current token
/// keeps being used while it is valid.
#[tokio::test]
async fn a_failed_token_renewal_keeps_the_current_token_while_valid() {
    let (authority, _dir, cfg) =
        setup("get_member_objects", 1, 3600, &["GroupMember.Read.All"]).await;
    // 299 s: inside the five-minute renewal window from the start, so every use tries to renew.
    authority.app_token_lifetime.store(299, Relaxed);
    let inst = Instance::start(&cfg).await;
    let mut c = Checker::connect(inst.addrs.grpc.expect("grpc")).await;
    let token = overage_token(&authority, BOB, vec![ENG_GROUP.into()]);
    assert_eq!(
        c.check(Some(&token), "github", &initialize_body(1), None)
            .await
            .expect("check")
            .http_status,
        200
    );
    assert_eq!(authority.token_requests.load(Relaxed), 1);

    authority.token_endpoint_down.store(true, Relaxed);
    tokio::time::sleep(Duration::from_millis(1100)).await; // the groups (TTL 1 s) need Graph again
    let r = c
        .check(Some(&token), "github", &initialize_body(2), None)
        .await
        .expect("check");
    assert_eq!(r.http_status, 200, "{r:?}");
    assert_eq!(
        authority.token_requests.load(Relaxed),
        2,
        "a renewal was attempted"
    );
    assert_eq!(
        authority.graph_calls.load(Relaxed),
        2,
        "and Graph was called with the current token"
    );

    // During the outage, further lookups do not each hit the token endpoint again.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = c
            .check(Some(&token), "github", &initialize_body(3 + i), None)
            .await
            .expect("check");
        assert_eq!(r.http_status, 200);
    }
    assert_eq!(
        authority.graph_calls.load(Relaxed),
        7,
        "each expired group entry was fetched again"
    );
    assert_eq!(
        authority.token_requests.load(Relaxed),
        2,
        "renewal holds off after a failure"
    );
}

/// Shutdown drains: a Check in flight (held by a slow Graph call) completes with its answer
/// while the server stops accepting new work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_an_in_flight_check() {
    let (authority, _dir, cfg) =
        setup("get_member_objects", 300, 3600, &["GroupMember.Read.All"]).await;
    let inst = Instance::start(&cfg).await;
    let addr = inst.addrs.grpc.expect("grpc");
    let mut c = Checker::connect(addr).await;
    authority.set_graph_faults(GraphFaults {
        delay_ms: 1000,
        ..Default::default()
    });
    let token = overage_token(&authority, BOB, vec![ENG_GROUP.into()]);
    let in_flight = tokio::spawn(async move {
        c.check(Some(&token), "github", &initialize_body(1), None)
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = Instant::now();
    inst.stop().await; // returns once drained
    let answer = in_flight
        .await
        .expect("join")
        .expect("the in-flight Check was not cut off");
    assert_eq!(answer.http_status, 200, "{answer:?}");
    assert!(
        stopped.elapsed() >= Duration::from_millis(600),
        "stop returned before the Check finished: {:?}",
        stopped.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

/// `/metrics` reports decisions, latency, caches, Graph and policy with exact values for a known
/// sequence of Checks.
#[tokio::test]
async fn prometheus_metrics_are_scraped_with_exact_values() {
    let env = start("get_member_objects", 300, 3600, &["GroupMember.Read.All"]).await;
    let mut c = env.checker().await;
    let overage = env.overage_token(BOB, vec![ENG_GROUP.into()]);
    let listed = mint_user(&env.authority, ALICE, &[ENG_GROUP]);
    for token in [&overage, &overage, &overage, &listed] {
        assert_eq!(
            c.check(Some(token), "github", &initialize_body(1), None)
                .await
                .expect("check")
                .http_status,
            200
        );
    }
    for _ in 0..2 {
        c.check(None, "github", &initialize_body(1), None)
            .await
            .expect("check");
    }
    let resp = env
        .inst
        .http
        .get(format!("http://{}/metrics", env.inst.addrs.admin))
        .send()
        .await
        .expect("scrape");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.expect("text");
    for line in [
        "mcp_authz_decisions_total{result=\"allow\",reason=\"allowed\"} 4",
        "mcp_authz_decisions_total{result=\"deny\",reason=\"token_missing\"} 2",
        "mcp_authz_check_duration_seconds_count 6",
        "mcp_authz_token_cache_total{result=\"miss\"} 2",
        "mcp_authz_token_cache_total{result=\"hit\"} 2",
        "mcp_authz_groups_resolutions_total{source=\"graph\"} 1",
        "mcp_authz_groups_resolutions_total{source=\"graph_cache\"} 2",
        "mcp_authz_groups_resolutions_total{source=\"token\"} 1",
        "mcp_authz_graph_calls_total 1",
        "mcp_authz_graph_token_requests_total 1",
        "mcp_authz_jwks_keys 1.0",
        "mcp_authz_ready 1.0",
        "mcp_authz_token_cache_entries 2.0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(
        text.contains("# TYPE mcp_authz_check_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("mcp_authz_policy_version{version=\"") && l.ends_with("} 1")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("mcp_authz_policy_reloads_total ")),
        "{text}"
    );
    // Build information and the process's own figures (the alert rules and a platform's
    // dashboards read them).
    assert!(
        text.lines().any(|l| l
            == format!(
                "mcp_authz_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
        "{text}"
    );
    for name in [
        "mcp_authz_process_cpu_seconds_total ",
        "mcp_authz_process_resident_memory_bytes ",
        "mcp_authz_process_open_fds ",
        "mcp_authz_process_max_fds ",
    ] {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.parse::<f64>().ok());
        // CPU time counts in 10 ms ticks: present, maybe still 0; the others are never 0.
        let least = if name.contains("cpu") { 0.0 } else { 1.0 };
        assert!(
            value.is_some_and(|v| v >= least),
            "{name}: {value:?} in\n{text}"
        );
    }
    assert_eq!(text.lines().last(), Some("# EOF"));
}

/// The Grafana dashboard in `deploy/grafana` and the alert rules in `deploy/prometheus` read
/// only metrics mcp-authz exposes: every
/// name in its expressions has samples in a scrape of an instance with every component on
/// (Graph, on-behalf-of, audit, rate limits).
#[tokio::test]
async fn grafana_dashboard_queries_only_metrics_that_exist() {
    let (authority, dir, mut cfg) =
        setup("get_member_objects", 300, 3600, &["GroupMember.Read.All"]).await;
    authority.register_client(
        API_CLIENT_ID,
        Client {
            secret: API_SECRET.into(),
            graph_roles: Vec::new(),
            certificate: None,
            federated: Vec::new(),
            redirect_uris: Vec::new(),
        },
    );
    std::fs::write(
        dir.path().join("policy.yaml"),
        format!("{POLICY}rate_limits: {{user_per_minute: 1, user_burst_factor: 1}}\n"),
    )
    .expect("policy");
    cfg.push_str(&format!(
        "obo: {{client_id: \"{API_CLIENT_ID}\", client_secret: {API_SECRET}}}\naudit: {{sink: jsonl, file: {}}}\ndecision_log: {{enabled: true}}\n",
        dir.path().join("audit.jsonl").display()
    ));
    let inst = Instance::start(&cfg).await;
    let mut c = Checker::connect(inst.addrs.grpc.expect("grpc")).await;
    let token = overage_token(&authority, BOB, vec![ENG_GROUP.into()]);
    let first = c
        .check(Some(&token), "github", &initialize_body(1), None)
        .await
        .expect("check");
    let second = c
        .check(Some(&token), "github", &initialize_body(2), None)
        .await
        .expect("check");
    assert_eq!((first.http_status, second.http_status), (200, 429));
    let text = scrape_metrics(&inst.http, inst.addrs.admin).await;
    let sampled: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("deploy/grafana/mcp-authz-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queried.extend(metric_names(target["expr"].as_str().expect("expr")));
        }
    }
    assert!(queried.len() > 20, "{queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|n| !sampled.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics with no samples: {missing:?}\n{text}"
    );
    // The alert rules too: an alert on a metric that does not exist never fires.
    let rules = std::fs::read_to_string(repo_path("deploy/prometheus/mcp-authz-rules.yaml"))
        .expect("rules");
    let alerted = metric_names(&rules);
    assert!(alerted.len() >= 12, "{alerted:?}");
    let missing: Vec<&String> = alerted
        .iter()
        .filter(|n| !sampled.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the alert rules read metrics with no samples: {missing:?}\n{text}"
    );
}

/// Every `mcp_authz_…` metric name a PromQL text names, in order.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("mcp_authz_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.push(name);
    }
    names
}
