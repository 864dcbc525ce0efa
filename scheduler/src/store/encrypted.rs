//! Encryption at rest, Kubernetes' `EncryptionConfiguration`: a [`Store`] in front of another
//! that encrypts the objects of the configured resources (Secrets, typically) as they are
//! written and decrypts them as they are read, listed, scanned and watched — so the API, the
//! controllers and every backend see plain objects, and the data directory or the etcd
//! keyspace holds none of their values.
//!
//! Per resource, the first provider writes (`aesgcm`, `aescbc`, `secretbox` with the first of
//! their keys, or `identity`: in clear); reads accept every provider's keys by name, and
//! objects in clear. A stored object keeps `apiVersion`, `kind` and `metadata` (which the
//! store stamps and the API selects on); the rest is the `encrypted` field,
//! `k8s:enc:<provider>:v1:<key name>:` + base64 of the nonce (IV) and ciphertext. AES-GCM
//! authenticates the store key too, so a ciphertext moved under another key does not open.
//! Rotation: put a new key first, restart, then rewrite every object (`tug admin reencrypt`).

use super::{Store, StoreError, Stored, Watch};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Where that annotation travels inside the sealed part.
const SEALED_LAST_APPLIED: &str = "\u{0}lastApplied";

/// Where the cluster CA (its key, the join token) is recorded for every replica.
const PKI: &str = "_tug/pki/";

/// One provider.
#[derive(Clone)]
enum Provider {
    Identity,
    /// (name, key) pairs; the first writes.
    AesGcm(Vec<(String, Vec<u8>)>),
    AesCbc(Vec<(String, Vec<u8>)>),
    SecretBox(Vec<(String, Vec<u8>)>),
}

impl Provider {
    fn label(&self) -> &'static str {
        match self {
            Provider::Identity => "identity",
            Provider::AesGcm(_) => "aesgcm",
            Provider::AesCbc(_) => "aescbc",
            Provider::SecretBox(_) => "secretbox",
        }
    }

    fn keys(&self) -> &[(String, Vec<u8>)] {
        match self {
            Provider::Identity => &[],
            Provider::AesGcm(k) | Provider::AesCbc(k) | Provider::SecretBox(k) => k,
        }
    }
}

/// Which store keys a rule covers, and its providers.
struct Rule {
    /// Store key prefixes (`/secrets/`, `apps/deployments/`); empty: every kind.
    prefixes: Vec<String>,
    all: bool,
    providers: Vec<Provider>,
}

