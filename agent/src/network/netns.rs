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

/// Runs the future `f` makes on a thread of its own inside the namespace at `path` (or this
/// one for `None`), on a current-thread runtime, until it ends: every socket its tasks make
/// is the namespace's. Returns once the thread is inside, or why it could not get there.
pub fn spawn_runtime<F, Fut>(name: &str, path: Option<&Path>, f: F) -> Result<(), String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let fd = path.map(open).transpose()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("{name} runtime: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let who = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(fd) = fd
                && let Err(e) = nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
            {
                let _ = tx.send(Err(format!("{who}: entering the network namespace: {e}")));
                return;
            }
            let _ = tx.send(Ok(()));
            rt.block_on(f());
        })
        .map_err(|e| format!("{name} thread: {e}"))?;
    rx.recv().map_err(|_| format!("{name}: the thread ended"))?
}

/// A TCP listener on `port` of every address, tried again (5 s, doubling up to 5 minutes)
/// while the port is taken; `what` names it in the warnings.
pub async fn listen(what: &str, port: u16) -> tokio::net::TcpListener {
    listen_on(what, (std::net::Ipv4Addr::UNSPECIFIED, port).into()).await
}

/// [`listen`] on one address.
pub async fn listen_on(what: &str, addr: std::net::SocketAddr) -> tokio::net::TcpListener {
    let mut pause = std::time::Duration::from_secs(5);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                let on = if addr.ip().is_unspecified() {
                    format!("port {}", addr.port())
                } else {
                    addr.to_string()
                };
                tracing::warn!(
                    "tug-agent: {what}: listening on {on}: {e}; trying again in {} s",
                    pause.as_secs()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(300));
            }
        }
    }
}
