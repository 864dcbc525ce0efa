//! The agent's end of the node tunnel (see `tug_api::tunnel`): a few idle connections to
//! every replica of the control plane, each waiting for one request — a container's logs, or
//! an exec — which it then serves, while a fresh idle connection takes its place. Every
//! replica holds some, since a user's `tug logs` may reach any of them.

use crate::logs;
use crate::pods::Ctx;
use crate::pods::record::PodRecord;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tug_api::tunnel::{Reply, Request, TUNNEL_PROTOCOL, Target};
use tug_shim::supervisor::protocol::{self as sup, frame};

/// Idle connections kept open: one for the next request, one for the one after while the
/// first is replaced.
const SPARES: usize = 2;

/// How often a followed log looks for more.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Starts the idle connections, `SPARES` to each of the control plane's replicas.
pub fn start(ctx: Arc<Ctx>) {
    for replica in ctx.api.each_server() {
        for _ in 0..SPARES {
            tokio::spawn(spare(Arc::clone(&ctx), replica.clone()));
        }
    }
}

/// One idle connection to `replica`: made (again and again while the replica is away), then
/// used for one request, after which a new one is started in its place.
fn spare(
    ctx: Arc<Ctx>,
    replica: tug_client::Client,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(spare_loop(ctx, replica))
}

async fn spare_loop(ctx: Arc<Ctx>, replica: tug_client::Client) {
    let path = format!("/api/v1/nodes/{}/tunnel", ctx.cfg.node_name);
    let mut delay = Duration::from_millis(200);
    loop {
        match replica.upgrade(hyper::Method::GET, &path, TUNNEL_PROTOCOL).await {
            Ok(mut conn) => {
                delay = Duration::from_millis(200);
                // Nothing (EOF or an error) means the replica went away: connect again.
                if let Ok(Some(line)) = read_line(&mut conn).await {
                    tokio::spawn(spare(Arc::clone(&ctx), replica));
                    serve(&ctx, conn, &line).await;
                    return;
                }
            }
            Err(e) => {
                if delay >= Duration::from_secs(5) {
                    tracing::warn!("tug-agent: tunnel to {}: {e}", replica.describe());
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Reads one line (without its newline) byte by byte, so nothing after it is consumed.
pub async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if r.read(&mut b).await? == 0 {
            return Ok(None);
        }
        if b[0] == b'\n' {
            return Ok(Some(line));
        }
        line.push(b[0]);
        if line.len() > 1 << 20 {
            return Err(std::io::Error::other("request line over 1 MiB"));
        }
    }
}

async fn reply<W: AsyncWrite + Unpin>(w: &mut W, error: Option<String>) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&Reply { error }).unwrap_or_default();
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

async fn serve<C: AsyncRead + AsyncWrite + Unpin + Send>(ctx: &Ctx, mut conn: C, line: &[u8]) {
    let req: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            let _ =
                reply(&mut conn, Some(format!("tug-agent: a tunnel request it does not understand: {e}")))
                    .await;
            return;
        }
    };
    let result = match req {
        Request::Logs { target, follow, tail_lines, previous, timestamps, since } => {
            let since = since.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok());
            let opts = LogOptions { follow, tail_lines, previous, timestamps, since };
            serve_logs(ctx, &mut conn, &target, &opts).await
        }
        Request::Exec { target, command, stdin, tty } => {
            serve_exec(ctx, &mut conn, &target, command, stdin, tty).await
        }
        Request::Attach { target, stdin } => serve_attach(ctx, &mut conn, &target, stdin).await,
        Request::PortForward { namespace, pod, uid, port } => {
            serve_port_forward(ctx, &mut conn, (&namespace, &pod, &uid), port).await
        }
        Request::Stats => serve_stats(ctx, &mut conn).await,
    };
    if let Err(e) = result {
        let _ = reply(&mut conn, Some(e)).await;
    }
    let _ = conn.shutdown().await;
}

/// The container's record on this node, or the error the user sees.
fn container(ctx: &Ctx, t: &Target) -> Result<(PodRecord, crate::pods::record::ContainerRecord), String> {
    let rec = PodRecord::load(&ctx.cfg.pods_dir(), &t.uid)
        .ok_or_else(|| format!("pod {} is not on node {} (yet)", t.pod, ctx.cfg.node_name))?;
    let c = rec.containers.get(&t.container).cloned().filter(|c| c.attempt > 0).ok_or_else(|| {
        format!("container {:?} in pod {:?} is waiting to start: ContainerCreating", t.container, t.pod)
    })?;
    Ok((rec, c))
}

