//! Network namespaces pinned by bind mounts, and running code inside one.

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use std::os::fd::OwnedFd;
use std::path::Path;

/// Makes a new network namespace and pins it at `path` (a bind mount of the namespace onto an
/// empty file), so it outlives every process and this agent. An existing pin is kept.
pub fn create_pinned(path: &Path) -> Result<(), String> {
    if is_pinned(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let target = path.to_path_buf();
    // unshare(CLONE_NEWNET) moves only the calling thread: a short-lived one does it.
    let made = std::thread::spawn(move || -> Result<(), String> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        // Pods are IPv4: links made in here later (the pod's eth0) get no IPv6 link-local
        // address, so no duplicate address detection and no MLD reports, work the kernel did
        // for every pod. `lo` exists already and keeps ::1. Absent when IPv6 is off.
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/addr_gen_mode", "1");
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("pinning the namespace at {}: {e}", target.display()))
    })
    .join()
    .map_err(|_| "the namespace thread panicked".to_string())?;
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Whether `path` is a pinned network namespace.
pub fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Unpins and removes a namespace; the namespace itself goes once nothing else holds it.
/// Missing is fine.
pub fn remove_pinned(path: &Path) -> Result<(), String> {
    if is_pinned(path) {
        nix::mount::umount2(path, MntFlags::MNT_DETACH)
            .map_err(|e| format!("unmounting {}: {e}", path.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub fn open(path: &Path) -> Result<OwnedFd, String> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| format!("network namespace {}: {e}", path.display()))
}

/// Runs `f` on a thread inside the namespace at `path` (or this one for `None`).
pub fn run_in<T: Send>(path: Option<&Path>, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let fd = path.map(open).transpose()?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T, String> {
            if let Some(fd) = fd {
                nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
            }
            Ok(f())
        })
        .join()
        .map_err(|_| "the namespace thread panicked".to_string())?
    })
}
