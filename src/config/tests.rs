//! Configuration: file, environment overrides, validation messages.

use super::*;

const BASE: &str = r#"
listen: {grpc: "127.0.0.1:9001", admin: "127.0.0.1:9002"}
entra:
  tenants: ["3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c"]
  audiences: ["c0ffee00-1234-4abc-8def-0123456789ab"]
policy: {file: policy.yaml}
mcp: {public_base_url: "https://mcp.example.com"}
"#;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn invalid(text: &str, pairs: &[(&str, &str)]) -> String {
    match Config::parse(text, env(pairs)) {
        Ok(_) => panic!("accepted: {pairs:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_are_safe() {
    let c = Config::parse(BASE, env(&[])).expect("valid");
    assert_eq!(c.entra.authority, "https://login.microsoftonline.com");
    assert_eq!(c.entra.leeway_seconds, 30);
    assert!(!c.entra.allow_app_tokens);
    assert!(!c.entra.allow_insecure_authority);
    assert_eq!(c.entra.token_versions, vec!["1.0", "2.0"]);
    assert_eq!(c.mcp.path_prefix, "/mcp/");
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn environment_overrides_nested_keys_and_lists() {
    let c = Config::parse(
        BASE,
        env(&[
            ("MCP_AUTHZ__ENTRA__LEEWAY_SECONDS", "5"),
            ("MCP_AUTHZ__ENTRA__AUDIENCES", "[a, \"api://b\"]"),
            ("MCP_AUTHZ__LISTEN__ADMIN", "0.0.0.0:19002"),
            ("MCP_AUTHZ__MCP__PUBLIC_BASE_URL", "https://mcp.example.com"),
            ("UNRELATED", "x"),
        ]),
    )
    .expect("valid");
    assert_eq!(c.entra.leeway_seconds, 5);
    assert_eq!(c.entra.audiences, vec!["a", "api://b"]);
    assert_eq!(c.listen.admin.port(), 19002);
    assert_eq!(
        c.mcp.public_base_url.as_deref(),
        Some("https://mcp.example.com")
    );
}

#[test]
fn relative_policy_path_is_relative_to_the_config_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, BASE).expect("write");
    let c = Config::load_with_env(
        &path,
        env(&[
            (
                "MCP_AUTHZ__IDENTITY_ASSERTION__KEY_FILE",
                "keys/assertion.pem",
            ),
            ("MCP_AUTHZ__LISTEN__GRPC_TLS__CERT_FILE", "tls/tls.crt"),
            ("MCP_AUTHZ__LISTEN__GRPC_TLS__KEY_FILE", "/abs/tls.key"),
            ("MCP_AUTHZ__LISTEN__GRPC_TLS__CLIENT_CA_FILE", "tls/ca.crt"),
        ]),
    )
    .expect("valid");
    assert_eq!(c.policy.file, Some(dir.path().join("policy.yaml")));
    assert_eq!(
        c.identity_assertion.key_file,
        Some(dir.path().join("keys/assertion.pem"))
    );
    let tls = c.listen.grpc_tls.expect("grpc_tls");
    assert_eq!(tls.cert_file, dir.path().join("tls/tls.crt"));
    assert_eq!(tls.key_file, std::path::PathBuf::from("/abs/tls.key"));
    assert_eq!(tls.client_ca_file, dir.path().join("tls/ca.crt"));
}

