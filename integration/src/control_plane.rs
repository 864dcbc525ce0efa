//! A control plane for tests: `tug-scheduler` on a socket and data directory of its own,
//! killed by pid when the guard drops.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A running `tug-scheduler`.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
    /// The network namespace it runs in (a simulated host), if not the test's own.
    netns: Option<String>,
}

impl ControlPlane {
    /// Starts one and waits until its socket answers.
    pub fn start() -> ControlPlane {
        ControlPlane::start_with(&[])
    }

    /// Starts one with extra flags (`--store etcd --etcd-endpoints ...`).
    pub fn start_with(extra: &[&str]) -> ControlPlane {
        let dir = tempfile::Builder::new().prefix("tug-cp-").tempdir().expect("temp dir");
        let mut cp = ControlPlane {
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns: None,
        };
        cp.spawn();
        cp
    }

    /// Starts one on etcd at `endpoint` (with a `--pki-secret-file` of its own, kept in the
    /// returned directory) and any `extra` flags.
    pub fn start_on_etcd(endpoint: &str, extra: &[&str]) -> (ControlPlane, tempfile::TempDir) {
        let (dir, secret) = crate::etcd::pki_secret();
        let mut flags = vec!["--store", "etcd", "--etcd-endpoints", endpoint, "--pki-secret-file", &secret];
        flags.extend_from_slice(extra);
        (ControlPlane::start_with(&flags), dir)
    }

    /// Starts one inside the network namespace `netns` (a [`crate::cluster::Node`]'s): its
    /// socket is still a file the test reaches; its TCP traffic is the node's.
    pub fn start_in(netns: &str, extra: &[&str]) -> ControlPlane {
        let dir = tempfile::Builder::new().prefix("tug-cp-").tempdir().expect("temp dir");
        let mut cp = ControlPlane {
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns: Some(netns.to_string()),
        };
        cp.spawn();
        cp
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("tug.sock")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let bin = crate::bins::path("tug-scheduler", "tug-scheduler");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("scheduler.log"))
            .expect("log");
        // `ip netns exec` execs the program in place: the child's pid is the scheduler's.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("--socket")
            .arg(self.socket())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start tug-scheduler");
        self.child = Some(child);
        if crate::wait_for(Duration::from_secs(20), || self.raw("GET", "/healthz", "", "").0 == 200) {
            return;
        }
        panic!(
            "tug-scheduler did not answer: {}",
            std::fs::read_to_string(self.dir.path().join("scheduler.log")).unwrap_or_default()
        );
    }

    /// What the scheduler wrote to its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("scheduler.log")).unwrap_or_default()
    }

    /// SIGKILLs the scheduler (no chance to flush anything) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs the scheduler and waits up to `limit` for it to exit; whether it did.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let Some(mut c) = self.child.take() else { return true };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let exited = crate::wait_for(limit, || c.try_wait().ok().flatten().is_some());
        if !exited {
            let _ = c.kill();
            let _ = c.wait();
        }
        exited
    }

    /// Starts it again on the same socket and data (after [`ControlPlane::terminate`], or
    /// SIGKILLing it first).
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Starts it again on the same socket and data.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Sends `signal` to the scheduler (SIGSTOP to freeze it, SIGCONT to resume it).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"));
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }

    /// The scheduler's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `tug ARGS` against this control plane, with `stdin` as its standard input.
    pub fn tug_with_input(&self, args: &[&str], stdin: &str) -> Output {
        run_tug(Some(&self.socket()), args, stdin)
    }

    /// Runs `tug ARGS` with more environment variables.
    pub fn tug_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(crate::bins::path("tug-cli", "tug"))
            .env("TUG_SOCKET", self.socket())
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tug")
    }

    /// Runs `tug ARGS`.
    pub fn tug(&self, args: &[&str]) -> Output {
        self.tug_with_input(args, "")
    }

    /// `tug get ARGS -o json`, parsed; None when it fails.
    pub fn get_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let out = self.tug(&a);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// `tug apply -f -` with `yaml`; panics with tug's error when it fails.
    pub fn apply(&self, yaml: &str) {
        let out = self.tug_with_input(&["apply", "-f", "-"], yaml);
        assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// One raw HTTP/1.1 request over the socket: (status code, body). 0 when unreachable.
    pub fn raw(&self, method: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
        let Ok(mut s) = UnixStream::connect(self.socket()) else { return (0, String::new()) };
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: tug\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // A server may answer (413, say) and close before reading a large body: read the
        // answer whatever became of the write.
        let _ = s.write_all(req.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let chunked = head.lines().any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
        (code, if chunked { dechunk(body) } else { body.to_string() })
    }
}

/// One request over a control plane's socket with extra header lines (each ending in CRLF):
/// the status code, 0 when unreachable. For benchmarks, which only count answers.
pub fn request_code(socket: &Path, method: &str, path: &str, ctype: &str, body: &str, headers: &str) -> u16 {
    let Ok(mut s) = UnixStream::connect(socket) else { return 0 };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: tug\r\nConnection: close\r\nContent-Type: {ctype}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// `tug ARGS` with `stdin`, against `socket` (`TUG_SOCKET`), or — without one — against
/// whatever the arguments name (`--server A,B,C`).
pub fn run_tug(socket: Option<&Path>, args: &[&str], stdin: &str) -> Output {
    let mut cmd = Command::new(crate::bins::path("tug-cli", "tug"));
    match socket {
        Some(s) => cmd.env("TUG_SOCKET", s),
        None => cmd.env_remove("TUG_SOCKET"),
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tug");
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin.as_bytes());
    }
    child.wait_with_output().expect("tug output")
}

/// A chunked body's data (what is left of a cut stream too).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            out.push_str(&rest[..rest.len().min(n)]);
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill9();
    }
}
