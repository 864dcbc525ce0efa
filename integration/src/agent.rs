//! A `tug-agent` for tests: registered with a test control plane as one node of the
//! cluster in namespaces, with its state, images, pod namespaces and cgroups all private.
//! Dropping it kills the agent by pid and removes every container, mount, namespace and
//! cgroup it made, also when the test panics.

use crate::cluster;
use crate::control_plane::ControlPlane;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

pub struct Agent {
    dir: tempfile::TempDir,
    pub name: String,
    pub cgroup_parent: String,
    args: Vec<String>,
    child: Option<Child>,
}

impl Agent {
    /// Starts an agent named `name` on `node`, joined to `cp` through its socket.
    pub fn start(cp: &ControlPlane, node: &cluster::Node, name: &str, extra: &[&str]) -> Agent {
        Agent::start_with(&["--socket".into(), cp.socket().display().to_string()], node, name, extra)
    }

    /// Starts an agent that joins a control plane over TLS with its join token.
    pub fn start_remote(url: &str, token: &str, node: &cluster::Node, name: &str, extra: &[&str]) -> Agent {
        Agent::start_with(&["--server".into(), url.into(), "--token".into(), token.into()], node, name, extra)
    }

    fn start_with(connect: &[String], node: &cluster::Node, name: &str, extra: &[&str]) -> Agent {
        let dir = tempfile::Builder::new().prefix("tug-agent-").tempdir().expect("agent dir");
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let cgroup_parent = format!("tug-it-agent-{}-{n}", std::process::id());
        let p = |s: &str| dir.path().join(s).display().to_string();
        // The run directory on a tmpfs of its own, as /run is on a host (unmounted by `clean`
        // with every other mount under the agent's directory).
        let run = dir.path().join("run");
        std::fs::create_dir(&run).expect("run dir");
        nix::mount::mount(
            Some("tug-agent-run"),
            &run,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("mode=0700"),
        )
        .expect("mount the agent's run tmpfs");
        let mut args: Vec<String> = connect.to_vec();
        args.extend([
            "--node-name".into(),
            name.into(),
            "--state-dir".into(),
            p("state"),
            "--run-dir".into(),
            p("run"),
            "--node-ip".into(),
            node.ip.to_string(),
            "--node-netns".into(),
            format!("/run/netns/{}", node.netns),
            "--netns-dir".into(),
            p("run/netns"),
            "--image-root".into(),
            p("images"),
            "--cgroup-parent".into(),
            cgroup_parent.clone(),
            "--node-status-update-frequency".into(),
            "1s".into(),
            "--sync-frequency".into(),
            "2s".into(),
            // Test machines' disks are shared and often nearly full: as kind does, the tests
            // turn disk pressure and image collection off (their own tests set them).
            "--eviction-hard".into(),
            "memory.available<100Mi".into(),
            "--image-gc-high-threshold".into(),
            "100".into(),
            "--housekeeping-interval".into(),
            "1s".into(),
            "--shim".into(),
            crate::bundle::shim_binary().display().to_string(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let _ = crate::bins::path("tug-agent", "tug-supervisor");
        let mut a = Agent { dir, name: name.into(), cgroup_parent, args, child: None };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("log");
        let child = Command::new(crate::bins::path("tug-agent", "tug-agent"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start tug-agent");
        self.child = Some(child);
    }

    /// The pids of the pods' pause processes (`shareProcessNamespace`) this agent started:
    /// `tug-supervisor pause <pod directory>` with the directory under this agent's.
    pub fn pauses(&self) -> Vec<u32> {
        crate::pids_naming(&format!("\0pause\0{}/", self.dir.path().display()))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Volatile state: the runtime's root (`runtime/`), `supervisors/`, `bundles/`.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// A container's supervisor directory.
    pub fn supervisor_dir(&self, id: &str) -> PathBuf {
        self.run_dir().join("supervisors").join(id)
    }

    pub fn image_root(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    /// Under the run directory's tmpfs, as the default `/run/tug/netns` is on a host.
    pub fn netns_dir(&self) -> PathBuf {
        self.dir.path().join("run/netns")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, no chance to clean anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// The containers (supervisor directories) the agent has now.
    pub fn containers(&self) -> Vec<String> {
        crate::names_in(&self.run_dir().join("supervisors"))
    }

    /// Imports the example image (`scripts/example-image.sh`, `tug.local/busybox-httpd:1`)
    /// into the agent's store.
    pub fn import_example_image(&self) {
        self.import_example_image_as(None);
    }

    /// The example image under another name (`tug.local/busybox-httpd:2`, for an update).
    pub fn import_example_image_as(&self, name: Option<&str>) {
        let layout = self.dir.path().join("example-image");
        if !layout.exists() {
            let st = Command::new("bash")
                .arg(crate::probe::workspace_root().join("scripts/example-image.sh"))
                .arg(&layout)
                .stdout(Stdio::null())
                .status()
                .expect("example-image.sh");
            assert!(st.success(), "scripts/example-image.sh failed");
        }
        let store = tug_images::Store::open(self.image_root()).expect("store");
        tug_images::import::import(&store, &layout, name).expect("import the example image");
    }

    /// Imports an image of busybox and the probe as `name`.
    pub fn import_probe_image(&self, name: &str) {
        use crate::images::{Compress, Layer, Layout};
        let dir = self.dir.path().join("probe-image");
        let mut layout = Layout::new(&dir);
        let probe = std::fs::read(crate::probe::path()).expect("probe");
        let layer = Layer::new().busybox().file_owned("bin/tug-probe", &probe, 0o755, 0, 0).tar();
        let m = layout.image(&[(layer, Compress::Gzip)], &["/bin/sh"], "amd64");
        layout.tag(m, name);
        let store = tug_images::Store::open(self.image_root()).expect("store");
        tug_images::import::import(&store, &dir, None).expect("import the probe image");
    }

    /// Removes everything the agent's containers hold.
    fn clean(&self) {
        let shim = crate::bundle::shim_binary();
        let root = self.run_dir().join("runtime");
        for id in self.containers() {
            let socket = tug_shim::supervisor::socket_path(&self.run_dir().join("supervisors"), &id);
            if let Ok(mut c) = tug_shim::supervisor::protocol::Client::connect(&socket) {
                c.set_timeout(Some(Duration::from_secs(5)));
                let _ = c.call(&tug_shim::supervisor::protocol::Request::Kill {
                    signal: libc::SIGKILL,
                    all: true,
                });
            }
            let _ = Command::new(&shim)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .stderr(Stdio::null())
                .status();
            crate::wait_for(Duration::from_secs(5), || {
                tug_shim::supervisor::protocol::Client::connect(&socket)
                    .and_then(|mut c| c.call(&tug_shim::supervisor::protocol::Request::Shutdown))
                    .is_err()
            });
        }
        for pid in self.pauses() {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // Every mount under the agent's directory (rootfs overlays, tmpfs volumes, pinned
        // namespaces), deepest first.
        let root = self.dir.path().to_string_lossy().into_owned();
        // What still runs from this agent's directory (a supervisor whose directory the agent
        // removed as it was killed, so the loop above never found it): ended by its PID.
        kill_mentioning(&root);
        let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|p| p.starts_with(&root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for e in std::fs::read_dir(self.netns_dir()).into_iter().flatten().flatten() {
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(e.path());
        }
        for dir in crate::bundle::own_cgroup_dirs_all_hierarchies() {
            remove_cgroup_tree(&dir.join(&self.cgroup_parent));
            // The leaf an agent keeps itself in on a pure v2 host (shared by the agents of
            // one test process; it goes when the last is gone).
            let _ = std::fs::remove_dir(dir.join(tug_agent::cgroup::AGENT_LEAF));
        }
    }
}

/// SIGKILLs every process whose command line names `dir` (this test's own temporary
/// directory: nothing else names it), and waits for them to go.
fn kill_mentioning(dir: &str) {
    let me = std::process::id();
    let pids = || -> Vec<i32> {
        crate::pids_naming(dir)
            .into_iter()
            .filter(|&pid| pid != me)
            .filter_map(|pid| i32::try_from(pid).ok())
            .collect()
    };
    for pid in pids() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    crate::wait_for(Duration::from_secs(5), || pids().is_empty());
}

/// Removes a cgroup directory and its children, deepest first. What still runs in them —
/// a supervisor the agent spawned as it was killed, before the runtime's state named its
/// container — is this agent's: killed by its PID first, so nothing outlives the test.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let procs = || {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .collect::<Vec<_>>()
    };
    for pid in procs() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    crate::wait_for(Duration::from_secs(5), || procs().is_empty());
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        self.clean();
    }
}
