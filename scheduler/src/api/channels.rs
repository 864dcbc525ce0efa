//! Kubernetes' streaming protocol for exec over WebSocket (`v5.channel.k8s.io`, and
//! `v4.channel.k8s.io` before it), what kubectl 1.30+ speaks first: each binary message is a
//! channel byte and data — 0 stdin, 1 stdout, 2 stderr, 3 the outcome as a `Status`, 4 a
//! terminal resize as `{"Width":W,"Height":H}`, and (v5) 255 closing the channel named by the
//! next byte. Bridged here to the node tunnel's frames (`tug_api::frame`), which the agent and
//! the container's supervisor speak.

use axum::extract::FromRequestParts;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tug_api::frame;
use tug_api::status::Status;

/// The subprotocols offered, best first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Answers the WebSocket upgrade and bridges the socket to `agent` until the process exits;
/// when the agent could not start it, the socket carries that failure on the error channel.
pub async fn upgrade<C>(req: axum::extract::Request, agent: Result<C, Status>, stdin: bool) -> Response
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut parts, _) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    ws.protocols(PROTOCOLS).on_upgrade(move |socket| async move {
        match agent {
            Ok(agent) => bridge(socket, agent, stdin).await,
            Err(s) => {
                tokio::time::sleep(FIRST_MESSAGE_AFTER).await;
                let (mut tx, _) = socket.split();
                let status = json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                    "message": format!("error executing command in container: {}", s.message)});
                finish(&mut tx, &status).await;
            }
        }
    })
}

/// Sends the outcome on the error channel and closes the socket normally (1000: kubectl
/// reads it as the end of every stream).
async fn finish(tx: &mut futures_util::stream::SplitSink<WebSocket, Message>, status: &Value) {
    let mut msg = vec![ERROR];
    msg.extend_from_slice(status.to_string().as_bytes());
    let _ = tx.send(Message::Binary(msg.into())).await;
    let close =
        axum::extract::ws::CloseFrame { code: axum::extract::ws::close_code::NORMAL, reason: "".into() };
    let _ = tx.send(Message::Close(Some(close))).await;
}

/// The outcome of a process as channel 3 carries it.
pub fn outcome(code: i64) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({"metadata": {}, "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command, exit code {code}"),
        "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
}

/// One client message as tunnel frames: stdin, its end, a resize; `None` for what is ignored.
pub fn to_frame(msg: &[u8]) -> Option<Vec<u8>> {
    let (&channel, data) = msg.split_first()?;
    match channel {
        STDIN => Some(frame::encode(frame::STDIN, data)),
        RESIZE => {
            let size: Value = serde_json::from_slice(data).ok()?;
            let rows = u16::try_from(size["Height"].as_u64()?).ok()?;
            let cols = u16::try_from(size["Width"].as_u64()?).ok()?;
            Some(frame::encode(frame::RESIZE, &frame::resize(rows, cols)))
        }
        CLOSE if data.first() == Some(&STDIN) => Some(frame::encode(frame::CLOSE_STDIN, &[])),
        _ => None,
    }
}

/// How long after the upgrade the first message waits: client-go reads messages as soon as
/// the socket is open but registers its streams a moment later, and drops a message for a
/// stream not yet registered ("Unknown stream id"); a process that answers at once (the exec
/// started before the upgrade) would lose its output and outcome.
const FIRST_MESSAGE_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

