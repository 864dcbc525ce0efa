//! The API client: HTTP/1.1 over the control plane's Unix socket, or over TCP with TLS
//! (`https://HOST:PORT`, with the credentials `tug join` wrote). A call with a JSON answer
//! reuses an idle keep-alive connection to the same server when one is at hand ([`Pool`]);
//! watches, streams and upgrades take a connection of their own.

use anyhow::{Context, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tug_api::status::Status;

/// The control plane's servers and which one answered last. A request goes to that one; when
/// it cannot be reached (refused, no answer to the connect, a failed handshake) the next is
/// tried, and the first that connects becomes the one for the requests after.
#[derive(Clone)]
pub struct Client {
    servers: Arc<[Server]>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    /// The user and groups every request impersonates (`Impersonate-User`,
    /// `Impersonate-Group`), when set.
    acting_as: Option<Arc<(String, Vec<String>)>>,
    /// Idle connections, shared by the clones of this client.
    pool: Arc<Pool>,
}

/// One way to reach a control-plane replica.
#[derive(Clone)]
pub enum Server {
    /// The local Unix socket.
    Unix(PathBuf),
    /// TCP with TLS.
    Tls { host: String, port: u16, config: Arc<rustls::ClientConfig> },
}

impl Server {
    fn describe(&self) -> String {
        match self {
            Server::Unix(p) => p.display().to_string(),
            Server::Tls { host, port, .. } => format!("https://{host}:{port}"),
        }
    }
}

/// How long a connection to one server may take (TCP and TLS) before the next is tried: a
/// replica cut off by the network answers nothing at all.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A connected stream to a server, either kind.
trait Stream: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static> Stream for T {}

/// A bearer token every request of this process presents (`tug --token`).
static BEARER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the bearer token (once).
pub fn set_bearer(token: &str) {
    let _ = BEARER.set(token.trim().to_string());
}

/// A failed call: the server's Status, or a transport problem.
// One per failed call, matched by value everywhere: a box would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum CallError {
    Server(Status),
    Transport(anyhow::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Server(s) => write!(f, "Error from server ({}): {}", s.reason, s.message),
            CallError::Transport(e) => write!(f, "{e:#}"),
        }
    }
}

