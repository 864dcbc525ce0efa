//! The built-in Ingress controller (IngressClass `tug`, controller
//! `tug.io/ingress-controller`): every node serves the Ingresses of its class on its own
//! ports 80 and 443 (`--ingress-http-port`, `--ingress-https-port`).
//!
//! ```text
//!   client ── :80 HTTP/1.1 or h2c ──┐
//!   client ── :443 TLS (SNI → the Ingress' Secret; ALPN h2, http/1.1) ──┤
//!                                   ├─ route: host (exact, then *.wildcard, then any)
//!                                   │         path (Exact, then the longest Prefix)
//!                                   │         else the default backend, else 404
//!                                   └─ upstream: the Service port's ready endpoints, the
//!                                      one with the fewest requests in flight; a refused
//!                                      connection is tried on the next (3 in all);
//!                                      HTTP/1.1 connections kept and reused
//! ```
//!
//! [`compile`] makes the routing table from the API objects (pure); [`Routes::route`]
//! picks a backend (pure); the server runs on a runtime of its own, on one thread that lives
//! in the node's network namespace, so its listeners and its upstream connections are the
//! node's.
//! One access log line per request (`tug-agent: ingress: …`).

use crate::catalog::Objects;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use rustls::sign::CertifiedKey;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tug_api::kinds::networking::{Ingress, IngressBackend, served_by_tug};

/// Where a request goes: a Service port and its ready endpoints now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `namespace/name:port`, for the log.
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PathRoute {
    path: String,
    exact: bool,
    backend: Backend,
}

/// The routing table of every Ingress this controller serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// By host pattern (`foo.example`, `*.example`, or `` for rules without a host).
    hosts: BTreeMap<String, Vec<PathRoute>>,
    default: Option<Backend>,
    /// TLS Secrets wanted: `(namespace, secret name, hosts)`.
    pub tls: Vec<(String, String, Vec<String>)>,
}

/// Whether `path` is under `prefix` by whole path elements (`/a` covers `/a`, `/a/`, `/a/b`,
/// not `/ab`).
fn under(prefix: &str, path: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        return true;
    }
    path == p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'))
}

impl Routes {
    /// The backend for `host` (without its port) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<&Backend> {
        let host = host.to_ascii_lowercase();
        let wildcard = host.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        let paths = self
            .hosts
            .get(&host)
            .or_else(|| wildcard.and_then(|w| self.hosts.get(&w)))
            .or_else(|| self.hosts.get(""));
        let best = paths
            .into_iter()
            .flatten()
            .filter(|r| if r.exact { r.path == path } else { under(&r.path, path) });
        // Exact first, then the longest prefix.
        best.max_by_key(|r| (r.exact, r.path.trim_end_matches('/').len()))
            .map(|r| &r.backend)
            .or(self.default.as_ref())
    }
}

/// A backend's Service port → its ready endpoints.
fn backend(b: &IngressBackend, ns: &str, o: &Objects) -> Option<Backend> {
    let s = b.service.as_ref()?;
    let svc = o.services.get(&format!("{ns}/{}", s.name));
    let port = svc.and_then(|svc| {
        svc["spec"]["ports"].as_array()?.iter().find(|p| match (&s.port.name, s.port.number) {
            (Some(n), _) => p["name"] == n.as_str(),
            (None, Some(n)) => p["port"].as_i64() == Some(n),
            _ => false,
        })
    });
    let label = s.port.name.clone().or(s.port.number.map(|n| n.to_string())).unwrap_or_default();
    let endpoints = match port {
        Some(p) => crate::proxy::port_endpoints(
            o.endpoints.get(&format!("{ns}/{}", s.name)),
            p["name"].as_str().unwrap_or_default(),
            crate::proxy::rules::Proto::Tcp,
        )
        .into_iter()
        .filter(|_| p["protocol"].as_str().unwrap_or("TCP") == "TCP")
        .map(|(ip, port, _)| SocketAddr::from((ip, port)))
        .collect(),
        None => Vec::new(),
    };
    Some(Backend { name: format!("{ns}/{}:{label}", s.name), endpoints })
}

