//! `pods/NAME/portforward` (`kubectl port-forward`): Kubernetes' `portforward.k8s.io` protocol
//! over SPDY/3.1, carried in a WebSocket (`SPDY/3.1+portforward.k8s.io`, kubectl 1.31+'s first
//! choice) or on a connection upgraded to `SPDY/3.1`. For each forwarded connection the client
//! opens an error stream and a data stream with the same `requestID` and a `port`; once both
//! are there, the node's agent is asked (over the tunnel) for a connection to that port on the
//! pod's loopback, and the data stream and that connection are joined. A failure is written on
//! the error stream, as the kubelet writes it.

use super::AppState;
use super::handlers::status_response;
use super::spdy::{self, Frame};
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tug_api::status::Status;
use tug_api::tunnel::Request as TunnelRequest;

/// The WebSocket subprotocol of SPDY tunnelled in a WebSocket.
pub const WS_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
const STREAM_PROTOCOL: &str = "portforward.k8s.io";

pub async fn serve(
    State(st): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
    req: Request,
) -> Response {
    let (pod, node) = match super::tunnel::pod_on_node(&st, &ns, &name) {
        Ok(p) => p,
        Err(s) => return status_response(&s),
    };
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    let who = Pod { st: st.clone(), node, namespace: ns, name, uid };
    let upgrade = super::tunnel::upgrade_protocol(&req).unwrap_or_default();
    if upgrade.eq_ignore_ascii_case("websocket") {
        let (mut parts, _) = req.into_parts();
        let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => ws,
            Err(e) => return e.into_response(),
        };
        return ws.protocols([WS_PROTOCOL]).on_upgrade(move |socket| async move {
            // The WebSocket's binary messages are the SPDY connection's bytes.
            let (mine, theirs) = tokio::io::duplex(256 << 10);
            let (mut tx, mut rx) = socket.split();
            let (mut rd, mut wr) = tokio::io::split(theirs);
            let inbound = tokio::spawn(async move {
                while let Some(Ok(m)) = rx.next().await {
                    let bytes = match m {
                        Message::Binary(b) => b,
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                let _ = wr.shutdown().await;
            });
            let outbound = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = rd.read(&mut buf).await {
                    if n == 0 || tx.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
                let _ = tx.send(Message::Close(None)).await;
            });
            session(mine, who).await;
            inbound.abort();
            let _ = outbound.await;
        });
    }
    if upgrade == "tug-portforward" {
        // tug's own: one connection per forwarded connection, its bytes as they are.
        let port: u16 = match req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("ports="))
            .and_then(|p| p.parse().ok())
        {
            Some(p) => p,
            None => return status_response(&Status::bad_request("ports: a port number is required")),
        };
        let ask = TunnelRequest::PortForward {
            namespace: who.namespace.clone(),
            pod: who.name.clone(),
            uid: who.uid.clone(),
            port,
        };
        let mut agent = match super::tunnel::ask(&who.st, &who.node, &ask).await {
            Ok(c) => c,
            Err(s) => return status_response(&s),
        };
        let mut req = req;
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(io) = on.await {
                let mut io = hyper_util::rt::TokioIo::new(io);
                let _ = tokio::io::copy_bidirectional(&mut io, &mut agent).await;
            }
        });
        return Response::builder()
            .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "tug-portforward")
            .body(axum::body::Body::empty())
            .unwrap_or_default();
    }
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        let mut req = req;
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(io) = on.await {
                session(hyper_util::rt::TokioIo::new(io), who).await;
            }
        });
        return Response::builder()
            .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "Upgrade")
            .header("upgrade", "SPDY/3.1")
            .header("x-stream-protocol-version", STREAM_PROTOCOL)
            .body(axum::body::Body::empty())
            .unwrap_or_default();
    }
    status_response(&Status::bad_request(format!(
        "port forwarding needs an upgrade to websocket ({WS_PROTOCOL}) or SPDY/3.1"
    )))
}

