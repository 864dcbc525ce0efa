//! The API client: HTTP/1.1 over the control plane's Unix socket, one connection per request.

use anyhow::{Context, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::path::PathBuf;
use tug_api::status::Status;

/// Where the control plane listens.
#[derive(Debug, Clone)]
pub struct Client {
    pub socket: PathBuf,
}

/// A failed call: the server's Status, or a transport problem.
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
    /// From `--server` (a path or `unix://PATH`), `TUG_SOCKET`, or the default socket.
    pub fn new(server: Option<&str>) -> anyhow::Result<Client> {
        let raw = server
            .map(str::to_string)
            .or_else(|| std::env::var("TUG_SOCKET").ok())
            .unwrap_or_else(|| "/run/tug/tug.sock".into());
        if raw.starts_with("https://") || raw.starts_with("http://") {
            return Err(anyhow!(
                "--server {raw}: only the Unix socket is supported so far (TLS over TCP is not built yet)"
            ));
        }
        Ok(Client { socket: PathBuf::from(raw.strip_prefix("unix://").unwrap_or(&raw)) })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Response<Incoming>, CallError> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| {
            CallError::Transport(anyhow!(
                "The connection to the server at {} was refused - is tug-scheduler running? ({e})",
                self.socket.display()
            ))
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CallError::Transport(anyhow!("handshake with {}: {e}", self.socket.display())))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "tug")
            .header("content-type", content_type)
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::Transport(e.into()))?;
        sender.send_request(req).await.map_err(|e| CallError::Transport(anyhow!("request to {path}: {e}")))
    }

    /// One call with a JSON answer; a non-2xx answer is the server's Status.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(Value, hyper::HeaderMap), CallError> {
        let resp = self.send(method, path, content_type, body).await?;
        let (parts, body) = resp.into_parts();
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

    pub async fn get(&self, path: &str) -> Result<Value, CallError> {
        self.call(Method::GET, path, "application/json", Vec::new()).await.map(|r| r.0)
    }

    /// A watch: calls `each` with every event object until the stream ends or `each` says stop.
    pub async fn watch(&self, path: &str, mut each: impl FnMut(&Value) -> bool) -> Result<(), CallError> {
        let resp = self.send(Method::GET, path, "application/json", Vec::new()).await?;
        if !resp.status().is_success() {
            let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let status = serde_json::from_slice(&bytes).unwrap_or_else(|_| Status::internal("watch failed"));
            return Err(CallError::Server(status));
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
