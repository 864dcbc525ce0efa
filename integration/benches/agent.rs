//! `make bench AREA=agent`: pod startup latency on one node — `TUG_BENCH_PODS` (default 100)
//! pods created at once with the image already present, from the start of the API writes to
//! each pod's Ready, seen through a watch — and the agent's resident memory and CPU with them
//! all running. Also printed: the stages of a start (bound by the scheduler, the agent's first
//! status, Ready), the CPU time the whole host spent meanwhile, the store writes and the API
//! requests it took, and the memory cgroups the host held before it (see `memory_cgroups`).
//! Anchors: Kubernetes' SLO (p99 ≤ 5 s), the kubelet's allowance at 100 pods
//! (300 MiB), k3s' agent (~275 MB).
//!
//! Then `mass-stop`: every pod deleted at once with a 5 s grace period, their containers
//! ignoring SIGTERM (`sleep` as PID 1), so each is killed at the end of its grace: how long
//! until all are gone (one wave of ~5 s when every grace period runs at once), and how long a
//! pod created meanwhile takes to become Ready.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use tug_integration::agent::Agent;
use tug_integration::cluster::Cluster;
use tug_integration::control_plane::ControlPlane;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((sorted.len().max(1) - 1) as f64 * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn proc_stat(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, r)| r.split(' ').collect()).unwrap_or_default();
    let ticks = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (rss, ticks)
}

/// Clock ticks per second.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    #[allow(clippy::cast_precision_loss)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    hz
}

/// The memory cgroups the kernel holds (`/proc/cgroups`), removed ones still pinned by their
/// page cache included: each run leaves ~200 of those (`echo 3 > /proc/sys/vm/drop_caches`
/// frees them), one reason back-to-back runs drift slower.
fn memory_cgroups() -> u64 {
    let text = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"memory")).then(|| f.get(2)?.parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// CPU time the whole host spent busy (every state but idle and iowait; guest time is in user
/// already), in clock ticks: how much of the machine a startup burst took.
fn host_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or_default();
    cpu.split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// How far a pod got, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Stage {
    Bound,
    Status,
    Ready,
}

