//! Images without a registry: an OCI image layout (a directory or a tar of one) or a
//! `docker save` archive.
//!
//! Every blob is copied into the store through the same verification as a pull (an OCI
//! layout's blobs must hash to their names; a `docker save` archive's layers must hash to the
//! config's diff IDs when unpacked, or when that layer is already in the store), and the
//! image is recorded only once all of it is in.
//!
//! An archive is someone else's: every entry is opened beneath its directory without
//! following any symlink (`tug-beneath`'s no-links scope), regular files only, each of the
//! size its descriptor declares and none larger than the largest blob allowed — a "layer"
//! that is a link to a node file, to `/dev/zero` or a FIFO is refused with its name.

use crate::digest::Digest;
use crate::manifest::{self, Descriptor, ImageConfig, Parsed, Platform};
use crate::reference::ImageRef;
use crate::store::{ImageRecord, LayerRecord, Store, now, remove_tree};
use serde::Deserialize;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The largest blob an import reads unless told otherwise (`tug image import --max-blob-size`).
pub const DEFAULT_MAX_BLOB: u64 = 16 << 30;

/// Imports every image in `path`. `name` names the image when the archive holds one image
/// (it overrides the names the archive gives).
pub fn import(store: &Store, path: &Path, name: Option<&str>) -> Result<Vec<ImageRecord>, String> {
    import_with(store, path, name, DEFAULT_MAX_BLOB)
}

/// [`import`], reading no blob larger than `max_blob` bytes.
pub fn import_with(
    store: &Store,
    path: &Path,
    name: Option<&str>,
    max_blob: u64,
) -> Result<Vec<ImageRecord>, String> {
    let _content = store.content_lock()?;
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_dir() {
        return import_dir(store, &Archive::open(path, max_blob)?, name);
    }
    // A tar (perhaps compressed): unpacked under the store's tmp/ and read from there.
    let tmp = store.tmp_path("import");
    fs::create_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let res = (|| {
        let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut r = BufReader::new(file);
        let magic = r.fill_buf().map_err(|e| format!("{}: {e}", path.display()))?.to_vec();
        let reader: Box<dyn std::io::Read> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(r))
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(zstd::stream::read::Decoder::with_buffer(r).map_err(|e| e.to_string())?)
        } else {
            Box::new(r)
        };
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(false);
        archive.unpack(&tmp).map_err(|e| format!("{}: not a readable tar archive: {e}", path.display()))?;
        import_dir(store, &Archive::open(&tmp, max_blob)?, name)
            .map_err(|e| format!("{}: {e}", path.display()))
    })();
    let _ = remove_tree(&tmp);
    res
}

/// An archive's directory, whose entries are read as the module documentation says.
struct Archive {
    root: tug_beneath::Root,
    max_blob: u64,
}

impl Archive {
    fn open(dir: &Path, max_blob: u64) -> Result<Archive, String> {
        let root =
            tug_beneath::Root::open_dir(dir, tug_beneath::Scope::NoLinks).map_err(|e| e.to_string())?;
        Ok(Archive { root, max_blob })
    }

    fn dir(&self) -> &Path {
        self.root.path()
    }

    fn has(&self, rel: &str) -> bool {
        self.root.open(Path::new(rel), nix::fcntl::OFlag::O_PATH).is_ok()
    }

    /// The entry `rel` (`what` names it in errors), open for reading: a regular file reached
    /// through no link, `size` bytes long when a descriptor declares it, at most `max_blob`.
    fn file(&self, rel: &str, what: &str, size: Option<i64>) -> Result<File, String> {
        let parts = crate::unpack::clean(rel.as_bytes()).map_err(|e| format!("{what} ({rel:?}): {e}"))?;
        let path: PathBuf = parts.iter().collect();
        let f = self.root.open_regular(&path).map_err(|e| format!("{what}: {e}: refused"))?;
        let len = f.metadata().map_err(|e| format!("{what}: {e}"))?.len();
        if let Some(want) = size
            && u64::try_from(want).ok() != Some(len)
        {
            return Err(format!("{what}: {len} bytes, but its descriptor says {want}"));
        }
        if len > self.max_blob {
            return Err(format!(
                "{what}: {len} bytes, more than the largest blob allowed ({} bytes; --max-blob-size)",
                self.max_blob
            ));
        }
        Ok(f)
    }

    fn read(&self, rel: &str, what: &str, size: Option<i64>) -> Result<Vec<u8>, String> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut self.file(rel, what, size)?, &mut bytes)
            .map_err(|e| format!("{what}: {e}"))?;
        Ok(bytes)
    }
}

