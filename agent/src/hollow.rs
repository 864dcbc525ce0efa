//! Hollow nodes (`tug-hollow`), as Kubernetes' kubemark has them: many simulated nodes in one
//! process, each doing what an agent does through the API — it registers, keeps its Lease,
//! watches the pods bound to it, reports them Running and Ready, and confirms their
//! deletion — without touching the kernel. They make one machine a cluster of thousands of
//! nodes for the control plane's scale benchmark (`make bench AREA=scale`).
//!
//! The API work of each node is the real agent's (`crate::daemon`'s registration, lease and
//! pod watch); only what a pod's status says is made up here, by [`pod_status`], pure.

use crate::api;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tug_client::Client;

/// What every hollow node is.
#[derive(Debug, Clone)]
pub struct Shape {
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
    /// How often each node renews its Lease (kubelet's 10 s).
    pub lease_renew: Duration,
}

/// Counters the process prints when asked (and at the end).
#[derive(Debug, Default)]
pub struct Tally {
    pub registered: AtomicU64,
    pub heartbeats: AtomicU64,
    pub started: AtomicU64,
    pub deleted: AtomicU64,
    pub errors: AtomicU64,
}

/// The status a hollow node reports for a pod it "runs": Running, every container running and
/// ready from `now`, at `ip`.
pub fn pod_status(pod: &Value, ip: &str, host_ip: &str, now: &str) -> Value {
    let containers: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "name": c["name"], "image": c["image"], "imageID": format!("hollow://{}", c["image"].as_str().unwrap_or("")),
                "containerID": format!("hollow://{}", c["name"].as_str().unwrap_or("")),
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    let condition = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    json!({
        "phase": "Running",
        "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"), condition("Ready"),
            condition("ContainersReady"), condition("PodScheduled")],
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": now,
        "containerStatuses": containers,
    })
}

/// The `i`th address of a node's pod range (`10.x.y.0/24`): .2 upwards, wrapping.
pub fn pod_ip(cidr: &str, i: u64) -> String {
    let base = cidr.split('/').next().unwrap_or("10.0.0.0");
    let octets: Vec<u8> = base.split('.').filter_map(|o| o.parse().ok()).collect();
    match octets.as_slice() {
        [a, b, c, _] => format!("{a}.{b}.{c}.{}", 2 + i % 250),
        _ => "10.0.0.2".into(),
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Runs node `name` for ever: registers it, then keeps its Lease and its pods.
pub async fn run_node(api: Client, name: String, ip: String, shape: Shape, tally: Arc<Tally>) {
    let cidr = loop {
        match register(&api, &name, &ip, &shape).await {
            Ok(c) => break c,
            Err(e) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("tug-hollow: {name}: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    tally.registered.fetch_add(1, Ordering::Relaxed);
    {
        let (api, name, tally) = (api.clone(), name.clone(), Arc::clone(&tally));
        let every = shape.lease_renew;
        tokio::spawn(async move {
            // Spread over the period, as nodes that started at different times are.
            let jitter =
                u64::from(name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))));
            let period = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
            tokio::time::sleep(Duration::from_millis(jitter % period)).await;
            loop {
                match crate::daemon::renew_lease(&api, &name, every * 4).await {
                    Ok(()) => tally.heartbeats.fetch_add(1, Ordering::Relaxed),
                    Err(_) => tally.errors.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(every).await;
            }
        });
    }
    pods(&api, &name, &ip, &cidr, &tally).await;
}

async fn register(api: &Client, name: &str, ip: &str, shape: &Shape) -> Result<String, String> {
    let status = json!({
        "capacity": {"cpu": shape.cpu, "memory": shape.memory, "pods": shape.max_pods.to_string()},
        "allocatable": {"cpu": shape.cpu, "memory": shape.memory, "pods": shape.max_pods.to_string()},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "tug-hollow is posting ready status", "lastTransitionTime": now(), "lastProbeTime": now()}],
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        "nodeInfo": {"operatingSystem": "linux", "architecture": "amd64", "kubeletVersion": "hollow",
            "containerRuntimeVersion": "hollow://0", "kernelVersion": "hollow", "osImage": "hollow"},
    });
    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "node.tug.io/hollow": "true"}},
        "status": status});
    let path = format!("/api/v1/nodes/{name}");
    let created = match api::create(api, "/api/v1/nodes", &node).await {
        Ok(v) => v,
        Err(e) if api::is_conflict(&e) => api::get(api, &path).await?.ok_or("the node vanished")?,
        Err(e) => return Err(format!("registering: {e}")),
    };
    crate::daemon::renew_lease(api, name, Duration::from_secs(40)).await?;
    let mut obj = created;
    obj["status"] = status;
    api::put(api, &format!("{path}/status"), &obj).await.map_err(|e| format!("node status: {e}"))?;
    Ok(obj["spec"]["podCIDR"].as_str().unwrap_or("10.0.0.0/24").to_string())
}

