//! `make bench AREA=scale`: one control plane (release build) before `TUG_SCALE_NODES` hollow
//! nodes (5,000 by default; `tug-hollow`, many per process, as Kubernetes' kubemark), on the
//! embedded store and then on a real etcd on loopback (`TUG_SCALE_STORES=redb,etcd`).
//!
//! - `register`: every node registered (node, Lease, status), seconds;
//! - `heartbeats`: 30 s of nothing but the nodes' Lease renewals (every 10 s each, kubelet's
//!   rate): the control plane's CPU seconds per 1,000 heartbeats and its share of a core;
//! - `pods`: `TUG_SCALE_PODS` pods (50,000 by default) made as Deployments of 100 by 8
//!   clients, until every pod is reported Running by its hollow node: pods scheduled and
//!   Running per second end to end (goal 5,000/s; kube-scheduler's published 680–810/s at
//!   5,000 nodes); meanwhile a ConfigMap created every 20 ms, the mutating call's p50/p99
//!   (goal p99 < 100 ms; Kubernetes' SLO is 1 s);
//! - `memory`: the control plane's RSS at rest before the pods, at the end, and its peak
//!   (goal < 1 GiB at 50k pods); idle CPU once settled (goal < 1% of a core).
//!
//! Each line starts `BENCH scale`, with `store=` and `nodes=`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn post(socket: &Path, path: &str, body: &str) -> u16 {
    tug_integration::control_plane::request_code(socket, "POST", path, "application/json", body, "")
}

/// The process's CPU time so far, in seconds (utime + stime).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    #[allow(clippy::cast_precision_loss)]
    let secs = ticks as f64 / hz as f64;
    secs
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The hollow nodes' last reported totals.
#[derive(Default, Clone, Copy, Debug)]
struct Totals {
    registered: u64,
    heartbeats: u64,
    started: u64,
    errors: u64,
}

fn parse_totals(line: &str) -> Option<Totals> {
    let rest = line.strip_prefix("HOLLOW ")?;
    let mut t = Totals::default();
    for kv in rest.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "registered" => t.registered = v,
            "heartbeats" => t.heartbeats = v,
            "started" => t.started = v,
            "errors" => t.errors = v,
            _ => {}
        }
    }
    Some(t)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn deployment(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"{name}","namespace":"default"}},"spec":{{"replicas":100,"selector":{{"matchLabels":{{"app":"{name}"}}}},"template":{{"metadata":{{"labels":{{"app":"{name}"}}}},"spec":{{"containers":[{{"name":"c","image":"busybox:1.36"}}]}}}}}}}}"#
    )
}

fn main() {
    let nodes = env("TUG_SCALE_NODES", 5000);
    let pods = env("TUG_SCALE_PODS", 50_000);
    let stores = std::env::var("TUG_SCALE_STORES").unwrap_or_else(|_| "redb,etcd".into());
    let release = tug_integration::probe::target_dir().join("release");
    // Benchmarks run single-threaded here: setting the variable before any thread starts is
    // sound.
    // SAFETY: no other thread reads the environment at this point.
    unsafe { std::env::set_var("TUG_BIN_DIR", &release) };
    for store in stores.split(',').map(str::trim) {
        match store {
            "redb" => {
                let cp = tug_integration::control_plane::ControlPlane::start_with(&[
                    "--cluster-cidr",
                    "10.0.0.0/8",
                ]);
                run(&cp, &release, "redb", nodes, pods);
            }
            "etcd" => {
                let etcd = tug_integration::etcd::EtcdProcess::start();
                let (cp, _secrets) = tug_integration::control_plane::ControlPlane::start_on_etcd(
                    &etcd.endpoint,
                    &["--cluster-cidr", "10.0.0.0/8"],
                );
                run(&cp, &release, "etcd", nodes, pods);
            }
            other => eprintln!("bench scale: unknown store {other:?} (redb, etcd)"),
        }
    }
}

/// Kills the hollow nodes' process when dropped.
struct Hollow(std::process::Child);