fn import_dir(store: &Store, dir: &Archive, name: Option<&str>) -> Result<Vec<ImageRecord>, String> {
    if dir.has("manifest.json") {
        import_docker(store, dir, name)
    } else if dir.has("oci-layout") && dir.has("index.json") {
        import_oci(store, dir, name)
    } else {
        Err(format!(
            "{}: neither an OCI image layout (oci-layout, index.json) nor a docker save archive (manifest.json)",
            dir.dir().display()
        ))
    }
}

fn layout_blob(digest: &str) -> Result<String, String> {
    let d = Digest::parse(digest)?;
    Ok(format!("blobs/sha256/{}", d.hex()))
}

fn copy_blob(store: &Store, dir: &Archive, desc: &Descriptor) -> Result<(), String> {
    let d = Digest::parse(&desc.digest)?;
    let what = format!("blob {}", desc.digest);
    let f = dir.file(&layout_blob(&desc.digest)?, &what, Some(desc.size))?;
    store.put_blob_from(f, Some(&d)).map_err(|e| format!("{what}: {e}"))?;
    Ok(())
}

fn read_layout_blob(dir: &Archive, desc: &Descriptor) -> Result<Vec<u8>, String> {
    let d = Digest::parse(&desc.digest)?;
    let bytes = dir.read(&layout_blob(&desc.digest)?, &format!("blob {}", desc.digest), Some(desc.size))?;
    if Digest::of(&bytes) != d {
        return Err(format!("blob {} does not match its digest", desc.digest));
    }
    Ok(bytes)
}

/// The name an OCI layout's index entry gives, if any.
fn annotated_name(entry: &Descriptor) -> Option<String> {
    let a = entry.annotations.as_ref()?;
    if let Some(n) = a.get("io.containerd.image.name") {
        return Some(n.clone());
    }
    a.get("org.opencontainers.image.ref.name").filter(|n| n.contains('/') || n.contains(':')).cloned()
}

fn import_oci(store: &Store, dir: &Archive, name: Option<&str>) -> Result<Vec<ImageRecord>, String> {
    let index = dir.read("index.json", "index.json", None)?;
    let Parsed::Index(entries) = manifest::parse(&index).map_err(|e| format!("index.json: {e}"))? else {
        return Err("index.json is not an image index".into());
    };
    if entries.is_empty() {
        return Err("index.json lists no images".into());
    }
    if name.is_some() && entries.len() > 1 {
        return Err(format!("the layout holds {} images; --name can name only one", entries.len()));
    }
    let platform = manifest::host_platform();
    let mut out = Vec::new();
    for entry in &entries {
        let image_name = match name.map(str::to_string).or_else(|| annotated_name(entry)) {
            Some(n) => ImageRef::parse(&n)?.name(),
            None => {
                let tag = entry.annotations.as_ref().and_then(|a| a.get("org.opencontainers.image.ref.name"));
                return Err(match tag {
                    Some(t) => format!(
                        "the layout names image {} only by the tag {t:?}: give --name REPOSITORY:TAG",
                        entry.digest
                    ),
                    None => format!("the layout does not name image {}: give --name", entry.digest),
                });
            }
        };
        out.push(
            import_oci_entry(store, dir, entry, &image_name, &platform)
                .map_err(|e| format!("{image_name}: {e}"))?,
        );
    }
    Ok(out)
}

fn import_oci_entry(
    store: &Store,
    dir: &Archive,
    entry: &Descriptor,
    name: &str,
    platform: &Platform,
) -> Result<ImageRecord, String> {
    let mut bytes = read_layout_blob(dir, entry)?;
    let mut digest = Digest::parse(&entry.digest)?;
    let mut index_digest = None;
    let m = match manifest::parse(&bytes)? {
        Parsed::Manifest(m) => m,
        Parsed::Index(list) => {
            let e = manifest::select(&list, platform).ok_or_else(|| {
                format!("no image for {}/{} in its index", platform.os, platform.architecture)
            })?;
            store.put_blob(&bytes, Some(&digest))?;
            index_digest = Some(digest.to_string());
            bytes = read_layout_blob(dir, e)?;
            digest = Digest::parse(&e.digest)?;
            match manifest::parse(&bytes)? {
                Parsed::Manifest(m) => m,
                Parsed::Index(_) => return Err("an index inside an index".into()),
            }
        }
    };
    copy_blob(store, dir, &m.config)?;
    let config_digest = Digest::parse(&m.config.digest)?;
    let config_bytes = store.read_blob(&config_digest)?;
    let config = ImageConfig::parse(&config_bytes)?;
    let layers = store_layers(store, &m.layers, &config, |d| copy_blob(store, dir, d))?;
    store.put_blob(&bytes, Some(&digest))?;
    record(store, name, digest, index_digest, config_digest, config_bytes.len(), layers)
}

