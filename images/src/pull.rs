//! Pulling from registries with `oci-client`.
//!
//! One pull: the manifest (an index is resolved to the node's platform), the config, then the
//! layers — each downloaded to `tmp/`, hashed while it is written, moved into `blobs/` only if
//! the hash is the descriptor's digest, and unpacked once (its uncompressed stream checked
//! against the config's diff ID). The record goes into the index last, so an image is either
//! complete or absent. Concurrent pulls of one image share a single download.

use crate::auth::Credentials;
use crate::digest::{Digest, HashingWriter};
use crate::manifest::{self, Descriptor, ImageConfig, Parsed, Platform};
use crate::reference::ImageRef;
use crate::store::{ImageRecord, LayerRecord, Store, now};
use futures_util::future::{BoxFuture, FutureExt, Shared};
use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Kubernetes' `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The policy a container gets when it names none: `Always` for `:latest` or no tag,
    /// `IfNotPresent` otherwise (Kubernetes' rule).
    pub fn default_for(image: &str) -> PullPolicy {
        match ImageRef::parse(image) {
            Ok(r) if r.digest().is_none() && r.tag() == Some("latest") => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }

    pub fn parse(s: &str) -> Result<PullPolicy, String> {
        match s {
            "Always" => Ok(PullPolicy::Always),
            "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
            "Never" => Ok(PullPolicy::Never),
            o => Err(format!("imagePullPolicy {o:?}: expected Always, IfNotPresent or Never")),
        }
    }
}

/// A pull that failed: `reason` is what a pod's container status shows (`ErrImagePull`,
/// `ErrImageNeverPull`, `InvalidImageName`), `message` the registry's or the store's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullError {
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for PullError {}

/// An error with its causes (`error sending request: … : connection refused`), so what went
/// wrong on the wire is not hidden behind the outermost message; a TLS handshake answered in
/// plain HTTP says so as Docker does, with the flag that allows it.
pub fn explain(e: &(dyn std::error::Error + 'static), registry: &str) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    let all = parts.join(": ");
    if all.contains("InvalidContentType")
        || all.contains("invalid HTTP version parsed")
        || all.contains("wrong version number")
    {
        return format!(
            "{all}: http: server gave HTTP response to HTTPS client (a registry without TLS: --insecure-registry {registry})"
        );
    }
    all
}

fn pull_err(message: String) -> PullError {
    PullError { reason: "ErrImagePull", message }
}

/// A pull in progress, layer by layer (in the manifest's order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub layers: Vec<LayerProgress>,
}

impl Progress {
    /// Bytes downloaded and bytes to download, over every layer.
    pub fn bytes(&self) -> (u64, u64) {
        self.layers.iter().fold((0, 0), |(d, t), l| (d + l.done, t + l.total))
    }
}

/// One layer of a pull: its digest, bytes downloaded of its size, and where it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerProgress {
    pub digest: String,
    pub done: u64,
    pub total: u64,
    pub state: LayerState,
}

/// Docker's words for where a layer is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LayerState {
    #[default]
    Waiting,
    Downloading,
    Extracting,
    PullComplete,
    AlreadyExists,
}

impl LayerState {
    pub fn words(self) -> &'static str {
        match self {
            LayerState::Waiting => "Waiting",
            LayerState::Downloading => "Downloading",
            LayerState::Extracting => "Extracting",
            LayerState::PullComplete => "Pull complete",
            LayerState::AlreadyExists => "Already exists",
        }
    }
}

type PullFuture = Shared<BoxFuture<'static, Result<ImageRecord, PullError>>>;

/// Pulls images into a store; one per node.
pub struct Puller {
    store: Arc<Store>,
    /// Registries (host[:port]) spoken to over plain HTTP.
    insecure: Vec<String>,
    platform: Platform,
    inflight: Mutex<HashMap<String, PullFuture>>,
    progress: Mutex<HashMap<String, Arc<Mutex<Progress>>>>,
    /// Each image's last pull: how long it took (not counting the wait for the store's
    /// lock) and its layers' final states.
    finished: Mutex<HashMap<String, (std::time::Duration, Progress)>>,
    /// Layers downloaded at once per image.
    pub parallel: usize,
    started: std::sync::atomic::AtomicU64,
}

