//! The container's first process, between `clone` and `execve`. Runs in the new namespaces,
//! single-threaded, and never returns: it execs the user's program or exits.
//!
//! The order matters and each step says why it sits where it does.

use crate::cgroups::Cgroup;
use crate::channel::Channel;
use crate::mounts::{self, MountStep};
use crate::plan::{Plan, PlannedMount, ProcessPlan};
use caps::CapSet;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// What the init gets from the parent besides the plan.
pub struct InitArgs<'a> {
    pub plan: &'a Plan,
    pub channel: Channel,
    /// Opened `O_PATH` on `exec.fifo`; reopened for writing through `/proc/self/fd`.
    pub fifo: RawFd,
    /// Namespaces to join, opened by the parent before the clone (their paths may not be
    /// visible from inside the container).
    pub join: Vec<(CloneFlags, OwnedFd)>,
    pub cgroup: Cgroup,
    /// Whether the init moves itself into the v1 hierarchies (else the parent moved it).
    pub join_v1: bool,
    /// A connection to the console socket, when the process gets a terminal.
    pub console: Option<OwnedFd>,
    /// The compiled seccomp filter.
    pub seccomp: Option<crate::seccomp::Filter>,
}

/// The caller's `/proc`, held by an init that has no mount namespace of its own.
static HOST_PROC: std::sync::OnceLock<std::os::fd::OwnedFd> = std::sync::OnceLock::new();

/// Runs the init. On any failure reports the step to the parent and exits 1.
pub fn run(args: InitArgs) -> ! {
    // Not dumpable while tug-shim's own code runs in the container's namespaces: the
    // container's processes cannot open /proc/1/exe (the runtime binary, CVE-2019-5736) or
    // ptrace it. execve of the user's program makes the process dumpable again.
    let _ = nix::sys::prctl::set_dumpable(false);
    let hook_state = match setup(&args) {
        Ok(s) => s,
        Err((step, message)) => {
            let _ = args.channel.send_failed(step, &message);
            std::process::exit(1);
        }
    };
    if args.channel.send_ready().is_err() {
        std::process::exit(1);
    }
    let InitArgs { plan, channel, fifo, seccomp, .. } = args;
    drop(channel);
    let program = match wait_for_start_then_resolve(plan, fifo, hook_state.as_deref()) {
        Ok(p) => p,
        Err(message) => {
            eprintln!("tug-shim: {message}");
            std::process::exit(127);
        }
    };
    // With no_new_privs the filter is the last step before execve.
    if let (true, Some(f)) = (plan.process.no_new_privs, &seccomp) {
        if let Err(e) = f.load() {
            eprintln!("tug-shim: seccomp: {e}");
            std::process::exit(127);
        }
    }
    exec(&program, &plan.process)
}

