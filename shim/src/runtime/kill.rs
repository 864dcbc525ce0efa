//! `kill`: send a signal to the container's init (or, with `--all`, to every process in it);
//! `update`: change its cgroup limits in place; `pause` and `resume`: freeze and thaw it.

use super::{Runtime, RuntimeError};
use crate::state::Status;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::str::FromStr;

impl Runtime {
    /// Signals the container. A stopped container is an error, as with runc.
    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<(), RuntimeError> {
        let (_, state, status) = self.load(id)?;
        if status == Status::Stopped {
            return Err(RuntimeError::Usage("container not running".into()));
        }
        if all && signal == Signal::SIGKILL {
            state.cgroup.kill_all();
            return Ok(());
        }
        if all {
            for pid in state.cgroup.pids() {
                let _ = kill(Pid::from_raw(pid), signal);
            }
            return Ok(());
        }
        kill(Pid::from_raw(state.pid), signal).map_err(RuntimeError::sys(format!("kill {}", state.pid)))
    }

    /// `pause`: freezes every process of a running container (runc's `pause`).
    pub fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        let (_, state, status) = self.load(id)?;
        if status != Status::Running {
            return Err(RuntimeError::Usage(format!("container {id} is not running: {status}")));
        }
        Ok(state.cgroup.freeze(true)?)
    }

    /// `resume`: thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        let (_, state, status) = self.load(id)?;
        if status == Status::Stopped || !state.cgroup.frozen() {
            return Err(RuntimeError::Usage(format!("container {id} is not paused")));
        }
        Ok(state.cgroup.freeze(false)?)
    }
}

impl Runtime {
    /// Writes new cgroup limits for a created or running container (`update`).
    pub fn update(&self, id: &str, res: &oci_spec::runtime::LinuxResources) -> Result<(), RuntimeError> {
        let (_, state, status) = self.load(id)?;
        if status == Status::Stopped {
            return Err(RuntimeError::Usage("container not running".into()));
        }
        let writes = crate::cgroups::resources::writes(res, state.cgroup.unified_resources)?;
        Ok(state.cgroup.apply(&writes)?)
    }
}

/// `KILL`, `SIGKILL`, `kill` and `9` all name SIGKILL.
pub fn parse_signal(s: &str) -> Result<Signal, RuntimeError> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| RuntimeError::Usage(format!("invalid signal {s:?}")));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    Signal::from_str(&name).map_err(|_| RuntimeError::Usage(format!("invalid signal {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        for s in ["KILL", "SIGKILL", "kill", "9"] {
            assert_eq!(parse_signal(s).unwrap(), Signal::SIGKILL, "{s}");
        }
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("BOGUS").unwrap_err().to_string(), "invalid signal \"BOGUS\"");
        assert!(parse_signal("999").is_err());
    }
}
