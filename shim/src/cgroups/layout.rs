//! Which cgroup hierarchies this host has, where they are mounted, and where this process
//! sits in each — parsed from `/proc/self/mountinfo` and `/proc/self/cgroup`, never assumed.
//!
//! Three shapes exist: unified (cgroup2 alone, the primary target), hybrid (v1 controllers
//! plus a cgroup2 mount such as `/sys/fs/cgroup/unified`, like the machines Tug is developed
//! on) and legacy (v1 only).

use nix::sys::statfs;
use std::path::{Path, PathBuf};

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

    /// [`Layout::detect`], with the cgroup mounts' lines of mountinfo kept in the file `cache`
    /// (the runtime's root, a tmpfs). mountinfo is as long as the host has mounts — two per
    /// pod on a node (its rootfs, its network namespace) — and every container start read and
    /// parsed all of it. A cached line is used only while its mount point is still that mount
    /// (the same mount ID and device, from `statx`) and no hierarchy the cache lacks is mounted
    /// at its usual place; otherwise mountinfo is read again and the cache rewritten.
    pub fn detect_cached(cache: &Path) -> std::io::Result<Layout> {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup")?;
        if let Ok(lines) = std::fs::read_to_string(cache) {
            if cache_holds(&lines, &cgroup) {
                return Ok(Layout::parse(&lines, &cgroup));
            }
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let lines: String = mountinfo
            .lines()
            .filter(|l| matches!(fstype(l), Some("cgroup" | "cgroup2")))
            .flat_map(|l| [l, "\n"])
            .collect();
        // Written aside and renamed: a reader never sees half the lines.
        let tmp = cache.with_extension(format!("{}", std::process::id()));
        if std::fs::write(&tmp, &lines).is_ok() && std::fs::rename(&tmp, cache).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(Layout::parse(&lines, &cgroup))
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

/// A mountinfo line's filesystem type.
fn fstype(line: &str) -> Option<&str> {
    line.split_once(" - ")?.1.split(' ').next()
}

/// Whether cached cgroup mount lines still describe this host: each mount point is still
/// the mount the line names, and every hierarchy of `/proc/self/cgroup` the lines lack is
/// unmounted at its usual place (`/sys/fs/cgroup/<controllers>`; for v2 `/sys/fs/cgroup` or
/// `/sys/fs/cgroup/unified`).
fn cache_holds(lines: &str, proc_cgroup: &str) -> bool {
    if !lines.lines().all(still_mounted) {
        return false;
    }
    let cached = Layout::parse(lines, proc_cgroup).hierarchies;
    let base = Path::new("/sys/fs/cgroup");
    proc_cgroup.lines().all(|l| {
        let Some(ctrls) = l.split(':').nth(1) else { return true };
        if ctrls.is_empty() {
            cached.iter().any(|h| h.version == Version::V2)
                || ![base.to_path_buf(), base.join("unified")]
                    .iter()
                    .any(|p| fs_magic(p) == Some(statfs::CGROUP2_SUPER_MAGIC))
        } else {
            let want = v1_controllers(ctrls.split(','));
            want.is_empty()
                || cached.iter().any(|h| {
                    h.version == Version::V1
                        && v1_controllers(h.controllers.iter().map(String::as_str)) == want
                })
                || fs_magic(&base.join(want.join(","))) != Some(statfs::CGROUP_SUPER_MAGIC)
        }
    })
}

/// Whether a mountinfo line's mount is still the one at its mount point (its mount ID and
/// device, from `statx`).
fn still_mounted(line: &str) -> bool {
    let Some((pre, _)) = line.split_once(" - ") else { return false };
    let pre: Vec<&str> = pre.split(' ').collect();
    let (Some(id), Some(dev), Some(point)) = (pre.first(), pre.get(2), pre.get(4)) else { return false };
    let Some((major, minor)) = dev.split_once(':') else { return false };
    matches!(mount_of(Path::new(&unescape(point))),
        Some((i, ma, mi)) if id.parse() == Ok(i) && major.parse() == Ok(ma) && minor.parse() == Ok(mi))
}

/// The v1 controllers Tug uses among `names`, sorted.
fn v1_controllers<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut c: Vec<String> = names.filter(|n| V1_CONTROLLERS.contains(n)).map(str::to_string).collect();
    c.sort();
    c
}

/// The mount ID and device (major, minor) of the mount at `path`.
fn mount_of(path: &Path) -> Option<(u64, u32, u32)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: an all-zero statx is a valid value for the kernel to fill in.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statx that outlives the call.
    let r = unsafe {
        libc::statx(libc::AT_FDCWD, c.as_ptr(), libc::AT_SYMLINK_NOFOLLOW, libc::STATX_MNT_ID, &mut st)
    };
    (r == 0 && st.stx_mask & libc::STATX_MNT_ID != 0).then_some((
        st.stx_mnt_id,
        st.stx_dev_major,
        st.stx_dev_minor,
    ))
}

/// The filesystem type (`statfs`'s magic) at `path`, if it exists.
fn fs_magic(path: &Path) -> Option<statfs::FsType> {
    statfs::statfs(path).ok().map(|s| s.filesystem_type())
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

    #[test]
    fn the_cached_layout_is_the_host_layout_and_a_stale_cache_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join(".cgroup-mounts");
        let fresh = Layout::detect().unwrap();
        // Written by the first call, read by the second.
        assert_eq!(Layout::detect_cached(&cache).unwrap(), fresh);
        let lines = std::fs::read_to_string(&cache).unwrap();
        assert!(lines.lines().all(|l| matches!(fstype(l), Some("cgroup" | "cgroup2"))), "{lines}");
        assert_eq!(Layout::detect_cached(&cache).unwrap(), fresh);
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert!(cache_holds(&lines, &cgroup));
        let Some(first) = lines.lines().next() else { return };
        // A line whose mount is no longer there (another mount ID at its point).
        let (id, rest) = first.split_once(' ').unwrap();
        let moved = format!(
            "{}{} {rest}\n",
            lines.replacen(first, "", 1).trim_start(),
            id.parse::<u64>().unwrap() + 100_000
        );
        assert!(!cache_holds(&moved, &cgroup), "{moved}");
        // A hierarchy that is mounted but missing from the cache.
        let missing: String = lines.lines().skip(1).flat_map(|l| [l, "\n"]).collect();
        assert!(!cache_holds(&missing, &cgroup), "{missing}");
        std::fs::write(&cache, &missing).unwrap();
        assert_eq!(Layout::detect_cached(&cache).unwrap(), fresh);
        assert_eq!(std::fs::read_to_string(&cache).unwrap(), lines);
        // Garbage is read again too.
        std::fs::write(&cache, "not mountinfo\n").unwrap();
        assert_eq!(Layout::detect_cached(&cache).unwrap(), fresh);
    }
}
