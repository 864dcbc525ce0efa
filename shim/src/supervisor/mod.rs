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
//!
//! Exec'd processes are the supervisor's children too (the runtime clones them with
//! `CLONE_PARENT`); each has a session — the client connection that asked for it, the
//! process's stdio pipes or terminal master — served by the same loop. Attached clients are
//! sessions on the container's own stdio.

pub mod logs;
pub mod pause;
pub mod protocol;

use logs::{LineSplitter, LogFile, Stream};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use protocol::{ExitStatus, Reply, Request, frame};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What `tug-shim supervise` was asked to do.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    /// Keep the container's stdin open (a pipe, or its terminal) for attached clients.
    pub stdin: bool,
    /// The `tug-shim` binary the supervisor runs (and beside which `tug-supervisor` lives).
    pub shim: PathBuf,
    /// A `cgroup.procs` the supervisor moves itself into before anything else (the agent's
    /// supervisors' cgroup on a pure v2 host); None stays in the caller's.
    #[serde(default)]
    pub join_cgroup: Option<PathBuf>,
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
///
/// The supervisor is its own small program, `tug-supervisor`, installed beside `tug-shim`:
/// it never links the runtime's setup code (spec parsing, mounts, seccomp) but runs
/// `tug-shim run --detach`, `exec`, `update` and `delete` as short-lived children, as
/// containerd's shims run runc — so an idle supervisor's resident set is the loop's alone.
///
/// Safe to call from a multi-threaded process (the agent): the program is spawned as any
/// other (no code runs between fork and exec), and detaches itself (a new session, a second
/// fork) before it says it is ready on its stdout, a pipe read here to its end.
pub fn launch(opts: &Options) -> Result<i32, String> {
    let program = opts.shim.with_file_name("tug-supervisor");
    if !program.is_file() {
        return Err(format!("{} not found: it is installed beside tug-shim", program.display()));
    }
    let json = serde_json::to_string(opts).map_err(|e| e.to_string())?;
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let mut child = {
        // The command owns the pipe's write end: it goes with the command, so that the read
        // below ends when the supervisor closes its copy.
        let mut cmd = std::process::Command::new(&program);
        cmd.arg(&json)
            .arg("1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(ready_w))
            .stderr(std::process::Stdio::null());
        cmd.spawn().map_err(|e| format!("{}: {e}", program.display()))?
    };
    let mut answer = String::new();
    let _ = std::fs::File::from(ready_r).read_to_string(&mut answer);
    // The first process exits as soon as it forked the supervisor.
    let _ = child.wait();
    match answer.trim().split_once(' ') {
        Some(("ok", pid)) => pid.parse().map_err(|_| format!("supervisor said {answer:?}")),
        Some(("error", msg)) => Err(msg.to_string()),
        _ => Err("the supervisor exited before it was ready".into()),
    }
}

fn fail(ready: &mut std::fs::File, msg: &str) -> ! {
    let _ = writeln!(ready, "error {msg}");
    std::process::exit(1)
}

fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// `tug-supervisor OPTIONS-JSON READY-FD`: the supervisor process. Never returns.
pub fn serve(options: &str, ready_fd: &str) -> ! {
    let Ok(fd) = ready_fd.parse::<i32>() else {
        eprintln!("tug-supervisor is started by `tug-shim supervise`, not by hand");
        std::process::exit(2)
    };
    // SAFETY: `launch` left this descriptor open for us under this number.
    let given = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // Moved above the standard descriptors, which are /dev/null's below (the one given closes).
    let ready = match nix::fcntl::fcntl(&given, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)) {
        // SAFETY: the copy just made, owned by nothing else.
        Ok(moved) => unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(moved) },
        Err(_) => given,
    };
    let fd = ready.as_raw_fd();
    let mut ready = std::fs::File::from(ready);
    let _ = nix::fcntl::fcntl(&ready, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    let opts: Options = match serde_json::from_str(options) {
        Ok(o) => o,
        Err(e) => fail(&mut ready, &format!("bad options: {e}")),
    };
    // Out of the caller's cgroup first, so that the container's processes start outside it.
    if let Some(procs) = &opts.join_cgroup
        && let Err(e) = std::fs::write(procs, "0")
    {
        fail(&mut ready, &format!("joining {}: {e}", procs.display()));
    }
    // Away from the caller: a session of its own, and (after the fork) no longer its child
    // but the nearest subreaper's or init's, never a session leader.
    let _ = nix::unistd::setsid();
    // SAFETY: single-threaded; the first process exits at once without running anything.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {}
        // SAFETY: _exit ends the first process without running anything more of it.
        Ok(nix::unistd::ForkResult::Parent { .. }) => unsafe { libc::_exit(0) },
        Err(e) => fail(&mut ready, &format!("fork: {e}")),
    }
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let _ = nix::unistd::chdir("/");
    // Detached from the caller: no descriptor of its own (its stdout may be a pipe someone
    // reads to the end) stays open here.
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        dup2(&null, 0);
        dup2(&null, 1);
        dup2(&null, 2);
    }
    close_stray_fds(fd);
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
    // Our own complaints (a panic, say) go to a file beside the socket.
    if let Ok(f) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("supervisor.log")) {
        dup2(&f, 2);
    }
    let shim = Shim {
        binary: opts.shim.clone(),
        root: opts.runtime_root.clone(),
        dir: dir.clone(),
        id: opts.id.clone(),
    };
    let (io, pid, cgroup) = match start_container(&opts, &shim) {
        Ok(started) => started,
        Err(e) => fail(&mut ready, &e),
    };
    let listener =
        UnixListener::bind(&sock).unwrap_or_else(|e| fail(&mut ready, &format!("{}: {e}", sock.display())));
    let _ = listener.set_nonblocking(true);
    let _ = writeln!(ready, "ok {}", std::process::id());
    drop(ready);
    let mut s = Supervisor {
        opts,
        shim,
        pid,
        cgroup,
        started_at: now(),
        exit: None,
        waiters: Vec::new(),
        shutdown: false,
        dir,
        main: io,
        sessions: Vec::new(),
        execs: 0,
    };
    s.run(&sfd, &listener, &mut log);
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_dir_all(&s.dir);
    std::process::exit(0)
}

