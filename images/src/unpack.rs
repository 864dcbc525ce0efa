//! One layer tar → one directory that overlayfs can use as a lower layer.
//!
//! Whiteouts become what overlayfs reads natively: `.wh.NAME` a 0:0 character device `NAME`,
//! `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory. Modes, owners,
//! xattrs (PAX `SCHILY.xattr.*`), hard links, symlinks, devices and times are kept.
//!
//! Safety: every entry's path is cleaned component by component; `..` anywhere is refused, a
//! leading `/` is dropped (as tar itself does), and no entry is written through a symlink (an
//! earlier entry `etc -> /etc` followed by `etc/passwd` is refused, not written to the host).
//! Hard links must name a file already in this layer. Parents are checked with `lstat` and
//! files created with `O_NOFOLLOW | O_EXCL`, so nothing outside `dest` is ever touched.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What one unpack wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unpacked {
    pub entries: u64,
    pub bytes: u64,
}

/// Unpacks the tar stream `reader` into `dest` (an existing, empty directory) and returns the
/// reader, read to its end, so that a caller hashing it sees every byte.
pub fn unpack<R: Read>(reader: R, dest: &Path) -> Result<(Unpacked, R), String> {
    let mut archive = tar::Archive::new(reader);
    let mut stats = Unpacked::default();
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    {
        let entries = archive.entries().map_err(|e| format!("reading the layer: {e}"))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| format!("reading the layer: {e}"))?;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let fail = |what: String| format!("layer entry {shown:?}: {what}");
            stats.entries += 1;
            stats.bytes += write_entry(&mut entry, &raw, dest, &mut dir_times).map_err(fail)?;
        }
    }
    // Directory times last: writing into a directory changes its mtime.
    for (path, mtime) in dir_times.iter().rev() {
        set_times(path, *mtime).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let mut reader = archive.into_inner();
    io::copy(&mut reader, &mut io::sink()).map_err(|e| format!("reading the layer: {e}"))?;
    Ok((stats, reader))
}

/// `raw` as relative components: `.` and empty parts dropped, a leading `/` dropped, `..`
/// refused.
pub fn clean(raw: &[u8]) -> Result<Vec<OsString>, String> {
    let mut out = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("the path has a \"..\" component: it would escape the layer".into()),
            p => out.push(OsString::from_vec(p.to_vec())),
        }
    }
    Ok(out)
}

/// Makes sure every ancestor of `parts` inside `dest` is a real directory (creating missing
/// ones) — never a symlink — and returns the full path of the entry.
fn checked_path(dest: &Path, parts: &[OsString]) -> Result<PathBuf, String> {
    let mut path = dest.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            path.push(part);
            break;
        }
        path.push(part);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "its parent {:?} is a symlink: writing through it could leave the layer",
                    rel(dest, &path)
                ));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("its parent {:?} is not a directory", rel(dest, &path))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Ok(path)
}

fn rel(dest: &Path, path: &Path) -> String {
    path.strip_prefix(dest).unwrap_or(path).display().to_string()
}

