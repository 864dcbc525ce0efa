//! TLS for `tug` over TCP: the client configuration from a credentials directory (`ca.crt`,
//! `client.crt`, `client.key`, as `tug join` writes them), and the CA pinning `tug join` uses
//! before it has the CA (the join token carries the CA certificate's SHA-256).

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

fn cert(dir: &Path, name: &str) -> anyhow::Result<CertificateDer<'static>> {
    let path = dir.join(name);
    CertificateDer::from_pem_file(&path)
        .with_context(|| format!("reading {} (run `tug join` first?)", path.display()))
}

/// A client that trusts the cluster CA and presents the client certificate in `dir`.
pub fn client_config(dir: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert(dir, "ca.crt")?)?;
    let key_path = dir.join("client.key");
    let key =
        PrivateKeyDer::from_pem_file(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let mut c = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert(dir, "client.crt")?], key)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// A client for `tug join`: trusts the server only if it presents a CA whose SHA-256 is the
/// token's and whose signature is on the server's certificate.
pub fn pinned_config(ca_sha256: &str) -> rustls::ClientConfig {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let verifier = Arc::new(PinnedCa { hash: Some(ca_sha256.to_ascii_lowercase()), provider });
    let mut c = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c
}

/// A client that takes any server certificate, for what kubelet also runs without
/// verification: HTTPS httpGet probes, which reach a pod by its address, where no
/// certificate names it. The handshake's signatures are still checked.
pub fn insecure_config() -> rustls::ClientConfig {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa { hash: None, provider }))
        .with_no_client_auth()
}

/// The server's CA must be the one whose SHA-256 is `hash`; with no hash, any certificate
/// is taken (signatures are checked either way).
#[derive(Debug)]
struct PinnedCa {
    hash: Option<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(hash) = &self.hash else { return Ok(ServerCertVerified::assertion()) };
        let ca = intermediates.iter().find(|c| hex(c) == *hash).ok_or_else(|| {
            rustls::Error::General("the server's CA does not match the join token's hash".into())
        })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