impl Client {
    /// From `--server` (a socket path, `unix://PATH` or `https://HOST:PORT`; several,
    /// comma-separated, for the replicas of a highly available control plane), `TUG_SOCKET`,
    /// or the default socket. Over TLS the credentials come from `tls_dir`.
    pub fn new(server: Option<&str>, tls_dir: &Path) -> anyhow::Result<Client> {
        let raw = server
            .map(str::to_string)
            .or_else(|| std::env::var("TUG_SOCKET").ok())
            .unwrap_or_else(|| "/run/tug/tug.sock".into());
        let mut config = None;
        let mut servers = Vec::new();
        for one in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if one.starts_with("https://") {
                if config.is_none() {
                    config = Some(Arc::new(crate::tls::client_config(tls_dir)?));
                }
                servers.push(tls_server(one, config.clone().unwrap_or_else(|| unreachable!()))?);
            } else if one.starts_with("http://") {
                return Err(anyhow!("--server {one}: plain HTTP is not served; use https://"));
            } else {
                servers.push(Server::Unix(PathBuf::from(one.strip_prefix("unix://").unwrap_or(one))));
            }
        }
        Client::of(servers).ok_or_else(|| anyhow!("--server {raw:?} names no server"))
    }

    /// The local socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Client {
        Client::of(vec![Server::Unix(path.into())]).unwrap_or_else(|| unreachable!())
    }

    /// A TLS client for `https://HOST:PORT` (or several, comma-separated) with this
    /// configuration.
    pub fn tls(urls: &str, config: rustls::ClientConfig) -> anyhow::Result<Client> {
        let config = Arc::new(config);
        let servers = urls
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|u| tls_server(u, config.clone()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Client::of(servers).ok_or_else(|| anyhow!("{urls:?} names no server"))
    }

    fn of(servers: Vec<Server>) -> Option<Client> {
        (!servers.is_empty()).then(|| Client {
            servers: servers.into(),
            current: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            acting_as: None,
            pool: Arc::new(Pool::default()),
        })
    }

    /// This client with every request made as `user` in `groups` (impersonation, which the
    /// real user must be allowed: `kubectl --as`). Hollow nodes act as their nodes this way.
    pub fn impersonating(&self, user: &str, groups: &[&str]) -> Client {
        let mut c = self.clone();
        c.acting_as = Some(Arc::new((user.to_string(), groups.iter().map(|g| g.to_string()).collect())));
        c
    }

    /// The servers, in the order given.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// The servers, as given (comma-separated).
    pub fn describe(&self) -> String {
        self.servers.iter().map(Server::describe).collect::<Vec<_>>().join(",")
    }

    /// One client per server, each bound to its server alone (no failing over): for what
    /// must be open at every replica at once, as a node's tunnels are.
    pub fn each_server(&self) -> Vec<Client> {
        self.servers
            .iter()
            .filter_map(|s| Client::of(vec![s.clone()]))
            .map(|c| Client { acting_as: self.acting_as.clone(), ..c })
            .collect()
    }

    /// A connection to the server that answered last, else to the next one that answers.
    async fn connect(&self) -> Result<(Box<dyn Stream>, usize, String), CallError> {
        use std::sync::atomic::Ordering;
        let n = self.servers.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for i in 0..n {
            let at = (first + i) % n;
            let server = &self.servers[at];
            match tokio::time::timeout(CONNECT_TIMEOUT, connect_one(server)).await {
                Ok(Ok(stream)) => {
                    if i > 0 {
                        self.current.store(at, Ordering::Relaxed);
                    }
                    return Ok((stream, at, server.describe()));
                }
                Ok(Err(e)) => errors.push(e),
                Err(_) => {
                    errors.push(Unreached::Refused(format!("no answer in {} s", CONNECT_TIMEOUT.as_secs())))
                }
            }
        }
        let refused = |e: &str| {
            format!(
                "The connection to the server at {} was refused - is tug-scheduler running? ({e})",
                self.describe()
            )
        };
        Err(CallError::Transport(match errors.as_slice() {
            [Unreached::Refused(e)] => anyhow!(refused(e)),
            [Unreached::Other(e)] => anyhow!("{e}"),
            many => {
                let each: Vec<String> = self
                    .servers
                    .iter()
                    .zip(many)
                    .map(|(s, e)| match e {
                        Unreached::Refused(e) => format!("{}: {e}", s.describe()),
                        Unreached::Other(e) => e.clone(),
                    })
                    .collect();
                anyhow!(
                    "No server of {} answered - is tug-scheduler running? ({})",
                    self.describe(),
                    each.join("; ")
                )
            }
        }))
    }

    /// The request, ready to send (made again for a retry: hyper keeps a request it wrote).
    fn request(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
        headers: &[(&str, &str)],
        upgrade: Option<&str>,
    ) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "tug")
            .header("content-type", content_type)
            .header("accept", "application/json");
        if let Some(t) =
            BEARER.get().filter(|_| !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")))
        {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(a) = &self.acting_as {
            req = req.header("impersonate-user", a.0.as_str());
            for g in &a.1 {
                req = req.header("impersonate-group", g.as_str());
            }
        }
        if let Some(p) = upgrade {
            req = req.header("connection", "upgrade").header("upgrade", p);
        }
        req.body(Full::new(body))
    }

    /// A request on a connection of its own (a watch, a stream, an upgrade: they hold it).
    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
        upgrade: Option<&str>,
    ) -> Result<Response<Incoming>, CallError> {
        let req = self
            .request(method, path, content_type, Bytes::from(body), headers, upgrade)
            .map_err(|e| CallError::Transport(e.into()))?;
        self.send_fresh(req).await.map(|(resp, _)| resp)
    }

    /// `req` on a new connection (to the server that answered last, else the next that
    /// answers); the connection comes back with the answer, ready for the pool.
    async fn send_fresh(&self, req: Request<Full<Bytes>>) -> Result<(Response<Incoming>, Idle), CallError> {
        let (stream, at, server) = self.connect().await?;
        let (mut sender, server) = open(stream, &server).await?;
        let resp = send_on(&mut sender, req, &server).await?;
        let runtime = tokio::runtime::Handle::current().id();
        Ok((resp, Idle { server: at, sender, runtime, since: std::time::Instant::now() }))
    }

    /// A call whose JSON answer is read whole: on an idle connection to the current server
    /// when the pool has one, else on a new one; the connection goes back to the pool once
    /// the answer is read (a Status too: only a broken answer leaves it unfit).
    ///
    /// A pooled connection may have been closed by the server a moment ago (its idle
    /// timeout, a restart). A request hyper had not yet written goes on a new connection;
    /// one it wrote is sent again only when its method is idempotent (GET, PUT, DELETE), as
    /// Go's HTTP client does: a POST the server may have acted on is never repeated.
    async fn call_pooled(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<(Value, hyper::HeaderMap), CallError> {
        let body = Bytes::from(body);
        let idempotent = matches!(method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE);
        let make = || self.request(method.clone(), path, content_type, body.clone(), headers, None);
        let req = make().map_err(|e| CallError::Transport(e.into()))?;
        let current = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.servers.len();
        let sent = match self.pool.take(current) {
            Some(idle) => {
                let again = || if idempotent { make().ok() } else { None };
                idle.send(req, again).await.map_err(|(e, server)| {
                    let server = self.servers[server].describe();
                    CallError::Transport(anyhow!("request to {path} at {server}: {e}"))
                })?
            }
            None => Err(req),
        };
        let (resp, conn) = match sent {
            Ok(sent) => sent,
            Err(req) => self.send_fresh(req).await?,
        };
        let out = read_json(resp).await;
        if !matches!(out, Err(CallError::Transport(_))) {
            self.pool.put(conn);
        }
        out
    }

    /// One call with a JSON answer; a non-2xx answer is the server's Status.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(Value, hyper::HeaderMap), CallError> {
        self.call_pooled(method, path, content_type, body, &[]).await
    }

    /// A JSON call with extra request headers (`Impersonate-User`, …).
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<(Value, hyper::HeaderMap), CallError> {
        self.call_pooled(method, path, "application/json", body, headers).await
    }

    /// A JSON call with an `Authorization` header (`POST /join`).
    pub async fn call_authorized(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        auth: &str,
    ) -> Result<Value, CallError> {
        self.call_pooled(method, path, "application/json", body, &[("authorization", auth)])
            .await
            .map(|r| r.0)
    }

    pub async fn get(&self, path: &str) -> Result<Value, CallError> {
        self.call(Method::GET, path, "application/json", Vec::new()).await.map(|r| r.0)
    }

    /// A request that turns the connection into a byte stream of `protocol` (HTTP/1.1
    /// `Upgrade`, answered `101 Switching Protocols`); any other answer is the server's Status.
    pub async fn upgrade(
        &self,
        method: Method,
        path: &str,
        protocol: &str,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, CallError> {
        let resp = self.send(method, path, "application/json", Vec::new(), &[], Some(protocol)).await?;
        if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            let code = resp.status();
            read_json(resp).await?;
            return Err(CallError::Transport(anyhow!(
                "{path}: the server answered {code}, not 101 Switching Protocols"
            )));
        }
        let io = hyper::upgrade::on(resp)
            .await
            .map_err(|e| CallError::Transport(anyhow!("upgrading {path}: {e}")))?;
        Ok(TokioIo::new(io))
    }

    /// A GET whose answer is a stream of bytes (`pods/NAME/log`): `each` gets every piece as
    /// it arrives, until the server ends it or `each` says stop.
    pub async fn stream(&self, path: &str, mut each: impl FnMut(&[u8]) -> bool) -> Result<(), CallError> {
        let resp = self.send(Method::GET, path, "application/json", Vec::new(), &[], None).await?;
        if !resp.status().is_success() {
            return read_json(resp).await.map(drop);
        }
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| CallError::Transport(anyhow!("{path}: {e}")))?;
            if let Some(data) = frame.data_ref() {
                if !each(data) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// A watch: calls `each` with every event object until the stream ends or `each` says stop.
    pub async fn watch(&self, path: &str, mut each: impl FnMut(&Value) -> bool) -> Result<(), CallError> {
        let resp = self.send(Method::GET, path, "application/json", Vec::new(), &[], None).await?;
        if !resp.status().is_success() {
            return read_json(resp).await.map(drop);
        }
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| CallError::Transport(anyhow!("watch stream: {e}")))?;
            if let Some(data) = frame.data_ref() {
                buf.extend_from_slice(data);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                        if !each(&v) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn tls_server(url: &str, config: Arc<rustls::ClientConfig>) -> anyhow::Result<Server> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("{url}: expected https://HOST:PORT"))?
        .trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| anyhow!("{url}: expected https://HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| anyhow!("{url}: bad port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok(Server::Tls { host, port, config })
}

/// Why a server could not be reached.
enum Unreached {
    /// Nothing took the connection (the socket's error, or no answer in time).
    Refused(String),
    /// Something answered, wrongly (a TLS failure): the whole message.
    Other(String),
}

/// TCP keepalive of the connections to a server: probes after 30 s of silence, every 10 s,
/// 3 unanswered end it.
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;

/// A connection that sits idle for long (an agent's parked tunnel, a quiet watch) learns of a
/// server whose host died or was cut off (no FIN, no RST) within about a minute, and is made
/// again, instead of waiting on it for good. A request written to such a server (on a
/// connection from the pool, say) is given up as long after its bytes went unanswered
/// (`TCP_USER_TIMEOUT`): the kernel's own retransmissions would take a quarter of an hour.
fn keep_alive(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let sock = socket2::SockRef::from(tcp);
    sock.set_tcp_keepalive(&keepalive)?;
    sock.set_tcp_user_timeout(Some(KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES))
}

/// A connected (and, over TCP, TLS-established) stream to one server, or why not.
async fn connect_one(server: &Server) -> Result<Box<dyn Stream>, Unreached> {
    let refused = |e: std::io::Error| Unreached::Refused(e.to_string());
    match server {
        Server::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p).await.map_err(refused)?;
            Ok(Box::new(TokioIo::new(s)))
        }
        Server::Tls { host, port, config } => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await.map_err(refused)?;
            keep_alive(&tcp).map_err(refused)?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| Unreached::Other(format!("{host}: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| Unreached::Other(format!("TLS with {}: {e}", server.describe())))?;
            Ok(Box::new(TokioIo::new(tls)))
        }
    }
}