/// Closes every descriptor above stderr but `keep`.
fn close_stray_fds(keep: i32) {
    let keep = u32::try_from(keep).unwrap_or(0);
    for (first, last) in [(3, keep.saturating_sub(1)), (keep + 1, u32::MAX)] {
        if first <= last {
            // SAFETY: closes descriptors inherited from the caller that nothing here owns.
            unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        }
    }
}

/// How the supervisor runs `tug-shim`: with the runtime's root, and errors in a JSON log it
/// reads back (the command's own stderr may be the container's).
struct Shim {
    binary: PathBuf,
    root: PathBuf,
    dir: PathBuf,
    id: String,
}

impl Shim {
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root).arg("--log").arg(self.dir.join("runtime.log"));
        cmd.args(["--log-format", "json"]).args(args);
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        cmd.stderr(std::process::Stdio::null());
        cmd
    }

    /// Runs a prepared command to its end; a failure carries the runtime's own message.
    fn run(&self, mut cmd: std::process::Command) -> Result<(), String> {
        let _ = std::fs::remove_file(self.dir.join("runtime.log"));
        let status = cmd.status().map_err(|e| format!("{}: {e}", self.binary.display()))?;
        if status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.join("runtime.log")).unwrap_or_default();
        let msg = log.lines().rev().find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).ok()?["msg"].as_str().map(str::to_string)
        });
        Err(msg.unwrap_or_else(|| format!("tug-shim {status}")))
    }

    fn delete(&self) {
        let _ = self.run(self.command(&["delete", "--force", &self.id]));
    }
}

/// The container's own stdio as the supervisor holds it.
struct MainIo {
    /// stdout and stderr pipes, or the terminal's master as stdout.
    outputs: Vec<Output>,
    /// The write end of its stdin (a pipe, or a copy of the terminal's master), if kept open.
    stdin: Option<OwnedFd>,
    /// The terminal's master, for resizing.
    pty: Option<OwnedFd>,
}

