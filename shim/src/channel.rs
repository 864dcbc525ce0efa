//! The typed channel between `tug-shim create` (the parent) and the container's first
//! process (the init), over a `SOCK_SEQPACKET` socket pair: one message per packet, one serde
//! enum per direction.
//!
//! ```text
//!   parent (create)                         init (pid 1 in the container)
//!   ───────────────                         ─────────────────────────────
//!   makes the cgroup, writes limits
//!   clone3(new namespaces, into the
//!     unified cgroup) ──────────────────►   waits for CgroupReady
//!   (user namespace: maps; adds the
//!     init's pid to the v1 cgroups)
//!   send CgroupReady { state } ─────────►   joins the v1 cgroups itself (no user
//!                                           namespace), joins namespaces, mounts
//!                         (only with hooks: ◄── send Mounted
//!    prestart, createRuntime hooks run;
//!    send HooksDone ────────────────────►   createContainer hooks run)
//!                                           pivot_root, hostname, sysctls, rlimits,
//!                                           user, caps, finds the executable
//!   waits ◄──────────────────────────────   send Ready  (or Failed { step, message })
//!   writes state.json, exits                blocks opening exec.fifo for writing
//!
//!   tug-shim start: opens exec.fifo ────►   open returns; writes one byte; execve
//! ```
//!
//! If the init dies before Ready, the parent reads end-of-file and reports the init's exit.

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, send, socketpair};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd};

/// Parent → init.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ToInit {
    /// The init is in its cgroup with its limits written (and its ids mapped); it may go
    /// on. `state` is the OCI state for the hooks the init runs, when it has any.
    CgroupReady { state: Option<String> },
    /// The runtime's create-time hooks ran.
    HooksDone,
}

/// Init → parent.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum FromInit {
    /// The mounts are made (before pivot_root): the runtime's create-time hooks may run.
    Mounted,
    /// The container is set up and waits for `start`.
    Ready,
    /// A step failed; the init exits after sending this.
    Failed { step: String, message: String },
}

/// What went wrong on the channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("sync socket: {0}")]
    Io(#[from] nix::Error),
    #[error("sync socket: bad message: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("the container's init exited before reporting")]
    Closed,
}

/// One end of the socket pair.
pub struct Channel {
    fd: OwnedFd,
}

/// Makes the pair: `(parent end, init end)`. Both are close-on-exec, so neither leaks into the
/// container's process.
pub fn pair() -> Result<(Channel, Channel), ChannelError> {
    let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    fn send<T: Serialize>(&self, msg: &T) -> Result<(), ChannelError> {
        let bytes = serde_json::to_vec(msg)?;
        send(self.fd.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL)?;
        Ok(())
    }

    fn recv<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ChannelError> {
        // Room for the largest message, never zeroed: a message is a few hundred bytes, and
        // only the pages it lands in are touched (each process of a start receives several).
        const MAX: usize = 64 * 1024;
        let mut buf: Vec<u8> = Vec::with_capacity(MAX);
        let n = loop {
            // SAFETY: recv writes at most MAX bytes into the vector's spare capacity, which
            // is MAX bytes long; nothing reads them before set_len below counts them in.
            let r = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), MAX, 0) };
            match usize::try_from(r) {
                Ok(n) => break n,
                Err(_) => match nix::Error::last() {
                    nix::Error::EINTR => {}
                    e => return Err(e.into()),
                },
            }
        };
        if n == 0 {
            return Err(ChannelError::Closed);
        }
        // SAFETY: the kernel wrote the first n bytes (n <= MAX).
        unsafe { buf.set_len(n) };
        Ok(serde_json::from_slice(&buf)?)
    }

    /// Parent: tell the init its cgroup is ready.
    pub fn send_cgroup_ready(&self, state: Option<String>) -> Result<(), ChannelError> {
        self.send(&ToInit::CgroupReady { state })
    }

    /// Init: wait for the parent's go-ahead; returns the state for the init's hooks.
    pub fn wait_cgroup_ready(&self) -> Result<Option<String>, ChannelError> {
        match self.recv::<ToInit>()? {
            ToInit::CgroupReady { state } => Ok(state),
            ToInit::HooksDone => Err(ChannelError::Closed),
        }
    }

    /// Init: the mounts are made; wait until the runtime's hooks ran.
    pub fn mounted_then_wait_hooks(&self) -> Result<(), ChannelError> {
        self.send(&FromInit::Mounted)?;
        match self.recv::<ToInit>()? {
            ToInit::HooksDone => Ok(()),
            ToInit::CgroupReady { .. } => Err(ChannelError::Closed),
        }
    }

    /// Parent: the create-time hooks ran.
    pub fn send_hooks_done(&self) -> Result<(), ChannelError> {
        self.send(&ToInit::HooksDone)
    }

    /// Init: report that setup is complete.
    pub fn send_ready(&self) -> Result<(), ChannelError> {
        self.send(&FromInit::Ready)
    }

    /// Init: report the step that failed.
    pub fn send_failed(&self, step: &str, message: &str) -> Result<(), ChannelError> {
        self.send(&FromInit::Failed { step: step.into(), message: message.into() })
    }

    /// Parent: wait for the init's report.
    pub fn wait_report(&self) -> Result<FromInit, ChannelError> {
        self.recv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_the_pair_and_eof_is_closed() {
        let (parent, init) = pair().unwrap();
        parent.send_cgroup_ready(Some("{}".into())).unwrap();
        assert_eq!(init.wait_cgroup_ready().unwrap().as_deref(), Some("{}"));
        init.send_failed("mounts", "mount proc on /proc: EPERM").unwrap();
        assert_eq!(
            parent.wait_report().unwrap(),
            FromInit::Failed { step: "mounts".into(), message: "mount proc on /proc: EPERM".into() }
        );
        drop(init);
        assert!(matches!(parent.wait_report(), Err(ChannelError::Closed)));
    }
}
