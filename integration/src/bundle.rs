//! OCI bundles for runtime tests: a busybox rootfs with the static probe in `/bin`, and a
//! `config.json` in the shape `runc spec` writes, which a test adjusts as JSON.
//!
//! A [`Bundle`] is a guard: dropping it force-deletes every container it ran (through
//! `tug-shim delete --force`) and removes its cgroup parent directories, its state root and
//! its files, also when the test panics.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A bundle directory, a private `--root` for the runtime, and a cgroup parent of its own.
pub struct Bundle {
    dir: tempfile::TempDir,
    /// The spec, written to `config.json` by [`Bundle::write`] (and by every run helper).
    pub spec: Value,
    /// The cgroup parent (relative, under the test process's own cgroup): `tug-it-<pid>-<n>`.
    pub cgroup_parent: String,
    ids: std::sync::Mutex<Vec<String>>,
}

/// The runtime binary the tests drive (see [`crate::bins`]).
pub fn shim_binary() -> PathBuf {
    crate::bins::path("tug-shim", "tug-shim")
}

impl Bundle {
    /// A new bundle running `args` (the default spec's process).
    pub fn new(args: &[&str]) -> Bundle {
        let dir = tempfile::Builder::new().prefix("tug-bundle-").tempdir().expect("bundle dir");
        let rootfs = dir.path().join("rootfs");
        busybox_rootfs(&rootfs);
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let cgroup_parent = format!("tug-it-{}-{n}", std::process::id());
        let spec = default_spec(args);
        Bundle { dir, spec, cgroup_parent, ids: Default::default() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The runtime's `--root` for this bundle's containers.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes `config.json`, with `cgroupsPath` set under this bundle's parent for `id`.
    pub fn write(&mut self, id: &str) {
        self.spec["linux"]["cgroupsPath"] = json!(format!("{}/{id}", self.cgroup_parent));
        let text = serde_json::to_string_pretty(&self.spec).expect("spec");
        std::fs::write(self.dir.path().join("config.json"), text).expect("config.json");
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_string());
        }
    }

    /// A `tug-shim` command with `--root` set.
    pub fn shim(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(shim_binary());
        cmd.arg("--root").arg(self.root()).args(args);
        cmd
    }

    /// Runs `tug-shim ARGS` and collects its output (stdin closed).
    pub fn shim_output(&self, args: &[&str]) -> Output {
        self.shim(args).stdin(Stdio::null()).output().expect("run tug-shim")
    }

    /// `tug-shim run` of this bundle as `id`, with the output collected.
    pub fn run(&mut self, id: &str) -> Output {
        self.write(id);
        let bundle = self.path().display().to_string();
        self.shim_output(&["run", "--bundle", &bundle, id])
    }

    /// `tug-shim create` with the container's stdout and stderr sent to files in the bundle (a
    /// pipe would stay open as long as the container runs). The returned `stderr` holds what
    /// `create` itself wrote.
    pub fn create(&mut self, id: &str) -> Output {
        self.write(id);
        let bundle = self.path().display().to_string();
        let file = |suffix: &str| {
            std::fs::File::create(self.dir.path().join(format!("{id}.{suffix}"))).expect("stdio file")
        };
        let mut cmd = self.shim(&["create", "--bundle", &bundle, id]);
        cmd.stdin(Stdio::null()).stdout(file("out")).stderr(file("err"));
        let status = cmd.status().expect("run tug-shim create");
        let stderr = std::fs::read(self.dir.path().join(format!("{id}.err"))).unwrap_or_default();
        Output { status, stdout: Vec::new(), stderr }
    }

    /// What a container started with [`Bundle::create`] wrote to its stdout.
    pub fn stdout_of(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{id}.out"))).unwrap_or_default()
    }

    /// The container's cgroup directory in the v1 `pids` hierarchy (or the unified one).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let layout = tug_shim::cgroups::layout::Layout::parse(&mountinfo, &cgroup);
        layout.hierarchies.iter().map(|h| h.own_dir().join(&self.cgroup_parent)).collect()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for id in ids {
            let _ = self.shim(&["delete", "--force", &id]).stderr(Stdio::null()).status();
        }
        // Every hierarchy, named ones too: runc (the benchmark's anchor) also makes a
        // directory in `name=systemd`.
        for dir in own_cgroup_dirs_all_hierarchies() {
            let _ = std::fs::remove_dir(dir.join(&self.cgroup_parent));
        }
    }
}

/// This process's cgroup directory in every mounted hierarchy, named ones included.
pub fn own_cgroup_dirs_all_hierarchies() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let membership = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut dirs = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) = (pre.get(3), pre.get(4), post.first()) else {
            continue;
        };
        let opts: Vec<&str> = post.get(2).map(|o| o.split(',').collect()).unwrap_or_default();
        let path = membership.lines().find_map(|m| {
            let mut parts = m.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            let matches = match *fstype {
                "cgroup2" => ctrls.is_empty(),
                "cgroup" => !ctrls.is_empty() && ctrls.split(',').all(|c| opts.contains(&c)),
                _ => false,
            };
            matches.then_some(path)
        });
        if let Some(path) = path {
            let rel = Path::new(path).strip_prefix(root).unwrap_or(Path::new(""));
            dirs.push(Path::new(point).join(rel));
        }
    }
    dirs
}

/// A rootfs with static busybox, its applets as symlinks, and the probe.
pub fn busybox_rootfs(rootfs: &Path) {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).expect("rootfs/bin");
    for d in ["proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy /bin/busybox (install busybox-static)");
    for applet in [
        "sh", "true", "false", "sleep", "cat", "echo", "ls", "id", "hostname", "mknod", "ps", "touch",
        "ping", "tty", "stty", "readlink", "pwd",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
    }
    std::fs::copy(crate::probe::path(), bin.join("tug-probe")).expect("copy probe");
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
    )
    .expect("passwd");
}

/// The spec `runc spec` writes, without a terminal and with the given process.
pub fn default_spec(args: &[&str]) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "tug-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}