/// One output stream being read.
struct Output {
    stream: Stream,
    fd: Option<OwnedFd>,
    splitter: LineSplitter,
}

impl Output {
    fn new(stream: Stream, fd: OwnedFd, line_max: usize) -> Output {
        Output { stream, fd: Some(fd), splitter: LineSplitter::new(line_max) }
    }
}

fn frame_kind(s: Stream) -> u8 {
    match s {
        Stream::Stdout => frame::STDOUT,
        Stream::Stderr => frame::STDERR,
    }
}

fn dup2(from: &dyn AsRawFd, to: i32) {
    // SAFETY: dup2 onto a standard descriptor number this process owns.
    unsafe { libc::dup2(from.as_raw_fd(), to) };
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

fn set_nonblocking(fd: &OwnedFd) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
}

/// Takes a terminal master sent to a console socket bound at `path`.
fn receive_master(listener: &UnixListener) -> Result<OwnedFd, String> {
    let (conn, _) = listener.accept().map_err(|e| format!("console socket: {e}"))?;
    crate::terminal::recv_fd(conn.as_raw_fd()).map(|(fd, _)| fd)
}

fn bind_console(path: &Path) -> Result<UnixListener, String> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// `tug-shim run --detach` (create and start in one process), with the container's stdout
/// and stderr on pipes (or its terminal's master from a console socket). The init inherits
/// the pipes' write ends; once `tug-shim` exits only the container holds them, and the pipes
/// close when its last process does. The init is re-parented to this process, the
/// subreaper. Returns the stdio, the init's pid and its cgroup.
fn start_container(opts: &Options, shim: &Shim) -> Result<(MainIo, i32, crate::cgroups::Cgroup), String> {
    let config = opts.bundle.join("config.json");
    // Only `process.terminal` matters here: typed, so serde skips the rest unparsed.
    #[derive(serde::Deserialize)]
    struct Spec {
        process: Option<SpecProcess>,
    }
    #[derive(serde::Deserialize)]
    struct SpecProcess {
        terminal: Option<bool>,
    }
    let spec: Spec = std::fs::read(&config)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("{}: cannot read the spec", config.display()))?;
    let terminal = spec.process.and_then(|p| p.terminal).unwrap_or(false);
    let pid_file = shim.dir.join("init.pid");
    let bundle = opts.bundle.display().to_string();
    let pid_arg = pid_file.display().to_string();
    let mut io = MainIo { outputs: Vec::new(), stdin: None, pty: None };
    let mut cmd;
    let mut console = None;
    if terminal {
        let path = shim.dir.join("console.sock");
        console = Some(bind_console(&path)?);
        let path = path.display().to_string();
        cmd = shim.command(&[
            "run",
            "--detach",
            "--bundle",
            &bundle,
            "--pid-file",
            &pid_arg,
            "--console-socket",
            &path,
            &shim.id,
        ]);
    } else {
        cmd = shim.command(&["run", "--detach", "--bundle", &bundle, "--pid-file", &pid_arg, &shim.id]);
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        cmd.stdout(out_w).stderr(err_w);
        io.outputs.push(Output::new(Stream::Stdout, out_r, opts.line_max));
        io.outputs.push(Output::new(Stream::Stderr, err_r, opts.line_max));
        if opts.stdin {
            let (in_r, in_w) = pipe()?;
            cmd.stdin(in_r);
            set_nonblocking(&in_w);
            io.stdin = Some(in_w);
        }
    }
    // The command (and with it our copies of the write ends) is gone after this.
    shim.run(cmd)?;
    let _ = std::fs::remove_file(shim.dir.join("console.sock"));
    if let Some(listener) = console {
        let master = receive_master(&listener).inspect_err(|_| shim.delete())?;
        let copy = |m: &OwnedFd| m.try_clone().map_err(|e| format!("dup: {e}"));
        io.outputs.push(Output::new(Stream::Stdout, copy(&master)?, opts.line_max));
        if opts.stdin {
            io.stdin = Some(copy(&master)?);
        }
        set_nonblocking(&master);
        io.pty = Some(master);
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| format!("{}: no pid", pid_file.display()))?;
    let _ = std::fs::remove_file(&pid_file);
    let state = opts.runtime_root.join(&opts.id).join("state.json");
    #[derive(serde::Deserialize)]
    struct State {
        cgroup: crate::cgroups::Cgroup,
    }
    let cgroup = std::fs::read(&state)
        .ok()
        .and_then(|b| serde_json::from_slice::<State>(&b).ok())
        .map(|s| s.cgroup)
        .ok_or_else(|| format!("{}: no cgroup", state.display()));
    let cgroup = cgroup.inspect_err(|_| shim.delete())?;
    Ok((io, pid, cgroup))
}

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// A streaming connection: an exec'd process's stdio, or an attachment to the container's.
struct Session {
    client: Option<UnixStream>,
    inbuf: Vec<u8>,
    /// Input not yet taken by the process's stdin (the client is not read meanwhile).
    pending: Vec<u8>,
    /// The client ended its input: close the stdin once `pending` is written.
    close_stdin: bool,
    target: Target,
}

