//! The content-addressed image store.
//!
//! ```text
//! ROOT/                       (/var/lib/tug/images)
//!   index.json                image name → ImageRecord (written whole, by rename)
//!   index.lock                flock: one writer of index.json at a time
//!   gc.lock                   flock: pulls and imports hold it shared, sweeps exclusive,
//!                             so a sweep never deletes what a pull has not recorded yet
//!   blobs/sha256/HEX          manifests, configs, compressed layers — verified, shared
//!   layers/HEX                one layer unpacked (HEX = its diff ID), overlayfs format
//!   snapshots/ID/             a container's rootfs: upper/ work/ rootfs/ snapshot.json
//!   tmp/PID-N-*               downloads and unpacks in progress; a dead PID's are removed
//! ```
//!
//! Nothing enters `blobs/` or `layers/` before it is complete and verified: it is written
//! under `tmp/` and renamed into place, so a crash or a corrupt download leaves nothing but
//! `tmp/` litter, which the next open removes.

use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::manifest::{self, Compression, ImageConfig};
use crate::overlay;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// One image the store holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// The normalised name (`docker.io/library/busybox:1.36`).
    pub name: String,
    /// The image manifest's digest.
    pub digest: String,
    /// The index (manifest list) it was chosen from, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// The config's digest: the image ID, as Docker and crictl show it.
    pub config: String,
    pub layers: Vec<LayerRecord>,
    /// Bytes of compressed layers and config.
    pub size: u64,
    /// Seconds since the epoch.
    pub created: u64,
    pub last_used: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LayerRecord {
    pub blob: String,
    pub media_type: String,
    pub diff_id: String,
    pub size: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: BTreeMap<String, ImageRecord>,
}

/// A container's snapshot: which image and which layers it stands on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub id: String,
    pub image: String,
    pub digest: String,
    pub layers: Vec<String>,
}

/// What a sweep or a garbage collection removed.
#[derive(Debug, Default, Clone)]
pub struct Removed {
    pub images: Vec<String>,
    pub blobs: usize,
    pub layers: usize,
    pub bytes: u64,
}

pub struct Store {
    root: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// How finely an image's `last_used` is kept.
pub const LAST_USED_GRAIN_SECS: u64 = 60;

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An flock held until dropped.
pub struct Lock {
    _file: File,
}

impl Lock {
    fn take(path: &Path, exclusive: bool) -> io::Result<Lock> {
        let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
        loop {
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
                return Ok(Lock { _file: f });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Store {
    /// Opens (creating) the store at `root` and clears what dead processes left in `tmp/`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, String> {
        let root = root.into();
        // Layers hold setuid files and device nodes from images: never reachable by another
        // user of the node (the agent also mends an existing root's mode on start).
        if !root.exists() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .map_err(|e| format!("image store {}: {e}", root.display()))?;
        }
        for d in ["blobs/sha256", "layers", "snapshots", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(|e| format!("image store {}: {e}", p.display()))?;
        }
        spread_subdirs(&root.join("snapshots"));
        let store = Store { root };
        store.clear_dead_tmp();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn clear_dead_tmp(&self) {
        let Ok(rd) = fs::read_dir(self.root.join("tmp")) else { return };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = remove_tree(&e.path());
            }
        }
    }

    /// A fresh path under `tmp/` (not created).
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{}-{n}-{what}", std::process::id()))
    }

    /// Held shared by anything that adds content, exclusive by sweeps.
    pub fn content_lock(&self) -> Result<Lock, String> {
        Lock::take(&self.root.join("gc.lock"), false).map_err(|e| format!("locking the image store: {e}"))
    }

    fn sweep_lock(&self) -> Result<Lock, String> {
        Lock::take(&self.root.join("gc.lock"), true).map_err(|e| format!("locking the image store: {e}"))
    }

    fn index_lock(&self) -> Result<Lock, String> {
        Lock::take(&self.root.join("index.lock"), true).map_err(|e| format!("locking the image index: {e}"))
    }