#[test]
fn each_invalid_setting_is_named() {
    for (pairs, needle) in [
        // CORS origins over xDS follow render-envoy's rule: exact origins only.
        (
            vec![("MCP_AUTHZ__XDS__CORS_ALLOWED_ORIGINS", "[\"*\"]")],
            "xds.cors_allowed_origins: \"*\" is not an origin",
        ),
        (
            vec![(
                "MCP_AUTHZ__XDS__CORS_ALLOWED_ORIGINS",
                "[\"https://app.example/path\"]",
            )],
            "has a path",
        ),
        (
            vec![("MCP_AUTHZ__XDS__UPSTREAM_CA_FILE", "ca.pem")],
            "xds.upstream_ca_file",
        ),
        (
            vec![("MCP_AUTHZ__ENTRA__TENANTS", "[]")],
            "entra.tenants: list at least one",
        ),
        (
            vec![("MCP_AUTHZ__ENTRA__TENANTS", "[contoso.onmicrosoft.com]")],
            "is not a GUID",
        ),
        (
            vec![("MCP_AUTHZ__ENTRA__AUDIENCES", "[]")],
            "entra.audiences",
        ),
        (
            vec![(
                "MCP_AUTHZ__ENTRA__AUDIENCES",
                "[\"00000003-0000-0000-c000-000000000000\"]",
            )],
            "Microsoft Graph",
        ),
        (
            vec![("MCP_AUTHZ__ENTRA__AUTHORITY", "http://login.example")],
            "must be https",
        ),
        (
            vec![("MCP_AUTHZ__ENTRA__AUTHORITY", "https://login.example/")],
            "must not end with '/'",
        ),
        (
            vec![("MCP_AUTHZ__ENTRA__LEEWAY_SECONDS", "301")],
            "leeway_seconds: at most 300",
        ),
        (
            vec![("MCP_AUTHZ__ENTRA__TOKEN_VERSIONS", "[\"3.0\"]")],
            "token_versions",
        ),
        (
            vec![("MCP_AUTHZ__ENTRA__ALLOW_APP_TOKENS", "true")],
            "required_roles",
        ),
        (
            vec![("MCP_AUTHZ__ENTRA__MAX_TOKEN_BYTES", "100")],
            "max_token_bytes",
        ),
        (vec![("MCP_AUTHZ__MCP__PATH_PREFIX", "/mcp")], "path_prefix"),
        (
            vec![("MCP_AUTHZ__MCP__PUBLIC_BASE_URL", "https://x.example/")],
            "public_base_url",
        ),
        (
            vec![("MCP_AUTHZ__LISTEN__GRPC", "")],
            "set grpc, grpc_unix, or both",
        ),
        (
            vec![("MCP_AUTHZ__ENTRA__AUDIENCE", "[x]")],
            "unknown field `audience`",
        ),
        (
            vec![("MCP_AUTHZ__LISTEN__ADMIN", "not-an-address")],
            "invalid",
        ),
        (vec![("MCP_AUTHZ__POLICY__FILE__X", "1")], "not a section"),
        (
            vec![("MCP_AUTHZ__ENTRA__LEEWAY_SECONDS__X", "1")],
            "expected u64",
        ),
        (vec![("MCP_AUTHZ____X", "1")], "empty path segment"),
    ] {
        let msg = invalid(BASE, &pairs);
        assert!(msg.contains(needle), "{pairs:?}: {msg}");
    }
}

#[test]
fn insecure_authority_needs_the_explicit_flag() {
    let c = Config::parse(
        BASE,
        env(&[
            ("MCP_AUTHZ__ENTRA__AUTHORITY", "http://127.0.0.1:8000"),
            ("MCP_AUTHZ__ENTRA__ALLOW_INSECURE_AUTHORITY", "true"),
        ]),
    );
    assert!(c.is_ok());
}

#[test]
fn broken_yaml_and_missing_file_are_reported() {
    assert!(invalid("listen: [", &[]).contains("not valid YAML"));
    let e = Config::load(std::path::Path::new("/nonexistent/config.yaml")).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot read config file /nonexistent/config.yaml")
    );
}

#[test]
fn advertised_scopes_fall_back_to_required_scopes() {
    let c = Config::parse(
        BASE,
        env(&[("MCP_AUTHZ__ENTRA__REQUIRED_SCOPES", "[mcp.access]")]),
    )
    .expect("ok");
    assert_eq!(c.advertised_scopes(), ["mcp.access"]);
    let c = Config::parse(
        BASE,
        env(&[
            ("MCP_AUTHZ__ENTRA__REQUIRED_SCOPES", "[mcp.access]"),
            (
                "MCP_AUTHZ__MCP__ADVERTISED_SCOPES",
                "[\"api://g/mcp.access\"]",
            ),
        ]),
    )
    .expect("ok");
    assert_eq!(c.advertised_scopes(), ["api://g/mcp.access"]);
}

