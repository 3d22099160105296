//! Workload identity: Graph and on-behalf-of authenticate to (the stand-in) Entra with the pod's
//! projected service-account token as a federated client assertion, no secret; the file is
//! re-read as it rotates; every mismatch Entra refuses is named.

use std::time::Duration;

use mcp_authz_testkit::sa_issuer::{ServiceAccountIssuer, TOKEN_EXCHANGE_AUDIENCE};
use mcp_authz_testkit::standin::{Client, FederatedCredential};

use crate::graph::{APP, overage_token};
use crate::support::helpers::*;

const SUBJECT: &str = "system:serviceaccount:mcp-gateway:mcp-authz";

const OBO_POLICY: &str = r#"
tenants:
  - name: engineering
    servers: [github]
servers:
  - name: github
    token_forwarding: obo
    obo_scope: api://github-mcp/.default
group_grants:
  - group: "e0000000-0000-4000-8000-0000000000e1"
    tenant: engineering
    access_level: write
"#;

struct Setup {
    authority: std::sync::Arc<mcp_authz_testkit::standin::Authority>,
    issuer: std::sync::Arc<ServiceAccountIssuer>,
    dir: tempfile::TempDir,
    cfg: String,
    env: Vec<(String, String)>,
}

impl Setup {
    fn token_file(&self) -> std::path::PathBuf {
        self.dir.path().join("azure-identity-token")
    }
    fn project(&self, token: &str) {
        // As the kubelet does: a new file renamed over the old one.
        let tmp = self.dir.path().join("..token.tmp");
        std::fs::write(&tmp, token).expect("token");
        std::fs::rename(&tmp, self.token_file()).expect("rename");
    }
}

/// The stand-in with both apps holding only a federated credential for the cluster issuer,
/// a projected token, and the webhook's environment.
async fn setup(subject_on_app: &str) -> Setup {
    let (authority, url) = standin().await;
    let issuer = ServiceAccountIssuer::spawn_local().await.expect("issuer");
    let fic = FederatedCredential {
        issuer: issuer.url().to_owned(),
        subject: subject_on_app.to_owned(),
        audience: TOKEN_EXCHANGE_AUDIENCE.to_owned(),
    };
    for (id, roles) in [
        (APP, vec!["GroupMember.Read.All".to_string()]),
        (API_CLIENT_ID, Vec::new()),
    ] {
        authority.register_client(
            id,
            Client {
                secret: String::new(),
                graph_roles: roles,
                certificate: None,
                federated: vec![fic.clone()],
                redirect_uris: Vec::new(),
            },
        );
    }
    let dir = tempfile::tempdir().expect("tmp");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, OBO_POLICY).expect("policy");
    let cfg = config_yaml(&url, &policy, None, 300)
        + &format!("graph: {{base_url: \"{url}\", workload_identity: {{reread_seconds: 1}}}}\n")
        + &format!(
            "obo: {{client_id: \"{API_CLIENT_ID}\", workload_identity: {{reread_seconds: 1}}}}\n"
        );
    let s = Setup {
        authority,
        env: Vec::new(),
        issuer,
        dir,
        cfg,
    };
    s.project(&s.issuer.token(SUBJECT, TOKEN_EXCHANGE_AUDIENCE, 3600));
    let env = vec![
        ("AZURE_CLIENT_ID".into(), APP.into()),
        ("AZURE_TENANT_ID".into(), TID.into()),
        (
            "AZURE_FEDERATED_TOKEN_FILE".into(),
            s.token_file().display().to_string(),
        ),
        ("AZURE_AUTHORITY_HOST".into(), format!("{url}/")),
    ];
    Setup { env, ..s }
}

