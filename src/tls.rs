//! mTLS on the gRPC (ext_authz) TCP listener, `listen.grpc_tls`: the server presents
//! `cert_file`/`key_file` and accepts only clients (Envoy) whose certificate chains to
//! `client_ca_file`. The three files are re-read every `reload_seconds` (a mounted Kubernetes
//! Secret is updated in place): a changed, valid set serves the next handshake; one that does
//! not load is logged and the current one keeps serving. Connections already open keep theirs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::GrpcTlsConfig;

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The server's TLS settings, swapped when the files change.
pub struct ReloadingTls {
    cfg: GrpcTlsConfig,
    current: ArcSwap<Loaded>,
}

struct Loaded {
    config: Arc<rustls::ServerConfig>,
    /// Of the three files' contents: an unchanged set is not rebuilt.
    hash: [u8; 32],
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn invalid(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Invalid {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn load(cfg: &GrpcTlsConfig) -> Result<Loaded, TlsError> {
    let (cert_pem, key_pem, ca_pem) = (
        read(&cfg.cert_file)?,
        read(&cfg.key_file)?,
        read(&cfg.client_ca_file)?,
    );
    let mut h = Sha256::new();
    for part in [&cert_pem, &key_pem, &ca_pem] {
        h.update(part);
        h.update([0]);
    }
    let hash: [u8; 32] = h.finalize().into();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&cfg.cert_file, e))?;
    if chain.is_empty() {
        return Err(invalid(&cfg.cert_file, "no CERTIFICATE in it"));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| invalid(&cfg.key_file, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&ca_pem) {
        let ca = ca.map_err(|e| invalid(&cfg.client_ca_file, e))?;
        roots.add(ca).map_err(|e| invalid(&cfg.client_ca_file, e))?;
    }
    if roots.is_empty() {
        return Err(invalid(&cfg.client_ca_file, "no CERTIFICATE in it"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| invalid(&cfg.client_ca_file, e))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&cfg.cert_file, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| invalid(&cfg.key_file, e))?;
    // Envoy speaks HTTP/2 to mcp-authz.
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        config: Arc::new(server),
        hash,
    })
}

impl ReloadingTls {
    /// Loads the files; an error here is a configuration error (the server does not start).
    pub fn new(cfg: &GrpcTlsConfig) -> Result<Self, TlsError> {
        Ok(ReloadingTls {
            current: ArcSwap::from_pointee(load(cfg)?),
            cfg: cfg.clone(),
        })
    }

    /// Re-reads the files; `Ok(true)` when a changed set now serves.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let next = load(&self.cfg)?;
        if next.hash == self.current.load().hash {
            return Ok(false);
        }
        self.current.store(Arc::new(next));
        tracing::info!("gRPC TLS certificates reloaded");
        Ok(true)
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load().config.clone())
    }

    /// Accepts TLS connections on `listener` until `stop`, yielding those whose handshake (and
    /// client certificate) succeeded; re-reads the files every `reload_seconds` meanwhile.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let reload_every = Duration::from_secs(self.cfg.reload_seconds.max(1));
        tokio::spawn(async move {
            let mut reload = tokio::time::interval(reload_every);
            reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = reload.tick() => {
                        if let Err(e) = self.reload() {
                            tracing::error!(error = %e, "gRPC TLS certificates not reloaded; the current ones keep serving");
                        }
                        continue;
                    }
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "gRPC TLS accept failed");
                            continue;
                        }
                    },
                };
                // Small gRPC frames must not wait for Nagle's algorithm.
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (self.acceptor(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(crate::grpc::Unvectored(tls))).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "gRPC TLS handshake refused")
                        }
                        Err(_) => tracing::info!(%peer, "gRPC TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// An accepted mTLS connection, as tonic serves it: never vectored on write, so that h2
/// batches answers into one write and one TLS record (`grpc::Unvectored`). Its connect info is
/// tonic's `TlsConnectInfo` (the peer's address and certificates).
pub type TlsConn = crate::grpc::Unvectored<tokio_rustls::server::TlsStream<TcpStream>>;