/// The node's pods: list, then watch (resumed across cuts); each new one reported Running,
/// each marked for deletion confirmed gone.
async fn pods(api: &Client, name: &str, ip: &str, cidr: &str, tally: &Tally) {
    let base = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{name}");
    let counter = AtomicU64::new(0);
    loop {
        let list = match api.get(&base).await {
            Ok(l) => l,
            Err(_) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
        for p in list["items"].as_array().into_iter().flatten() {
            let _ = tx.send(p.clone());
        }
        let rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
        let handler = async {
            while let Some(p) = rx.recv().await {
                handle(api, &p, ip, cidr, &counter, tally).await;
            }
        };
        // The watcher owns the sender: the handler ends when the watcher does (a relist).
        let watcher = api.watch_resuming(
            &base,
            rv,
            move |ev| {
                if ev["type"] != "DELETED" {
                    let _ = tx.send(ev["object"].clone());
                }
                true
            },
            |_| {},
        );
        tokio::join!(watcher, handler);
    }
}

async fn handle(api: &Client, pod: &Value, node_ip: &str, cidr: &str, counter: &AtomicU64, tally: &Tally) {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let path = api::core_path(ns, "pods", name);
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        let options = json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
            "preconditions": {"uid": pod["metadata"]["uid"]}});
        match api::delete(api, &path, &options).await {
            Ok(()) => tally.deleted.fetch_add(1, Ordering::Relaxed),
            Err(e) if api::is_not_found(&e) => 0,
            Err(e) => {
                tracing::warn!("tug-hollow: pod {ns}/{name}: confirming deletion: {e}");
                tally.errors.fetch_add(1, Ordering::Relaxed)
            }
        };
        return;
    }
    if pod["status"]["phase"] == "Running" {
        return;
    }
    let ip = pod_ip(cidr, counter.fetch_add(1, Ordering::Relaxed));
    let mut obj = pod.clone();
    obj["status"] = pod_status(pod, &ip, node_ip, &now());
    match api::put(api, &format!("{path}/status"), &obj).await {
        Ok(_) => tally.started.fetch_add(1, Ordering::Relaxed),
        // Changed meanwhile: the watch brings the new version.
        Err(e) if api::is_conflict(&e) || api::is_not_found(&e) => 0,
        Err(e) => {
            tracing::warn!("tug-hollow: pod {ns}/{name}: status: {e}");
            tally.errors.fetch_add(1, Ordering::Relaxed)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hollow_pod_runs_every_container_ready() {
        let pod =
            json!({"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:2"}]}});
        let s = pod_status(&pod, "10.1.2.3", "10.250.0.10", "2026-12-06T00:00:00Z");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.1.2.3");
        let cs = s["containerStatuses"].as_array().unwrap();
        assert_eq!(cs.len(), 2);
        assert!(
            cs.iter()
                .all(|c| c["ready"] == true && c["state"]["running"]["startedAt"] == "2026-12-06T00:00:00Z")
        );
        assert!(
            s["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "Ready" && c["status"] == "True")
        );
        assert_eq!(pod_ip("10.7.3.0/24", 0), "10.7.3.2");
        assert_eq!(pod_ip("10.7.3.0/24", 251), "10.7.3.3");
    }
}