fn store_layers(
    store: &Store,
    layers: &[Descriptor],
    config: &ImageConfig,
    fetch: impl Fn(&Descriptor) -> Result<(), String>,
) -> Result<Vec<LayerRecord>, String> {
    if config.rootfs.diff_ids.len() != layers.len() {
        return Err(format!(
            "the manifest has {} layers but the config {} diff IDs",
            layers.len(),
            config.rootfs.diff_ids.len()
        ));
    }
    let mut out = Vec::new();
    for (l, diff) in layers.iter().zip(&config.rootfs.diff_ids) {
        let blob = Digest::parse(&l.digest)?;
        let diff_id = Digest::parse(diff)?;
        fetch(l)?;
        if store.layer_path(&diff_id).exists() {
            // Unpacked before, from another image: this one's blob must still be that layer.
            store.verify_diff_id(&blob, &l.media_type, &diff_id)?;
        } else {
            store.ensure_layer(&blob, &l.media_type, &diff_id)?;
        }
        out.push(LayerRecord {
            blob: l.digest.clone(),
            media_type: l.media_type.clone(),
            diff_id: diff.clone(),
            size: u64::try_from(l.size).unwrap_or(0),
        });
    }
    Ok(out)
}

fn record(
    store: &Store,
    name: &str,
    digest: Digest,
    index_digest: Option<String>,
    config: Digest,
    config_len: usize,
    layers: Vec<LayerRecord>,
) -> Result<ImageRecord, String> {
    let t = now();
    let r = ImageRecord {
        name: name.to_string(),
        digest: digest.to_string(),
        index_digest,
        config: config.to_string(),
        size: layers.iter().map(|l| l.size).sum::<u64>() + config_len as u64,
        layers,
        created: t,
        last_used: t,
    };
    store.put_image(r.clone())?;
    Ok(r)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn import_docker(store: &Store, dir: &Archive, name: Option<&str>) -> Result<Vec<ImageRecord>, String> {
    let text = dir.read("manifest.json", "manifest.json", None)?;
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&text).map_err(|e| format!("manifest.json is not docker save's: {e}"))?;
    if entries.is_empty() {
        return Err("manifest.json lists no images".into());
    }
    if name.is_some() && entries.len() > 1 {
        return Err(format!("the archive holds {} images; --name can name only one", entries.len()));
    }
    let mut out = Vec::new();
    for e in &entries {
        let names: Vec<String> = match name {
            Some(n) => vec![n.to_string()],
            None => e.repo_tags.clone().unwrap_or_default(),
        };
        if names.is_empty() {
            return Err(format!("image {} has no RepoTags: give --name", e.config));
        }
        let config_bytes = dir.read(&e.config, &format!("config {}", e.config), None)?;
        let config = ImageConfig::parse(&config_bytes).map_err(|err| format!("{}: {err}", e.config))?;
        let config_digest = store.put_blob(&config_bytes, None)?;
        // Layers: stored as they are (docker save writes plain tars), described by their
        // own digest; the diff IDs in the config check them when they are unpacked.
        let mut descs = Vec::new();
        for l in &e.layers {
            let f = dir.file(l, &format!("layer {l}"), None)?;
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            let mut r = BufReader::new(f);
            let magic = r.fill_buf().map_err(|err| format!("layer {l}: {err}"))?;
            let media_type = if magic.starts_with(&[0x1f, 0x8b]) {
                manifest::DOCKER_LAYER_GZIP
            } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                manifest::DOCKER_LAYER_ZSTD
            } else {
                manifest::DOCKER_LAYER
            };
            let d = store.put_blob_from(r, None).map_err(|err| format!("layer {l}: {err}"))?;
            descs.push(Descriptor {
                media_type: media_type.to_string(),
                digest: d.to_string(),
                size: i64::try_from(size).unwrap_or(i64::MAX),
                platform: None,
                annotations: None,
            });
        }
        let layers = store_layers(store, &descs, &config, |_| Ok(()))?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": config_bytes.len(),
                "digest": config_digest.to_string(),
            },
            "layers": descs.iter().map(|d| serde_json::json!({
                "mediaType": d.media_type, "size": d.size, "digest": d.digest,
            })).collect::<Vec<_>>(),
        });
        let mbytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
        let mdigest = store.put_blob(&mbytes, None)?;
        for n in names {
            let n = ImageRef::parse(&n)?.name();
            out.push(record(
                store,
                &n,
                mdigest.clone(),
                None,
                config_digest.clone(),
                config_bytes.len(),
                layers.clone(),
            )?);
        }
    }
    Ok(out)
}
