//! `make bench AREA=controllers`: the control plane's side of rolling a DaemonSet over 100
//! nodes and a 100-pod StatefulSet, in-process over the embedded store with simulated nodes
//! (hollow kubelets): between two reconciles every pod the controller made is bound and
//! reported Running and Ready at once, and every pod it deleted is gone at once. What is
//! left is the controllers' own work — the plans, the ControllerRevisions, the pod writes,
//! the status — and the number of reconciles a roll takes (an OrderedReady StatefulSet makes
//! and replaces one pod per reconcile, by design).
//! Anchor: Kubernetes publishes no figure for its controllers alone; a real roll is dominated
//! by the kubelets' start and readiness times, which `AREA=agent` and `AREA=runtime` measure.

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use tug_scheduler::controllers::daemonset::{self, DaemonSets};
use tug_scheduler::controllers::runtime::Controller;
use tug_scheduler::controllers::statefulset::StatefulSets;
use tug_scheduler::store::Store;
use tug_scheduler::store::redb_store::RedbStore;

const NODES: usize = 100;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// The hollow kubelets: pods made are bound (a daemon pod to its node) and Running/Ready;
/// pods deleted are gone.
fn kubelets(store: &dyn Store) {
    let (pods, _) = store.list("/pods/default/").expect("pods");
    let ready_at =
        tug_scheduler::controllers::timestamp(tug_scheduler::controllers::unix_now().saturating_sub(1));
    for (i, s) in pods.iter().enumerate() {
        if !s.object["metadata"]["deletionTimestamp"].is_null() {
            let _ = store.delete(&s.key, Some(s.revision));
            continue;
        }
        if s.object["status"]["phase"] == "Running" {
            continue;
        }
        let mut o = s.object.clone();
        if o["spec"]["nodeName"].is_null() {
            let pod: tug_api::kinds::pod::Pod = tug_api::from_value_ref(&o).expect("pod");
            let node = daemonset::target_node(&pod).unwrap_or_else(|| format!("node-{}", i % NODES));
            o["spec"]["nodeName"] = node.into();
        }
        o["status"] = json!({"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": ready_at}]});
        store.update(&s.key, o, Some(s.revision)).expect("pod status");
    }
}

/// Reconciles `key` with the hollow kubelets between passes until `done` says so; the wall
/// time, CPU time and passes it took.
fn roll(
    store: &dyn Store,
    c: &dyn Controller,
    key: &str,
    done: &dyn Fn(&Value) -> bool,
) -> (f64, f64, usize) {
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let mut passes = 0;
    loop {
        c.reconcile(store, key).expect("reconcile");
        passes += 1;
        kubelets(store);
        // One more pass writes the status the last kubelet report gives.
        c.reconcile(store, key).expect("reconcile");
        let obj = store.get(key).expect("get").expect("object").object;
        if done(&obj) {
            break;
        }
        assert!(passes < 2_000, "{key} did not finish rolling: {:#}", obj["status"]);
    }
    (t0.elapsed().as_secs_f64(), cpu_seconds() - c0, passes)
}

fn set_image(store: &dyn Store, key: &str, image: &str) {
    let s = store.get(key).expect("get").expect("object");
    let mut o = s.object.clone();
    o["spec"]["template"]["spec"]["containers"][0]["image"] = image.into();
    o["metadata"]["generation"] = (o["metadata"]["generation"].as_i64().unwrap_or(1) + 1).into();
    store.update(key, o, Some(s.revision)).expect("update");
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&dir.path().join("s.redb"), 1 << 20).expect("store"));
    let store = store.as_ref();
    store
        .create(
            "/namespaces//default",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
        )
        .expect("namespace");
    for i in 0..NODES {
        let name = format!("node-{i}");
        store
            .create(
                &format!("/nodes//{name}"),
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}),
            )
            .expect("node");
    }
    let template = |app: &str| json!({"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": "c", "image": "img:1"}], "terminationGracePeriodSeconds": 0}});
    let ds_key = "apps/daemonsets/default/agent";
    store
        .create(
            ds_key,
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "default", "uid": "ds-1", "generation": 1},
                "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template("agent"),
                    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 10, "maxSurge": 0}}}}),
        )
        .expect("daemonset");
    let ds = DaemonSets::default();
    let ds_done = |o: &Value| {
        let s = &o["status"];
        s["desiredNumberScheduled"] == NODES
            && s["updatedNumberScheduled"] == NODES
            && s["numberAvailable"] == NODES
            && s["observedGeneration"] == o["metadata"]["generation"]
    };
    let (wall, cpu, passes) = roll(store, &ds, ds_key, &ds_done);
    println!(
        "BENCH controllers daemonset_create nodes={NODES} wall_s={wall:.3} cpu_s={cpu:.3} reconciles={passes}"
    );
    set_image(store, ds_key, "img:2");
    let (wall, cpu, passes) = roll(store, &ds, ds_key, &ds_done);
    println!(
        "BENCH controllers daemonset_roll nodes={NODES} max_unavailable=10 wall_s={wall:.3} cpu_s={cpu:.3} reconciles={passes}"
    );

    let sts_key = "apps/statefulsets/default/web";
    store
        .create(
            sts_key,
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web", "namespace": "default", "uid": "sts-1", "generation": 1},
                "spec": {"replicas": NODES, "serviceName": "web", "selector": {"matchLabels": {"app": "web"}}, "template": template("web"),
                    "podManagementPolicy": "OrderedReady",
                    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0, "maxUnavailable": 1}}}}),
        )
        .expect("statefulset");
    let sts = StatefulSets;
    let sts_done = |o: &Value| {
        let s = &o["status"];
        s["readyReplicas"] == NODES
            && s["updatedReplicas"] == NODES
            && s["currentRevision"] == s["updateRevision"]
            && s["observedGeneration"] == o["metadata"]["generation"]
    };
    let (wall, cpu, passes) = roll(store, &sts, sts_key, &sts_done);
    println!(
        "BENCH controllers statefulset_create pods={NODES} policy=OrderedReady wall_s={wall:.3} cpu_s={cpu:.3} reconciles={passes}"
    );
    set_image(store, sts_key, "img:2");
    let (wall, cpu, passes) = roll(store, &sts, sts_key, &sts_done);
    println!(
        "BENCH controllers statefulset_roll pods={NODES} max_unavailable=1 wall_s={wall:.3} cpu_s={cpu:.3} reconciles={passes}"
    );
}