enum Target {
    Exec {
        pid: i32,
        outputs: Vec<Output>,
        stdin: Option<OwnedFd>,
        pty: Option<OwnedFd>,
        started_at: String,
        exit: Option<ExitStatus>,
    },
    Attach {
        stdin: bool,
    },
}

/// Whose descriptor a poll entry is.
#[derive(Clone, Copy)]
enum Token {
    Signal,
    Listener,
    MainOut(usize),
    MainStdin,
    Control(usize),
    SessionIn(usize),
    SessionOut(usize, usize),
    SessionStdin(usize),
}

/// How long a client may leave its socket full before the supervisor drops it.
const CLIENT_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

struct Supervisor {
    opts: Options,
    shim: Shim,
    pid: i32,
    cgroup: crate::cgroups::Cgroup,
    started_at: String,
    exit: Option<ExitStatus>,
    waiters: Vec<UnixStream>,
    shutdown: bool,
    dir: PathBuf,
    main: MainIo,
    sessions: Vec<Session>,
    /// Exec'd processes so far (names their files).
    execs: u64,
}

impl Supervisor {
    fn run(&mut self, sfd: &SignalFd, listener: &UnixListener, log: &mut LogFile) {
        let mut clients: Vec<Client> = Vec::new();
        loop {
            // A container whose status was collected and whose output is drained: done.
            if self.shutdown && self.exit.is_some() && self.main.outputs.iter().all(|o| o.fd.is_none()) {
                return;
            }
            let (tokens, revents) = {
                let mut set = PollSet { tokens: Vec::new(), fds: Vec::new() };
                set.add(Token::Signal, sfd.as_fd(), PollFlags::POLLIN);
                set.add(Token::Listener, listener.as_fd(), PollFlags::POLLIN);
                let pending_main = self
                    .sessions
                    .iter()
                    .any(|s| matches!(s.target, Target::Attach { .. }) && !s.pending.is_empty());
                for (k, o) in self.main.outputs.iter().enumerate() {
                    if let Some(fd) = &o.fd {
                        set.add(Token::MainOut(k), fd.as_fd(), PollFlags::POLLIN);
                    }
                }
                if let (Some(fd), true) = (&self.main.stdin, pending_main) {
                    set.add(Token::MainStdin, fd.as_fd(), PollFlags::POLLOUT);
                }
                for (k, c) in clients.iter().enumerate() {
                    set.add(Token::Control(k), c.stream.as_fd(), PollFlags::POLLIN);
                }
                for (k, s) in self.sessions.iter().enumerate() {
                    if let (Some(c), true) = (&s.client, s.pending.is_empty()) {
                        set.add(Token::SessionIn(k), c.as_fd(), PollFlags::POLLIN);
                    }
                    if let Target::Exec { outputs, stdin, .. } = &s.target {
                        for (j, o) in outputs.iter().enumerate() {
                            if let Some(fd) = &o.fd {
                                set.add(Token::SessionOut(k, j), fd.as_fd(), PollFlags::POLLIN);
                            }
                        }
                        if let (Some(fd), false) = (stdin, s.pending.is_empty()) {
                            set.add(Token::SessionStdin(k), fd.as_fd(), PollFlags::POLLOUT);
                        }
                    }
                }
                if poll(&mut set.fds, PollTimeout::NONE).unwrap_or(0) <= 0 {
                    continue;
                }
                let revents: Vec<PollFlags> =
                    set.fds.iter().map(|f| f.revents().unwrap_or(PollFlags::empty())).collect();
                (set.tokens, revents)
            };
            let mut accepted = Vec::new();
            let mut control_ready = Vec::new();
            for (t, ev) in tokens.into_iter().zip(revents) {
                if !ev.intersects(
                    PollFlags::POLLIN | PollFlags::POLLOUT | PollFlags::POLLHUP | PollFlags::POLLERR,
                ) {
                    continue;
                }
                match t {
                    Token::Signal => {
                        while sfd.read_signal().ok().flatten().is_some() {}
                        self.reap();
                    }
                    Token::Listener => {
                        while let Ok((stream, _)) = listener.accept() {
                            let _ = stream.set_nonblocking(true);
                            accepted.push(Client { stream, buf: Vec::new() });
                        }
                    }
                    Token::MainOut(k) => self.read_main(k, log),
                    Token::MainStdin => self.flush_main_stdin(),
                    Token::Control(k) => control_ready.push(k),
                    Token::SessionIn(k) => self.read_session_client(k),
                    Token::SessionOut(k, j) => self.read_session_output(k, j),
                    Token::SessionStdin(k) => self.flush_session_stdin(k),
                }
            }
            // Control clients last: one may turn into a session, which changes no index above.
            let mut keep = Vec::with_capacity(clients.len());
            for (k, mut c) in clients.drain(..).enumerate() {
                if !control_ready.contains(&k) {
                    keep.push(c);
                    continue;
                }
                match self.serve(&mut c) {
                    Served::Keep => keep.push(c),
                    Served::Close => {}
                    Served::Session(target) => self.open_session(c, target),
                }
            }
            keep.extend(accepted);
            clients = keep;
            self.finish_sessions();
        }
    }

