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

async fn bridge<C>(socket: WebSocket, agent: C, stdin: bool)
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
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
    finish(&mut tx, &status).await;
    input.abort();
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
