//! Where the agent and its pods sit in the cgroup tree.
//!
//! On a pure cgroup v2 host a cgroup with processes cannot hand controllers to children (the
//! "no internal processes" rule). Under systemd with `Delegate=yes` the agent starts in its
//! service's cgroup, so it first moves itself (and so every supervisor it starts) into the
//! leaf `<service>/tug-agent`, and pods go to `<service>/<cgroup-parent>/pod<uid>/<container>`
//! beside it, with controllers enabled from `<service>` down. Hybrid and v1 hosts have no
//! such rule: pods go under the agent's own cgroup, by a relative path.

use std::path::{Path, PathBuf};

/// The leaf the agent keeps itself in on a pure v2 host.
pub const AGENT_LEAF: &str = "tug-agent";

/// The cgroup of the containers' supervisors on a pure v2 host: beside the agent's leaf,
/// never the agent's own, so that restarting or upgrading the agent — or its unit's
/// accounting, limits and OOM kills — never touches them. (On hybrid and v1 hosts they stay
/// in the agent's cgroup: the runtime resolves pods' relative cgroup paths from its own.)
pub const SUPERVISORS: &str = "tug-supervisors";

/// The v2 path in `/proc/self/cgroup` text when that is the only hierarchy.
pub fn pure_v2_path(proc_cgroup: &str) -> Option<PathBuf> {
    let lines: Vec<&str> = proc_cgroup.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.as_slice() {
        [only] => only.strip_prefix("0::").map(PathBuf::from),
        _ => None,
    }
}

/// The cgroup that owns the agent: its own, or the parent of its leaf after a restart in place.
pub fn base(own: &Path) -> PathBuf {
    if own.file_name().is_some_and(|n| n == AGENT_LEAF) {
        own.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"))
    } else {
        own.to_path_buf()
    }
}

/// On a pure v2 host: the cgroup that owns the agent ([`base`]) and its directory.
fn pure_v2_base() -> Result<Option<(PathBuf, PathBuf)>, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let Some(own) = pure_v2_path(&text) else { return Ok(None) };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let layout = tug_shim::cgroups::layout::Layout::parse(&mountinfo, &text);
    let Some(h) = layout.hierarchies.first() else { return Ok(None) };
    let base = base(&own);
    let rel = base.strip_prefix("/").unwrap_or(&base);
    let mount_rel = h.mount_root.strip_prefix("/").unwrap_or(&h.mount_root);
    let dir = h.mount_point.join(rel.strip_prefix(mount_rel).unwrap_or(rel));
    Ok(Some((base, dir)))
}

/// Places the agent (see the module doc) and returns the parent path for pod cgroups:
/// absolute on a pure v2 host, `parent` relative to the agent's cgroup elsewhere.
pub fn place_self(parent: &str) -> Result<String, String> {
    let Some((base, dir)) = pure_v2_base()? else { return Ok(parent.to_string()) };
    let leaf = dir.join(AGENT_LEAF);
    std::fs::create_dir_all(&leaf).map_err(|e| format!("cgroup {}: {e}", leaf.display()))?;
    std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| format!("moving the agent into {}: {e}", leaf.display()))?;
    Ok(format!("{}/{parent}", base.display()).replace("//", "/"))
}

/// Makes the supervisors' cgroup on a pure v2 host and returns its `cgroup.procs` (checked
/// writable): a supervisor writes `0` to it before it runs the shim, so it and everything it
/// starts leave the agent's cgroup. None elsewhere, or when that fails (reported).
pub fn supervisors() -> Option<PathBuf> {
    let (_, dir) = pure_v2_base().ok()??;
    let dir = dir.join(SUPERVISORS);
    let procs = dir.join("cgroup.procs");
    let file =
        std::fs::create_dir_all(&dir).and_then(|()| std::fs::OpenOptions::new().write(true).open(&procs));
    match file {
        Ok(_) => Some(procs),
        Err(e) => {
            tracing::warn!(
                "tug-agent: cgroup {}: {e}; supervisors stay in the agent's cgroup",
                dir.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_pure_v2_and_the_base() {
        assert_eq!(
            pure_v2_path("0::/system.slice/tug-agent.service\n"),
            Some(PathBuf::from("/system.slice/tug-agent.service"))
        );
        assert_eq!(pure_v2_path("12:memory:/\n0::/\n"), None);
        assert_eq!(
            base(Path::new("/system.slice/tug-agent.service/tug-agent")),
            Path::new("/system.slice/tug-agent.service")
        );
        assert_eq!(
            base(Path::new("/system.slice/tug-agent.service")),
            Path::new("/system.slice/tug-agent.service")
        );
        assert_eq!(base(Path::new("/tug-agent")), Path::new("/"));
    }
}