    /// Reads the container's own output: to the log and to every attached client.
    fn read_main(&mut self, k: usize, log: &mut LogFile) {
        let mut buf = [0u8; 8192];
        let Some(o) = self.main.outputs.get_mut(k) else { return };
        let n = o.fd.as_ref().map_or(Ok(0), |f| nix::unistd::read(f, &mut buf)).unwrap_or(0);
        let stamp = SystemTime::now();
        for (partial, content) in o.splitter.feed(&buf[..n]) {
            let _ = log.write_record(&logs::record(stamp, o.stream, partial, &content));
        }
        if n == 0 {
            if let Some((p, content)) = o.splitter.finish() {
                let _ = log.write_record(&logs::record(stamp, o.stream, p, &content));
            }
            o.fd = None;
            return;
        }
        let data = frame::encode(frame_kind(o.stream), &buf[..n]);
        for s in &mut self.sessions {
            if matches!(s.target, Target::Attach { .. }) {
                send_to(&mut s.client, &data);
            }
        }
    }

    fn flush_main_stdin(&mut self) {
        let Some(fd) = &self.main.stdin else { return };
        for s in &mut self.sessions {
            if matches!(s.target, Target::Attach { .. })
                && !s.pending.is_empty()
                && !write_some(fd, &mut s.pending)
            {
                s.pending.clear();
            }
        }
        for k in 0..self.sessions.len() {
            self.close_drained_stdin(k);
        }
    }

    fn read_session_client(&mut self, k: usize) {
        let Some(s) = self.sessions.get_mut(k) else { return };
        let Some(c) = &s.client else { return };
        let mut buf = [0u8; 8192];
        match nix::sys::socket::recv(c.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT) {
            Ok(0) | Err(nix::Error::ECONNRESET) => {
                // The client went away: its process sees end of input, and keeps running.
                s.client = None;
                if let Target::Exec { stdin, .. } = &mut s.target {
                    *stdin = None;
                }
                return;
            }
            Ok(n) => s.inbuf.extend_from_slice(&buf[..n]),
            Err(_) => return,
        }
        self.handle_frames(k);
    }

