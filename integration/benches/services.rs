//! `make bench AREA=services`, end to end on one live node: how long a canary weight takes
//! from the API to the node's rules.
//!
//! - `api_to_node`: the stable Service's weight annotation written through the API (as the
//!   rollout controller writes it) until the node's proxy has committed the new split
//!   (seen by `nft monitor` in the node's namespace).
//! - `promote_to_node`: `promote` (the status patch `tug rollout promote` makes) at a canary
//!   pause until the next step's weight is on the node — the controller's reconcile included.
//!
//! Ten changes each; the median and the worst. Goal: under 100 ms. Anchor: Argo Rollouts
//! hands weights to a service mesh or ingress (SMI, Istio, NGINX), whose own propagation
//! (xDS push, reload) comes on top; not installable here.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tug_integration::agent::Agent;
use tug_integration::cluster::Cluster;
use tug_integration::control_plane::ControlPlane;

const WEIGHTS: [u32; 10] = [5, 10, 15, 20, 25, 30, 35, 40, 45, 50];

fn manifest() -> String {
    let mut steps = String::from("      - setCanaryScale: {replicas: 1}\n");
    for w in WEIGHTS {
        steps += &format!("      - setWeight: {w}\n      - pause: {{}}\n");
    }
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-canary}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: plain}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}, annotations: {{version: "VERSION"}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: tug.local/probe:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "mkdir -p /tmp/w && echo ok > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"]
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
  strategy:
    canary:
      stableService: web
      canaryService: web-canary
      steps:
{steps}"#
    )
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((sorted.len().max(1) - 1) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// Waits for `nft monitor` to print a rule with `mod 100 < w`.
fn seen(lines: &mpsc::Receiver<(Instant, String)>, w: u32, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    let want = format!("mod 100 < {w}");
    while let Ok((at, line)) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let hit = line
            .match_indices(&want)
            .any(|(i, m)| !line[i + m.len()..].starts_with(|c: char| c.is_ascii_digit()));
        if hit {
            return Some(at);
        }
    }
    None
}

/// `nft monitor`, ended with the bench (also when it panics).
struct Monitor(std::process::Child);

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let cluster = Cluster::new(1).expect("cluster");
    let cp = ControlPlane::start();
    let agent = Agent::start(&cp, &cluster.nodes[0], "tug-bench-node", &[]);
    agent.import_probe_image("tug.local/probe:1");
    let v1 = manifest().replace("VERSION", "1");
    cp.apply(&v1);
    let healthy = || cp.get_json(&["rollout", "web"]).is_some_and(|r| r["status"]["phase"] == "Healthy");
    assert!(
        tug_integration::wait_for(Duration::from_secs(120), healthy),
        "not healthy:\n{}\n{}",
        cp.log(),
        agent.log()
    );
    // Every rule change on the node, as it is committed.
    let mut monitor = Monitor(
        cluster.nodes[0]
            .command(&["nft", "monitor", "rules"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("nft monitor"),
    );
    let (tx, rx) = mpsc::channel();
    let out = monitor.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));

    // The annotation through the API (a Service no Rollout manages).
    let mut api = Vec::new();
    for w in WEIGHTS {
        let patch = format!(
            r#"{{"metadata":{{"annotations":{{"rollouts.tug.io/canary-weight":"{w}","rollouts.tug.io/canary-service":"web-canary"}}}}}}"#
        );
        let t0 = Instant::now();
        let (code, body) = cp.raw(
            "PATCH",
            "/api/v1/namespaces/default/services/plain",
            "application/merge-patch+json",
            &patch,
        );
        assert_eq!(code, 200, "{body}");
        let at = seen(&rx, w, Duration::from_secs(10)).unwrap_or_else(|| {
            let rules =
                cluster.nodes[0].command(&["nft", "list", "table", "ip", "tug_proxy"]).output().expect("nft");
            panic!(
                "weight {w} never reached the node:\n{}\n{}",
                String::from_utf8_lossy(&rules.stdout),
                agent.log()
            )
        });
        api.push(at.saturating_duration_since(t0));
        std::thread::sleep(Duration::from_millis(100));
        while rx.try_recv().is_ok() {}
    }

    // promote through the Rollout's steps.
    cp.apply(&manifest().replace("VERSION", "2"));
    let paused = |i: usize| {
        cp.get_json(&["rollout", "web"])
            .is_some_and(|r| r["status"]["phase"] == "Paused" && r["status"]["currentStepIndex"] == i)
    };
    assert!(tug_integration::wait_for(Duration::from_secs(120), || paused(2)), "no pause:\n{}", cp.log());
    std::thread::sleep(Duration::from_millis(300));
    while rx.try_recv().is_ok() {}
    let mut promote = Vec::new();
    for (k, w) in WEIGHTS.iter().enumerate().skip(1) {
        let idx = 2 * k + 1;
        let body = format!(
            r#"{{"status":{{"currentStepIndex":{idx},"pauseConditions":null,"controllerPause":null}}}}"#
        );
        let t0 = Instant::now();
        let (code, text) = cp.raw(
            "PATCH",
            "/apis/argoproj.io/v1alpha1/namespaces/default/rollouts/web/status",
            "application/merge-patch+json",
            &body,
        );
        assert_eq!(code, 200, "{text}");
        let at = seen(&rx, *w, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("weight {w} never reached the node\n{}", cp.log()));
        promote.push(at.saturating_duration_since(t0));
        assert!(tug_integration::wait_for(Duration::from_secs(20), || paused(idx + 1)), "step {idx}");
        while rx.try_recv().is_ok() {}
    }
    drop(monitor);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (what, mut v) in [("api_to_node", api), ("promote_to_node", promote)] {
        v.sort();
        println!(
            "BENCH services canary-weight {what} changes={} p50_ms={:.1} max_ms={:.1} (goal < 100)",
            v.len(),
            ms(pct(&v, 0.5)),
            ms(v.last().copied().unwrap_or_default())
        );
    }
    println!(
        "BENCH services anchor argo-rollouts not-installable (weights go to a mesh or ingress, whose propagation adds to the controller's)"
    );
}
