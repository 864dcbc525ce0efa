//! A pod's pause process: PID 1 of the PID namespace a pod with `shareProcessNamespace: true`
//! gives all its containers, as Kubernetes' pause container is. It does nothing but reap the
//! orphans the namespace hands it; killing it ends every process in the namespace.
//!
//! `tug-supervisor pause LABEL [CGROUP-PROCS]` (run by [`start`]) joins the cgroup, makes a
//! PID namespace, forks its PID 1 away from the caller (a session of its own, re-parented to
//! init once the first process exits) and prints `ok PID` — the pause's pid as the caller
//! sees it. LABEL only names the pause in `ps` (the agent passes the pod's directory).

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, waitpid};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A running pause: its pid, and its PID namespace's identity (`pid:[4026532123]`) to tell it
/// from a process that reused the pid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pause {
    pub pid: i32,
    pub ns: String,
}

impl Pause {
    /// The namespace's path for a container to join (`/proc/PID/ns/pid`).
    pub fn ns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/pid", self.pid))
    }

    /// Whether the pause still runs (its pid still holds its namespace).
    pub fn alive(&self) -> bool {
        ns_of(self.pid).is_some_and(|ns| ns == self.ns)
    }

    /// Kills the pause, and with it every process left in its namespace. Sent through a
    /// pidfd opened while the pid was checked to be the pause: never to a process that
    /// reused the pid.
    pub fn kill(&self) {
        kill_checked(self.pid, || self.alive());
    }
}

/// SIGKILL to `pid` through a pidfd, when `still_it` (asked after the pidfd is open, so
/// about the very process the pidfd holds) says the pid is still the process meant.
pub fn kill_checked(pid: i32, still_it: impl Fn() -> bool) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let Ok(fd) = i32::try_from(fd) else { return };
    if fd < 0 {
        return;
    }
    // SAFETY: the descriptor was just returned by pidfd_open and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if still_it() {
        // SAFETY: pidfd_send_signal on a pidfd this function owns, no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
    }
}

fn ns_of(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok().map(|p| p.to_string_lossy().into_owned())
}

/// Starts a pause through `tug-supervisor` (installed beside `shim`), in `join_cgroup` when
/// given.
pub fn start(shim: &Path, label: &str, join_cgroup: Option<&Path>) -> Result<Pause, String> {
    let program = shim.with_file_name("tug-supervisor");
    let mut cmd = std::process::Command::new(&program);
    cmd.args(["pause", label])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    if let Some(c) = join_cgroup {
        cmd.arg(c);
    }
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", program.display()))?;
    let mut answer = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut answer);
    }
    let _ = child.wait();
    let pid: i32 = match answer.trim().split_once(' ') {
        Some(("ok", pid)) => pid.parse().map_err(|_| format!("the pause said {answer:?}"))?,
        Some(("error", msg)) => return Err(format!("starting the pod's pause process: {msg}")),
        _ => return Err("the pod's pause process exited before it was ready".into()),
    };
    let ns = ns_of(pid).ok_or_else(|| format!("the pod's pause process {pid} is gone"))?;
    Ok(Pause { pid, ns })
}

fn fail(msg: &str) -> ! {
    println!("error {msg}");
    std::process::exit(1)
}

/// `tug-supervisor pause LABEL [CGROUP-PROCS]`: never returns.
pub fn serve(join_cgroup: Option<&str>) -> ! {
    if let Some(procs) = join_cgroup.filter(|p| !p.is_empty())
        && let Err(e) = std::fs::write(procs, "0")
    {
        fail(&format!("joining {procs}: {e}"));
    }
    let _ = nix::unistd::setsid();
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
        fail(&format!("unshare pid: {e}"));
    }
    // SAFETY: single-threaded; the parent only prints and exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {}
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "ok {child}");
            let _ = out.flush();
            // SAFETY: _exit ends the first process without running anything more of it.
            unsafe { libc::_exit(0) }
        }
        Err(e) => fail(&format!("fork: {e}")),
    }
    // PID 1 of the new namespace.
    let _ = nix::unistd::chdir("/");
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: dup2 onto a standard descriptor number this process owns.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    // SAFETY: closes every descriptor from 3 up, inherited from the caller.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let mut mask = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    let _ = mask.thread_block();
    loop {
        match mask.wait() {
            Ok(Signal::SIGCHLD) => {
                while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if s == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(Signal::SIGTERM | Signal::SIGINT) => std::process::exit(0),
            _ => {}
        }
    }
}