#[tokio::test]
async fn graph_and_obo_use_the_projected_token_and_follow_its_rotation() {
    let s = setup(SUBJECT).await;
    // check-config takes the Graph app token the same way: it passes without any secret.
    let cfg = mcp_authz::config::Config::parse(&s.cfg, s.env.clone()).expect("config");
    assert_eq!(cfg.graph.as_ref().map(|g| g.client_id.as_str()), Some(APP));
    let mut out = Vec::new();
    assert!(
        mcp_authz::cli::check_config(&cfg, std::path::Path::new("c"), &mut out).await,
        "{}",
        String::from_utf8_lossy(&out)
    );

    let inst = Instance::start_with_env(&s.cfg, s.env.clone(), true).await;
    let mut c = Checker::connect(inst.addrs.grpc.expect("grpc")).await;
    // An overage: groups from Graph (app token by the federated credential), then the OBO
    // exchange for the upstream (also by it).
    let alice = overage_token(&s.authority, ALICE, vec![ENG_GROUP.into()]);
    let r = c
        .check(Some(&alice), "github", &initialize_body(1), None)
        .await
        .expect("check");
    assert_eq!(
        (r.http_status, r.reason.as_str()),
        (200, "allowed"),
        "{r:?}"
    );

    // The cluster rotates its signing key and the kubelet writes a new token: the old one no
    // longer verifies at Entra. A new exchange (another user) presents the new file.
    s.issuer.rotate();
    s.project(&s.issuer.token(SUBJECT, TOKEN_EXCHANGE_AUDIENCE, 3600));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let bob = overage_token(&s.authority, BOB, vec![ENG_GROUP.into()]);
    let r = c
        .check(Some(&bob), "github", &initialize_body(2), None)
        .await
        .expect("check");
    assert_eq!(r.http_status, 200, "the rotated token was not used: {r:?}");

    // An expired projected token (the kubelet stopped renewing it): Entra refuses it and
    // the exchange fails closed.
    s.project(&s.issuer.token(SUBJECT, TOKEN_EXCHANGE_AUDIENCE, -10));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let carol = overage_token(&s.authority, CAROL, vec![ENG_GROUP.into()]);
    let r = c
        .check(Some(&carol), "github", &initialize_body(3), None)
        .await
        .expect("check");
    assert_eq!(r.http_status, 503, "{r:?}");
}

/// Each federated-credential mismatch is refused by Entra with its own code, and check-config
/// shows it; a webhook environment that disagrees with the config is refused at start.
#[tokio::test]
async fn mismatches_are_named() {
    let s = setup("system:serviceaccount:other:sa").await;
    let check = |env: Vec<(String, String)>| {
        let cfg = mcp_authz::config::Config::parse(&s.cfg, env).expect("config");
        async move {
            let mut out = Vec::new();
            let ok = mcp_authz::cli::check_config(&cfg, std::path::Path::new("c"), &mut out).await;
            (ok, String::from_utf8_lossy(&out).into_owned())
        }
    };
    let (ok, out) = check(s.env.clone()).await;
    assert!(!ok);
    assert!(
        out.contains("invalid_client [700213]"),
        "subject mismatch: {out}"
    );

    // The subject fixed on the app registration; now a token for another audience.
    s.authority.register_client(
        APP,
        Client {
            secret: String::new(),
            graph_roles: vec!["GroupMember.Read.All".into()],
            certificate: None,
            federated: vec![FederatedCredential {
                issuer: s.issuer.url().to_owned(),
                subject: SUBJECT.to_owned(),
                audience: TOKEN_EXCHANGE_AUDIENCE.to_owned(),
            }],
            redirect_uris: Vec::new(),
        },
    );
    s.project(&s.issuer.token(SUBJECT, "api://other-audience", 3600));
    let (ok, out) = check(s.env.clone()).await;
    assert!(
        !ok && out.contains("invalid_client [700212]"),
        "audience: {out}"
    );
    // Signed by a key the issuer does not publish (or no longer does).
    let stale = s.issuer.token(SUBJECT, TOKEN_EXCHANGE_AUDIENCE, 3600);
    s.issuer.rotate();
    s.project(&stale);
    let (ok, out) = check(s.env.clone()).await;
    assert!(
        !ok && out.contains("invalid_client [700027]"),
        "signature: {out}"
    );
    s.project(&s.issuer.token(SUBJECT, TOKEN_EXCHANGE_AUDIENCE, 3600));
    let (ok, out) = check(s.env.clone()).await;
    assert!(ok, "the fixed setup still fails: {out}");

    std::fs::write(s.token_file(), "not a token").expect("write");
    let (ok, out) = check(s.env.clone()).await;
    assert!(!ok && out.contains("not a compact JWT"), "{out}");

    // The webhook's environment is checked against the config before anything runs.
    let with = |name: &str, value: &str| {
        let mut env = s.env.clone();
        env.retain(|(k, _)| k != name);
        env.push((name.into(), value.into()));
        mcp_authz::config::Config::parse(&s.cfg, env)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(
        with("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/")
            .contains("AZURE_AUTHORITY_HOST"),
    );
    assert!(with("AZURE_TENANT_ID", FOREIGN_TID).contains("AZURE_TENANT_ID"));
    let no_file: Vec<_> = s
        .env
        .iter()
        .filter(|(k, _)| k != "AZURE_FEDERATED_TOKEN_FILE")
        .cloned()
        .collect();
    let err = mcp_authz::config::Config::parse(&s.cfg, no_file)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("AZURE_FEDERATED_TOKEN_FILE"), "{err}");
}
