//! Liveness, readiness and startup probes with Kubernetes' fields and defaults.
//!
//! One prober task per running container that has probes. The startup probe runs first and
//! holds the others back until it succeeds; a startup or liveness failure (after
//! `failureThreshold` in a row) asks the pod worker to restart the container; readiness
//! decides the container's `ready`. exec probes run through the container's supervisor;
//! httpGet, tcpSocket and grpc connect from a thread inside the pod's network namespace, so
//! they work whatever the node's routing.

use crate::network::netns;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tug_api::kinds::pod::{Container, Probe};
use tug_api::meta::IntOrString;

/// What the probes of one container found; shared with the pod worker.
#[derive(Debug, Default)]
pub struct ProbeState {
    pub started: AtomicBool,
    pub ready: AtomicBool,
    /// Liveness (or startup) failed: the container must be restarted.
    pub failed: AtomicBool,
    /// Set by the worker when the container ended: the prober stops.
    pub stop: AtomicBool,
    /// The failed probe's own `terminationGracePeriodSeconds` (0: the pod's).
    pub grace_seconds: std::sync::atomic::AtomicI64,
}

/// A probe with Kubernetes' defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// `terminationGracePeriodSeconds` of a liveness or startup probe.
    pub grace_seconds: Option<i64>,
}

pub fn settings(p: &Probe) -> Settings {
    let secs =
        |v: Option<i32>, d: u64| Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(d));
    let count =
        |v: Option<i32>, d: u32| v.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0).unwrap_or(d);
    Settings {
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: count(p.success_threshold, 1),
        failure_threshold: count(p.failure_threshold, 3),
        grace_seconds: p.termination_grace_period_seconds.filter(|g| *g > 0),
    }
}

/// Consecutive results → the probe's verdict, changing only when a threshold is reached.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    ok_run: u32,
    fail_run: u32,
    pub verdict: Option<bool>,
}

impl Tracker {
    /// Records one result; returns the verdict when it changed.
    pub fn record(&mut self, ok: bool, s: &Settings) -> Option<bool> {
        if ok {
            self.ok_run += 1;
            self.fail_run = 0;
        } else {
            self.fail_run += 1;
            self.ok_run = 0;
        }
        let new = if self.ok_run >= s.success_threshold {
            Some(true)
        } else if self.fail_run >= s.failure_threshold {
            Some(false)
        } else {
            self.verdict
        };
        let changed = new != self.verdict;
        self.verdict = new;
        if changed { new } else { None }
    }
}

/// Where a probe connects and what it asks.
#[derive(Debug, Clone)]
pub enum Check {
    /// `process` is the container's own (user, env, cwd) with the probe's command.
    Exec {
        socket: PathBuf,
        process: serde_json::Value,
    },
    Http {
        netns: PathBuf,
        addr: SocketAddr,
        path: String,
        host: String,
        /// `scheme: HTTPS`: TLS without verifying the certificate, as kubelet does.
        tls: bool,
        /// `httpHeaders`, in order.
        headers: Vec<(String, String)>,
    },
    Tcp {
        netns: PathBuf,
        addr: SocketAddr,
    },
    /// The gRPC health protocol's `Check` of `service`.
    Grpc {
        netns: PathBuf,
        addr: SocketAddr,
        service: String,
    },
    /// A probe Tug cannot run, always failing with this message.
    Unsupported(String),
}

fn port(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} out of range")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

/// The process of an exec into a container: the container's own user, environment and
/// working directory (from its bundle's `config.json`) with `argv`.
pub fn exec_process(bundle: &Path, argv: &[String]) -> serde_json::Value {
    let spec: serde_json::Value = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut p = spec["process"].clone();
    if !p.is_object() {
        p = json!({"user": {"uid": 0, "gid": 0}, "cwd": "/",
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]});
    }
    p["args"] = json!(argv);
    p["terminal"] = json!(false);
    p
}

