//! cgroups for one container: find the hierarchies, make the container's directory in each,
//! write its limits, place its first process, read its OOM count, remove it.
//!
//! Everything is filesystem-shaped, so the seam is the paths: [`layout::Layout`] is parsed
//! from `/proc/self/mountinfo` and `/proc/self/cgroup` text (pure), [`resources::writes`] is
//! the pure translation of `linux.resources` into file writes, and [`Cgroup`] applies them
//! under whatever directories the layout names (a temp dir in unit tests).

pub mod layout;
pub mod resources;

use layout::{Hierarchy, Layout, Version};
use resources::Write;
use std::path::{Path, PathBuf};

/// What went wrong while making or changing a container's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("creating cgroup {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("writing {value:?} to {path}: {source}")]
    Write { path: PathBuf, value: String, source: std::io::Error },
    #[error("removing cgroup {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("cgroup controller {0} is not available on this host")]
    MissingController(String),
    #[error("linux.cgroupsPath {0:?} may not contain '..'")]
    BadPath(PathBuf),
    #[error(transparent)]
    Resources(#[from] resources::ResourceError),
    #[error("device filter: {0}")]
    DeviceFilter(String),
}

/// The container's directory in every hierarchy Tug uses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cgroup {
    /// `(controllers, directory)` per hierarchy; controllers empty for the unified one.
    pub dirs: Vec<(Vec<String>, PathBuf)>,
    /// Whether resource limits go to the unified hierarchy (pure v2) or to v1 controllers.
    pub unified_resources: bool,
    /// Parent directories this container's create made, deepest first: removed after its own
    /// directories when nothing else is in them, so neither a delete nor a failed create
    /// leaves an empty parent behind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub made_parents: Vec<PathBuf>,
}

