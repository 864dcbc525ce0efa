//! `state`, `list`, `ps` and `features`: read-only views.

use super::{Runtime, RuntimeError};
use crate::state::{self, State, Status};
use serde_json::{Value, json};

impl Runtime {
    /// The OCI state document.
    pub fn state(&self, id: &str) -> Result<Value, RuntimeError> {
        let (_, st, status) = self.load(id)?;
        Ok(state::oci_state(&st, status))
    }

    /// Every container under the root with its status; unreadable entries are skipped.
    pub fn list(&self) -> Vec<(State, Status)> {
        state::list_ids(&self.root)
            .into_iter()
            .filter_map(|id| self.load(&id).ok())
            .map(|(_, s, st)| (s, st))
            .collect()
    }

    /// The pids in the container's cgroup.
    pub fn ps(&self, id: &str) -> Result<Vec<i32>, RuntimeError> {
        let (_, st, _) = self.load(id)?;
        Ok(st.cgroup.pids())
    }
}

/// What this runtime supports, in the shape of the OCI `features` document.
pub fn features() -> Value {
    let caps: Vec<String> = caps::all()
        .iter()
        .map(|c| c.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": state::OCI_VERSION,
        "hooks": [],
        "mountOptions": [
            "async", "atime", "bind", "dev", "diratime", "dirsync", "exec", "mand", "noatime", "nodev",
            "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime", "nosuid", "private", "rbind",
            "relatime", "remount", "ro", "rprivate", "rshared", "rslave", "runbindable", "rw", "shared",
            "slave", "strictatime", "suid", "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "uts"],
            "capabilities": caps,
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": { "enabled": false },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
            "intelRdt": { "enabled": false }
        },
        "annotations": { "io.github.tug.runtime": "tug-shim" }
    })
}