fn main() {
    let n: usize = std::env::var("TUG_BENCH_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let cluster = Cluster::new(1).expect("cluster");
    let cp = ControlPlane::start();
    let agent = Agent::start(
        &cp,
        &cluster.nodes[0],
        "tug-bench-node",
        &["--node-status-update-frequency", "10s", "--sync-frequency", "10s"],
    );
    agent.import_example_image();
    assert!(
        tug_integration::wait_for(Duration::from_secs(30), || cp
            .tug(&["get", "node", "tug-bench-node"])
            .status
            .success()),
        "the node did not register: {}",
        agent.log()
    );
    let mut yaml = String::new();
    for i in 0..n {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - {{name: c, image: tug.local/busybox-httpd:1, imagePullPolicy: Never, command: [/bin/sleep, '3600'], resources: {{requests: {{cpu: 5m, memory: 8Mi}}}}}}\n"
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    let api = tug_client::Client::unix(cp.socket());
    // Each pod's stages as the watch shows them: bound (the scheduler's write), the agent's
    // first status (its sandbox is made), Ready.
    let (tx, rx) = std::sync::mpsc::channel::<(String, Stage, Instant)>();
    let watch = rt.spawn(async move {
        let _ = api
            .watch("/api/v1/namespaces/default/pods?watch=true", |ev| {
                let o = &ev["object"];
                let name = o["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let at = Instant::now();
                let ready = o["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
                let stage = if ready {
                    Stage::Ready
                } else if o["status"]["phase"].is_string() {
                    Stage::Status
                } else if o["spec"]["nodeName"].is_string() {
                    Stage::Bound
                } else {
                    return true;
                };
                let _ = tx.send((name, stage, at));
                true
            })
            .await;
    });
    std::thread::sleep(Duration::from_millis(200));
    // What the build (or anything before) left dirty is written back now, not by the kernel's
    // flusher threads during the burst.
    nix::unistd::sync();
    if let Ok(marker) = std::env::var("TUG_BENCH_MARKER") {
        let _ = std::fs::write(marker, "start");
    }
    let rv = |rt: &tokio::runtime::Runtime| {
        let api = tug_client::Client::unix(cp.socket());
        let list = rt.block_on(api.get("/api/v1/namespaces/default/pods")).expect("list pods");
        list["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    // Requests the API served: every `apiserver_request_total` series summed.
    let requests = || -> u64 {
        let text = String::from_utf8_lossy(&cp.tug(&["get", "--raw", "/metrics"]).stdout).into_owned();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = text
            .lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
        n
    };
    let requests0 = requests();
    let rv0 = rv(&rt);
    let (agent_pid, cp_pid) = (agent.pid().expect("agent pid"), cp.pid().expect("control plane pid"));
    let (own0, cp0) = (proc_stat(agent_pid).1, proc_stat(cp_pid).1);
    let memcgs = memory_cgroups();
    let cpu0 = host_cpu_ticks();
    let t0 = Instant::now();
    let out = cp.tug_with_input(&["apply", "-f", "-"], &yaml);
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    let written = t0.elapsed();
    let mut ready: HashMap<String, Duration> = HashMap::new();
    let mut seen: HashMap<(String, Stage), Duration> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while ready.len() < n && Instant::now() < deadline {
        if let Ok((name, stage, at)) = rx.recv_timeout(Duration::from_secs(1)) {
            // A later stage implies the earlier ones (a status write may carry the binding).
            for s in [Stage::Bound, Stage::Status, Stage::Ready].into_iter().filter(|s| *s <= stage) {
                seen.entry((name.clone(), s)).or_insert(at - t0);
            }
            if stage == Stage::Ready {
                ready.entry(name).or_insert(at - t0);
            }
        }
    }
    if ready.len() < n {
        let missing: Vec<String> =
            (0..n).map(|i| format!("p{i}")).filter(|p| !ready.contains_key(p)).collect();
        for p in missing.iter().take(3) {
            let out = cp.tug(&["get", "pod", p, "-o", "yaml"]);
            eprintln!("{p}:\n{}", String::from_utf8_lossy(&out.stdout));
        }
        panic!("only {} of {n} pods became Ready (not {missing:?}):\n{}", ready.len(), agent.log());
    }
    let cpu_ticks = host_cpu_ticks() - cpu0;
    // Whose CPU: the agent's, the control plane's, and the rest (the runtime's and the
    // supervisors' short-lived processes, the containers' first steps, the kernel's threads).
    let (agent_ticks, cp_ticks) = (proc_stat(agent_pid).1 - own0, proc_stat(cp_pid).1 - cp0);
    let store_writes = rv(&rt) - rv0;
    // (Less the bench's own three: this /metrics read and the two lists for the revision.)
    let api_requests = requests().saturating_sub(requests0 + 3);
    let mut lat: Vec<Duration> = ready.into_values().collect();
    lat.sort();
    println!(
        "BENCH agent pod-startup pods={n} api_writes_ms={:.0} p50_ms={:.0} p99_ms={:.0} max_ms={:.0} host_cpu_s={:.2} agent_cpu_s={:.2} control_plane_cpu_s={:.2} store_writes={store_writes} api_requests={api_requests} host_memory_cgroups={memcgs} anchor_k8s_slo_p99_ms=5000",
        written.as_secs_f64() * 1000.0,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
        cpu_ticks as f64 / clock_ticks(),
        agent_ticks as f64 / clock_ticks(),
        cp_ticks as f64 / clock_ticks()
    );
    let stage = |s: Stage| {
        let mut v: Vec<Duration> = seen.iter().filter(|((_, st), _)| *st == s).map(|(_, d)| *d).collect();
        v.sort();
        v
    };
    let (bound, status) = (stage(Stage::Bound), stage(Stage::Status));
    println!(
        "BENCH agent pod-startup-stages pods={n} bound_p50_ms={:.0} bound_p99_ms={:.0} first_status_p50_ms={:.0} first_status_p99_ms={:.0} ready_p99_ms={:.0}",
        pct(&bound, 0.5),
        pct(&bound, 0.99),
        pct(&status, 0.5),
        pct(&status, 0.99),
        pct(&lat, 0.99)
    );
    // Steady state: 10 s with every pod running.
    let (_, t1) = proc_stat(agent_pid);
    std::thread::sleep(Duration::from_secs(10));
    let (rss, t2) = proc_stat(agent_pid);
    let hz = clock_ticks();
    #[allow(clippy::cast_precision_loss)]
    let cpu = (t2 - t1) as f64 / hz / 10.0 * 100.0;
    println!(
        "BENCH agent steady pods={n} agent_rss_kib={rss} agent_cpu_percent={cpu:.2} anchor_kubelet_rss_mib=300 anchor_k3s_agent_mb=275 goal_rss_mib=30"
    );
    // Mass stop: all at once, 5 s each; a new pod meanwhile.
    let grace = 5;
    let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    let mut args: Vec<&str> = vec!["delete", "pod", "--wait=false", "--grace-period", "5"];
    args.extend(names.iter().map(String::as_str));
    let t0 = Instant::now();
    let out = cp.tug(&args);
    assert!(out.status.success(), "delete: {}", String::from_utf8_lossy(&out.stderr));
    cp.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: newcomer}\nspec:\n  containers:\n  - {name: c, image: tug.local/busybox-httpd:1, imagePullPolicy: Never, command: [/bin/sleep, '3600']}\n",
    );
    let mut newcomer = None;
    let mut gone = None;
    let api = tug_client::Client::unix(cp.socket());
    while (newcomer.is_none() || gone.is_none()) && t0.elapsed() < Duration::from_secs(180) {
        while let Ok((name, stage, at)) = rx.try_recv() {
            if name == "newcomer" && stage == Stage::Ready && newcomer.is_none() {
                newcomer = Some(at - t0);
            }
        }
        if gone.is_none() {
            let list = rt.block_on(api.get("/api/v1/namespaces/default/pods")).unwrap_or_default();
            let left = list["items"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|p| p["metadata"]["name"] != "newcomer").count());
            if left == 0 {
                gone = Some(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "BENCH agent mass-stop pods={n} grace_s={grace} all_gone_s={:.1} new_pod_ready_ms={:.0} goal_all_gone_s={grace}+1",
        gone.map_or(f64::NAN, |d| d.as_secs_f64()),
        newcomer.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    );
    watch.abort();
    let _ = cp.tug(&["delete", "pod", "newcomer", "--force"]);
    drop(agent);
}
