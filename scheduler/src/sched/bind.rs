//! The effect side: watch pods and nodes, place every pod that has no node, write the choice.
//!
//! Level-triggered: each round lists the nodes and pods, builds a [`Snapshot`], and places the
//! pending pods in creation order; it then sleeps until the store changes (a node joins, a pod
//! goes away, a new pod arrives) — unschedulable pods are retried on change, never by polling
//! (plus a slow resync in case a watch is cut). A binding is an update of the pod with the
//! revision it was read at: a pod bound meanwhile by another scheduler (or changed) is not
//! overwritten. A pod that fits nowhere gets `PodScheduled=False` with the summary
//! (`0/5 nodes are available: …`) and a `FailedScheduling` Event, written only when the
//! summary changes so that the scheduler's own writes do not wake it forever.

use super::engine::{Engine, Strategy};
use super::snapshot::{PodInfo, Snapshot};
use crate::store::{Store, StoreError, Stored};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tug_api::kinds::cluster::Node;
use tug_api::kinds::pod::Pod;

/// The `schedulerName`s this scheduler serves.
pub const NAMES: [&str; 2] = ["default-scheduler", "tug-scheduler"];

/// Store prefixes (`group/plural/`; the core group is empty).
const PODS: &str = "/pods/";
const NODES: &str = "/nodes/";

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub bound: usize,
    pub unschedulable: usize,
    pub conflicts: usize,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Places every pending pod once. Blocking (store calls); run it off the async threads.
pub fn round(store: &dyn Store, engine: &mut Engine) -> Result<Round, StoreError> {
    let (node_objs, _) = store.list(NODES)?;
    let (pod_objs, _) = store.list(PODS)?;
    let nodes: Vec<Node> =
        node_objs.iter().filter_map(|s| serde_json::from_value(s.object.clone()).ok()).collect();
    let typed: Vec<(Pod, &Stored)> =
        pod_objs.iter().filter_map(|s| Some((serde_json::from_value(s.object.clone()).ok()?, s))).collect();
    let bound: Vec<Pod> =
        typed.iter().filter(|(p, _)| p.spec.node_name.is_some()).map(|(p, _)| p.clone()).collect();
    let mut snap = Snapshot::from_objects(&nodes, &bound);
    let mut pending: Vec<&(Pod, &Stored)> = typed
        .iter()
        .filter(|(p, _)| {
            p.spec.node_name.is_none()
                && p.metadata.deletion_timestamp.is_none()
                && NAMES.contains(&p.spec.scheduler_name.as_deref().unwrap_or("default-scheduler"))
        })
        .collect();
    pending.sort_by(|a, b| a.0.metadata.creation_timestamp.cmp(&b.0.metadata.creation_timestamp));
    let mut out = Round::default();
    for (pod, stored) in pending {
        let info = PodInfo::new(pod);
        match engine.schedule(&info, &snap) {
            Ok(node) => match bind(store, stored, &node) {
                Ok(()) => {
                    snap.assume(&node, &info);
                    out.bound += 1;
                }
                Err(StoreError::Conflict { .. }) => out.conflicts += 1,
                Err(e) => return Err(e),
            },
            Err(why) => {
                out.unschedulable += 1;
                mark_unschedulable(store, stored, &why.to_string())?;
            }
        }
    }
    Ok(out)
}

fn set_condition(obj: &mut Value, status: &str, reason: Option<&str>, message: Option<&str>) {
    let mut cond = json!({"type": "PodScheduled", "status": status, "lastTransitionTime": now()});
    if let Some(r) = reason {
        cond["reason"] = r.into();
    }
    if let Some(m) = message {
        cond["message"] = m.into();
    }
    let conds = &mut obj["status"]["conditions"];
    if !conds.is_array() {
        *conds = json!([]);
    }
    if let Some(list) = conds.as_array_mut() {
        list.retain(|c| c["type"] != "PodScheduled");
        list.push(cond);
    }
}

/// Writes `spec.nodeName` and `PodScheduled=True`, if the pod is still as it was read.
fn bind(store: &dyn Store, stored: &Stored, node: &str) -> Result<(), StoreError> {
    let mut obj = stored.object.clone();
    obj["spec"]["nodeName"] = node.into();
    set_condition(&mut obj, "True", None, None);
    store.update(&stored.key, obj, Some(stored.revision)).map(drop)
}

fn mark_unschedulable(store: &dyn Store, stored: &Stored, message: &str) -> Result<(), StoreError> {
    let current = stored.object["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"))
        .and_then(|c| c["message"].as_str());
    if current == Some(message) {
        return Ok(());
    }
    let mut obj = stored.object.clone();
    set_condition(&mut obj, "False", Some("Unschedulable"), Some(message));
    match store.update(&stored.key, obj, Some(stored.revision)) {
        Ok(_) => {}
        Err(StoreError::Conflict { .. }) => return Ok(()),
        Err(e) => return Err(e),
    }
    let ns = stored.object["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = stored.object["metadata"]["name"].as_str().unwrap_or_default();
    let event_name = format!("{name}.{}", uuid::Uuid::new_v4().simple().to_string().get(..10).unwrap_or("0"));
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": event_name, "namespace": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now()},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": name,
                           "uid": stored.object["metadata"]["uid"].clone(), "apiVersion": "v1"},
        "reason": "FailedScheduling", "message": message, "type": "Warning",
        "source": {"component": "tug-scheduler"},
        "firstTimestamp": now(), "lastTimestamp": now(), "count": 1
    });
    match store.create(&format!("/events/{ns}/{event_name}"), event) {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs rounds forever: one now, then one after every batch of store changes (and every
/// `resync`).
pub async fn run(store: Arc<dyn Store>, strategy: Strategy, resync: Duration) {
    let mut engine = Engine::new(strategy);
    loop {
        let rev = store.revision().unwrap_or(0);
        let s = store.clone();
        let result = tokio::task::spawn_blocking(move || {
            let r = round(s.as_ref(), &mut engine);
            (r, engine)
        })
        .await;
        match result {
            Ok((Ok(_), e)) => engine = e,
            Ok((Err(err), e)) => {
                eprintln!("tug-scheduler: scheduling round: {err}");
                engine = e;
            }
            Err(_) => return,
        }
        wait_for_change(store.as_ref(), rev, resync).await;
    }
}

/// Returns after the first change to pods or nodes past `rev` (then a short pause so a burst
/// is one round), or after `resync`.
async fn wait_for_change(store: &dyn Store, rev: u64, resync: Duration) {
    let Ok(mut pods) = store.watch(PODS, rev) else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    };
    let Ok(mut nodes) = store.watch(NODES, rev) else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    };
    tokio::select! {
        _ = pods.next() => {}
        _ = nodes.next() => {}
        _ = tokio::time::sleep(resync) => {}
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}
