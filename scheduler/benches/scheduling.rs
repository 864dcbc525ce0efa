//! `make bench AREA=scheduler`: in-process, like kube-scheduler's scheduler_perf — a snapshot of
//! simulated nodes (4 cpu, 16 GiB, 110 pods, three zones), pods of 100m / 128Mi from 100
//! ReplicaSets placed one after another, each counted on its node. Prints pods per second at
//! 5,000 nodes / 10,000 pods, and the time per pod at 500, 5,000 and 15,000 nodes.
//! Anchors (kube-scheduler's regression floors at 5,000 nodes): about 680–810 pods/s basic.

use serde_json::json;
use std::time::Instant;
use tug_api::kinds::cluster::Node;
use tug_api::kinds::pod::Pod;
use tug_scheduler::sched::engine::{Engine, Strategy};
use tug_scheduler::sched::snapshot::{NodeInfo, PodInfo, Snapshot};

fn nodes(n: usize) -> Snapshot {
    let nodes = (0..n)
        .map(|i| {
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": format!("node-{i}"), "labels": {"topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
                "spec": {},
                "status": {"allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"},
                           "conditions": [{"type": "Ready", "status": "True"}]}
            }))
            .expect("node");
            NodeInfo::new(&node)
        })
        .collect();
    Snapshot::new(nodes)
}

/// What each pod adds to its spec.
#[derive(Clone, Copy)]
enum Kind {
    Basic,
    /// Required anti-affinity against its own ReplicaSet's pods, per host.
    AntiAffinity,
    /// `maxSkew: 1` over zones for its own ReplicaSet's pods.
    Spread,
}

fn pods(n: usize, kind: Kind) -> Vec<PodInfo> {
    (0..n)
        .map(|i| {
            let rs = format!("rs-{}", i % 100);
            let mut v = json!({
                "metadata": {"name": format!("pod-{i}"), "namespace": "bench", "labels": {"app": rs},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": format!("uid-{}", i % 100), "controller": true}]},
                "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}
            });
            match kind {
                Kind::Basic => {}
                Kind::AntiAffinity => {
                    v["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": rs}}, "topologyKey": "kubernetes.io/hostname"}]}});
                }
                Kind::Spread => {
                    v["spec"]["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": rs}}}]);
                }
            }
            let pod: Pod = serde_json::from_value(v).expect("pod");
            PodInfo::new(&pod)
        })
        .collect()
}

/// Places every pod; returns (seconds, unschedulable count).
fn run(snap: &mut Snapshot, pods: &[PodInfo]) -> (f64, usize) {
    let mut engine = Engine::new(Strategy::LeastAllocated);
    let mut failed = 0;
    let t = Instant::now();
    for p in pods {
        match engine.schedule(p, snap) {
            Ok(node) => snap.assume(&node, p),
            Err(_) => failed += 1,
        }
    }
    (t.elapsed().as_secs_f64(), failed)
}

fn main() {
    let (n, m) = (5_000, 10_000);
    // TUG_BENCH_ONLY=basic (or anti-affinity, topology-spread, growth) runs one part.
    let only = std::env::var("TUG_BENCH_ONLY").ok();
    let wanted = |label: &str| only.as_deref().is_none_or(|o| o == label);
    for (label, kind, anchor, goal) in [
        ("basic", Kind::Basic, "680-810", "20000"),
        ("anti-affinity", Kind::AntiAffinity, "60", "2000"),
        ("topology-spread", Kind::Spread, "-", "-"),
    ] {
        if !wanted(label) {
            continue;
        }
        let mut snap = nodes(n);
        let (secs, failed) = run(&mut snap, &pods(m, kind));
        #[allow(clippy::cast_precision_loss)]
        let rate = m as f64 / secs;
        println!(
            "BENCH scheduler {label} nodes={n} pods={m} pods_per_s={rate:.0} unschedulable={failed} anchor_kube_scheduler_pods_per_s={anchor} goal_pods_per_s={goal}"
        );
    }
    if !wanted("growth") {
        return;
    }
    let mut line = String::from("BENCH scheduler growth pods=2000");
    for size in [500, 5_000, 15_000] {
        let mut snap = nodes(size);
        let (secs, _) = run(&mut snap, &pods(2_000, Kind::Basic));
        line += &format!(" us_per_pod_at_{size}={:.1}", secs * 1e6 / 2_000.0);
    }
    println!("{line}");
}