/// What `--encryption-config` says.
pub struct Config {
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileShape {
    api_version: String,
    kind: String,
    resources: Vec<ResourceShape>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceShape {
    resources: Vec<String>,
    providers: Vec<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysShape {
    keys: Vec<KeyShape>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyShape {
    name: String,
    secret: String,
}

impl Config {
    /// Reads and checks an `EncryptionConfiguration` (YAML or JSON); errors name the field.
    pub fn load(path: &std::path::Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let shape: FileShape = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if shape.kind != "EncryptionConfiguration"
            || !["apiserver.config.k8s.io/v1", "apiserver.k8s.io/v1"].contains(&shape.api_version.as_str())
        {
            return Err(format!(
                "expected kind EncryptionConfiguration of apiVersion apiserver.config.k8s.io/v1, got {} {}",
                shape.kind, shape.api_version
            ));
        }
        let mut rules = Vec::new();
        for (i, r) in shape.resources.iter().enumerate() {
            let at = format!("resources[{i}]");
            if r.providers.is_empty() {
                return Err(format!("{at}.providers: Required value"));
            }
            let mut prefixes = Vec::new();
            let mut all = false;
            for (j, res) in r.resources.iter().enumerate() {
                match res.as_str() {
                    "*.*" => all = true,
                    _ => {
                        let (plural, group) = res.split_once('.').unwrap_or((res.as_str(), ""));
                        let found: Vec<String> = tug_api::object::KINDS
                            .iter()
                            .filter(|k| k.group == group && (plural == "*" || k.plural == plural))
                            .map(|k| format!("{}/{}/", k.group, k.plural))
                            .collect();
                        if found.is_empty() {
                            return Err(format!(
                                "{at}.resources[{j}]: Invalid value: {res:?}: no such resource"
                            ));
                        }
                        prefixes.extend(found);
                    }
                }
            }
            let mut providers = Vec::new();
            for (j, p) in r.providers.iter().enumerate() {
                let at = format!("{at}.providers[{j}]");
                let map = p.as_mapping().filter(|m| m.len() == 1).ok_or_else(|| {
                    format!("{at}: exactly one of aesgcm, aescbc, secretbox, identity must be given")
                })?;
                let (name, body) = map.iter().next().ok_or_else(|| format!("{at}: empty"))?;
                let name = name.as_str().unwrap_or_default();
                let keys = |sizes: &[usize]| -> Result<Vec<(String, Vec<u8>)>, String> {
                    let k: KeysShape =
                        serde_yaml_ng::from_value(body.clone()).map_err(|e| format!("{at}.{name}: {e}"))?;
                    if k.keys.is_empty() {
                        return Err(format!("{at}.{name}.keys: Required value"));
                    }
                    k.keys
                        .iter()
                        .enumerate()
                        .map(|(n, key)| {
                            let bytes = B64.decode(key.secret.trim()).map_err(|e| {
                                format!("{at}.{name}.keys[{n}].secret: Invalid value: not base64: {e}")
                            })?;
                            if !sizes.contains(&bytes.len()) {
                                return Err(format!(
                                    "{at}.{name}.keys[{n}].secret: Invalid value: the key is {} bytes; {name} takes {sizes:?}",
                                    bytes.len()
                                ));
                            }
                            if key.name.is_empty() || key.name.contains(':') {
                                return Err(format!("{at}.{name}.keys[{n}].name: Invalid value: {:?}: must be non-empty, without ':'", key.name));
                            }
                            Ok((key.name.clone(), bytes))
                        })
                        .collect()
                };
                providers.push(match name {
                    "identity" => Provider::Identity,
                    "aesgcm" => Provider::AesGcm(keys(&[16, 24, 32])?),
                    "aescbc" => Provider::AesCbc(keys(&[16, 24, 32])?),
                    "secretbox" => Provider::SecretBox(keys(&[32])?),
                    other => {
                        return Err(format!(
                            "{at}: Unsupported value: {other:?}: supported values: \"aescbc\", \"aesgcm\", \"identity\", \"secretbox\""
                        ));
                    }
                });
            }
            rules.push(Rule { prefixes, all, providers });
        }
        Ok(Config { rules })
    }

    /// The store prefixes of every kind some rule covers (what a re-encryption rewrites),
    /// and the cluster CA's record when Secrets are covered.
    pub fn prefixes(&self) -> Vec<String> {
        tug_api::object::KINDS
            .iter()
            .map(|k| format!("{}/{}/", k.group, k.plural))
            .chain([PKI.to_string()])
            .filter(|p| self.rule(p).is_some())
            .collect()
    }

    /// Whether objects under `key` are sealed.
    pub fn covers(&self, key: &str) -> bool {
        self.rule(key).is_some()
    }

    fn rule(&self, key: &str) -> Option<&Rule> {
        // The cluster CA's record (its key) goes as Secrets go; the server's other internal
        // records (reservations, leases of its own) are not secret.
        let key = if key.starts_with(PKI) {
            "/secrets/"
        } else if key.starts_with("_tug/") {
            return None;
        } else {
            key
        };
        self.rules.iter().find(|r| r.all || r.prefixes.iter().any(|p| key.starts_with(p.as_str())))
    }

    /// The object as it is to be stored under `key`.
    pub fn seal(&self, key: &str, object: Value) -> Result<Value, StoreError> {
        let Some(rule) = self.rule(key) else { return Ok(object) };
        let provider = &rule.providers[0];
        let Some((name, secret)) = provider.keys().first() else { return Ok(object) };
        let Value::Object(mut all) = object else { return Ok(object) };
        let mut kept = Map::new();
        for f in ["apiVersion", "kind", "metadata"] {
            if let Some(v) = all.remove(f) {
                kept.insert(f.into(), v);
            }
        }
        // kubectl's client-side apply copies the whole object, data included, into this
        // annotation: it is sealed with the rest.
        let last = kept
            .get_mut("metadata")
            .and_then(|m| m.get_mut("annotations"))
            .and_then(Value::as_object_mut)
            .and_then(|a| a.remove(LAST_APPLIED));
        if let Some(l) = last {
            all.insert(SEALED_LAST_APPLIED.into(), l);
        }
        let plain =
            serde_json::to_vec(&Value::Object(all)).map_err(|e| StoreError::Backend(e.to_string()))?;
        let sealed = encrypt(provider, secret, key, &plain).map_err(StoreError::Backend)?;
        kept.insert(
            "encrypted".into(),
            format!("k8s:enc:{}:v1:{name}:{}", provider.label(), B64.encode(sealed)).into(),
        );
        Ok(Value::Object(kept))
    }

    /// The object stored under `key`, opened (objects in clear pass as they are).
    pub fn open(&self, key: &str, object: &mut Value) -> Result<(), StoreError> {
        let Some(text) = object.get("encrypted").and_then(Value::as_str).map(str::to_string) else {
            return Ok(());
        };
        let fail = |m: String| StoreError::Backend(format!("{key}: {m}"));
        let rest = text.strip_prefix("k8s:enc:").ok_or_else(|| fail("not an encrypted value".into()))?;
        let mut parts = rest.splitn(4, ':');
        let (label, _version, name, data) = (parts.next(), parts.next(), parts.next(), parts.next());
        let (Some(label), Some(name), Some(data)) = (label, name, data) else {
            return Err(fail("a malformed encrypted value".into()));
        };
        let providers = self.rules.iter().flat_map(|r| r.providers.iter());
        let (provider, secret) = providers
            .filter(|p| p.label() == label)
            .find_map(|p| p.keys().iter().find(|(n, _)| n == name).map(|(_, s)| (p, s)))
            .ok_or_else(|| {
                fail(format!("encrypted with {label} key {name:?}, which --encryption-config does not hold"))
            })?;
        let sealed = B64.decode(data).map_err(|e| fail(e.to_string()))?;
        let plain = decrypt(provider, secret, key, &sealed).map_err(fail)?;
        let Value::Object(fields) = serde_json::from_slice(&plain).map_err(|e| fail(e.to_string()))? else {
            return Err(fail("the decrypted value is not an object".into()));
        };
        let mut fields = fields;
        let last = fields.remove(SEALED_LAST_APPLIED);
        if let Some(o) = object.as_object_mut() {
            o.remove("encrypted");
            o.extend(fields);
        }
        if let Some(l) = last {
            object["metadata"]["annotations"][LAST_APPLIED] = l;
        }
        Ok(())
    }
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| "no randomness".to_string())?;
    Ok(b)
}

fn gcm_algorithm(len: usize) -> &'static aws_lc_rs::aead::Algorithm {
    match len {
        16 => &aws_lc_rs::aead::AES_128_GCM,
        24 => &aws_lc_rs::aead::AES_192_GCM,
        _ => &aws_lc_rs::aead::AES_256_GCM,
    }
}

fn cbc_algorithm(len: usize) -> &'static aws_lc_rs::cipher::Algorithm {
    match len {
        16 => &aws_lc_rs::cipher::AES_128,
        24 => &aws_lc_rs::cipher::AES_192,
        _ => &aws_lc_rs::cipher::AES_256,
    }
}

fn encrypt(provider: &Provider, secret: &[u8], key: &str, plain: &[u8]) -> Result<Vec<u8>, String> {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    match provider {
        Provider::Identity => Ok(plain.to_vec()),
        Provider::AesGcm(_) => {
            let k = LessSafeKey::new(
                UnboundKey::new(gcm_algorithm(secret.len()), secret).map_err(|e| e.to_string())?,
            );
            let nonce = random::<12>()?;
            let mut buf = plain.to_vec();
            k.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut buf,
            )
            .map_err(|e| e.to_string())?;
            Ok([nonce.as_slice(), &buf].concat())
        }
        Provider::AesCbc(_) => {
            use aws_lc_rs::cipher::{EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey};
            let k = PaddedBlockEncryptingKey::cbc_pkcs7(
                UnboundCipherKey::new(cbc_algorithm(secret.len()), secret).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
            let iv = random::<16>()?;
            let mut buf = plain.to_vec();
            k.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(iv.into())).map_err(|e| e.to_string())?;
            Ok([iv.as_slice(), &buf].concat())
        }
        Provider::SecretBox(_) => {
            use crypto_secretbox::aead::{Aead, KeyInit};
            let cipher =
                crypto_secretbox::XSalsa20Poly1305::new_from_slice(secret).map_err(|e| e.to_string())?;
            let nonce = random::<24>()?;
            let sealed = cipher.encrypt(&nonce.into(), plain).map_err(|e| e.to_string())?;
            Ok([nonce.as_slice(), &sealed].concat())
        }
    }
}

