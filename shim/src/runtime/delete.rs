//! `delete`: remove a container's cgroup and state (`--force` kills a running one first).

use super::{Runtime, RuntimeError, wait_until};
use crate::state::{Status, init_alive};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::time::Duration;

impl Runtime {
    /// Deletes the container. A created container is killed (it never ran user code); a
    /// running one needs `force`.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let (dir, state, status) = match self.load(id) {
            // Nothing to delete is what --force asks for (runc exits 0; scripts rely on it).
            Err(RuntimeError::State(crate::state::StateError::NotFound(_))) if force => return Ok(()),
            r => r?,
        };
        if status == Status::Running && !force {
            return Err(RuntimeError::Usage(format!(
                "cannot delete container {id} that is not stopped: running"
            )));
        }
        if status != Status::Stopped {
            let _ = kill(Pid::from_raw(state.pid), Signal::SIGKILL);
            state.cgroup.kill_all();
            if !wait_until(Duration::from_secs(10), || !init_alive(state.pid, state.start_time)) {
                return Err(RuntimeError::Usage(format!(
                    "container {id}: init {} did not exit after SIGKILL",
                    state.pid
                )));
            }
        }
        // A stopped container whose init shared a PID namespace (a pod's) may have left
        // processes behind: nothing else would end them. runc kills them too.
        if status == Status::Stopped && !state.cgroup.pids().is_empty() {
            state.cgroup.kill_all();
        }
        // Exited processes leave the cgroup once reaped, which may lag a little behind.
        let mut last = Ok(());
        wait_until(Duration::from_secs(10), || {
            last = state.cgroup.remove();
            last.is_ok()
        });
        last?;
        dir.remove()?;
        // Everything is gone: poststop hooks, whose failures are only warnings.
        if !state.poststop.is_empty() {
            let doc = crate::state::oci_state(&state, Status::Stopped).to_string();
            crate::hooks::run_each_warning("poststop", &state.poststop, &doc);
        }
        Ok(())
    }
}
