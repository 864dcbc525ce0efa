//! The control plane's end of the node tunnel (the protocol is drawn in `tug_api::tunnel`):
//! agents park idle upgraded connections here; `pods/NAME/log` and `pods/NAME/exec` take one
//! of the pod's node, send the request, and relay the answer to the user.

use super::AppState;
use super::handlers::{query_pairs, status_response};
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tug_api::status::Status;
use tug_api::tunnel::{EXEC_PROTOCOL, Reply, Request as TunnelRequest, TUNNEL_PROTOCOL, Target};

type Conn = TokioIo<hyper::upgrade::Upgraded>;

/// How long a request waits for the node's agent to offer a connection.
const WAIT: Duration = Duration::from_secs(10);
/// How long an agent has to answer a request on its idle connection (it answers once it has
/// found the container, before any output).
const REPLY_WAIT: Duration = Duration::from_secs(30);
/// Idle connections kept per node (an agent keeps two; the rest are from before a restart).
const MAX_IDLE: usize = 8;

/// The idle connections agents have parked, by node.
#[derive(Default)]
pub struct Tunnels {
    idle: Mutex<HashMap<String, Vec<Conn>>>,
    parked: Notify,
}

impl Tunnels {
    fn put(&self, node: &str, conn: Conn) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let list = idle.entry(node.to_string()).or_default();
            list.push(conn);
            if list.len() > MAX_IDLE {
                list.remove(0);
            }
        }
        self.parked.notify_waiters();
    }

    /// The node's newest idle connection, waiting for one until `deadline`.
    async fn take(&self, node: &str, deadline: tokio::time::Instant) -> Option<Conn> {
        loop {
            let parked = self.parked.notified();
            tokio::pin!(parked);
            parked.as_mut().enable();
            if let Some(c) =
                self.idle.lock().unwrap_or_else(|e| e.into_inner()).get_mut(node).and_then(Vec::pop)
            {
                return Some(c);
            }
            tokio::time::timeout_at(deadline, parked).await.ok()?;
        }
    }
}

pub(super) fn upgrade_protocol(req: &Request) -> Option<String> {
    let wants = req
        .headers()
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    if !wants {
        return None;
    }
    req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn switching(protocol: &str) -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, protocol)
        .body(Body::empty())
        .unwrap_or_default()
}

/// `GET /api/v1/nodes/{name}/tunnel` with `Upgrade: tug-tunnel`: an agent parks a connection.
pub async fn accept(State(st): State<Arc<AppState>>, Path(node): Path<String>, mut req: Request) -> Response {
    if upgrade_protocol(&req).as_deref() != Some(TUNNEL_PROTOCOL) {
        return status_response(&Status::bad_request(format!(
            "nodes/{node}/tunnel is for tug-agent: it needs Connection: upgrade and Upgrade: {TUNNEL_PROTOCOL}"
        )));
    }
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(io) = on.await {
            st.tunnels.put(&node, TokioIo::new(io));
        }
    });
    switching(TUNNEL_PROTOCOL)
}

/// The pod and the container a request names: kubectl's rules for choosing the container.
/// The pod and the node it is on.
pub(super) fn pod_on_node(st: &AppState, ns: &str, name: &str) -> Result<(Value, String), Status> {
    let info = tug_api::object::lookup("pods").ok_or_else(|| Status::internal("no pods kind"))?;
    let key = super::path::key(info, Some(ns), name);
    let pod: Value = super::handlers::blocking(|| st.store.get(&key))
        .map_err(|e| Status::internal(e.to_string()))?
        .ok_or_else(|| Status::not_found("pods", name))?
        .object;
    let node = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Status::bad_request(format!("pod {name} does not have a host assigned")))?
        .to_string();
    Ok((pod, node))
}

fn target(st: &AppState, ns: &str, name: &str, container: Option<&str>) -> Result<(Target, String), Status> {
    let (pod, node) = pod_on_node(st, ns, name)?;
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let (main, init) = (names("containers"), names("initContainers"));
    let container = match container.filter(|c| !c.is_empty()) {
        Some(c) if main.iter().chain(&init).any(|n| n == c) => c.to_string(),
        Some(c) => {
            return Err(Status::bad_request(format!("container {c} is not valid for pod {name}")));
        }
        None if main.len() == 1 => main[0].clone(),
        None => {
            return Err(Status::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                main.join(" ")
            )));
        }
    };
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    Ok((Target { namespace: ns.to_string(), pod: name.to_string(), uid, container }, node))
}

/// Sends `req` to the node's agent over one of its idle connections; returns the connection
/// once the agent said yes. A connection its agent no longer holds (it restarted) fails at
/// once and the next is tried.
/// A connection to `port` of a pod, through its node's tunnel (what a web analysis uses
/// to reach pods and Services from the control plane).
pub async fn dial_pod(
    st: &AppState,
    node: &str,
    (namespace, pod, uid): (&str, &str, &str),
    port: u16,
) -> Result<Conn, String> {
    let req =
        TunnelRequest::PortForward { namespace: namespace.into(), pod: pod.into(), uid: uid.into(), port };
    ask(st, node, &req).await.map_err(|s| s.message)
}

