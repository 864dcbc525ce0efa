//! `make bench AREA=api`: the control plane over its Unix socket (release build, embedded
//! store with fsync on every write).
//!
//! - `apply-throughput`: server-side applies of distinct ConfigMaps from 4 clients, objects/s;
//! - `write-latency`: single-object creates sent open-loop at a target rate (default 1000/s),
//!   p50/p99 of each request's latency (Kubernetes' SLO for a mutating call is 1 s; Tug's goal
//!   is p99 under 10 ms);
//! - `watch-latency`: 100 watchers on one collection; time from a create being acknowledged to
//!   each watcher reading its event, p50/p99.
//!
//! - `hostile-bodies`: `/version` answered while 4 clients post deeply nested YAML bodies
//!   (refused before the parse), p50/p99 (goal: p99 under 50 ms).
//!
//! - `list-memory`: 10 × `TUG_BENCH_N` pods (10,000 by default), then 16 clients each listing
//!   all of them at once, 3 times; the control plane's RSS before and at its peak meanwhile
//!   (sampled every 10 ms from `/proc/PID/status`), and the lists' p50/p99 (goal: RSS under
//!   100 MiB).
//!
//! - `rbac-create`: the cost of authorization — creates by a user RBAC binds (root
//!   impersonating `bench-user` in group `bench`, among 500 other bindings, the same objects
//!   in both stores) against a control plane with `--authorization-mode AlwaysAllow`, 4
//!   clients, 5 × `TUG_BENCH_N` creates each, the two alternating in fifty rounds; p50/p99 of
//!   each (goal: p99 with RBAC within 10% of without). Embedded store only.
//!
//! Each measure runs on the embedded store, then on a real etcd on loopback (`store=` key).
//! - `kubectl-get`: `kubectl get pods -A` over TLS beside `tug get pods -A` over the socket,
//!   `TUG_BENCH_N` pods, medians of five runs each.
//!
//! `TUG_BENCH_N` scales the request counts; `TUG_BENCH_ONLY=list-memory,…` runs only those.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn request(socket: &Path, method: &str, path: &str, ctype: &str, body: &str) -> u16 {
    request_with(socket, method, path, ctype, body, "")
}

/// A request with extra header lines (each ending in CRLF).
fn request_with(socket: &Path, method: &str, path: &str, ctype: &str, body: &str, headers: &str) -> u16 {
    tug_integration::control_plane::request_code(socket, method, path, ctype, body, headers)
}

fn cm(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"default"}},"data":{{"k":"v"}}}}"#
    )
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    // an index into a small vector
    let i = (((sorted.len() - 1) as f64) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let n: usize = std::env::var("TUG_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let rate: u64 = std::env::var("TUG_BENCH_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let release = tug_integration::probe::target_dir().join("release");
    if only("rbac-create") {
        rbac_create(&release, n);
    }
    if only("kubectl-get") {
        kubectl_get(&release, n);
    }
    let cp = with_bin_dir(&release, tug_integration::control_plane::ControlPlane::start);
    run_all(&cp.socket(), "redb", n, rate);
    if only("list-memory") {
        list_memory(&cp.socket(), cp.pid().unwrap_or(0), "redb", n * 10);
    }
    drop(cp);
    // The same against a real etcd (Debian's etcd-server) on loopback.
    let etcd = tug_integration::etcd::EtcdProcess::start();
    let (cp, _secrets) = tug_integration::control_plane::ControlPlane::start_on_etcd(&etcd.endpoint, &[]);
    run_all(&cp.socket(), "etcd", n, rate);
    if only("list-memory") {
        list_memory(&cp.socket(), cp.pid().unwrap_or(0), "etcd", n * 10);
    }
}

/// Waits (at most a minute) until the process used under 5% of a CPU for 3 s in a row and
/// its resident memory stopped falling (freed memory goes back to the system in steps).
fn settle(pid: u32) {
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
    };
    let start = Instant::now();
    let mut quiet = 0;
    let mut last = ticks();
    let mut rss = rss_kib(pid);
    while quiet < 6 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(1));
        let (now, r) = (ticks(), rss_kib(pid));
        quiet = if now.saturating_sub(last) < 5 && r + 1024 >= rss { quiet + 1 } else { 0 };
        (last, rss) = (now, r);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The control plane's memory while 16 clients list `pods` pods at once.