    /// Acts on the complete frames a session's client sent.
    fn handle_frames(&mut self, k: usize) {
        let Some(s) = self.sessions.get_mut(k) else { return };
        while let Some((kind, payload)) = frame::decode(&mut s.inbuf) {
            match (kind, &mut s.target) {
                (frame::STDIN, _) => s.pending.extend(payload),
                (frame::CLOSE_STDIN, _) => s.close_stdin = true,
                (frame::RESIZE, Target::Exec { pty: Some(pty), .. }) => resize(pty, &payload),
                (frame::RESIZE, Target::Attach { .. }) => {
                    if let Some(pty) = &self.main.pty {
                        resize(pty, &payload);
                    }
                }
                _ => {}
            }
        }
        // Write what arrived at once; whatever does not fit waits for POLLOUT.
        match &s.target {
            Target::Exec { stdin: Some(fd), .. } => {
                if !write_some(fd, &mut s.pending) {
                    s.pending.clear();
                }
            }
            Target::Attach { stdin: true } if self.main.stdin.is_some() => {
                if let Some(fd) = &self.main.stdin {
                    if !write_some(fd, &mut s.pending) {
                        s.pending.clear();
                    }
                }
            }
            _ => s.pending.clear(),
        }
        self.close_drained_stdin(k);
    }

    /// Closes a session's stdin once the client ended it and everything it sent is written.
    fn close_drained_stdin(&mut self, k: usize) {
        let Some(s) = self.sessions.get_mut(k) else { return };
        if !s.close_stdin || !s.pending.is_empty() {
            return;
        }
        s.close_stdin = false;
        match &mut s.target {
            Target::Exec { stdin, .. } => *stdin = None,
            Target::Attach { stdin: true } => self.main.stdin = None,
            Target::Attach { stdin: false } => {}
        }
    }

    fn read_session_output(&mut self, k: usize, j: usize) {
        let Some(s) = self.sessions.get_mut(k) else { return };
        let Target::Exec { outputs, .. } = &mut s.target else { return };
        let Some(o) = outputs.get_mut(j) else { return };
        let mut buf = [0u8; 8192];
        // A terminal master reads EIO once the last slave is closed: the end, as for a pipe.
        let n = o.fd.as_ref().map_or(Ok(0), |f| nix::unistd::read(f, &mut buf));
        match n {
            Ok(0) => o.fd = None,
            Ok(n) => send_to(&mut s.client, &frame::encode(frame_kind(o.stream), &buf[..n])),
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
            Err(_) => o.fd = None,
        }
    }

    fn flush_session_stdin(&mut self, k: usize) {
        let Some(s) = self.sessions.get_mut(k) else { return };
        if let Target::Exec { stdin: Some(fd), .. } = &s.target {
            if !write_some(fd, &mut s.pending) {
                s.pending.clear();
            }
        } else {
            s.pending.clear();
        }
        self.close_drained_stdin(k);
    }

    fn open_session(&mut self, c: Client, target: Target) {
        let stream = c.stream;
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        let s =
            Session { client: Some(stream), inbuf: c.buf, pending: Vec::new(), close_stdin: false, target };
        self.sessions.push(s);
        // Frames that came with the request line are already here.
        self.handle_frames(self.sessions.len() - 1);
    }

    /// Ends the sessions whose process is gone and drained (or, for attachments, whose
    /// container is), sending the exit status first; drops those whose client left.
    fn finish_sessions(&mut self) {
        let main_done = self.exit.is_some() && self.main.outputs.iter().all(|o| o.fd.is_none());
        let main_exit = self.exit.clone();
        self.sessions.retain_mut(|s| {
            let exit = match &s.target {
                Target::Exec { exit: Some(e), outputs, .. } if outputs.iter().all(|o| o.fd.is_none()) => {
                    Some(e.clone())
                }
                Target::Attach { .. } if main_done => main_exit.clone(),
                Target::Attach { .. } if s.client.is_none() => return false,
                _ => None,
            };
            let Some(exit) = exit else { return true };
            if let Ok(json) = serde_json::to_vec(&exit) {
                send_to(&mut s.client, &frame::encode(frame::EXIT, &json));
            }
            false
        });
    }