    // ---- blobs ----

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).exists()
    }

    /// Reads a (small) blob, checking it still matches its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, String> {
        let bytes = fs::read(self.blob_path(d)).map_err(|e| format!("blob {d}: {e}"))?;
        let got = Digest::of(&bytes);
        if &got != d {
            return Err(format!("blob {d} in the store is corrupt (it hashes to {got})"));
        }
        Ok(bytes)
    }

    /// Stores `bytes`, which must hash to `expected` when given.
    pub fn put_blob(&self, bytes: &[u8], expected: Option<&Digest>) -> Result<Digest, String> {
        let got = Digest::of(bytes);
        if let Some(want) = expected
            && &got != want
        {
            return Err(format!("digest mismatch: expected {want}, the content hashes to {got}"));
        }
        if self.has_blob(&got) {
            return Ok(got);
        }
        let tmp = self.tmp_path("blob");
        let res = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, self.blob_path(&got))
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(format!("writing blob {got}: {e}"));
        }
        Ok(got)
    }

    /// Moves the finished file `tmp` into the store if it hashed to `expected`; removes it
    /// either way.
    pub fn commit_blob(&self, tmp: &Path, got: &Digest, expected: &Digest) -> Result<(), String> {
        if got != expected {
            let _ = fs::remove_file(tmp);
            return Err(format!("digest mismatch: expected {expected}, the content hashes to {got}"));
        }
        fs::rename(tmp, self.blob_path(expected)).map_err(|e| {
            let _ = fs::remove_file(tmp);
            format!("storing blob {expected}: {e}")
        })
    }

    /// Copies a reader into the store, verifying it against `expected` when given; returns
    /// its digest.
    pub fn put_blob_from(&self, reader: impl Read, expected: Option<&Digest>) -> Result<Digest, String> {
        if let Some(d) = expected
            && self.has_blob(d)
        {
            return Ok(d.clone());
        }
        let tmp = self.tmp_path("blob");
        let res = (|| -> io::Result<Digest> {
            let mut w = HashingWriter::new(io::BufWriter::new(File::create(&tmp)?));
            io::copy(&mut BufReader::new(reader), &mut w)?;
            w.flush()?;
            let HashingWriter { inner, hasher } = w;
            inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok(hasher.finish())
        })();
        match res {
            Ok(got) => {
                let want = expected.cloned().unwrap_or_else(|| got.clone());
                if expected.is_none() && self.has_blob(&got) {
                    let _ = fs::remove_file(&tmp);
                    return Ok(got);
                }
                self.commit_blob(&tmp, &got, &want)?;
                Ok(got)
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(format!("writing blob: {e}"))
            }
        }
    }

    // ---- layers ----

    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    /// Unpacks the layer blob `blob` once: a no-op when `layers/DIFFID` exists. The
    /// uncompressed stream must hash to `diff_id`, or nothing is kept.
    pub fn ensure_layer(&self, blob: &Digest, media_type: &str, diff_id: &Digest) -> Result<PathBuf, String> {
        let dest = self.layer_path(diff_id);
        if dest.exists() {
            return Ok(dest);
        }
        let compression = manifest::compression(media_type)?;
        let file = File::open(self.blob_path(blob)).map_err(|e| format!("layer {blob}: {e}"))?;
        let tmp = self.tmp_path("layer");
        fs::create_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let res = unpack_compressed(BufReader::with_capacity(1 << 20, file), compression, &tmp);
        let res = res.and_then(|got| {
            if &got != diff_id {
                Err(format!("its content hashes to {got}, but the image config says {diff_id}"))
            } else {
                Ok(())
            }
        });
        if let Err(e) = res {
            let _ = remove_tree(&tmp);
            return Err(format!("layer {blob}: {e}"));
        }
        match fs::rename(&tmp, &dest) {
            Ok(()) => Ok(dest),
            // Another process unpacked the same layer first: theirs is as good as ours.
            Err(_) if dest.exists() => {
                let _ = remove_tree(&tmp);
                Ok(dest)
            }
            Err(e) => {
                let _ = remove_tree(&tmp);
                Err(format!("layer {blob}: storing it: {e}"))
            }
        }
    }

    /// Checks that the stored blob `blob` uncompresses to the layer `diff_id` (for a layer
    /// already unpacked from another image, which is then not unpacked again).
    pub fn verify_diff_id(&self, blob: &Digest, media_type: &str, diff_id: &Digest) -> Result<(), String> {
        let compression = manifest::compression(media_type)?;
        let file = File::open(self.blob_path(blob)).map_err(|e| format!("layer {blob}: {e}"))?;
        let got = diff_id_of(BufReader::with_capacity(1 << 20, file), compression)
            .map_err(|e| format!("layer {blob}: {e}"))?;
        if &got != diff_id {
            return Err(format!(
                "layer {blob}: its content hashes to {got}, but the image config says {diff_id}"
            ));
        }
        Ok(())
    }

    // ---- images ----

    fn read_index(&self) -> Result<Index, String> {
        let p = self.root.join("index.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }

    fn write_index(&self, index: &Index) -> Result<(), String> {
        let p = self.root.join("index.json");
        let tmp = self.tmp_path("index.json");
        let res = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(index).map_err(io::Error::other)?)?;
            f.sync_all()?;
            fs::rename(&tmp, &p)
        })();
        res.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("writing {}: {e}", p.display())
        })
    }

    fn update_index<T>(&self, f: impl FnOnce(&mut Index) -> Result<T, String>) -> Result<T, String> {
        let _l = self.index_lock()?;
        let mut index = self.read_index()?;
        let out = f(&mut index)?;
        self.write_index(&index)?;
        Ok(out)
    }

    /// Records an image whose blobs and layers are all in the store.
    pub fn put_image(&self, record: ImageRecord) -> Result<(), String> {
        for l in &record.layers {
            let d = Digest::parse(&l.diff_id)?;
            if !self.layer_path(&d).exists() {
                return Err(format!("image {}: layer {} is not unpacked", record.name, l.blob));
            }
        }
        self.update_index(|i| {
            i.images.insert(record.name.clone(), record);
            Ok(())
        })
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, String> {
        Ok(self.read_index()?.images.into_values().collect())
    }

    /// The image a user means: its full or short name, or a prefix (at least 4 hex digits) of
    /// its ID (config digest) or manifest digest.
    pub fn find(&self, what: &str) -> Result<Option<ImageRecord>, String> {
        let index = self.read_index()?;
        if let Some(r) = index.images.get(what) {
            return Ok(Some(r.clone()));
        }
        if let Ok(r) = crate::ImageRef::parse(what)
            && let Some(rec) = index.images.get(&r.name())
        {
            return Ok(Some(rec.clone()));
        }
        let hex = what.strip_prefix("sha256:").unwrap_or(what);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<_> = index
                .images
                .values()
                .filter(|r| r.config[7..].starts_with(hex) || r.digest[7..].starts_with(hex))
                .collect();
            if hits.len() > 1 && hits.iter().any(|r| r.config != hits[0].config) {
                return Err(format!("{what:?} matches several images; give more of the ID"));
            }
            return Ok(hits.first().map(|r| (*r).clone()));
        }
        Ok(None)
    }

    /// The parsed config of a stored image.
    pub fn config(&self, record: &ImageRecord) -> Result<ImageConfig, String> {
        ImageConfig::parse(&self.read_blob(&Digest::parse(&record.config)?)?)
            .map_err(|e| format!("image {}: {e}", record.name))
    }

    /// Removes image names (then whatever no image or container needs any more). An image a
    /// container stands on is refused.
    pub fn remove(&self, names: &[String]) -> Result<Removed, String> {
        let snaps = self.snapshots()?;
        let removed = self.update_index(|i| {
            let mut out = Vec::new();
            for n in names {
                let rec = match i.images.get(n) {
                    Some(r) => r.clone(),
                    None => return Err(format!("image {n:?} not found")),
                };
                if let Some(s) = snaps.iter().find(|s| s.digest == rec.digest && s.image == rec.name) {
                    return Err(format!("image {n} is in use by container {}", s.id));
                }
                i.images.remove(n);
                out.push(n.clone());
            }
            Ok(out)
        })?;
        let mut r = self.sweep()?;
        r.images = removed;
        Ok(r)
    }

    /// Deletes every blob and layer no image and no snapshot refers to.
    pub fn sweep(&self) -> Result<Removed, String> {
        let _l = self.sweep_lock()?;
        let index = self.read_index()?;
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for r in index.images.values() {
            blobs.insert(r.digest[7..].to_string());
            blobs.insert(r.config[7..].to_string());
            if let Some(i) = &r.index_digest {
                blobs.insert(i[7..].to_string());
            }
            for l in &r.layers {
                blobs.insert(l.blob[7..].to_string());
                layers.insert(l.diff_id[7..].to_string());
            }
        }
        for s in self.snapshots()? {
            layers.extend(s.layers.iter().map(|l| l.trim_start_matches("sha256:").to_string()));
        }
        let mut out = Removed::default();
        for (dir, keep, count) in
            [("blobs/sha256", &blobs, &mut out.blobs), ("layers", &layers, &mut out.layers)]
        {
            for e in fs::read_dir(self.root.join(dir)).map_err(|e| format!("{dir}: {e}"))?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                out.bytes += du(&e.path());
                remove_tree(&e.path()).map_err(|err| format!("removing {}: {err}", e.path().display()))?;
                *count += 1;
            }
        }
        Ok(out)
    }

    /// When the store's filesystem is more than `high` percent full, removes the least
    /// recently used images no container stands on and nobody used (or stored) within
    /// `min_age`, until it is below `low` percent (or none is left to remove). Kubernetes'
    /// defaults are 85, 80 and 2 minutes; `high` 100 turns collection off, as in kubelet.
    pub fn gc(&self, high: u8, low: u8, min_age: std::time::Duration) -> Result<Removed, String> {
        let mut total = Removed::default();
        if high >= 100 || disk_used_percent(&self.root)? < f64::from(high) {
            return Ok(total);
        }
        let snaps = self.snapshots()?;
        let young = now().saturating_sub(min_age.as_secs());
        let mut candidates: Vec<ImageRecord> = self
            .images()?
            .into_iter()
            .filter(|r| !snaps.iter().any(|s| s.digest == r.digest && s.image == r.name))
            .filter(|r| r.last_used.max(r.created) < young || min_age.is_zero())
            .collect();
        candidates.sort_by_key(|r| (r.last_used, r.created));
        for r in candidates {
            if disk_used_percent(&self.root)? < f64::from(low) {
                break;
            }
            let got = self.remove(std::slice::from_ref(&r.name))?;
            total.images.extend(got.images);
            total.blobs += got.blobs;
            total.layers += got.layers;
            total.bytes += got.bytes;
        }
        Ok(total)
    }

    // ---- snapshots ----

    fn snapshot_dir(&self, id: &str) -> Result<PathBuf, String> {
        if id.is_empty()
            || id.len() > 200
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            || id.starts_with('.')
        {
            return Err(format!("snapshot id {id:?}: letters, digits, '-', '_' and '.' only"));
        }
        Ok(self.root.join("snapshots").join(id))
    }

    /// Makes the rootfs of container `id` from `image`: an overlay of the image's layers with a
    /// fresh upper dir. Returns the mounted rootfs path.
    pub fn prepare(&self, id: &str, image: &ImageRecord) -> Result<PathBuf, String> {
        let dir = self.snapshot_dir(id)?;
        let layers: Vec<PathBuf> = image
            .layers
            .iter()
            .map(|l| Digest::parse(&l.diff_id).map(|d| self.layer_path(&d)))
            .collect::<Result<_, _>>()?;
        fs::create_dir(&dir).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => format!("snapshot {id} already exists"),
            _ => format!("snapshot {id}: {e}"),
        })?;
        let snap = Snapshot {
            id: id.to_string(),
            image: image.name.clone(),
            digest: image.digest.clone(),
            layers: image.layers.iter().map(|l| l.diff_id.clone()).collect(),
        };
        let res = (|| {
            for d in ["upper", "work", "rootfs"] {
                fs::create_dir(dir.join(d)).map_err(|e| format!("snapshot {id}: {e}"))?;
            }
            fs::write(dir.join("snapshot.json"), serde_json::to_vec(&snap).map_err(|e| e.to_string())?)
                .map_err(|e| format!("snapshot {id}: {e}"))?;
            for l in &layers {
                if !l.exists() {
                    return Err(format!("snapshot {id}: layer {} is missing from the store", l.display()));
                }
            }
            overlay::mount_rootfs(&layers, &dir.join("upper"), &dir.join("work"), &dir.join("rootfs"))
        })();
        if let Err(e) = res {
            let _ = remove_tree(&dir);
            return Err(e);
        }
        // To the minute: image GC orders by it and spares images used in the last minutes,
        // and a write (with its fsync) at every container start would be most of its disk work.
        if now().saturating_sub(image.last_used) >= LAST_USED_GRAIN_SECS {
            let _ = self.update_index(|i| {
                if let Some(r) = i.images.get_mut(&image.name) {
                    r.last_used = now();
                }
                Ok(())
            });
        }
        Ok(dir.join("rootfs"))
    }

    /// Unmounts and deletes container `id`'s rootfs and upper dir; a missing snapshot is fine.
    pub fn remove_snapshot(&self, id: &str) -> Result<(), String> {
        let dir = self.snapshot_dir(id)?;
        if !dir.exists() {
            return Ok(());
        }
        overlay::unmount(&dir.join("rootfs"))?;
        remove_tree(&dir).map_err(|e| format!("removing snapshot {id}: {e}"))
    }

    pub fn snapshots(&self) -> Result<Vec<Snapshot>, String> {
        let mut out = Vec::new();
        let rd = fs::read_dir(self.root.join("snapshots")).map_err(|e| format!("snapshots: {e}"))?;
        for e in rd.flatten() {
            match fs::read(e.path().join("snapshot.json")) {
                Ok(b) => out.push(
                    serde_json::from_slice(&b).map_err(|err| format!("{}: {err}", e.path().display()))?,
                ),
                // Being made or removed right now.
                Err(_) => continue,
            }
        }
        Ok(out)
    }
}