impl Drop for Hollow {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(
    cp: &tug_integration::control_plane::ControlPlane,
    release: &Path,
    store: &str,
    nodes: usize,
    pods: usize,
) {
    let socket = cp.socket();
    let pid = cp.pid().expect("control plane pid");
    let mut child = std::process::Command::new(release.join("tug-hollow"))
        .arg("--socket")
        .arg(&socket)
        .args(["--nodes", &nodes.to_string(), "--report", "1s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tug-hollow (make release builds it)");
    let out = child.stdout.take().expect("stdout");
    let hollow = Hollow(child);
    let latest = Arc::new(Mutex::new(Totals::default()));
    {
        let latest = Arc::clone(&latest);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(t) = parse_totals(&line) {
                    *latest.lock().unwrap_or_else(|e| e.into_inner()) = t;
                }
            }
        });
    }
    let totals = || *latest.lock().unwrap_or_else(|e| e.into_inner());
    let tag = format!("store={store} nodes={nodes}");

    let started = Instant::now();
    let registered =
        tug_integration::wait_for(Duration::from_secs(900), || totals().registered >= nodes as u64);
    println!(
        "BENCH scale register {tag} seconds={:.1} registered={} errors={} ok={registered}",
        started.elapsed().as_secs_f64(),
        totals().registered,
        totals().errors
    );
    if !registered {
        return;
    }
    // Heartbeats alone.
    std::thread::sleep(Duration::from_secs(12));
    let (cpu0, hb0) = (cpu_secs(pid), totals().heartbeats);
    std::thread::sleep(Duration::from_secs(30));
    let (cpu1, hb1) = (cpu_secs(pid), totals().heartbeats);
    #[allow(clippy::cast_precision_loss)]
    let beats = (hb1 - hb0) as f64;
    println!(
        "BENCH scale heartbeats {tag} per_second={:.0} cpu_s_per_1000={:.3} cpu_share={:.1}% rss_mib={}",
        beats / 30.0,
        (cpu1 - cpu0) / (beats / 1000.0).max(0.001),
        (cpu1 - cpu0) / 30.0 * 100.0,
        status_kib(pid, "VmRSS:") / 1024
    );

    // Pods, with a mutating call timed every 20 ms meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let prober = {
        let (stop, latencies, socket) = (Arc::clone(&stop), Arc::clone(&latencies), socket.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = format!(
                    r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"probe-{i}","namespace":"default"}},"data":{{"k":"v"}}}}"#
                );
                let t = Instant::now();
                if post(&socket, "/api/v1/namespaces/default/configmaps", &body) == 201 {
                    latencies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(t.elapsed().as_secs_f64() * 1000.0);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let before = totals().started;
    let deployments = pods.div_ceil(100);
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let creators: Vec<_> = (0..8)
        .map(|_| {
            let (next, socket) = (Arc::clone(&next), socket.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= deployments as u64 {
                        return;
                    }
                    let code = post(
                        &socket,
                        "/apis/apps/v1/namespaces/default/deployments",
                        &deployment(&format!("d{i}")),
                    );
                    if code != 201 {
                        eprintln!("bench scale: deployment d{i}: HTTP {code}");
                    }
                }
            })
        })
        .collect();
    for c in creators {
        let _ = c.join();
    }
    let created = t0.elapsed();
    let want = before + (deployments * 100) as u64;
    let mut peak = 0;
    let done = tug_integration::wait_for(Duration::from_secs(1800), || {
        peak = peak.max(status_kib(pid, "VmRSS:"));
        totals().started >= want
    });
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = prober.join();
    let mut l = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    l.sort_by(f64::total_cmp);
    #[allow(clippy::cast_precision_loss)]
    let running = (totals().started - before) as f64;
    println!(
        "BENCH scale pods {tag} pods={} running={running:.0} seconds={:.1} pods_per_s={:.0} deployments_created_s={:.1} mutating_p50_ms={:.1} mutating_p99_ms={:.1} calls={} ok={done} goal_pods_per_s=5000 goal_p99_ms=100",
        deployments * 100,
        took.as_secs_f64(),
        running / took.as_secs_f64(),
        created.as_secs_f64(),
        percentile(&l, 0.5),
        percentile(&l, 0.99),
        l.len()
    );
    // Settled: memory and idle CPU at this size.
    std::thread::sleep(Duration::from_secs(15));
    let c0 = cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(20));
    let idle = (cpu_secs(pid) - c0) / 20.0 * 100.0;
    println!(
        "BENCH scale memory {tag} pods={} rss_mib={} peak_rss_mib={} hwm_mib={} busy_cpu_share={idle:.1}% goal_rss_mib=1024",
        deployments * 100,
        status_kib(pid, "VmRSS:") / 1024,
        peak.max(status_kib(pid, "VmRSS:")) / 1024,
        status_kib(pid, "VmHWM:") / 1024
    );
    drop(hollow);
}
