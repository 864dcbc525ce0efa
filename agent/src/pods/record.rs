//! What the agent remembers about each pod on disk (`<state>/pods/<uid>/record.json`), so a
//! restarted agent knows which containers are its own and finishes what it was doing.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub netns: Option<PathBuf>,
    #[serde(default)]
    pub start_time: Option<String>,
    /// Seconds the pod gets between SIGTERM and SIGKILL (from its last known spec).
    #[serde(default)]
    pub grace_seconds: Option<i64>,
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerRecord>,
    /// Evicted for node pressure, with kubelet's message: nothing starts again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted: Option<String>,
    /// A resize that cannot be applied now: `Infeasible` or `Deferred`, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_pending: Option<(String, String)>,
    /// The pause process holding the PID namespace the containers share
    /// (`shareProcessNamespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<tug_shim::supervisor::pause::Pause>,
    #[serde(skip)]
    pub(crate) written: Written,
}

/// A record's bytes as last written (or read): an unchanged record is not written again.
/// Not part of the record: any two are equal.
#[derive(Clone, Default)]
pub(crate) struct Written(Option<Vec<u8>>);

impl PartialEq for Written {
    fn eq(&self, _: &Written) -> bool {
        true
    }
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub init: bool,
    /// Starts so far (the next container's id and log file take the next number).
    pub attempt: u32,
    /// The current (or last) container's id: its supervisor's name.
    #[serde(default)]
    pub id: Option<String>,
    pub image: String,
    #[serde(default)]
    pub image_id: String,
    pub restart_count: u32,
    pub state: State,
    #[serde(default)]
    pub last: Option<Terminated>,
    /// Unix milliseconds before which the container is not started again.
    #[serde(default)]
    pub backoff_until: Option<u64>,
    /// Which step of the back-off the next failure takes.
    #[serde(default)]
    pub backoff_step: u32,
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// The requests and limits the running container has (its cgroup's): what it started
    /// with, then each in-place resize applied. `None` from before this was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<tug_api::kinds::pod::ResourceRequirements>,
    /// What the probes say now, `(started, ready)`; None for a container without probes.
    /// Not kept on disk: a restarted agent probes again.
    #[serde(skip)]
    pub probed: Option<(bool, bool)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum State {
    /// Not started yet.
    #[default]
    New,
    /// `tug-shim supervise` was asked to start it (a restarted agent looks for its
    /// supervisor).
    Starting,
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: String,
    },
    Terminated(Terminated),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Terminated {
    pub exit_code: i32,
    #[serde(default)]
    pub signal: Option<i32>,
    pub reason: String,
    pub started_at: String,
    pub finished_at: String,
}

impl PodRecord {
    pub fn path(pods_dir: &Path, uid: &str) -> PathBuf {
        pods_dir.join(uid).join("record.json")
    }

    /// Writes the record atomically (a temporary file renamed over the old one).
    /// Nothing happens when the record is as last written: every sync of a pod saves it, and
    /// on a busy node file creation is the agent's largest cost.
    pub fn save(&mut self, pods_dir: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        if self.written.0.as_ref() == Some(&bytes) {
            return Ok(());
        }
        let dir = pods_dir.join(&self.uid);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tmp = dir.join(".record.json.tmp");
        std::fs::write(&tmp, &bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join("record.json")).map_err(|e| format!("{}: {e}", dir.display()))?;
        self.written.0 = Some(bytes);
        Ok(())
    }

    /// The record of pod `uid`, if there is one.
    pub fn load(pods_dir: &Path, uid: &str) -> Option<PodRecord> {
        let bytes = std::fs::read(Self::path(pods_dir, uid)).ok()?;
        let mut rec: PodRecord = serde_json::from_slice(&bytes).ok()?;
        rec.written.0 = Some(bytes);
        Some(rec)
    }

    pub fn load_all(pods_dir: &Path) -> Vec<PodRecord> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(pods_dir).into_iter().flatten().flatten() {
            if let Ok(b) = std::fs::read(e.path().join("record.json"))
                && let Ok(r) = serde_json::from_slice::<PodRecord>(&b)
            {
                out.push(r);
            }
        }
        out
    }
}
