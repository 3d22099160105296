//! Operating it: the shipped alert rules evaluated by a real Prometheus server (Debian's
//! package, on loopback, in a temp dir) against real mcp-authz instances.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::helpers::{
    Instance, POLICY, closed_addr, config_yaml, free_port, repo_path, standin, wait_until,
};

/// The Prometheus server: `MCP_AUTHZ_TEST_PROMETHEUS`, or `prometheus` on PATH (make test
/// installs Debian's package for promtool, which ships the server too).
fn prometheus_bin() -> String {
    std::env::var("MCP_AUTHZ_TEST_PROMETHEUS").unwrap_or_else(|_| "prometheus".into())
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A replica that never gets its signing keys (the authority does not answer) is not ready;
/// Prometheus scraping both replicas fires McpAuthzNotReady for that one only. The shipped
/// rules are used as they are but for their `for:` durations, set to 0 here (promtool's tests
/// cover those), so the test takes seconds, not minutes.
#[tokio::test]
async fn prometheus_fires_the_shipped_alert_on_a_replica_without_keys() {
    let (_authority, url) = standin().await;
    let dir = tempfile::tempdir().expect("tmp");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("policy");
    let healthy = Instance::start(&config_yaml(&url, &policy, None, 300)).await;
    let dead = format!("http://{}", closed_addr().await);
    let keyless = Instance::start_with(&config_yaml(&dead, &policy, None, 300), false).await;

    let rules = std::fs::read_to_string(repo_path("deploy/prometheus/mcp-authz-rules.yaml"))
        .expect("rules");
    let immediate: String = rules
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for: ") {
                format!("{}for: 0s", &l[..l.len() - l.trim_start().len()])
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.path().join("rules.yaml"), immediate).expect("rules");
    let target = |addr: std::net::SocketAddr, pod: &str| {
        format!("  - targets: ['{addr}']\n    labels: {{namespace: test, pod: {pod}}}\n")
    };
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yaml]\nscrape_configs:\n- job_name: mcp-authz\n  static_configs:\n{}{}",
            target(healthy.addrs.admin, "healthy"),
            target(keyless.addrs.admin, "keyless"),
        ),
    )
    .expect("prometheus.yml");
    let port = free_port();
    let child = Command::new(prometheus_bin())
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "start {} ({e}): apt-get install prometheus",
                prometheus_bin()
            )
        });
    let _prometheus = Prometheus(child);
    let http = reqwest::Client::new();
    let alerts = format!("http://127.0.0.1:{port}/api/v1/alerts");
    wait_until("McpAuthzNotReady firing", Duration::from_secs(30), || {
        let http = http.clone();
        let alerts = alerts.clone();
        async move {
            let Ok(r) = http.get(&alerts).send().await else {
                return false;
            };
            let Ok(v) = r.json::<serde_json::Value>().await else {
                return false;
            };
            v["data"]["alerts"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["labels"]["alertname"] == "McpAuthzNotReady"
                        && x["labels"]["pod"] == "keyless"
                        && x["state"] == "firing"
                })
            })
        }
    })
    .await;
    let v: serde_json::Value = http
        .get(&alerts)
        .send()
        .await
        .expect("alerts")
        .json()
        .await
        .expect("json");
    let firing: Vec<(String, String)> = v["data"]["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|x| {
            (
                x["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                x["labels"]["pod"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        !firing.iter().any(|(_, pod)| pod == "healthy"),
        "an alert fired for the healthy replica: {firing:?}"
    );
    drop(keyless);
    drop(healthy);
}

/// Envoy's metrics are scrapeable without its admin API: the stats listener answers
/// `GET /stats/prometheus` and nothing else (the admin API can dump the config, with its
/// secrets' names, and stop Envoy). Attack: a scraper-reachable port used for
/// /config_dump, /quitquitquit or a POST.
#[tokio::test]
async fn envoy_stats_are_scrapeable_and_the_admin_api_is_not() {
    use crate::support::helpers::{Options, TestEnv};
    let env = TestEnv::start(Options::default()).await;
    let stats = env.envoy_stats();
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{stats}{path}")).send();
    let r = get("/stats/prometheus").await.expect("stats");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("text");
    assert!(
        text.lines()
            .any(|l| l.starts_with("envoy_cluster_upstream_cx_total{")),
        "{}",
        &text[..text.len().min(2000)]
    );
    for path in ["/config_dump", "/stats", "/clusters", "/server_info", "/"] {
        assert_eq!(get(path).await.expect(path).status(), 404, "GET {path}");
    }
    for path in [
        "/quitquitquit",
        "/healthcheck/fail",
        "/stats/prometheus",
        "/logging",
    ] {
        let r = http
            .post(format!("{stats}{path}"))
            .send()
            .await
            .expect(path);
        assert_eq!(r.status(), 404, "POST {path}");
    }
    // Still up, and still ready on the real admin listener.
    assert_eq!(get("/stats/prometheus").await.expect("stats").status(), 200);
    let admin = format!("http://{}/ready", env.envoy_admin());
    assert_eq!(http.get(admin).send().await.expect("ready").status(), 200);
}