/// How a [`Client::watch_resuming`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchEnd {
    /// `each` asked to stop.
    Stopped,
    /// The revision is gone (compacted away, or the watcher fell behind): list again.
    Expired,
}

impl Client {
    /// A watch of `path` (a collection, with any selectors in its query) from revision `rv`
    /// that outlives its streams: when one ends or breaks (a replica killed, a network cut) it
    /// is opened again from the last revision it delivered — on the next server when the
    /// client has several — until `each` says stop or the server answers 410, when the
    /// caller must list again. `each` gets ADDED, MODIFIED and DELETED events; bookmarks only
    /// move the revision on. Broken streams are reported to `broke` before the retry.
    pub async fn watch_resuming(
        &self,
        path: &str,
        mut rv: String,
        mut each: impl FnMut(&Value) -> bool,
        mut broke: impl FnMut(&CallError),
    ) -> WatchEnd {
        let sep = if path.contains('?') { '&' } else { '?' };
        loop {
            let url = format!("{path}{sep}watch=true&allowWatchBookmarks=true&resourceVersion={rv}");
            let mut end = None;
            let r = self
                .watch(&url, |ev| {
                    match ev["type"].as_str() {
                        Some("ERROR") => {
                            if ev["object"]["code"] == 410 {
                                end = Some(WatchEnd::Expired);
                            }
                            return false;
                        }
                        Some("BOOKMARK") => {}
                        _ => {
                            if !each(ev) {
                                end = Some(WatchEnd::Stopped);
                                return false;
                            }
                        }
                    }
                    if let Some(v) = ev["object"]["metadata"]["resourceVersion"].as_str() {
                        rv = v.to_string();
                    }
                    true
                })
                .await;
            if let Some(end) = end {
                return end;
            }
            match r {
                Err(CallError::Server(s)) if s.code == 410 => return WatchEnd::Expired,
                Err(e) => {
                    broke(&e);
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                // The server ended the stream (a timeout, a shutdown): open it again.
                Ok(()) => {}
            }
        }
    }
}

/// An HTTP/1.1 connection over `io`, its task spawned on the current runtime.
async fn open<IO>(io: IO, server: &str) -> Result<(SendRequest, String), CallError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| CallError::Transport(anyhow!("handshake with {server}: {e}")))?;
    tokio::spawn(conn.with_upgrades());
    Ok((sender, server.to_string()))
}