/// What a logs request asks for (`kubectl logs`' options).
#[derive(Debug, Clone, Copy)]
struct LogOptions {
    follow: bool,
    tail_lines: Option<u64>,
    previous: bool,
    timestamps: bool,
    since: Option<std::time::SystemTime>,
}

/// Answers a logs request: `Ok` once the text has been sent (or the reader went away); `Err`
/// before anything was sent, with the message for the user.
async fn serve_logs<C: AsyncWrite + Unpin>(
    ctx: &Ctx,
    conn: &mut C,
    t: &Target,
    o: &LogOptions,
) -> Result<(), String> {
    let LogOptions { follow, tail_lines, previous, timestamps, since } = *o;
    let (rec, c) = container(ctx, t)?;
    let attempt = if previous { c.attempt - 1 } else { c.attempt };
    let log = ctx.log_path(&rec, &t.container, attempt);
    if previous && (attempt == 0 || !log.exists()) {
        return Err(format!("previous terminated container {:?} in pod {:?} not found", t.container, t.pod));
    }
    // Everything written so far, then (with follow) what comes, while this instance runs.
    let mut renderer = logs::Renderer::new(timestamps);
    renderer.since = since;
    let mut text = Vec::new();
    let mut pending = Vec::new();
    let files = logs::files(&log);
    let last = files.len() - 1;
    let mut current: Option<(std::fs::File, u64)> = None;
    for (i, f) in files.iter().enumerate() {
        let Some((mut file, ino)) = open_with_inode(f) else { continue };
        let mut bytes = Vec::new();
        let _ = std::io::Read::read_to_end(&mut file, &mut bytes);
        pending.extend_from_slice(&bytes);
        let (out, used) = renderer.feed(&pending);
        text.extend(out);
        pending.drain(..used);
        if i == last {
            current = Some((file, ino));
        }
    }
    let shown = match tail_lines {
        Some(n) => logs::tail(&text, n),
        None => &text,
    };
    reply(conn, None).await.map_err(|e| e.to_string())?;
    if conn.write_all(shown).await.is_err() || !follow || previous {
        return Ok(());
    }
    let _ = conn.flush().await;
    let socket = c.id.as_deref().map(|id| ctx.supervisor_socket(id));
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut got = 0;
        if let Some((file, ino)) = current.as_mut() {
            got = std::io::Read::read(file, &mut buf).unwrap_or(0);
            if got == 0 && inode(&log) != *ino {
                // Rotated: the old file is finished (read to its end above); on to the new one.
                if let Some(f) = open_with_inode(&log) {
                    current = Some(f);
                    continue;
                }
            }
        } else if let Some(f) = open_with_inode(&log) {
            current = Some(f);
            continue;
        }
        if got > 0 {
            pending.extend_from_slice(&buf[..got]);
            let (out, used) = renderer.feed(&pending);
            pending.drain(..used);
            if conn.write_all(&out).await.is_err() || conn.flush().await.is_err() {
                return Ok(());
            }
            continue;
        }
        // Nothing new: done when the instance has ended (its last words are read above).
        let running = socket.as_ref().is_some_and(|s| matches!(crate::pods::supervisor_state(s), Ok(None)));
        if !running {
            let again = current.as_mut().map_or(0, |(f, _)| std::io::Read::read(f, &mut buf).unwrap_or(0));
            if again == 0 {
                return Ok(());
            }
            pending.extend_from_slice(&buf[..again]);
            continue;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// The file opened, with the inode it has (which the path may stop naming when it rotates).
fn open_with_inode(p: &std::path::Path) -> Option<(std::fs::File, u64)> {
    let f = std::fs::File::open(p).ok()?;
    let ino = std::os::unix::fs::MetadataExt::ino(&f.metadata().ok()?);
    Some((f, ino))
}

/// The file's inode; 0 when it is not there (no open file has inode 0).
fn inode(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0)
}

/// Answers a stats request with the latest summary, one JSON line.
async fn serve_stats<C: AsyncWrite + Unpin>(ctx: &Ctx, conn: &mut C) -> Result<(), String> {
    let summary = ctx.stats.summary().ok_or_else(|| {
        format!(
            "node {} has no usage figures yet (they need two samples, {:?} apart)",
            ctx.cfg.node_name, ctx.cfg.housekeeping_interval
        )
    })?;
    reply(conn, None).await.map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(&summary).map_err(|e| e.to_string())?;
    line.push(b'\n');
    let _ = conn.write_all(&line).await;
    Ok(())
}

/// Answers an exec request: starts the process through the container's supervisor, then
/// relays the supervisor's frames between it and the tunnel until the process ends.
/// Answers a port forward: a connection to `port` on the pod's loopback, made from a thread
/// inside the pod's network namespace (the socket stays in it), relayed until either side
/// ends.
async fn serve_port_forward<C: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    conn: &mut C,
    (namespace, pod, uid): (&str, &str, &str),
    port: u16,
) -> Result<(), String> {
    let rec = PodRecord::load(&ctx.cfg.pods_dir(), uid)
        .ok_or_else(|| format!("pod {namespace}/{pod} is not on node {} (yet)", ctx.cfg.node_name))?;
    let netns =
        rec.netns.clone().ok_or_else(|| format!("pod {namespace}/{pod} has no network namespace yet"))?;
    let stream = tokio::task::spawn_blocking(move || {
        // A host-network pod (an empty path) listens in the node's own namespace.
        let ns = (!netns.as_os_str().is_empty()).then_some(netns.as_path());
        crate::network::netns::run_in(ns, || {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                std::time::Duration::from_secs(5),
            )
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("entering pod {namespace}/{pod}'s network namespace: {e}"))?
    .map_err(|e| format!("error forwarding port {port} to pod {pod}: dial tcp4 127.0.0.1:{port}: {e}"))?;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut tcp = tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())?;
    reply(conn, None).await.map_err(|e| e.to_string())?;
    let _ = tokio::io::copy_bidirectional(conn, &mut tcp).await;
    Ok(())
}

/// Answers an attach: the supervisor's stream of the container's own stdio, relayed until
/// either side ends.
async fn serve_attach<C: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    conn: &mut C,
    t: &Target,
    stdin: bool,
) -> Result<(), String> {
    let (_, c) = container(ctx, t)?;
    let id =
        c.id.clone()
            .ok_or_else(|| format!("container {:?} in pod {:?} is not running", t.container, t.pod))?;
    let socket: PathBuf = ctx.supervisor_socket(&id);
    let (container, pod) = (t.container.clone(), t.pod.clone());
    let attached =
        tokio::task::spawn_blocking(move || -> Result<(std::os::unix::net::UnixStream, Vec<u8>), String> {
            let not_running =
                |e: sup::ClientError| format!("container {container:?} in pod {pod:?} is not running ({e})");
            let client = sup::Client::connect(&socket).map_err(not_running)?;
            let stream =
                client.attach(stdin).map_err(|e| format!("attach to container {container:?}: {e}"))?;
            Ok(stream.into_parts())
        })
        .await
        .map_err(|e| e.to_string())??;
    let (sock, pending) = attached;
    reply(conn, None).await.map_err(|e| e.to_string())?;
    let _ = conn.write_all(&pending).await;
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut sock = tokio::net::UnixStream::from_std(sock).map_err(|e| e.to_string())?;
    tug_client::relay::relay(conn, &mut sock).await;
    Ok(())
}

