//! A pod's volumes on the node, under `<pod dir>/volumes/<name>`, and the mounts that put
//! them into its containers.
//!
//! - emptyDir: a directory (disk), or a tmpfs for `medium: Memory` (`sizeLimit` its size).
//! - hostPath: the node's path, checked or created by `type`.
//! - configMap, secret, downwardAPI: files written the way kubelet's atomic writer does —
//!   into a fresh `..<time>` directory, then `..data` switched to it by one rename, each key
//!   a symlink through `..data` — so a container never reads half an update. Secrets live on
//!   a tmpfs (never on disk). They are rewritten when the objects change.
//!
//! Secret and projected volumes go under the pod's directory in the run directory when that
//! is a tmpfs (as /run is on a host): one mount for the node, not one per volume — every
//! later container's mount namespace starts as a copy of the node's mounts. On a run
//! directory that is not a tmpfs each gets a tmpfs of its own in the pod's volume directory.

use super::env;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tug_api::kinds::pod::{KeyToPath, Pod, Volume};
use tug_client::Client;

/// The directory of volume `name` of the pod whose directory is `pod_dir`.
pub fn dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(name)
}

/// Where a pod's volumes go on the node.
#[derive(Debug, Clone, Copy)]
pub struct Places<'a> {
    /// The pod's volume directory (`<state dir>/pods/<uid>`): emptyDir on disk, subPath mount
    /// points, and a secret or projected volume's own tmpfs when `memory` is None.
    pub disk: &'a Path,
    /// The pod's directory in the run directory, when that is a tmpfs: secret and projected
    /// volumes under its `volumes/`.
    pub memory: Option<&'a Path>,
}

/// Whether `dir` is on a tmpfs: memory, never disk.
pub fn in_memory(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// The directory for secret or projected volume `name`: beneath `places.memory` when there is
/// one (unless an earlier agent gave the volume a tmpfs of its own, which its containers
/// have), else its own tmpfs.
fn memory_volume(places: Places, name: &str) -> Result<PathBuf, String> {
    let own = dir(places.disk, name);
    let shared = places.memory.filter(|_| !tug_beneath::is_mount_root(&own));
    let d = shared.map_or(own, |m| dir(m, name));
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    match shared {
        Some(_) => {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).map_err(|e| e.to_string())?
        }
        None => tmpfs(&d, None)?,
    }
    Ok(d)
}

fn tmpfs(p: &Path, size: Option<u128>) -> Result<(), String> {
    if tug_beneath::is_mount_root(p) {
        return Ok(());
    }
    let opts = match size {
        Some(b) => format!("mode=0777,size={b}"),
        None => "mode=0777".to_string(),
    };
    nix::mount::mount(
        Some("tmpfs"),
        p,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| format!("mounting a tmpfs at {}: {e}", p.display()))
}

/// A relative file path inside a volume, refused if it would leave it.
pub fn item_path(root: &Path, rel: &str) -> Result<PathBuf, String> {
    if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err(format!("item path {rel:?} must be relative and may not contain '..'"));
    }
    if rel.starts_with("..") {
        return Err(format!("item path {rel:?} may not start with '..'"));
    }
    Ok(root.join(rel))
}

/// Writes `files` (path → (content, mode)) into `root` atomically; nothing is rewritten when
/// the content is what is there already. Returns whether anything changed.
///
/// Everything goes through the volume's directory descriptor (CVE-2017-1002102: a container
/// that swapped `..data` for a symlink to a node path made kubelet delete that path): the
/// old generation is the name `..data` points at only when that is a plain `..<stamp>` name
/// in the volume, removal never follows a link, and every file is made `O_EXCL|O_NOFOLLOW`
/// in the fresh generation.
pub fn write_atomic(root: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> Result<bool, String> {
    use tug_beneath::{Root, Scope};
    let dir = Root::open_dir(root, Scope::Beneath).map_err(|e| e.to_string())?;
    let current = generation(&dir);
    if let Some(cur) = &current
        && same_files(&dir, cur, files)
    {
        return Ok(false);
    }
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    );
    write_generation(&dir, &stamp, files)?;
    let at = |e: nix::Error, what: &str| format!("{}: {what}: {e}", root.display());
    let _ = nix::unistd::unlinkat(dir.fd(), "..data_tmp", nix::unistd::UnlinkatFlags::NoRemoveDir);
    nix::unistd::symlinkat(stamp.as_str(), dir.fd(), "..data_tmp").map_err(|e| at(e, "..data_tmp"))?;
    nix::fcntl::renameat(dir.fd(), "..data_tmp", dir.fd(), "..data")
        .map_err(|e| at(e, "switching ..data"))?;
    // The top-level names point through ..data.
    let tops: std::collections::BTreeSet<String> =
        files.keys().map(|p| p.split('/').next().unwrap_or(p).to_string()).collect();
    for t in &tops {
        let stat = nix::sys::stat::fstatat(dir.fd(), t.as_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
        if stat.is_err() {
            nix::unistd::symlinkat(Path::new("..data").join(t).as_path(), dir.fd(), t.as_str())
                .map_err(|e| at(e, t))?;
        }
    }
    for (name, _) in dir.list(Path::new("")).map_err(|e| e.to_string())? {
        let name = name.to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = tug_beneath::remove_all_at(dir.fd(), Path::new(&name));
        }
    }
    if let Some(old) = current
        && old != stamp
    {
        let _ = tug_beneath::remove_all_at(dir.fd(), Path::new(&old));
    }
    Ok(true)
}