/// One request on a connection that takes it.
async fn send_on(
    sender: &mut SendRequest,
    req: Request<Full<Bytes>>,
    server: &str,
) -> Result<Response<Incoming>, CallError> {
    let path = req.uri().to_string();
    sender
        .send_request(req)
        .await
        .map_err(|e| CallError::Transport(anyhow!("request to {path} at {server}: {e}")))
}

type SendRequest = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// How long an idle connection stays in the pool: well within the server's idle timeout
/// (`tug-scheduler --idle-timeout`, 90 s as kube-apiserver's), so the server seldom closes
/// one just as it is taken.
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// The most idle connections a client keeps: a burst's hundred calls at once make a hundred
/// connections, of which this many stay for the calls after.
const POOL_MAX: usize = 16;

/// A client's idle keep-alive connections. An agent makes several calls for each pod it
/// starts; a new connection for each — over TLS a handshake each — cost both ends more than
/// the calls themselves.
#[derive(Default)]
struct Pool {
    idle: std::sync::Mutex<Vec<Idle>>,
}

/// A connection and where it goes.
struct Idle {
    /// The server's index in the client's list.
    server: usize,
    sender: SendRequest,
    /// The runtime its task runs on: a connection is only taken by a call on the same one,
    /// which drives its task while it waits (another runtime may be idle, or gone).
    runtime: tokio::runtime::Id,
    /// When it was made, then when it was last put back.
    since: std::time::Instant,
}

