//! `exec`: a new process in a running container, exactly as confined as its init — every
//! namespace the container has, its cgroup, and the process settings (user, capabilities,
//! no_new_privs, rlimits, seccomp) of the process spec given.
//!
//! ```text
//!   caller                       intermediate (fork)                exec'd process
//!   ──────                       ───────────────────                ──────────────
//!   opens /proc/<init>/ns/*
//!   fork ──────────────────────► not dumpable; joins the v1 cgroups,
//!                                setns into every namespace
//!                                clone3(CLONE_PARENT, ────────────► (a child of the caller,
//!                                  into the unified cgroup)
//!                                writes its pid, exits               in the pid namespace)
//!   reads the pid, reaps the                                        terminal, rlimits, user,
//!   intermediate                                                    caps, nnp, cwd; execve
//!   reads the error pipe: EOF at execve = started, or the failed step
//! ```
//!
//! `CLONE_PARENT` makes the exec'd process the caller's own child, so `tug-shim exec` and the
//! supervisor wait for it directly.

use super::{Runtime, RuntimeError};
use crate::init;
use crate::state::Status;
use nix::fcntl::{OFlag, open};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Process};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

/// The namespaces an exec'd process joins, in the order it joins them: the mount namespace
/// last, since paths above it are the host's.
const ORDER: [(LinuxNamespaceType, &str, i32); 8] = [
    // The user namespace first: it owns the others, and joining it gives the capabilities
    // that joining them needs.
    (LinuxNamespaceType::User, "user", libc::CLONE_NEWUSER),
    (LinuxNamespaceType::Cgroup, "cgroup", libc::CLONE_NEWCGROUP),
    (LinuxNamespaceType::Ipc, "ipc", libc::CLONE_NEWIPC),
    (LinuxNamespaceType::Uts, "uts", libc::CLONE_NEWUTS),
    (LinuxNamespaceType::Network, "net", libc::CLONE_NEWNET),
    (LinuxNamespaceType::Pid, "pid", libc::CLONE_NEWPID),
    (LinuxNamespaceType::Time, "time", libc::CLONE_NEWTIME),
    (LinuxNamespaceType::Mount, "mnt", libc::CLONE_NEWNS),
];

impl Runtime {
    /// The container's own process spec, the template `exec` fills in from its flags.
    pub fn process_template(&self, id: &str) -> Result<Process, RuntimeError> {
        let (_, state, _) = self.load(id)?;
        let spec = load_spec(&state.bundle)?;
        Ok(spec.process().clone().unwrap_or_default())
    }

