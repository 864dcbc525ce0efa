//! The runtime's commands, one file per verb, over a state root directory.

mod clone;
mod create;
mod delete;
mod exec;
mod kill;
mod query;
mod run;
mod start;

pub use create::{CreateOptions, Created, connect_console};
pub use exec::{ExecOverrides, exec_process, wait_exit};
pub use kill::parse_signal;
pub use query::features;

use crate::state::{Dir, State, StateError, Status};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Why a command failed; the message is what the user sees after `tug-shim: `.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Spec(#[from] crate::plan::SpecError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error("{0}")]
    Resources(#[from] crate::cgroups::resources::ResourceError),
    #[error("container init failed at {step}: {message}")]
    Init { step: String, message: String },
    #[error("{}", if step == "exec" { message.clone() } else { format!("exec failed at {step}: {message}") })]
    Exec { step: String, message: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {errno}")]
    Sys { what: String, errno: nix::Error },
    #[error("{0}")]
    Usage(String),
}

impl RuntimeError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let what = what.into();
        move |source| RuntimeError::Io { what, source }
    }

    pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> RuntimeError {
        let what = what.into();
        move |errno| RuntimeError::Sys { what, errno }
    }
}

/// The runtime, rooted at its state directory (`--root`, default `/run/tug-shim`).
#[derive(Debug, Clone)]
pub struct Runtime {
    pub root: PathBuf,
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime { root: root.into() }
    }

    fn dir(&self, id: &str) -> Result<Dir, RuntimeError> {
        Ok(Dir::new(&self.root, id)?)
    }

    /// Loads a container and its current status.
    pub fn load(&self, id: &str) -> Result<(Dir, State, Status), RuntimeError> {
        let dir = self.dir(id)?;
        let state = dir.load()?;
        let status = dir.status(&state);
        Ok((dir, state, status))
    }
}

/// A line in logrus' text format, runc's on stderr: `time="2026-12-06T12:18:27Z"
/// level=error msg="container does not exist"` (tools grep for its parts).
pub fn logrus_line(level: &str, msg: &str) -> String {
    let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    format!("time=\"{time}\" level={level} msg={msg:?}")
}

/// Polls `done` every few milliseconds until it holds or `limit` passes.
pub(crate) fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