fn decrypt(provider: &Provider, secret: &[u8], key: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    let short = || "the encrypted value is too short".to_string();
    match provider {
        Provider::Identity => Ok(sealed.to_vec()),
        Provider::AesGcm(_) => {
            let (nonce, body) = sealed.split_at_checked(12).ok_or_else(short)?;
            let k = LessSafeKey::new(
                UnboundKey::new(gcm_algorithm(secret.len()), secret).map_err(|e| e.to_string())?,
            );
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|e| e.to_string())?;
            let mut buf = body.to_vec();
            let plain = k.open_in_place(nonce, Aad::from(key.as_bytes()), &mut buf).map_err(|_| {
                "does not decrypt with its key (corrupt, or moved from another key)".to_string()
            })?;
            Ok(plain.to_vec())
        }
        Provider::AesCbc(_) => {
            use aws_lc_rs::cipher::{DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
            let (iv, body) = sealed.split_at_checked(16).ok_or_else(short)?;
            let k = PaddedBlockDecryptingKey::cbc_pkcs7(
                UnboundCipherKey::new(cbc_algorithm(secret.len()), secret).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
            let iv: [u8; 16] = iv.try_into().map_err(|_| short())?;
            let mut buf = body.to_vec();
            let plain = k
                .decrypt(&mut buf, DecryptionContext::Iv128(iv.into()))
                .map_err(|_| "does not decrypt with its key".to_string())?;
            Ok(plain.to_vec())
        }
        Provider::SecretBox(_) => {
            use crypto_secretbox::aead::{Aead, KeyInit};
            let (nonce, body) = sealed.split_at_checked(24).ok_or_else(short)?;
            let cipher =
                crypto_secretbox::XSalsa20Poly1305::new_from_slice(secret).map_err(|e| e.to_string())?;
            let nonce: [u8; 24] = nonce.try_into().map_err(|_| short())?;
            cipher.decrypt(&nonce.into(), body).map_err(|_| "does not decrypt with its key".to_string())
        }
    }
}

/// A store whose configured objects are encrypted at rest.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    config: Arc<Config>,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn Store>, config: Config) -> EncryptedStore {
        EncryptedStore::shared(inner, Arc::new(config))
    }

    pub fn shared(inner: Arc<dyn Store>, config: Arc<Config>) -> EncryptedStore {
        EncryptedStore { inner, config }
    }

    /// The watch with each event's object opened.
    fn opening(&self, w: Watch) -> Watch {
        let config = self.config.clone();
        w.mapped(Arc::new(move |key: &str, object: &mut Value| {
            if let Err(e) = config.open(key, object) {
                tracing::warn!("tug-scheduler: watch: {e}");
            }
        }))
    }

    fn opened(&self, mut s: Stored) -> Result<Stored, StoreError> {
        self.config.open(&s.key, &mut s.object)?;
        Ok(s)
    }
}

