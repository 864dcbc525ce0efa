//! The cluster's PKI: a CA made on first start, a serving certificate for the TCP listener,
//! client certificates for agents and remote users, and the join token that lets a new host
//! get one (`tug::<sha256 of the CA certificate>::<secret>`, as k3s shapes its tokens: the
//! hash lets the joining side pin the CA before it trusts the server).
//!
//! Files under `DIR` (the data directory's `pki/`): `ca.crt`, `ca.key`, `token` (keys and
//! token mode 0600). The serving certificate is made anew at every start for the current
//! names and addresses.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What went wrong with certificates or the token.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{0}: not a PEM certificate")]
    BadPem(PathBuf),
    #[error("the cluster PKI in the store: {0}")]
    Store(String),
    #[error("{0}")]
    Mode(String),
}

/// The CA and the join token.
pub struct Pki {
    pub ca_pem: String,
    ca_der: Vec<u8>,
    ca_key: KeyPair,
    secret: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    tug_config::private::write(path, text.as_bytes()).map_err(io(path))
}

/// The CA's parameters. Reloading signs with the same name and key, so certificates issued
/// after a restart chain to the `ca.crt` written on first start.
fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "tug-ca");
    dn.push(DnType::OrganizationName, "tug");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2035, 1, 1);
    Ok(p)
}

/// DER of the first certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes()).ok().map(|c| c.to_vec())
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The store's record of the PKI: the certificate in clear; the key and the token sealed
/// when there is a sealer, in clear otherwise.
fn record_of(
    files: &serde_json::Map<String, serde_json::Value>,
    sealer: Option<&crate::seal::Sealer>,
) -> Result<serde_json::Value, PkiError> {
    let mut obj = serde_json::Map::new();
    obj.insert("metadata".into(), serde_json::json!({}));
    obj.insert("ca.crt".into(), files.get("ca.crt").cloned().unwrap_or_default());
    match sealer {
        Some(s) => {
            let secret = serde_json::json!({"ca.key": files.get("ca.key"), "token": files.get("token")});
            obj.insert("sealed".into(), s.seal(secret.to_string().as_bytes()).map_err(PkiError::Store)?);
        }
        None => {
            for f in ["ca.key", "token"] {
                obj.insert(f.into(), files.get(f).cloned().unwrap_or_default());
            }
        }
    }
    Ok(serde_json::Value::Object(obj))
}

/// The PKI's files from its record, opening a sealed one with `sealer`.
fn unsealed(
    record: &serde_json::Value,
    sealer: Option<&crate::seal::Sealer>,
) -> Result<serde_json::Map<String, serde_json::Value>, PkiError> {
    let mut files = serde_json::Map::new();
    files.insert("ca.crt".into(), record["ca.crt"].clone());
    match (record.get("sealed"), sealer) {
        (Some(sealed), Some(s)) => {
            let plain = s.open(sealed).map_err(|e| PkiError::Store(format!("the sealed CA key: {e}")))?;
            let secret: serde_json::Value = serde_json::from_slice(&plain)
                .map_err(|e| PkiError::Store(format!("the sealed CA key: {e}")))?;
            for f in ["ca.key", "token"] {
                files.insert(f.into(), secret[f].clone());
            }
        }
        (Some(_), None) => {
            return Err(PkiError::Store(
                "the CA key is sealed: give --pki-secret-file with the secret the other replicas use".into(),
            ));
        }
        (None, _) => {
            for f in ["ca.key", "token"] {
                files.insert(f.into(), record[f].clone());
            }
        }
    }
    Ok(files)
}

/// Where the shared PKI lives in the store: a key no REST path reaches.
pub const STORE_KEY: &str = "_tug/pki//cluster";

