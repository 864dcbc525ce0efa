//! `create`: set up a container and leave its init waiting for `start`.

use super::{Runtime, RuntimeError};
use crate::cgroups::{Cgroup, layout::Layout, resources};
use crate::channel::{self, FromInit};
use crate::init::{self, InitArgs};
use crate::plan::{self, Plan};
use crate::state::{Dir, State, proc_stat};
use nix::fcntl::{OFlag, open};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use std::os::fd::{AsFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// `create`'s options.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// `--preserve-fds N`: descriptors 3 .. 3+N reach the program.
    pub preserve_fds: u32,
    /// `--no-pivot`: chroot into the rootfs rather than pivot_root.
    pub no_pivot: bool,
}

/// A created container: the init's pid.
pub struct Created {
    pub pid: i32,
}

impl Runtime {
    /// Creates the container. On failure nothing is left: no cgroup, no state, no process.
    pub fn create(&self, id: &str, opts: &CreateOptions) -> Result<Created, RuntimeError> {
        let bundle = std::fs::canonicalize(&opts.bundle)
            .map_err(RuntimeError::io(format!("bundle {}", opts.bundle.display())))?;
        let spec = crate::plan::load_spec(&bundle.join("config.json"))?;
        let mut plan = plan::plan(&spec, &bundle)?;
        plan.process.preserve_fds = opts.preserve_fds;
        plan.no_pivot = opts.no_pivot;
        let console = connect_console(opts.console_socket.as_deref(), plan.process.terminal)?;
        let seccomp = plan
            .seccomp
            .as_ref()
            .map(|s| crate::seccomp::prepare(s, Some(&self.root.join("seccomp"))))
            .transpose()
            .map_err(RuntimeError::Usage)?;
        if !plan.rootfs.is_dir() {
            return Err(RuntimeError::Usage(format!(
                "root.path: {} is not a directory",
                plan.rootfs.display()
            )));
        }
        let layout = Layout::detect_cached(&self.root.join(".cgroup-mounts"))
            .map_err(RuntimeError::io("reading the cgroup layout"))?;
        let mut writes = resources::writes(&plan.resources, layout.unified_only())?;
        let device_rules = resources::device_rules(&plan.resources, &plan.devices)?;
        if !layout.unified_only() {
            writes.extend(resources::device_writes_v1(&device_rules));
        }
        let cgroups_path = plan.cgroups_path.clone().unwrap_or_else(|| Path::new("tug-shim").join(id));
        let mut cgroup = Cgroup::locate(&layout, &cgroups_path)?;
        cgroup.made_parents = cgroup.missing_parents();
        if plan.cgroups_path.is_none() {
            // The runtime's own `tug-shim` directory goes with its last container.
            for (_, d) in &cgroup.dirs {
                if let Some(p) = d.parent().filter(|p| !cgroup.made_parents.iter().any(|m| m == p)) {
                    cgroup.made_parents.push(p.to_path_buf());
                }
            }
        }
        let dir = self.dir(id)?;
        dir.create()?;
        let mut guard = Cleanup { dir: &dir, cgroup: &cgroup, pid: None };
        let hook_state = |pid: i32, status: &str| {
            serde_json::json!({
                "ociVersion": crate::state::OCI_VERSION,
                "id": id,
                "status": status,
                "pid": pid,
                "bundle": bundle,
                "annotations": plan.annotations,
            })
            .to_string()
        };
        let extras = Extras { console, seccomp, hook_state: &hook_state };
        let pid = spawn_init(&plan, &dir, &cgroup, &layout, (&writes, &device_rules), extras, &mut guard)?;
        let start_time = proc_stat(pid).map(|s| s.1).unwrap_or(0);
        let state = State {
            id: id.to_string(),
            pid,
            start_time,
            bundle,
            rootfs: plan.rootfs.clone(),
            created: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
            annotations: plan.annotations.clone(),
            cgroup: cgroup.clone(),
            owner: owner(),
            poststart: plan.hooks.poststart.clone(),
            poststop: plan.hooks.poststop.clone(),
        };
        dir.save(&state)?;
        if let Some(p) = &opts.pid_file {
            std::fs::write(p, pid.to_string())
                .map_err(RuntimeError::io(format!("pid file {}", p.display())))?;
        }
        // Created: nothing to undo.
        std::mem::forget(guard);
        Ok(Created { pid })
    }
}