async fn serve_exec<C: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    conn: &mut C,
    t: &Target,
    command: Vec<String>,
    stdin: bool,
    tty: bool,
) -> Result<(), String> {
    if command.is_empty() {
        return Err("you must specify at least one command for the container".into());
    }
    let (_, c) = container(ctx, t)?;
    let id =
        c.id.clone()
            .ok_or_else(|| format!("container {:?} in pod {:?} is not running", t.container, t.pod))?;
    let socket: PathBuf = ctx.supervisor_socket(&id);
    let mut process = crate::pods::probe::exec_process(&ctx.bundle_dir(&id), &command);
    process["terminal"] = serde_json::json!(tty);
    let (container, pod) = (t.container.clone(), t.pod.clone());
    let started =
        tokio::task::spawn_blocking(move || -> Result<(std::os::unix::net::UnixStream, Vec<u8>), String> {
            let not_running =
                |e: sup::ClientError| format!("container {container:?} in pod {pod:?} is not running ({e})");
            let client = sup::Client::connect(&socket).map_err(not_running)?;
            let (_pid, stream) =
                client.exec(process).map_err(|e| format!("exec in container {container:?}: {e}"))?;
            Ok(stream.into_parts())
        })
        .await
        .map_err(|e| e.to_string())??;
    let (sock, pending) = started;
    reply(conn, None).await.map_err(|e| e.to_string())?;
    let _ = conn.write_all(&pending).await;
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut sock = tokio::net::UnixStream::from_std(sock).map_err(|e| e.to_string())?;
    if !stdin {
        let _ = sock.write_all(&frame::encode(frame::CLOSE_STDIN, &[])).await;
    }
    // Until the supervisor closes its side after EXIT (or the user goes away).
    tug_client::relay::relay(conn, &mut sock).await;
    Ok(())
}