/// The routing table from the catalog's Ingresses, classes, Services and Endpoints. Two
/// Ingresses with the same host and path: the older one (then by name) wins.
pub fn compile(o: &Objects) -> Routes {
    let mut served: Vec<(&Value, Ingress)> = o
        .ingresses
        .values()
        .filter(|i| served_by_tug(i, o.ingress_classes.values()))
        .filter_map(|i| {
            let spec = i["spec"].clone();
            let meta = i["metadata"].clone();
            Some((i, serde_json::from_value(serde_json::json!({"metadata": meta, "spec": spec})).ok()?))
        })
        .collect();
    served.sort_by_key(|(v, _)| {
        (
            v["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_string(),
            crate::catalog::key_of(v),
        )
    });
    let mut routes = Routes::default();
    for (_, ing) in &served {
        let ns = ing.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        if routes.default.is_none() {
            routes.default = ing.spec.default_backend.as_ref().and_then(|b| backend(b, &ns, o));
        }
        for rule in &ing.spec.rules {
            let host = rule.host.clone().unwrap_or_default().to_ascii_lowercase();
            let list = routes.hosts.entry(host).or_default();
            for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let Some(b) = backend(&p.backend, &ns, o) else { continue };
                let path = p.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
                let exact = p.path_type == "Exact";
                if !list.iter().any(|r| r.path == path && r.exact == exact) {
                    list.push(PathRoute { path, exact, backend: b });
                }
            }
        }
        for t in &ing.spec.tls {
            if let Some(secret) = &t.secret_name {
                let hosts = t.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
                routes.tls.push((ns.clone(), secret.clone(), hosts));
            }
        }
    }
    routes
}

/// The certificates by host pattern, from `kubernetes.io/tls` Secrets; `` is the default
/// (a TLS entry without hosts).
#[derive(Debug, Default)]
pub struct Certs(HashMap<String, Arc<CertifiedKey>>);

impl Certs {
    fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let h = sni.unwrap_or_default().to_ascii_lowercase();
        let wildcard = h.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        self.0.get(&h).or_else(|| wildcard.and_then(|w| self.0.get(&w))).or_else(|| self.0.get("")).cloned()
    }
}

/// A Secret's `tls.crt` and `tls.key` as a certified key.
pub fn certified_key(secret: &Value) -> Result<Arc<CertifiedKey>, String> {
    use base64::Engine;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let field = |k: &str| -> Result<Vec<u8>, String> {
        let b64 = secret["data"][k].as_str().ok_or_else(|| format!("no {k} in the Secret"))?;
        base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("{k}: {e}"))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&field("tls.crt")?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&field("tls.key")?).map_err(|e| format!("tls.key: {e}"))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| format!("tls.key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// What the server reads: the routes and the certificates, swapped whole.
#[derive(Default)]
pub struct Shared {
    routes: RwLock<Arc<Routes>>,
    certs: RwLock<Arc<Certs>>,
    upstreams: Upstreams,
}

#[derive(Debug)]
struct Resolver(Arc<Shared>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ingress::Shared")
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certs.read().unwrap_or_else(|e| e.into_inner()).find(hello.server_name())
    }
}

// ---------------------------------------------------------------------------------------
// Upstreams.

type Sender = hyper::client::conn::http1::SendRequest<Incoming>;

/// Connections kept to endpoints, and the requests in flight to each.
#[derive(Default)]
struct Upstreams {
    idle: Mutex<HashMap<SocketAddr, Vec<Sender>>>,
    in_flight: Mutex<HashMap<SocketAddr, usize>>,
    turn: std::sync::atomic::AtomicUsize,
}

