//! The API client: HTTP/1.1 over the control plane's Unix socket, or over TCP with TLS
//! (`https://HOST:PORT`, with the credentials `tug join` wrote). One connection per request.

use anyhow::{Context, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tug_api::status::Status;

/// Where the control plane listens and how to reach it.
#[derive(Clone)]
pub enum Client {
    /// The local Unix socket.
    Unix(PathBuf),
    /// TCP with TLS.
    Tls { host: String, port: u16, config: Arc<rustls::ClientConfig> },
}

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
    /// From `--server` (a socket path, `unix://PATH` or `https://HOST:PORT`), `TUG_SOCKET`, or
    /// the default socket. Over TLS the credentials come from `tls_dir`.
    pub fn new(server: Option<&str>, tls_dir: &Path) -> anyhow::Result<Client> {
        let raw = server
            .map(str::to_string)
            .or_else(|| std::env::var("TUG_SOCKET").ok())
            .unwrap_or_else(|| "/run/tug/tug.sock".into());
        if raw.starts_with("https://") {
            return Client::tls(&raw, crate::tls::client_config(tls_dir)?);
        }
        if raw.starts_with("http://") {
            return Err(anyhow!("--server {raw}: plain HTTP is not served; use https://"));
        }
        Ok(Client::Unix(PathBuf::from(raw.strip_prefix("unix://").unwrap_or(&raw))))
    }

    /// A TLS client for `https://HOST:PORT` with this configuration.
    pub fn tls(url: &str, config: rustls::ClientConfig) -> anyhow::Result<Client> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("{url}: expected https://HOST:PORT"))?
            .trim_end_matches('/');
        let (host, port) =
            rest.rsplit_once(':').ok_or_else(|| anyhow!("{url}: expected https://HOST:PORT"))?;
        let port: u16 = port.parse().map_err(|_| anyhow!("{url}: bad port {port:?}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        Ok(Client::Tls { host, port, config: Arc::new(config) })
    }

    fn describe(&self) -> String {
        match self {
            Client::Unix(p) => p.display().to_string(),
            Client::Tls { host, port, .. } => format!("https://{host}:{port}"),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
        upgrade: Option<&str>,
    ) -> Result<Response<Incoming>, CallError> {
        let refused = |e: std::io::Error| {
            CallError::Transport(anyhow!(
                "The connection to the server at {} was refused - is tug-scheduler running? ({e})",
                self.describe()
            ))
        };
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
        if let Some(p) = upgrade {
            req = req.header("connection", "upgrade").header("upgrade", p);
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| CallError::Transport(e.into()))?;
        match self {
            Client::Unix(p) => {
                let stream = tokio::net::UnixStream::connect(p).await.map_err(refused)?;
                exchange(TokioIo::new(stream), req, &self.describe()).await
            }
            Client::Tls { host, port, config } => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await.map_err(refused)?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| CallError::Transport(anyhow!("{host}: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| CallError::Transport(anyhow!("TLS with {}: {e}", self.describe())))?;
                exchange(TokioIo::new(tls), req, &self.describe()).await
            }
        }
    }

    /// One call with a JSON answer; a non-2xx answer is the server's Status.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(Value, hyper::HeaderMap), CallError> {
        read_json(self.send(method, path, content_type, body, &[], None).await?).await
    }

    /// A JSON call with extra request headers (`Impersonate-User`, …).
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<(Value, hyper::HeaderMap), CallError> {
        read_json(self.send(method, path, "application/json", body, headers, None).await?).await
    }

    /// A JSON call with an `Authorization` header (`POST /join`).
    pub async fn call_authorized(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        auth: &str,
    ) -> Result<Value, CallError> {
        read_json(self.send(method, path, "application/json", body, &[("authorization", auth)], None).await?)
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

/// One request on a fresh connection.
async fn exchange<IO>(
    io: IO,
    req: Request<Full<Bytes>>,
    server: &str,
) -> Result<Response<Incoming>, CallError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let path = req.uri().to_string();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| CallError::Transport(anyhow!("handshake with {server}: {e}")))?;
    tokio::spawn(conn.with_upgrades());
    sender.send_request(req).await.map_err(|e| CallError::Transport(anyhow!("request to {path}: {e}")))
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