impl Puller {
    pub fn new(store: Arc<Store>, insecure: Vec<String>) -> Arc<Puller> {
        Arc::new(Puller {
            store,
            insecure,
            platform: manifest::host_platform(),
            inflight: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            finished: Mutex::new(HashMap::new()),
            parallel: 3,
            started: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Pulls for another platform than the node's (tests of index resolution).
    pub fn with_platform(mut self: Arc<Self>, platform: Platform) -> Arc<Self> {
        Arc::get_mut(&mut self).expect("with_platform before sharing").platform = platform;
        self
    }

    /// How many pulls this puller has started (joined pulls count once).
    pub fn pulls_started(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// How far the pull of `image` (a normalised name) has come, while it runs.
    pub fn progress(&self, image: &str) -> Option<Progress> {
        let p = self.progress.lock().expect("progress lock");
        p.get(image).map(|p| p.lock().expect("progress").clone())
    }

    /// How long the last pull of `image` (a reference as a pod names it) took itself, without
    /// waiting for other pulls: kubelet's `in 1.2s` of `Pulled` (its `including waiting` is the
    /// caller's own clock).
    pub fn pull_duration(&self, image: &str) -> Option<std::time::Duration> {
        let name = ImageRef::parse(image).ok()?.name();
        self.finished.lock().expect("finished lock").get(&name).map(|f| f.0)
    }

    /// The layers of the last finished pull of `image` (a normalised name), as they ended.
    pub fn finished_progress(&self, image: &str) -> Option<Progress> {
        self.finished.lock().expect("finished lock").get(image).map(|f| f.1.clone())
    }

    /// The image a container needs, under `policy`: from the store when the policy allows,
    /// else pulled.
    pub async fn ensure(
        self: &Arc<Self>,
        image: &str,
        policy: PullPolicy,
        creds: Option<Credentials>,
    ) -> Result<ImageRecord, PullError> {
        let r = ImageRef::parse(image).map_err(|m| PullError { reason: "InvalidImageName", message: m })?;
        if policy == PullPolicy::Never {
            return match self.store.find(&r.name()).map_err(pull_err)? {
                Some(rec) => Ok(rec),
                None => Err(PullError {
                    reason: "ErrImageNeverPull",
                    message: format!("image {image:?} is not present with pull policy of Never"),
                }),
            };
        }
        self.pull_shared(&r, creds, policy == PullPolicy::IfNotPresent).await
    }

    /// Pulls `image`; a pull of the same name already running is joined, not repeated.
    pub async fn pull(
        self: &Arc<Self>,
        image: &ImageRef,
        creds: Option<Credentials>,
    ) -> Result<ImageRecord, PullError> {
        self.pull_shared(image, creds, false).await
    }

    /// Joins the running pull of `image`, or — when `reuse` and the store has it — returns
    /// the stored image, or starts a pull. Decided under one lock, so a waiter can never miss
    /// both the pull in flight and its result.
    async fn pull_shared(
        self: &Arc<Self>,
        image: &ImageRef,
        creds: Option<Credentials>,
        reuse: bool,
    ) -> Result<ImageRecord, PullError> {
        let name = image.name();
        // Pulls are shared only between callers with the same credentials: a pod without the
        // secret must not ride on (or spoil) the pull of a pod with it.
        let key = format!("{name}\0{}", creds.as_ref().map_or("", |c| c.username.as_str()));
        let fut = {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            match inflight.get(&key) {
                Some(f) => f.clone(),
                None if reuse && let Some(rec) = self.store.find(&name).map_err(pull_err)? => return Ok(rec),
                None => {
                    let me = Arc::clone(self);
                    let image = image.clone();
                    let k = key.clone();
                    let f = async move {
                        let r = me.pull_once(&image, creds).await;
                        me.inflight.lock().expect("inflight lock").remove(&k);
                        me.progress.lock().expect("progress lock").remove(&image.name());
                        r
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, f.clone());
                    f
                }
            }
        };
        fut.await
    }

    fn client(&self) -> oci_client::Client {
        oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            user_agent: concat!("tug/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    async fn pull_once(
        self: &Arc<Self>,
        image: &ImageRef,
        creds: Option<Credentials>,
    ) -> Result<ImageRecord, PullError> {
        self.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let store = Arc::clone(&self.store);
        let _content = tokio::task::spawn_blocking(move || store.content_lock())
            .await
            .map_err(|e| pull_err(e.to_string()))?
            .map_err(pull_err)?;
        let started = std::time::Instant::now();
        // One client per pull: oci-client keeps the first credentials it is given for a
        // registry, and two pods may bring different ones.
        let client = self.client();
        let auth = match creds {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        let reference = &image.oci();
        let registry = image.registry().to_string();
        let fail = |what: &str, e: oci_client::errors::OciDistributionError| {
            pull_err(format!("pulling {what} of {image} from {registry}: {}", explain(&e, &registry)))
        };
        let (bytes, digest) = client
            .pull_manifest_raw(reference, &auth, manifest::ACCEPTED)
            .await
            .map_err(|e| fail("the manifest", e))?;
        let mut manifest_bytes = bytes.to_vec();
        let mut manifest_digest = Digest::parse(&digest).map_err(pull_err)?;
        if Digest::of(&manifest_bytes) != manifest_digest {
            return Err(pull_err(format!(
                "the manifest of {image} does not match its digest {manifest_digest}"
            )));
        }
        let mut index: Option<(Vec<u8>, Digest)> = None;
        let m = match manifest::parse(&manifest_bytes).map_err(|e| pull_err(format!("{image}: {e}")))? {
            Parsed::Manifest(m) => m,
            Parsed::Index(entries) => {
                let entry = manifest::select(&entries, &self.platform).ok_or_else(|| {
                    let have: Vec<String> = entries
                        .iter()
                        .filter_map(|e| e.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture)))
                        .collect();
                    pull_err(format!(
                        "{image} has no image for {}/{} (it has {})",
                        self.platform.os,
                        self.platform.architecture,
                        have.join(", ")
                    ))
                })?;
                let want = Digest::parse(&entry.digest).map_err(pull_err)?;
                let by_digest = reference.clone_with_digest(want.to_string());
                let (b, d) = client
                    .pull_manifest_raw(&by_digest, &auth, manifest::ACCEPTED)
                    .await
                    .map_err(|e| fail("the platform manifest", e))?;
                if Digest::of(&b) != want || d != want.as_str() {
                    return Err(pull_err(format!(
                        "the platform manifest of {image} does not match its digest {want}"
                    )));
                }
                index = Some((std::mem::replace(&mut manifest_bytes, b.to_vec()), manifest_digest));
                manifest_digest = want;
                match manifest::parse(&manifest_bytes).map_err(|e| pull_err(format!("{image}: {e}")))? {
                    Parsed::Manifest(m) => m,
                    Parsed::Index(_) => return Err(pull_err(format!("{image}: an index inside an index"))),
                }
            }
        };

        let progress = Arc::new(Mutex::new(Progress {
            layers: m
                .layers
                .iter()
                .map(|l| LayerProgress {
                    digest: l.digest.clone(),
                    total: u64::try_from(l.size).unwrap_or(0),
                    ..Default::default()
                })
                .collect(),
        }));
        self.progress.lock().expect("progress lock").insert(image.name(), Arc::clone(&progress));

        // The config.
        let config_digest = Digest::parse(&m.config.digest).map_err(pull_err)?;
        if !self.store.has_blob(&config_digest) {
            self.download(&client, reference, &m.config, None).await?;
        }
        let config_bytes = self.store.read_blob(&config_digest).map_err(pull_err)?;
        let config = ImageConfig::parse(&config_bytes).map_err(|e| pull_err(format!("{image}: {e}")))?;
        if config.rootfs.diff_ids.len() != m.layers.len() {
            return Err(pull_err(format!(
                "{image}: the manifest has {} layers but the config {} diff IDs",
                m.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }

        // The layers, a few at a time; each is unpacked as soon as it is here.
        let mut jobs = Vec::new();
        for (i, (layer, diff_id)) in m.layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
            let p = (Arc::clone(&progress), i);
            jobs.push(self.layer(&client, image, layer.clone(), diff_id.clone(), p).boxed());
        }
        let layers: Vec<LayerRecord> =
            futures_util::stream::iter(jobs).buffered(self.parallel.max(1)).try_collect().await?;

        self.store.put_blob(&manifest_bytes, Some(&manifest_digest)).map_err(pull_err)?;
        if let Some((bytes, d)) = &index {
            self.store.put_blob(bytes, Some(d)).map_err(pull_err)?;
        }
        let t = now();
        let record = ImageRecord {
            name: image.name(),
            digest: manifest_digest.to_string(),
            index_digest: index.map(|(_, d)| d.to_string()),
            config: config_digest.to_string(),
            size: layers.iter().map(|l| l.size).sum::<u64>() + config_bytes.len() as u64,
            layers,
            created: t,
            last_used: t,
        };
        self.store.put_image(record.clone()).map_err(pull_err)?;
        let layers = progress.lock().expect("progress").clone();
        self.finished.lock().expect("finished lock").insert(image.name(), (started.elapsed(), layers));
        Ok(record)
    }

    /// One layer: downloaded unless its blob or its unpacked form is here, then unpacked.
    async fn layer(
        self: &Arc<Self>,
        client: &oci_client::Client,
        image: &ImageRef,
        layer: Descriptor,
        diff_id: String,
        progress: (Arc<Mutex<Progress>>, usize),
    ) -> Result<LayerRecord, PullError> {
        let blob = Digest::parse(&layer.digest).map_err(pull_err)?;
        let diff = Digest::parse(&diff_id).map_err(pull_err)?;
        let state = |s: LayerState| {
            if let Some(l) = progress.0.lock().expect("progress").layers.get_mut(progress.1) {
                l.state = s;
            }
        };
        if self.store.layer_path(&diff).exists() {
            state(LayerState::AlreadyExists);
        } else {
            if !self.store.has_blob(&blob) {
                state(LayerState::Downloading);
                self.download(client, &image.oci(), &layer, Some(&progress)).await?;
            }
            state(LayerState::Extracting);
            let store = Arc::clone(&self.store);
            let media_type = layer.media_type.clone();
            tokio::task::spawn_blocking(move || store.ensure_layer(&blob, &media_type, &diff))
                .await
                .map_err(|e| pull_err(e.to_string()))?
                .map_err(|e| pull_err(format!("{image}: {e}")))?;
            state(LayerState::PullComplete);
        }
        Ok(LayerRecord {
            size: u64::try_from(layer.size).unwrap_or(0),
            blob: layer.digest,
            media_type: layer.media_type,
            diff_id,
        })
    }

    /// Downloads one blob into the store: streamed to `tmp/`, hashed as it is written,
    /// renamed into `blobs/` only when the hash is the digest; nothing is left otherwise.
    async fn download(
        &self,
        client: &oci_client::Client,
        reference: &oci_client::Reference,
        desc: &Descriptor,
        progress: Option<&(Arc<Mutex<Progress>>, usize)>,
    ) -> Result<(), PullError> {
        let want = Digest::parse(&desc.digest).map_err(pull_err)?;
        let oci = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size,
            ..Default::default()
        };
        let tmp = self.store.tmp_path("download");
        let res = async {
            let mut stream = client
                .pull_blob_stream(reference, &oci)
                .await
                .map_err(|e| format!("blob {want} from {}: {e}", reference.registry()))?
                .stream;
            let file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
            let mut w = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, file));
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| format!("blob {want} from {}: {e}", reference.registry()))?;
                w.write_all(&chunk).map_err(|e| format!("writing blob {want}: {e}"))?;
                if let Some((p, i)) = progress {
                    if let Some(l) = p.lock().expect("progress").layers.get_mut(*i) {
                        l.done += chunk.len() as u64;
                    }
                }
            }
            w.flush().map_err(|e| format!("writing blob {want}: {e}"))?;
            let HashingWriter { inner, hasher } = w;
            let file = inner.into_inner().map_err(|e| format!("writing blob {want}: {}", e.error()))?;
            file.sync_all().map_err(|e| format!("writing blob {want}: {e}"))?;
            let size = hasher.len();
            if desc.size >= 0 && size != desc.size.unsigned_abs() {
                return Err(format!(
                    "blob {want}: the registry sent {size} bytes, the manifest says {}",
                    desc.size
                ));
            }
            self.store
                .commit_blob(&tmp, &hasher.finish(), &want)
                .map_err(|e| format!("blob from {}: {e}", reference.registry()))
        }
        .await;
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res.map_err(pull_err)
    }
}

#[cfg(test)]
mod explain_tests {
    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn causes_are_kept_and_plain_http_is_named() {
        let e = E(
            "error sending request",
            Some(Box::new(E(
                "tcp connect error",
                Some(Box::new(E("Connection refused (os error 111)", None))),
            ))),
        );
        assert_eq!(
            super::explain(&e, "r:5000"),
            "error sending request: tcp connect error: Connection refused (os error 111)"
        );
        let e = E(
            "error sending request",
            Some(Box::new(E("received corrupt message of type InvalidContentType", None))),
        );
        assert!(super::explain(&e, "r:5000").ends_with(
            "server gave HTTP response to HTTPS client (a registry without TLS: --insecure-registry r:5000)"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_kubernetes() {
        assert_eq!(PullPolicy::default_for("busybox"), PullPolicy::Always);
        assert_eq!(PullPolicy::default_for("busybox:latest"), PullPolicy::Always);
        assert_eq!(PullPolicy::default_for("busybox:1.36"), PullPolicy::IfNotPresent);
        let d = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(PullPolicy::default_for(&d), PullPolicy::IfNotPresent);
        assert!(PullPolicy::parse("Sometimes").unwrap_err().contains("Sometimes"));
    }
}