async fn bridge<C>(socket: WebSocket, agent: C, stdin: bool)
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let upgraded = tokio::time::Instant::now();
    let mut first = true;
    let (mut tx, mut rx) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(agent);
    let input = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            let data = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if let Some(f) = to_frame(&data) {
                if wr.write_all(&f).await.is_err() {
                    break;
                }
            }
        }
        // The client went away: its stdin is over.
        if stdin {
            let _ = wr.write_all(&frame::encode(frame::CLOSE_STDIN, &[])).await;
        }
    });
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 32 << 10];
    let mut code = None;
    'read: loop {
        while let Some((kind, payload)) = frame::decode(&mut pending) {
            let channel = match kind {
                frame::STDOUT => STDOUT,
                frame::STDERR => STDERR,
                frame::EXIT => {
                    let v: Value = serde_json::from_slice(&payload).unwrap_or_default();
                    code = Some(v["code"].as_i64().unwrap_or(1));
                    break 'read;
                }
                _ => continue,
            };
            let mut msg = Vec::with_capacity(payload.len() + 1);
            msg.push(channel);
            msg.extend_from_slice(&payload);
            if std::mem::take(&mut first) {
                tokio::time::sleep_until(upgraded + FIRST_MESSAGE_AFTER).await;
            }
            if tx.send(Message::Binary(msg.into())).await.is_err() {
                break 'read;
            }
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
    }
    let status = match code {
        Some(c) => outcome(c),
        None => json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
            "message": "the connection to the container ended before its process did"}),
    };
    if first {
        tokio::time::sleep_until(upgraded + FIRST_MESSAGE_AFTER).await;
    }
    finish(&mut tx, &status).await;
    input.abort();
}

/// The remote-command protocols offered over SPDY, best first (kubectl sends its list in
/// `X-Stream-Protocol-Version`; v4 carries the outcome as a Status on the error stream).
const SPDY_PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "v5.channel.k8s.io"];

/// Exec or attach over a connection upgraded to SPDY/3.1, kubectl's older transport (and its
/// fallback when a WebSocket upgrade fails): the client opens one stream per channel, named by
/// its `streamtype` header (error, stdin, stdout, stderr, resize); once they are there the
/// process's frames flow on them, and its outcome goes on the error stream.
pub async fn spdy_upgrade<C>(
    mut req: axum::extract::Request,
    agent: Result<C, Status>,
    flags: Streams,
) -> Response
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let offered: Vec<String> = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    let Some(protocol) = SPDY_PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
        return super::handlers::status_response(&Status::bad_request(format!(
            "no protocol in X-Stream-Protocol-Version ({}) is one this server speaks ({})",
            offered.join(", "),
            SPDY_PROTOCOLS.join(", ")
        )));
    };
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(io) = on.await {
            spdy_session(hyper_util::rt::TokioIo::new(io), agent, flags).await;
        }
    });
    axum::http::Response::builder()
        .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", *protocol)
        .body(axum::body::Body::empty())
        .unwrap_or_default()
}

/// Which streams a remote command has (from its query).
#[derive(Debug, Clone, Copy)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Streams {
    fn expected(&self) -> usize {
        // error, and resize with a terminal
        1 + usize::from(self.stdin)
            + usize::from(self.stdout)
            + usize::from(self.stderr && !self.tty)
            + usize::from(self.tty)
    }
}