/// Counts a request in flight to an endpoint while it lives.
struct InFlight<'a>(&'a Upstreams, SocketAddr);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut m = self.0.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Upstreams {
    /// The endpoint with the fewest requests in flight among those not tried, ties taken in
    /// turn.
    fn pick(&self, eps: &[SocketAddr], tried: &[SocketAddr]) -> Option<SocketAddr> {
        let start = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let m = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        (0..eps.len())
            .map(|i| eps[(start + i) % eps.len()])
            .filter(|e| !tried.contains(e))
            .min_by_key(|e| m.get(e).copied().unwrap_or(0))
    }

    fn enter(&self, ep: SocketAddr) -> InFlight<'_> {
        *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).entry(ep).or_insert(0) += 1;
        InFlight(self, ep)
    }

    fn take_idle(&self, ep: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&ep)?;
        while let Some(s) = list.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    async fn connect(ep: SocketAddr) -> Result<Sender, String> {
        let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(ep))
            .await
            .map_err(|_| format!("connecting to {ep}: timed out"))?
            .map_err(|e| format!("connecting to {ep}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{ep}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// Sends `req` to one of `eps`; a connection refused (or a kept one found closed) is tried
/// on the next, three endpoints at most.
async fn forward(
    shared: &Arc<Shared>,
    eps: &[SocketAddr],
    mut req: Request<Incoming>,
) -> Result<(Response<Incoming>, SocketAddr), String> {
    let me = &shared.upstreams;
    let mut tried = Vec::new();
    let mut last = "no ready endpoint".to_string();
    while tried.len() < 3 {
        let Some(ep) = me.pick(eps, &tried) else { break };
        tried.push(ep);
        let _counted = me.enter(ep);
        let mut sender = match me.take_idle(ep) {
            Some(s) => s,
            None => match Upstreams::connect(ep).await {
                Ok(s) => s,
                Err(e) => {
                    last = e;
                    continue;
                }
            },
        };
        match sender.try_send_request(req).await {
            Ok(resp) => {
                // Kept for the next request once this one's body is done.
                let shared = Arc::clone(shared);
                tokio::spawn(async move {
                    if sender.ready().await.is_ok() {
                        let mut idle = shared.upstreams.idle.lock().unwrap_or_else(|e| e.into_inner());
                        let list = idle.entry(ep).or_default();
                        if list.len() < 64 {
                            list.push(sender);
                        }
                    }
                });
                return Ok((resp, ep));
            }
            Err(mut e) => match e.take_message() {
                // Not sent: the next endpoint may take it.
                Some(r) => {
                    last = format!("{ep}: {}", e.error());
                    req = r;
                }
                None => return Err(format!("{ep}: {}", e.error())),
            },
        }
    }
    Err(last)
}

// ---------------------------------------------------------------------------------------
// Serving.

type Body = BoxBody<Bytes, hyper::Error>;

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    r
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// One request: route, rewrite for the upstream (origin form, Host, X-Forwarded-*), send,
/// log.
async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
) -> Result<Response<Body>, std::convert::Infallible> {
    let started = Instant::now();
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let h = req.headers().get(hyper::header::HOST)?.to_str().ok()?;
            Some(
                h.rsplit_once(':')
                    .filter(|(_, p)| p.parse::<u16>().is_ok())
                    .map_or(h, |(h, _)| h)
                    .to_string(),
            )
        })
        .unwrap_or_default();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let (method, version) = (req.method().clone(), req.version());
    let routes = Arc::clone(&shared.routes.read().unwrap_or_else(|e| e.into_inner()));
    let (resp, upstream) = match routes.route(&host, &path) {
        None => {
            (text(StatusCode::NOT_FOUND, "404 page not found (no Ingress rule matches)"), "-".to_string())
        }
        Some(b) if b.endpoints.is_empty() => (
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("503 service unavailable: {} has no ready endpoint", b.name),
            ),
            b.name.clone(),
        ),
        Some(b) => {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
            *req.uri_mut() = pq.parse().unwrap_or_else(|_| hyper::Uri::from_static("/"));
            *req.version_mut() = hyper::Version::HTTP_11;
            let h = req.headers_mut();
            for name in HOP_BY_HOP {
                h.remove(name);
            }
            if let Ok(v) = authority.parse() {
                h.insert(hyper::header::HOST, v);
            }
            let client = peer.ip().to_string();
            let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {client}"),
                None => client.clone(),
            };
            for (k, v) in [
                ("x-forwarded-for", xff),
                ("x-real-ip", client),
                ("x-forwarded-proto", if tls { "https" } else { "http" }.to_string()),
                ("x-forwarded-host", authority.clone()),
            ] {
                if let Ok(v) = v.parse() {
                    h.insert(k, v);
                }
            }
            match forward(&shared, &b.endpoints, req).await {
                Ok((r, ep)) => (r.map(|b| b.boxed()), format!("{} {ep}", b.name)),
                Err(e) => {
                    (text(StatusCode::BAD_GATEWAY, &format!("502 bad gateway: {e}")), format!("{} -", b.name))
                }
            }
        }
    };
    tracing::info!(
        "tug-agent: ingress: {peer} \"{method} {host}{path} {version:?}\" {} {upstream} {:.1}ms",
        resp.status().as_u16(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(resp)
}

fn serve_conn<S>(shared: Arc<Shared>, io: S, peer: SocketAddr, tls: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| handle(Arc::clone(&shared), req, peer, tls));
        let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(io), svc).await;
    });
}