/// Marks `dir` as the top of directory hierarchies for ext4's Orlov allocator (`chattr +T`):
/// the directories made in it — a snapshot per container, a log directory per pod — go to
/// block groups of their own instead of all to their parent's. Each group then holds the
/// inodes of a few of them, so a group's free-inode search, which on ext4 without a journal
/// steps over every inode deleted in the last minutes, stays short when containers come and
/// go by the hundred. Elsewhere (tmpfs, xfs) the flag is refused or ignored, which is fine.
pub fn spread_subdirs(dir: &Path) {
    const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
    let Ok(f) = fs::File::open(dir) else { return };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS and SETFLAGS read and write one int through the pointer, which
    // points at `flags`, alive for both calls; `fd` is open for their duration.
    unsafe {
        if libc::ioctl(fd, libc::FS_IOC_GETFLAGS, &mut flags) == 0 && flags & FS_TOPDIR_FL == 0 {
            flags |= FS_TOPDIR_FL;
            libc::ioctl(fd, libc::FS_IOC_SETFLAGS, &flags);
        }
    }
}

/// Decompresses (by `compression`, checked against the stream's magic bytes) and unpacks a
/// layer into `dest`; returns the digest of the uncompressed tar (the diff ID).
pub fn unpack_compressed(
    reader: impl io::BufRead,
    compression: Compression,
    dest: &Path,
) -> Result<Digest, String> {
    let (_, r) = crate::unpack::unpack(HashingReader::new(decompressed(reader, compression)?), dest)?;
    Ok(r.hasher.finish())
}

