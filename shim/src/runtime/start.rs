//! `start`: release a created container's init into the user's program.

use super::{Runtime, RuntimeError};
use crate::state::{Status, init_alive};
use nix::fcntl::{OFlag, open};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::Mode;
use std::os::fd::AsFd;

impl Runtime {
    /// Opens the exec fifo for reading, which lets the init's blocked open return; the init
    /// writes one byte and execs. Fails if the init dies first.
    pub fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let (dir, state, status) = self.load(id)?;
        match status {
            Status::Created => {}
            Status::Running => {
                return Err(RuntimeError::Usage("cannot start an already running container".into()));
            }
            Status::Stopped => {
                return Err(RuntimeError::Usage("cannot start a container that has stopped".into()));
            }
        }
        let fifo = open(&dir.fifo(), OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(RuntimeError::sys("open exec.fifo"))?;
        loop {
            let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
            let ready =
                poll(&mut fds, PollTimeout::from(50u16)).map_err(RuntimeError::sys("poll exec.fifo"))?;
            if ready > 0 {
                let mut byte = [0u8; 1];
                if nix::unistd::read(&fifo, &mut byte).unwrap_or(0) == 1 {
                    break;
                }
            }
            if !init_alive(state.pid, state.start_time) {
                let _ = std::fs::remove_file(dir.fifo());
                return Err(RuntimeError::Usage("container init exited before it could start".into()));
            }
        }
        std::fs::remove_file(dir.fifo()).map_err(RuntimeError::io("removing exec.fifo"))?;
        // Poststart hooks, whose failures are only warnings, once the user's program runs:
        // the init execs right after the byte, and its executable stops being ours.
        if !state.poststart.is_empty() {
            use std::os::unix::fs::MetadataExt;
            let ours = std::fs::metadata("/proc/self/exe").map(|m| (m.dev(), m.ino())).ok();
            let exe = format!("/proc/{}/exe", state.pid);
            super::wait_until(std::time::Duration::from_secs(10), || {
                std::fs::metadata(&exe).map(|m| (m.dev(), m.ino())).ok() != ours
            });
            let doc = crate::state::oci_state(&state, Status::Running).to_string();
            crate::hooks::run_each_warning("poststart", &state.poststart, &doc);
        }
        Ok(())
    }
}