    /// Starts `process` in the container and returns its pid (a child of this process). Its
    /// stdio is `stdio` (stdin, stdout, stderr) or else this process's, or the terminal whose
    /// master goes to `console`.
    pub fn exec_spawn(
        &self,
        id: &str,
        process: &Process,
        console: Option<OwnedFd>,
        stdio: Option<[OwnedFd; 3]>,
    ) -> Result<i32, RuntimeError> {
        let (_, state, status) = self.load(id)?;
        if status == Status::Stopped {
            return Err(RuntimeError::Usage("cannot exec in a stopped container".into()));
        }
        let plan = crate::plan::process(process)?;
        super::create::console_rule(console.is_some(), plan.terminal, "--tty")?;
        let spec = load_spec(&state.bundle)?;
        // The container's filter applies to every process in it.
        let seccomp = spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
            .map(crate::seccomp::plan)
            .transpose()?
            .map(|s| crate::seccomp::prepare(&s, Some(&self.root.join("seccomp"))))
            .transpose()
            .map_err(RuntimeError::Usage)?;
        let listed: Vec<LinuxNamespaceType> = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .iter()
            .map(|n| n.typ())
            .collect();
        let mut join: Vec<(CloneFlags, OwnedFd)> = Vec::new();
        for (typ, name, flag) in ORDER {
            if !listed.contains(&typ) {
                continue;
            }
            let path = format!("/proc/{}/ns/{name}", state.pid);
            let fd = open(path.as_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(RuntimeError::sys(path))?;
            join.push((CloneFlags::from_bits_retain(flag), fd));
        }
        // The exec'd process is born in the container's unified cgroup directory (see
        // super::clone); the intermediate moves itself into the v1 ones.
        let unified = state
            .cgroup
            .unified_dir()
            .map(|d| {
                open(d, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                    .map_err(RuntimeError::sys(format!("cgroup {}", d.display())))
            })
            .transpose()?;
        let (pid_r, pid_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(RuntimeError::sys("pipe"))?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(RuntimeError::sys("pipe"))?;
        // SAFETY: the child only makes syscalls and small allocations before it execs or exits;
        // the callers (the CLI and the supervisor) are single-threaded.
        match unsafe { nix::unistd::fork() }.map_err(RuntimeError::sys("fork"))? {
            nix::unistd::ForkResult::Child => {
                drop((pid_r, err_r));
                let _ = nix::sys::prctl::set_dumpable(false);
                let mut err_w = std::fs::File::from(err_w);
                let fail = |w: &mut std::fs::File, step: &str, msg: String| -> ! {
                    let _ = write!(w, "{step}: {msg}");
                    std::process::exit(1)
                };
                for (target, fd) in stdio.iter().flatten().enumerate() {
                    // SAFETY: dup2 onto a standard descriptor number this process owns.
                    unsafe {
                        libc::dup2(std::os::fd::AsRawFd::as_raw_fd(fd), i32::try_from(target).unwrap_or(0))
                    };
                }
                drop(stdio);
                if let Err(e) = state.cgroup.join_v1() {
                    fail(&mut err_w, "cgroup", e.to_string());
                }
                for (flag, fd) in &join {
                    if let Err(e) = nix::sched::setns(fd, *flag) {
                        fail(&mut err_w, "join namespace", format!("{flag:?}: {e}"));
                    }
                }
                drop(join);
                let flags = u64::try_from(libc::CLONE_PARENT).unwrap_or(0);
                let child = match super::clone::fork_into(flags, unified.as_ref().map(AsFd::as_fd)) {
                    Ok((0, false)) => {
                        // Not born in the unified directory (no clone3): moves itself, through
                        // the directory opened on the host's side.
                        if let Err(e) = unified.as_ref().map_or(Ok(()), join_procs) {
                            fail(&mut err_w, "cgroup", e.to_string());
                        }
                        0
                    }
                    Ok((c, _)) => c,
                    Err(e) => fail(&mut err_w, "clone", e.to_string()),
                };
                drop(unified);
                if child != 0 {
                    let _ = std::fs::File::from(pid_w).write_all(child.to_string().as_bytes());
                    // SAFETY: _exit skips atexit handlers and buffers that belong to the caller.
                    unsafe { libc::_exit(0) };
                }
                drop(pid_w);
                match init::process_steps(&plan, console.as_ref(), seccomp.as_ref()) {
                    Ok(program) => {
                        drop(console);
                        if let (true, Some(f)) = (plan.no_new_privs, &seccomp) {
                            if let Err(e) = f.load() {
                                fail(&mut err_w, "seccomp", e.to_string());
                            }
                        }
                        // The error pipe is close-on-exec: its end-of-file tells the caller
                        // the program runs.
                        let _ = nix::sys::prctl::set_dumpable(false);
                        init::exec_with_error_pipe(&program, &plan, err_w)
                    }
                    Err((step, msg)) => fail(&mut err_w, step, msg),
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop((pid_w, err_w, console, join, stdio));
                let mut text = String::new();
                let _ = std::fs::File::from(pid_r).read_to_string(&mut text);
                let _ = waitpid(child, None);
                let mut err = String::new();
                let _ = std::fs::File::from(err_r).read_to_string(&mut err);
                let pid: Option<i32> = text.trim().parse().ok();
                if !err.is_empty() {
                    if let Some(p) = pid {
                        let _ = waitpid(Pid::from_raw(p), None);
                    }
                    let (step, message) = err.split_once(": ").unwrap_or(("exec", &err));
                    return Err(RuntimeError::Exec { step: step.into(), message: message.into() });
                }
                pid.ok_or_else(|| RuntimeError::Usage("exec: the process did not start".into()))
            }
        }
    }
}

fn load_spec(bundle: &std::path::Path) -> Result<oci_spec::runtime::Spec, RuntimeError> {
    let path = bundle.join("config.json");
    crate::plan::load_spec(&path)
}

/// Moves the calling process into the cgroup directory `dir` (open on the host's side).
fn join_procs(dir: &OwnedFd) -> nix::Result<()> {
    let fd = nix::fcntl::openat(dir, "cgroup.procs", OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    nix::unistd::write(&fd, b"0").map(drop)
}

/// What `exec`'s flags change in the container's process spec (runc's rules: the command
/// replaces the arguments, `--env` adds to the environment, `--cap` adds to the bounding,
/// effective and permitted sets).
#[derive(Debug, Clone, Default)]
pub struct ExecOverrides {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<std::path::PathBuf>,
    /// `UID[:GID]`.
    pub user: Option<String>,
    pub additional_gids: Vec<u32>,
    pub tty: bool,
    pub no_new_privs: bool,
    pub caps: Vec<String>,
}

/// The process `exec` runs: the container's own with the flags applied. Pure.
pub fn exec_process(template: Process, o: &ExecOverrides) -> Result<Process, RuntimeError> {
    if o.args.is_empty() {
        return Err(RuntimeError::Usage("exec: no command given (after the container id)".into()));
    }
    let usage = |m: String| RuntimeError::Usage(m);
    let mut v = serde_json::to_value(template).map_err(|e| usage(e.to_string()))?;
    v["args"] = serde_json::json!(o.args);
    v["terminal"] = serde_json::json!(o.tty);
    if !o.env.is_empty() {
        let mut env: Vec<String> = serde_json::from_value(v["env"].take()).unwrap_or_default();
        for e in &o.env {
            let Some((name, _)) = e.split_once('=') else {
                return Err(usage(format!("--env {e:?}: expected NAME=VALUE")));
            };
            env.retain(|old| old.split_once('=').map(|(n, _)| n) != Some(name));
            env.push(e.clone());
        }
        v["env"] = serde_json::json!(env);
    }
    if let Some(cwd) = &o.cwd {
        v["cwd"] = serde_json::json!(cwd);
    }
    if let Some(user) = &o.user {
        let (uid, gid) = user.split_once(':').map_or((user.as_str(), None), |(u, g)| (u, Some(g)));
        let num =
            |s: &str| s.parse::<u32>().map_err(|_| usage(format!("--user {user:?}: expected UID[:GID]")));
        v["user"]["uid"] = serde_json::json!(num(uid)?);
        v["user"]["gid"] = serde_json::json!(gid.map(num).transpose()?.unwrap_or(0));
    }
    if !o.additional_gids.is_empty() {
        v["user"]["additionalGids"] = serde_json::json!(o.additional_gids);
    }
    if o.no_new_privs {
        v["noNewPrivileges"] = serde_json::json!(true);
    }
    if v.get("capabilities").is_none_or(serde_json::Value::is_null) && !o.caps.is_empty() {
        v["capabilities"] = serde_json::json!({});
    }
    for cap in &o.caps {
        let name = if cap.starts_with("CAP_") {
            cap.to_ascii_uppercase()
        } else {
            format!("CAP_{}", cap.to_ascii_uppercase())
        };
        for set in ["bounding", "effective", "permitted"] {
            let list = &mut v["capabilities"][set];
            if list.is_null() {
                *list = serde_json::json!([]);
            }
            if let Some(a) = list.as_array_mut() {
                if !a.contains(&serde_json::json!(name)) {
                    a.push(serde_json::json!(name));
                }
            }
        }
    }
    serde_json::from_value(v).map_err(|e| usage(format!("exec: {e}")))
}

/// Waits for a child and returns its exit code as a shell reports it.
pub fn wait_exit(pid: i32) -> Result<i32, RuntimeError> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(RuntimeError::Sys { what: "waitpid".into(), errno: e }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Process {
        serde_json::from_value(serde_json::json!({
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/bin", "A=1"],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}
        }))
        .unwrap()
    }

    #[test]
    fn flags_fill_in_the_container_process() {
        let p = exec_process(
            template(),
            &ExecOverrides {
                args: vec!["id".into(), "-u".into()],
                env: vec!["A=2".into(), "B=3".into()],
                cwd: Some("/tmp".into()),
                user: Some("1000:1001".into()),
                tty: true,
                caps: vec!["net_admin".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["args"], serde_json::json!(["id", "-u"]));
        assert_eq!(v["env"], serde_json::json!(["PATH=/bin", "A=2", "B=3"]));
        assert_eq!(v["cwd"], "/tmp");
        assert_eq!((v["user"]["uid"].clone(), v["user"]["gid"].clone()), (1000.into(), 1001.into()));
        assert_eq!(v["terminal"], true);
        let bounding = v["capabilities"]["bounding"].as_array().unwrap();
        assert!(bounding.contains(&"CAP_NET_ADMIN".into()) && bounding.contains(&"CAP_KILL".into()));
    }

    #[test]
    fn bad_flags_are_named() {
        let e = |o: ExecOverrides| exec_process(template(), &o).unwrap_err().to_string();
        assert!(e(ExecOverrides::default()).contains("no command"));
        let args = vec!["x".to_string()];
        assert!(
            e(ExecOverrides { args: args.clone(), user: Some("bob".into()), ..Default::default() })
                .contains("--user \"bob\"")
        );
        assert!(
            e(ExecOverrides { args: args.clone(), env: vec!["NOEQ".into()], ..Default::default() })
                .contains("--env \"NOEQ\"")
        );
        assert!(
            e(ExecOverrides { args, caps: vec!["bogus".into()], ..Default::default() }).contains("exec:")
        );
    }
}