/// The diff ID of a layer blob (the digest of its uncompressed tar), without unpacking it.
pub fn diff_id_of(reader: impl io::BufRead, compression: Compression) -> Result<Digest, String> {
    let mut r = HashingReader::new(decompressed(reader, compression)?);
    io::copy(&mut r, &mut io::sink()).map_err(|e| format!("reading: {e}"))?;
    Ok(r.hasher.finish())
}

/// `reader` decompressed as `compression` says, once the data's own magic agrees.
fn decompressed<'a>(
    mut reader: impl io::BufRead + 'a,
    compression: Compression,
) -> Result<Box<dyn Read + 'a>, String> {
    let magic = reader.fill_buf().map_err(|e| format!("reading: {e}"))?;
    let sniffed = if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    if sniffed != compression {
        return Err(format!("its media type says {compression:?} compression but the data is {sniffed:?}"));
    }
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(|e| format!("zstd: {e}"))?)
        }
    })
}

/// Removes a file or a tree, whatever it is; clears immutable-looking permission bits first
/// is not needed as root.
pub fn remove_tree(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Bytes a file or tree takes (apparent sizes, each hard-linked inode once per call).
pub fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = BTreeSet::new();
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else { continue };
        if !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        total += m.len();
        if m.is_dir()
            && let Ok(rd) = fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    total
}

