//! What the Kubernetes manifests rely on (the manifests themselves are checked by
//! tests/env/check-deploy.sh in `make test`): the image's runtime has what the binary needs,
//! `render-envoy` renders the Envoy template exactly as envoy/render.sh does, and the config the
//! manifests mount is valid with the environment they give it.

use std::process::Command;

use crate::support::helpers::repo_path;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-authz");

/// gcr.io/distroless/cc-debian12 ships glibc 2.36 and libgcc_s, nothing more.
#[test]
fn binary_needs_only_what_distroless_cc_ships() {
    let out = Command::new("objdump")
        .args(["-p", BIN])
        .output()
        .expect("objdump (binutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NEEDED"))
        .map(str::trim)
        .collect();
    assert!(!needed.is_empty(), "no dynamic section?\n{text}");
    let shipped = [
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
    ];
    for lib in &needed {
        assert!(
            shipped.contains(lib),
            "{lib} is not in distroless/cc: {needed:?}"
        );
    }
    // No symbol newer than Debian 12's glibc.
    let out = Command::new("objdump")
        .args(["-T", BIN])
        .output()
        .expect("objdump");
    let text = String::from_utf8_lossy(&out.stdout);
    let newest = text
        .split("GLIBC_")
        .skip(1)
        .filter_map(|s| {
            let v: String = s
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut it = v.split('.').filter_map(|n| n.parse::<u32>().ok());
            Some((it.next()?, it.next().unwrap_or(0)))
        })
        .max()
        .expect("glibc symbols");
    assert!(
        newest <= (2, 36),
        "needs glibc {newest:?}, distroless/cc-debian12 has 2.36"
    );
}

fn k8s_envoy_env(cluster: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ENVOY_ADMIN_PORT", "9901".into()),
        ("ENVOY_LISTEN_ADDRESS", "0.0.0.0".into()),
        ("ENVOY_LISTEN_PORT", "8080".into()),
        ("AUTHZ_CLUSTER", cluster.into()),
        ("AUTHZ_HOST", "mcp-authz-grpc".into()),
        ("AUTHZ_PORT", "9001".into()),
        ("AUTHZ_SOCKET", "/run/mcp-authz/authz.sock".into()),
        ("METADATA_HOST", "127.0.0.1".into()),
        ("METADATA_PORT", "9003".into()),
        ("PUBLIC_BASE_URL", "https://mcp.example.com".into()),
        ("UPSTREAM_HOST", "mcp-servers".into()),
        ("UPSTREAM_PORT", "80".into()),
    ]
}