pub(super) async fn ask(st: &AppState, node: &str, req: &TunnelRequest) -> Result<Conn, Status> {
    ask_within(st, node, req, WAIT).await
}

async fn ask_within(st: &AppState, node: &str, req: &TunnelRequest, wait: Duration) -> Result<Conn, Status> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut line = serde_json::to_vec(req).map_err(|e| Status::internal(e.to_string()))?;
    line.push(b'\n');
    loop {
        let Some(mut conn) = st.tunnels.take(node, deadline).await else {
            return Err(Status::new(
                503,
                "ServiceUnavailable",
                format!("node {node} has no tunnel to the control plane: is its tug-agent running?"),
            ));
        };
        if conn.write_all(&line).await.is_err() || conn.flush().await.is_err() {
            continue;
        }
        // A connection that ends unanswered was stale (its agent restarted): the next is
        // tried. One that never answers (its host died without a word, or the agent is stuck)
        // ends the request: trying another could run an exec twice.
        let answer = match tokio::time::timeout(REPLY_WAIT, read_line(&mut conn)).await {
            Ok(Ok(Some(a))) => a,
            Ok(_) => continue,
            Err(_) => {
                return Err(Status::new(
                    504,
                    "Timeout",
                    format!(
                        "node {node} took the request but did not answer it in {}s",
                        REPLY_WAIT.as_secs()
                    ),
                ));
            }
        };
        let reply: Reply = serde_json::from_slice(&answer).unwrap_or_default();
        return match reply.error {
            None => Ok(conn),
            Some(e) => Err(Status::bad_request(e)),
        };
    }
}

async fn read_line(conn: &mut Conn) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if conn.read(&mut b).await? == 0 {
            return Ok(None);
        }
        if b[0] == b'\n' {
            return Ok(Some(line));
        }
        line.push(b[0]);
        if line.len() > 1 << 20 {
            return Ok(None);
        }
    }
}

/// Every node's usage summary, asked of their agents at once; nodes that do not answer
/// within a few seconds are left out (as metrics-server leaves out nodes it cannot scrape).
pub async fn summaries(st: &AppState, nodes: Vec<String>) -> Vec<(String, tug_api::tunnel::Summary)> {
    let asks = nodes.into_iter().map(|node| async move {
        let mut conn = ask_within(st, &node, &TunnelRequest::Stats, Duration::from_secs(3)).await.ok()?;
        let line = tokio::time::timeout(Duration::from_secs(3), read_line(&mut conn)).await.ok()?.ok()??;
        Some((node, serde_json::from_slice(&line).ok()?))
    });
    futures_util::future::join_all(asks).await.into_iter().flatten().collect()
}

fn flag(q: &[(String, String)], name: &str) -> bool {
    q.iter().any(|(k, v)| k == name && (v.is_empty() || tug_api::query_bool(v)))
}

/// The streams a remote command's query asks for.
fn streams(q: &[(String, String)]) -> super::channels::Streams {
    super::channels::Streams {
        stdin: flag(q, "stdin"),
        stdout: flag(q, "stdout"),
        stderr: flag(q, "stderr"),
        tty: flag(q, "tty"),
    }
}

