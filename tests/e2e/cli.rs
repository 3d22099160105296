//! The `mcp-authz` binary as an operator runs it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::helpers::{
    POLICY, TID, closed_addr, config_yaml, free_port, run_mcp_authz, standin,
};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-authz");

fn write_config(dir: &std::path::Path, authority_url: &str, policy: &str) -> std::path::PathBuf {
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, policy).expect("policy");
    let cfg = dir.join("config.yaml");
    std::fs::write(&cfg, config_yaml(authority_url, &policy_path, None, 300)).expect("config");
    cfg
}

/// `mcp-authz check-config --config cfg` with `env` added: (exit code, stdout, stderr).
async fn check_config(
    cfg: &std::path::Path,
    env: &[(&str, String)],
) -> (Option<i32>, String, String) {
    use std::ffi::OsStr;
    run_mcp_authz(
        &[
            OsStr::new("check-config"),
            OsStr::new("--config"),
            cfg.as_os_str(),
        ],
        env,
    )
    .await
}

/// Likely mistake 1: a directory id that is a GUID, but not one Entra knows (a typo, the
/// client id pasted instead). Entra answers discovery with AADSTS90002; the operator is told
/// which key and where the right value is.
#[tokio::test]
async fn check_config_explains_an_unknown_tenant_id() {
    let (_authority, url) = standin().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(dir.path(), &url, POLICY);
    let typo = "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2d";
    let (code, out, _) =
        check_config(&cfg, &[("MCP_AUTHZ__ENTRA__TENANTS", format!("[{typo}]"))]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("invalid_tenant AADSTS90002"), "{out}");
    assert!(
        out.contains(&format!(
            "fix: entra.tenants[0] ({typo}) is not a directory Entra knows"
        )) && out.contains("Directory (tenant) ID"),
        "{out}"
    );
}

/// Likely mistake 2: the authority cannot be reached (a typo in the host, no egress).
#[tokio::test]
async fn check_config_explains_an_unreachable_authority() {
    let (_authority, url) = standin().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(dir.path(), &url, POLICY);
    let dead = format!("http://{}", closed_addr().await);
    let (code, out, _) = check_config(&cfg, &[("MCP_AUTHZ__ENTRA__AUTHORITY", dead.clone())]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "fix: entra.authority ({dead}) cannot be reached from here"
        )) && out.contains("egress"),
        "{out}"
    );
}

/// Likely mistake 3: no audience (or an empty one): the configuration is refused, naming the
/// key and what belongs in it.
#[tokio::test]
async fn check_config_explains_a_missing_audience() {
    let (_authority, url) = standin().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(dir.path(), &url, POLICY);
    let (code, _, err) = check_config(&cfg, &[("MCP_AUTHZ__ENTRA__AUDIENCES", "[]".into())]).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("entra.audiences: list the API's client id (and App ID URI for v1)"),
        "{err}"
    );
}