/// Plain HTTP (1.1, or h2 with prior knowledge) on `l`.
async fn serve_plain(shared: Arc<Shared>, l: tokio::net::TcpListener) {
    loop {
        if let Ok((s, peer)) = l.accept().await {
            let _ = s.set_nodelay(true);
            serve_conn(Arc::clone(&shared), s, peer, false);
        }
    }
}

async fn serve(shared: Arc<Shared>, http_port: u16, https_port: u16) {
    if http_port != 0 {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let l = crate::network::netns::listen("ingress", http_port).await;
            tracing::info!("tug-agent: ingress: HTTP on port {http_port}");
            serve_plain(shared, l).await;
        });
    }
    if https_port != 0 {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_no_client_auth().with_cert_resolver(Arc::new(Resolver(Arc::clone(&shared)))));
        let mut config = match config {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("tug-agent: ingress: TLS: {e}");
                return;
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = crate::network::netns::listen("ingress", https_port).await;
        tracing::info!("tug-agent: ingress: HTTPS on port {https_port}");
        loop {
            if let Ok((s, peer)) = l.accept().await {
                let _ = s.set_nodelay(true);
                let (acceptor, shared) = (acceptor.clone(), Arc::clone(&shared));
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(s)).await {
                        Ok(Ok(tls)) => serve_conn(shared, tls, peer, true),
                        Ok(Err(e)) => tracing::info!("tug-agent: ingress: TLS from {peer}: {e}"),
                        Err(_) => {}
                    }
                });
            }
        }
    }
}

/// Starts the controller: the server on two threads inside the node's namespace, and the
/// loop that compiles the routes on each change and fetches the TLS Secrets (again every
/// 30 s, for renewed certificates).
pub fn start(
    catalog: Arc<crate::catalog::Catalog>,
    api: tug_client::Client,
    netns: Option<PathBuf>,
    http_port: u16,
    https_port: u16,
) -> Result<(), String> {
    if http_port == 0 && https_port == 0 {
        return Ok(());
    }
    let shared = Arc::new(Shared::default());
    // One thread, in the node's namespace, runs every task of the server: sockets belong
    // to the namespace of the thread that makes them, so none can land on the host's.
    let s = Arc::clone(&shared);
    crate::network::netns::spawn_runtime("tug-ingress", netns.as_deref(), move || {
        serve(s, http_port, https_port)
    })?;
    tokio::spawn(keep_routes(catalog, api, shared));
    Ok(())
}