/// Undoes a half-made container when dropped.
struct Cleanup<'a> {
    dir: &'a Dir,
    cgroup: &'a Cgroup,
    pid: Option<i32>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        super::wait_until(std::time::Duration::from_secs(5), || self.cgroup.remove().is_ok());
        let _ = self.dir.remove();
    }
}

fn spawn_init(
    plan: &Plan,
    dir: &Dir,
    cgroup: &Cgroup,
    layout: &Layout,
    (writes, device_rules): (&[resources::Write], &[tug_bpf::DeviceRule]),
    Extras { console, seccomp, hook_state }: Extras,
    guard: &mut Cleanup,
) -> Result<i32, RuntimeError> {
    nix::unistd::mkfifo(&dir.fifo(), Mode::from_bits_truncate(0o622))
        .map_err(RuntimeError::sys("mkfifo exec.fifo"))?;
    // mkfifo is subject to the umask; the init may write it as a non-root user.
    std::fs::set_permissions(dir.fifo(), std::os::unix::fs::PermissionsExt::from_mode(0o622))
        .map_err(RuntimeError::io("chmod exec.fifo"))?;
    let fifo = open(&dir.fifo(), OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(RuntimeError::sys("open exec.fifo"))?;
    let mut join: Vec<(CloneFlags, OwnedFd)> = Vec::new();
    for (flag, path) in &plan.namespaces.join {
        let fd = open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(RuntimeError::sys(format!("namespace {}", path.display())))?;
        if *flag == CloneFlags::CLONE_NEWUTS && (plan.hostname.is_some() || plan.domainname.is_some()) {
            // Joining the runtime's own UTS namespace and setting a hostname would rename the
            // host.
            let same = |a: &nix::sys::stat::FileStat, b: &nix::sys::stat::FileStat| {
                a.st_dev == b.st_dev && a.st_ino == b.st_ino
            };
            let theirs = nix::sys::stat::fstat(&fd)
                .map_err(RuntimeError::sys(format!("namespace {}", path.display())))?;
            if nix::sys::stat::stat("/proc/self/ns/uts").is_ok_and(|ours| same(&ours, &theirs)) {
                return Err(RuntimeError::Usage(format!(
                    "hostname: {} is the runtime's own uts namespace; setting a hostname there would rename the host",
                    path.display()
                )));
            }
        }
        // pid and time namespaces apply to children: the parent enters them before the clone.
        if *flag == CloneFlags::CLONE_NEWPID || flag.bits() == libc::CLONE_NEWTIME {
            nix::sched::setns(&fd, *flag).map_err(RuntimeError::sys(format!("setns {}", path.display())))?;
        } else {
            join.push((*flag, fd));
        }
    }
    if plan.namespaces.new_time {
        nix::sched::unshare(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))
            .map_err(RuntimeError::sys("unshare time"))?;
        // The offsets go in before any process is in the namespace (the kernel refuses them
        // after).
        for line in &plan.time_offsets {
            std::fs::write("/proc/self/timens_offsets", line).map_err(RuntimeError::io(format!(
                "linux.timeOffsets: writing {line:?} to /proc/self/timens_offsets"
            )))?;
        }
    }
    // The cgroup is made and limited before the clone: the init is born in it where the
    // kernel can do that (the unified hierarchy), and moves itself into the v1 ones before
    // its first step, unless it is in a new user namespace, where it is no longer root over
    // the cgroup files; then the parent moves it.
    cgroup.create(layout)?;
    cgroup.apply(writes)?;
    if !device_rules.is_empty() {
        cgroup.attach_device_filter(device_rules)?;
    }
    let into = cgroup
        .unified_dir()
        .map(|d| {
            open(d, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(RuntimeError::sys(format!("cgroup {}", d.display())))
        })
        .transpose()?;
    let join_v1 = !plan.namespaces.clone.contains(CloneFlags::CLONE_NEWUSER);
    let (parent, child) = channel::pair().map_err(|e| RuntimeError::Usage(e.to_string()))?;
    let (pid, in_unified) = clone_process(plan.namespaces.clone, into.as_ref())?;
    if pid == 0 {
        drop(parent);
        init::run(InitArgs {
            plan,
            channel: child,
            fifo: fifo.into_raw_fd(),
            join,
            cgroup: cgroup.clone(),
            join_v1,
            console,
            seccomp,
        });
    }
    guard.pid = Some(pid);
    drop((child, into));
    drop(console);
    // The init waits for CgroupReady, so its ids are mapped before it takes a step.
    if let Some(maps) = &plan.user_ns {
        for (file, text) in [("gid_map", &maps.gid_map), ("uid_map", &maps.uid_map)] {
            let path = format!("/proc/{pid}/{file}");
            std::fs::write(&path, text)
                .map_err(RuntimeError::io(format!("writing {path} ({})", text.trim())))?;
        }
    }
    drop(fifo);
    cgroup.add_process_in(pid, !join_v1, !in_unified)?;
    let hooks = &plan.hooks;
    let init_hooks = !hooks.create_container.is_empty() || !hooks.start_container.is_empty();
    let channel_err = |e: channel::ChannelError| RuntimeError::Usage(e.to_string());
    parent.send_cgroup_ready(init_hooks.then(|| hook_state(pid, "creating"))).map_err(channel_err)?;
    loop {
        match parent.wait_report() {
            Ok(FromInit::Mounted) => {
                let state = hook_state(pid, "creating");
                for (which, list) in [("prestart", &hooks.prestart), ("createRuntime", &hooks.create_runtime)]
                {
                    crate::hooks::run_all(which, list, &state)
                        .map_err(|message| RuntimeError::Init { step: format!("{which} hooks"), message })?;
                }
                parent.send_hooks_done().map_err(channel_err)?;
            }
            Ok(FromInit::Ready) => return Ok(pid),
            Ok(FromInit::Failed { step, message }) => return Err(RuntimeError::Init { step, message }),
            Err(e) => return Err(RuntimeError::Init { step: "setup".into(), message: e.to_string() }),
        }
    }
}

/// What the init gets besides the plan and the cgroup.
struct Extras<'a> {
    console: Option<OwnedFd>,
    seccomp: Option<crate::seccomp::Filter>,
    /// The OCI state for hooks, given the init's pid and a status.
    hook_state: &'a dyn Fn(i32, &str) -> String,
}