/// The generation `..data` names: only a plain `..<stamp>` name beside it counts.
fn generation(dir: &tug_beneath::Root) -> Option<String> {
    let target = nix::fcntl::readlinkat(dir.fd(), "..data").ok()?;
    let name = target.to_str()?.to_string();
    let plain = name.starts_with("..")
        && !name.contains('/')
        && !["..", "..data", "..data_tmp"].contains(&name.as_str());
    plain.then_some(name)
}

/// Whether the generation `cur` holds exactly `files`, read beneath the volume.
fn same_files(dir: &tug_beneath::Root, cur: &str, files: &BTreeMap<String, (Vec<u8>, u32)>) -> bool {
    let base = Path::new(cur);
    files.iter().all(|(p, (c, _))| {
        dir.read_regular(&base.join(p), c.len() as u64).ok().as_deref() == Some(c.as_slice())
    }) && count_files(dir, base) == files.len()
}

/// Writes one generation's files into the fresh directory `stamp`.
fn write_generation(
    dir: &tug_beneath::Root,
    stamp: &str,
    files: &BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), String> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    dir.mkdir_all(Path::new(stamp), 0o755).map_err(|e| e.to_string())?;
    let fresh = dir.subdir(Path::new(stamp)).map_err(|e| e.to_string())?;
    for (p, (content, mode)) in files {
        item_path(Path::new(""), p)?;
        let rel = Path::new(p);
        let parent =
            fresh.mkdir_all(rel.parent().unwrap_or(Path::new("")), 0o755).map_err(|e| e.to_string())?;
        let name = rel.file_name().unwrap_or_default();
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&parent, name, flags, Mode::from_bits_truncate(*mode))
            .map_err(|e| format!("{}/{p}: {e}", fresh.path().display()))?;
        let mut f = std::fs::File::from(fd);
        std::io::Write::write_all(&mut f, content)
            .map_err(|e| format!("{}/{p}: {e}", fresh.path().display()))?;
        // The umask took bits off at creation; the item's mode is what it asked for.
        f.set_permissions(std::fs::Permissions::from_mode(*mode)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The files (anything not a directory) beneath `rel`, never following a link.
fn count_files(dir: &tug_beneath::Root, rel: &Path) -> usize {
    let Ok(entries) = dir.list(rel) else { return 0 };
    entries.iter().map(|(n, is_dir)| if *is_dir { count_files(dir, &rel.join(n)) } else { 1 }).sum()
}

fn mode(m: Option<i32>, default: u32) -> u32 {
    m.and_then(|m| u32::try_from(m).ok()).map_or(default, |m| m & 0o777)
}

/// The files of a ConfigMap or Secret volume: every key, or just `items`.
fn projected(
    data: &BTreeMap<String, String>,
    items: &[KeyToPath],
    default_mode: u32,
    what: &str,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>, String> {
    let mut out = BTreeMap::new();
    if items.is_empty() {
        for (k, v) in data {
            out.insert(k.clone(), (v.clone().into_bytes(), default_mode));
        }
    } else {
        for it in items {
            let v = data.get(&it.key).ok_or_else(|| format!("{what} has no key {:?}", it.key))?;
            out.insert(it.path.clone(), (v.clone().into_bytes(), mode(it.mode, default_mode)));
        }
    }
    Ok(out)
}

/// Makes (or refreshes) every volume of the pod; returns name → host path.
pub async fn prepare(
    api: &Client,
    pod: &Pod,
    places: Places<'_>,
    pod_ip: &str,
    host_ip: &str,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut out = BTreeMap::new();
    let fs_group =
        pod.spec.security_context.as_ref().and_then(|s| s.fs_group).and_then(|g| u32::try_from(g).ok());
    for v in &pod.spec.volumes {
        let p = volume(api, pod, &ns, v, places, pod_ip, host_ip)
            .await
            .map_err(|e| format!("volume {:?}: {e}", v.name))?;
        if let Some(gid) = fs_group {
            // Kubernetes leaves hostPath volumes as they are.
            let read_only = v.config_map.is_some()
                || v.secret.is_some()
                || v.downward_api.is_some()
                || v.projected.is_some();
            if v.host_path.is_none() && (read_only || !owned_by_group(&p, gid)) {
                set_group_ownership(&p, gid, read_only)
                    .map_err(|e| format!("volume {:?}: fsGroup {gid}: {e}", v.name))?;
            }
        }
        out.insert(v.name.clone(), p);
    }
    Ok(out)
}

/// Whether the volume's root already belongs to `gid` with the setgid bit (kubelet's
/// `OnRootMismatch` test, so a large emptyDir is not walked on every resync).
fn owned_by_group(root: &Path, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(root).is_ok_and(|m| m.gid() == gid && m.mode() & 0o2000 != 0)
}

/// `fsGroup`: everything in the volume gets group `gid` with group read (and write, unless
/// the volume is read-only by nature) permission, directories the setgid bit so new files
/// inherit the group — kubelet's `SetVolumeOwnership`. Symlinks are re-owned, not followed.
pub fn set_group_ownership(root: &Path, gid: u32, read_only: bool) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let mask = if read_only { 0o440 } else { 0o660 };
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        std::os::unix::fs::lchown(&p, None, Some(gid)).map_err(|e| format!("chown {}: {e}", p.display()))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mut mode = meta.mode() & 0o7777 | mask;
        if meta.is_dir() {
            mode |= 0o2000 | 0o110;
            for e in std::fs::read_dir(&p).map_err(|e| format!("{}: {e}", p.display()))? {
                stack.push(e.map_err(|e| e.to_string())?.path());
            }
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", p.display()))?;
    }
    Ok(())
}

async fn volume(
    api: &Client,
    pod: &Pod,
    ns: &str,
    v: &Volume,
    places: Places<'_>,
    pod_ip: &str,
    host_ip: &str,
) -> Result<PathBuf, String> {
    if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        let meta = std::fs::metadata(&p);
        match h.type_.as_deref().unwrap_or("") {
            "" => {}
            "DirectoryOrCreate" if meta.is_err() => {
                std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| e.to_string())?;
            }
            "FileOrCreate" if meta.is_err() => {
                std::fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            }
            "Directory" | "DirectoryOrCreate" if !meta.as_ref().is_ok_and(|m| m.is_dir()) => {
                return Err(format!("hostPath type check failed: {} is not a directory", p.display()));
            }
            "File" | "FileOrCreate" if !meta.as_ref().is_ok_and(|m| m.is_file()) => {
                return Err(format!("hostPath type check failed: {} is not a file", p.display()));
            }
            "Socket" | "CharDevice" | "BlockDevice" if meta.is_err() => {
                return Err(format!("hostPath type check failed: {} does not exist", p.display()));
            }
            _ => {}
        }
        return Ok(p);
    }
    if let Some((claim, _)) = v.claim(&pod.metadata.name) {
        return claimed(api, ns, &claim).await;
    }
    if let Some(s) = &v.secret {
        let d = memory_volume(places, &v.name)?;
        let files = object_files(
            api,
            (ns, "Secret", &s.secret_name),
            &s.items,
            mode(s.default_mode, 0o644),
            s.optional,
        )
        .await?;
        write_atomic(&d, &files)?;
        return Ok(d);
    }
    if let Some(pj) = &v.projected {
        // It may hold secrets and tokens: in memory, as a secret volume.
        let d = memory_volume(places, &v.name)?;
        let default = mode(pj.default_mode, 0o644);
        let mut files = BTreeMap::new();
        for src in &pj.sources {
            for (kind, named) in [("Secret", &src.secret), ("ConfigMap", &src.config_map)] {
                let Some(named) = named else { continue };
                let what = format!("{} {}", kind.to_ascii_lowercase(), named.name);
                match env::data(api, ns, kind, &named.name).await? {
                    Some(data) => files.extend(projected(&data, &named.items, default, &what)?),
                    None if named.optional.unwrap_or(false) => {}
                    None => return Err(format!("{what:?} not found")),
                }
            }
            if let Some(dw) = &src.downward_api {
                files.extend(downward(pod, dw, pod_ip, host_ip, default)?);
            }
            if let Some(t) = &src.service_account_token {
                let token = tokens::get(api, pod, t).await?;
                files.insert(t.path.clone(), (token.into_bytes(), default));
            }
        }
        write_atomic(&d, &files)?;
        return Ok(d);
    }
    let d = dir(places.disk, &v.name);
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    if let Some(e) = &v.empty_dir {
        if e.medium.as_deref() == Some("Memory") {
            tmpfs(&d, e.size_limit.as_ref().map(|q| q.value()))?;
        } else {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| e.to_string())?;
        }
        return Ok(d);
    }
    if let Some(c) = &v.config_map {
        let files =
            object_files(api, (ns, "ConfigMap", &c.name), &c.items, mode(c.default_mode, 0o644), c.optional)
                .await?;
        write_atomic(&d, &files)?;
        return Ok(d);
    }
    if let Some(dw) = &v.downward_api {
        let files = downward(pod, dw, pod_ip, host_ip, mode(dw.default_mode, 0o644))?;
        write_atomic(&d, &files)?;
        return Ok(d);
    }
    Err("no volume source Tug supports".into())
}