/// Likely mistake 4: a typo in the policy file's name: the key, and what a relative path is
/// relative to.
#[tokio::test]
async fn check_config_explains_a_policy_file_that_is_not_there() {
    let (_authority, url) = standin().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(dir.path(), &url, POLICY);
    let (code, out, _) =
        check_config(&cfg, &[("MCP_AUTHZ__POLICY__FILE", "polciy.yaml".into())]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  policy: cannot read"), "{out}");
    assert!(
        out.contains(&format!(
            "fix: policy.file names a file that cannot be read; a relative path is relative to {}",
            dir.path().display()
        )),
        "{out}"
    );
}

/// Likely mistake 5: a database URL that reaches the server but names the wrong database:
/// the server's own reason (a pool alone only says it timed out), the key, and no password.
#[tokio::test]
async fn check_config_explains_a_wrong_database_url() {
    let (_authority, url) = standin().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(dir.path(), &url, POLICY);
    let (admin, _server) = crate::support::pg::TestDb::admin();
    let (base, _) = admin.rsplit_once('/').expect("admin url has a database");
    let mut wrong = url::Url::parse(&format!("{base}/no_such_database")).expect("url");
    let _ = wrong.set_password(Some("s3cret-pw"));
    let (code, out, _) = check_config(
        &cfg,
        &[
            ("MCP_AUTHZ__DATABASE__URL", wrong.to_string()),
            ("MCP_AUTHZ__DATABASE__ACQUIRE_TIMEOUT_MS", "1500".into()),
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  database"), "{out}");
    assert!(
        out.contains("database \"no_such_database\" does not exist")
            && out.contains("fix: check database.url (MCP_AUTHZ__DATABASE__URL)"),
        "{out}"
    );
    assert!(!out.contains("s3cret-pw"), "the password leaked: {out}");
}

/// A newcomer tries an import before there is a database: `--dry-run` compiles the file and
/// lists the rows an empty database would get (it once said only "needs a database section");
/// the real import still needs one.
#[tokio::test]
async fn policy_import_dry_run_needs_no_database() {
    let (_authority, url) = standin().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(dir.path(), &url, POLICY);
    let policy = dir.path().join("policy.yaml");
    let config = cfg.to_str().expect("path");
    let path = policy.to_str().expect("path");
    let (code, out, err) = run_mcp_authz(
        &["policy", "import", path, "--dry-run", "--config", config],
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("+ tenants name=engineering"), "{out}");
    assert!(out.contains("+ mcp_servers name=github"), "{out}");
    let rows = out.lines().filter(|l| l.starts_with("+ ")).count();
    assert!(
        out.contains(&format!(
            "would change {rows} rows (dry run without a database section"
        )),
        "{out}"
    );
    let (code, _, err) = run_mcp_authz(&["policy", "import", path, "--config", config], &[]).await;
    assert_ne!(code, Some(0));
    assert!(
        err.contains("needs a database section (database.url)"),
        "{err}"
    );
    // A file the server would refuse is refused by the dry run too.
    std::fs::write(&policy, "tenants:\n  - name: a\n    servers: [nope]\n").expect("write");
    let (code, _, err) = run_mcp_authz(
        &["policy", "import", path, "--dry-run", "--config", config],
        &[],
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(err.contains("unknown server \"nope\""), "{err}");
}

/// `mcp-authz policy ARGS`.
async fn policy_cmd(args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<&str> = std::iter::once("policy")
        .chain(args.iter().copied())
        .collect();
    run_mcp_authz(&args, &[]).await
}

/// The shipped example cases pass against the shipped example policy, offline, through the
/// gateway's decision function (make test runs them, as a GitOps job would).
#[tokio::test]
async fn policy_test_runs_the_example_cases() {
    let policy = crate::support::helpers::repo_path("deploy/examples/policy.yaml");
    let cases = crate::support::helpers::repo_path("deploy/examples/policy-tests.yaml");
    let (code, out, err) = policy_cmd(&[
        "test",
        policy.to_str().expect("path"),
        cases.to_str().expect("path"),
        "--tenant",
        TID,
    ])
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("9 cases: 9 passed, 0 failed"), "{out}");
    assert!(
        out.contains("ok    nobody deletes a repository through the gateway: deny (tool_denied)"),
        "{out}"
    );
    // --config compiles against its entra.tenants, as the server does.
    let (code, out, err) = policy_cmd(&[
        "test",
        policy.to_str().expect("path"),
        cases.to_str().expect("path"),
        "--config",
        crate::support::helpers::repo_path("deploy/examples/config.yaml")
            .to_str()
            .expect("path"),
    ])
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(!out.contains("note  compiled without"), "{out}");
}

/// A case that does not get the answer it expects fails the run (exit 1) and says what it
/// wanted, what it got and the rows behind it; a case that cannot be asked fails too.
#[tokio::test]
async fn policy_test_reports_each_failing_case() {
    let dir = tempfile::tempdir().expect("tmp");
    let policy = crate::support::helpers::repo_path("deploy/examples/policy.yaml");
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        format!(
            "tid: {TID}\ncases:\n  - name: wrongly expected\n    user: 00000000-0000-4000-8000-000000000b0b\n    groups: [e0000000-0000-4000-8000-0000000000e1]\n    server: github\n    tool: delete_repository\n    expect: allow\n  - name: wrong tenant\n    user: 00000000-0000-4000-8000-000000000b0b\n    groups: [e0000000-0000-4000-8000-0000000000e1]\n    server: github\n    expect: allow\n    tenant: sales\n  - name: not a group id\n    user: 00000000-0000-4000-8000-000000000b0b\n    groups: [engineers]\n    server: github\n    expect: deny\n  - name: right\n    user: 00000000-0000-4000-8000-000000000b0b\n    groups: [e0000000-0000-4000-8000-0000000000e1]\n    server: github\n    expect: allow\n"
        ),
    )
    .expect("write");
    let (code, out, _) = policy_cmd(&[
        "test",
        policy.to_str().expect("path"),
        cases.to_str().expect("path"),
        "--tenant",
        TID,
    ])
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "FAIL  wrongly expected\n        want: allow\n        got:  deny (tool_denied)"
        ),
        "{out}"
    );
    assert!(out.contains("        row:  tool_rules[0]"), "{out}");
    assert!(out.contains("FAIL  wrong tenant\n        want: allow as sales\n        got:  allow as engineering (write)"), "{out}");
    assert!(
        out.contains("got:  not asked: group \"engineers\" is not a group object id (GUID)"),
        "{out}"
    );
    assert!(
        out.contains("ok    right: allow as engineering (write)"),
        "{out}"
    );
    assert!(out.contains("4 cases: 1 passed, 3 failed"), "{out}");
    // A key the case format does not have is refused, not ignored.
    std::fs::write(&cases, "cases:\n  - name: x\n    user: u\n    server: github\n    expect: allow\n    tools: echo\n").expect("write");
    let (code, _, err) = policy_cmd(&[
        "test",
        policy.to_str().expect("path"),
        cases.to_str().expect("path"),
        "--tenant",
        TID,
    ])
    .await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("unknown field `tools`"), "{err}");
}

