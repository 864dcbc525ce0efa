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
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": crate::mounts::KNOWN_OPTIONS.as_slice(),
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps,
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": {
                "enabled": true,
                "actions": [
                    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"
                ],
                "operators": [
                    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"
                ],
                "archs": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM", "SCMP_ARCH_X32", "SCMP_ARCH_X86", "SCMP_ARCH_X86_64"],
                "knownFlags": [
                    "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"
                ],
                "supportedFlags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
            },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
            "intelRdt": { "enabled": false },
            "mountExtensions": { "idmap": { "enabled": false } },
            "netDevices": { "enabled": false }
        },
        "annotations": { "io.github.tug.runtime": "tug-shim" }
    })
}