/// A fork-like clone into new namespaces (crun does the same) and, when given, into the
/// unified cgroup directory `into`. Returns 0 in the child; in the parent, the child's pid
/// and whether it was born in `into`.
fn clone_process(flags: CloneFlags, into: Option<&OwnedFd>) -> Result<(i32, bool), RuntimeError> {
    let flags = u64::try_from(flags.bits()).unwrap_or(0);
    super::clone::fork_into(flags, into.map(AsFd::as_fd))
        .map_err(|errno| RuntimeError::Sys { what: "clone".into(), errno })
}

/// Connects to the console socket that will receive the terminal's master, checking that a
/// socket is given exactly when the process asks for a terminal (runc's rule).
pub fn connect_console(path: Option<&Path>, terminal: bool) -> Result<Option<OwnedFd>, RuntimeError> {
    console_rule(path.is_some(), terminal, "process.terminal is false")?;
    path.map(|p| {
        std::os::unix::net::UnixStream::connect(p)
            .map(OwnedFd::from)
            .map_err(RuntimeError::io(format!("--console-socket {}", p.display())))
    })
    .transpose()
}

/// A console socket exactly when the process has a terminal; `hint` says, in the caller's
/// words, why there is none.
pub(crate) fn console_rule(given: bool, terminal: bool, hint: &str) -> Result<(), RuntimeError> {
    match (given, terminal) {
        (false, true) => Err(RuntimeError::Usage(
            "process.terminal is true: a --console-socket is needed to receive the terminal".into(),
        )),
        (true, false) => Err(RuntimeError::Usage(format!(
            "--console-socket is only for a process with a terminal ({hint})"
        ))),
        _ => Ok(()),
    }
}

fn owner() -> String {
    let uid = nix::unistd::geteuid();
    nix::unistd::User::from_uid(uid).ok().flatten().map(|u| u.name).unwrap_or_else(|| uid.to_string())
}
