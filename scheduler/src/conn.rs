//! Serving one connection (the Unix socket's or a TLS one) with Kubernetes' timeouts:
//!
//! - **slow headers**: a request's head must be complete within `header` (10 s) of its first
//!   byte, or the connection is closed — a client trickling a header byte by byte holds
//!   nothing for long;
//! - **idle**: a connection waiting for its next request (or its first) is closed after
//!   `idle` (90 s, kube-apiserver's idle timeout).
//!
//! hyper's own header-read timer starts whenever it waits for a request head, idle or not:
//! it is given `idle`. The shorter bound from the first byte is [`Guarded`]'s: it sees the
//! bytes arrive and the request start (the service is called), so it knows when a head is
//! being read. An upgraded connection (exec, the node tunnel) is the handler's: no timeout.
//! On shutdown each connection finishes the request it serves and closes.

use crate::tls::Peer;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::ServiceExt;

/// The client's address (TLS connections; the Unix socket has none), for the audit log.
#[derive(Debug, Clone)]
pub struct SourceAddr(pub String);

/// The two bounds.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From a request's first byte to the end of its head.
    pub header: Duration,
    /// Waiting for a request.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts { header: Duration::from_secs(10), idle: Duration::from_secs(90) }
    }
}

/// What the connection's reader and its service share.
#[derive(Default)]
struct Phase {
    /// A request is being served (its head was read), or the connection was upgraded.
    busy: AtomicBool,
    upgraded: AtomicBool,
    /// When the head being read must be complete.
    deadline: Mutex<Option<Instant>>,
}

impl Phase {
    fn started(&self) {
        self.busy.store(true, Ordering::SeqCst);
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn finished(&self, upgraded: bool) {
        if upgraded {
            self.upgraded.store(true, Ordering::SeqCst);
        }
        self.busy.store(false, Ordering::SeqCst);
    }

    fn reading_head(&self) -> bool {
        !self.busy.load(Ordering::SeqCst) && !self.upgraded.load(Ordering::SeqCst)
    }
}

/// The connection's IO, with the slow-header bound.
struct Guarded<T> {
    inner: T,
    phase: Arc<Phase>,
    header: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !this.phase.reading_head() {
            this.timer = None;
            return r;
        }
        let mut deadline = this.phase.deadline.lock().unwrap_or_else(|e| e.into_inner());
        if deadline.is_none() && matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let at = Instant::now() + this.header;
            *deadline = Some(at);
            this.timer = Some(Box::pin(tokio::time::sleep_until(at.into())));
        }
        if deadline.is_none() {
            this.timer = None;
        }
        drop(deadline);
        if let Some(t) = &mut this.timer {
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request head did not arrive in time",
                )));
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves `app` on one connection until the client closes it, a timeout ends it, or
/// `stop` turns true (then the request in progress finishes first).
pub async fn serve<T>(
    io: T,
    app: Router,
    peer: Peer,
    source: Option<String>,
    t: Timeouts,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let phase = Arc::new(Phase::default());
    let io = Guarded { inner: io, phase: phase.clone(), header: t.header, timer: None };
    let svc = tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        if let Some(s) = &source {
            req.extensions_mut().insert(SourceAddr(s.clone()));
        }
        phase.started();
        let (app, phase) = (app.clone(), phase.clone());
        async move {
            let resp = app.oneshot(req).await;
            let upgraded =
                resp.as_ref().is_ok_and(|r| r.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS);
            phase.finished(upgraded);
            resp
        }
    });
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    // HTTP/1.1 only (what every client here speaks): the version sniffing of hyper-util's
    // auto builder would read before hyper's header timer starts.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(t.idle);
    let conn = builder.serve_connection(TokioIo::new(io), svc).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
