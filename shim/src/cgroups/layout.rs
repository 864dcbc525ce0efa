//! Which cgroup hierarchies this host has, where they are mounted, and where this process
//! sits in each — parsed from `/proc/self/mountinfo` and `/proc/self/cgroup`, never assumed.
//!
//! Three shapes exist: unified (cgroup2 alone, the primary target), hybrid (v1 controllers
//! plus a cgroup2 mount such as `/sys/fs/cgroup/unified`, like the machines Tug is developed
//! on) and legacy (v1 only).

use std::path::PathBuf;

/// The v1 controllers Tug places containers in (named hierarchies such as `name=systemd`
/// belong to the host's init and are left alone).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "pids",
    "blkio",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
];

/// cgroup v1 or v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    /// v1: the controllers bound to this hierarchy; v2: empty.
    pub controllers: Vec<String>,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Which cgroup of the hierarchy the mount shows at its mount point (not `/` inside a
    /// cgroup namespace or a bind mount).
    pub mount_root: PathBuf,
    /// This process's cgroup in the hierarchy, as `/proc/self/cgroup` names it.
    pub own_path: PathBuf,
}

/// The host's cgroup hierarchies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    pub hierarchies: Vec<Hierarchy>,
}

impl Layout {
    /// Reads the layout of the running system.
    pub fn detect() -> std::io::Result<Layout> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let cgroup = std::fs::read_to_string("/proc/self/cgroup")?;
        Ok(Layout::parse(&mountinfo, &cgroup))
    }

    /// Parses the text of `/proc/self/mountinfo` and `/proc/self/cgroup`. The first mount of
    /// each hierarchy wins (later ones are usually bind mounts of it).
    pub fn parse(mountinfo: &str, proc_cgroup: &str) -> Layout {
        let membership: Vec<(Vec<String>, PathBuf)> = proc_cgroup
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                let ctrls = ctrls.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
                Some((ctrls, PathBuf::from(path)))
            })
            .collect();
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for line in mountinfo.lines() {
            let Some(h) = parse_mount(line, &membership) else { continue };
            if !hierarchies.iter().any(|o| o.version == h.version && o.controllers == h.controllers) {
                hierarchies.push(h);
            }
        }
        Layout { hierarchies }
    }

    /// True when cgroup2 is the only hierarchy (resources go to the unified tree).
    pub fn unified_only(&self) -> bool {
        !self.hierarchies.is_empty() && self.hierarchies.iter().all(|h| h.version == Version::V2)
    }

    /// A short name for the shape: `unified`, `hybrid`, `legacy` or `none`.
    pub fn kind(&self) -> &'static str {
        let v1 = self.hierarchies.iter().any(|h| h.version == Version::V1);
        let v2 = self.hierarchies.iter().any(|h| h.version == Version::V2);
        match (v1, v2) {
            (false, true) => "unified",
            (true, true) => "hybrid",
            (true, false) => "legacy",
            (false, false) => "none",
        }
    }
}

impl Hierarchy {
    /// This process's own cgroup directory in the hierarchy.
    pub fn own_dir(&self) -> PathBuf {
        match self.own_path.strip_prefix(&self.mount_root) {
            Ok(rel) if !rel.as_os_str().is_empty() => self.mount_point.join(rel),
            _ => self.mount_point.clone(),
        }
    }
}

fn parse_mount(line: &str, membership: &[(Vec<String>, PathBuf)]) -> Option<Hierarchy> {
    let (pre, post) = line.split_once(" - ")?;
    let pre: Vec<&str> = pre.split(' ').collect();
    let post: Vec<&str> = post.split(' ').collect();
    let (mount_root, mount_point) = (PathBuf::from(pre.get(3)?), PathBuf::from(unescape(pre.get(4)?)));
    let (fstype, super_opts) = (*post.first()?, post.get(2).copied().unwrap_or_default());
    let (version, controllers) = match fstype {
        "cgroup2" => (Version::V2, Vec::new()),
        "cgroup" => {
            let c: Vec<String> =
                super_opts.split(',').filter(|o| V1_CONTROLLERS.contains(o)).map(str::to_string).collect();
            if c.is_empty() {
                return None;
            }
            (Version::V1, c)
        }
        _ => return None,
    };
    let own_path = membership
        .iter()
        .find(|(ctrls, _)| match version {
            Version::V2 => ctrls.is_empty(),
            Version::V1 => {
                let mut a = ctrls.clone();
                let mut b = controllers.clone();
                a.sort();
                b.sort();
                a == b
            }
        })
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| PathBuf::from("/"));
    Some(Hierarchy { version, controllers, mount_point, mount_root, own_path })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data-driven: (mountinfo, /proc/self/cgroup) → (kind, [(controllers, own dir)]).
    fn check(mountinfo: &str, cgroup: &str, kind: &str, expect: &[(&str, &str)]) {
        let layout = Layout::parse(mountinfo, cgroup);
        assert_eq!(layout.kind(), kind);
        let got: Vec<(String, String)> = layout
            .hierarchies
            .iter()
            .map(|h| (h.controllers.join(","), h.own_dir().display().to_string()))
            .collect();
        let want: Vec<(String, String)> =
            expect.iter().map(|(c, d)| (c.to_string(), d.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn hybrid_host_like_the_dev_machines() {
        check(
            "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
             32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
             35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
             40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
             41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
            "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n",
            "hybrid",
            &[
                ("cpu", "/sys/fs/cgroup/cpu"),
                ("memory", "/sys/fs/cgroup/memory/process_api/abc"),
                ("", "/sys/fs/cgroup/unified"),
            ],
        );
    }

    #[test]
    fn unified_host_under_systemd() {
        check(
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
            "0::/system.slice/tug-agent.service\n",
            "unified",
            &[("", "/sys/fs/cgroup/system.slice/tug-agent.service")],
        );
    }

    #[test]
    fn combined_v1_controllers_and_a_cgroup_namespace_root() {
        check(
            "32 31 0:29 /kubepods /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpuacct,cpu\n",
            "3:cpu,cpuacct:/kubepods/pod1\n",
            "legacy",
            &[("cpuacct,cpu", "/sys/fs/cgroup/cpu,cpuacct/pod1")],
        );
    }

    #[test]
    fn no_cgroups_at_all() {
        check("22 1 0:5 / /proc rw - proc proc rw\n", "", "none", &[]);
    }
}
