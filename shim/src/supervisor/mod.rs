//! The supervisor: one small process per container that outlives the agent that started it.
//!
//! `tug-shim supervise` forks twice (a new session, re-parented away from the agent), becomes
//! the child subreaper, creates and starts the container from the bundle with its stdout and
//! stderr on pipes, reports "ready" to the caller, and then stays: it writes the container's
//! output to a CRI log file, reaps the container and every orphan, records the exit (code,
//! signal, times, OOM kill) in `status.json`, and answers on `control.sock` (see
//! [`protocol`]). It is single-threaded: one `poll` loop over the pipes, a signalfd for
//! SIGCHLD, the listening socket and its clients.
//!
//! State directory `<state>/<id>/`: `control.sock`, `supervisor.pid`, `status.json` (once the
//! container exited; kept until a client sends `Shutdown`).

pub mod logs;
pub mod protocol;

use crate::runtime::{CreateOptions, Runtime};
use logs::{LineSplitter, LogFile, Stream};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use protocol::{ExitStatus, Reply, Request};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What `tug-shim supervise` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub id: String,
    pub bundle: PathBuf,
    /// The runtime's `--root`.
    pub runtime_root: PathBuf,
    /// Where supervisors keep their directories.
    pub state_root: PathBuf,
    pub log_path: PathBuf,
    pub log_max_size: u64,
    pub log_keep: usize,
    /// Longest log record before a line is split into partial records.
    pub line_max: usize,
}

/// A supervisor directory's control socket.
pub fn socket_path(state_root: &Path, id: &str) -> PathBuf {
    state_root.join(id).join("control.sock")
}

/// Every supervisor directory under `state_root`: `(id, control socket)`. What an agent reads
/// after a restart to find its containers again.
pub fn list(state_root: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(state_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("control.sock").exists() || e.path().join("status.json").exists())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path().join("control.sock"))))
        .collect();
    out.sort();
    out
}

/// The recorded exit of a container whose supervisor is gone (or still running).
pub fn recorded_exit(state_root: &Path, id: &str) -> Option<ExitStatus> {
    let bytes = std::fs::read(state_root.join(id).join("status.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Starts a supervisor and waits until it says the container runs. Returns its pid.
pub fn launch(opts: &Options) -> Result<i32, String> {
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: this process is single-threaded here (the CLI calls launch before anything
    // else), so the child may do anything after fork.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(ready_w);
            let mut answer = String::new();
            let _ = std::fs::File::from(ready_r).read_to_string(&mut answer);
            let _ = waitpid(child, None);
            match answer.trim().split_once(' ') {
                Some(("ok", pid)) => pid.parse().map_err(|_| format!("supervisor said {answer:?}")),
                Some(("error", msg)) => Err(msg.to_string()),
                _ => Err("the supervisor exited before it was ready".into()),
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(ready_r);
            let _ = nix::unistd::setsid();
            // SAFETY: still single-threaded; the intermediate process exits at once.
            match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Child) => supervise(opts, ready_w),
                _ => std::process::exit(0),
            }
        }
    }
}

fn fail(ready: &mut std::fs::File, msg: &str) -> ! {
    let _ = writeln!(ready, "error {msg}");
    std::process::exit(1)
}

fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// The supervisor process. Never returns.
fn supervise(opts: &Options, ready: OwnedFd) -> ! {
    let mut ready = std::fs::File::from(ready);
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let _ = nix::unistd::chdir("/");
    let dir = opts.state_root.join(&opts.id);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        fail(&mut ready, &format!("{}: {e}", dir.display()));
    }
    let sock = dir.join("control.sock");
    if sock.exists() {
        if UnixStream::connect(&sock).is_ok() {
            fail(&mut ready, &format!("a supervisor for {} is already running", opts.id));
        }
        // Stale: its supervisor died without cleaning up.
        let _ = std::fs::remove_file(&sock);
    }
    let _ = std::fs::remove_file(dir.join("status.json"));
    let _ = std::fs::write(dir.join("supervisor.pid"), std::process::id().to_string());
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGPIPE);
    let _ = mask.thread_block();
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .unwrap_or_else(|e| fail(&mut ready, &format!("signalfd: {e}")));
    let mut log = LogFile::open(&opts.log_path, opts.log_max_size, opts.log_keep)
        .unwrap_or_else(|e| fail(&mut ready, &format!("log {}: {e}", opts.log_path.display())));
    let (out_r, err_r) = match start_container(opts) {
        Ok(p) => p,
        Err(e) => fail(&mut ready, &e),
    };
    let rt = Runtime::new(&opts.runtime_root);
    let (_, state, _) = rt.load(&opts.id).unwrap_or_else(|e| fail(&mut ready, &e.to_string()));
    let listener =
        UnixListener::bind(&sock).unwrap_or_else(|e| fail(&mut ready, &format!("{}: {e}", sock.display())));
    let _ = listener.set_nonblocking(true);
    let _ = writeln!(ready, "ok {}", std::process::id());
    drop(ready);
    let mut s = Supervisor {
        opts: opts.clone(),
        rt,
        pid: state.pid,
        cgroup: state.cgroup,
        started_at: now(),
        exit: None,
        waiters: Vec::new(),
        shutdown: false,
        dir,
    };
    s.run(&sfd, &listener, out_r, err_r, &mut log);
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_dir_all(&s.dir);
    std::process::exit(0)
}

