//! `make bench AREA=agent`: pod startup latency on one node — `TUG_BENCH_PODS` (default 100)
//! pods created at once with the image already present, from the start of the API writes to
//! each pod's Ready, seen through a watch — and the agent's resident memory and CPU with them
//! all running. Anchors: Kubernetes' SLO (p99 ≤ 5 s), the kubelet's allowance at 100 pods
//! (300 MiB), k3s' agent (~275 MB).

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
    let api = tug_client::Client::Unix(cp.socket());
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    let watch = rt.spawn(async move {
        let _ = api
            .watch("/api/v1/namespaces/default/pods?watch=true", |ev| {
                let o = &ev["object"];
                let ready = o["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
                if ready {
                    let _ = tx.send((
                        o["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                        Instant::now(),
                    ));
                }
                true
            })
            .await;
    });
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let out = cp.tug_with_input(&["apply", "-f", "-"], &yaml);
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    let written = t0.elapsed();
    let mut ready: HashMap<String, Duration> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while ready.len() < n && Instant::now() < deadline {
        if let Ok((name, at)) = rx.recv_timeout(Duration::from_secs(1)) {
            ready.entry(name).or_insert(at - t0);
        }
    }
    assert_eq!(ready.len(), n, "only {} of {n} pods became Ready:\n{}", ready.len(), agent.log());
    let mut lat: Vec<Duration> = ready.into_values().collect();
    lat.sort();
    println!(
        "BENCH agent pod-startup pods={n} api_writes_ms={:.0} p50_ms={:.0} p99_ms={:.0} max_ms={:.0} anchor_k8s_slo_p99_ms=5000",
        written.as_secs_f64() * 1000.0,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    // Steady state: 10 s with every pod running.
    let pid = agent.pid().expect("agent pid");
    let (_, t1) = proc_stat(pid);
    std::thread::sleep(Duration::from_secs(10));
    let (rss, t2) = proc_stat(pid);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    #[allow(clippy::cast_precision_loss)]
    let cpu = (t2 - t1) as f64 / hz / 10.0 * 100.0;
    println!(
        "BENCH agent steady pods={n} agent_rss_kib={rss} agent_cpu_percent={cpu:.2} anchor_kubelet_rss_mib=300 anchor_k3s_agent_mb=275 goal_rss_mib=30"
    );
    watch.abort();
    let out = cp.tug(&["delete", "pods", "--all"]);
    let _ = out;
    drop(agent);
}