impl Idle {
    /// `req` on this connection: the answer and the connection, or the request to send on a
    /// new one — when hyper had not written it (the server closed the connection first), or
    /// had and `again` makes it anew (an idempotent request). Otherwise the error, and the
    /// server's index.
    async fn send(
        mut self,
        req: Request<Full<Bytes>>,
        again: impl FnOnce() -> Option<Request<Full<Bytes>>>,
    ) -> Result<Result<(Response<Incoming>, Idle), Request<Full<Bytes>>>, (hyper::Error, usize)> {
        if self.sender.ready().await.is_err() {
            return Ok(Err(req));
        }
        let mut e = match self.sender.try_send_request(req).await {
            Ok(resp) => return Ok(Ok((resp, self))),
            Err(e) => e,
        };
        if let Some(unsent) = e.take_message() {
            return Ok(Err(unsent));
        }
        let error = e.into_error();
        match again().filter(|_| error.is_incomplete_message()) {
            Some(req) => Ok(Err(req)),
            None => Err((error, self.server)),
        }
    }
}

impl Pool {
    /// An idle connection to `server` made on the current runtime; connections closed or
    /// idle too long are dropped on the way.
    fn take(&self, server: usize) -> Option<Idle> {
        let runtime = tokio::runtime::Handle::try_current().ok()?.id();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|c| !c.sender.is_closed() && c.since.elapsed() < POOL_IDLE);
        let i = idle.iter().rposition(|c| c.server == server && c.runtime == runtime)?;
        Some(idle.swap_remove(i))
    }

    fn put(&self, mut conn: Idle) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL_MAX && !conn.sender.is_closed() {
            conn.since = std::time::Instant::now();
            idle.push(conn);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The JSON body of an answer; a non-2xx answer is the server's Status.
/// The text of a `Warning: 299 - "text"` header (Kubernetes' warnings: Pod Security's
/// `would violate …`), unquoted.
pub fn warning_text(header: &str) -> Option<String> {
    let quoted = header.split_once(" - ")?.1.trim();
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    Some(out)
}

async fn read_json(resp: Response<Incoming>) -> Result<(Value, hyper::HeaderMap), CallError> {
    let (parts, body) = resp.into_parts();
    // Printed as kubectl prints them, whoever called.
    for w in parts.headers.get_all("warning").iter().filter_map(|v| v.to_str().ok()).filter_map(warning_text)
    {
        eprintln!("Warning: {w}");
    }
    let bytes = body
        .collect()
        .await
        .map_err(|e| CallError::Transport(anyhow!("reading the answer: {e}")))?
        .to_bytes();
    let v: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("the server answered {} with a body that is not JSON", parts.status))
        .map_err(CallError::Transport)?;
    if !parts.status.is_success() {
        let status: Status = serde_json::from_value(v)
            .unwrap_or_else(|_| Status::new(parts.status.as_u16(), "Unknown", parts.status.to_string()));
        return Err(CallError::Server(status));
    }
    Ok((v, parts.headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bare HTTP/1.1 server on a Unix socket answering `{}` to every request; with
    /// `close_after` it closes each connection after that many answers (without saying so,
    /// as a server at its idle timeout or a restart does). Returns the connections accepted.
    async fn serve(
        listener: tokio::net::UnixListener,
        close_after: Option<usize>,
    ) -> Arc<std::sync::atomic::AtomicUsize> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut buf, mut answered) = (Vec::new(), 0);
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = s.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        // Requests here carry their body's length; a head ends the request
                        // once that many bytes follow it.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if buf.len() < end + 4 + len {
                                break;
                            }
                            buf.drain(..end + 4 + len);
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                            if s.write_all(ok).await.is_err() {
                                return;
                            }
                            answered += 1;
                            if close_after.is_some_and(|n| answered >= n) {
                                return;
                            }
                        }
                    }
                });
            }
        });
        accepted
    }

    #[tokio::test]
    async fn calls_one_after_another_share_one_connection() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let accepted = serve(tokio::net::UnixListener::bind(&sock).unwrap(), None).await;
        let client = Client::unix(&sock);
        for _ in 0..5 {
            client.get("/api/v1/pods").await.unwrap();
            client.call(Method::POST, "/api/v1/events", "application/json", b"{}".to_vec()).await.unwrap();
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(client.pool.len(), 1);
        // Calls at once each take a connection; the pool keeps them for the next.
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let c = client.clone();
            calls.spawn(async move { c.get("/api/v1/pods").await.map(drop) });
        }
        while let Some(r) = calls.join_next().await {
            r.unwrap().unwrap();
        }
        assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2);
        assert!(client.pool.len() >= 2);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_used_again() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let accepted = serve(tokio::net::UnixListener::bind(&sock).unwrap(), Some(1)).await;
        let client = Client::unix(&sock);
        // Until the client has seen the server close every pooled connection.
        let closes_seen = || async {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while client.pool.idle.lock().unwrap().iter().any(|c| !c.sender.is_closed()) {
                assert!(std::time::Instant::now() < deadline, "the server's close was never seen");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        for i in 1..=4 {
            // Straight after the last answer: the close may not be seen yet (a GET is sent
            // again on a new connection), or already (the connection is dropped).
            client.get("/api/v1/pods").await.unwrap();
            closes_seen().await;
            // A POST after the close was seen goes on a new connection.
            client.call(Method::POST, "/api/v1/events", "application/json", b"{}".to_vec()).await.unwrap();
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2 * i);
        }
    }

    #[tokio::test]
    async fn a_connection_to_a_server_probes_a_silent_peer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        keep_alive(&tcp).unwrap();
        let sock = socket2::SockRef::from(&tcp);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(std::time::Duration::from_secs(60)));
    }
}