#[test]
fn database_and_audit_settings_are_checked_and_the_url_is_never_printed() {
    let with_db = |extra: &[(&str, &str)]| {
        let mut e = vec![("MCP_AUTHZ__DATABASE__URL", "postgres://mcp:hunter2@db/mcp")];
        e.extend_from_slice(extra);
        Config::parse(BASE, env(&e))
    };
    let c = with_db(&[
        ("MCP_AUTHZ__POLICY__SOURCE", "postgres"),
        ("MCP_AUTHZ__AUDIT__SINK", "postgres"),
    ])
    .expect("valid");
    assert!(
        !format!("{c:?}").contains("hunter2"),
        "the database password leaked into Debug output"
    );
    assert_eq!(c.policy.source, PolicySourceKind::Postgres);
    for (pairs, needle) in [
        (
            vec![("MCP_AUTHZ__POLICY__SOURCE", "postgres")],
            "needs a database section",
        ),
        (
            vec![("MCP_AUTHZ__AUDIT__SINK", "postgres")],
            "needs a database section",
        ),
        (
            vec![("MCP_AUTHZ__AUDIT__SINK", "jsonl")],
            "needs audit.file",
        ),
        (
            vec![("MCP_AUTHZ__POLICY__FILE", "")],
            "policy.file is required",
        ),
    ] {
        let msg = invalid(BASE, &pairs);
        assert!(msg.contains(needle), "{pairs:?}: {msg}");
    }
    let e = with_db(&[("MCP_AUTHZ__DATABASE__URL", "mysql://x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("postgres:// URL"), "{e}");
}

/// The shipped examples are valid: the config parses and validates, the policy compiles.
#[test]
fn shipped_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let cfg = Config::load_with_env(&dir.join("config.yaml"), Vec::new()).expect("config.yaml");
    assert_eq!(cfg.rate_limit.redis_timeout_ms, 50);
    crate::policy::load_file(&dir.join("policy.yaml"), &cfg.entra.tenants).expect("policy.yaml");
}

#[test]
fn runtime_worker_threads_come_from_the_file_or_the_environment_and_are_bounded() {
    let c = Config::parse(BASE, env(&[])).expect("valid");
    assert_eq!(c.runtime.worker_threads, None, "default: one per CPU");
    let c = Config::parse(
        &format!("{BASE}\nruntime: {{worker_threads: 2}}\n"),
        env(&[]),
    )
    .expect("valid");
    assert_eq!(c.runtime.worker_threads, Some(2));
    let c =
        Config::parse(BASE, env(&[("MCP_AUTHZ__RUNTIME__WORKER_THREADS", "1")])).expect("valid");
    assert_eq!(c.runtime.worker_threads, Some(1));
    let msg = invalid(BASE, &[("MCP_AUTHZ__RUNTIME__WORKER_THREADS", "0")]);
    assert!(msg.contains("runtime.worker_threads"), "{msg}");
    let msg = invalid(&format!("{BASE}\nruntime: {{threads: 2}}\n"), &[]);
    assert!(msg.contains("threads"), "{msg}");
}

/// One thread is the current-thread scheduler (its answers leave in batches, see
/// `runtime_builder`); more, or the default, the multi-thread one with that many workers.
#[test]
fn one_worker_thread_runs_the_current_thread_scheduler() {
    use tokio::runtime::RuntimeFlavor;
    let flavor = |n: Option<usize>| {
        let rt =
            crate::config::runtime_builder(&crate::config::RuntimeConfig { worker_threads: n })
                .enable_all()
                .build()
                .expect("runtime");
        (rt.handle().runtime_flavor(), rt.metrics().num_workers())
    };
    assert_eq!(flavor(Some(1)), (RuntimeFlavor::CurrentThread, 1));
    assert_eq!(flavor(Some(2)), (RuntimeFlavor::MultiThread, 2));
    assert_eq!(flavor(None).0, RuntimeFlavor::MultiThread);
}

/// Outside review: override values were parsed as YAML, so a path was cut at `#`, a secret of
/// digits was refused and one starting with `@` failed. Text keys take the value verbatim.
#[test]
fn override_values_are_data_not_yaml() {
    let graph = "graph: {client_id: app}\n";
    for secret in [
        "123456",
        "@secret",
        "a #b",
        "'quoted'",
        "[not, a, list]",
        "~",
        "true",
    ] {
        let c = Config::parse(
            &format!("{BASE}{graph}"),
            env(&[
                ("MCP_AUTHZ__GRAPH__CLIENT_SECRET", secret),
                ("MCP_AUTHZ__POLICY__FILE", "/x/policy.yaml #1"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{secret}: {e}"));
        let got = c.graph.as_ref().and_then(|g| g.client_secret.as_ref());
        assert_eq!(got.map(Secret::expose), Some(secret));
        assert_eq!(
            c.policy.file.as_deref(),
            Some(std::path::Path::new("/x/policy.yaml #1"))
        );
    }
    // Numbers, flags and lists are still read as such; an empty value unsets a key.
    let c = Config::parse(
        BASE,
        env(&[
            ("MCP_AUTHZ__ENTRA__LEEWAY_SECONDS", "7"),
            ("MCP_AUTHZ__ENTRA__ALLOW_APP_TOKENS", "false"),
            ("MCP_AUTHZ__ENTRA__AUDIENCES", "[a, b]"),
            ("MCP_AUTHZ__MCP__RESOURCE_DOCUMENTATION", ""),
        ]),
    )
    .expect("valid");
    assert_eq!(c.entra.leeway_seconds, 7);
    assert_eq!(c.entra.audiences, ["a", "b"]);
    assert_eq!(c.mcp.resource_documentation, None);
    let msg = invalid(BASE, &[("MCP_AUTHZ__ENTRA__LEEWAY_SECONDS", "soon")]);
    assert!(
        msg.contains("MCP_AUTHZ__ENTRA__LEEWAY_SECONDS") && msg.contains("expected u64"),
        "{msg}"
    );
}

/// Secrets from mounted files (`{file: …}`, or `…__FILE` in the environment): read once, one
/// trailing newline dropped, never printed; a missing file is named, its content never.
#[test]
fn secrets_can_be_read_from_files_and_are_never_printed() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("secret");
    std::fs::write(&path, "s3cr3t-from-file\n").expect("write");
    let graph = "graph: {client_id: app}\n";
    let c = Config::parse(
        &format!("{BASE}{graph}"),
        env(&[(
            "MCP_AUTHZ__GRAPH__CLIENT_SECRET__FILE",
            path.to_str().expect("utf-8 path"),
        )]),
    )
    .expect("valid");
    let secret = c.graph.as_ref().and_then(|g| g.client_secret.as_ref());
    assert_eq!(secret.map(Secret::expose), Some("s3cr3t-from-file"));
    assert!(!format!("{c:?}").contains("s3cr3t"));
    let inline = format!(
        "{BASE}graph: {{client_id: app, client_secret: {{file: \"{}\"}}}}\n",
        path.display()
    );
    let c = Config::parse(&inline, env(&[])).expect("valid");
    let secret = c.graph.as_ref().and_then(|g| g.client_secret.as_ref());
    assert_eq!(secret.map(Secret::expose), Some("s3cr3t-from-file"));
    let msg = invalid(
        &format!("{BASE}{graph}"),
        &[(
            "MCP_AUTHZ__GRAPH__CLIENT_SECRET__FILE",
            "/nonexistent/secret",
        )],
    );
    assert!(msg.contains("/nonexistent/secret"), "{msg}");
}

/// Outside review: without a configured base URL, metadata and 401 challenges were built from
/// the client's Host, so a client could point another client's sign-in at a server of its
/// choosing (and a shared cache could keep that answer). The URL is required; the Host-derived
/// form needs an explicit development setting.
#[test]
fn public_base_url_is_required_unless_host_derived_urls_are_allowed() {
    let without = BASE.replace("mcp: {public_base_url: \"https://mcp.example.com\"}\n", "");
    assert!(invalid(&without, &[]).contains("mcp.public_base_url is required"));
    let c = Config::parse(
        &without,
        env(&[("MCP_AUTHZ__MCP__ALLOW_HOST_DERIVED_URLS", "true")]),
    )
    .expect("allowed for development");
    assert_eq!(c.mcp.public_base_url, None);
}

mod keys;

/// The example configuration is the reference of every key (README says so): a field added to
/// a config type and not to deploy/examples/config.yaml fails here, as does a key written
/// there that no config type reads (a typo, or a key since removed). Once, `graph`, `obo` and
/// four `entra` keys were missing from it.
#[test]
fn the_example_config_documents_every_key_and_only_real_ones() {
    let keys = keys::key_paths::<Config>().expect("walk the config types");
    assert!(
        keys.contains("entra.tenants") && keys.contains("listen.grpc_tls.cert_file"),
        "the walk found too little: {keys:?}"
    );
    let example = include_str!("../../deploy/examples/config.yaml");
    let documented = keys::documented_paths(example);
    let missing: Vec<&String> = keys.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&keys).collect();
    assert!(
        missing.is_empty(),
        "deploy/examples/config.yaml does not document: {missing:#?}"
    );
    assert!(
        unknown.is_empty(),
        "deploy/examples/config.yaml names keys no config type reads: {unknown:#?}"
    );
}