/// Creates and starts the container with its stdout and stderr on pipes; returns the read
/// ends. The container inherits this process's descriptors 1 and 2, so they point at the
/// pipes during `create` and at /dev/null afterwards: only the container holds the write
/// ends, and the pipes close when its last process does.
fn start_container(opts: &Options) -> Result<(OwnedFd, OwnedFd), String> {
    let (out_r, out_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    let dup = |from: &dyn AsRawFd, to: i32| {
        // SAFETY: dup2 onto a standard descriptor number this process owns.
        unsafe { libc::dup2(from.as_raw_fd(), to) }
    };
    dup(&null, 0);
    dup(&out_w, 1);
    dup(&err_w, 2);
    drop((out_w, err_w));
    let rt = Runtime::new(&opts.runtime_root);
    let created = rt.create(
        &opts.id,
        &CreateOptions { bundle: opts.bundle.clone(), pid_file: None, console_socket: None },
    );
    dup(&null, 1);
    // The supervisor's own complaints (a panic, say) go to a file beside its socket.
    let own_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(opts.state_root.join(&opts.id).join("supervisor.log"));
    match &own_log {
        Ok(f) => dup(f, 2),
        Err(_) => dup(&null, 2),
    };
    created.map_err(|e| e.to_string())?;
    if let Err(e) = rt.start(&opts.id) {
        let _ = rt.delete(&opts.id, true);
        return Err(e.to_string());
    }
    Ok((out_r, err_r))
}

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

struct Supervisor {
    opts: Options,
    rt: Runtime,
    pid: i32,
    cgroup: crate::cgroups::Cgroup,
    started_at: String,
    exit: Option<ExitStatus>,
    waiters: Vec<UnixStream>,
    shutdown: bool,
    dir: PathBuf,
}

impl Supervisor {
    fn run(
        &mut self,
        sfd: &SignalFd,
        listener: &UnixListener,
        out_r: OwnedFd,
        err_r: OwnedFd,
        log: &mut LogFile,
    ) {
        let mut pipes: Vec<(Stream, Option<OwnedFd>, LineSplitter)> = vec![
            (Stream::Stdout, Some(out_r), LineSplitter::new(self.opts.line_max)),
            (Stream::Stderr, Some(err_r), LineSplitter::new(self.opts.line_max)),
        ];
        let mut clients: Vec<Client> = Vec::new();
        loop {
            // A container whose status was collected and whose output is drained: done.
            if self.shutdown && self.exit.is_some() && pipes.iter().all(|p| p.1.is_none()) {
                return;
            }
            let (nready, revents) = {
                let mut fds: Vec<PollFd> = vec![
                    PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                ];
                for (_, fd, _) in &pipes {
                    if let Some(fd) = fd {
                        fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    }
                }
                for c in &clients {
                    fds.push(PollFd::new(c.stream.as_fd(), PollFlags::POLLIN));
                }
                let n = poll(&mut fds, PollTimeout::NONE).unwrap_or(0);
                (n, fds.iter().map(|f| f.revents().unwrap_or(PollFlags::empty())).collect::<Vec<_>>())
            };
            if nready == 0 {
                continue;
            }
            let ready =
                |f: PollFlags| f.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR);
            if ready(revents[0]) {
                while sfd.read_signal().ok().flatten().is_some() {}
                self.reap();
            }
            // New connections join the poll set next round; `revents` covers only this one's.
            let mut accepted = Vec::new();
            if ready(revents[1]) {
                while let Ok((stream, _)) = listener.accept() {
                    let _ = stream.set_nonblocking(true);
                    accepted.push(Client { stream, buf: Vec::new() });
                }
            }
            let mut i = 2;
            for (stream, fd, splitter) in pipes.iter_mut() {
                if fd.is_none() {
                    continue;
                }
                if ready(revents[i]) {
                    let mut buf = [0u8; 8192];
                    let n = fd.as_ref().map_or(Ok(0), |f| nix::unistd::read(f, &mut buf)).unwrap_or(0);
                    let stamp = SystemTime::now();
                    for (partial, content) in splitter.feed(&buf[..n]) {
                        let _ = log.write_record(&logs::record(stamp, *stream, partial, &content));
                    }
                    if n == 0 {
                        if let Some((p, content)) = splitter.finish() {
                            let _ = log.write_record(&logs::record(stamp, *stream, p, &content));
                        }
                        *fd = None;
                    }
                }
                i += 1;
            }
            let mut keep = Vec::with_capacity(clients.len());
            for (k, mut c) in clients.drain(..).enumerate() {
                if !ready(revents[i + k]) {
                    keep.push(c);
                    continue;
                }
                if self.serve(&mut c) {
                    keep.push(c);
                }
            }
            keep.extend(accepted);
            clients = keep;
        }
    }

    /// Reaps every exited child; the container's init ends the container.
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid.as_raw() == self.pid => self.exited(code, None),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid.as_raw() == self.pid => {
                    self.exited(128 + sig as i32, Some(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    fn exited(&mut self, code: i32, signal: Option<i32>) {
        // The OOM count lives in the cgroup: read it before the runtime removes the cgroup.
        let oom_killed = self.cgroup.oom_kills() > 0;
        let _ = self.rt.delete(&self.opts.id, true);
        let status =
            ExitStatus { code, signal, oom_killed, started_at: self.started_at.clone(), finished_at: now() };
        if let Ok(bytes) = serde_json::to_vec_pretty(&status) {
            let tmp = self.dir.join(".status.json.tmp");
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, self.dir.join("status.json"));
            }
        }
        for mut w in self.waiters.drain(..) {
            let _ = w.set_nonblocking(false);
            let _ = protocol::send(&mut w, &Reply::Exited(status.clone()));
        }
        self.exit = Some(status);
    }

    /// Handles what a client sent; false when the connection is done.
    fn serve(&mut self, c: &mut Client) -> bool {
        let mut buf = [0u8; 4096];
        match c.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => c.buf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
        while let Some(nl) = c.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = c.buf.drain(..=nl).collect();
            let reply = match serde_json::from_slice::<Request>(&line) {
                Ok(Request::Wait) if self.exit.is_none() => {
                    if let Ok(w) = c.stream.try_clone() {
                        self.waiters.push(w);
                    }
                    continue;
                }
                Ok(req) => self.answer(req),
                Err(e) => Reply::Error { message: format!("bad request: {e}") },
            };
            let _ = c.stream.set_nonblocking(false);
            let sent = protocol::send(&mut c.stream, &reply).is_ok();
            let _ = c.stream.set_nonblocking(true);
            if !sent {
                return false;
            }
        }
        true
    }

    fn answer(&mut self, req: Request) -> Reply {
        let err = |m: String| Reply::Error { message: m };
        match req {
            Request::Hello { version } if version == protocol::VERSION => {
                Reply::Hello { version, id: self.opts.id.clone(), pid: self.pid }
            }
            Request::Hello { version } => {
                err(format!("protocol version {version} is not {}", protocol::VERSION))
            }
            Request::State => Reply::State {
                status: if self.exit.is_some() { "stopped".into() } else { "running".into() },
                pid: self.pid,
                started_at: self.started_at.clone(),
                exit: self.exit.clone(),
            },
            Request::Wait => self.exit.clone().map_or_else(|| err("not exited".into()), Reply::Exited),
            Request::Kill { signal, all } => {
                if self.exit.is_some() {
                    return err("container not running".into());
                }
                let Ok(sig) = Signal::try_from(signal) else {
                    return err(format!("invalid signal {signal}"));
                };
                if all && sig == Signal::SIGKILL {
                    self.cgroup.kill_all();
                    return Reply::Ok;
                }
                let targets = if all { self.cgroup.pids() } else { vec![self.pid] };
                for p in targets {
                    let _ = nix::sys::signal::kill(Pid::from_raw(p), sig);
                }
                Reply::Ok
            }
            Request::Stats => Reply::Stats(self.cgroup.stats()),
            Request::Update { resources } => self.update(resources).map_or_else(err, |()| Reply::Ok),
            Request::Shutdown if self.exit.is_none() => {
                err("the container is still running: kill it first".into())
            }
            Request::Shutdown => {
                self.shutdown = true;
                Reply::Ok
            }
        }
    }

    fn update(&self, resources: serde_json::Value) -> Result<(), String> {
        if self.exit.is_some() {
            return Err("container not running".into());
        }
        let res: oci_spec::runtime::LinuxResources =
            serde_json::from_value(resources).map_err(|e| format!("linux.resources: {e}"))?;
        let writes = crate::cgroups::resources::writes(&res, self.cgroup.unified_resources)
            .map_err(|e| e.to_string())?;
        self.cgroup.apply(&writes).map_err(|e| e.to_string())
    }
}