impl Cgroup {
    /// Where a container with this `cgroupsPath` lives in each hierarchy: relative paths under
    /// the runtime's own cgroup (the delegated subtree), absolute ones as given.
    pub fn locate(layout: &Layout, cgroups_path: &Path) -> Result<Cgroup, CgroupError> {
        if cgroups_path.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(CgroupError::BadPath(cgroups_path.to_path_buf()));
        }
        let dirs = layout
            .hierarchies
            .iter()
            .filter(|h| h.version == Version::V2 || !h.controllers.is_empty())
            .map(|h| (h.controllers.clone(), h.container_dir(cgroups_path)))
            .collect();
        Ok(Cgroup { dirs, unified_resources: layout.unified_only(), made_parents: Vec::new() })
    }

    /// Makes every directory (and, for v1 cpuset, fills in the cpus and mems a new cpuset
    /// needs before it can hold a task; for v2, enables the controllers on the way down).
    pub fn create(&self, layout: &Layout) -> Result<(), CgroupError> {
        for (controllers, dir) in &self.dirs {
            create_dir_all(dir)?;
            if controllers.iter().any(|c| c == "cpuset") {
                // Not only the directories made here: a parent another runtime made a moment
                // ago may not have its cpus yet, and a child copied from it would stay empty.
                inherit_cpuset(dir)?;
            }
            if controllers.is_empty() && self.unified_resources {
                enable_controllers(layout, dir)?;
            }
        }
        Ok(())
    }

    /// Writes the container's limits.
    pub fn apply(&self, writes: &[Write]) -> Result<(), CgroupError> {
        for w in writes {
            let dir = self.dir_for(w.controller)?;
            write_file(&dir.join(&w.file), &w.value)?;
        }
        Ok(())
    }

    /// Attaches the device filter compiled from `rules` to the unified hierarchy's directory:
    /// the only enforcement on a pure v2 host, a second line beside v1 `devices` on a hybrid
    /// one. A failure is an error either way, never a silently weaker container.
    pub fn attach_device_filter(&self, rules: &[tug_bpf::DeviceRule]) -> Result<(), CgroupError> {
        let Some((_, dir)) = self.dirs.iter().find(|(c, _)| c.is_empty()) else { return Ok(()) };
        tug_bpf::loader::load_device_filter(&tug_bpf::device_filter(rules))
            .and_then(|fd| tug_bpf::loader::attach_device_filter(&fd, dir))
            .map_err(|e| CgroupError::DeviceFilter(e.to_string()))
    }

    /// Moves a process into the container's cgroup in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        self.add_process_in(pid, true, true)
    }

    /// Moves a process into the container's directory in the v1 hierarchies when `v1`, and
    /// in the unified one when `unified`.
    ///
    /// Each such write takes the kernel's global threadgroup lock, whose write side waits
    /// out an RCU grace period (5–17 ms on these machines): where it can, the runtime avoids
    /// it with [`Cgroup::join_v1`] and `CLONE_INTO_CGROUP`, and uses this for the rest.
    pub fn add_process_in(&self, pid: i32, v1: bool, unified: bool) -> Result<(), CgroupError> {
        for (controllers, dir) in &self.dirs {
            if (controllers.is_empty() && unified) || (!controllers.is_empty() && v1) {
                write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
            }
        }
        Ok(())
    }

    /// The container's directory in the unified (v2) hierarchy, when the host has one.
    pub fn unified_dir(&self) -> Option<&Path> {
        self.dirs.iter().find(|(c, _)| c.is_empty()).map(|(_, d)| d.as_path())
    }

    /// Moves the calling thread into the container's directory in every v1 hierarchy by
    /// writing "0" to `tasks`: a thread that moves itself alone is the one migration the
    /// kernel makes without the global threadgroup lock (0.04 ms here, against 5–17 ms for
    /// a `cgroup.procs` write). The caller must be single-threaded (its other threads would
    /// stay behind) and root in the cgroups' user namespace.
    pub fn join_v1(&self) -> Result<(), CgroupError> {
        for (controllers, dir) in &self.dirs {
            if !controllers.is_empty() {
                write_file(&dir.join("tasks"), "0")?;
            }
        }
        Ok(())
    }

    /// The processes in the container's cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let Some((_, dir)) = self.dirs.first() else { return Vec::new() };
        let text = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// SIGKILLs every process in the cgroup: with one write to `cgroup.kill` where the unified
    /// hierarchy has it (Linux 5.14+, also on hybrid hosts), else one signal per listed pid
    /// (which can miss a process forked meanwhile; the pid namespace's end catches those).
    pub fn kill_all(&self) {
        let unified = self.dirs.iter().find(|(c, _)| c.is_empty()).map(|(_, d)| d.join("cgroup.kill"));
        if let Some(file) = unified.filter(|f| f.exists()) {
            if std::fs::write(&file, "1").is_ok() {
                return;
            }
        }
        for pid in self.pids() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Freezes (or thaws) every process of the cgroup, and returns once the kernel says it is
    /// done: cgroup v2's `cgroup.freeze` where the container has a unified directory (also on
    /// a hybrid host: the core file needs no controller), else the v1 freezer.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let unified = self.dirs.iter().find(|(c, _)| c.is_empty()).map(|(_, d)| d.join("cgroup.freeze"));
        let (file, value, done): (PathBuf, &str, Box<dyn Fn() -> bool>) = match unified.filter(|f| f.exists())
        {
            Some(file) => {
                let events = file.with_file_name("cgroup.events");
                let want = if frozen { "frozen 1" } else { "frozen 0" };
                let done =
                    move || std::fs::read_to_string(&events).is_ok_and(|t| t.lines().any(|l| l == want));
                (file, if frozen { "1" } else { "0" }, Box::new(done))
            }
            None => {
                let dir = self
                    .dirs
                    .iter()
                    .find(|(c, _)| c.iter().any(|c| c == "freezer"))
                    .map(|(_, d)| d.clone())
                    .ok_or_else(|| CgroupError::MissingController("freezer".into()))?;
                let file = dir.join("freezer.state");
                let want = if frozen { "FROZEN" } else { "THAWED" };
                let state = file.clone();
                let done = move || std::fs::read_to_string(&state).is_ok_and(|t| t.trim() == want);
                (file, want, Box::new(done))
            }
        };
        std::fs::write(&file, value).map_err(|source| CgroupError::Write {
            path: file.clone(),
            value: value.into(),
            source,
        })?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            if std::time::Instant::now() > deadline {
                return Err(CgroupError::Write {
                    path: file,
                    value: value.into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the kernel did not finish in 10 s",
                    ),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }

    /// Whether the cgroup is frozen now.
    pub fn frozen(&self) -> bool {
        if let Some((_, d)) = self.dirs.iter().find(|(c, _)| c.is_empty()) {
            if let Ok(t) = std::fs::read_to_string(d.join("cgroup.events")) {
                return t.lines().any(|l| l == "frozen 1");
            }
        }
        self.dirs
            .iter()
            .find(|(c, _)| c.iter().any(|c| c == "freezer"))
            .and_then(|(_, d)| std::fs::read_to_string(d.join("freezer.state")).ok())
            .is_some_and(|t| t.trim() == "FROZEN")
    }

    /// How many times the kernel's OOM killer killed a process in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, dir) = if self.unified_resources {
            ("memory.events", self.dirs.iter().find(|(c, _)| c.is_empty()).map(|(_, d)| d))
        } else {
            (
                "memory.oom_control",
                self.dirs.iter().find(|(c, _)| c.iter().any(|c| c == "memory")).map(|(_, d)| d),
            )
        };
        let text = dir.and_then(|d| std::fs::read_to_string(d.join(file)).ok()).unwrap_or_default();
        resources::oom_kill_count(&text)
    }

    /// CPU, memory and pid figures, from v2's unified files or v1's controllers.
    pub fn stats(&self) -> crate::supervisor::protocol::Stats {
        let read = |ctrl: &str, file: &str| -> Option<String> {
            let dir = self.dir_for(ctrl).ok()?;
            std::fs::read_to_string(dir.join(file)).ok().map(|s| s.trim().to_string())
        };
        let num = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok());
        let field = |text: Option<String>, key: &str| -> u64 {
            text.and_then(|t| {
                t.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
        };
        if self.unified_resources {
            let usage = num(read("memory", "memory.current")).unwrap_or(0);
            let usage_usec = read("cpu", "cpu.stat")
                .and_then(|t| {
                    t.lines().find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.parse::<u64>().ok()))
                })
                .unwrap_or(0);
            crate::supervisor::protocol::Stats {
                cpu_usage_ns: usage_usec * 1000,
                memory_usage_bytes: usage,
                memory_working_set_bytes: usage
                    .saturating_sub(field(read("memory", "memory.stat"), "inactive_file")),
                memory_limit_bytes: num(read("memory", "memory.max")),
                pids: num(read("pids", "pids.current")).unwrap_or(0),
            }
        } else {
            let usage = num(read("memory", "memory.usage_in_bytes")).unwrap_or(0);
            crate::supervisor::protocol::Stats {
                cpu_usage_ns: num(read("cpuacct", "cpuacct.usage")).unwrap_or(0),
                memory_usage_bytes: usage,
                memory_working_set_bytes: usage
                    .saturating_sub(field(read("memory", "memory.stat"), "total_inactive_file")),
                memory_limit_bytes: self.memory_limit(),
                pids: num(read("pids", "pids.current")).unwrap_or(0),
            }
        }
    }

    /// The configured memory limit in bytes, if any.
    pub fn memory_limit(&self) -> Option<u64> {
        let (file, ctrl) =
            if self.unified_resources { ("memory.max", "") } else { ("memory.limit_in_bytes", "memory") };
        let dir = self.dir_for(ctrl).ok()?;
        std::fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
    }

    /// Removes every directory, innermost first. Missing directories are fine; a directory
    /// that still holds processes is an error.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            match std::fs::remove_dir(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(CgroupError::Remove { path: dir.clone(), source: e });
                }
                _ => {}
            }
        }
        // Another container may live there now (or be made there meanwhile): then it stays.
        for p in &self.made_parents {
            let _ = std::fs::remove_dir(p);
        }
        Ok(())
    }

    /// The parents of the container's directories that do not exist yet, deepest first.
    pub fn missing_parents(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for (_, dir) in &self.dirs {
            let mut cur = dir.parent();
            while let Some(p) = cur.filter(|p| !p.exists()) {
                if !out.contains(&p.to_path_buf()) {
                    out.push(p.to_path_buf());
                }
                cur = p.parent();
            }
        }
        // Deepest first across hierarchies too.
        out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        out
    }

    fn dir_for(&self, controller: &str) -> Result<&PathBuf, CgroupError> {
        let found = if self.unified_resources || controller.is_empty() {
            self.dirs.iter().find(|(c, _)| c.is_empty())
        } else {
            self.dirs.iter().find(|(c, _)| c.iter().any(|c| c == controller))
        };
        found.map(|(_, d)| d).ok_or_else(|| CgroupError::MissingController(controller.to_string()))
    }
}