/// How full the filesystem holding `p` is, in percent of the blocks (as `df` counts them).
pub fn disk_used_percent(p: &Path) -> Result<f64, String> {
    let s = nix::sys::statvfs::statvfs(p).map_err(|e| format!("statvfs {}: {e}", p.display()))?;
    #[allow(clippy::cast_precision_loss)]
    let (total, avail, free) = (s.blocks() as f64, s.blocks_available() as f64, s.blocks_free() as f64);
    let used = total - free;
    if used + avail <= 0.0 {
        return Ok(0.0);
    }
    Ok(used * 100.0 / (used + avail))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On ext4 (the temp dir of these machines) the snapshots directory spreads its children.
    #[test]
    fn snapshots_are_spread_over_the_disk_on_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let ext4 = nix::sys::statfs::statfs(dir.path())
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::EXT4_SUPER_MAGIC);
        let store = Store::open(dir.path().join("store")).unwrap();
        let f = fs::File::open(store.root().join("snapshots")).unwrap();
        let mut flags: libc::c_int = 0;
        // SAFETY: FS_IOC_GETFLAGS writes one int into `flags`; `f` is open.
        let r =
            unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::FS_IOC_GETFLAGS, &mut flags) };
        if ext4 {
            assert_eq!(r, 0);
            assert_ne!(flags & 0x0002_0000, 0, "FS_TOPDIR_FL is not set: {flags:#x}");
        }
        // Opening again keeps it and fails on nothing.
        Store::open(dir.path().join("store")).unwrap();
    }
}