/// Removes whatever is at `path` (a tree if it is a directory), nothing if nothing is.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn write_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    raw: &[u8],
    dest: &Path,
    dir_times: &mut Vec<(PathBuf, u64)>,
) -> Result<u64, String> {
    let parts = clean(raw)?;
    let header = entry.header().clone();
    let kind = header.entry_type();
    let mode = header.mode().map_err(|e| e.to_string())? & 0o7777;
    let uid = u32::try_from(header.uid().map_err(|e| e.to_string())?).map_err(|_| "uid out of range")?;
    let gid = u32::try_from(header.gid().map_err(|e| e.to_string())?).map_err(|_| "gid out of range")?;
    let mtime = header.mtime().unwrap_or(0);
    let xattrs = xattrs(entry)?;
    if matches!(kind, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader) {
        return Ok(0);
    }
    let Some(name) = parts.last() else {
        // The layer's root (`./`): its metadata is the root directory's.
        if kind.is_dir() {
            chown(dest, uid, gid, true)?;
            fs::set_permissions(dest, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
            dir_times.push((dest.to_path_buf(), mtime));
        }
        return Ok(0);
    };
    let name_bytes = name.as_bytes();
    if name_bytes == b".wh..wh..opq" {
        let dir = checked_path(dest, &parts)?.parent().map(Path::to_path_buf).unwrap_or(dest.to_path_buf());
        set_xattr(&dir, "trusted.overlay.opaque", b"y")?;
        return Ok(0);
    }
    if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
        if hidden.starts_with(b".wh.") {
            return Ok(0); // AUFS bookkeeping (.wh..wh.plnk and the like): nothing to overlayfs.
        }
        // `.wh.`, `.wh..` and `.wh...` would name the directory itself or its parent: a
        // whiteout hides one entry of its own directory, nothing else.
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(format!(
                "the whiteout {:?} names no entry of its directory",
                String::from_utf8_lossy(name_bytes)
            ));
        }
        let mut target = parts.clone();
        *target.last_mut().expect("non-empty") = OsStr::from_bytes(hidden).to_os_string();
        let path = checked_path(dest, &target)?;
        remove_any(&path).map_err(|e| e.to_string())?;
        mknod(&path, libc::S_IFCHR, 0, 0)?;
        return Ok(0);
    }
    let path = checked_path(dest, &parts)?;
    let existing = fs::symlink_metadata(&path).ok();
    if !(kind.is_dir() && existing.as_ref().is_some_and(|m| m.is_dir())) {
        remove_any(&path).map_err(|e| e.to_string())?;
    }
    let mut written = 0;
    match kind {
        tar::EntryType::Directory => {
            if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                fs::create_dir(&path).map_err(|e| e.to_string())?;
            }
            chown(&path, uid, gid, true)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
            dir_times.push((path.clone(), mtime));
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| e.to_string())?;
            written = io::copy(entry, &mut file).map_err(|e| format!("writing: {e}"))?;
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|e| format!("chown: {e}"))?;
            file.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
        }
        tar::EntryType::Symlink => {
            let target = entry.link_name_bytes().ok_or("a symlink without a target")?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).map_err(|e| e.to_string())?;
            chown(&path, uid, gid, false)?;
        }
        tar::EntryType::Link => {
            let target = entry.link_name_bytes().ok_or("a hard link without a target")?;
            let tparts = clean(&target).map_err(|e| format!("hard link target: {e}"))?;
            if tparts.is_empty() {
                return Err("a hard link to the layer's root".into());
            }
            let tpath = checked_path(dest, &tparts).map_err(|e| format!("hard link target: {e}"))?;
            match fs::symlink_metadata(&tpath) {
                Ok(m) if !m.is_dir() => {}
                Ok(_) => return Err("a hard link to a directory".into()),
                Err(_) => {
                    return Err(format!(
                        "a hard link to {:?}, which is not in this layer",
                        String::from_utf8_lossy(&target)
                    ));
                }
            }
            fs::hard_link(&tpath, &path).map_err(|e| e.to_string())?;
            return Ok(0); // shares the target's inode: metadata and times are the target's
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let fmt = match kind {
                tar::EntryType::Char => libc::S_IFCHR,
                tar::EntryType::Block => libc::S_IFBLK,
                _ => libc::S_IFIFO,
            };
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            mknod(&path, fmt, major, minor)?;
            chown(&path, uid, gid, true)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
        }
        other => return Err(format!("entry type {other:?} is not supported")),
    }
    for (key, value) in &xattrs {
        set_xattr(&path, key, value)?;
    }
    if !kind.is_dir() {
        set_times(&path, mtime).map_err(|e| e.to_string())?;
    }
    Ok(written)
}

/// The entry's PAX `SCHILY.xattr.*` records.
fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(|e| format!("PAX header: {e}"))? {
        for ext in exts {
            let ext = ext.map_err(|e| format!("PAX header: {e}"))?;
            if let Ok(key) = ext.key()
                && let Some(name) = key.strip_prefix("SCHILY.xattr.")
            {
                out.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

fn cpath(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: a NUL byte in the path", path.display()))
}

fn mknod(path: &Path, fmt: libc::mode_t, major: u32, minor: u32) -> Result<(), String> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated path; mknod reads it only.
    let rc = unsafe { libc::mknod(c.as_ptr(), fmt | 0o600, libc::makedev(major, minor)) };
    if rc != 0 {
        return Err(format!("mknod {}: {}", path.display(), io::Error::last_os_error()));
    }
    Ok(())
}

fn chown(path: &Path, uid: u32, gid: u32, follow: bool) -> Result<(), String> {
    let r = if follow {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
    } else {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    };
    r.map_err(|e| format!("chown {}: {e}", path.display()))
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), String> {
    let c = cpath(path)?;
    let n = CString::new(name).map_err(|_| format!("xattr {name:?}: a NUL byte in the name"))?;
    // SAFETY: both strings are NUL-terminated and `value` is valid for its length.
    let rc = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc != 0 {
        return Err(format!("setting xattr {name} on {}: {}", path.display(), io::Error::last_os_error()));
    }
    Ok(())
}

fn set_times(path: &Path, mtime: u64) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let secs = libc::time_t::try_from(mtime).unwrap_or(0);
    let ts = [libc::timespec { tv_sec: secs, tv_nsec: 0 }, libc::timespec { tv_sec: secs, tv_nsec: 0 }];
    // SAFETY: `c` is a valid path and `ts` two timespecs, as utimensat requires.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Whether `path` is an overlayfs whiteout (a 0:0 character device).
pub fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_char_device() && m.rdev() == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_paths() {
        let c = |s: &str| {
            clean(s.as_bytes())
                .map(|v| v.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>())
        };
        assert_eq!(c("./a/b/").unwrap(), ["a", "b"]);
        assert_eq!(c("/etc/passwd").unwrap(), ["etc", "passwd"]);
        assert!(c("a/../../b").unwrap_err().contains("escape"));
        assert!(c("..").is_err());
        assert_eq!(c("./").unwrap(), Vec::<String>::new());
    }
}