fn value<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}/log?container=&follow=&tailLines=&previous=&timestamps=`:
/// the container's log as text, streamed while `follow` lasts.
pub async fn logs(
    State(st): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let q = query_pairs(q.as_deref().unwrap_or(""));
    let result = async {
        let tail_lines = match value(&q, "tailLines") {
            None | Some("") => None,
            Some(t) => match t.parse::<i64>() {
                Ok(n) if n < 0 => None,
                Ok(n) => Some(n.unsigned_abs()),
                Err(_) => return Err(Status::bad_request(format!("tailLines {t:?} is not a number"))),
            },
        };
        let since = match (value(&q, "sinceSeconds"), value(&q, "sinceTime")) {
            (Some(_), Some(_)) => {
                return Err(Status::bad_request("at most one of sinceTime or sinceSeconds may be specified"));
            }
            (Some(s), None) => {
                let secs: u64 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    Status::bad_request(format!("sinceSeconds: Invalid value: {s:?}: must be greater than 0"))
                })?;
                let at = std::time::SystemTime::now() - Duration::from_secs(secs);
                Some(humantime::format_rfc3339_nanos(at).to_string())
            }
            (None, Some(t)) => {
                humantime::parse_rfc3339_weak(t)
                    .map_err(|e| Status::bad_request(format!("sinceTime: Invalid value: {t:?}: {e}")))?;
                Some(t.to_string())
            }
            (None, None) => None,
        };
        let (target, node) = target(&st, &ns, &name, value(&q, "container"))?;
        let req = TunnelRequest::Logs {
            target,
            follow: flag(&q, "follow"),
            tail_lines,
            previous: flag(&q, "previous"),
            timestamps: flag(&q, "timestamps"),
            since,
        };
        ask(&st, &node, &req).await
    }
    .await;
    // `limitBytes`: the answer stops after that many bytes.
    let limit =
        value(&q, "limitBytes").and_then(|l| l.parse::<u64>().ok()).filter(|l| *l > 0).unwrap_or(u64::MAX);
    match result {
        Ok(conn) => {
            let chunks = futures_util::stream::unfold((conn, limit), |(mut conn, mut left)| async move {
                if left == 0 {
                    return None;
                }
                let mut buf = vec![0u8; 32 << 10];
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => None,
                    Ok(n) => {
                        let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                        left -= n as u64;
                        buf.truncate(n);
                        Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), (conn, left)))
                    }
                }
            });
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from_stream(chunks))
                .unwrap_or_default()
        }
        Err(s) => status_response(&s),
    }
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}/attach?container=&stdin=&stdout=&tty=` over
/// WebSocket (`kubectl attach`, `kubectl run -i`): the container's own stdio.
pub async fn attach(
    State(st): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Response {
    let q = query_pairs(q.as_deref().unwrap_or(""));
    let upgrade = upgrade_protocol(&req).unwrap_or_default();
    let spdy = upgrade.eq_ignore_ascii_case("SPDY/3.1");
    let tug = upgrade == EXEC_PROTOCOL;
    if !upgrade.eq_ignore_ascii_case("websocket") && !spdy && !tug {
        return status_response(&Status::bad_request(format!(
            "attach needs Connection: upgrade and Upgrade: websocket ({}), SPDY/3.1 or {EXEC_PROTOCOL}",
            super::channels::PROTOCOLS.join(", ")
        )));
    }
    let (target, node) = match target(&st, &ns, &name, value(&q, "container")) {
        Ok(t) => t,
        Err(s) => return status_response(&s),
    };
    let stdin = flag(&q, "stdin");
    let result = ask(&st, &node, &TunnelRequest::Attach { target, stdin }).await;
    if spdy {
        return super::channels::spdy_upgrade(req, result, streams(&q)).await;
    }
    if tug {
        let mut agent = match result {
            Ok(c) => c,
            Err(s) => return status_response(&s),
        };
        let mut req = req;
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(user) = on.await {
                let mut user = TokioIo::new(user);
                tug_client::relay::relay(&mut user, &mut agent).await;
            }
        });
        return switching(EXEC_PROTOCOL);
    }
    super::channels::upgrade(req, result, stdin).await
}

/// `POST /api/v1/namespaces/{ns}/pods/{name}/exec?container=&command=…&stdin=&tty=` with
/// `Upgrade: tug-exec`: after `101 Switching Protocols` the connection carries the
/// supervisor's frames to and from the process.
pub async fn exec(
    State(st): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    mut req: Request,
) -> Response {
    let q = query_pairs(q.as_deref().unwrap_or(""));
    let upgrade = upgrade_protocol(&req);
    let websocket = upgrade.as_deref().is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let spdy = upgrade.as_deref().is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1"));
    if upgrade.as_deref() != Some(EXEC_PROTOCOL) && !websocket && !spdy {
        return status_response(&Status::bad_request(format!(
            "exec needs Connection: upgrade and Upgrade: websocket (kubectl's {}), SPDY/3.1 or {EXEC_PROTOCOL} (tug exec's)",
            super::channels::PROTOCOLS.join(", ")
        )));
    }
    let command: Vec<String> = q.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
    if command.is_empty() {
        return status_response(&Status::bad_request(
            "you must specify at least one command for the container",
        ));
    }
    let (target, node) = match target(&st, &ns, &name, value(&q, "container")) {
        Ok(t) => t,
        Err(s) => return status_response(&s),
    };
    let r = TunnelRequest::Exec { target, command, stdin: flag(&q, "stdin"), tty: flag(&q, "tty") };
    let result = ask(&st, &node, &r).await;
    if websocket {
        // The pod is there: what goes wrong from here (no such command) is the process's
        // outcome on the error channel, as Kubernetes reports it, not a refused upgrade.
        return super::channels::upgrade(req, result, flag(&q, "stdin")).await;
    }
    if spdy {
        return super::channels::spdy_upgrade(req, result, streams(&q)).await;
    }
    let mut agent = match result {
        Ok(c) => c,
        Err(s) => return status_response(&s),
    };
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(user) = on.await {
            let mut user = TokioIo::new(user);
            tug_client::relay::relay(&mut user, &mut agent).await;
        }
    });
    switching(EXEC_PROTOCOL)
}