/// The init container renders with the binary (no shell in the image); tests and `make demo`
/// with envoy/render.sh. Both must give the same file, and both refuse an unset value.
#[test]
fn render_envoy_matches_render_sh_and_refuses_unset_values() {
    let template = repo_path("envoy/envoy.yaml");
    // The third: a TCP setup that sets neither the socket path nor (so the defaults apply)
    // the mcp-authz address, which render.sh once required all the same.
    for (cluster, unset) in [
        ("mcp_authz_tcp", &[][..]),
        ("mcp_authz_uds", &[][..]),
        (
            "mcp_authz_tcp",
            &["AUTHZ_SOCKET", "AUTHZ_HOST", "AUTHZ_PORT"][..],
        ),
    ] {
        let env: Vec<_> = k8s_envoy_env(cluster)
            .into_iter()
            .filter(|(k, _)| !unset.contains(k))
            .collect();
        let by_binary = Command::new(BIN)
            .arg("render-envoy")
            .arg(&template)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("render-envoy");
        assert!(
            by_binary.status.success(),
            "{}",
            String::from_utf8_lossy(&by_binary.stderr)
        );
        let by_script = Command::new(repo_path("envoy/render.sh"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("render.sh");
        assert!(
            by_script.status.success(),
            "{}",
            String::from_utf8_lossy(&by_script.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&by_binary.stdout),
            String::from_utf8_lossy(&by_script.stdout)
        );
        let text = String::from_utf8_lossy(&by_binary.stdout);
        assert!(
            !text
                .match_indices("${")
                .any(|(i, _)| text[i + 2..].starts_with(|c: char| c.is_ascii_uppercase())),
            "a placeholder survived"
        );
    }
    let dir = tempfile::tempdir().expect("tmp");
    let target = dir.path().join("envoy.yaml");
    origins_render_alike_and_wildcards_are_refused_by_both(&template, &target);
    let missing = Command::new(BIN)
        .arg("render-envoy")
        .arg(&template)
        .arg("--output")
        .arg(&target)
        .env_clear()
        .envs(
            k8s_envoy_env("mcp_authz_tcp")
                .into_iter()
                .filter(|(k, _)| *k != "UPSTREAM_HOST"),
        )
        .output()
        .expect("render-envoy");
    assert_eq!(missing.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not set: UPSTREAM_HOST"));
    assert!(!target.exists(), "a half-rendered config was written");
}

/// CORS origins: the binary and render.sh render the same exact matchers, and both refuse a
/// `*` (which would let any site's page drive a signed-in user's MCP client) without writing.
fn origins_render_alike_and_wildcards_are_refused_by_both(
    template: &std::path::Path,
    target: &std::path::Path,
) {
    let render = |origins: &str, script: bool| {
        let mut cmd = if script {
            Command::new(repo_path("envoy/render.sh"))
        } else {
            let mut c = Command::new(BIN);
            c.arg("render-envoy");
            c
        };
        cmd.arg(template)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(k8s_envoy_env("mcp_authz_tcp"))
            .env("CORS_ALLOWED_ORIGINS", origins);
        if !script {
            cmd.arg("--output").arg(target);
        }
        cmd.output().expect("render")
    };
    let origins = "https://inspector.example, http://localhost:6274";
    let (by_binary, by_script) = (render(origins, false), render(origins, true));
    assert!(by_binary.status.success() && by_script.status.success());
    let written = std::fs::read_to_string(target).expect("rendered");
    assert_eq!(written, String::from_utf8_lossy(&by_script.stdout));
    assert!(
        written.contains(
            r#"allow_origin_string_match: [{exact: "https://inspector.example"}, {exact: "http://localhost:6274"}]"#
        ),
        "origins not rendered as exact matchers"
    );
    std::fs::remove_file(target).expect("rm");
    for bad in ["*", "https://ok.example, https://*.example"] {
        for script in [false, true] {
            let out = render(bad, script);
            assert_eq!(out.status.code(), Some(64), "{bad} (script: {script})");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("CORS_ALLOWED_ORIGINS"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!target.exists(), "a config with {bad} was written");
        }
    }
}

/// deploy/kubernetes/base/config.yaml with settings.env and the Secret's keys, as the pods
/// get them, is a valid configuration (shared and sidecar).
#[test]
fn the_kubernetes_config_is_valid_with_the_environment_the_pods_get() {
    let base = repo_path("deploy/kubernetes/base");
    let mut env: Vec<(String, String)> = std::fs::read_to_string(base.join("settings.env"))
        .expect("settings.env")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    env.push((
        "MCP_AUTHZ__DATABASE__URL".into(),
        "postgres://mcp_authz:pw@db:5432/mcp_authz".into(),
    ));
    env.push((
        "MCP_AUTHZ__GRAPH__CLIENT_SECRET".into(),
        "from-the-secret".into(),
    ));
    let mut shared_env = env.clone();
    for (k, file) in [
        ("CERT_FILE", "tls.crt"),
        ("KEY_FILE", "tls.key"),
        ("CLIENT_CA_FILE", "ca.crt"),
    ] {
        shared_env.push((
            format!("MCP_AUTHZ__LISTEN__GRPC_TLS__{k}"),
            format!("/etc/mcp-authz-tls/{file}"),
        ));
    }
    let shared = mcp_authz::config::Config::load_with_env(&base.join("config.yaml"), shared_env)
        .expect("shared config");
    assert_eq!(shared.listen.grpc.map(|a| a.port()), Some(9001));
    assert_eq!(
        shared
            .listen
            .grpc_tls
            .as_ref()
            .map(|t| t.client_ca_file.clone()),
        Some("/etc/mcp-authz-tls/ca.crt".into()),
        "the shared layout takes mTLS clients only"
    );
    assert!(
        shared.listen.drain_seconds < 30,
        "drain must fit the grace period"
    );
    env.push((
        "MCP_AUTHZ__LISTEN__GRPC_UNIX".into(),
        "/run/mcp-authz/authz.sock".into(),
    ));
    env.push((
        "MCP_AUTHZ__LISTEN__METADATA".into(),
        "127.0.0.1:9003".into(),
    ));
    env.push((
        "MCP_AUTHZ__RATE_LIMIT__REDIS_URL".into(),
        "redis://redis:6379/0".into(),
    ));
    let sidecar = mcp_authz::config::Config::load_with_env(&base.join("config.yaml"), env.clone())
        .expect("sidecar config");
    assert!(sidecar.listen.grpc_unix.is_some());
    assert!(sidecar.rate_limit.redis_url.is_some());

    // overlays/sidecar-workload-identity: no secret; its override and what the Azure Workload
    // Identity webhook sets (the annotations' client and tenant id) make Graph use the token.
    let wi_patch = std::fs::read_to_string(repo_path(
        "deploy/kubernetes/overlays/sidecar-workload-identity/workload-identity.yaml",
    ))
    .expect("patch");
    assert!(wi_patch.contains("MCP_AUTHZ__GRAPH__CLIENT_SECRET, $patch: delete"));
    let annotation = |name: &str| {
        wi_patch
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("azure.workload.identity/{name}: "))
            })
            .and_then(|v| v.split('"').nth(1))
            .expect("annotation")
            .to_owned()
    };
    let mut wi_env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k != "MCP_AUTHZ__GRAPH__CLIENT_SECRET")
        .collect();
    wi_env.extend([
        (
            "MCP_AUTHZ__GRAPH__WORKLOAD_IDENTITY__REREAD_SECONDS".to_string(),
            "60".to_string(),
        ),
        ("AZURE_CLIENT_ID".into(), annotation("client-id")),
        ("AZURE_TENANT_ID".into(), annotation("tenant-id")),
        (
            "AZURE_FEDERATED_TOKEN_FILE".into(),
            "/var/run/secrets/azure/tokens/azure-identity-token".into(),
        ),
        (
            "AZURE_AUTHORITY_HOST".into(),
            "https://login.microsoftonline.com/".into(),
        ),
    ]);
    let wi = mcp_authz::config::Config::load_with_env(&base.join("config.yaml"), wi_env)
        .expect("workload identity config");
    let graph = wi.graph.expect("graph");
    assert!(graph.client_secret.is_none());
    assert_eq!(
        graph.workload_identity.and_then(|w| w.token_file),
        Some("/var/run/secrets/azure/tokens/azure-identity-token".into())
    );
}

