//! `make bench AREA=autoscaling`, the controller's part: the CPU one sync of 1,000
//! HorizontalPodAutoscalers takes — each HPA's target read, its pods listed and matched,
//! their usage looked up in the cache the API server fills, the plan made and the status
//! written — in-process over the embedded store. 1,000 Deployments of 2 pods each, 10 per
//! namespace; half of the HPAs find their pods over target and rescale.
//! Anchor: Kubernetes' HPA controller syncs every HPA every 15 s with 5 workers; its cost per
//! HPA is not published, so the figure stands on its own (goal: well under one core-second
//! per 1,000 HPAs per sync).

use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tug_scheduler::controllers::hpa::{Autoscalers, PodUsage, UsageIndex};
use tug_scheduler::controllers::runtime::Controller;
use tug_scheduler::store::Store;
use tug_scheduler::store::redb_store::RedbStore;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn main() {
    let n: usize = std::env::var("TUG_BENCH_HPAS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&dir.path().join("s.redb"), 1 << 20).expect("store"));
    let mut index = UsageIndex::default();
    let now = tug_scheduler::controllers::timestamp(tug_scheduler::controllers::unix_now());
    for i in 0..n {
        let ns = format!("ns-{}", i / 10);
        let name = format!("web-{i}");
        let labels = json!({"app": name});
        store
            .create(
                &format!("apps/deployments/{ns}/{name}"),
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns, "uid": format!("d-{i}")},
                    "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "x"}]}}},
                    "status": {"replicas": 2}}),
            )
            .expect("deployment");
        for j in 0..2 {
            let pod = format!("{name}-{j}");
            store
                .create(
                    &format!("/pods/{ns}/{pod}"),
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": ns, "labels": labels},
                        "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "100m"}}}]},
                        "status": {"phase": "Running", "startTime": "2020-01-01T00:00:00Z",
                            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}}),
                )
                .expect("pod");
            // Half of them run hot (90% of request against a 50% target), half idle.
            let nanocores = if i % 2 == 0 { 90_000_000 } else { 40_000_000 };
            index.pods.insert(
                (ns.clone(), pod.clone()),
                PodUsage {
                    at: tug_scheduler::controllers::unix_now(),
                    window: 10,
                    containers: vec![tug_api::tunnel::ContainerUsage {
                        name: "c".into(),
                        usage: tug_api::tunnel::Usage {
                            cpu_nanocores: nanocores,
                            memory_working_set_bytes: 1 << 20,
                        },
                    }],
                },
            );
        }
        store
            .create(
                &format!("autoscaling/horizontalpodautoscalers/{ns}/{name}"),
                json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name, "namespace": ns, "uid": format!("h-{i}"), "creationTimestamp": now},
                    "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}, "minReplicas": 1, "maxReplicas": 10,
                        "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]}}),
            )
            .expect("hpa");
    }
    let cache = Arc::new(std::sync::Mutex::new(Arc::new(index)));
    let hpas = Autoscalers::new(cache, std::time::Duration::from_secs(15));
    let keys: Vec<String> =
        (0..n).map(|i| format!("autoscaling/horizontalpodautoscalers/ns-{}/web-{i}", i / 10)).collect();
    let mut line = format!("BENCH autoscaling controller hpas={n}");
    for sync in ["first", "steady"] {
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        for k in &keys {
            hpas.reconcile(store.as_ref(), k).expect("reconcile");
        }
        let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
        let per_thousand = cpu * 1000.0 / n as f64;
        line += &format!(
            " {sync}_sync_cpu_s_per_1000={per_thousand:.3} {sync}_sync_wall_ms={:.0}",
            wall * 1000.0
        );
    }
    let scaled = (0..n)
        .filter(|i| {
            let d = store.get(&format!("apps/deployments/ns-{}/web-{i}", i / 10)).ok().flatten();
            d.is_some_and(|d| d.object["spec"]["replicas"] != 2)
        })
        .count();
    println!("{line} rescaled={scaled} goal_cpu_s_per_1000=1.0");
}