async fn spdy_session<S, C>(conn: S, agent: Result<C, Status>, flags: Streams)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    use super::spdy::{self, Frame};
    let (r, mut w) = tokio::io::split(conn);
    let (out, mut frames) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(f) = frames.recv().await {
            if w.write_all(&f).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut reader = spdy::Reader::new(r);
    let mut replies = spdy::Writer::default();
    let mut ids: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    // The streams, until every one the command has is open (or 10 s pass).
    let opened = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while ids.len() < flags.expected() {
            match reader.next().await {
                Ok(Some(Frame::SynStream { id, headers, .. })) => {
                    let _ = out.send(replies.syn_reply(id, &[], false));
                    if let Some((_, t)) = headers.iter().find(|(k, _)| k == "streamtype") {
                        ids.insert(t.clone(), id);
                    }
                }
                Ok(Some(Frame::Ping { id })) => {
                    let _ = out.send(spdy::ping(id));
                }
                Ok(Some(_)) => {}
                _ => return false,
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    let error_id = ids.get("error").copied();
    let finish = |status: &Value| {
        if let Some(id) = error_id {
            let _ = out.send(spdy::data(id, status.to_string().as_bytes(), true));
        }
    };
    let mut agent = match (opened, agent) {
        (true, Ok(a)) => a,
        (_, Err(s)) => {
            finish(&json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": format!("error executing command in container: {}", s.message)}));
            drop(out);
            let _ = writer.await;
            return;
        }
        (false, Ok(_)) => {
            finish(&json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": "timed out waiting for the client to create the streams"}));
            drop(out);
            let _ = writer.await;
            return;
        }
    };
    let (stdin_id, resize_id) = (ids.get("stdin").copied(), ids.get("resize").copied());
    let (stdout_id, stderr_id) = (ids.get("stdout").copied(), ids.get("stderr").copied());
    let (mut rd, mut wr) = tokio::io::split(&mut agent);
    let input = async {
        let mut resize_buf: Vec<u8> = Vec::new();
        loop {
            match reader.next().await {
                Ok(Some(Frame::Data { id, flags: f, data })) => {
                    if !data.is_empty() {
                        let _ = out.send(spdy::window_update(id, u32::try_from(data.len()).unwrap_or(0)));
                    }
                    if Some(id) == stdin_id {
                        if !data.is_empty()
                            && wr.write_all(&frame::encode(frame::STDIN, &data)).await.is_err()
                        {
                            break;
                        }
                        if f & spdy::FLAG_FIN != 0 {
                            let _ = wr.write_all(&frame::encode(frame::CLOSE_STDIN, &[])).await;
                        }
                    } else if Some(id) == resize_id {
                        // A JSON object per resize, one after another.
                        resize_buf.extend_from_slice(&data);
                        let mut stream =
                            serde_json::Deserializer::from_slice(&resize_buf).into_iter::<Value>();
                        let mut used = 0;
                        while let Some(Ok(size)) = stream.next() {
                            used = stream.byte_offset();
                            let mut msg = vec![RESIZE];
                            msg.extend_from_slice(size.to_string().as_bytes());
                            if let Some(f) = to_frame(&msg) {
                                let _ = wr.write_all(&f).await;
                            }
                        }
                        resize_buf.drain(..used);
                    }
                }
                Ok(Some(Frame::Ping { id })) => {
                    let _ = out.send(spdy::ping(id));
                }
                Ok(Some(Frame::GoAway)) | Ok(None) | Err(_) => break,
                Ok(Some(_)) => {}
            }
        }
        if flags.stdin {
            let _ = wr.write_all(&frame::encode(frame::CLOSE_STDIN, &[])).await;
        }
        std::future::pending::<()>().await;
    };
    let output = async {
        let mut pending = Vec::new();
        let mut chunk = vec![0u8; 32 << 10];
        loop {
            while let Some((kind, payload)) = frame::decode(&mut pending) {
                let id = match kind {
                    frame::STDOUT => stdout_id,
                    frame::STDERR => stderr_id.or(stdout_id),
                    frame::EXIT => {
                        let v: Value = serde_json::from_slice(&payload).unwrap_or_default();
                        return Some(v["code"].as_i64().unwrap_or(1));
                    }
                    _ => None,
                };
                if let Some(id) = id {
                    let _ = out.send(spdy::data(id, &payload, false));
                }
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let code = tokio::select! {
        c = output => c,
        () = input => None,
    };
    for id in [stdout_id, stderr_id].into_iter().flatten() {
        let _ = out.send(spdy::data(id, &[], true));
    }
    finish(&match code {
        Some(c) => outcome(c),
        None => json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
            "message": "the connection to the container ended before its process did"}),
    });
    drop(out);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_become_tunnel_frames() {
        assert_eq!(to_frame(b"\x00ls\n"), Some(frame::encode(frame::STDIN, b"ls\n")));
        let resize = to_frame(b"\x04{\"Width\":80,\"Height\":24}").unwrap();
        let mut buf = resize;
        let (kind, p) = frame::decode(&mut buf).unwrap();
        assert_eq!((kind, frame::parse_resize(&p)), (frame::RESIZE, Some((24, 80))));
        assert_eq!(to_frame(&[255, 0]), Some(frame::encode(frame::CLOSE_STDIN, &[])));
        assert_eq!(to_frame(&[255, 1]), None);
        assert_eq!(to_frame(b""), None);
    }

    #[test]
    fn exit_codes_as_kubectl_reads_them() {
        assert_eq!(outcome(0)["status"], "Success");
        let f = outcome(3);
        assert_eq!(f["reason"], "NonZeroExitCode");
        assert_eq!(f["details"]["causes"][0]["message"], "3");
    }
}