type StepResult = Result<(), (&'static str, String)>;

fn step<T, E: std::fmt::Display>(name: &'static str, r: Result<T, E>) -> Result<T, (&'static str, String)> {
    r.map_err(|e| (name, e.to_string()))
}

/// Everything before Ready; returns the OCI state the init's own hooks get.
fn setup(a: &InitArgs) -> Result<Option<String>, (&'static str, String)> {
    let plan = a.plan;
    // Into the cgroup first, so nothing below runs outside its limits: born in the unified
    // hierarchy's directory or moved there by the parent, which also moves us into the v1
    // ones unless we do (see Cgroup::join_v1).
    let hook_state = step("cgroup", a.channel.wait_cgroup_ready())?;
    if a.join_v1 {
        step("cgroup", a.cgroup.join_v1())?;
    }
    // In a new user namespace (its maps written by now) become its root, so that files the
    // init makes (in /dev, say) belong to a mapped id; the capabilities stay.
    if let Some(maps) = &plan.user_ns {
        if maps.host_uid(0).is_some() && maps.host_gid(0).is_some() {
            step("user namespace", nix::unistd::setresgid(0.into(), 0.into(), 0.into()))?;
            step("user namespace", nix::unistd::setresuid(0.into(), 0.into(), 0.into()))?;
        }
    }
    // Joined namespaces before mounts: /sys must show the joined network namespace.
    for (flag, fd) in &a.join {
        step("join namespace", nix::sched::setns(fd, *flag))?;
    }
    // The cgroup namespace is made only now, so its root is the container's cgroup.
    if plan.namespaces.new_cgroup {
        step("cgroup namespace", nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP))?;
    }
    if !plan.inherit_mounts {
        build_rootfs(plan, &a.cgroup)?;
    }
    // Hooks see the mounts in place, from the host's side of pivot_root.
    if plan.hooks.at_create() {
        step("createRuntime hooks", a.channel.mounted_then_wait_hooks())?;
        let state = hook_state.clone().unwrap_or_default();
        step(
            "createContainer hooks",
            crate::hooks::run_all("createContainer", &plan.hooks.create_container, &state),
        )?;
    }
    if plan.inherit_mounts {
        // The chroot has no /proc of its own: the caller's, kept open (close-on-exec) to
        // reopen the exec fifo through after it.
        let proc = step(
            "chroot (no mount namespace)",
            nix::fcntl::open(
                "/proc",
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            ),
        )?;
        let _ = HOST_PROC.set(proc);
        step("chroot (no mount namespace)", mounts::chroot_into(&plan.rootfs))?;
    } else if plan.no_pivot {
        step("chroot (--no-pivot)", mounts::move_root(&plan.rootfs))?;
    } else {
        step("pivot_root", mounts::pivot(&plan.rootfs))?;
    }
    step("rootfsPropagation", mounts::share_root(plan.root_propagation))?;
    if let Some(h) = &plan.hostname {
        step("hostname", nix::unistd::sethostname(h))?;
    }
    if let Some(d) = &plan.domainname {
        step("domainname", set_domainname(d))?;
    }
    for (k, v) in &plan.sysctls {
        let path = Path::new("/proc/sys").join(k.replace('.', "/"));
        step("sysctl", std::fs::write(&path, v).map_err(|e| format!("{k}={v}: {e}")))?;
    }
    // Paths that need /proc and /sys of the container, so after pivot_root.
    for p in &plan.masked_paths {
        step("masked paths", mounts::mask(p))?;
    }
    for p in &plan.readonly_paths {
        step("readonly paths", mounts::make_readonly(p))?;
    }
    if plan.readonly_root {
        step("readonly root", mounts::readonly_root())?;
    }
    // Lowering the OOM score needs CAP_SYS_RESOURCE, so before capabilities drop.
    if let Some(adj) = plan.process.oom_score_adj {
        step("oom_score_adj", std::fs::write("/proc/self/oom_score_adj", adj.to_string()))?;
    }
    process_steps(&plan.process, a.console.as_ref(), a.seccomp.as_ref())?;
    Ok(hook_state)
}

/// The steps the container's init and an exec'd process share, in the container's
/// namespaces with its root in place: terminal, rlimits, user and capabilities,
/// no_new_privs, umask, working directory, and seccomp when it must come before the
/// capabilities drop. Returns the resolved program, so a missing one is reported while the
/// caller still waits.
pub fn process_steps(
    p: &ProcessPlan,
    console: Option<&OwnedFd>,
    seccomp: Option<&crate::seccomp::Filter>,
) -> Result<PathBuf, (&'static str, String)> {
    // The terminal first: giving the slave to the process's user needs CAP_CHOWN.
    if p.terminal {
        let console = console.ok_or(("terminal", "no console socket".to_string()))?;
        let (master, slave, path) = step("terminal", crate::terminal::open_pty())?;
        if let Some(size) = p.console_size {
            step("terminal", crate::terminal::set_size(slave.as_fd(), size))?;
        }
        step("terminal", nix::unistd::fchown(&slave, Some(p.uid.into()), None))?;
        step("terminal", crate::terminal::send_fd(console.as_raw_fd(), master.as_raw_fd(), &path))?;
        drop(master);
        step("terminal", crate::terminal::become_session_leader_on(&slave))?;
    }
    for (res, soft, hard) in &p.rlimits {
        step(
            "rlimits",
            nix::sys::resource::setrlimit(*res, *soft, *hard).map_err(|e| format!("{res:?}: {e}")),
        )?;
    }
    // Without no_new_privs the kernel wants CAP_SYS_ADMIN to load a filter: before the
    // capabilities go. With it, the caller loads the filter last, right before execve, so
    // the runtime's own remaining steps need not be in the profile.
    if let (false, Some(f)) = (p.no_new_privs, seccomp) {
        step("seccomp", f.load())?;
    }
    set_user_and_caps(p)?;
    if p.no_new_privs {
        step("no_new_privs", nix::sys::prctl::set_no_new_privs())?;
    }
    if let Some(mask) = p.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask & 0o777));
    }
    // chdir as the container's user, so its permissions apply.
    let cwd = &p.cwd;
    step("cwd", nix::unistd::chdir(cwd).map_err(|e| format!("chdir to {}: {e}", cwd.display())))?;
    step("exec", resolve(&p.args[0], &p.env))
}

