//! A pod's volumes on the node, under `<pod dir>/volumes/<name>`, and the mounts that put
//! them into its containers.
//!
//! - emptyDir: a directory (disk), or a tmpfs for `medium: Memory` (`sizeLimit` its size).
//! - hostPath: the node's path, checked or created by `type`.
//! - configMap, secret, downwardAPI: files written the way kubelet's atomic writer does —
//!   into a fresh `..<time>` directory, then `..data` switched to it by one rename, each key
//!   a symlink through `..data` — so a container never reads half an update. Secrets live on
//!   a tmpfs (never on disk). They are rewritten when the objects change.

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

fn is_mountpoint(p: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(p) else { return false };
    let target = canon.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

fn tmpfs(p: &Path, size: Option<u128>) -> Result<(), String> {
    if is_mountpoint(p) {
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
pub fn write_atomic(root: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> Result<bool, String> {
    let data = root.join("..data");
    // Unchanged? Compare with what `..data` holds.
    if let Ok(cur) = std::fs::read_link(&data) {
        let cur = root.join(cur);
        let same =
            files.iter().all(|(p, (c, _))| std::fs::read(cur.join(p)).ok().as_deref() == Some(c.as_slice()))
                && count_files(&cur) == files.len();
        if same {
            return Ok(false);
        }
    }
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    );
    let fresh = root.join(&stamp);
    std::fs::create_dir_all(&fresh).map_err(|e| format!("{}: {e}", fresh.display()))?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    for (p, (content, mode)) in files {
        let path = item_path(&fresh, p)?;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        std::fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).map_err(|e| e.to_string())?;
    }
    let tmp = root.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(|e| e.to_string())?;
    let old = std::fs::read_link(&data).ok();
    std::fs::rename(&tmp, &data).map_err(|e| format!("switching {}: {e}", data.display()))?;
    // The top-level names point through ..data.
    let tops: std::collections::BTreeSet<String> =
        files.keys().map(|p| p.split('/').next().unwrap_or(p).to_string()).collect();
    for t in &tops {
        let link = root.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(t), &link).map_err(|e| e.to_string())?;
        }
    }
    for e in std::fs::read_dir(root).map_err(|e| e.to_string())?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(o) = old
        && o != Path::new(&stamp)
    {
        let _ = std::fs::remove_dir_all(root.join(o));
    }
    Ok(true)
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            n += count_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
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
    pod_dir: &Path,
    pod_ip: &str,
    host_ip: &str,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut out = BTreeMap::new();
    let fs_group =
        pod.spec.security_context.as_ref().and_then(|s| s.fs_group).and_then(|g| u32::try_from(g).ok());
    for v in &pod.spec.volumes {
        let p = volume(api, pod, &ns, v, pod_dir, pod_ip, host_ip)
            .await
            .map_err(|e| format!("volume {:?}: {e}", v.name))?;
        if let Some(gid) = fs_group {
            // Kubernetes leaves hostPath volumes as they are.
            let read_only = v.config_map.is_some() || v.secret.is_some() || v.downward_api.is_some();
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
    pod_dir: &Path,
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
    if let Some(c) = &v.persistent_volume_claim {
        return claimed(api, ns, &c.claim_name).await;
    }
    let d = dir(pod_dir, &v.name);
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
        let data = env::data(api, ns, "ConfigMap", &c.name).await?;
        let files = match data {
            Some(data) => {
                projected(&data, &c.items, mode(c.default_mode, 0o644), &format!("configmap {}", c.name))?
            }
            None if c.optional.unwrap_or(false) => BTreeMap::new(),
            None => return Err(format!("configmap {:?} not found", c.name)),
        };
        write_atomic(&d, &files)?;
        return Ok(d);
    }
    if let Some(s) = &v.secret {
        tmpfs(&d, None)?;
        let data = env::data(api, ns, "Secret", &s.secret_name).await?;
        let files = match data {
            Some(data) => {
                projected(&data, &s.items, mode(s.default_mode, 0o644), &format!("secret {}", s.secret_name))?
            }
            None if s.optional.unwrap_or(false) => BTreeMap::new(),
            None => return Err(format!("secret {:?} not found", s.secret_name)),
        };
        write_atomic(&d, &files)?;
        return Ok(d);
    }
    if let Some(dw) = &v.downward_api {
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
            files.insert(it.path.clone(), (value.into_bytes(), mode(it.mode, mode(dw.default_mode, 0o644))));
        }
        write_atomic(&d, &files)?;
        return Ok(d);
    }
    Err("no volume source Tug supports".into())
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
pub fn mounts(
    c: &tug_api::kinds::pod::Container,
    volumes: &BTreeMap<String, PathBuf>,
    read_only_volumes: &[String],
) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for m in &c.volume_mounts {
        let base = volumes.get(&m.name).ok_or_else(|| format!("volumeMount {:?}: no such volume", m.name))?;
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let p =
                    item_path(base, sub).map_err(|e| format!("volumeMount {:?}: subPath: {e}", m.name))?;
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                }
                p
            }
            None => base.clone(),
        };
        let mut options = vec!["rbind", "rprivate"];
        if m.read_only.unwrap_or(false) || read_only_volumes.contains(&m.name) {
            options.push("ro");
        }
        out.push(serde_json::json!({"destination": m.mount_path, "type": "bind", "source": source, "options": options}));
    }
    Ok(out)
}

/// Unmounts the pod's tmpfs volumes so its directory can go.
pub fn unmount_all(pod_dir: &Path) {
    for e in std::fs::read_dir(pod_dir.join("volumes")).into_iter().flatten().flatten() {
        if is_mountpoint(&e.path()) {
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn item_paths_stay_inside() {
        let r = Path::new("/v");
        assert_eq!(item_path(r, "a/b").unwrap(), Path::new("/v/a/b"));
        for bad in ["../x", "/etc/passwd", "a/../../x", "..data", ""] {
            assert!(item_path(r, bad).is_err(), "{bad}");
        }
    }
}
