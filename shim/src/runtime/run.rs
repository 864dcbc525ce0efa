//! `run`: create, start, wait for the container's init, delete; the exit code is the
//! container's (128 + signal when killed by one).

use super::{CreateOptions, Created, Runtime, RuntimeError};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

/// How a container's init ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code as a shell reports it.
    pub code: i32,
    /// Whether the kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

impl Runtime {
    /// Creates and starts the container, and leaves it running (`run --detach`): its init is
    /// re-parented to the caller's subreaper once this process exits.
    pub fn run_detached(&self, id: &str, opts: &CreateOptions) -> Result<Created, RuntimeError> {
        let created = self.create(id, opts)?;
        if let Err(e) = self.start(id) {
            let _ = self.delete(id, true);
            return Err(e);
        }
        Ok(created)
    }

    /// Runs the container to completion. The init is this process's child, so it is reaped
    /// here; the cgroup is read for OOM kills before it is removed.
    pub fn run(&self, id: &str, opts: &CreateOptions) -> Result<Exit, RuntimeError> {
        let created = self.run_detached(id, opts)?;
        let code = loop {
            match waitpid(Pid::from_raw(created.pid), None) {
                Ok(WaitStatus::Exited(_, c)) => break c,
                Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(RuntimeError::Sys { what: "waitpid".into(), errno: e }),
            }
        };
        let (_, state, _) = self.load(id)?;
        let oom_killed = state.cgroup.oom_kills() > 0;
        self.delete(id, true)?;
        Ok(Exit { code, oom_killed })
    }
}
