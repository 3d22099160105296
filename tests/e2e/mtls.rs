//! mTLS between Envoy and mcp-authz: Envoy's real client certificate through its SDS files,
//! mcp-authz's server verifying it, certificates made in the test and rotated without a restart.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::support::helpers::*;

fn mtls_env() -> Options {
    Options {
        mtls: true,
        ..Options::default()
    }
}

/// A TLS client of mcp-authz's gRPC port: trusting `ca_pem`, presenting `client` if given.
async fn handshake(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: Option<(String, String)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca")).expect("add ca");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("cert"),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(AUTHZ_TLS_NAME).expect("name"), tcp)
        .await?;
    // TLS 1.3: the server refuses a client certificate after the client's handshake ends; the
    // refusal arrives as an alert on the first read.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await {
        Ok(Ok(0)) => Err(std::io::Error::other("closed")),
        Ok(Ok(_)) => Ok(tls),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other("no answer")),
    }
}

/// Envoy's mcp_authz_mtls cluster (envoy/authz-mtls.yaml, its SDS files) reaches mcp-authz's
/// mTLS listener: decisions flow both ways.
#[tokio::test]
async fn envoy_reaches_mcp_authz_over_mtls() {
    let env = TestEnv::start(mtls_env()).await;
    let bob = env.user_token(BOB, &[ENG_GROUP]);
    let carol = env.user_token(CAROL, &[SALES_GROUP]);
    let r = env
        .post("/mcp/github", Some(&bob), &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", env.envoy_log());
    let r = env
        .post("/mcp/github", Some(&carol), &initialize_body(1), &[])
        .await;
    assert_eq!((r.status, r.reason()), (403, "server_not_granted"));
    assert_no_envoy_warnings(&env.envoy_log());
}

/// Attack: anything on the network that can reach mcp-authz's gRPC port asks it for decisions
/// (or floods it). With mTLS only a client whose certificate chains to the configured CA gets
/// through: not a plaintext client, not a TLS client without a certificate, not one with a
/// certificate of another CA.
#[tokio::test]
async fn only_clients_with_a_certificate_of_the_ca_are_served() {
    let env = TestEnv::start(mtls_env()).await;
    let pki = env.pki.as_ref().expect("pki");
    let addr = env.authz.grpc.expect("grpc");
    let ca = pki.ca_pem();

    // Plaintext gRPC, as an Envoy without the TLS cluster would speak it.
    let plain = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(ch) => {
            let mut c = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(ch);
            c.check(mcp_authz::grpc::http_check_request(
                None,
                "/mcp/github",
                b"{}",
            ))
            .await
            .is_err()
        }
    };
    assert!(refused, "a plaintext client was answered");

    assert!(
        handshake(addr, &ca, None).await.is_err(),
        "no client certificate"
    );
    let other = Pki::new(&env.dir.path().join("other-ca"));
    let foreign = other.leaf("envoy.test", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    assert!(
        handshake(addr, &ca, Some(foreign)).await.is_err(),
        "a certificate of another CA"
    );
    let own = pki.leaf("envoy.test", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let tls = handshake(addr, &ca, Some(own))
        .await
        .expect("our CA's certificate");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

/// The Secret is updated (a new server certificate): mcp-authz serves it on the next
/// handshakes without a restart, and Envoy keeps getting decisions.
#[tokio::test]
async fn the_server_certificate_rotates_without_a_restart() {
    let env = TestEnv::start(mtls_env()).await;
    let pki = env.pki.as_ref().expect("pki");
    let addr = env.authz.grpc.expect("grpc");
    let client = || pki.leaf("envoy.test", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let leaf_of = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
    };
    let before = leaf_of(
        &handshake(addr, &pki.ca_pem(), Some(client()))
            .await
            .expect("tls"),
    );
    let rotated = pki.issue_server();
    assert_ne!(before.as_deref(), Some(rotated.as_slice()));
    wait_until(
        "the new certificate served",
        Duration::from_secs(10),
        || {
            let (ca, c, rotated) = (pki.ca_pem(), client(), rotated.clone());
            async move {
                match handshake(addr, &ca, Some(c)).await {
                    Ok(tls) => leaf_of(&tls).as_deref() == Some(rotated.as_slice()),
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    let bob = env.user_token(BOB, &[ENG_GROUP]);
    let r = env
        .post("/mcp/github", Some(&bob), &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// Envoy's side of the rotation: its client certificate is re-read through the SDS file's
/// watched directory when the Secret changes, without a restart (Envoy's admin `/certs` names
/// the certificate in use).
#[tokio::test]
async fn envoys_client_certificate_rotates_without_a_restart() {
    let env = TestEnv::start(mtls_env()).await;
    let pki = env.pki.as_ref().expect("pki");
    let certs = || {
        let url = format!("http://{}/certs", env.envoy_admin());
        let http = env.http.clone();
        async move {
            let v: serde_json::Value = http
                .get(url)
                .send()
                .await
                .expect("/certs")
                .json()
                .await
                .expect("json");
            // The client certificate of the mcp_authz_mtls cluster.
            v["certificates"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["cert_chain"].as_array().cloned().unwrap_or_default())
                .filter_map(|c| c["serial_number"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        }
    };
    let before = certs().await;
    assert!(!before.is_empty(), "Envoy lists no client certificate");
    pki.issue_envoy_client();
    wait_until(
        "Envoy uses the new client certificate",
        Duration::from_secs(10),
        || {
            let (before, now) = (before.clone(), certs());
            async move {
                let now = now.await;
                !now.is_empty() && now != before
            }
        },
    )
    .await;
    let bob = env.user_token(BOB, &[ENG_GROUP]);
    let r = env
        .post("/mcp/github", Some(&bob), &initialize_body(1), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}
