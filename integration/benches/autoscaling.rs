//! `make bench AREA=autoscaling`, end to end: one node, a Deployment of one pod that burns CPU
//! once told to (`touch /tmp/on` through exec), an HPA at 50% of its request, with the
//! defaults that set the pace — the HPA's 15 s sync and the agent's 10 s usage samples. From
//! the moment the load starts: how long until the HPA's first scale-out (the Deployment's
//! replicas raised) and until the new pods are Ready.
//! Anchor: Kubernetes reacts within its 15 s sync plus metrics-server's 15 s resolution
//! (≈ 15–30 s to the decision); the goal here is under 20 s.

use serde_json::Value;
use std::time::{Duration, Instant};
use tug_integration::agent::Agent;
use tug_integration::cluster::Cluster;
use tug_integration::control_plane::ControlPlane;

fn get(cp: &ControlPlane, args: &[&str]) -> Value {
    cp.get_json(args).unwrap_or(Value::Null)
}

fn main() {
    let cluster = Cluster::new(1).expect("cluster");
    let cp = ControlPlane::start_with(&["--horizontal-pod-autoscaler-sync-period", "15s"]);
    let agent = Agent::start(&cp, &cluster.nodes[0], "tug-bench-node", &["--housekeeping-interval", "10s"]);
    agent.import_example_image();
    assert!(
        tug_integration::wait_for(Duration::from_secs(30), || cp
            .tug(&["get", "node", "tug-bench-node"])
            .status
            .success()),
        "the node did not register: {}",
        agent.log()
    );
    let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: burn}
spec:
  replicas: 1
  selector: {matchLabels: {app: burn}}
  template:
    metadata: {labels: {app: burn}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burn
        image: tug.local/busybox-httpd:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "while true; do if [ -e /tmp/on ]; then i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; else sleep 1; fi; done"]
        resources: {requests: {cpu: 50m}, limits: {cpu: 200m}}
"#;
    assert!(cp.tug_with_input(&["apply", "-f", "-"], manifest).status.success());
    assert!(
        cp.tug(&["autoscale", "deploy/burn", "--min", "1", "--max", "3", "--cpu-percent", "50"])
            .status
            .success()
    );
    // Idle and measured first: the HPA has found its metric.
    let measured = || {
        let h = get(&cp, &["hpa", "burn"]);
        h["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["reason"] == "ValidMetricFound")
    };
    assert!(tug_integration::wait_for(Duration::from_secs(120), measured), "no metric: {}", agent.log());
    let pods = get(&cp, &["pods", "-l", "app=burn"]);
    let pod = pods["items"][0]["metadata"]["name"].as_str().expect("a pod").to_string();
    let t0 = Instant::now();
    assert!(cp.tug(&["exec", &pod, "--", "touch", "/tmp/on"]).status.success());
    let replicas = |field: &str| -> i64 {
        let d = get(&cp, &["deploy", "burn"]);
        if field == "spec" {
            d["spec"]["replicas"].as_i64().unwrap_or(0)
        } else {
            d["status"]["readyReplicas"].as_i64().unwrap_or(0)
        }
    };
    let mut decided = None;
    let mut ready = None;
    while t0.elapsed() < Duration::from_secs(180) {
        let want = replicas("spec");
        if decided.is_none() && want > 1 {
            decided = Some(t0.elapsed());
        }
        if decided.is_some() && replicas("ready") >= want {
            ready = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs =
        |d: Option<Duration>| d.map_or_else(|| "none".to_string(), |d| format!("{:.1}", d.as_secs_f64()));
    println!(
        "BENCH autoscaling scale-out sync_s=15 samples_s=10 first_decision_s={} new_pods_ready_s={} replicas={} goal_first_decision_s=20 anchor_kubernetes_s=15-30",
        secs(decided),
        secs(ready),
        replicas("spec")
    );
    assert!(decided.is_some(), "no scale-out within 180 s: {:#}", get(&cp, &["hpa", "burn"]));
}