/// Outside review: anything that reached an upstream could send `x-mcp-user-oid` itself. Both
/// layouts ship a NetworkPolicy that admits to MCP server pods only the gateway's Envoy pods,
/// and those pods carry the label it selects.
#[test]
fn only_the_gateway_may_reach_the_mcp_servers() {
    use serde::Deserialize as _;
    for (overlay, gateway) in [
        ("shared", "envoy-gateway.yaml"),
        ("sidecar", "gateway.yaml"),
    ] {
        let dir = repo_path(&format!("deploy/kubernetes/overlays/{overlay}"));
        let text = std::fs::read_to_string(dir.join("networkpolicy.yaml")).expect("policies");
        let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde_json::Value::deserialize(d).expect("yaml"))
            .collect();
        let upstream = docs
            .iter()
            .find(|d| d["metadata"]["name"] == "mcp-upstreams-from-gateway-only")
            .unwrap_or_else(|| panic!("{overlay}: no upstream NetworkPolicy"));
        let spec = &upstream["spec"];
        assert_eq!(
            spec["podSelector"]["matchLabels"]["mcp-authz/upstream"],
            "true"
        );
        assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress"]));
        let from = &spec["ingress"][0]["from"];
        assert_eq!(
            spec["ingress"].as_array().map(Vec::len),
            Some(1),
            "{overlay}"
        );
        assert_eq!(from.as_array().map(Vec::len), Some(1), "{overlay}");
        assert_eq!(
            from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
            "mcp-gateway"
        );
        let gw = std::fs::read_to_string(dir.join(gateway)).expect("gateway");
        let gw: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&gw)
            .map(|d| serde_json::Value::deserialize(d).expect("yaml"))
            .collect();
        let deployment = gw
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("gateway Deployment");
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"],
            "mcp-gateway",
            "{overlay}: the gateway pods do not carry the label the policy admits"
        );
    }
}