/// The pod being forwarded to.
#[derive(Clone)]
struct Pod {
    st: Arc<AppState>,
    node: String,
    namespace: String,
    name: String,
    uid: String,
}

/// A forwarded connection being set up: its two streams and port.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<(u32, mpsc::UnboundedReceiver<Option<Vec<u8>>>)>,
    port: u16,
}

async fn session<S: AsyncRead + AsyncWrite + Send + 'static>(conn: S, pod: Pod) {
    let (r, mut w) = tokio::io::split(conn);
    let (out, mut frames) = mpsc::unbounded_channel::<Vec<u8>>();
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
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut inputs: HashMap<u32, mpsc::UnboundedSender<Option<Vec<u8>>>> = HashMap::new();
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing_warn(&format!("port forward to {}/{}: {e}", pod.namespace, pod.name));
                break;
            }
        };
        match frame {
            Frame::SynStream { id, headers, .. } => {
                let h = |k: &str| {
                    headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default()
                };
                let _ = out.send(replies.syn_reply(id, &[], false));
                let request = h("requestid");
                let pair = pairs.entry(request.clone()).or_default();
                pair.port = h("port").parse().unwrap_or(0);
                match h("streamtype").as_str() {
                    "error" => pair.error = Some(id),
                    "data" => {
                        let (tx, rx) = mpsc::unbounded_channel();
                        inputs.insert(id, tx);
                        pair.data = Some((id, rx));
                    }
                    other => {
                        let _ = out.send(spdy::rst_stream(id, 1));
                        tracing_warn(&format!("port forward: unknown stream type {other:?}"));
                    }
                }
                if pair.error.is_some() && pair.data.is_some() {
                    if let Some(pair) = pairs.remove(&request) {
                        tokio::spawn(forward(pod.clone(), pair, out.clone()));
                    }
                }
            }
            Frame::Data { id, flags, data } => {
                if !data.is_empty() {
                    let n = u32::try_from(data.len()).unwrap_or(0);
                    let _ = out.send(spdy::window_update(id, n));
                    if let Some(tx) = inputs.get(&id) {
                        let _ = tx.send(Some(data));
                    }
                }
                if flags & spdy::FLAG_FIN != 0 {
                    if let Some(tx) = inputs.remove(&id) {
                        let _ = tx.send(None);
                    }
                }
            }
            Frame::RstStream { id } => {
                if let Some(tx) = inputs.remove(&id) {
                    let _ = tx.send(None);
                }
            }
            Frame::Ping { id } => {
                let _ = out.send(spdy::ping(id));
            }
            Frame::GoAway => break,
            Frame::Other => {}
        }
    }
    drop(inputs);
    drop(out);
    let _ = writer.await;
}

fn tracing_warn(m: &str) {
    tracing::info!("tug-scheduler: {m}");
}

/// One forwarded connection: the agent's connection to the port joined to the data stream.
async fn forward(pod: Pod, pair: Pair, out: mpsc::UnboundedSender<Vec<u8>>) {
    let (Some(error), Some((data, mut input))) = (pair.error, pair.data) else { return };
    let req = TunnelRequest::PortForward {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        uid: pod.uid.clone(),
        port: pair.port,
    };
    let conn = match super::tunnel::ask(&pod.st, &pod.node, &req).await {
        Ok(c) => c,
        Err(s) => {
            let _ = out.send(spdy::data(error, s.message.as_bytes(), true));
            let _ = out.send(spdy::data(data, &[], true));
            return;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(conn);
    let to_pod = tokio::spawn(async move {
        while let Some(Some(bytes)) = input.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.send(spdy::data(data, &buf[..n], false)).is_err() {
                    break;
                }
            }
        }
    }
    let _ = out.send(spdy::data(data, &[], true));
    let _ = out.send(spdy::data(error, &[], true));
    to_pod.abort();
}