impl Store for EncryptedStore {
    fn fenced(&self, fence: &super::Fence) -> Option<Arc<dyn Store>> {
        let inner = self.inner.fenced(fence)?;
        Some(Arc::new(EncryptedStore { inner, config: self.config.clone() }))
    }

    fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        self.inner.get(key)?.map(|s| self.opened(s)).transpose()
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Stored>, u64), StoreError> {
        let (items, rev) = self.inner.list(prefix)?;
        Ok((items.into_iter().map(|s| self.opened(s)).collect::<Result<_, _>>()?, rev))
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        each: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        let mut failed = None;
        let rev = self.inner.scan(prefix, after, &mut |key, bytes| {
            if self.config.rule(key).is_none() {
                return each(key, bytes);
            }
            let opened = serde_json::from_slice::<Value>(bytes)
                .map_err(|e| StoreError::Backend(e.to_string()))
                .and_then(|mut v| self.config.open(key, &mut v).map(|()| v))
                .and_then(|v| serde_json::to_vec(&v).map_err(|e| StoreError::Backend(e.to_string())));
            match opened {
                Ok(b) => each(key, &b),
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        failed.map_or(Ok(rev), Err)
    }

    fn create(&self, key: &str, object: Value) -> Result<Stored, StoreError> {
        let stored = self.inner.create(key, self.config.seal(key, object)?)?;
        self.opened(stored)
    }

    fn update(&self, key: &str, object: Value, expected: Option<u64>) -> Result<Stored, StoreError> {
        let stored = self.inner.update(key, self.config.seal(key, object)?, expected)?;
        self.opened(stored)
    }

    fn create_each(&self, objects: Vec<(String, Value)>) -> Vec<Result<Stored, StoreError>> {
        let sealed: Vec<Result<(String, Value), StoreError>> = objects
            .into_iter()
            .map(|(key, object)| self.config.seal(&key, object).map(|o| (key, o)))
            .collect();
        let mut written = self
            .inner
            .create_each(sealed.iter().filter_map(|r| r.as_ref().ok().cloned()).collect())
            .into_iter();
        sealed
            .into_iter()
            .map(|r| match r {
                Err(e) => Err(e),
                Ok(_) => written
                    .next()
                    .unwrap_or_else(|| Err(StoreError::Backend("a batch answer is missing".into())))
                    .and_then(|s| self.opened(s)),
            })
            .collect()
    }

    fn update_each(&self, updates: Vec<(String, Value, Option<u64>)>) -> Vec<Result<Stored, StoreError>> {
        let mut sealed = Vec::with_capacity(updates.len());
        let mut refused: Vec<Option<StoreError>> = Vec::with_capacity(updates.len());
        for (key, object, expected) in updates {
            match self.config.seal(&key, object) {
                Ok(o) => {
                    sealed.push((key, o, expected));
                    refused.push(None);
                }
                Err(e) => refused.push(Some(e)),
            }
        }
        let mut written = self.inner.update_each(sealed).into_iter();
        refused
            .into_iter()
            .map(|r| match r {
                Some(e) => Err(e),
                None => written
                    .next()
                    .unwrap_or_else(|| Err(StoreError::Backend("a batch answer is missing".into())))
                    .and_then(|s| self.opened(s)),
            })
            .collect()
    }

    fn delete(&self, key: &str, expected: Option<u64>) -> Result<Stored, StoreError> {
        self.opened(self.inner.delete(key, expected)?)
    }

    fn watch(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        Ok(self.opening(self.inner.watch(prefix, after)?))
    }

    fn watch_node(&self, prefix: &str, after: u64, node: &str) -> Result<Watch, StoreError> {
        Ok(self.opening(self.inner.watch_node(prefix, after, node)?))
    }

    fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.inner.compact(revision)
    }

    fn revision(&self) -> Result<u64, StoreError> {
        self.inner.revision()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb_store::RedbStore;
    use serde_json::json;

    fn config(providers: &str) -> Config {
        Config::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        ))
        .unwrap()
    }

    const K1: &str = "c2VjcmV0IGlzIHNlY3VyZSwgaSB0aGluayBzbyE/Pz8=";
    const K2: &str = "dGhpcyBpcyBhIHNlY29uZCBrZXkgb2YgMzIgYnl0ZXM=";

    /// The encrypting store passes a node's watch on to the store's index by node.
    #[tokio::test]
    async fn an_encrypting_store_keeps_the_watch_by_node() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb"), 16).unwrap());
        let c = config(&format!("  - aesgcm: {{keys: [{{name: k1, secret: {K1}}}]}}\n"));
        crate::store::a_nodes_watch_hears_its_node_only(&EncryptedStore::new(raw, c)).await;
    }

    #[test]
    fn every_provider_round_trips_and_the_store_holds_no_value() {
        for p in ["aesgcm", "aescbc", "secretbox"] {
            let dir = tempfile::tempdir().unwrap();
            let raw: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb"), 16).unwrap());
            let c = config(&format!("  - {p}: {{keys: [{{name: k1, secret: {K1}}}]}}\n  - identity: {{}}\n"));
            let store = EncryptedStore::new(raw.clone(), c);
            let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "a",
                    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"password\":\"aHVudGVyMg==\"}}", "team": "x"}},
                "data": {"password": "aHVudGVyMg=="}, "type": "Opaque"});
            store.create("/secrets/a/s", secret.clone()).unwrap();
            let got = store.get("/secrets/a/s").unwrap().unwrap().object;
            assert_eq!(got["data"], secret["data"], "{p}");
            assert_eq!(got["metadata"]["annotations"], secret["metadata"]["annotations"], "{p}");
            let at_rest = raw.get("/secrets/a/s").unwrap().unwrap().object.to_string();
            assert!(
                !at_rest.contains("aHVudGVyMg") && at_rest.contains(&format!("k8s:enc:{p}:v1:k1:")),
                "{p}: {at_rest}"
            );
            let bytes = std::fs::read(dir.path().join("s.redb")).unwrap();
            assert!(!bytes.windows(10).any(|w| w == b"aHVudGVyMg"), "{p}: the file holds the value");
            // Other kinds stay in clear; lists, scans and watches see plain objects.
            store
                .create(
                    "/configmaps/a/c",
                    json!({"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}),
                )
                .unwrap();
            assert!(raw.get("/configmaps/a/c").unwrap().unwrap().object["data"]["k"] == "v");
            let (items, _) = store.list("/secrets/").unwrap();
            assert_eq!(items[0].object["data"], secret["data"]);
            let mut seen = Vec::new();
            store
                .scan("/secrets/", None, &mut |_, b| {
                    seen.push(String::from_utf8_lossy(b).to_string());
                    true
                })
                .unwrap();
            assert!(seen[0].contains("aHVudGVyMg"), "{seen:?}");
            // The CA's record goes as Secrets go.
            store.create("_tug/pki//cluster", json!({"ca.key": "-----BEGIN PRIVATE KEY-----"})).unwrap();
            assert!(
                !raw.get("_tug/pki//cluster").unwrap().unwrap().object.to_string().contains("PRIVATE KEY")
            );
            assert_eq!(
                store.get("_tug/pki//cluster").unwrap().unwrap().object["ca.key"],
                "-----BEGIN PRIVATE KEY-----"
            );
        }
    }

    #[test]
    fn rotation_reads_old_keys_and_a_moved_ciphertext_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb"), 16).unwrap());
        let before = EncryptedStore::new(
            raw.clone(),
            config(&format!("  - aesgcm: {{keys: [{{name: k1, secret: {K1}}}]}}\n")),
        );
        let s = json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "b"}});
        before.create("/secrets/a/s", s.clone()).unwrap();
        // Identity first: old objects still open; new ones are written in clear.
        raw.create("/secrets/a/plain", s.clone()).unwrap();
        let after = EncryptedStore::new(
            raw.clone(),
            config(&format!(
                "  - aesgcm: {{keys: [{{name: k2, secret: {K2}}}, {{name: k1, secret: {K1}}}]}}\n"
            )),
        );
        assert_eq!(after.get("/secrets/a/s").unwrap().unwrap().object["data"], s["data"]);
        assert_eq!(
            after.get("/secrets/a/plain").unwrap().unwrap().object["data"],
            s["data"],
            "clear objects pass"
        );
        let cur = after.get("/secrets/a/s").unwrap().unwrap();
        after.update("/secrets/a/s", cur.object, None).unwrap();
        assert!(
            raw.get("/secrets/a/s").unwrap().unwrap().object.to_string().contains("k8s:enc:aesgcm:v1:k2:")
        );
        // A ciphertext copied under another key is refused (the key is authenticated).
        let sealed = raw.get("/secrets/a/s").unwrap().unwrap().object;
        raw.create("/secrets/b/s", sealed).unwrap();
        assert!(after.get("/secrets/b/s").is_err());
        // Without the key, a clear error.
        let lost = EncryptedStore::new(
            raw,
            config(&format!("  - aesgcm: {{keys: [{{name: k9, secret: {K2}}}]}}\n")),
        );
        let e = lost.get("/secrets/a/s").unwrap_err().to_string();
        assert!(e.contains("k2") && e.contains("does not hold"), "{e}");
    }

    #[test]
    fn a_bad_configuration_is_named() {
        let e = Config::parse("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm: {keys: [{name: k, secret: c2hvcnQ=}]}\n").err().unwrap();
        assert!(
            e.contains("resources[0].providers[0].aesgcm.keys[0].secret") && e.contains("5 bytes"),
            "{e}"
        );
        let e = Config::parse("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [widgets]\n  providers: [{identity: {}}]\n").err().unwrap();
        assert!(e.contains("widgets"), "{e}");
        let e = Config::parse("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers: [{kms: {}}]\n").err().unwrap();
        assert!(e.contains("Unsupported value: \"kms\""), "{e}");
    }
}