/// The files of a ConfigMap or Secret volume (`kind` named `name` in `ns`): every key, or
/// just `items`; none when it is missing and `optional`.
async fn object_files(
    api: &Client,
    (ns, kind, name): (&str, &str, &str),
    items: &[KeyToPath],
    default_mode: u32,
    optional: Option<bool>,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>, String> {
    let lower = kind.to_ascii_lowercase();
    match env::data(api, ns, kind, name).await? {
        Some(data) => projected(&data, items, default_mode, &format!("{lower} {name}")),
        None if optional.unwrap_or(false) => Ok(BTreeMap::new()),
        None => Err(format!("{lower} {name:?} not found")),
    }
}

/// The downward API's files.
fn downward(
    pod: &Pod,
    dw: &tug_api::kinds::pod::DownwardApiVolume,
    pod_ip: &str,
    host_ip: &str,
    default: u32,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>, String> {
    let mut files = BTreeMap::new();
    for it in &dw.items {
        let value = if let Some(f) = &it.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => lines(&pod.metadata.labels),
                "metadata.annotations" => lines(&pod.metadata.annotations),
                p => env::field(pod, pod_ip, host_ip, p)?,
            }
        } else {
            String::new()
        };
        files.insert(it.path.clone(), (value.into_bytes(), mode(it.mode, default)));
    }
    Ok(files)
}

