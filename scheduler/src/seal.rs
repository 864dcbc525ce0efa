//! Secrets sealed for a shared store. With etcd every replica (and every etcd backup) reads
//! the store, so the cluster CA's key and the join token are kept there sealed: AES-256-GCM
//! under a key derived by PBKDF2-HMAC-SHA256 (a random salt per record) from a secret that
//! every replica holds in a file and the store never sees — the way k3s seals its bootstrap
//! data with its server token.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::path::Path;

const ALGORITHM: &str = "pbkdf2-hmac-sha256/aes-256-gcm";
const ROUNDS: u32 = 100_000;
/// Binds a sealed record to its use: a record sealed for something else does not open here.
const AAD: &[u8] = b"tug cluster pki";

/// A secret shared by the replicas, read from a file.
pub struct Sealer {
    secret: Vec<u8>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// Reads the secret from `path` (surrounding white space dropped): at least 16 bytes, in
    /// a file no other user can read.
    pub fn from_file(path: &Path) -> Result<Sealer, String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "{}: mode {:04o}: the secret must be readable by its owner alone (chmod 600)",
                path.display(),
                meta.mode() & 0o7777
            ));
        }
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Sealer::new(text.trim_ascii()).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A sealer for `secret` (at least 16 bytes).
    pub fn new(secret: &[u8]) -> Result<Sealer, String> {
        if secret.len() < 16 {
            return Err(
                "the secret is shorter than 16 bytes (make one with: head -c 32 /dev/urandom | base64)"
                    .into(),
            );
        }
        Ok(Sealer { secret: secret.to_vec() })
    }

    fn key(&self, salt: &[u8]) -> Result<LessSafeKey, String> {
        let mut key = [0u8; 32];
        let rounds = std::num::NonZeroU32::new(ROUNDS).ok_or("pbkdf2 rounds")?;
        aws_lc_rs::pbkdf2::derive(
            aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            salt,
            &self.secret,
            &mut key,
        );
        let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| "the sealing key")?;
        Ok(LessSafeKey::new(unbound))
    }

    /// `plain` sealed: `{algorithm, salt, nonce, data}`, each byte string in base64.
    pub fn seal(&self, plain: &[u8]) -> Result<Value, String> {
        let (mut salt, mut nonce) = ([0u8; 16], [0u8; NONCE_LEN]);
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| "no randomness for the salt")?;
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no randomness for the nonce")?;
        let mut data = plain.to_vec();
        self.key(&salt)?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut data)
            .map_err(|_| "sealing failed")?;
        Ok(
            json!({"algorithm": ALGORITHM, "salt": B64.encode(salt), "nonce": B64.encode(nonce), "data": B64.encode(data)}),
        )
    }

    /// What [`Sealer::seal`] sealed, if this secret sealed it.
    pub fn open(&self, sealed: &Value) -> Result<Vec<u8>, String> {
        if sealed["algorithm"] != ALGORITHM {
            return Err(format!("sealed with {}, not {ALGORITHM}", sealed["algorithm"]));
        }
        let field = |k: &str| -> Result<Vec<u8>, String> {
            B64.decode(sealed[k].as_str().ok_or_else(|| format!("no {k}"))?).map_err(|e| format!("{k}: {e}"))
        };
        let (salt, mut data) = (field("salt")?, field("data")?);
        let nonce: [u8; NONCE_LEN] = field("nonce")?.try_into().map_err(|_| "a nonce of the wrong length")?;
        let plain = self
            .key(&salt)?
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut data)
            .map_err(|_| "it does not open with this secret (every replica needs the same one)")?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_opens_with_the_same_secret_only() {
        let a = Sealer::new(b"0123456789abcdef-one").unwrap();
        let b = Sealer::new(b"0123456789abcdef-two").unwrap();
        let sealed = a.seal(b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!sealed.to_string().contains("PRIVATE"), "{sealed}");
        assert_eq!(a.open(&sealed).unwrap(), b"-----BEGIN PRIVATE KEY-----");
        assert!(b.open(&sealed).unwrap_err().contains("does not open with this secret"));
        let mut tampered = sealed.clone();
        let mut data = B64.decode(sealed["data"].as_str().unwrap()).unwrap();
        data[0] ^= 1;
        tampered["data"] = B64.encode(data).into();
        assert!(a.open(&tampered).is_err(), "a changed record does not open");
        assert_ne!(a.seal(b"x").unwrap()["salt"], a.seal(b"x").unwrap()["salt"], "a fresh salt each time");
        assert!(Sealer::new(b"short").is_err());
    }
}