async fn keep_routes(catalog: Arc<crate::catalog::Catalog>, api: tug_client::Client, shared: Arc<Shared>) {
    let changed = catalog.subscribe_to(&["services", "endpoints", "ingresses", "ingressclasses"]);
    // By (namespace, name): when fetched, and the key when it held a good one.
    type Fetched = (Instant, Option<Arc<CertifiedKey>>);
    let mut fetched: HashMap<(String, String), Fetched> = HashMap::new();
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let routes = compile(&catalog.read());
        let mut certs = Certs::default();
        for (ns, name, hosts) in &routes.tls {
            let key = (ns.clone(), name.clone());
            let stale = fetched.get(&key).is_none_or(|(at, _)| at.elapsed() > Duration::from_secs(30));
            if stale {
                let got = match api.get(&format!("/api/v1/namespaces/{ns}/secrets/{name}")).await {
                    Ok(s) => certified_key(&s).map_err(|e| format!("Secret {ns}/{name}: {e}")),
                    Err(e) => Err(format!("Secret {ns}/{name}: {e}")),
                };
                if let Err(e) = &got {
                    tracing::warn!("tug-agent: ingress: {e}");
                }
                fetched.insert(key.clone(), (Instant::now(), got.ok()));
            }
            if let Some((_, Some(k))) = fetched.get(&key) {
                if hosts.is_empty() {
                    certs.0.entry(String::new()).or_insert_with(|| Arc::clone(k));
                }
                for h in hosts {
                    certs.0.entry(h.clone()).or_insert_with(|| Arc::clone(k));
                }
            }
        }
        let wanted: std::collections::HashSet<(String, String)> =
            routes.tls.iter().map(|(ns, n, _)| (ns.clone(), n.clone())).collect();
        fetched.retain(|k, _| wanted.contains(k));
        *shared.certs.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certs);
        let mut current = shared.routes.write().unwrap_or_else(|e| e.into_inner());
        if **current != routes {
            *current = Arc::new(routes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tug_api::kinds::networking::{DEFAULT_CLASS_ANNOTATION, INGRESS_CONTROLLER};

    fn objects() -> Objects {
        let mut o = Objects::default();
        o.ingress_classes.insert(
            "default/tug".into(),
            json!({"metadata": {"name": "tug", "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
                   "spec": {"controller": INGRESS_CONTROLLER}}),
        );
        for (name, ip) in [("a", "10.244.0.5"), ("b", "10.244.1.5"), ("fallback", "10.244.2.5")] {
            o.services.insert(
                format!("default/{name}"),
                json!({"metadata": {"name": name, "namespace": "default"},
                       "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
            );
            o.endpoints.insert(
                format!("default/{name}"),
                json!({"subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}),
            );
        }
        o.ingresses.insert(
            "default/web".into(),
            json!({"metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
                   "spec": {"defaultBackend": {"service": {"name": "fallback", "port": {"name": "http"}}},
                            "tls": [{"hosts": ["a.example"], "secretName": "a-tls"}],
                            "rules": [
                {"host": "a.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "a", "port": {"number": 80}}}},
                    {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": "b", "port": {"number": 80}}}},
                    {"path": "/exact", "pathType": "Exact", "backend": {"service": {"name": "b", "port": {"number": 80}}}}]}},
                {"host": "*.wild.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "b", "port": {"name": "http"}}}}]}}]}}),
        );
        // Another controller's: not served.
        o.ingresses.insert(
            "default/other".into(),
            json!({"metadata": {"name": "other", "namespace": "default"},
                   "spec": {"ingressClassName": "nginx", "rules": [{"host": "n.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "a", "port": {"number": 80}}}}]}}]}}),
        );
        o
    }

    #[test]
    fn hosts_and_paths_route_as_kubernetes_says() {
        let r = compile(&objects());
        let to = |host: &str, path: &str| r.route(host, path).map(|b| b.name.clone()).unwrap_or_default();
        assert_eq!(to("a.example", "/"), "default/a:80");
        assert_eq!(to("A.Example", "/x/y"), "default/a:80");
        assert_eq!(to("a.example", "/api"), "default/b:80", "the longest prefix");
        assert_eq!(to("a.example", "/api/v1"), "default/b:80");
        assert_eq!(to("a.example", "/apis"), "default/a:80", "prefixes are whole path elements");
        assert_eq!(to("a.example", "/exact"), "default/b:80");
        assert_eq!(to("a.example", "/exact/x"), "default/a:80", "Exact is exact");
        assert_eq!(to("x.wild.example", "/"), "default/b:http");
        assert_eq!(to("y.x.wild.example", "/"), "default/fallback:http", "a wildcard covers one label");
        assert_eq!(to("n.example", "/"), "default/fallback:http", "another class's host is not ours");
        let b = r.route("a.example", "/").unwrap();
        assert_eq!(b.endpoints, ["10.244.0.5:8080".parse().unwrap()]);
        assert_eq!(r.tls, [("default".to_string(), "a-tls".to_string(), vec!["a.example".to_string()])]);
    }

    #[test]
    fn the_class_decides_who_serves() {
        let classes: BTreeMap<String, Value> = objects().ingress_classes;
        assert!(served_by_tug(&json!({"spec": {"ingressClassName": "tug"}}), classes.values()));
        assert!(!served_by_tug(&json!({"spec": {"ingressClassName": "nginx"}}), classes.values()));
        assert!(served_by_tug(&json!({"spec": {}}), classes.values()), "the default class is ours");
        assert!(!served_by_tug(&json!({"spec": {}}), std::iter::empty()), "no default class");
        assert!(served_by_tug(
            &json!({"metadata": {"annotations": {"kubernetes.io/ingress.class": "tug"}}, "spec": {}}),
            std::iter::empty()
        ));
    }

    /// Two endpoints refuse connections, one answers: every request gets through, whichever
    /// endpoint it is tried on first.
    #[test]
    fn a_refused_connection_is_tried_on_the_next_endpoint() {
        use std::io::{Read, Write};
        let refusing: Vec<SocketAddr> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap())
            .collect(); // bound, then closed: refused
        let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = up.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in up.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            }
        });
        let shared = Arc::new(Shared::default());
        let backend =
            Backend { name: "default/web:80".into(), endpoints: vec![refusing[0], refusing[1], open] };
        let routes = Routes {
            hosts: [(String::new(), vec![PathRoute { path: "/".into(), exact: false, backend }])].into(),
            ..Routes::default()
        };
        *shared.routes.write().unwrap() = Arc::new(routes);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let l = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let at = l.local_addr().unwrap();
        rt.spawn(serve_plain(shared, l));
        let answers: Vec<String> = rt.block_on(async move {
            let mut out = Vec::new();
            for _ in 0..6 {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
                s.write_all(b"GET /x HTTP/1.1\r\nHost: any.example\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let mut text = String::new();
                s.read_to_string(&mut text).await.unwrap();
                out.push(text.lines().next().unwrap_or_default().to_string());
            }
            out
        });
        assert!(answers.iter().all(|l| l == "HTTP/1.1 200 OK"), "{answers:?}");
    }

    #[test]
    fn least_requests_in_flight_then_in_turn() {
        let u = Upstreams::default();
        let eps: Vec<SocketAddr> = vec!["10.0.0.1:80".parse().unwrap(), "10.0.0.2:80".parse().unwrap()];
        let busy = u.enter(eps[0]);
        for _ in 0..4 {
            assert_eq!(u.pick(&eps, &[]), Some(eps[1]));
        }
        drop(busy);
        let picks: std::collections::BTreeSet<_> = (0..4).filter_map(|_| u.pick(&eps, &[])).collect();
        assert_eq!(picks.len(), 2, "ties in turn");
        assert_eq!(u.pick(&eps, &[eps[0], eps[1]]), None);
    }
}