/// Service account tokens for projected volumes: asked of the API (a `TokenRequest` bound to
/// the pod) and kept until 80% of their life has passed, as kubelet does, so each resync
/// rewrites the same token until it is due.
pub mod tokens {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    use tug_api::kinds::pod::{Pod, ServiceAccountTokenProjection};
    use tug_client::{Client, Method};

    type Key = (String, String, String);
    static CACHE: Mutex<Option<HashMap<Key, (String, Instant)>>> = Mutex::new(None);

    /// The pod's current token for this projection.
    pub async fn get(api: &Client, pod: &Pod, t: &ServiceAccountTokenProjection) -> Result<String, String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let audience = t.audience.clone().unwrap_or_default();
        let key = (uid.clone(), t.path.clone(), audience.clone());
        if let Some((token, due)) =
            CACHE.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_default().get(&key)
        {
            if Instant::now() < *due {
                return Ok(token.clone());
            }
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let sa = pod
            .spec
            .service_account_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let seconds = t.expiration_seconds.unwrap_or(3600).max(600);
        let mut spec = serde_json::json!({
            "expirationSeconds": seconds,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.metadata.name, "uid": uid},
        });
        if !audience.is_empty() {
            spec["audiences"] = serde_json::json!([audience]);
        }
        let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token");
        let (v, _) = api
            .call(Method::POST, &path, "application/json", body.to_string().into_bytes())
            .await
            .map_err(|e| format!("a token for service account {ns}/{sa}: {e}"))?;
        let token =
            v["status"]["token"].as_str().ok_or("the TokenRequest's answer has no token")?.to_string();
        let life = Duration::from_secs(u64::try_from(seconds).unwrap_or(3600));
        let due = Instant::now() + life.mul_f64(0.8);
        CACHE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_default()
            .insert(key, (token.clone(), due));
        Ok(token)
    }

    /// Forgets a removed pod's tokens.
    pub fn forget(uid: &str) {
        if let Some(c) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            c.retain(|(u, _, _), _| u != uid);
        }
    }
}

