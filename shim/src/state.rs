//! The state directory: `<root>/<id>/state.json` (what `create` learned) and
//! `<root>/<id>/exec.fifo` (present while the container waits for `start`).
//!
//! The status is never stored: it is derived each time from the fifo and the init process
//! (identified by pid *and* start time, so a recycled pid is not mistaken for it).

use crate::cgroups::Cgroup;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The OCI spec version this runtime implements.
pub const OCI_VERSION: &str = "1.2.0";

/// What went wrong reading or writing a container's state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container \"{0}\" does not exist")]
    NotFound(String),
    #[error("container with id exists: {0}")]
    Exists(String),
    #[error("invalid container id {0:?}: use letters, digits, '_', '-', '.' and no leading '.'")]
    BadId(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: corrupt state: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

/// created, running or stopped, as the OCI spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// What is kept about a container between commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub pid: i32,
    /// The init's start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub annotations: HashMap<String, String>,
    pub cgroup: Cgroup,
    pub owner: String,
    /// The hooks `start` and `delete` run, recorded at `create` (the bundle may change or go,
    /// and they need not parse the spec again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststart: Vec<crate::hooks::Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststop: Vec<crate::hooks::Hook>,
}

/// A container's directory under the runtime's root.
#[derive(Debug, Clone)]
pub struct Dir {
    pub path: PathBuf,
    pub id: String,
}

impl Dir {
    /// The directory for `id` (not created).
    pub fn new(root: &Path, id: &str) -> Result<Dir, StateError> {
        let ok = !id.is_empty()
            && !id.starts_with('.')
            && id.len() <= 1024
            && id.chars().all(|c| c.is_ascii_alphanumeric() || "_-.+".contains(c));
        if !ok {
            return Err(StateError::BadId(id.to_string()));
        }
        Ok(Dir { path: root.join(id), id: id.to_string() })
    }

    /// Makes the directory; fails if a container with this id exists.
    pub fn create(&self) -> Result<(), StateError> {
        if let Some(root) = self.path.parent() {
            std::fs::create_dir_all(root).map_err(|source| StateError::Io { path: root.into(), source })?;
        }
        match std::fs::create_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(self.id.clone()))
            }
            Err(source) => Err(StateError::Io { path: self.path.clone(), source }),
        }
    }

    pub fn fifo(&self) -> PathBuf {
        self.path.join("exec.fifo")
    }

    fn file(&self) -> PathBuf {
        self.path.join("state.json")
    }

    /// Writes the state atomically (temporary file, fsync, rename).
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let tmp = self.path.join(".state.json.tmp");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|source| StateError::Corrupt { path: tmp.clone(), source })?;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        std::io::Write::write_all(&mut f, &bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, self.file()).map_err(io(&self.file()))
    }

    /// Reads the state; a missing directory or file means the container does not exist.
    pub fn load(&self) -> Result<State, StateError> {
        let path = self.file();
        let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => StateError::NotFound(self.id.clone()),
            _ => StateError::Io { path: path.clone(), source },
        })?;
        serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Removes the directory and everything in it.
    pub fn remove(&self) -> Result<(), StateError> {
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateError::Io { path: self.path.clone(), source: e })
            }
            _ => Ok(()),
        }
    }

    /// The container's status now.
    pub fn status(&self, state: &State) -> Status {
        if !init_alive(state.pid, state.start_time) {
            Status::Stopped
        } else if self.fifo().exists() {
            Status::Created
        } else {
            Status::Running
        }
    }
}

/// The OCI state document (`tug-shim state`).
pub fn oci_state(state: &State, status: Status) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": OCI_VERSION,
        "id": state.id,
        "status": status,
        "pid": if status == Status::Stopped { 0 } else { state.pid },
        "bundle": state.bundle,
        "rootfs": state.rootfs,
        "created": state.created,
        "owner": state.owner,
        "annotations": state.annotations,
    })
}

/// `/proc/PID/stat`: (state letter, start time).
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses the fields after the command name, which may itself contain spaces and parens.
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    let (_, rest) = text.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 overall is index 19 after the state (field 3).
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether the init with this pid and start time still runs (a zombie does not count).
pub fn init_alive(pid: i32, start_time: u64) -> bool {
    matches!(proc_stat(pid), Some((s, t)) if t == start_time && s != 'Z' && s != 'X')
}

/// Lists the ids under the root.
pub fn list_ids(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("state.json").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        let root = Path::new("/r");
        assert!(Dir::new(root, "web-1.a_b").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "sp ace"] {
            assert!(matches!(Dir::new(root, bad), Err(StateError::BadId(_))), "{bad:?}");
        }
    }

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_stat(line), Some(('S', 98765)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn save_load_and_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::new(tmp.path(), "c1").unwrap();
        assert!(matches!(dir.load(), Err(StateError::NotFound(_))));
        dir.create().unwrap();
        assert_eq!(dir.create().unwrap_err().to_string(), "container with id exists: c1");
        let st = State {
            id: "c1".into(),
            pid: std::process::id().try_into().unwrap(),
            start_time: proc_stat(std::process::id().try_into().unwrap()).unwrap().1,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "2026-01-01T00:00:00Z".into(),
            annotations: HashMap::new(),
            cgroup: Cgroup { dirs: vec![], unified_resources: false, made_parents: vec![] },
            owner: "root".into(),
            poststart: vec![],
            poststop: vec![],
        };
        dir.save(&st).unwrap();
        assert_eq!(dir.status(&dir.load().unwrap()), Status::Running, "this test process is alive");
        std::fs::write(dir.fifo(), "").unwrap();
        assert_eq!(dir.status(&st), Status::Created);
        let gone = State { start_time: st.start_time + 1, ..st };
        assert_eq!(dir.status(&gone), Status::Stopped, "a recycled pid is not the init");
        assert_eq!(list_ids(tmp.path()), vec!["c1".to_string()]);
        dir.remove().unwrap();
        assert!(list_ids(tmp.path()).is_empty());
    }
}
