//! `make bench AREA=services`, Ingress: requests through the built-in Ingress controller
//! against the same requests straight to the Service's ClusterIP, on one live node, same
//! two pods (busybox httpd, a new connection per request as it closes each).
//!
//! - `ingress`: HTTP/1.1 `GET /` with `Host: bench.example` to the node's port 80 from
//!   outside the node (the cluster's hub namespace), `Connection: close`.
//! - `clusterip`: the same request to the ClusterIP from the node's namespace (through the
//!   proxy's DNAT).
//!
//! Four clients at once, 2,000 requests each way; requests per second and the latency
//! percentiles. One run. Anchor: ingress-nginx and Traefik are not installable here.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tug_integration::agent::Agent;
use tug_integration::cluster::Cluster;
use tug_integration::control_plane::ControlPlane;

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: tug.local/probe:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "mkdir -p /tmp/w && echo ok > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec:
  rules:
  - host: bench.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
"#;

const CLIENTS: usize = 4;
const REQUESTS: usize = 2000;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((sorted.len().max(1) - 1) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One request on a new connection: whether a 200 came back.
fn get(to: SocketAddr, host: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut text = Vec::new();
    s.write_all(req.as_bytes()).is_ok()
        && s.read_to_end(&mut text).is_ok()
        && text.starts_with(b"HTTP/1.1 200")
}

/// `CLIENTS` threads inside the namespace at `netns`, `REQUESTS` in all: the latencies,
/// the wall time and the failures.
fn run(netns: &str, to: SocketAddr, host: &str) -> (Vec<Duration>, Duration, usize) {
    let path = std::path::PathBuf::from("/run/netns").join(netns);
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (path, host) = (path.clone(), host.to_string());
            std::thread::spawn(move || {
                let fd = std::fs::File::open(&path).expect("netns");
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let mut lat = Vec::with_capacity(REQUESTS / CLIENTS);
                let mut failed = 0;
                for _ in 0..REQUESTS / CLIENTS {
                    let t = Instant::now();
                    if get(to, &host) {
                        lat.push(t.elapsed());
                    } else {
                        failed += 1;
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut failed = 0;
    for t in threads {
        let (l, f) = t.join().expect("client");
        all.extend(l);
        failed += f;
    }
    let wall = started.elapsed();
    all.sort_unstable();
    (all, wall, failed)
}

fn main() {
    let cluster = Cluster::new(1).expect("cluster");
    let cp = ControlPlane::start();
    let agent = Agent::start(&cp, &cluster.nodes[0], "tug-bench-ing", &[]);
    agent.import_probe_image("tug.local/probe:1");
    cp.apply(APP);
    let hub = cluster.hub.clone();
    tug_integration::cluster::ip(&["-n", &hub, "addr", "add", "10.250.0.1/24", "dev", "tugbr"])
        .expect("hub address");
    let node: SocketAddr = (cluster.nodes[0].ip, 80).into();
    let ready = || {
        cp.get_json(&["endpoints", "web"])
            .is_some_and(|e| e["subsets"][0]["addresses"].as_array().is_some_and(|a| a.len() == 2))
    };
    assert!(tug_integration::wait_for(Duration::from_secs(120), ready), "{}\n{}", cp.log(), agent.log());
    let routed = || run(&hub, node, "bench.example").2 == 0;
    assert!(tug_integration::wait_for(Duration::from_secs(30), routed), "{}", agent.log());
    let cluster_ip: std::net::Ipv4Addr = cp
        .get_json(&["service", "web"])
        .and_then(|s| s["spec"]["clusterIP"].as_str().and_then(|i| i.parse().ok()))
        .expect("clusterIP");
    for (what, netns, to) in [
        ("ingress", hub.as_str(), node),
        ("clusterip", cluster.nodes[0].netns.as_str(), SocketAddr::from((cluster_ip, 80))),
    ] {
        let (lat, wall, failed) = run(netns, to, "bench.example");
        #[allow(clippy::cast_precision_loss)]
        let rps = lat.len() as f64 / wall.as_secs_f64();
        println!(
            "BENCH services ingress-{what} clients={CLIENTS} requests={REQUESTS} rps={rps:.0} p50_ms={:.2} p99_ms={:.2} failed={failed}",
            ms(pct(&lat, 0.5)),
            ms(pct(&lat, 0.99))
        );
    }
    println!("BENCH services ingress anchor ingress-nginx/traefik not-installable");
}
