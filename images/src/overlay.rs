//! A container's root filesystem: the image's unpacked layers as overlayfs lower dirs, a
//! fresh upper and work dir of its own.

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use std::path::{Path, PathBuf};

/// The mount's option string: `lowerdir` lists the topmost layer first (overlayfs' order;
/// manifests list the bottom layer first).
pub fn options(layers_bottom_first: &[PathBuf], upper: &Path, work: &Path) -> Result<String, String> {
    let mut lower = String::new();
    for l in layers_bottom_first.iter().rev() {
        let s = l.to_str().ok_or_else(|| format!("{}: not UTF-8", l.display()))?;
        if s.contains([':', ',', '\\']) {
            return Err(format!("{s}: a layer path may not hold ':', ',' or '\\'"));
        }
        if !lower.is_empty() {
            lower.push(':');
        }
        lower.push_str(s);
    }
    if lower.is_empty() {
        return Err("an image without layers has no root filesystem".into());
    }
    let opts = format!("lowerdir={lower},upperdir={},workdir={}", upper.display(), work.display());
    // The kernel takes at most one page of mount data.
    if opts.len() >= 4096 {
        return Err(format!(
            "{} layers make an overlay mount option of {} bytes, over the kernel's 4095",
            layers_bottom_first.len(),
            opts.len()
        ));
    }
    Ok(opts)
}

pub fn mount_rootfs(
    layers_bottom_first: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), String> {
    let opts = options(layers_bottom_first, upper, work)?;
    mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(opts.as_str()))
        .map_err(|e| format!("mounting the overlay rootfs at {}: {e}", target.display()))
}

/// Unmounts `target` if it is mounted (lazily, so a process still inside cannot block
/// removal).
pub fn unmount(target: &Path) -> Result<(), String> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!("unmounting {}: {e}", target.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_is_top_first() {
        let l = [PathBuf::from("/l/bottom"), PathBuf::from("/l/top")];
        let o = options(&l, Path::new("/u"), Path::new("/w")).unwrap();
        assert_eq!(o, "lowerdir=/l/top:/l/bottom,upperdir=/u,workdir=/w");
        assert!(options(&[], Path::new("/u"), Path::new("/w")).is_err());
        assert!(options(&[PathBuf::from("/a:b")], Path::new("/u"), Path::new("/w")).is_err());
        let many: Vec<_> =
            (0..100).map(|i| PathBuf::from(format!("/var/lib/tug/images/layers/{i:064}"))).collect();
        assert!(options(&many, Path::new("/u"), Path::new("/w")).unwrap_err().contains("over the kernel's"));
    }
}