fn build_rootfs(plan: &Plan, cgroup: &Cgroup) -> StepResult {
    let rootfs = &plan.rootfs;
    step("rootfs", mounts::prepare_root(rootfs, plan.root_propagation))?;
    // Opened once the rootfs is its own mount: every destination is resolved beneath it.
    let root = step("rootfs", mounts::open_root(rootfs))?;
    for m in &plan.mounts {
        match m {
            PlannedMount::Plain(s) => step("mounts", mounts::mount_step(&root, s))?,
            PlannedMount::Cgroup { destination, readonly } => {
                for s in cgroup_mounts(cgroup, destination, *readonly) {
                    step("mounts", mounts::mount_step(&root, &s))?;
                }
            }
        }
    }
    if !plan.devices.is_empty() {
        step("devices", mounts::populate_dev(&root, &plan.devices, plan.user_ns.is_some()))?;
    }
    Ok(())
}

/// A `cgroup` mount shows the container's own cgroup directories: on a pure v2 host the
/// unified directory at the destination; otherwise a tmpfs with one directory per hierarchy
/// (`memory`, `cpu`, …, and `unified`), as runc lays them out.
pub fn cgroup_mounts(cgroup: &Cgroup, destination: &Path, readonly: bool) -> Vec<MountStep> {
    let ro = if readonly { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    let bind = |src: &PathBuf, dest: PathBuf| MountStep {
        destination: dest,
        source: Some(src.clone()),
        fstype: None,
        flags: MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | ro,
        propagation: MsFlags::empty(),
        data: String::new(),
        attrs: Default::default(),
    };
    if cgroup.unified_resources {
        return cgroup.dirs.iter().map(|(_, d)| bind(d, destination.to_path_buf())).collect();
    }
    let mut steps = vec![MountStep {
        destination: destination.to_path_buf(),
        source: Some(PathBuf::from("tmpfs")),
        fstype: Some("tmpfs".into()),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        propagation: MsFlags::empty(),
        data: "mode=755".into(),
        attrs: Default::default(),
    }];
    for (controllers, dir) in &cgroup.dirs {
        let name = if controllers.is_empty() { "unified".to_string() } else { controllers.join(",") };
        steps.push(bind(dir, destination.join(name)));
    }
    steps
}

fn set_domainname(name: &str) -> Result<(), nix::Error> {
    // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call.
    let rc = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    nix::Error::result(rc).map(drop)
}

/// Drops the bounding set while still root, switches user keeping the permitted set, then
/// sets the exact sets the spec lists — the order runc uses.
fn set_user_and_caps(p: &ProcessPlan) -> StepResult {
    if let Some(c) = &p.caps {
        for cap in caps::all() {
            if !c.bounding.contains(&cap) {
                step(
                    "capabilities",
                    caps::drop(None, CapSet::Bounding, cap).map_err(|e| format!("bounding {cap}: {e}")),
                )?;
            }
        }
    }
    step("user", nix::sys::prctl::set_keepcaps(true))?;
    let gids: Vec<nix::unistd::Gid> = p.additional_gids.iter().map(|g| (*g).into()).collect();
    step("user", nix::unistd::setgroups(&gids).map_err(|e| format!("setgroups: {e}")))?;
    step(
        "user",
        nix::unistd::setresgid(p.gid.into(), p.gid.into(), p.gid.into())
            .map_err(|e| format!("setgid {}: {e}", p.gid)),
    )?;
    step(
        "user",
        nix::unistd::setresuid(p.uid.into(), p.uid.into(), p.uid.into())
            .map_err(|e| format!("setuid {}: {e}", p.uid)),
    )?;
    step("user", nix::sys::prctl::set_keepcaps(false))?;
    if let Some(c) = &p.caps {
        for set in [CapSet::Effective, CapSet::Inheritable, CapSet::Permitted] {
            // Effective must stay a subset of permitted at each step, so it shrinks first.
            step("capabilities", caps::set(None, set, c.set(set)).map_err(|e| format!("{set:?}: {e}")))?;
        }
        step("capabilities", caps::clear(None, CapSet::Ambient).map_err(|e| format!("ambient: {e}")))?;
        // The kernel allows an ambient capability only when it is both permitted and
        // inheritable. runc's own default spec lists ambient capabilities without inheritable
        // ones and runc skips them; so does tug-shim, for the same specs to run unchanged.
        for cap in c.ambient.iter().filter(|cap| c.permitted.contains(cap) && c.inheritable.contains(cap)) {
            step(
                "capabilities",
                caps::raise(None, CapSet::Ambient, *cap).map_err(|e| format!("ambient {cap}: {e}")),
            )?;
        }
    }
    Ok(())
}

/// Blocks until `tug-shim start` opens the exec fifo for reading, then resolves the program.
/// `startContainer` hooks run between the two: `start` has begun (the open returned) and does
/// not return before they are done (it waits for the byte).
fn wait_for_start_then_resolve(
    plan: &Plan,
    fifo_fd: RawFd,
    hook_state: Option<&str>,
) -> Result<PathBuf, String> {
    let path = format!("/proc/self/fd/{fifo_fd}");
    let opened = match HOST_PROC.get() {
        Some(proc) => nix::fcntl::openat(
            proc,
            format!("self/fd/{fifo_fd}").as_str(),
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(std::fs::File::from)
        .map_err(std::io::Error::from),
        None => std::fs::OpenOptions::new().write(true).open(&path),
    };
    let mut fifo =
        opened.map_err(|e| format!("opening the exec fifo: {e} (is /proc mounted in the container?)"))?;
    if !plan.hooks.start_container.is_empty() {
        // `start` has begun: the state the spec gives these hooks is "created".
        let state = crate::hooks::with_status(hook_state.unwrap_or_default(), "created");
        crate::hooks::run_all("startContainer", &plan.hooks.start_container, &state)?;
    }
    std::io::Write::write_all(&mut fifo, b"0").map_err(|e| format!("writing the exec fifo: {e}"))?;
    drop(fifo);
    // SAFETY: closing a descriptor this process owns and no longer uses.
    unsafe { libc::close(fifo_fd) };
    resolve(&plan.process.args[0], &plan.process.env)
}

/// Finds the program as `execvp` would, with the container's `PATH`.
pub fn resolve(program: &str, env: &[String]) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if executable(&p) {
            Ok(p)
        } else if p.exists() {
            Err(format!("exec: {program:?}: permission denied"))
        } else {
            Err(format!("exec: {program:?}: no such file or directory"))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("exec: {program:?}: executable file not found in $PATH"))
}

/// Execs the program with the process's arguments and environment, every inherited
/// descriptor above stderr closed on the way.
pub fn exec(program: &Path, p: &ProcessPlan) -> ! {
    let err = try_exec(program, p);
    eprintln!("tug-shim: exec {}: {err}", program.display());
    std::process::exit(127)
}

/// [`exec`] for a caller that waits on `errors`, a close-on-exec pipe: the failure is
/// written there (end-of-file without a word means the program runs).
pub fn exec_with_error_pipe(program: &Path, p: &ProcessPlan, mut errors: std::fs::File) -> ! {
    let err = try_exec(program, p);
    let _ = std::io::Write::write_all(&mut errors, format!("exec: {}: {err}", program.display()).as_bytes());
    std::process::exit(127)
}

/// execve; returns only on failure.
fn try_exec(program: &Path, p: &ProcessPlan) -> nix::Error {
    let cstr = |s: &str| CString::new(s).unwrap_or_default();
    let path = cstr(&program.to_string_lossy());
    let argv: Vec<CString> = p.args.iter().map(|a| cstr(a)).collect();
    let envp: Vec<CString> = p.env.iter().map(|e| cstr(e)).collect();
    close_inherited_fds(p.preserve_fds);
    if let Some(persona) = p.personality {
        // SAFETY: personality(2) only changes this process's execution domain.
        if unsafe { libc::personality(persona as libc::c_ulong) } < 0 {
            return nix::errno::Errno::last();
        }
    }
    match nix::unistd::execve(&path, &argv, &envp) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// Marks every descriptor above stderr close-on-exec — but the `preserve` the caller passed
/// on purpose (`--preserve-fds`) — so no host descriptor reaches the container's program.
fn close_inherited_fds(preserve: u32) {
    let first = 3u32.saturating_add(preserve);
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on this process's fds.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if rc != 0 {
        for fd in i32::try_from(first).unwrap_or(i32::MAX)..1024 {
            // SAFETY: setting FD_CLOEXEC on a possibly-closed descriptor is harmless.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}
