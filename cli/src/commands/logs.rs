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
    /// The pod (or pod/NAME, or deploy|rs|job|svc/NAME for one of their pods). Not with -l.
    #[arg(required_unless_present = "selector")]
    pub pod: Option<String>,
    /// Every matching pod's log (`app=web`), each line's source with --prefix.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Start each line with `[pod/NAME/CONTAINER]`.
    #[arg(long)]
    pub prefix: bool,
    /// Every container of the pod, not one.
    #[arg(long)]
    pub all_containers: bool,
    /// Logs followed at once with -l -f at most (kubectl's default: 5).
    #[arg(long, default_value_t = 5)]
    pub max_log_requests: usize,
    /// Only lines newer than this (`10s`, `5m`, `1h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Only lines written at or after this RFC 3339 time.
    #[arg(long)]
    pub since_time: Option<String>,
    /// At most this many bytes of each log.
    #[arg(long)]
    pub limit_bytes: Option<u64>,
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

/// The pod a `POD`, `pod/NAME` or `KIND/NAME` argument means (for other verbs).
pub async fn resolve_pod(client: &Client, ns: &str, p: &str) -> Result<String, String> {
    pod_name(client, ns, p).await
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

/// Several logs: one after another, or (following) all at once, line by line, each line
/// with its source when `prefix`.
async fn many_logs(
    client: &Client,
    ns: &str,
    q: &[String],
    sources: Vec<(String, Option<String>)>,
    prefix: bool,
    follow: bool,
) -> Result<ExitCode, String> {
    let one = |(pod, container): (String, Option<String>)| {
        let mut q = q.to_vec();
        if let Some(c) = &container {
            q.push(format!("container={}", encode(c)));
        }
        let path = format!("/api/v1/namespaces/{ns}/pods/{}/log?{}", encode(&pod), q.join("&"));
        let tag = format!("[pod/{pod}/{}] ", container.unwrap_or_default());
        async move {
            let mut pending: Vec<u8> = Vec::new();
            let r = client
                .stream(&path, |chunk| {
                    pending.extend_from_slice(chunk);
                    while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=nl).collect();
                        let mut out = std::io::stdout().lock();
                        let ok = (!prefix || out.write_all(tag.as_bytes()).is_ok())
                            && out.write_all(&line).and_then(|()| out.flush()).is_ok();
                        if !ok {
                            return false;
                        }
                    }
                    true
                })
                .await;
            if !pending.is_empty() {
                let mut out = std::io::stdout().lock();
                if prefix {
                    let _ = out.write_all(tag.as_bytes());
                }
                let _ = out.write_all(&pending).and_then(|()| out.write_all(b"\n"));
            }
            r.map_err(|e| format!("{tag}{e}"))
        }
    };
    let results: Vec<Result<(), String>> = if follow {
        futures_util::future::join_all(sources.into_iter().map(one)).await
    } else {
        let mut v = Vec::new();
        for s in sources {
            v.push(one(s).await);
        }
        v
    };
    let mut code = ExitCode::SUCCESS;
    for e in results.into_iter().filter_map(Result::err) {
        eprintln!("error: {e}");
        code = ExitCode::FAILURE;
    }
    Ok(code)
}

