//! A fork-like `clone3` straight into a cgroup.
//!
//! Moving a process into a cgroup by writing its pid to `cgroup.procs` takes the kernel's
//! global threadgroup lock, whose write side waits out an RCU grace period: 5–17 ms on these
//! machines, most of a container's start. A child born in its cgroup (`CLONE_INTO_CGROUP`,
//! Linux 5.7, unified hierarchy only) pays nothing; see also `Cgroup::join_v1`.

use std::os::fd::{AsRawFd, BorrowedFd};

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` as of Linux 5.7 (`CLONE_ARGS_SIZE_VER2`, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Like `fork`, with `flags` (`CLONE_NEW*`, `CLONE_PARENT`; SIGCHLD is added) and, when
/// `into` is given, into that unified cgroup directory. Returns 0 in the child; in the
/// parent, the child's pid and whether it was born in `into` — not where `clone3` is missing
/// or filtered out (ENOSYS, as some container runtimes' seccomp profiles answer): then it is
/// a plain `clone`, and the caller moves the child.
///
/// The caller must be single-threaded: the child is a copy of this thread alone.
pub fn fork_into(flags: u64, into: Option<BorrowedFd<'_>>) -> Result<(i32, bool), nix::Error> {
    let sigchld = u64::try_from(libc::SIGCHLD).unwrap_or(0);
    let parent = u64::try_from(libc::CLONE_PARENT).unwrap_or(0);
    if let Some(fd) = into {
        let args = CloneArgs {
            flags: flags | CLONE_INTO_CGROUP,
            // A CLONE_PARENT child takes the caller's own exit signal (clone3 refuses one).
            exit_signal: if flags & parent == 0 { sigchld } else { 0 },
            cgroup: u64::try_from(fd.as_raw_fd()).map_err(|_| nix::Error::EBADF)?,
            ..CloneArgs::default()
        };
        // SAFETY: a fork-like clone3 (no CLONE_VM, no new stack): the child continues from
        // here on a copy of this single-threaded process, as after fork(). The kernel reads
        // `args`, whose size is given, during the call only.
        let rc = unsafe {
            libc::syscall(libc::SYS_clone3, std::ptr::from_ref(&args), std::mem::size_of::<CloneArgs>())
        };
        if rc >= 0 {
            return Ok((pid(rc)?, true));
        }
        let errno = nix::Error::last();
        if !matches!(errno, nix::Error::ENOSYS | nix::Error::E2BIG) {
            return Err(errno);
        }
    }
    // SAFETY: as above, with clone's argument order (no stack, no tids, no tls).
    let rc = unsafe { libc::syscall(libc::SYS_clone, flags | sigchld, 0usize, 0usize, 0usize, 0usize) };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    Ok((pid(rc)?, false))
}

fn pid(rc: libc::c_long) -> Result<i32, nix::Error> {
    i32::try_from(rc).map_err(|_| nix::Error::EOVERFLOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The struct is the kernel's CLONE_ARGS_SIZE_VER2.
    #[test]
    fn clone_args_have_the_kernels_size() {
        assert_eq!(std::mem::size_of::<CloneArgs>(), 88);
    }
}