impl Hierarchy {
    /// The container's directory in this hierarchy.
    pub fn container_dir(&self, cgroups_path: &Path) -> PathBuf {
        match cgroups_path.strip_prefix("/") {
            Ok(absolute) => {
                let under_root = Path::new("/").join(absolute);
                let rel = under_root.strip_prefix(&self.mount_root).unwrap_or(absolute);
                self.mount_point.join(rel)
            }
            Err(_) => self.own_dir().join(cgroups_path),
        }
    }
}

/// Like `std::fs::create_dir_all`, but an error names the directory that could not be made.
fn create_dir_all(dir: &Path) -> Result<(), CgroupError> {
    // A parent another container's delete removes (it was empty a moment ago) between our
    // walk and our mkdir is made again: a few rounds, then the error.
    let mut attempt = 0;
    'again: loop {
        attempt += 1;
        let mut missing = Vec::new();
        let mut cur = Some(dir);
        while let Some(d) = cur.filter(|d| !d.exists()) {
            missing.push(d.to_path_buf());
            cur = d.parent();
        }
        for d in missing.iter().rev() {
            match std::fs::create_dir(d) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 5 => continue 'again,
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(CgroupError::Create { path: d.clone(), source: e });
                }
                _ => {}
            }
        }
        return Ok(());
    }
}