impl Pki {
    /// The PKI every replica sharing `store` uses: the one recorded in the store, or this
    /// replica's (made in `dir` on first use) if none is recorded yet. `dir` then holds a copy.
    ///
    /// With a `sealer` (required for etcd, which every replica and its backups read) the CA
    /// key and the token are recorded sealed, and a record an older version left in clear
    /// is sealed in place; without one (the local store, 0600) they are recorded as they are.
    pub fn load_shared(
        store: &dyn crate::store::Store,
        dir: &Path,
        sealer: Option<&crate::seal::Sealer>,
    ) -> Result<Pki, PkiError> {
        let recorded = store.get(STORE_KEY).map_err(|e| PkiError::Store(e.to_string()))?;
        let recorded = match recorded {
            Some(r) => {
                let files = unsealed(&r.object, sealer)?;
                if let Some(sealer) = sealer.filter(|_| r.object.get("sealed").is_none()) {
                    let obj = record_of(&files, Some(sealer))?;
                    if store.update(STORE_KEY, obj, Some(r.revision)).is_ok() {
                        tracing::info!(
                            "tug-scheduler: the cluster CA key in the store is now sealed with --pki-secret-file"
                        );
                    }
                }
                files
            }
            None => {
                let mine = Pki::load_or_create(dir)?;
                let mut files = serde_json::Map::new();
                for f in ["ca.crt", "ca.key", "token"] {
                    let text = std::fs::read_to_string(dir.join(f)).map_err(io(&dir.join(f)))?;
                    files.insert(f.to_string(), text.into());
                }
                match store.create(STORE_KEY, record_of(&files, sealer)?) {
                    Ok(_) => return Ok(mine),
                    // Another replica recorded its PKI first: use that one.
                    Err(crate::store::StoreError::AlreadyExists(_)) => {
                        let r = store.get(STORE_KEY).map_err(|e| PkiError::Store(e.to_string()))?;
                        unsealed(&r.map(|r| r.object).unwrap_or_default(), sealer)?
                    }
                    Err(e) => return Err(PkiError::Store(e.to_string())),
                }
            }
        };
        tug_config::private::dir(dir, 0o700).map_err(PkiError::Mode)?;
        for f in ["ca.crt", "ca.key", "token"] {
            let text = recorded
                .get(f)
                .and_then(|v| v.as_str())
                .ok_or_else(|| PkiError::Store(format!("the recorded PKI has no {f}")))?;
            write_private(&dir.join(f), text)?;
        }
        Pki::load_or_create(dir)
    }