/// The Prometheus Operator's PrometheusRule carries exactly the rules that promtool tests
/// (deploy/prometheus/mcp-authz-rules.yaml), so the two cannot drift; the PodMonitor selects
/// the pods of both layouts by a label they carry and scrapes a port their mcp-authz
/// container names.
#[test]
fn operator_manifests_match_the_rules_and_the_pods() {
    use serde_yaml_ng::Value;
    let read = |p: &str| -> Value {
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo_path(p)).expect(p)).expect(p)
    };
    let rules = read("deploy/prometheus/mcp-authz-rules.yaml");
    let operator = read("deploy/prometheus/operator/prometheusrule.yaml");
    assert_eq!(operator["kind"], Value::from("PrometheusRule"));
    assert_eq!(
        operator["apiVersion"],
        Value::from("monitoring.coreos.com/v1")
    );
    assert_eq!(operator["spec"]["groups"], rules["groups"]);

    let monitor = read("deploy/prometheus/operator/podmonitor.yaml");
    assert_eq!(monitor["kind"], Value::from("PodMonitor"));
    let port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .expect("port");
    let names: Vec<&str> = monitor["spec"]["selector"]["matchExpressions"][0]["values"]
        .as_sequence()
        .expect("values")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for (file, label) in [
        (
            "deploy/kubernetes/overlays/shared/mcp-authz.yaml",
            "mcp-authz",
        ),
        (
            "deploy/kubernetes/overlays/sidecar/gateway.yaml",
            "mcp-gateway",
        ),
    ] {
        let text = std::fs::read_to_string(repo_path(file)).expect(file);
        assert!(names.contains(&label), "{label} not selected");
        assert!(
            text.contains(&format!("labels: {{ app.kubernetes.io/name: {label}"))
                && text.contains(&format!("{{ name: {port}, containerPort: 9002 }}")),
            "{file}: no pod labelled {label} with a port named {port}"
        );
    }
}

/// The Envoy Gateway and Istio recipes (deploy/gateway-api) against the CRD schemas of Envoy
/// Gateway, the Gateway API and Istio (kubernetes-models, from npm), with every key checked to
/// be a field of its schema; and the check itself refuses a misspelt key, a value of the wrong
/// type and a value outside an enum.
#[test]
fn gateway_api_recipes_validate_against_their_crd_schemas() {
    assert!(
        repo_path("tests/peers/typescript/node_modules/@kubernetes-models").is_dir(),
        "the CRD schemas are not installed: run tests/env/ensure-peers.sh (make test does)"
    );
    let validate = |files: &[std::path::PathBuf]| {
        let out = Command::new("node")
            .arg(repo_path("tests/peers/typescript/validate_manifests.mjs"))
            .args(["--untyped", "IstioOperator:spec"])
            .args(files)
            .output()
            .expect("node validate_manifests.mjs");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), report)
    };
    let envoy_gateway = repo_path("deploy/gateway-api/envoy-gateway/mcp-gateway.yaml");
    let istio = repo_path("deploy/gateway-api/istio/mcp-authz.yaml");
    let (ok, report) = validate(&[envoy_gateway.clone(), istio.clone()]);
    assert!(ok, "{report}");
    assert_eq!(report["documents"], 6, "{report}");
    for kind in [
        "gateway.envoyproxy.io/v1alpha1/SecurityPolicy",
        "gateway.envoyproxy.io/v1alpha1/ClientTrafficPolicy",
        "gateway.networking.k8s.io/v1/HTTPRoute",
        "security.istio.io/v1/AuthorizationPolicy",
    ] {
        assert!(
            report["kinds"]
                .as_array()
                .is_some_and(|k| k.iter().any(|v| v == kind)),
            "{kind} not validated: {report}"
        );
    }
    let dir = tempfile::tempdir().expect("tmp");
    let eg = std::fs::read_to_string(&envoy_gateway).expect("read");
    let is = std::fs::read_to_string(&istio).expect("read");
    for (name, text, needle) in [
        (
            "typo.yaml",
            eg.replacen("bodyToExtAuth:", "bodyToExtAuht:", 1),
            "spec.extAuth.bodyToExtAuht is not a field",
        ),
        (
            "type.yaml",
            eg.replacen("failOpen: false", "failOpen: \"no\"", 1),
            "/spec/extAuth/failOpen must be boolean",
        ),
        (
            "enum.yaml",
            is.replacen("action: CUSTOM", "action: ALLOW_ALL", 1),
            "/spec/action must be equal to one of the allowed values",
        ),
    ] {
        assert_ne!(
            text,
            if name == "enum.yaml" {
                is.clone()
            } else {
                eg.clone()
            }
        );
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let (ok, report) = validate(&[path]);
        assert!(!ok, "{name} passed: {report}");
        assert!(report.to_string().contains(needle), "{name}: {report}");
    }
}