    /// Reaps every exited child: the container's init ends the container; an exec'd
    /// process ends its session; orphans are just reaped.
    fn reap(&mut self) {
        loop {
            let (pid, code, signal) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code, None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), 128 + sig as i32, Some(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if pid == self.pid {
                self.exited(code, signal);
                continue;
            }
            for s in &mut self.sessions {
                if let Target::Exec { pid: p, exit, started_at, .. } = &mut s.target {
                    if *p == pid {
                        *exit = Some(ExitStatus {
                            code,
                            signal,
                            oom_killed: false,
                            started_at: started_at.clone(),
                            finished_at: now(),
                        });
                    }
                }
            }
        }
    }

    fn exited(&mut self, code: i32, signal: Option<i32>) {
        // The OOM count lives in the cgroup: read it before the runtime removes the cgroup.
        let oom_killed = self.cgroup.oom_kills() > 0;
        self.shim.delete();
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
        self.main.stdin = None;
        self.exit = Some(status);
    }

    /// Handles what a client sent.
    fn serve(&mut self, c: &mut Client) -> Served {
        let mut buf = [0u8; 4096];
        match c.stream.read(&mut buf) {
            Ok(0) => return Served::Close,
            Ok(n) => c.buf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Served::Keep,
            Err(_) => return Served::Close,
        }
        while let Some(nl) = c.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = c.buf.drain(..=nl).collect();
            let mut session = None;
            let reply = match serde_json::from_slice::<Request>(&line) {
                Ok(Request::Wait) if self.exit.is_none() => {
                    if let Ok(w) = c.stream.try_clone() {
                        self.waiters.push(w);
                    }
                    continue;
                }
                Ok(Request::Exec { process }) => match self.exec(process) {
                    Ok(target) => {
                        let pid = if let Target::Exec { pid, .. } = &target { *pid } else { 0 };
                        session = Some(target);
                        Reply::Started { pid }
                    }
                    Err(message) => Reply::Error { message },
                },
                Ok(Request::Attach { stdin }) => {
                    if stdin && self.main.stdin.is_none() {
                        Reply::Error {
                            message: "the container's stdin is not open (supervise it with --stdin)".into(),
                        }
                    } else {
                        session = Some(Target::Attach { stdin });
                        Reply::Attached
                    }
                }
                Ok(req) => self.answer(req),
                Err(e) => Reply::Error { message: format!("bad request: {e}") },
            };
            let _ = c.stream.set_nonblocking(false);
            let sent = protocol::send(&mut c.stream, &reply).is_ok();
            let _ = c.stream.set_nonblocking(true);
            if !sent {
                return Served::Close;
            }
            if let Some(target) = session {
                return Served::Session(target);
            }
        }
        Served::Keep
    }

    /// Starts an exec'd process with its stdio on pipes (or a terminal).
    fn exec(&mut self, process: serde_json::Value) -> Result<Target, String> {
        if self.exit.is_some() {
            return Err("cannot exec in a stopped container".into());
        }
        let terminal = process["terminal"].as_bool().unwrap_or(false);
        self.execs += 1;
        let n = self.execs;
        let file = |ext: &str| self.dir.join(format!("exec-{n}.{ext}"));
        let (json, pid_file, sock) = (file("json"), file("pid"), file("sock"));
        std::fs::write(&json, process.to_string()).map_err(|e| format!("{}: {e}", json.display()))?;
        let (json_arg, pid_arg, sock_arg) =
            (json.display().to_string(), pid_file.display().to_string(), sock.display().to_string());
        let mut args = vec!["exec", "--detach", "--pid-file", &pid_arg, "--process", &json_arg];
        let started_at = now();
        let line_max = self.opts.line_max;
        let cleanup = || {
            for f in [&json, &pid_file, &sock] {
                let _ = std::fs::remove_file(f);
            }
        };
        let pid = |cleanup: &dyn Fn()| -> Result<i32, String> {
            let pid = std::fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse().ok());
            cleanup();
            pid.ok_or_else(|| "exec: the process did not start".to_string())
        };
        if terminal {
            let listener = bind_console(&sock)?;
            args.extend(["--console-socket", &sock_arg]);
            args.push(&self.shim.id);
            let ran = self.shim.run(self.shim.command(&args));
            ran.inspect_err(|_| cleanup())?;
            let master = receive_master(&listener).inspect_err(|_| cleanup())?;
            let pid = pid(&cleanup)?;
            set_nonblocking(&master);
            let copy = |m: &OwnedFd| m.try_clone().map_err(|e| format!("dup: {e}"));
            return Ok(Target::Exec {
                pid,
                outputs: vec![Output::new(Stream::Stdout, copy(&master)?, line_max)],
                stdin: Some(copy(&master)?),
                pty: Some(master),
                started_at,
                exit: None,
            });
        }
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        args.push(&self.shim.id);
        let mut cmd = self.shim.command(&args);
        // The exec'd process inherits these from `tug-shim exec`; once that exits, it is
        // re-parented here (the subreaper) and is the pipes' only other holder.
        cmd.stdin(in_r).stdout(out_w).stderr(err_w);
        self.shim.run(cmd).inspect_err(|_| cleanup())?;
        let pid = pid(&cleanup)?;
        set_nonblocking(&in_w);
        Ok(Target::Exec {
            pid,
            outputs: vec![
                Output::new(Stream::Stdout, out_r, line_max),
                Output::new(Stream::Stderr, err_r, line_max),
            ],
            stdin: Some(in_w),
            pty: None,
            started_at,
            exit: None,
        })
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
            Request::Resize { rows, cols } => match &self.main.pty {
                Some(pty) => crate::terminal::set_size(pty.as_fd(), crate::terminal::WinSize { rows, cols })
                    .map_or_else(|e| err(format!("resize: {e}")), |()| Reply::Ok),
                None => err("the container has no terminal (process.terminal is false)".into()),
            },
            Request::Shutdown if self.exit.is_none() => {
                err("the container is still running: kill it first".into())
            }
            Request::Shutdown => {
                self.shutdown = true;
                Reply::Ok
            }
            // Handled by `serve`.
            Request::Exec { .. } | Request::Attach { .. } => err("not here".into()),
        }
    }

    fn update(&self, resources: serde_json::Value) -> Result<(), String> {
        if self.exit.is_some() {
            return Err("container not running".into());
        }
        let file = self.dir.join("update.json");
        std::fs::write(&file, resources.to_string()).map_err(|e| format!("{}: {e}", file.display()))?;
        let arg = file.display().to_string();
        let result = self.shim.run(self.shim.command(&["update", "--resources", &arg, &self.shim.id]));
        let _ = std::fs::remove_file(&file);
        result
    }
}

