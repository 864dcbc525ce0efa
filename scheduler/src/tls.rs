//! The TCP listener with TLS, for agents on other hosts and remote users.
//!
//! The server presents its certificate and the cluster CA (so a joining host can pin the CA
//! by the hash in its join token). Client certificates signed by the CA authenticate (their
//! CN and O name the user and groups); a connection without one is anonymous, which RBAC lets
//! read `/version` and `/healthz`, and join with the token (`POST /join`).

use crate::pki::{Pki, PkiError, pem_to_der};
use axum::Router;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use std::sync::Arc;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// The Unix socket's peer by its credentials, or a TLS client by the certificate the CA
    /// signed (`crate::auth::authn`).
    User(Arc<crate::auth::User>),
    /// TLS without a client certificate.
    Anonymous,
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls client verifier: {0}")]
    Verifier(String),
    #[error("binding {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

/// The rustls configuration for these names.
pub fn server_config(pki: &Pki, names: &[String]) -> Result<rustls::ServerConfig, TlsError> {
    let (cert_pem, key_pem) = pki.server_cert(names)?;
    let cert = CertificateDer::from(pem_to_der(&cert_pem).unwrap_or_default());
    let ca = CertificateDer::from(pem_to_der(&pki.ca_pem).unwrap_or_default());
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Verifier(format!("serving key: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert, ca], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts TLS connections on `listener` and serves `app` on each, marking every request
/// with its [`Peer`]. Runs until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: rustls::ServerConfig,
    app: Router,
    timeouts: crate::conn::Timeouts,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let Ok((tcp, remote)) = listener.accept().await else { continue };
        let (acceptor, app, stop) = (acceptor.clone(), app.clone(), stop.clone());
        tokio::spawn(async move {
            // A handshake that stalls must not hold a task forever.
            let tls =
                match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    _ => return,
                };
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::auth::authn::from_certificate(c));
            let peer = user.map_or(Peer::Anonymous, |u| Peer::User(Arc::new(u)));
            crate::conn::serve(tls, app, peer, Some(remote.ip().to_string()), timeouts, stop).await;
        });
    }
}
