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
//!
//! One scheduler runs per control plane, on the replica leading the controllers
//! (`controllers::spawn`): cross-pod rules need every earlier binding in view. Still, two
//! schedulers on one store (a replaced leader for a moment, a second scheduler) never
//! overcommit a node: before binding, a scheduler
//! records the pod's requests in the node's *reservation* (`_tug/reservations//<node>`),
//! updating it with the revision it read before its snapshot. A replica that reserved on the
//! same node in between bumped that revision, so the update fails and the pod waits for the
//! next round, which sees the other's reservation. A reservation counts only while its pod
//! is pending — the same pod (by uid), not bound, not deleted — and for at most a minute (a
//! binding that failed): a deleted pod's slot is free at once, also after a restart, and
//! the entries that no longer count are dropped at the node's next reservation.

use super::engine::{Engine, Strategy};
use super::snapshot::{PodInfo, Snapshot};
use crate::store::cache::{Typed, list_typed};
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
const RESERVATIONS: &str = "_tug/reservations//";
/// How long a reservation outlives its binding (or a failed one).
const RESERVATION_TTL_SECS: u64 = 60;

/// One node's reservations: pod key → requests and when they were reserved.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Reservations {
    pods: std::collections::BTreeMap<String, Reserved>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Reserved {
    requests: super::snapshot::Resources,
    at: u64,
    /// The pod's uid: a pod made again under the same name is another pod.
    #[serde(default)]
    uid: String,
    /// The pod's revision its binding expects: once the pod has changed and is still unbound,
    /// that binding failed (or will), and the reservation holds nothing (0: not known).
    #[serde(default)]
    revision: u64,
}

/// Whether a reservation is in flight at `now`: its pod is pending (`pending` maps the
/// unbound, undeleted pods' keys to their uids and revisions), unchanged since it was
/// reserved (a binding expects that revision) and the reservation younger than the TTL. Only
/// those count, and only those are kept.
fn in_flight(
    key: &str,
    r: &Reserved,
    pending: &std::collections::HashMap<String, (String, u64)>,
    now: u64,
) -> bool {
    pending.get(key).is_some_and(|(uid, revision)| {
        (r.uid.is_empty() || &r.uid == uid) && (r.revision == 0 || r.revision == *revision)
    }) && now.saturating_sub(r.at) <= RESERVATION_TTL_SECS
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub bound: usize,
    pub unschedulable: usize,
    pub conflicts: usize,
    /// Lower-priority pods removed to make room.
    pub preempted: usize,
    /// What the round saw of each pod (by store key): whether it was bound, whether it had
    /// finished. A later change to neither (a bound pod's status) does not concern scheduling.
    pub seen: std::collections::HashMap<String, (bool, bool)>,
    /// The pods bound, for their `Scheduled` events.
    pub scheduled: Vec<Scheduled>,
}

/// A binding made: the pod (namespace, name, uid), its node, and the scheduler's name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scheduled {
    pub pod: tug_api::meta::ObjectMeta,
    pub node: String,
    pub by: String,
}

/// Whether a pod that is bound and whether it finished (Succeeded or Failed).
fn mark(pod: &Value) -> (bool, bool) {
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    (pod["spec"]["nodeName"].is_string(), matches!(phase, "Succeeded" | "Failed"))
}

/// [`mark`] of a decoded pod.
fn mark_pod(pod: &Pod) -> (bool, bool) {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default();
    (pod.spec.node_name.is_some(), matches!(phase, "Succeeded" | "Failed"))
}