/// What `probe` of container `c` checks, for a pod at `ip` with `netns`; `bundle` is the
/// container's bundle directory.
pub fn check(
    c: &Container,
    probe: &Probe,
    ip: std::net::Ipv4Addr,
    netns: &Path,
    socket: &Path,
    bundle: &Path,
) -> Check {
    if let Some(e) = &probe.exec {
        return Check::Exec { socket: socket.to_path_buf(), process: exec_process(bundle, &e.command) };
    }
    let host_ip = |h: &Option<String>| h.as_deref().and_then(|h| h.parse().ok()).unwrap_or(ip);
    if let Some(h) = &probe.http_get {
        let tls = match h.scheme.as_deref() {
            None | Some("") => false,
            Some(s) if s.eq_ignore_ascii_case("HTTP") => false,
            Some(s) if s.eq_ignore_ascii_case("HTTPS") => true,
            Some(s) => return Check::Unsupported(format!("httpGet scheme {s:?} is not HTTP or HTTPS")),
        };
        return match port(c, &h.port) {
            Ok(p) => Check::Http {
                netns: netns.to_path_buf(),
                addr: SocketAddr::from((host_ip(&h.host), p)),
                path: h.path.clone().unwrap_or_else(|| "/".into()),
                host: h.host.clone().unwrap_or_else(|| ip.to_string()),
                tls,
                headers: h.http_headers.iter().map(|x| (x.name.clone(), x.value.clone())).collect(),
            },
            Err(e) => Check::Unsupported(e),
        };
    }
    if let Some(t) = &probe.tcp_socket {
        return match port(c, &t.port) {
            Ok(p) => Check::Tcp { netns: netns.to_path_buf(), addr: SocketAddr::from((host_ip(&t.host), p)) },
            Err(e) => Check::Unsupported(e),
        };
    }
    if let Some(g) = &probe.grpc {
        return match u16::try_from(g.port) {
            Ok(p) if p > 0 => Check::Grpc {
                netns: netns.to_path_buf(),
                addr: SocketAddr::from((ip, p)),
                service: g.service.clone().unwrap_or_default(),
            },
            _ => Check::Unsupported(format!("port {} out of range", g.port)),
        };
    }
    Check::Unsupported("the probe names no action (exec, httpGet, tcpSocket or grpc)".into())
}

/// The namespace a check runs in: the pod's, or (an empty path: a host-network pod) the
/// node's own.
fn ns_of(netns: &Path) -> Option<&Path> {
    (!netns.as_os_str().is_empty()).then_some(netns)
}

/// Runs one check: Ok(()) on success, Err(why) on failure.
pub fn run(check: &Check, timeout: Duration) -> Result<(), String> {
    match check {
        Check::Exec { socket, process } => {
            let client =
                tug_shim::supervisor::protocol::Client::connect(socket).map_err(|e| e.to_string())?;
            let (_, mut stream) = client.exec(process.clone()).map_err(|e| e.to_string())?;
            stream.set_timeout(Some(timeout));
            let out = stream.collect().map_err(|e| format!("timed out or failed: {e}"))?;
            match out.exit {
                Some(e) if e.code == 0 => Ok(()),
                Some(e) => {
                    Err(format!("exit code {}: {}", e.code, String::from_utf8_lossy(&out.stdout).trim()))
                }
                None => Err("the probe's process did not report an exit".into()),
            }
        }
        Check::Http { netns, addr, path, host, tls, headers } => {
            let (addr, path, host, tls, headers) = (*addr, path.clone(), host.clone(), *tls, headers.clone());
            netns::run_in(ns_of(netns), move || http_get(addr, &path, &host, &headers, tls, timeout))?
        }
        Check::Tcp { netns, addr } => {
            let addr = *addr;
            netns::run_in(ns_of(netns), move || {
                TcpStream::connect_timeout(&addr, timeout)
                    .map(drop)
                    .map_err(|e| format!("dial tcp {addr}: {e}"))
            })?
        }
        Check::Grpc { netns, addr, service } => {
            let (addr, service) = (*addr, service.clone());
            netns::run_in(ns_of(netns), move || super::grpc::probe(addr, &service, timeout))?
        }
        Check::Unsupported(m) => Err(m.clone()),
    }
}