/// Poll entries and whose they are.
struct PollSet<'a> {
    tokens: Vec<Token>,
    fds: Vec<PollFd<'a>>,
}

impl<'a> PollSet<'a> {
    fn add(&mut self, t: Token, fd: BorrowedFd<'a>, ev: PollFlags) {
        self.tokens.push(t);
        self.fds.push(PollFd::new(fd, ev));
    }
}

/// What became of a control connection after its input was handled.
enum Served {
    Keep,
    Close,
    Session(Target),
}

/// Sends a frame to a session's client; a client that cannot take it is dropped.
fn send_to(client: &mut Option<UnixStream>, data: &[u8]) {
    if let Some(c) = client {
        if c.write_all(data).is_err() {
            *client = None;
        }
    }
}

/// Writes as much of `pending` as the non-blocking `fd` takes, removing it; false when the
/// reader is gone.
fn write_some(fd: &OwnedFd, pending: &mut Vec<u8>) -> bool {
    while !pending.is_empty() {
        match nix::unistd::write(fd, pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(nix::Error::EAGAIN) => return true,
            Err(nix::Error::EINTR) => {}
            Err(_) => return false,
        }
    }
    true
}

fn resize(pty: &OwnedFd, payload: &[u8]) {
    if let Some((rows, cols)) = frame::parse_resize(payload) {
        let _ = crate::terminal::set_size(pty.as_fd(), crate::terminal::WinSize { rows, cols });
    }
}