/// Whether a pod event may change what a round would do: a pod to place (added, or changed
/// while unbound); and while the last round left pods it could not place (`waiting`), any
/// pod added or gone, bound or finished since that round saw it — room may have opened.
fn concerns(
    event: &crate::store::Event,
    seen: &std::collections::HashMap<String, (bool, bool)>,
    waiting: bool,
) -> bool {
    let now = mark(&event.object);
    match event.type_ {
        crate::store::EventType::Added => !now.0 || waiting,
        crate::store::EventType::Deleted => waiting,
        crate::store::EventType::Modified => !now.0 || (waiting && seen.get(&event.key) != Some(&now)),
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Places every pending pod once. Blocking (store calls); run it off the async threads.
pub fn round(store: &dyn Store, engine: &mut Engine) -> Result<Round, StoreError> {
    round_for(store, engine, &NAMES)
}

/// [`round`] for the pods whose `schedulerName` is one of `names`.
pub fn round_for(store: &dyn Store, engine: &mut Engine, names: &[&str]) -> Result<Round, StoreError> {
    // Reservations first: anything reserved after this read conflicts with our updates.
    let (reserved_objs, _) = store.list(RESERVATIONS)?;
    let mut reservations: std::collections::HashMap<String, (u64, Reservations)> = reserved_objs
        .iter()
        .filter_map(|s| {
            let node = s.key.rsplit('/').next()?.to_string();
            Some((node, (s.revision, tug_api::from_value_ref(&s.object).ok()?)))
        })
        .collect();
    // Decoded once per change of each object, from the controllers' copy of the store.
    let (node_objs, _) = list_typed::<Node>(store, NODES)?;
    let (pod_objs, _) = list_typed::<Pod>(store, PODS)?;
    // Borrowed from the copy, not cloned: a round is over every node.
    let nodes: Vec<&Node> = node_objs.iter().map(|n| n.value.as_ref()).collect();
    let typed: Vec<(Arc<Pod>, &Typed<Pod>)> = pod_objs.iter().map(|p| (Arc::clone(&p.value), p)).collect();
    let mut snap = Snapshot::from_pods(
        nodes.iter().copied(),
        typed.iter().filter(|(p, _)| p.spec.node_name.is_some()).map(|(p, _)| p.as_ref()),
    );
    // Reserved but not yet bound (by this scheduler or another): counted too, while in flight.
    let waiting: std::collections::HashMap<String, (String, u64)> = typed
        .iter()
        .filter(|(p, _)| p.spec.node_name.is_none() && p.metadata.deletion_timestamp.is_none())
        .map(|(p, s)| {
            let key = format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or("default"), p.metadata.name);
            (key, (p.metadata.uid.clone().unwrap_or_default(), s.revision()))
        })
        .collect();
    let now_s = unix_now();
    for (node, (_, r)) in &reservations {
        for (key, res) in &r.pods {
            if in_flight(key, res, &waiting, now_s) {
                let mut info = PodInfo::new(&Pod::default());
                info.requests = res.requests.clone();
                info.key = key.clone();
                snap.assume(node, &info);
            }
        }
    }
    // Pods made without the API's admission (by controllers) take their class's priority here;
    // the classes are read only in a round that has such a pod.
    let unadmitted = |p: &Pod| p.spec.node_name.is_none() && p.spec.priority.is_none();
    let mut typed = typed;
    let classes: Vec<tug_api::kinds::cluster::PriorityClass> = if typed.iter().any(|(p, _)| unadmitted(p)) {
        let (class_objs, _) = store.list("scheduling.k8s.io/priorityclasses//")?;
        class_objs.iter().filter_map(|s| crate::controllers::decode(s).ok()).collect()
    } else {
        Vec::new()
    };
    for (p, _) in typed.iter_mut().filter(|(p, _)| unadmitted(p)) {
        if let Some(c) =
            tug_api::kinds::cluster::PriorityClass::for_pod(&classes, p.spec.priority_class_name.as_deref())
        {
            let p = Arc::make_mut(p);
            p.spec.priority = Some(c.value);
            p.spec.preemption_policy.clone_from(&c.preemption_policy);
        }
    }
    let mut pending: Vec<(PodInfo, &Pod, &Typed<Pod>)> = typed
        .iter()
        .filter(|(p, _)| {
            p.spec.node_name.is_none()
                && p.metadata.deletion_timestamp.is_none()
                && names.contains(&p.spec.scheduler_name.as_deref().unwrap_or("default-scheduler"))
        })
        .map(|(p, s)| (PodInfo::new(p), p.as_ref(), *s))
        .collect();
    // The most important first, then the oldest.
    pending.sort_by(|a, b| {
        b.0.priority
            .cmp(&a.0.priority)
            .then_with(|| a.1.metadata.creation_timestamp.cmp(&b.1.metadata.creation_timestamp))
    });
    // Pods with claims: the claims and volumes, read once per round when any pod needs them.
    let needs_volumes = pending.iter().any(|(_, p, _)| p.spec.volumes.iter().any(|v| v.claim("").is_some()));
    let volumes = if needs_volumes { load_volumes(store)? } else { super::volumes::Volumes::default() };
    let mut out = Round {
        seen: pod_objs.iter().map(|p| (p.key().to_string(), mark_pod(&p.value))).collect(),
        ..Round::default()
    };
    // Placed this round: written after the loop, each node's reservation in one write and the
    // bindings in one batch.
    let mut placed: Vec<(PodInfo, &Typed<Pod>, String)> = Vec::new();
    for (mut info, pod, stored) in pending {
        if !pod.spec.scheduling_gates.is_empty() {
            // Held back until its gates are removed.
            match mark_gated(store, stored) {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        match super::volumes::constrain(pod, &volumes) {
            Ok(None) => {}
            Ok(Some(pinned)) => info = PodInfo::new(&pinned),
            Err(why) => {
                out.unschedulable += 1;
                let message = format!("0/{} nodes are available: {why}.", nodes.len());
                match mark_unschedulable(store, stored, &message) {
                    Ok(()) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
        }
        match engine.schedule(&info, &snap) {
            Ok(node) => {
                snap.assume(&node, &info);
                placed.push((info, stored, node));
            }
            Err(why) => {
                out.unschedulable += 1;
                match mark_unschedulable(store, stored, &why.to_string()) {
                    Ok(()) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                let may_preempt = pod.spec.preemption_policy.as_deref() != Some("Never");
                if let Some(p) = engine.preempt(&info, &snap).filter(|_| may_preempt) {
                    preempt(store, &stored.stored(), &p)?;
                    out.preempted += p.victims.len();
                }
            }
        }
    }
    // A node whose reservation another scheduler changed since the round began: its pods wait
    // for the next round, which sees the other's reservation.
    let mut refused: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut by_node: std::collections::BTreeMap<&str, Vec<&PodInfo>> = std::collections::BTreeMap::new();
    for (info, _, node) in &placed {
        by_node.entry(node.as_str()).or_default().push(info);
    }
    for (node, pods) in by_node {
        match reserve(store, &mut reservations, node, &pods, &waiting) {
            Ok(()) => {}
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => {
                out.conflicts += pods.len();
                refused.insert(node);
            }
            Err(e) => return Err(e),
        }
    }
    let placed: Vec<&(PodInfo, &Typed<Pod>, String)> =
        placed.iter().filter(|(_, _, n)| !refused.contains(n.as_str())).collect();
    let bindings: Vec<(String, Value, Option<u64>)> = placed
        .iter()
        .map(|(_, t, node)| (t.key().to_string(), bound_object(t.stored(), node), Some(t.revision())))
        .collect();
    for ((_, t, node), result) in placed.into_iter().zip(store.update_each(bindings)) {
        match result {
            Ok(_) => {
                out.bound += 1;
                // Its binding's event is this round's own doing.
                out.seen.insert(t.key().to_string(), (true, false));
                // Only what the event names.
                let m = &t.value.metadata;
                let pod = tug_api::meta::ObjectMeta {
                    name: m.name.clone(),
                    namespace: m.namespace.clone(),
                    uid: m.uid.clone(),
                    ..Default::default()
                };
                let by = t.value.spec.scheduler_name.clone().unwrap_or_else(|| NAMES[0].into());
                out.scheduled.push(Scheduled { pod, node: node.clone(), by });
            }
            Err(StoreError::Conflict { .. }) => out.conflicts += 1,
            // Deleted meanwhile (scaled down, evicted): nothing to place.
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Records the pods' requests in the node's reservation, with the revision read at the start
/// of the round (dropping reservations past their time).
fn reserve(
    store: &dyn Store,
    all: &mut std::collections::HashMap<String, (u64, Reservations)>,
    node: &str,
    pods: &[&PodInfo],
    waiting: &std::collections::HashMap<String, (String, u64)>,
) -> Result<(), StoreError> {
    let now = unix_now();
    let key = format!("{RESERVATIONS}{node}");
    let (rev, mut r) =
        all.get(node).cloned().map_or((None, Reservations::default()), |(rev, r)| (Some(rev), r));
    // A pod bound since is counted from the pod list; one deleted or past the TTL (its
    // binding failed) never will be: only what is in flight stays.
    r.pods.retain(|k, v| in_flight(k, v, waiting, now));
    for pod in pods {
        let (uid, revision) = waiting.get(&pod.key).cloned().unwrap_or_default();
        r.pods.insert(pod.key.clone(), Reserved { requests: pod.requests.clone(), at: now, uid, revision });
    }
    let mut value = serde_json::to_value(&r).map_err(|e| StoreError::Backend(e.to_string()))?;
    // The store keeps an object's revision in its metadata.
    value["metadata"] = json!({"name": node});
    let stored = match rev {
        Some(rev) => store.update(&key, value, Some(rev))?,
        None => store.create(&key, value)?,
    };
    all.insert(node.to_string(), (stored.revision, r));
    Ok(())
}

/// Removes the victims (an Event on each says by whom) and nominates the node on the
/// preemptor; the round their deletion wakes binds it.
fn preempt(store: &dyn Store, preemptor: &Stored, p: &super::engine::Preemption) -> Result<(), StoreError> {
    let by = preemptor.object["metadata"]["name"].as_str().unwrap_or_default().to_string();
    for victim in &p.victims {
        let (ns, name) = victim.split_once('/').unwrap_or(("default", victim));
        let key = format!("/pods/{ns}/{name}");
        let Some(mut stored) = store.get(&key)? else { continue };
        if crate::deletion::terminating(&stored.object) {
            continue;
        }
        // Kubernetes' DisruptionTarget condition says why the pod goes (its node's agent
        // tells it as a Preempting event while stopping it).
        let scheduler = preemptor.object["spec"]["schedulerName"].as_str().unwrap_or(NAMES[0]);
        let mut marked = stored.object.clone();
        let cond = json!({"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
            "message": format!("{scheduler}: preempting to accommodate a higher priority pod"),
            "lastTransitionTime": now()});
        match marked["status"]["conditions"].as_array_mut() {
            Some(cs) => {
                cs.retain(|c| c["type"] != "DisruptionTarget");
                cs.push(cond);
            }
            None => marked["status"]["conditions"] = json!([cond]),
        }
        match store.update(&key, marked, Some(stored.revision)) {
            Ok(s) => stored = s,
            Err(StoreError::NotFound(_) | StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
        // The victim gets its grace period: its resources are the preemptor's once it is gone.
        let pre = crate::deletion::Preconditions {
            uid: stored.object["metadata"]["uid"].as_str().map(str::to_string),
            resource_version: None,
        };
        match crate::deletion::delete(store, &key, None, &pre) {
            Ok(_) => {}
            Err(crate::deletion::Refused::Precondition(_)) => continue,
            Err(crate::deletion::Refused::Store(StoreError::NotFound(_) | StoreError::Conflict { .. })) => {
                continue;
            }
            Err(crate::deletion::Refused::Store(e)) => return Err(e),
        }
        event(store, &stored, "Preempted", &format!("Preempted by pod {by} on node {}", p.node), "Normal")?;
    }
    let Some(current) = store.get(&preemptor.key)? else { return Ok(()) };
    let mut obj = current.object;
    obj["status"]["nominatedNodeName"] = p.node.clone().into();
    match store.update(&preemptor.key, obj, Some(current.revision)) {
        Ok(_) | Err(StoreError::NotFound(_) | StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
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

/// The pod bound: `spec.nodeName` and `PodScheduled=True` (written only if the pod is still
/// as it was read).
fn bound_object(stored: Stored, node: &str) -> Value {
    let mut obj = stored.object;
    obj["spec"]["nodeName"] = node.into();
    set_condition(&mut obj, "True", None, None);
    obj
}

/// The pod's `PodScheduled` condition.
fn scheduled_condition(pod: &Pod) -> Option<&tug_api::meta::Condition> {
    pod.status.as_ref()?.conditions.iter().find(|c| c.type_ == "PodScheduled")
}

/// A pod with scheduling gates: `PodScheduled=False`, reason `SchedulingGated` (once). The
/// object is read only to be written.
fn mark_gated(store: &dyn Store, t: &Typed<Pod>) -> Result<(), StoreError> {
    if scheduled_condition(&t.value).is_some_and(|c| c.reason.as_deref() == Some("SchedulingGated")) {
        return Ok(());
    }
    let mut obj = t.stored().object;
    let message = "Scheduling is blocked due to non-empty scheduling gates";
    set_condition(&mut obj, "False", Some("SchedulingGated"), Some(message));
    match store.update(t.key(), obj, Some(t.revision())) {
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `PodScheduled=False`, reason `Unschedulable`, and a FailedScheduling Event — once per
/// message: a pod waiting round after round is not read again (its object is read only to be
/// written).
fn mark_unschedulable(store: &dyn Store, t: &Typed<Pod>, message: &str) -> Result<(), StoreError> {
    if scheduled_condition(&t.value).and_then(|c| c.message.as_deref()) == Some(message) {
        return Ok(());
    }
    let mut obj = t.stored().object;
    set_condition(&mut obj, "False", Some("Unschedulable"), Some(message));
    match store.update(t.key(), obj, Some(t.revision())) {
        Ok(_) => {}
        Err(StoreError::Conflict { .. }) => return Ok(()),
        Err(e) => return Err(e),
    }
    let involved = ("Pod", "v1", &t.value.metadata);
    crate::controllers::event(store, involved, "Warning", "FailedScheduling", message, "tug-scheduler")
}

/// An Event about a pod, from the scheduler.
fn event(
    store: &dyn Store,
    stored: &Stored,
    reason: &str,
    message: &str,
    type_: &str,
) -> Result<(), StoreError> {
    let meta: tug_api::meta::ObjectMeta =
        tug_api::from_value_ref(&stored.object["metadata"]).unwrap_or_default();
    crate::controllers::event(store, ("Pod", "v1", &meta), type_, reason, message, "tug-scheduler")
}

/// Runs rounds forever: one now, then one after every batch of store changes (and every
/// `resync`).
pub async fn run(store: Arc<dyn Store>, strategy: Strategy, resync: Duration) {
    let mut engine = Engine::new(strategy);
    let mut seen = std::collections::HashMap::new();
    let events = crate::events::Recorder::start(store.clone());
    loop {
        let rev = store.revision().unwrap_or(0);
        let s = store.clone();
        let started = std::time::Instant::now();
        // Whether this round left pods it could not place.
        let waiting;
        let result = tokio::task::spawn_blocking(move || {
            let r = round(s.as_ref(), &mut engine);
            (r, engine)
        })
        .await;
        match result {
            Ok((Ok(mut r), e)) => {
                engine = e;
                record_attempts(&r, started.elapsed());
                seen = std::mem::take(&mut r.seen);
                waiting = r.unschedulable > 0;
                for s in r.scheduled {
                    let ns = s.pod.namespace.as_deref().unwrap_or("default");
                    let message = format!("Successfully assigned {ns}/{} to {}", s.pod.name, s.node);
                    let involved = ("Pod", "v1", &s.pod);
                    events.record(crate::controllers::event_object(
                        involved,
                        "Normal",
                        "Scheduled",
                        &message,
                        &s.by,
                    ));
                }
                // Lost a race with another scheduler: go again at once with fresh data.
                if r.conflicts > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
            Ok((Err(err), e)) => {
                tracing::warn!("tug-scheduler: scheduling round: {err}");
                engine = e;
                waiting = true;
            }
            Err(_) => return,
        }
        wait_for_change(store.as_ref(), rev, resync, &seen, waiting).await;
    }
}

/// A round's attempts in `scheduler_schedule_attempts_total` and
/// `scheduler_scheduling_attempt_duration_seconds`: each pod of a round waited for all of it.
fn record_attempts(r: &Round, took: Duration) {
    let m = crate::metrics::get();
    for (result, n) in [("scheduled", r.bound), ("unschedulable", r.unschedulable), ("error", r.conflicts)] {
        if n == 0 {
            continue;
        }
        let l = tug_metrics::labels([("result", result)]);
        m.schedule_attempts.get_or_create(&l).inc_by(n as u64);
        let h = m.attempt_duration.get_or_create(&l);
        for _ in 0..n {
            h.observe(took.as_secs_f64());
        }
    }
}

/// Every claim (by `namespace/name`) and volume (by name), for the pods of a round that have
/// claims.
fn load_volumes(store: &dyn Store) -> Result<super::volumes::Volumes, StoreError> {
    use crate::controllers::{
        decode,
        volumes::{CLAIMS, VOLUMES},
    };
    use tug_api::kinds::storage::{PersistentVolume, PersistentVolumeClaim};
    let mut v = super::volumes::Volumes::default();
    for c in store.list(CLAIMS)?.0.iter().filter_map(|s| decode::<PersistentVolumeClaim>(s).ok()) {
        let key = format!("{}/{}", c.metadata.namespace.as_deref().unwrap_or("default"), c.metadata.name);
        v.claims.insert(key, c);
    }
    for pv in store.list(VOLUMES)?.0.iter().filter_map(|s| decode::<PersistentVolume>(s).ok()) {
        v.volumes.insert(pv.metadata.name.clone(), pv);
    }
    Ok(v)
}

/// Returns after the first change to pods, nodes or claims past `rev` that may concern
/// scheduling (then a short pause so a burst is one round), or after `resync`. The pods'
/// status writes (several per start) do not wake it: `seen` is what the last round saw. Nor
/// do nodes' and claims' changes while no pod waits for room (`waiting`): 5,000 nodes'
/// status reports kept the scheduler in rounds over every node and pod with nothing to place.
async fn wait_for_change(
    store: &dyn Store,
    rev: u64,
    resync: Duration,
    seen: &std::collections::HashMap<String, (bool, bool)>,
    waiting: bool,
) {
    // A claim getting bound frees the pods waiting for it.
    let watches = (
        store.watch(PODS, rev),
        store.watch(NODES, rev),
        store.watch(crate::controllers::volumes::CLAIMS, rev),
    );
    let (Ok(mut pods), Ok(mut nodes), Ok(mut claims)) = watches else {
        // The store is unreachable: try again after a pause.
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    };
    let resync = tokio::time::sleep(resync);
    tokio::pin!(resync);
    loop {
        tokio::select! {
            e = pods.next() => match e {
                Some(Ok(e)) if !concerns(&e, seen, waiting) => continue,
                _ => break,
            },
            e = nodes.next() => match e {
                Some(Ok(_)) if !waiting => continue,
                _ => break,
            },
            e = claims.next() => match e {
                Some(Ok(_)) if !waiting => continue,
                _ => break,
            },
            () = &mut resync => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb_store::RedbStore;

    /// A running pod's status writes do not wake the scheduler; a new pod and a pending
    /// pod's change do; a pod gone, bound elsewhere or finished does while pods wait for room.
    #[test]
    fn only_changes_that_concern_scheduling_wake_it() {
        use crate::store::{Event, EventType};
        let ev = |type_, object: Value| Event { revision: 9, type_, key: "/pods/default/p".into(), object };
        let running = json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let done = json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Succeeded"}});
        let seen: std::collections::HashMap<String, (bool, bool)> =
            [("/pods/default/p".to_string(), (true, false))].into();
        let none = std::collections::HashMap::new();
        for waiting in [false, true] {
            assert!(!concerns(&ev(EventType::Modified, running.clone()), &seen, waiting));
            assert!(concerns(&ev(EventType::Added, json!({"spec": {}})), &seen, waiting));
            assert!(concerns(&ev(EventType::Modified, json!({"spec": {}})), &seen, waiting));
            assert_eq!(concerns(&ev(EventType::Deleted, running.clone()), &seen, waiting), waiting);
            assert_eq!(concerns(&ev(EventType::Added, running.clone()), &seen, waiting), waiting);
            assert_eq!(concerns(&ev(EventType::Modified, done.clone()), &seen, waiting), waiting);
            // Bound since the round saw it unbound (by another scheduler).
            assert_eq!(concerns(&ev(EventType::Modified, running.clone()), &none, waiting), waiting);
        }
    }

    /// Two schedulers (each serving its own `schedulerName`, so they place different pods)
    /// racing over one store on nodes with room for ten pods each: never more than ten are
    /// bound to a node.
    #[test]
    fn two_schedulers_racing_never_overcommit_a_node() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb"), 1024).unwrap());
        for n in ["n1", "n2"] {
            let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n},
                "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "110"},
                           "conditions": [{"type": "Ready", "status": "True"}]}});
            store.create(&format!("/nodes//{n}"), node).unwrap();
        }
        for i in 0..200 {
            let scheduler = if i % 2 == 0 { "default-scheduler" } else { "tug-scheduler" };
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p{i}"), "namespace": "default"},
                "spec": {"schedulerName": scheduler, "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "100m"}}}]}});
            store.create(&format!("/pods/default/p{i}"), pod).unwrap();
        }
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = ["default-scheduler", "tug-scheduler"]
            .into_iter()
            .map(|name| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut e = Engine::new(Strategy::MostAllocated);
                    for _ in 0..10 {
                        barrier.wait();
                        round_for(store.as_ref(), &mut e, &[name]).unwrap();
                    }
                })
            })
            .collect();
        for r in racers {
            r.join().unwrap();
        }
        let on = |n: &str| {
            let (pods, _) = store.list(PODS).unwrap();
            pods.iter().filter(|p| p.object["spec"]["nodeName"] == n).count()
        };
        assert!(on("n1") <= 10 && on("n2") <= 10, "overcommitted: {} and {}", on("n1"), on("n2"));
        // And nothing is lost: rounds without a rival fill what is left.
        let mut e = Engine::new(Strategy::MostAllocated);
        for name in ["default-scheduler", "tug-scheduler"] {
            round_for(store.as_ref(), &mut e, &[name]).unwrap();
        }
        assert_eq!((on("n1"), on("n2")), (10, 10));
    }

    /// A store with one node that takes `max_pods` pods.
    fn one_node(max_pods: u32) -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb"), 1024).unwrap());
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "status": {"allocatable": {"cpu": "8", "memory": "8Gi", "pods": max_pods.to_string()},
                       "conditions": [{"type": "Ready", "status": "True"}]}});
        store.create("/nodes//n1", node).unwrap();
        (dir, store)
    }

    fn create_pod(store: &dyn Store, name: &str, uid: &str) {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "c", "image": "x"}]}});
        store.create(&format!("/pods/default/{name}"), pod).unwrap();
    }

    fn bound_count(store: &dyn Store) -> usize {
        let (pods, _) = store.list(PODS).unwrap();
        pods.iter().filter(|p| p.object["spec"]["nodeName"].is_string()).count()
    }

    /// The wedge seen on a live node: pods bound, then deleted; their reservations must not
    /// keep their slots, in this scheduler or a restarted one (a fresh engine).
    #[test]
    fn a_deleted_pods_slot_is_free_at_once() {
        let (_dir, store) = one_node(4);
        for i in 0..4 {
            create_pod(store.as_ref(), &format!("old{i}"), &format!("u-old{i}"));
        }
        assert_eq!(round(store.as_ref(), &mut Engine::new(Strategy::LeastAllocated)).unwrap().bound, 4);
        for i in 0..4 {
            store.delete(&format!("/pods/default/old{i}"), None).unwrap();
        }
        for i in 0..4 {
            create_pod(store.as_ref(), &format!("new{i}"), &format!("u-new{i}"));
        }
        let r = round(store.as_ref(), &mut Engine::new(Strategy::LeastAllocated)).unwrap();
        assert_eq!((r.bound, r.unschedulable), (4, 0), "the deleted pods' slots are free");
        // The same name again, another pod: the old reservation is not its own.
        store.delete("/pods/default/new0", None).unwrap();
        create_pod(store.as_ref(), "new0", "u-new0-again");
        assert_eq!(round(store.as_ref(), &mut Engine::new(Strategy::LeastAllocated)).unwrap().bound, 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Any sequence of creates, deletes, rounds and restarts: after a round, the node
        /// holds as many pods as exist, up to its room, and no reservation counts for a pod
        /// that is not pending.
        #[test]
        fn reservations_never_outlive_their_pods(ops in proptest::collection::vec(0u8..4, 1..24)) {
            let (_dir, store) = one_node(3);
            let mut engine = Engine::new(Strategy::LeastAllocated);
            let (mut alive, mut next) = (Vec::<String>::new(), 0);
            for op in ops {
                match op {
                    0 => {
                        let name = format!("p{next}");
                        create_pod(store.as_ref(), &name, &format!("uid-{next}"));
                        alive.push(name);
                        next += 1;
                    }
                    1 if !alive.is_empty() => {
                        let name = alive.remove(0);
                        store.delete(&format!("/pods/default/{name}"), None).unwrap();
                    }
                    2 => engine = Engine::new(Strategy::LeastAllocated),
                    _ => {
                        round(store.as_ref(), &mut engine).unwrap();
                        let bound = bound_count(store.as_ref());
                        // Bound pods never move: fewer than room only when fewer exist.
                        proptest::prop_assert_eq!(bound, alive.len().min(3), "bound, with {} alive", alive.len());
                    }
                }
            }
            round(store.as_ref(), &mut engine).unwrap();
            proptest::prop_assert_eq!(bound_count(store.as_ref()), alive.len().min(3));
        }
    }

    #[test]
    fn a_pods_class_gives_its_priority_and_never_means_no_preemption() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb"), 1024).unwrap());
        store
            .create(
                "/nodes//n1",
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "110"},
                           "conditions": [{"type": "Ready", "status": "True"}]}}),
            )
            .unwrap();
        store
            .create("scheduling.k8s.io/priorityclasses//polite", json!({"apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass", "metadata": {"name": "polite"}, "value": 1000, "preemptionPolicy": "Never"}))
            .unwrap();
        store
            .create("/pods/default/batch", json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "batch", "namespace": "default"},
                "spec": {"nodeName": "n1", "priority": 0, "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "900m"}}}]}}))
            .unwrap();
        // Made by a controller: no priority filled in, only the class.
        store
            .create("/pods/default/web", json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
                "spec": {"priorityClassName": "polite", "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "800m"}}}]}}))
            .unwrap();
        let mut e = Engine::new(Strategy::LeastAllocated);
        let r = round(store.as_ref(), &mut e).unwrap();
        assert_eq!((r.bound, r.unschedulable, r.preempted), (0, 1, 0), "higher, but it never preempts");
        assert!(store.get("/pods/default/batch").unwrap().is_some());
        // The same class allowed to preempt: its 1000 outranks the batch pod's 0.
        let mut class = store.get("scheduling.k8s.io/priorityclasses//polite").unwrap().unwrap();
        class.object["preemptionPolicy"] = "PreemptLowerPriority".into();
        store.update(&class.key, class.object, Some(class.revision)).unwrap();
        let r = round(store.as_ref(), &mut e).unwrap();
        assert_eq!(r.preempted, 1);
    }

    #[test]
    fn a_higher_priority_pod_preempts_lower_ones_and_is_then_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb"), 1024).unwrap());
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}});
        store.create("/nodes//n1", node).unwrap();
        let pod = |name: &str, cpu: &str, prio: i32, on: Option<&str>| {
            let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                "spec": {"priority": prio, "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}]}});
            if let Some(n) = on {
                p["spec"]["nodeName"] = n.into();
            }
            store.create(&format!("/pods/default/{name}"), p).unwrap();
        };
        pod("batch-1", "500m", 0, Some("n1"));
        pod("batch-2", "500m", 0, Some("n1"));
        pod("web", "800m", 1000, None);
        let mut e = Engine::new(Strategy::LeastAllocated);
        let first = round(store.as_ref(), &mut e).unwrap();
        assert_eq!((first.bound, first.unschedulable, first.preempted), (0, 1, 2));
        let web = store.get("/pods/default/web").unwrap().unwrap();
        assert_eq!(web.object["status"]["nominatedNodeName"], "n1");
        // The victims are Terminating (their grace period): they hold the node until the
        // node confirms they stopped, and nothing more is preempted meanwhile.
        for b in ["batch-1", "batch-2"] {
            let v = store.get(&format!("/pods/default/{b}")).unwrap().unwrap();
            assert_eq!(v.object["metadata"]["deletionGracePeriodSeconds"], 30);
            let c = &v.object["status"]["conditions"][0];
            assert_eq!(
                (c["type"].as_str(), c["reason"].as_str()),
                (Some("DisruptionTarget"), Some("PreemptionByScheduler"))
            );
        }
        let waiting = round(store.as_ref(), &mut e).unwrap();
        assert_eq!((waiting.bound, waiting.preempted), (0, 0));
        for b in ["batch-1", "batch-2"] {
            store.delete(&format!("/pods/default/{b}"), None).unwrap();
        }
        let second = round(store.as_ref(), &mut e).unwrap();
        assert_eq!(second.bound, 1);
        assert_eq!(store.get("/pods/default/web").unwrap().unwrap().object["spec"]["nodeName"], "n1");
        let (events, _) = store.list("/events/").unwrap();
        assert!(events.iter().any(|ev| ev.object["reason"] == "Preempted"
            && ev.object["message"] == "Preempted by pod web on node n1"));
    }
}