/// A new v1 cpuset starts with empty cpus and mems and refuses tasks until they are set:
/// copy the parent's, filling in an empty parent first (up to the first ancestor that has
/// them — never above the caller's own cgroup, whose cpuset holds the caller).
fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let Some(parent) = dir.parent() else { return Ok(()) };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let read = |d: &Path| std::fs::read_to_string(d.join(file)).unwrap_or_default().trim().to_string();
        if !read(dir).is_empty() {
            continue;
        }
        let mut theirs = read(parent);
        if theirs.is_empty() && parent.join(file).exists() {
            inherit_cpuset(parent)?;
            theirs = read(parent);
        }
        write_file(&dir.join(file), &theirs)?;
    }
    Ok(())
}

/// On a pure v2 host, enables every available controller from the runtime's own cgroup — or,
/// for a container outside it, from the nearest cgroup above both (a delegated subtree's
/// root, where an agent keeps itself in a leaf beside its pods) — down to the container's
/// parent, so the container's directory has the interface files. Never above that ancestor.
fn enable_controllers(layout: &Layout, dir: &Path) -> Result<(), CgroupError> {
    let Some(unified) = layout.hierarchies.iter().find(|h| h.version == Version::V2) else { return Ok(()) };
    let own = unified.own_dir();
    let start = if dir.starts_with(&own) {
        own.clone()
    } else {
        let a = common_ancestor(&own, dir);
        if !a.starts_with(&unified.mount_point) {
            return Ok(());
        }
        a
    };
    let Ok(below) = dir.strip_prefix(&start) else { return Ok(()) };
    let mut cur = start.clone();
    for part in below.components() {
        let available = std::fs::read_to_string(cur.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<String> = available
            .split_whitespace()
            .filter(|c| ["cpu", "cpuset", "memory", "pids", "io", "hugetlb"].contains(c))
            .map(|c| format!("+{c}"))
            .collect();
        if !wanted.is_empty() {
            write_file(&cur.join("cgroup.subtree_control"), &wanted.join(" "))?;
        }
        cur = cur.join(part);
    }
    Ok(())
}

/// The longest path both `a` and `b` are under.
fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    a.components().zip(b.components()).take_while(|(x, y)| x == y).map(|(x, _)| x).collect()
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hybrid(root: &Path) -> Layout {
        let r = root.display();
        let mountinfo = format!(
            "35 31 0:32 / {r}/memory rw,relatime - cgroup cgroup rw,memory\n\
             32 31 0:29 / {r}/cpu rw,relatime - cgroup cgroup rw,cpu\n\
             41 31 0:38 / {r}/unified rw,relatime - cgroup2 cgroup2 rw\n"
        );
        Layout::parse(&mountinfo, "4:memory:/sup/me\n1:cpu:/\n0::/\n")
    }

    #[test]
    fn controllers_are_enabled_from_the_nearest_common_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path().display();
        let mountinfo = format!("41 31 0:38 / {r} rw,relatime - cgroup2 cgroup2 rw\n");
        // The agent keeps itself in svc/tug-agent; its pods live in svc/tug-pods.
        let layout = Layout::parse(&mountinfo, "0::/svc/tug-agent\n");
        for d in ["svc/tug-agent", "svc/tug-pods/p1"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        for d in ["svc", "svc/tug-pods", "svc/tug-pods/p1"] {
            std::fs::write(tmp.path().join(d).join("cgroup.controllers"), "cpu memory pids rdma").unwrap();
        }
        enable_controllers(&layout, &tmp.path().join("svc/tug-pods/p1/c1")).unwrap();
        for d in ["svc", "svc/tug-pods", "svc/tug-pods/p1"] {
            let w = std::fs::read_to_string(tmp.path().join(d).join("cgroup.subtree_control")).unwrap();
            assert_eq!(w, "+cpu +memory +pids", "{d}");
        }
        // Nothing above the common ancestor is touched.
        assert!(!tmp.path().join("cgroup.subtree_control").exists());
    }

    #[test]
    fn relative_paths_resolve_under_the_runtimes_own_cgroup() {
        let layout = hybrid(Path::new("/cg"));
        let cg = Cgroup::locate(&layout, Path::new("tug/c1")).unwrap();
        let dirs: Vec<_> = cg.dirs.iter().map(|(_, d)| d.display().to_string()).collect();
        assert_eq!(dirs, ["/cg/memory/sup/me/tug/c1", "/cg/cpu/tug/c1", "/cg/unified/tug/c1"]);
        assert!(!cg.unified_resources);
    }

    #[test]
    fn absolute_paths_are_taken_as_given_and_dotdot_is_refused() {
        let layout = hybrid(Path::new("/cg"));
        let cg = Cgroup::locate(&layout, Path::new("/x/y")).unwrap();
        assert_eq!(cg.dirs[0].1, Path::new("/cg/memory/x/y"));
        assert!(matches!(Cgroup::locate(&layout, Path::new("a/../../b")), Err(CgroupError::BadPath(_))));
    }

    /// A runtime that made the pod's cpuset a moment ago may not have filled it in yet: the
    /// container's copies from it fill it first, rather than copy its emptiness.
    #[test]
    fn an_empty_cpuset_parent_is_filled_in_before_its_child() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("agent");
        for (d, cpus, mems) in [("", "0-1", "0"), ("pod", "", ""), ("pod/c1", "", "")] {
            let dir = top.join(d);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cpuset.cpus"), cpus).unwrap();
            std::fs::write(dir.join("cpuset.mems"), mems).unwrap();
        }
        inherit_cpuset(&top.join("pod/c1")).unwrap();
        for d in ["pod", "pod/c1"] {
            assert_eq!(std::fs::read_to_string(top.join(d).join("cpuset.cpus")).unwrap(), "0-1", "{d}");
            assert_eq!(std::fs::read_to_string(top.join(d).join("cpuset.mems")).unwrap(), "0", "{d}");
        }
    }

    #[test]
    fn create_apply_and_remove_in_a_fake_tree() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["memory/sup/me", "cpu", "unified"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        let layout = hybrid(tmp.path());
        let cg = Cgroup::locate(&layout, Path::new("tug/c1")).unwrap();
        cg.create(&layout).unwrap();
        let w = Write { controller: "memory", file: "memory.limit_in_bytes".into(), value: "1048576".into() };
        cg.apply(&[w]).unwrap();
        let written = std::fs::read_to_string(tmp.path().join("memory/sup/me/tug/c1/memory.limit_in_bytes"));
        assert_eq!(written.unwrap(), "1048576");
        let missing = Write { controller: "pids", file: "pids.max".into(), value: "5".into() };
        assert_eq!(
            cg.apply(&[missing]).unwrap_err().to_string(),
            "cgroup controller pids is not available on this host"
        );
        std::fs::remove_file(tmp.path().join("memory/sup/me/tug/c1/memory.limit_in_bytes")).unwrap();
        cg.remove().unwrap();
        assert!(!tmp.path().join("cpu/tug/c1").exists());
    }
}