    /// Loads the PKI from `dir`, making the CA and token on first use.
    pub fn load_or_create(dir: &Path) -> Result<Pki, PkiError> {
        let (crt, key, token) = (dir.join("ca.crt"), dir.join("ca.key"), dir.join("token"));
        // The CA key and the token are root's alone; modes mended on every start, and said.
        let mended = [
            tug_config::private::dir(dir, 0o700),
            tug_config::private::file(&key, 0o600),
            tug_config::private::file(&token, 0o600),
        ];
        for m in mended {
            if let Some(said) = m.map_err(PkiError::Mode)? {
                tracing::info!("tug-scheduler: {said}");
            }
        }
        if !crt.exists() || !key.exists() {
            let ca_key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&ca_key)?;
            write_private(&key, &ca_key.serialize_pem())?;
            std::fs::write(&crt, cert.pem()).map_err(io(&crt))?;
        }
        if !token.exists() {
            let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
            write_private(&token, &secret)?;
        }
        let ca_pem = std::fs::read_to_string(&crt).map_err(io(&crt))?;
        let ca_der = pem_to_der(&ca_pem).ok_or_else(|| PkiError::BadPem(crt.clone()))?;
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&key).map_err(io(&key))?)?;
        let secret = std::fs::read_to_string(&token).map_err(io(&token))?.trim().to_string();
        Ok(Pki { ca_pem, ca_der, ca_key, secret })
    }

    /// The key service account tokens are signed with (HMAC-SHA256): derived from the CA's
    /// key, so every replica has it and it never leaves the control plane.
    pub fn token_key(&self) -> Vec<u8> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"tug service account tokens\0");
        h.update(self.ca_key.serialize_der());
        h.finalize().to_vec()
    }

    /// `tug::<ca hash>::<secret>`.
    pub fn join_token(&self) -> String {
        format!("tug::{}::{}", sha256_hex(&self.ca_der), self.secret)
    }

    /// Whether `presented` is the join token (or its secret part), compared in constant time.
    pub fn check_token(&self, presented: &str) -> bool {
        let secret = presented.rsplit("::").next().unwrap_or_default();
        let (a, b) = (secret.as_bytes(), self.secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    fn issue(&self, mut params: CertificateParams) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        if params.not_after <= params.not_before {
            params.not_before = rcgen::date_time_ymd(2025, 1, 1);
            params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        }
        let issuer = Issuer::new(ca_params()?, &self.ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A serving certificate for these DNS names and IP addresses: (cert PEM, key PEM).
    pub fn server_cert(&self, names: &[String]) -> Result<(String, String), PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, "tug-scheduler");
        for n in names {
            p.subject_alt_names.push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into()?),
            });
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(p)
    }

    /// A node's client certificate: user `system:node:NAME` in group `system:nodes` (what the
    /// node authorizer recognises): (cert PEM, key PEM).
    pub fn client_cert(&self, name: &str) -> Result<(String, String), PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, format!("{}{name}", crate::auth::NODE_PREFIX));
        p.distinguished_name.push(DnType::OrganizationName, crate::auth::NODES);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p)
    }

    /// A user's client certificate: CN `name`, one O per group, valid from a minute ago for
    /// `ttl_secs`: (cert PEM, key PEM). Written here, DER by hand: the certificate library
    /// keeps one value per attribute type, and Kubernetes' convention is an O per group.
    pub fn user_cert(
        &self,
        name: &str,
        groups: &[String],
        ttl_secs: u64,
    ) -> Result<(String, String), PkiError> {
        use rcgen::{PublicKeyData, SigningKey};
        if self.ca_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::Mode(
                "the cluster CA's key is not ECDSA P-256: cannot sign user certificates".into(),
            ));
        }
        let key = KeyPair::generate()?;
        let (_, ca) = x509_parser::parse_x509_certificate(&self.ca_der)
            .map_err(|e| PkiError::Mode(format!("the cluster CA certificate: {e}")))?;
        let issuer = ca.tbs_certificate.subject.as_raw().to_vec();
        let now = time::OffsetDateTime::now_utc();
        let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2).min(100 * 365 * 86400);
        let (from, until) = (now - time::Duration::minutes(1), now + time::Duration::seconds(ttl));
        let mut serial = [0u8; 16];
        aws_lc_rs::rand::fill(&mut serial).map_err(|_| PkiError::Mode("no randomness".into()))?;
        serial[0] = (serial[0] & 0x7f) | 0x01;
        let rdn = |oid: &[u8], value: &str| {
            der::tlv(0x31, &der::tlv(0x30, &[oid, &der::tlv(0x0c, value.as_bytes())].concat()))
        };
        let mut subject = rdn(der::CN, name);
        for g in groups {
            subject.extend(rdn(der::O, g));
        }
        let extensions = der::tlv(
            0xa3,
            &der::tlv(
                0x30,
                &[
                    // keyUsage: digitalSignature (critical)
                    der::tlv(
                        0x30,
                        &[der::KEY_USAGE, &[0x01, 0x01, 0xff], &der::tlv(0x04, &[0x03, 0x02, 0x07, 0x80])]
                            .concat(),
                    ),
                    // extKeyUsage: clientAuth
                    der::tlv(
                        0x30,
                        &[der::EXT_KEY_USAGE, &der::tlv(0x04, &der::tlv(0x30, der::CLIENT_AUTH))].concat(),
                    ),
                    // basicConstraints: not a CA (critical)
                    der::tlv(
                        0x30,
                        &[der::BASIC_CONSTRAINTS, &[0x01, 0x01, 0xff], &der::tlv(0x04, &[0x30, 0x00])]
                            .concat(),
                    ),
                ]
                .concat(),
            ),
        );
        let tbs = der::tlv(
            0x30,
            &[
                vec![0xa0, 0x03, 0x02, 0x01, 0x02],
                der::tlv(0x02, &serial),
                der::tlv(0x30, der::ECDSA_SHA256),
                issuer,
                der::tlv(0x30, &[der::time(from), der::time(until)].concat()),
                der::tlv(0x30, &subject),
                key.subject_public_key_info(),
                extensions,
            ]
            .concat(),
        );
        let signature = self.ca_key.sign(&tbs)?;
        let cert = der::tlv(
            0x30,
            &[tbs, der::tlv(0x30, der::ECDSA_SHA256), der::tlv(0x03, &[&[0u8][..], &signature].concat())]
                .concat(),
        );
        Ok((der::pem("CERTIFICATE", &cert), key.serialize_pem()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_sharing_a_store_share_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::redb_store::RedbStore::open(&dir.path().join("s.redb"), 16).unwrap();
        let a = Pki::load_shared(&store, &dir.path().join("a"), None).unwrap();
        let b = Pki::load_shared(&store, &dir.path().join("b"), None).unwrap();
        assert_eq!(a.join_token(), b.join_token());
        assert_eq!(
            std::fs::read(dir.path().join("a/ca.key")).unwrap(),
            std::fs::read(dir.path().join("b/ca.key")).unwrap()
        );
    }

    /// With a sealer the store holds no key in clear; a replica with the secret gets the
    /// same CA, one without it or with another is refused, and a record left in clear by an
    /// older version is sealed in place.
    #[test]
    fn a_sealed_ca_key_is_never_in_the_store_in_clear() {
        use crate::store::Store;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::redb_store::RedbStore::open(&dir.path().join("s.redb"), 16).unwrap();
        let clear = Pki::load_shared(&store, &dir.path().join("old"), None).unwrap();
        let sealer = crate::seal::Sealer::new(b"a secret of the replicas").unwrap();
        let a = Pki::load_shared(&store, &dir.path().join("a"), Some(&sealer)).unwrap();
        assert_eq!(a.join_token(), clear.join_token(), "the same CA, now sealed");
        let record = store.get(STORE_KEY).unwrap().unwrap().object.to_string();
        assert!(!record.contains("PRIVATE KEY") && record.contains("sealed"), "{record}");
        let b = Pki::load_shared(&store, &dir.path().join("b"), Some(&sealer)).unwrap();
        assert_eq!(a.join_token(), b.join_token());
        let e = Pki::load_shared(&store, &dir.path().join("c"), None).err().unwrap().to_string();
        assert!(e.contains("--pki-secret-file"), "{e}");
        let other = crate::seal::Sealer::new(b"another secret entirely").unwrap();
        let e = Pki::load_shared(&store, &dir.path().join("d"), Some(&other)).err().unwrap().to_string();
        assert!(e.contains("does not open with this secret"), "{e}");
    }

    #[test]
    fn the_ca_and_token_persist_and_the_token_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path()).unwrap();
        let b = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.join_token(), b.join_token());
        let token = a.join_token();
        assert!(token.starts_with(&format!("tug::{}::", sha256_hex(&a.ca_der))));
        assert!(a.check_token(&token));
        assert!(a.check_token(token.rsplit("::").next().unwrap()));
        assert!(!a.check_token("tug::x::wrong"));
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        let (cert, key) = a.client_cert("node-a").unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----") && key.contains("PRIVATE KEY"));
    }
}

/// The few DER pieces a user certificate is made of.
mod der {
    pub const CN: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
    pub const O: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x0a];
    pub const ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    pub const KEY_USAGE: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x0f];
    pub const EXT_KEY_USAGE: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x25];
    pub const BASIC_CONSTRAINTS: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x13];
    pub const CLIENT_AUTH: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

    /// Tag, length, value.
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match u8::try_from(content.len()) {
            Ok(n) if n < 0x80 => out.push(n),
            _ => {
                let bytes: Vec<u8> =
                    content.len().to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
                // At most 8 length bytes: the count fits.
                out.push(0x80 | u8::try_from(bytes.len()).unwrap_or(8));
                out.extend(bytes);
            }
        }
        out.extend_from_slice(content);
        out
    }

    /// UTCTime before 2050, GeneralizedTime from then on (RFC 5280).
    pub fn time(t: time::OffsetDateTime) -> Vec<u8> {
        let (y, mo, d, h, mi, s) = (t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second());
        if y < 2050 {
            tlv(0x17, format!("{:02}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100).as_bytes())
        } else {
            tlv(0x18, format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z").as_bytes())
        }
    }

    pub fn pem(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }
}
