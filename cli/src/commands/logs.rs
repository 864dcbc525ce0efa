//! `tug logs POD [-c C] [-f] [--tail N] [-p] [--timestamps]` and
//! `tug exec POD [-c C] [-i] [-t] -- COMMAND [ARG...]`: through the API server and the pod's
//! node agent (the node tunnel, `tug_api::tunnel`) to the container's log files and its
//! supervisor.

use crate::client::Client;
use std::io::Write;
use std::process::ExitCode;
use tug_api::frame;

#[derive(clap::Args)]
pub struct LogsArgs {
    /// The pod (or pod/NAME).
    pub pod: String,
    /// The container (needed when the pod has several).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep streaming the log while the container runs.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    /// The log of the previous, terminated instance of the container.
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Each line starts with its RFC 3339 time.
    #[arg(long)]
    pub timestamps: bool,
}

#[derive(clap::Args)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// The pod (or pod/NAME).
    pub pod: String,
    /// The container (needed when the pod has several).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Pass this terminal's stdin to the process.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Give the process a terminal (with -i: an interactive shell).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments, after `--`.
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `%XX` for everything but unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The pod a `POD`, `pod/NAME` or `KIND/NAME` argument means: for a Deployment, ReplicaSet,
/// Job or Service, the first of its pods (its selector's), as kubectl picks one.
async fn pod_name(client: &Client, ns: &str, p: &str) -> Result<String, String> {
    let Some((k, name)) = p.split_once('/') else { return Ok(p.to_string()) };
    let info = super::kind(k)?;
    if info.kind == "Pod" {
        return Ok(name.to_string());
    }
    let obj = client.get(&info.path(Some(ns), Some(name))).await.map_err(|e| match e {
        tug_client::http::CallError::Server(s) => format!("Error from server ({}): {}", s.reason, s.message),
        e => e.to_string(),
    })?;
    let selector = match info.kind {
        "Service" => obj["spec"]["selector"].clone(),
        "Deployment" | "ReplicaSet" | "Job" => obj["spec"]["selector"]["matchLabels"].clone(),
        other => return Err(format!("error: cannot attach to {other}: not implemented")),
    };
    let sel: Vec<String> = selector
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    if sel.is_empty() {
        return Err(format!("error: {p} has no selector to find its pods by"));
    }
    let pods = client
        .get(&format!("/api/v1/namespaces/{ns}/pods?labelSelector={}", encode(&sel.join(","))))
        .await
        .map_err(|e| e.to_string())?;
    let mut items: Vec<serde_json::Value> = pods["items"].as_array().cloned().unwrap_or_default();
    // A running pod first, then the oldest.
    items.sort_by_key(|p| {
        (
            p["status"]["phase"] != "Running",
            p["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string(),
        )
    });
    items
        .first()
        .and_then(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .ok_or_else(|| format!("error: no pods found for {p}"))
}

pub async fn logs(client: &Client, a: &LogsArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    let ns = ns.unwrap_or("default");
    let mut q = Vec::new();
    if let Some(c) = &a.container {
        q.push(format!("container={}", encode(c)));
    }
    if a.follow {
        q.push("follow=true".into());
    }
    if a.tail >= 0 {
        q.push(format!("tailLines={}", a.tail));
    }
    if a.previous {
        q.push("previous=true".into());
    }
    if a.timestamps {
        q.push("timestamps=true".into());
    }
    let pod = pod_name(client, ns, &a.pod).await?;
    let path = format!("/api/v1/namespaces/{ns}/pods/{}/log?{}", encode(&pod), q.join("&"));
    let mut out = std::io::stdout().lock();
    let mut failed = None;
    client
        .stream(&path, |chunk| match out.write_all(chunk).and_then(|()| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    match failed {
        // A closed pipe (`tug logs -f web | head`) is the reader's choice, not an error.
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("error: writing the log: {e}")),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// The terminal in raw mode while this lives (for `exec -t`), as it was afterwards.
struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    fn enable() -> RawTerminal {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else { return RawTerminal(None) };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return RawTerminal(None);
        }
        RawTerminal(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}

nix::ioctl_read_bad!(window_size, libc::TIOCGWINSZ, libc::winsize);

/// This terminal's size, as a RESIZE frame.
fn resize_frame() -> Option<Vec<u8>> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we own; fd 1 stays open.
    unsafe { window_size(1, &mut ws) }.ok()?;
    (ws.ws_row > 0).then(|| frame::encode(frame::RESIZE, &frame::resize(ws.ws_row, ws.ws_col)))
}

pub async fn exec(client: &Client, a: &ExecArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    // Returns only with an error: on success it exits with the command's status.
    use std::io::IsTerminal;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ns = ns.unwrap_or("default");
    let mut q: Vec<String> = a.command.iter().map(|c| format!("command={}", encode(c))).collect();
    if let Some(c) = &a.container {
        q.push(format!("container={}", encode(c)));
    }
    if a.stdin {
        q.push("stdin=true".into());
    }
    let tty = a.tty && std::io::stdout().is_terminal();
    if a.tty && !tty {
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
    }
    if tty {
        q.push("tty=true".into());
    }
    let pod = pod_name(client, ns, &a.pod).await?;
    let path = format!("/api/v1/namespaces/{ns}/pods/{}/exec?{}", encode(&pod), q.join("&"));
    let io = client
        .upgrade(hyper::Method::POST, &path, tug_api::tunnel::EXEC_PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = tokio::io::split(io);
    let _raw = (tty && a.stdin && std::io::stdin().is_terminal()).then(RawTerminal::enable);
    if tty {
        if let Some(f) = resize_frame() {
            wr.write_all(&f).await.map_err(|e| e.to_string())?;
        }
    }
    // Input: stdin as STDIN frames, its end as CLOSE_STDIN; window changes as RESIZE.
    let want_stdin = a.stdin;
    let input = tokio::spawn(async move {
        let mut winch = if tty {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
        } else {
            None
        };
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 8192];
        let mut open = true;
        loop {
            tokio::select! {
                n = stdin.read(&mut buf), if open && want_stdin => {
                    let f = match n {
                        Ok(0) | Err(_) => { open = false; frame::encode(frame::CLOSE_STDIN, &[]) }
                        Ok(n) => frame::encode(frame::STDIN, &buf[..n]),
                    };
                    if wr.write_all(&f).await.is_err() { return; }
                }
                Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                    if let Some(f) = resize_frame() {
                        if wr.write_all(&f).await.is_err() { return; }
                    }
                }
                else => std::future::pending::<()>().await,
            }
        }
    });
    // Output until EXIT.
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 32 << 10];
    let mut code = None;
    'read: loop {
        while let Some((kind, payload)) = frame::decode(&mut pending) {
            match kind {
                frame::STDOUT => {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(&payload).and_then(|()| o.flush());
                }
                frame::STDERR => {
                    let mut e = std::io::stderr().lock();
                    let _ = e.write_all(&payload).and_then(|()| e.flush());
                }
                frame::EXIT => {
                    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
                    code = Some(v["code"].as_i64().unwrap_or(1));
                    break 'read;
                }
                _ => {}
            }
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
    }
    input.abort();
    drop(_raw);
    let status = match code {
        Some(0) => 0,
        Some(c) => {
            eprintln!("command terminated with exit code {c}");
            i32::try_from(c.clamp(1, 255)).unwrap_or(1)
        }
        None => {
            eprintln!("error: the connection to the container ended before its process did");
            1
        }
    };
    // Exit here: a read of stdin in flight cannot be cancelled, and the runtime would wait
    // for it at shutdown (until the user pressed enter).
    let _ = std::io::stdout().flush();
    std::process::exit(status)
}
