//! `tug-shim`: the OCI runtime command line, as runc and crun implement it.

use clap::{Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tug_shim::runtime::{CreateOptions, Runtime, RuntimeError, features, parse_signal};

/// Tug's OCI runtime: creates and runs containers from OCI bundles.
#[derive(Parser)]
#[command(name = "tug-shim", version, about)]
struct Cli {
    /// State directory for containers.
    #[arg(long, global = true, default_value = "/run/tug-shim")]
    root: PathBuf,
    /// Append errors (and debug messages with --debug) to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of the --log file.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log debug messages too.
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for runc compatibility; tug-shim manages cgroupfs directly.
    #[arg(long, global = true, hide = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The arguments `create` and `run` share.
#[derive(clap::Args)]
struct CreateArgs {
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Pass descriptors 3 .. 3+N of this process on to the container's program.
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    /// Enter the rootfs with chroot, not pivot_root (a rootfs on a ramdisk).
    #[arg(long)]
    no_pivot: bool,
    id: String,
}

impl CreateArgs {
    fn options(self) -> (String, CreateOptions) {
        (
            self.id,
            CreateOptions {
                bundle: self.bundle,
                pid_file: self.pid_file,
                console_socket: self.console_socket,
                preserve_fds: self.preserve_fds,
                no_pivot: self.no_pivot,
            },
        )
    }
}

/// `exec`'s flags, runc's.
#[derive(clap::Args)]
struct ExecArgs {
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    tty: bool,
    /// Send the terminal's master to this Unix socket (with --tty).
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Working directory in the container.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Set an environment variable (NAME=VALUE); repeatable.
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// UID[:GID] to run as.
    #[arg(short, long)]
    user: Option<String>,
    /// Additional group ids; repeatable.
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    /// A process.json to run instead of the command line.
    #[arg(short, long)]
    process: Option<PathBuf>,
    /// Do not wait for the process; print nothing, exit at once.
    #[arg(short, long)]
    detach: bool,
    /// Write the process's pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Set no_new_privs for the process.
    #[arg(long)]
    no_new_privs: bool,
    /// Add a capability (e.g. CAP_NET_ADMIN); repeatable.
    #[arg(short, long = "cap")]
    cap: Vec<String>,
    id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container, leaving it waiting for `start`.
    Create(CreateArgs),
    /// Start a created container's process.
    Start { id: String },
    /// Print a container's OCI state as JSON.
    State { id: String },
    /// Send a signal (name or number, default SIGTERM) to a container.
    Kill {
        /// Signal every process in the container, not only its init.
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Freeze every process of a running container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Delete a container's state and cgroup.
    Delete {
        /// Kill the container first if it is running.
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container, then wait for it and exit with its exit code (or, with
    /// --detach, exit at once leaving it running).
    Run {
        /// Do not wait: exit once the container's process runs.
        #[arg(short, long)]
        detach: bool,
        #[command(flatten)]
        args: CreateArgs,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List the processes in a container.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
    },
    /// Print what this runtime supports, as JSON.
    Features,
    /// Run a new process in a running container, in all its namespaces and its cgroup, with
    /// the container's process settings unless flags say otherwise.
    Exec(ExecArgs),
    /// Change a running container's cgroup limits in place (cpu, memory, pids, …).
    Update {
        /// A JSON file in the shape of `linux.resources` ('-': standard input).
        #[arg(short, long)]
        resources: PathBuf,
        id: String,
    },
    /// Print the built-in default seccomp profile (`linux.seccomp`) for a process holding the
    /// given capabilities: what the agent applies to pods that ask for no other.
    DefaultSeccomp {
        /// A capability the process holds (e.g. CAP_SYS_ADMIN); repeatable.
        #[arg(long = "cap")]
        caps: Vec<String>,
    },
    /// Start a supervisor for a new container: it creates and starts the container, keeps
    /// its logs and exit status, and outlives the caller. Prints the supervisor's pid.
    Supervise {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Where supervisors keep their directories (default: ROOT/supervisors).
        #[arg(long)]
        state: Option<PathBuf>,
        /// The container's CRI log file (default: ROOT/logs/ID.log).
        #[arg(long)]
        log_path: Option<PathBuf>,
        /// Rotate the log file past this many bytes.
        #[arg(long, default_value_t = tug_shim::supervisor::logs::DEFAULT_MAX_SIZE)]
        log_max_size: u64,
        /// Log files kept, the current one included.
        #[arg(long, default_value_t = tug_shim::supervisor::logs::DEFAULT_KEEP)]
        log_max_files: usize,
        /// Longest log record; longer lines become partial records.
        #[arg(long, default_value_t = tug_shim::supervisor::logs::DEFAULT_LINE_MAX)]
        log_line_max: usize,
        /// Keep the container's stdin open for attached clients (a pipe, or its terminal).
        #[arg(long)]
        stdin: bool,
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::State { .. }
            | Command::List { .. }
            | Command::Ps { .. }
            | Command::Features
            | Command::DefaultSeccomp { .. }
            | Command::Supervise { .. }
    ) {
        // A reader that goes away (`tug-shim list | head`) ends a printing command quietly,
        // as SIGPIPE ends C tools, rather than a panic from println!. Only these: the
        // commands that start containers keep writes to a closed pipe an error to handle
        // (their processes inherit the disposition). `supervise` only execs tug-supervisor,
        // whose Rust runtime ignores SIGPIPE again.
        restore_sigpipe();
    }
    let logger =
        Logger { path: cli.log.clone(), json: matches!(cli.log_format, LogFormat::Json), debug: cli.debug };
    let runtime = Runtime::new(&cli.root);
    logger.debug(&format!("root {}", cli.root.display()));
    match dispatch(&runtime, cli.command) {
        Ok(code) => code,
        Err(e) => {
            let msg = e.to_string();
            logger.error(&msg);
            eprintln!("{}", stderr_line(&msg, logger.path.is_some(), std::io::stderr().is_terminal()));
            ExitCode::FAILURE
        }
    }
}

fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to its default has no preconditions; called
    // before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn dispatch(rt: &Runtime, cmd: Command) -> Result<ExitCode, RuntimeError> {
    match cmd {
        Command::Create(args) => {
            let (id, opts) = args.options();
            rt.create(&id, &opts)?;
        }
        Command::Start { id } => rt.start(&id)?,
        Command::State { id } => print_json(&rt.state(&id)?),
        Command::Kill { all, id, signal } => rt.kill(&id, parse_signal(&signal)?, all)?,
        Command::Delete { force, id } => rt.delete(&id, force)?,
        Command::Pause { id } => rt.pause(&id)?,
        Command::Resume { id } => rt.resume(&id)?,
        Command::Run { detach: true, args } => {
            let (id, opts) = args.options();
            rt.run_detached(&id, &opts)?;
        }
        Command::Run { detach: false, args } => {
            let (id, opts) = args.options();
            let exit = rt.run(&id, &opts)?;
            if exit.oom_killed {
                let msg = format!("container {id} was OOM-killed (out of memory in its cgroup)");
                eprintln!("{}", tug_shim::runtime::logrus_line("warning", &msg));
            }
            return Ok(ExitCode::from(u8::try_from(exit.code).unwrap_or(255)));
        }
        Command::List { format, quiet } => list(rt, &format, quiet)?,
        Command::Ps { format, id } => ps(rt, &id, &format)?,
        Command::Features => print_json(&features()),
        Command::Exec(args) => return exec(rt, args),
        Command::Update { resources, id } => {
            let text = if resources.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(&resources)
            }
            .map_err(|e| RuntimeError::Usage(format!("--resources {}: {e}", resources.display())))?;
            let res = serde_json::from_str(&text)
                .map_err(|e| RuntimeError::Usage(format!("--resources {}: {e}", resources.display())))?;
            rt.update(&id, &res)?;
        }
        Command::DefaultSeccomp { caps } => {
            print_json(&tug_shim::seccomp::profile::default_profile(&caps));
        }
        Command::Supervise {
            bundle,
            state,
            log_path,
            log_max_size,
            log_max_files,
            log_line_max,
            stdin,
            id,
        } => {
            tug_shim::state::Dir::new(&rt.root, &id)?;
            let bundle = std::fs::canonicalize(&bundle)
                .map_err(|e| RuntimeError::Usage(format!("bundle {}: {e}", bundle.display())))?;
            let root = std::path::absolute(&rt.root).unwrap_or_else(|_| rt.root.clone());
            let opts = tug_shim::supervisor::Options {
                state_root: state.unwrap_or_else(|| root.join("supervisors")),
                log_path: log_path.unwrap_or_else(|| root.join("logs").join(format!("{id}.log"))),
                runtime_root: root,
                id,
                bundle,
                log_max_size,
                log_keep: log_max_files,
                line_max: log_line_max,
                stdin,
                shim: std::env::current_exe()
                    .map_err(|e| RuntimeError::Usage(format!("finding tug-shim's own path: {e}")))?,
                join_cgroup: None,
            };
            let pid = tug_shim::supervisor::launch(&opts).map_err(RuntimeError::Usage)?;
            println!("{pid}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn exec(rt: &Runtime, a: ExecArgs) -> Result<ExitCode, RuntimeError> {
    let process = match &a.process {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| RuntimeError::Usage(format!("--process {}: {e}", path.display())))?;
            serde_json::from_str(&text)
                .map_err(|e| RuntimeError::Usage(format!("--process {}: {e}", path.display())))?
        }
        None => {
            let template = rt.process_template(&a.id)?;
            tug_shim::runtime::exec_process(
                template,
                &tug_shim::runtime::ExecOverrides {
                    args: a.command.clone(),
                    env: a.env.clone(),
                    cwd: a.cwd.clone(),
                    user: a.user.clone(),
                    additional_gids: a.additional_gids.clone(),
                    tty: a.tty,
                    no_new_privs: a.no_new_privs,
                    caps: a.cap.clone(),
                },
            )?
        }
    };
    let terminal = process.terminal().unwrap_or(false);
    if terminal && a.detach && a.console_socket.is_none() {
        return Err(RuntimeError::Usage(
            "cannot allocate a terminal for a detached process without --console-socket".into(),
        ));
    }
    // In the foreground without a console socket, tug-shim itself holds the master.
    let (console, proxy) = match (&a.console_socket, terminal) {
        (Some(p), _) => (tug_shim::runtime::connect_console(Some(p), terminal)?, None),
        (None, true) => {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()
                .map_err(|e| RuntimeError::Usage(format!("socketpair: {e}")))?;
            (Some(theirs.into()), Some(ours))
        }
        (None, false) => (None, None),
    };
    let pid = rt.exec_spawn(&a.id, &process, console, None)?;
    if let Some(p) = &a.pid_file {
        std::fs::write(p, pid.to_string())
            .map_err(|e| RuntimeError::Usage(format!("pid file {}: {e}", p.display())))?;
    }
    if a.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let proxy = match proxy {
        Some(sock) => {
            let (master, _) = tug_shim::terminal::recv_fd(std::os::fd::AsRawFd::as_raw_fd(&sock))
                .map_err(RuntimeError::Usage)?;
            Some(std::thread::spawn(move || tug_shim::terminal::proxy_stdio(master)))
        }
        None => None,
    };
    let code = tug_shim::runtime::wait_exit(pid)?;
    if let Some(t) = proxy {
        let _ = t.join();
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn list(rt: &Runtime, format: &str, quiet: bool) -> Result<(), RuntimeError> {
    let all = rt.list();
    if quiet {
        all.iter().for_each(|(s, _)| println!("{}", s.id));
        return Ok(());
    }
    match format {
        "json" => {
            let docs: Vec<_> = all.iter().map(|(s, st)| tug_shim::state::oci_state(s, *st)).collect();
            print_json(&serde_json::Value::from(docs));
        }
        "table" => {
            let rows: Vec<[String; 6]> = all
                .iter()
                .map(|(s, st)| {
                    let pid = if *st == tug_shim::state::Status::Stopped { 0 } else { s.pid };
                    [
                        s.id.clone(),
                        pid.to_string(),
                        st.to_string(),
                        s.bundle.display().to_string(),
                        s.created.clone(),
                        s.owner.clone(),
                    ]
                })
                .collect();
            print_table(&["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"], &rows);
        }
        other => return Err(RuntimeError::Usage(format!("invalid format {other:?} (table or json)"))),
    }
    Ok(())
}

fn ps(rt: &Runtime, id: &str, format: &str) -> Result<(), RuntimeError> {
    let pids = rt.ps(id)?;
    match format {
        "json" => print_json(&serde_json::Value::from(pids)),
        "table" => {
            let rows: Vec<[String; 2]> = pids
                .iter()
                .map(|p| {
                    let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                    [p.to_string(), String::from_utf8_lossy(&cmd).replace('\0', " ").trim().to_string()]
                })
                .collect();
            print_table(&["PID", "CMD"], &rows);
        }
        other => return Err(RuntimeError::Usage(format!("invalid format {other:?} (table or json)"))),
    }
    Ok(())
}

/// Columns padded to their widest cell, as runc's tabwriter prints them.
fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("   ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// A failure on stderr in runc's shapes, which tools grep for: the plain message when a
/// `--log` file has the record, else logrus' text line — `ERRO[0000] msg` on a terminal,
/// `time="…" level=error msg="…"` elsewhere.
fn stderr_line(msg: &str, logged: bool, terminal: bool) -> String {
    if logged {
        msg.to_string()
    } else if terminal {
        format!("ERRO[0000] {msg}")
    } else {
        tug_shim::runtime::logrus_line("error", msg)
    }
}

/// The `--log` file writer: runc's shapes, a text line or a JSON object per entry.
struct Logger {
    path: Option<PathBuf>,
    json: bool,
    debug: bool,
}

impl Logger {
    fn error(&self, msg: &str) {
        self.write("error", msg);
    }

    fn debug(&self, msg: &str) {
        if self.debug {
            self.write("debug", msg);
        }
    }

    fn write(&self, level: &str, msg: &str) {
        let Some(path) = &self.path else { return };
        let line = if self.json {
            let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
        } else {
            tug_shim::runtime::logrus_line(level, msg)
        };
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_take_runcs_shapes_on_stderr() {
        assert_eq!(stderr_line("container does not exist", true, false), "container does not exist");
        assert_eq!(
            stderr_line("container does not exist", false, true),
            "ERRO[0000] container does not exist"
        );
        let line = stderr_line("id \"x\" bad", false, false);
        let (time, rest) = line.strip_prefix("time=\"").unwrap().split_once('"').unwrap();
        assert_eq!(time.len(), "2026-12-06T12:18:27Z".len(), "{line}");
        assert_eq!(rest, r#" level=error msg="id \"x\" bad""#);
    }
}