fn list_memory(socket: &Path, pid: u32, store: &str, pods: usize) {
    let ns = format!("tug-bench-list-{store}");
    request(
        socket,
        "POST",
        "/api/v1/namespaces",
        "application/json",
        &format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{ns}"}}}}"#),
    );
    // Pods of a realistic size (labels, a container with resources, env and a probe), held
    // back from scheduling by a selector no node matches.
    let pod = move |ns: &str, i: usize| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p-{i}","namespace":"{ns}","labels":{{"app":"bench","tier":"web","pod-template-hash":"5d9c7b8f6"}},"annotations":{{"note":"a pod made to be listed"}}}},"spec":{{"nodeSelector":{{"tug-bench":"nowhere"}},"containers":[{{"name":"web","image":"registry.example/web:1.2.3","ports":[{{"containerPort":8080}}],"env":[{{"name":"MODE","value":"production"}},{{"name":"LEVEL","value":"info"}}],"resources":{{"requests":{{"cpu":"100m","memory":"64Mi"}},"limits":{{"memory":"128Mi"}}}},"readinessProbe":{{"httpGet":{{"path":"/healthz","port":8080}}}}}}]}}}}"#
        )
    };
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let collection = format!("/api/v1/namespaces/{ns}/pods");
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (socket, next, collection, ns, failed) =
                (socket.to_path_buf(), next.clone(), collection.clone(), ns.clone(), failed.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= pods {
                        break;
                    }
                    if request(&socket, "POST", &collection, "application/json", &pod(&ns, i)) != 201 {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in writers {
        let _ = w.join();
    }
    // The control plane settles (the scheduler's rounds over the new pods, the controllers'
    // resync): the measure is of a cluster at rest, then listed.
    settle(pid);
    let before = rss_kib(pid);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let times = Arc::new(Mutex::new(Vec::new()));
    let bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listers: Vec<_> = (0..16)
        .map(|_| {
            let (socket, collection, times, bytes) =
                (socket.to_path_buf(), collection.clone(), times.clone(), bytes.clone());
            std::thread::spawn(move || {
                for _ in 0..3 {
                    let t = Instant::now();
                    let Ok(mut s) = UnixStream::connect(&socket) else { continue };
                    let req = format!("GET {collection} HTTP/1.1\r\nHost: tug\r\nConnection: close\r\n\r\n");
                    if s.write_all(req.as_bytes()).is_err() {
                        continue;
                    }
                    let mut out = Vec::new();
                    let _ = s.read_to_end(&mut out);
                    bytes.fetch_add(out.len(), std::sync::atomic::Ordering::Relaxed);
                    times.lock().expect("times").push(t.elapsed());
                }
            })
        })
        .collect();
    for l in listers {
        let _ = l.join();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    let after = rss_kib(pid);
    let mut times = times.lock().expect("times").clone();
    times.sort();
    println!(
        "BENCH api list-memory store={store} pods={pods} create_failures={} concurrent_lists=16 lists={} mib_per_list={:.1} rss_before_mib={:.1} rss_peak_mib={:.1} rss_after_mib={:.1} list_p50_ms={:.0} list_p99_ms={:.0} goal_rss_mib=100",
        failed.load(std::sync::atomic::Ordering::Relaxed),
        times.len(),
        bytes.load(std::sync::atomic::Ordering::Relaxed) as f64 / times.len().max(1) as f64 / 1048576.0,
        before as f64 / 1024.0,
        peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0,
        after as f64 / 1024.0,
        pct(&times, 0.5),
        pct(&times, 0.99)
    );
}

/// Whether a measure runs: all of them, or those `TUG_BENCH_ONLY` names (comma-separated).
fn only(measure: &str) -> bool {
    std::env::var("TUG_BENCH_ONLY").map_or(true, |o| o.split(',').any(|m| m == measure))
}

fn run_all(socket: &Path, store: &str, n: usize, rate: u64) {
    if only("apply-throughput") {
        apply_throughput(socket, store, n);
    }
    if only("write-latency") {
        write_latency(socket, store, n, rate);
    }
    if only("watch-latency") {
        watch_latency(socket, store, 100, (n / 20).max(10));
    }
    if only("hostile-bodies") {
        hostile_bodies(socket, store, (n / 5).max(50));
    }
}

/// `/version` latency while 4 clients keep posting bodies nested 300 levels deep.
fn hostile_bodies(socket: &Path, store: &str, probes: usize) {
    let mut deep = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: deep}\ndata:\n");
    for i in 0..300 {
        deep.push_str(&format!("{}k{i}:\n", " ".repeat(i + 2)));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attackers: Vec<_> = (0..4)
        .map(|_| {
            let (socket, deep, stop, refused) =
                (socket.to_path_buf(), deep.clone(), stop.clone(), refused.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if request(
                        &socket,
                        "POST",
                        "/api/v1/namespaces/default/configmaps",
                        "application/yaml",
                        &deep,
                    ) == 400
                    {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut times = Vec::with_capacity(probes);
    for _ in 0..probes {
        let t = Instant::now();
        request(socket, "GET", "/version", "application/json", "");
        times.push(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in attackers {
        let _ = a.join();
    }
    times.sort();
    println!(
        "BENCH api hostile-bodies store={store} clients=4 probes={probes} refused={} version_p50_ms={:.2} version_p99_ms={:.2} goal_p99_ms=50",
        refused.load(std::sync::atomic::Ordering::Relaxed),
        pct(&times, 0.5),
        pct(&times, 0.99)
    );
}

fn with_bin_dir<T>(dir: &Path, f: impl FnOnce() -> T) -> T {
    // Benchmarks run single-threaded here: setting the variable before any thread starts is
    // sound.
    // SAFETY: no other thread reads the environment at this point.
    unsafe { std::env::set_var("TUG_BIN_DIR", dir) };
    f()
}

fn apply_throughput(socket: &Path, store: &str, n: usize) {
    let clients = 4;
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let socket = socket.to_path_buf();
            std::thread::spawn(move || {
                let mut failed = 0;
                for i in (c..n).step_by(clients) {
                    let name = format!("t{i}");
                    let code = request(
                        &socket,
                        "PATCH",
                        &format!("/api/v1/namespaces/default/configmaps/{name}"),
                        "application/apply-patch+yaml",
                        &cm(&name),
                    );
                    failed += usize::from(code != 201 && code != 200);
                }
                failed
            })
        })
        .collect();
    let failed: usize = handles.into_iter().map(|h| h.join().unwrap_or(n)).sum();
    let secs = start.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)] // request counts
    let per_s = n as f64 / secs;
    println!(
        "BENCH api apply-throughput store={store} objects={n} clients={clients} objects_per_s={per_s:.0} failures={failed}"
    );
}

fn write_latency(socket: &Path, store: &str, n: usize, rate: u64) {
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let samples = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let failures = Arc::new(Mutex::new(0usize));
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..n {
        // Open loop: request i is due at start + i * interval, whether or not earlier ones
        // have finished.
        let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (socket, samples, failures) = (socket.to_path_buf(), samples.clone(), failures.clone());
        handles.push(std::thread::spawn(move || {
            let name = format!("l{i}");
            let t = Instant::now();
            let code = request(
                &socket,
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                &cm(&name),
            );
            let d = t.elapsed();
            if code == 201 {
                samples.lock().unwrap_or_else(|e| e.into_inner()).push(d);
            } else {
                *failures.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            }
        }));
        if handles.len() >= 256 {
            for h in handles.drain(..128) {
                let _ = h.join();
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }
    let achieved = n as f64 / start.elapsed().as_secs_f64();
    let mut s = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    s.sort();
    let f = *failures.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "BENCH api write-latency store={store} requests={n} target_rps={rate} achieved_rps={achieved:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} failures={f}",
        pct(&s, 0.5),
        pct(&s, 0.99),
        pct(&s, 1.0)
    );
}

fn watch_latency(socket: &Path, store: &str, watchers: usize, events: usize) {
    // Start every watcher from the current revision.
    let rv = current_revision(socket);
    let seen: Arc<Mutex<Vec<(String, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for _ in 0..watchers {
        let (socket, seen) = (socket.to_path_buf(), seen.clone());
        let mut s = UnixStream::connect(&socket).expect("connect watcher");
        let req = format!(
            "GET /api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&labelSelector=bench%3Dwatch HTTP/1.1\r\nHost: tug\r\n\r\n"
        );
        s.write_all(req.as_bytes()).expect("watch request");
        handles.push(std::thread::spawn(move || {
            let mut got = 0;
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("\"name\":\"w") {
                    let name: String = line[i + 8..].chars().take_while(|c| *c != '"').collect();
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push((name, Instant::now()));
                    got += 1;
                    if got == events {
                        break;
                    }
                }
            }
        }));
    }
    // Let every watcher be established before the first event, so the figure is delivery
    // latency rather than connection set-up.
    std::thread::sleep(Duration::from_millis(1500));
    let mut acked: Vec<(String, Instant)> = Vec::new();
    for i in 0..events {
        let name = format!("w{i}");
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","labels":{{"bench":"watch"}}}},"data":{{"k":"v"}}}}"#
        );
        request(socket, "POST", "/api/v1/namespaces/default/configmaps", "application/json", &body);
        acked.push((name, Instant::now()));
        std::thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap_or_else(|e| e.into_inner()).len() < watchers * events
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut lat: Vec<Duration> = seen
        .iter()
        .filter_map(|(name, at)| {
            acked.iter().find(|(n, _)| n == name).map(|(_, t)| at.saturating_duration_since(*t))
        })
        .collect();
    lat.sort();
    println!(
        "BENCH api watch-latency store={store} watchers={watchers} events={events} delivered={} p50_ms={:.2} p99_ms={:.2}",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    drop(handles);
}

fn current_revision(socket: &Path) -> String {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.write_all(b"GET /api/v1/namespaces HTTP/1.1\r\nHost: tug\r\nConnection: close\r\n\r\n").expect("list");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let i = out.find("\"resourceVersion\":\"").map(|i| i + 19).unwrap_or(0);
    out[i..].chars().take_while(char::is_ascii_digit).collect()
}

/// Creates from 4 clients until `n` are done on `socket`: the latencies of the 201s, and the
/// count of other answers.
fn creates(socket: &Path, prefix: &str, n: usize, headers: &str) -> (Vec<Duration>, usize) {
    let per = n.div_ceil(4);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (socket, prefix, headers) = (socket.to_path_buf(), prefix.to_string(), headers.to_string());
            std::thread::spawn(move || {
                let mut out = (Vec::with_capacity(per), 0usize);
                for i in 0..per {
                    let started = Instant::now();
                    let code = request_with(
                        &socket,
                        "POST",
                        "/api/v1/namespaces/default/configmaps",
                        "application/json",
                        &cm(&format!("{prefix}-{t}-{i}")),
                        &headers,
                    );
                    if code == 201 {
                        out.0.push(started.elapsed());
                    } else {
                        out.1 += 1;
                    }
                }
                out
            })
        })
        .collect();
    let mut all = (Vec::new(), 0);
    for h in threads {
        if let Ok((s, f)) = h.join() {
            all.0.extend(s);
            all.1 += f;
        }
    }
    all
}

/// `kubectl get pods -A` (the stock kubectl over TLS, a kubeconfig from `tug config
/// kubeconfig`) beside `tug get pods -A` over the Unix socket, at `n` pods: the median wall time
/// of five runs each, after one warm-up each (kubectl's discovery cache filled).
fn kubectl_get(release: &Path, n: usize) {
    use std::process::Command;
    const KUBECTL: &str = "/usr/bin/kubectl";
    if !Path::new(KUBECTL).exists() {
        println!("BENCH api kubectl-get skipped=no-kubectl ({KUBECTL} is not on this machine)");
        return;
    }
    let port = tug_integration::images::free_port();
    let listen = format!("127.0.0.1:{port}");
    let cp = with_bin_dir(release, || {
        tug_integration::control_plane::ControlPlane::start_with(&["--listen", &listen])
    });
    for i in 0..n {
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"bench-{i}"}},"spec":{{"containers":[{{"name":"c","image":"tug.local/none:1"}}]}}}}"#
        );
        assert_eq!(
            request(&cp.socket(), "POST", "/api/v1/namespaces/default/pods", "application/json", &body),
            201
        );
    }
    let tug = release.join("tug");
    let dir = tempfile::Builder::new().prefix("tug-bench-kubectl").tempdir().expect("tempdir");
    let config = dir.path().join("config");
    let out = Command::new(&tug)
        .env("TUG_SOCKET", cp.socket())
        .args(["config", "kubeconfig", "--cluster-url", &format!("https://{listen}")])
        .output()
        .expect("tug config kubeconfig");
    assert!(out.status.success(), "tug config kubeconfig: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&config, &out.stdout).expect("kubeconfig");
    let time = |c: &mut Command| {
        let t = std::time::Instant::now();
        let out = c.output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines = out.stdout.iter().filter(|b| **b == b'\n').count();
        assert_eq!(lines, n + 1, "a header and one line per pod");
        t.elapsed()
    };
    let kubectl = || {
        let mut c = Command::new(KUBECTL);
        c.env("KUBECONFIG", &config).env("HOME", dir.path()).args(["get", "pods", "-A"]);
        c
    };
    let tug_get = || {
        let mut c = Command::new(&tug);
        c.env("TUG_SOCKET", cp.socket()).args(["get", "pods", "-A"]);
        c
    };
    time(&mut kubectl());
    time(&mut tug_get());
    let (mut k, mut t) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        k.push(time(&mut kubectl()));
        t.push(time(&mut tug_get()));
    }
    k.sort();
    t.sort();
    println!(
        "BENCH api kubectl-get pods={n} kubectl_tls_ms={:.0} tug_socket_ms={:.0} runs=5 (medians; kubectl over TLS with server-side Tables, tug over the Unix socket)",
        k[2].as_secs_f64() * 1000.0,
        t[2].as_secs_f64() * 1000.0
    );
}