/// The directory of the volume a claim is bound to: a `local` volume's path, which must
/// exist on this node (the scheduler put the pod here by the volume's node affinity), or a
/// `hostPath` volume's (made when its type says so). The data outlives the pod: nothing here
/// removes it.
async fn claimed(api: &Client, ns: &str, claim: &str) -> Result<PathBuf, String> {
    let pvc = crate::api::get(api, &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}"))
        .await?
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
    let name = pvc["spec"]["volumeName"]
        .as_str()
        .filter(|_| pvc["status"]["phase"] == "Bound")
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} is not bound"))?;
    let pv = crate::api::get(api, &format!("/api/v1/persistentvolumes/{name}"))
        .await?
        .ok_or_else(|| format!("persistentvolume {name:?} of claim {claim:?} not found"))?;
    if let Some(p) = pv["spec"]["local"]["path"].as_str() {
        let path = PathBuf::from(p);
        if !path.is_dir() {
            return Err(format!("persistentvolume {name:?}: local path {p} is not a directory on this node"));
        }
        return Ok(path);
    }
    if let Some(p) = pv["spec"]["hostPath"]["path"].as_str() {
        let path = PathBuf::from(p);
        if !path.exists() && pv["spec"]["hostPath"]["type"] == "DirectoryOrCreate" {
            std::fs::create_dir_all(&path).map_err(|e| format!("{p}: {e}"))?;
        }
        if !path.exists() {
            return Err(format!("persistentvolume {name:?}: hostPath {p} does not exist on this node"));
        }
        return Ok(path);
    }
    Err(format!("persistentvolume {name:?} has no local or hostPath source"))
}

/// `key="value"` lines, as the downward API writes labels and annotations.
fn lines(m: &BTreeMap<String, String>) -> String {
    m.iter().map(|(k, v)| format!("{k}={v:?}\n")).collect()
}

/// The OCI mounts of a container's `volumeMounts`.
///
/// A `subPath` is never handed to the runtime as path text (CVE-2017-1002101: a symlink the
/// pod plants inside its volume would lead the bind mount to any node path). It is resolved
/// by the kernel beneath its volume (`RESOLVE_BENEATH`: a step outside is an error naming
/// it), made as a directory when missing, and bind-mounted from that descriptor onto
/// `<pod dir>/volume-subpaths/<volume>/<container>/<index>`, kubelet's place for it; the
/// container's mount uses that path, which the pod cannot reach or change. Volumes the agent
/// makes are mounted `nosuid,nodev`; `read_only_volumes` (claims mounted read-only, and
/// configMap, secret and downwardAPI volumes) are read-only in every container.
///
/// A `subPathExpr` is the container's environment (`env`) expanded into it first, then
/// treated as a `subPath`. `mountPropagation` gives the mount `rslave` (HostToContainer) or
/// `rshared` (Bidirectional) instead of `rprivate`.
pub fn mounts(
    c: &tug_api::kinds::pod::Container,
    volumes: &BTreeMap<String, PathBuf>,
    (read_only_volumes, agent_made): (&[String], &[String]),
    pod_dir: &Path,
    env: &[(String, String)],
) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (index, m) in c.volume_mounts.iter().enumerate() {
        let base = volumes.get(&m.name).ok_or_else(|| format!("volumeMount {:?}: no such volume", m.name))?;
        let expanded = m.sub_path_expr.as_deref().map(|e| super::env::expand(e, env));
        let sub = expanded.as_deref().or(m.sub_path.as_deref());
        let source = match sub.filter(|s| !s.is_empty()) {
            Some(sub) => {
                let bind =
                    pod_dir.join("volume-subpaths").join(&m.name).join(&c.name).join(index.to_string());
                bind_subpath(base, sub, &bind)
                    .map_err(|e| format!("volumeMount {:?}: subPath {sub:?}: {e}", m.name))?;
                bind
            }
            None => base.clone(),
        };
        let propagation = match m.mount_propagation.as_deref() {
            Some("HostToContainer") => "rslave",
            Some("Bidirectional") => "rshared",
            _ => "rprivate",
        };
        let mut options = vec!["rbind", propagation];
        if agent_made.contains(&m.name) {
            options.extend(["nosuid", "nodev"]);
        }
        if m.read_only.unwrap_or(false) || read_only_volumes.contains(&m.name) {
            options.push("ro");
        }
        out.push(serde_json::json!({"destination": m.mount_path, "type": "bind", "source": source, "options": options}));
    }
    Ok(out)
}