pub async fn logs(client: &Client, a: &LogsArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    let ns = ns.unwrap_or("default");
    let mut q = Vec::new();
    if a.follow {
        q.push("follow=true".into());
    }
    if a.tail >= 0 {
        q.push(format!("tailLines={}", a.tail));
    } else if a.selector.is_some() {
        // kubectl shows the last 10 lines of each pod with a selector.
        q.push("tailLines=10".into());
    }
    if a.previous {
        q.push("previous=true".into());
    }
    if a.timestamps {
        q.push("timestamps=true".into());
    }
    if let Some(d) = a.since {
        q.push(format!("sinceSeconds={}", d.as_secs().max(1)));
    }
    if let Some(t) = &a.since_time {
        q.push(format!("sinceTime={}", encode(t)));
    }
    if let Some(b) = a.limit_bytes {
        q.push(format!("limitBytes={b}"));
    }
    // The pods and containers whose logs are asked for.
    let mut sources: Vec<(String, Option<String>)> = Vec::new();
    let pods: Vec<serde_json::Value> = match (&a.selector, &a.pod) {
        (Some(sel), None) => {
            let list = client
                .get(&format!("/api/v1/namespaces/{ns}/pods?labelSelector={}", encode(sel)))
                .await
                .map_err(|e| e.to_string())?;
            list["items"].as_array().cloned().unwrap_or_default()
        }
        (None, Some(p)) => {
            let name = pod_name(client, ns, p).await?;
            vec![client.get(&format!("/api/v1/namespaces/{ns}/pods/{}", encode(&name))).await.map_err(
                |e| match e {
                    tug_client::http::CallError::Server(s) => {
                        format!("Error from server ({}): {}", s.reason, s.message)
                    }
                    e => e.to_string(),
                },
            )?]
        }
        _ => return Err("error: a pod or -l SELECTOR, not both".into()),
    };
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if a.all_containers {
            for c in pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .chain(pod["spec"]["containers"].as_array())
                .flatten()
            {
                sources.push((name.clone(), c["name"].as_str().map(str::to_string)));
            }
        } else {
            // Without -c, the first container, as kubectl defaults it (saying so when there
            // are several).
            let c = a.container.clone().or_else(|| {
                let cs = pod["spec"]["containers"].as_array()?;
                let first = cs.first()?["name"].as_str()?.to_string();
                if cs.len() > 1 {
                    let all: Vec<&str> = cs.iter().filter_map(|c| c["name"].as_str()).collect();
                    eprintln!("Defaulted container \"{first}\" out of: {}", all.join(", "));
                }
                Some(first)
            });
            sources.push((name, c));
        }
    }
    if sources.is_empty() {
        eprintln!("No resources found in {ns} namespace.");
        return Ok(ExitCode::SUCCESS);
    }
    if a.follow && sources.len() > a.max_log_requests {
        return Err(format!(
            "error: you are attempting to follow {} log streams, but maximum allowed concurrency is {}, use --max-log-requests to increase the limit",
            sources.len(),
            a.max_log_requests
        ));
    }
    if sources.len() > 1 || a.prefix {
        return many_logs(client, ns, &q, sources, a.prefix, a.follow).await;
    }
    let (pod, container) = sources.remove(0);
    if let Some(c) = container {
        q.push(format!("container={}", encode(&c)));
    }
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
    frames(client, &path, a.stdin, tty).await
}

#[derive(clap::Args)]
pub struct AttachArgs {
    /// The pod (or pod/NAME, or deploy|rs|job|svc/NAME for one of their pods).
    pub pod: String,
    /// The container (needed when the pod has several).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Pass this terminal's stdin to the container (it must have `stdin: true`).
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// The container has a terminal (`tty: true`).
    #[arg(short = 't', long)]
    pub tty: bool,
}

/// `tug attach`: the container's own output (and, with -i, its input) until it exits or the
/// user leaves.
pub async fn attach(client: &Client, a: &AttachArgs, ns: Option<&str>) -> Result<ExitCode, String> {
    use std::io::IsTerminal;
    let ns = ns.unwrap_or("default");
    let mut q = vec!["stdout=true".to_string(), "stderr=true".to_string()];
    if let Some(c) = &a.container {
        q.push(format!("container={}", encode(c)));
    }
    if a.stdin {
        q.push("stdin=true".into());
    }
    let tty = a.tty && std::io::stdout().is_terminal();
    if tty {
        q.push("tty=true".into());
    }
    let pod = pod_name(client, ns, &a.pod).await?;
    if !a.stdin {
        eprintln!("If you don't see a command prompt, try pressing enter.");
    }
    let path = format!("/api/v1/namespaces/{ns}/pods/{}/attach?{}", encode(&pod), q.join("&"));
    frames(client, &path, a.stdin, tty).await
}

/// A remote process's stream (exec or attach) over the `tug-exec` upgrade: stdin out as
/// frames, stdout and stderr in, until its EXIT frame; exits with its status.
async fn frames(client: &Client, path: &str, want_stdin: bool, tty: bool) -> Result<ExitCode, String> {
    use std::io::IsTerminal;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = client
        .upgrade(hyper::Method::POST, path, tug_api::tunnel::EXEC_PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = tokio::io::split(io);
    let _raw = (tty && want_stdin && std::io::stdin().is_terminal()).then(RawTerminal::enable);
    if tty {
        if let Some(f) = resize_frame() {
            wr.write_all(&f).await.map_err(|e| e.to_string())?;
        }
    }
    // Input: stdin as STDIN frames, its end as CLOSE_STDIN; window changes as RESIZE.
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