fn rbac_create(release: &Path, n: usize) {
    use tug_integration::control_plane::ControlPlane;
    let off = with_bin_dir(release, || ControlPlane::start_with(&["--authorization-mode", "AlwaysAllow"]));
    let on = with_bin_dir(release, ControlPlane::start);
    // The same objects in both stores: only the authorization mode differs.
    let post = |path: &str, body: String| {
        for cp in [&on, &off] {
            let code = request(&cp.socket(), "POST", path, "application/json", &body);
            assert_eq!(code, 201, "{path}: {body}");
        }
    };
    post(
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        r#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"bench-writer"},"rules":[{"apiGroups":[""],"resources":["configmaps"],"verbs":["create"]}]}"#.into(),
    );
    for i in 0..500 {
        post(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            format!(
                r#"{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{{"name":"other-{i}"}},"subjects":[{{"kind":"User","name":"user-{i}"}}],"roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"view"}}}}"#
            ),
        );
    }
    post(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        r#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"bench"},"subjects":[{"kind":"Group","name":"bench"}],"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"bench-writer"}}"#.into(),
    );
    let headers = "Impersonate-User: bench-user\r\nImpersonate-Group: bench\r\n";
    let (mut without, mut with, mut failed) = (Vec::new(), Vec::new(), 0);
    // Fifty short rounds each, alternating, so drift (page cache, the other core) falls on both.
    for round in 0..50 {
        let (s, f) = creates(&off.socket(), &format!("r{round}"), n / 10, headers);
        without.extend(s);
        failed += f;
        let (s, f) = creates(&on.socket(), &format!("r{round}"), n / 10, headers);
        with.extend(s);
        failed += f;
    }
    without.sort();
    with.sort();
    let (p99_off, p99_on) = (pct(&without, 0.99), pct(&with, 0.99));
    println!(
        "BENCH api rbac-create store=redb requests={} clients=4 bindings=501 off_p50_ms={:.2} off_p99_ms={p99_off:.2} on_p50_ms={:.2} on_p99_ms={p99_on:.2} p99_ratio={:.2} failures={failed} goal_p99_ratio=1.10",
        with.len() + without.len(),
        pct(&without, 0.5),
        pct(&with, 0.5),
        if p99_off > 0.0 { p99_on / p99_off } else { 0.0 },
    );
}