/// One httpGet probe from the current network namespace: success is a status of 200–399.
/// `headers` go with the request; as kubelet's, a `Host`, `User-Agent` or `Accept` among
/// them replaces the default one.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    host: &str,
    headers: &[(String, String)],
    tls: bool,
    timeout: Duration,
) -> Result<(), String> {
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("dial {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let given = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.as_str());
    let host = given("Host").unwrap_or(host);
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in [("User-Agent", "kube-probe/tug"), ("Accept", "*/*")] {
        if given(k).is_none() {
            req += &format!("{k}: {v}\r\n");
        }
    }
    for (k, v) in headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("Host")) {
        // A value cannot end the line early.
        let v: String = v.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        req += &format!("{k}: {v}\r\n");
    }
    req += "Connection: close\r\n\r\n";
    let mut head = [0u8; 64];
    let n = if tls {
        // Any name will do: the certificate is not checked.
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
        let conn = rustls::ClientConnection::new(Arc::new(tug_client::tls::insecure_config()), name)
            .map_err(|e| format!("TLS: {e}"))?;
        let mut stream = rustls::StreamOwned::new(conn, s);
        stream.write_all(req.as_bytes()).map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
        stream.read(&mut head).map_err(|e| format!("reading the answer: {e}"))?
    } else {
        let mut s = s;
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        s.read(&mut head).map_err(|e| format!("reading the answer: {e}"))?
    };
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line
        .strip_prefix("HTTP/")
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("not an HTTP answer")?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// A container's probes, each with its check and settings.
pub struct Probes {
    pub startup: Option<(Check, Settings)>,
    pub liveness: Option<(Check, Settings)>,
    pub readiness: Option<(Check, Settings)>,
}

impl Probes {
    pub fn any(&self) -> bool {
        self.startup.is_some() || self.liveness.is_some() || self.readiness.is_some()
    }
}

async fn once(check: &Check, s: &Settings) -> Result<(), String> {
    let (c, t) = (check.clone(), s.timeout);
    tokio::task::spawn_blocking(move || run(&c, t)).await.map_err(|e| e.to_string())?
}

/// Runs a container's probes until `state.stop`; pokes the worker through `tx` when the
/// container must restart or its readiness changed.
pub async fn prober(
    name: String,
    probes: Probes,
    state: Arc<ProbeState>,
    tx: mpsc::UnboundedSender<super::Msg>,
) {
    let stopped = || state.stop.load(Ordering::Relaxed);
    if let Some((check, s)) = &probes.startup {
        tokio::time::sleep(s.initial_delay).await;
        let mut t = Tracker::default();
        loop {
            if stopped() {
                return;
            }
            let r = once(check, s).await;
            crate::metrics::probed("Startup", r.is_ok());
            if let Err(e) = &r {
                let _ =
                    tx.send(super::Msg::Event("Warning", "Unhealthy", format!("Startup probe failed: {e}")));
            }
            match t.record(r.is_ok(), s) {
                Some(true) => break,
                Some(false) => {
                    tracing::warn!(
                        "tug-agent: container {name}: startup probe failed: {}",
                        r.err().unwrap_or_default()
                    );
                    if let Some(g) = s.grace_seconds {
                        state.grace_seconds.store(g, Ordering::Relaxed);
                    }
                    state.failed.store(true, Ordering::Relaxed);
                    let _ = tx.send(super::Msg::Tick);
                    return;
                }
                None => {}
            }
            tokio::time::sleep(s.period).await;
        }
    }
    state.started.store(true, Ordering::Relaxed);
    if probes.readiness.is_none() {
        state.ready.store(true, Ordering::Relaxed);
    }
    let _ = tx.send(super::Msg::Tick);
    let start = tokio::time::Instant::now();
    let mut next_live = probes.liveness.as_ref().map(|(_, s)| start + s.initial_delay);
    let mut next_ready = probes.readiness.as_ref().map(|(_, s)| start + s.initial_delay);
    let (mut live_t, mut ready_t) = (Tracker::default(), Tracker::default());
    loop {
        let due = match (next_live, next_ready) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return,
        };
        tokio::time::sleep_until(due).await;
        if stopped() {
            return;
        }
        let now = tokio::time::Instant::now();
        if let (Some(at), Some((check, s))) = (next_live, &probes.liveness)
            && at <= now
        {
            let r = once(check, s).await;
            crate::metrics::probed("Liveness", r.is_ok());
            if let Err(e) = &r {
                let _ =
                    tx.send(super::Msg::Event("Warning", "Unhealthy", format!("Liveness probe failed: {e}")));
            }
            if live_t.record(r.is_ok(), s) == Some(false) {
                tracing::warn!(
                    "tug-agent: container {name}: liveness probe failed: {}",
                    r.err().unwrap_or_default()
                );
                if let Some(g) = probes.liveness.as_ref().and_then(|(_, s)| s.grace_seconds) {
                    state.grace_seconds.store(g, Ordering::Relaxed);
                }
                let container = name.rsplit('/').next().unwrap_or(&name).to_string();
                let _ = tx.send(super::Msg::Event(
                    "Normal",
                    "Killing",
                    format!("Container {container} failed liveness probe, will be restarted"),
                ));
                state.failed.store(true, Ordering::Relaxed);
                let _ = tx.send(super::Msg::Tick);
                return;
            }
            next_live = Some(now + s.period);
        }
        if let (Some(at), Some((check, s))) = (next_ready, &probes.readiness)
            && at <= now
        {
            let r = once(check, s).await;
            crate::metrics::probed("Readiness", r.is_ok());
            if let Err(e) = &r {
                let _ = tx.send(super::Msg::Event(
                    "Warning",
                    "Unhealthy",
                    format!("Readiness probe failed: {e}"),
                ));
            }
            if let Some(v) = ready_t.record(r.is_ok(), s) {
                // Logged once per change of verdict, not per probe.
                if state.ready.swap(v, Ordering::Relaxed) != v {
                    tracing::info!(
                        "tug-agent: container {name}: {}",
                        if v { "ready" } else { "not ready (readiness probe failing)" }
                    );
                }
                let _ = tx.send(super::Msg::Tick);
            }
            next_ready = Some(now + s.period);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kubernetes() {
        let s = settings(&Probe::default());
        assert_eq!(
            s,
            Settings {
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
                grace_seconds: None,
            }
        );
    }

    #[test]
    fn thresholds_decide() {
        let s = Settings { success_threshold: 2, failure_threshold: 3, ..settings(&Probe::default()) };
        let mut t = Tracker::default();
        assert_eq!(t.record(true, &s), None);
        assert_eq!(t.record(true, &s), Some(true));
        assert_eq!(t.record(false, &s), None);
        assert_eq!(t.record(false, &s), None);
        assert_eq!(t.record(true, &s), None, "a success resets the failure run");
        assert_eq!(t.record(false, &s), None);
        assert_eq!(t.record(false, &s), None);
        assert_eq!(t.record(false, &s), Some(false));
        assert_eq!(t.verdict, Some(false));
    }

    /// A one-connection server on loopback answering `status`, over TLS (a self-signed
    /// certificate) or not.
    fn serve_once(tls: bool, status: u16) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            if tls {
                let cert = rcgen::generate_simple_self_signed(vec!["pod.local".into()]).unwrap();
                let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
                let cfg = rustls::ServerConfig::builder()
                    .with_no_client_auth()
                    .with_single_cert(vec![cert.cert.der().clone()], key)
                    .unwrap();
                let conn = rustls::ServerConnection::new(Arc::new(cfg)).unwrap();
                let mut t = rustls::StreamOwned::new(conn, s);
                let mut buf = [0u8; 512];
                let _ = t.read(&mut buf);
                let _ = t.write_all(answer.as_bytes());
                let _ = t.flush();
                t.conn.send_close_notify();
                let _ = t.flush();
            } else {
                let mut s = s;
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        addr
    }

    #[test]
    fn http_headers_go_with_the_request_and_a_host_header_names_the_host() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let got = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let headers = vec![
            ("X-Probe".to_string(), "yes\r\nEvil: 1".to_string()),
            ("host".to_string(), "web.example".to_string()),
        ];
        assert_eq!(http_get(addr, "/h", "10.0.0.2", &headers, false, Duration::from_secs(2)), Ok(()));
        let req = got.join().unwrap();
        assert!(
            req.starts_with("GET /h HTTP/1.1\r\nHost: web.example\r\nUser-Agent: kube-probe/tug\r\n"),
            "{req}"
        );
        assert!(req.contains("\r\nX-Probe: yesEvil: 1\r\n") && !req.contains("10.0.0.2"), "{req}");
    }

    #[test]
    fn https_probes_take_any_certificate_and_read_the_status() {
        let t = Duration::from_secs(5);
        assert_eq!(http_get(serve_once(true, 200), "/healthz", "10.0.0.2", &[], true, t), Ok(()));
        assert_eq!(
            http_get(serve_once(true, 503), "/", "10.0.0.2", &[], true, t),
            Err("HTTP probe failed with statuscode: 503".into())
        );
        assert_eq!(http_get(serve_once(false, 204), "/", "10.0.0.2", &[], false, t), Ok(()));
        // HTTPS against a plain server fails the handshake, and the other way round.
        assert!(http_get(serve_once(false, 200), "/", "10.0.0.2", &[], true, t).is_err());
        assert!(http_get(serve_once(true, 200), "/", "10.0.0.2", &[], false, t).is_err());
    }

    #[test]
    fn named_ports_resolve() {
        let c: Container = serde_json::from_value(json!({"name": "c", "image": "x",
            "ports": [{"name": "http", "containerPort": 8080}]}))
        .unwrap();
        assert_eq!(port(&c, &IntOrString::String("http".into())), Ok(8080));
        assert!(port(&c, &IntOrString::String("grpc".into())).is_err());
        let probe: Probe =
            serde_json::from_value(json!({"httpGet": {"port": "http", "path": "/healthz"}})).unwrap();
        let ip = "10.0.0.2".parse().unwrap();
        match check(&c, &probe, ip, Path::new("/ns"), Path::new("/s"), Path::new("/b")) {
            Check::Http { addr, path, .. } => {
                assert_eq!((addr.to_string(), path.as_str()), ("10.0.0.2:8080".into(), "/healthz"))
            }
            other => panic!("{other:?}"),
        }
    }
}