/// Resolves `sub` beneath the volume `base` with the kernel's help and bind-mounts what it
/// names onto `bind` (replacing an earlier run's mount there).
fn bind_subpath(base: &Path, sub: &str, bind: &Path) -> Result<(), String> {
    use nix::fcntl::OFlag;
    use tug_beneath::{Error, Root, Scope};
    if sub.starts_with('/') || sub.split('/').any(|c| c == "..") {
        return Err("must be a relative path without '..'".into());
    }
    let volume = Root::open_dir(base, Scope::Beneath).map_err(|e| e.to_string())?;
    let target = match volume.open(Path::new(sub), OFlag::O_PATH) {
        Ok(fd) => fd,
        Err(Error::Io { source: nix::errno::Errno::ENOENT, .. }) => {
            volume.mkdir_all(Path::new(sub), 0o755).map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    let is_dir = tug_beneath::file_type(&target).is_ok_and(|t| t == nix::sys::stat::SFlag::S_IFDIR);
    if tug_beneath::is_mount_root(bind) {
        nix::mount::umount2(bind, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| format!("unmounting {}: {e}", bind.display()))?;
    }
    let parent = bind.parent().unwrap_or(bind);
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let made = if is_dir { std::fs::create_dir(bind) } else { std::fs::File::create(bind).map(drop) };
    match made {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{}: {e}", bind.display())),
    }
    nix::mount::mount(
        Some(&tug_beneath::fd_path(&target)),
        bind,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind-mounting it onto {}: {e}", bind.display()))
}

/// Unmounts the pod's tmpfs volumes and its subPath mounts so its directory can go.
pub fn unmount_all(pod_dir: &Path) {
    let subpaths = pod_dir.join("volume-subpaths");
    // The mount table only when the pod has subPath mounts: most have none, and reading it
    // costs in proportion to every mount on the node.
    let listed = if std::fs::symlink_metadata(&subpaths).is_ok() {
        std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
    } else {
        String::new()
    };
    let mut points: Vec<PathBuf> = listed
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&subpaths))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
    for e in std::fs::read_dir(pod_dir.join("volumes")).into_iter().flatten().flatten() {
        if tug_beneath::is_mount_root(&e.path()) {
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Removes the pod's directory (after [`unmount_all`]): fd-relative, never following a link
/// the pod planted and never entering a mount that is still there.
pub fn remove_pod_dir(pod_dir: &Path) -> Result<(), String> {
    let (Some(parent), Some(name)) = (pod_dir.parent(), pod_dir.file_name()) else { return Ok(()) };
    let dir = match tug_beneath::Root::open_dir(parent, tug_beneath::Scope::Beneath) {
        Ok(d) => d,
        Err(_) => return Ok(()),
    };
    tug_beneath::remove_all_at(dir.fd(), Path::new(name))
        .map_err(|e| format!("removing {}: {e}", pod_dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_propagation_becomes_the_mounts_option() {
        let c: tug_api::kinds::pod::Container = serde_json::from_value(serde_json::json!({
            "name": "c", "image": "i", "volumeMounts": [
                {"name": "v", "mountPath": "/a"},
                {"name": "v", "mountPath": "/b", "mountPropagation": "HostToContainer"},
                {"name": "v", "mountPath": "/c", "mountPropagation": "Bidirectional"}]
        }))
        .unwrap();
        let vols: BTreeMap<String, PathBuf> = [("v".to_string(), PathBuf::from("/tmp"))].into();
        let m = mounts(&c, &vols, (&[], &[]), Path::new("/nonexistent"), &[]).unwrap();
        let second: Vec<&str> = m.iter().map(|m| m["options"][1].as_str().unwrap()).collect();
        assert_eq!(second, ["rprivate", "rslave", "rshared"]);
    }

    #[test]
    fn fs_group_owns_and_opens_the_volume_to_its_group() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::Builder::new().prefix("tug-fsgroup").tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/f"), "x").unwrap();
        std::fs::set_permissions(d.path().join("sub/f"), std::fs::Permissions::from_mode(0o400)).unwrap();
        std::os::unix::fs::symlink("sub/f", d.path().join("link")).unwrap();
        set_group_ownership(d.path(), 2000, true).unwrap();
        let m = |p: &str| std::fs::symlink_metadata(d.path().join(p)).unwrap();
        assert_eq!(m("sub/f").gid(), 2000);
        assert_eq!(m("sub/f").mode() & 0o7777, 0o440, "read-only volumes get group read");
        assert_eq!(m("sub").mode() & 0o2000, 0o2000, "directories get setgid");
        assert_eq!(m("link").gid(), 2000, "symlinks are re-owned, not followed");
        assert!(owned_by_group(d.path(), 2000) && !owned_by_group(d.path(), 3000));
        set_group_ownership(d.path(), 2000, false).unwrap();
        assert_eq!(m("sub/f").mode() & 0o7777, 0o660);
    }

    #[test]
    fn atomic_writes_switch_data_and_prune() {
        let d = tempfile::tempdir().unwrap();
        let mut files = BTreeMap::new();
        files.insert("a".to_string(), (b"1".to_vec(), 0o644));
        files.insert("dir/b".to_string(), (b"2".to_vec(), 0o600));
        assert!(write_atomic(d.path(), &files).unwrap());
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(d.path().join("dir/b")).unwrap(), b"2");
        assert!(!write_atomic(d.path(), &files).unwrap(), "unchanged content is not rewritten");
        files.remove("a");
        files.insert("dir/b".to_string(), (b"3".to_vec(), 0o600));
        assert!(write_atomic(d.path(), &files).unwrap());
        assert_eq!(std::fs::read(d.path().join("dir/b")).unwrap(), b"3");
        assert!(!d.path().join("a").exists(), "a removed key goes");
        let stamps = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("..") && n != "..data"
            })
            .count();
        assert_eq!(stamps, 1, "the old generation is removed");
    }

    /// CVE-2017-1002102's pattern, should a container ever write its volume: `..data`, an
    /// old generation or a top-level name swapped for a link to a node directory never
    /// makes the writer remove or write anything there.
    #[test]
    fn a_swapped_data_link_never_steers_the_writer() {
        let d = tempfile::Builder::new().prefix("tug-atomic").tempdir().unwrap();
        let (vol, outside) = (d.path().join("vol"), d.path().join("outside"));
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("keep"), "node").unwrap();
        let files = |v: &str| BTreeMap::from([("a".to_string(), (v.as_bytes().to_vec(), 0o644))]);
        assert!(write_atomic(&vol, &files("1")).unwrap());
        std::fs::remove_file(vol.join("..data")).unwrap();
        std::os::unix::fs::symlink(&outside, vol.join("..data")).unwrap();
        assert!(write_atomic(&vol, &files("2")).unwrap());
        assert_eq!(std::fs::read(vol.join("a")).unwrap(), b"2");
        let generation = std::fs::read_link(vol.join("..data")).unwrap();
        std::fs::remove_dir_all(vol.join(&generation)).unwrap();
        std::os::unix::fs::symlink(&outside, vol.join(&generation)).unwrap();
        std::os::unix::fs::symlink(outside.join("dir"), vol.join("planted")).unwrap();
        assert!(write_atomic(&vol, &files("3")).unwrap());
        assert_eq!(std::fs::read(vol.join("a")).unwrap(), b"3");
        assert!(std::fs::symlink_metadata(vol.join(&generation)).is_err(), "the link itself went");
        assert!(std::fs::symlink_metadata(vol.join("planted")).is_err());
        assert!(outside.join("keep").exists() && outside.join("dir").exists(), "the node's files stay");
    }

    #[test]
    fn item_paths_stay_inside() {
        let r = Path::new("/v");
        assert_eq!(item_path(r, "a/b").unwrap(), Path::new("/v/a/b"));
        for bad in ["../x", "/etc/passwd", "a/../../x", "..data", ""] {
            assert!(item_path(r, bad).is_err(), "{bad}");
        }
    }
}