/// `policy validate` compiles a file as the server would, without a database or a network:
/// every problem on a line of its own, exit 1.
#[tokio::test]
async fn policy_validate_lists_every_problem() {
    let policy = crate::support::helpers::repo_path("deploy/examples/policy.yaml");
    let (code, out, err) =
        policy_cmd(&["validate", policy.to_str().expect("path"), "--tenant", TID]).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("ok    policy") && out.contains("3 servers, 2 tenants"),
        "{out}"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "tenants:\n  - name: a\n    servers: [nope]\ngroup_grants:\n  - {group: not-a-guid, tenant: a, access_level: read}\n",
    )
    .expect("write");
    let (code, out, _) = policy_cmd(&["validate", bad.to_str().expect("path")]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("note  compiled without allowed directories"),
        "{out}"
    );
    assert!(
        out.contains("FAIL  tenants[0] a: unknown server \"nope\"")
            || out.contains("unknown server \"nope\""),
        "{out}"
    );
    assert!(
        out.contains("is not an Entra group object id (GUID)"),
        "{out}"
    );
    assert_eq!(out.matches("FAIL  ").count(), 2, "{out}");
}

/// The decision log (issue: decision logs where log pipelines read them): every denial and
/// the sampled share of allows, one JSON line each on stdout, with the audit trail's fields and
/// never the token. At rate 0 only denials are written; at 1 every decision.
#[tokio::test]
async fn decision_log_writes_denials_and_sampled_allows_to_stdout() {
    use crate::support::helpers::{
        BOB, Checker, ENG_GROUP, initialize_body, mint_user, tool_call_body,
    };
    let (authority, url) = standin().await;
    let token = mint_user(&authority, BOB, &[ENG_GROUP]);
    for (rate, allows, groups) in [("0.0", 0, "true"), ("1.0", 1, "false")] {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = write_config(dir.path(), &url, POLICY);
        let served = Served::start(
            &cfg,
            &[
                ("MCP_AUTHZ__DECISION_LOG__ENABLED", "true"),
                ("MCP_AUTHZ__DECISION_LOG__ALLOW_SAMPLE_RATE", rate),
                ("MCP_AUTHZ__DECISION_LOG__INCLUDE_GROUPS", groups),
                ("MCP_AUTHZ__LISTEN__DRAIN_SECONDS", "1"),
            ],
            Stdio::piped(),
        )
        .await;
        let (http, admin) = (&served.http, &served.admin);
        let mut checker = Checker::connect(served.grpc.parse().expect("grpc address")).await;
        let allowed = checker
            .check(Some(&token), "github", &initialize_body(1), None)
            .await
            .expect("check");
        assert_eq!(allowed.http_status, 200);
        let denied = checker
            .check(
                Some(&token),
                "github",
                &tool_call_body(2, "delete_repository"),
                None,
            )
            .await
            .expect("check");
        assert_eq!(denied.http_status, 403);
        let anonymous = checker
            .check(None, "github", &initialize_body(3), None)
            .await
            .expect("check");
        assert_eq!(anonymous.http_status, 401);
        let metrics = http
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        assert!(
            metrics.contains("mcp_authz_decision_log_lines_written_total")
                && metrics
                    .contains("mcp_authz_decision_log_lines_dropped_total{cause=\"queue_full\"} 0"),
            "{metrics}"
        );
        // SIGTERM: the writer writes what is queued before the process exits.
        drop(checker);
        served.sigterm();
        let out = served.child.wait_with_output().expect("serve exits");
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains(&token), "a token reached the decision log");
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
            .collect();
        let reasons: Vec<&str> = lines.iter().filter_map(|l| l["reason"].as_str()).collect();
        assert_eq!(lines.len(), 2 + allows, "rate {rate}: {stdout}");
        assert!(
            reasons.contains(&"tool_denied") && reasons.contains(&"token_missing"),
            "{stdout}"
        );
        assert_eq!(
            reasons.contains(&"allowed"),
            allows == 1,
            "rate {rate}: {stdout}"
        );
        let denial = lines
            .iter()
            .find(|l| l["reason"] == "tool_denied")
            .expect("denial");
        assert_eq!(denial["result"], "deny");
        assert_eq!(denial["user_oid"], BOB);
        assert_eq!(denial["server"], "github");
        assert_eq!(denial["tool"], "delete_repository");
        // The groups decided with (for policy replay), unless left out.
        match groups {
            "true" => assert_eq!(denial["groups"], serde_json::json!([ENG_GROUP])),
            _ => assert!(denial.get("groups").is_none(), "{denial}"),
        }
        assert!(
            denial["decision_id"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
    }
}

#[test]
fn version_flag_prints_the_version() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("mcp-authz {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn check_config_reports_each_check() {
    let (_authority, url) = standin().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(dir.path(), &url, POLICY);

    let run = |args: Vec<String>, env: Vec<(&'static str, String)>| {
        let mut c = tokio::process::Command::new(BIN);
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        async move { c.output().await.expect("run mcp-authz") }
    };
    let arg = |s: &str| vec!["check-config".to_string(), "--config".into(), s.into()];

    let ok = run(arg(&cfg.display().to_string()), vec![]).await;
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("ok    policy"), "{stdout}");
    assert!(stdout.contains("3 servers, 2 tenants"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "ok    discovery {url}/{TID}/v2.0/.well-known/openid-configuration"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("1 signing keys"), "{stdout}");
    assert!(stdout.contains("config check passed"));

    // An environment override that breaks validation: exit 64 and the reason.
    let bad = run(
        arg(&cfg.display().to_string()),
        vec![("MCP_AUTHZ__ENTRA__TENANTS", "[contoso]".into())],
    )
    .await;
    assert_eq!(bad.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("entra.tenants: \"contoso\" is not a GUID")
    );

    // An unknown key is an error, not silently ignored.
    let typo = run(
        arg(&cfg.display().to_string()),
        vec![("MCP_AUTHZ__ENTRA__AUDIENCE", "[x]".into())],
    )
    .await;
    assert_eq!(typo.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&typo.stderr).contains("unknown field `audience`"),
        "{}",
        String::from_utf8_lossy(&typo.stderr)
    );

    // The issuer unreachable: exit 1 with the failing check named.
    let dead = format!("http://{}", closed_addr().await);
    let down = run(
        arg(&cfg.display().to_string()),
        vec![("MCP_AUTHZ__ENTRA__AUTHORITY", dead)],
    )
    .await;
    let stdout = String::from_utf8_lossy(&down.stdout);
    assert_eq!(down.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  discovery/JWKS"), "{stdout}");
    assert!(stdout.contains("config check FAILED"));

    // Redis: reachable is reported; unreachable fails the check with the fallback stated.
    let redis = crate::support::redis_server::RedisServer::start();
    let with_redis = run(
        arg(&cfg.display().to_string()),
        vec![("MCP_AUTHZ__RATE_LIMIT__REDIS_URL", redis.url())],
    )
    .await;
    let stdout = String::from_utf8_lossy(&with_redis.stdout);
    assert!(with_redis.status.success(), "{stdout}");
    assert!(stdout.contains("ok    redis reachable"), "{stdout}");
    let port = redis.port;
    drop(redis);
    let no_redis = run(
        arg(&cfg.display().to_string()),
        vec![(
            "MCP_AUTHZ__RATE_LIMIT__REDIS_URL",
            format!("redis://:s3cret@127.0.0.1:{port}/0"),
        )],
    )
    .await;
    let stdout = String::from_utf8_lossy(&no_redis.stdout);
    assert_eq!(no_redis.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  redis"), "{stdout}");
    assert!(!stdout.contains("s3cret"), "the password leaked: {stdout}");

    // A policy that does not compile: exit 1, every problem listed.
    let dir2 = tempfile::tempdir().expect("tmp");
    let cfg2 = write_config(
        dir2.path(),
        &url,
        "tenants:\n  - name: a\n    servers: [nope]\ngroup_grants:\n  - {group: not-a-guid, tenant: a, access_level: read}\n",
    );
    let badpol = run(arg(&cfg2.display().to_string()), vec![]).await;
    let stdout = String::from_utf8_lossy(&badpol.stdout);
    assert_eq!(badpol.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("2 problems"), "{stdout}");
    assert!(stdout.contains("unknown server \"nope\""), "{stdout}");
}

/// `mcp-authz serve` as an operator starts it, JSON logs on stderr (read line by line into
/// `logs`), ready before this returns.
struct Served {
    child: std::process::Child,
    logs: std::sync::mpsc::Receiver<String>,
    /// The lines up to and including "mcp-authz serving".
    startup: Vec<String>,
    /// From the "mcp-authz serving" line.
    grpc: String,
    admin: String,
    http: reqwest::Client,
}

impl Served {
    async fn start(cfg: &std::path::Path, env: &[(&str, &str)], stdout: Stdio) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(cfg)
            .env("MCP_AUTHZ__LOG__FORMAT", "json")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(stdout)
            .spawn()
            .expect("spawn serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, logs) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut startup = Vec::new();
        let (grpc, admin) = loop {
            let line = logs
                .recv_timeout(Duration::from_secs(20))
                .expect("serve logs");
            startup.push(line.clone());
            if line.contains("mcp-authz serving") {
                let field = |name: &str, end: char| {
                    let at = line.find(name).expect("address in log") + name.len();
                    let rest = &line[at..];
                    rest[..rest.find(end).expect("end")].to_string()
                };
                break (field("grpc: Some(", ')'), field("admin: ", ','));
            }
        };
        let http = reqwest::Client::new();
        crate::support::helpers::wait_until("ready", Duration::from_secs(20), || {
            let http = http.clone();
            let url = format!("http://{admin}/readyz");
            async move { http.get(url).send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        Served {
            child,
            logs,
            startup,
            grpc,
            admin,
            http,
        }
    }

    fn sigterm(&self) {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(kill.success());
    }
}

/// `serve` as a process: becomes ready, drains and exits 0 on SIGTERM.
#[tokio::test]
async fn serve_becomes_ready_and_stops_on_sigterm() {
    let (_authority, url) = standin().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(dir.path(), &url, POLICY);
    let mut served = Served::start(&cfg, &[], Stdio::null()).await;
    let health = served
        .http
        .get(format!("http://{}/healthz", served.admin))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    served.sigterm();
    let started = Instant::now();
    loop {
        if let Some(status) = served.child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines: Vec<String> = served.logs.try_iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("shutdown requested")),
        "{lines:?}"
    );
}

/// Shadow mode is loud: a warning naming the servers when the policy is installed at start,
/// and again on every reload while it lasts; none once it is off.
#[tokio::test]
async fn shadow_mode_is_logged_at_start_and_on_every_reload() {
    let (_authority, url) = standin().await;
    let dir = tempfile::tempdir().expect("tmp");
    let shadowed = POLICY.replace("  - name: github\n", "  - name: github\n    shadow: true\n");
    assert_ne!(shadowed, POLICY);
    let cfg = write_config(dir.path(), &url, &shadowed);
    let served = Served::start(&cfg, &[], Stdio::null()).await;
    let shadow_lines = |wait: Duration| {
        let until = Instant::now() + wait;
        let mut n = 0;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match served.logs.recv_timeout(left) {
                Ok(l) if l.contains("SHADOW MODE") && l.contains("github") => n += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        n
    };
    assert!(
        served
            .startup
            .iter()
            .any(|l| l.contains("SHADOW MODE") && l.contains("github")),
        "no warning at start: {:?}",
        served.startup
    );
    std::fs::write(
        dir.path().join("policy.yaml"),
        format!("{shadowed}\n# edited\n"),
    )
    .expect("edit");
    assert!(
        shadow_lines(Duration::from_secs(3)) >= 1,
        "no warning on reload"
    );
    std::fs::write(dir.path().join("policy.yaml"), POLICY).expect("shadow off");
    assert_eq!(
        shadow_lines(Duration::from_secs(2)),
        0,
        "warned with shadow mode off"
    );
    served.sigterm();
}

/// `make demo` runs this script; its `--check` mode asserts the sample requests' answers and a
/// login with the Python SDK's OAuth client.
#[test]
fn demo_script_check_passes() {
    let bin_dir = std::path::Path::new(BIN).parent().expect("bin dir");
    // The testkit's binaries are another package's: nextest does not build them.
    for bin in ["entra-standin", "mcp-sample-server"] {
        assert!(
            bin_dir.join(bin).is_file(),
            "{} is missing: `cargo build --workspace --bins` first (make test does)",
            bin_dir.join(bin).display()
        );
    }
    let state = tempfile::tempdir().expect("tmp");
    let child = Command::new(crate::support::helpers::repo_path(
        "deploy/examples/demo.sh",
    ))
    .arg("--check")
    .env("BIN", bin_dir)
    .env("ENVOY_BIN", crate::support::helpers::envoy_bin())
    .env("DEMO_PORT", free_port().to_string())
    .env("ENVOY_ADMIN_PORT", free_port().to_string())
    .env("AUTHZ_PORT", free_port().to_string())
    .env("ADMIN_PORT", free_port().to_string())
    .env("METADATA_PORT", free_port().to_string())
    .env("GITHUB_PORT", free_port().to_string())
    .env("JIRA_PORT", free_port().to_string())
    .env("DEMO_STATE", state.path())
    .env("DEMO_PYTHON", crate::support::helpers::peers_python())
    // Its own process group: whatever it starts stays in it, even when orphaned to PID 1.
    .process_group(0)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("run demo.sh");
    let group = child.id();
    let out = child.wait_with_output().expect("demo.sh output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo check passed"), "{stdout}");
    // The 12 sample requests (jira on its own server, routed from its row) and the 3 lines of
    // the Python SDK's login.
    assert_eq!(stdout.matches("  ok   ").count(), 15, "{stdout}");
    assert!(
        stdout.contains("/mcp/jira reached the jira server"),
        "{stdout}"
    );
    // check-config names what mcp-authz will route (legacy is disabled: no route, no warning).
    assert!(
        stdout.contains("check-config: ok    xds: version ")
            && stdout.contains(", 2 routes to Envoy\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the upstream sees alice: True")
            && stdout.contains("replayed: {'status': 400, 'error': 'invalid_grant'}"),
        "{stdout}"
    );
    // The demo's check mode once left the stand-in Entra and the sample server running (their
    // PIDs were collected in a subshell, so its cleanup never saw them).
    let left: Vec<String> = processes_in_group(group)
        .into_iter()
        .map(|(pid, cmd)| format!("{pid} {cmd}"))
        .collect();
    assert!(
        left.is_empty(),
        "demo.sh --check left processes running: {left:?}"
    );
}

/// The processes (pid, command line) whose process group is `group`, from /proc.
fn processes_in_group(group: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp …: comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(group)
            && fields.first() != Some(&"Z")
        {
            let cmd = std::fs::read(entry.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            found.push((pid, cmd));
        }
    }
    found
}
