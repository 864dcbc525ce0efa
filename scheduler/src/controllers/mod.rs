//! The reconcilers that keep the cluster on what users declared.
//!
//! Each controller is a pure planner — `plan(desired, observed, now) -> actions` — and a thin
//! executor that reads the store, calls the planner and writes what it returned; the
//! [`runtime`] feeds them keys from store watches.
//!
//! - [`replicaset`]: exactly `replicas` pods per ReplicaSet.
//! - [`deployment`]: ReplicaSets per template revision; rolling and recreate updates; the
//!   automatic rollback.
//! - [`rollout`]: canary and blue-green updates (Argo Rollouts' kinds), traffic weights on
//!   the stable Service, automatic abort.
//! - [`job`] and [`cronjob`]: batch work.
//! - [`endpoints`]: the ready pods behind each Service.
//! - [`loadbalancer`]: LoadBalancer Services' addresses from the pools (or the nodes').
//! - [`ingress`]: the addresses of the Ingresses Tug's controller serves (the nodes').
//! - [`disruption`]: each PodDisruptionBudget's healthy pods and allowed disruptions.
//! - [`gc`]: dependents follow their owners (background, foreground, orphan).
//! - [`namespaces`]: a Terminating namespace is emptied, then removed.
//! - [`nodes`]: a node whose lease stops is marked, tainted, and its pods evicted.
//!
//! They read the store directly, which is consistent (a list sees every write before it),
//! so unlike Kubernetes' controllers they need no "expectations" to cover a lagging cache.

pub mod analysis;
pub mod clusterroles;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod ephemeral;
pub mod gc;
pub mod history;
pub mod hpa;
pub mod ingress;
pub mod job;
pub mod leader;
pub mod loadbalancer;
pub mod namespaces;
pub mod nodes;
pub mod quota;
pub mod replicaset;
pub mod rollout;
pub mod runtime;
pub mod serviceaccounts;
pub mod statefulset;
pub mod volumes;
pub mod vpa;

use crate::store::{Store, StoreError, Stored};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tug_api::kinds::pod::Pod;
use tug_api::meta::{Condition, ObjectMeta, OwnerReference};

/// Settings from the scheduler's flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often every object is reconciled even without events.
    pub resync: Duration,
    /// How long a node's lease may go unrenewed before it is NotReady.
    pub node_monitor_grace: Duration,
    /// Toleration seconds for `node.kubernetes.io/unreachable` and `not-ready` NoExecute
    /// taints when a pod names none.
    pub default_unreachable_toleration: Duration,
    pub default_not_ready_toleration: Duration,
    /// `--horizontal-pod-autoscaler-sync-period`.
    pub hpa_sync: Duration,
    /// The agents' usage, for the HPAs (filled by the API server).
    pub usage: hpa::UsageCache,
    /// Connections to pods through their nodes' tunnels (the API server's), for web
    /// analyses of in-cluster URLs; without it they connect directly.
    pub dialer: Option<DebugDialer>,
    /// `--load-balancer-pool`.
    pub lb_pool: Option<loadbalancer::Pool>,
    /// `--scoring-strategy` of the scheduler, which runs with the controllers.
    pub scoring_strategy: crate::sched::engine::Strategy,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            resync: Duration::from_secs(30),
            node_monitor_grace: Duration::from_secs(20),
            default_unreachable_toleration: Duration::from_secs(30),
            default_not_ready_toleration: Duration::from_secs(30),
            hpa_sync: Duration::from_secs(15),
            usage: Default::default(),
            dialer: None,
            lb_pool: None,
            scoring_strategy: Default::default(),
        }
    }
}

/// A [`analysis::Dialer`] in [`Settings`] (which derive Debug).
#[derive(Clone)]
pub struct DebugDialer(pub analysis::Dialer);

impl std::fmt::Debug for DebugDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dialer")
    }
}

pub use leader::{LEADER_LEASE, Timing};

/// Runs the controllers and the scheduler while this replica holds the leader Lease
/// ([`leader`]): several `tug-scheduler`s over one etcd run them once, not once each, and a
/// replaced leader's writes are fenced off. The scheduler is one too, as kube-scheduler is
/// leader-elected: placing a pod by where its siblings are (topology spread, pod
/// anti-affinity) needs every earlier binding in view, and replicas binding at once each
/// placed by a view without the others' (a Deployment of three with `maxSkew: 1` went two
/// on one node). `identity` names this replica (host and socket): a restarted replica takes
/// its own lease back at once.
pub fn spawn(
    store: Arc<dyn Store>,
    settings: &Settings,
    identity: &str,
    timing: Timing,
) -> tokio::task::JoinHandle<()> {
    let settings = settings.clone();
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    leader::spawn(store, timing, format!("{host}:{identity}"), move |fenced| start(fenced, &settings))
}

/// Starts every controller and the scheduler on the current tokio runtime.
fn start(store: Arc<dyn Store>, settings: &Settings) -> Vec<tokio::task::JoinHandle<()>> {
    let scheduler = tokio::spawn(crate::sched::bind::run(
        store.clone(),
        settings.scoring_strategy,
        Duration::from_secs(30),
    ));
    let controllers: Vec<(Arc<dyn runtime::Controller>, usize)> = vec![
        (Arc::new(replicaset::ReplicaSets), 2),
        (Arc::new(deployment::Deployments), 2),
        (Arc::new(daemonset::DaemonSets::default()), 1),
        (Arc::new(statefulset::StatefulSets), 1),
        (Arc::new(quota::Quotas), 1),
        (Arc::new(ephemeral::Ephemeral), 1),
        (Arc::new(rollout::Rollouts), 1),
        (
            Arc::new(analysis::Analysis::new(
                store.clone(),
                settings.dialer.clone().map(|d| d.0),
                settings.usage.clone(),
            )),
            1,
        ),
        (Arc::new(endpoints::EndpointsController), 2),
        (Arc::new(loadbalancer::LoadBalancers::new(settings.lb_pool.clone())), 1),
        (Arc::new(ingress::IngressStatus), 1),
        (Arc::new(disruption::Disruption), 1),
        (Arc::new(hpa::Autoscalers::new(settings.usage.clone(), settings.hpa_sync)), 1),
        (Arc::new(vpa::VerticalAutoscalers::new(settings.usage.clone(), settings.hpa_sync)), 1),
        (Arc::new(job::Jobs), 1),
        (Arc::new(cronjob::CronJobs), 1),
        (Arc::new(gc::Collector::default()), 1),
        (Arc::new(namespaces::Namespaces), 1),
        (Arc::new(nodes::NodeLifecycle::new(settings)), 1),
        (Arc::new(volumes::VolumeBinder), 1),
        (Arc::new(clusterroles::Aggregation), 1),
        (Arc::new(serviceaccounts::Defaults), 1),
    ];
    controllers
        .into_iter()
        .map(|(c, workers)| tokio::spawn(runtime::run(store.clone(), c, workers, settings.resync)))
        .chain([scheduler])
        .collect()
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A timestamp as Kubernetes writes it.
pub fn timestamp(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Seconds since the epoch of a Kubernetes timestamp.
pub fn parse_time(t: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(t).ok()?.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Decodes a stored object into its type.
pub fn decode<T: DeserializeOwned>(s: &Stored) -> Result<T, StoreError> {
    tug_api::from_value_ref(&s.object).map_err(|e| StoreError::Backend(format!("{}: {e}", s.key)))
}

/// The owner that controls an object.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().find(|o| o.controller == Some(true))
}

/// The key of the object of `kind` (under `prefix`) that controls the object of an event.
pub fn controller_key(e: &crate::store::Event, kind: &str, prefix: &str) -> Vec<String> {
    let Ok(meta) = tug_api::from_value_ref::<ObjectMeta>(&e.object["metadata"]) else {
        return Vec::new();
    };
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    controller_of(&meta)
        .filter(|o| o.kind == kind)
        .map(|o| vec![format!("{prefix}{ns}/{}", o.name)])
        .unwrap_or_default()
}

/// An owner reference that makes `owner` the controller.
pub fn controller_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: owner.name.clone(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A new pod (as JSON, for [`create_generated`]) of a controller: `generateName`, the
/// template's labels and annotations (as the caller adjusted them), the owner, the spec.
pub fn new_pod(
    generate_name: String,
    namespace: Option<String>,
    labels: tug_api::labels::Labels,
    annotations: std::collections::BTreeMap<String, String>,
    owner: OwnerReference,
    spec: tug_api::kinds::pod::PodSpec,
) -> Value {
    let pod = Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace,
            labels,
            annotations,
            owner_references: vec![owner],
            ..Default::default()
        },
        spec,
        status: None,
    };
    serde_json::to_value(pod).unwrap_or(Value::Null)
}

/// Every pod of `ns`, decoded once per change in the store's copy and shared with it (a
/// Service's or a budget's reconcile at each of its namespace's pod changes parsed every pod
/// of the namespace again).
pub fn pods_in(store: &dyn Store, ns: &str) -> Result<Vec<Arc<Pod>>, StoreError> {
    let (items, _) = crate::store::cache::list_typed::<Pod>(store, &format!("/pods/{ns}/"))?;
    Ok(items.into_iter().map(|t| t.value).collect())
}

/// The pods of a workload (a Deployment, ReplicaSet, …: its `spec.selector`) in `ns`; None
/// when the selector does not parse.
pub fn workload_pods(
    store: &dyn Store,
    ns: &str,
    workload: &Value,
) -> Result<Option<Vec<Stored>>, StoreError> {
    let selector: tug_api::labels::LabelSelector =
        tug_api::from_value_ref(&workload["spec"]["selector"]).unwrap_or_default();
    let Ok(selector) = selector.to_selector("spec.selector") else { return Ok(None) };
    // Matched on the pods decoded in the store's copy; only the matches are copied out whole.
    let (items, _) = crate::store::cache::list_typed::<Pod>(store, &format!("/pods/{ns}/"))?;
    Ok(Some(
        items.iter().filter(|t| selector.matches(&t.value.metadata.labels)).map(|t| t.stored()).collect(),
    ))
}

/// The pods in `ns` controlled by one of `controllers` ("" for pods no one controls) that
/// `keep` accepts, from the store's copy: read by the copy's index by controller and decoded
/// once per change there, and only the accepted ones are cloned (a namespace of 50,000 pods
/// is not gone through for each ReplicaSet of 100).
pub fn pods_of(
    store: &dyn Store,
    ns: &str,
    controllers: &[&str],
    keep: impl Fn(&Pod) -> bool,
) -> Result<Vec<Arc<Pod>>, StoreError> {
    // Each once (an owner without a uid is "", as the orphans are).
    let mut controllers = controllers.to_vec();
    controllers.sort_unstable();
    controllers.dedup();
    let items = crate::store::cache::pods_controlled_by(store, ns, &controllers)?;
    // Shared with the copy, not cloned: a Deployment of 100 reconciled at each of its pods'
    // changes cloned all 100 every time.
    Ok(items.iter().filter(|p| keep(&p.value)).map(|p| Arc::clone(&p.value)).collect())
}

/// Whether a pod is controlled by the owner with `uid` or by nobody: the pods a workload may
/// claim (Kubernetes' ControllerRefManager looks at no others).
pub fn claimable_by(pod: &Pod, uid: &str) -> bool {
    controller_of(&pod.metadata).is_none_or(|o| o.uid == uid)
}

/// Whether a pod still counts: not finished and not being deleted.
pub fn pod_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && p.metadata.deletion_timestamp.is_none()
}

fn pod_condition<'a>(p: &'a Pod, type_: &str) -> Option<&'a Condition> {
    p.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// Since when a pod has been Ready (None when it is not).
pub fn ready_since(p: &Pod) -> Option<u64> {
    let c = pod_condition(p, "Ready").filter(|c| c.status == "True")?;
    Some(c.last_transition_time.as_deref().and_then(parse_time).unwrap_or(0))
}

/// Ready for at least `min_ready` seconds at `now`.
pub fn pod_available(p: &Pod, min_ready: u64, now: u64) -> bool {
    ready_since(p).is_some_and(|t| min_ready == 0 || t + min_ready <= now)
}

/// Sets a condition in a list, keeping `lastTransitionTime` when the status does not change.
pub fn set_condition(conds: &mut Vec<Condition>, mut c: Condition, now: &str) {
    if c.last_update_time.is_none() {
        c.last_update_time = Some(now.to_string());
    }
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => {
            c.last_transition_time =
                if x.status == c.status { x.last_transition_time.clone() } else { Some(now.to_string()) };
            *x = c;
        }
        None => {
            c.last_transition_time.get_or_insert_with(|| now.to_string());
            conds.push(c);
        }
    }
}

/// A condition.
pub fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        ..Default::default()
    }
}

/// Writes an Event about an object (given as its kind, apiVersion and metadata).
pub fn event(
    store: &dyn Store,
    involved: (&str, &str, &ObjectMeta),
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
) -> Result<(), StoreError> {
    let (key, ev) = event_object(involved, type_, reason, message, component);
    match store.create(&key, ev) {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Several Events (from [`event_object`]) in one store transaction.
pub fn events_each(store: &dyn Store, events: Vec<(String, Value)>) -> Result<(), StoreError> {
    for r in store.create_each(events) {
        match r {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An Event about an object, and the store key it goes under.
pub fn event_object(
    involved: (&str, &str, &ObjectMeta),
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
) -> (String, Value) {
    let (kind, api_version, meta) = involved;
    let ns = meta.namespace.as_deref().unwrap_or("default");
    let name = format!("{}.{}", meta.name, &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let now = timestamp(unix_now());
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now},
        "involvedObject": {"kind": kind, "namespace": ns, "name": meta.name, "uid": meta.uid, "apiVersion": api_version},
        "reason": reason, "message": message, "type": type_,
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1
    });
    (format!("/events/{ns}/{name}"), ev)
}

/// Creates an object the way the API server would (uid, creation time, generation), with a
/// random suffix on `generateName`; retries a taken name.
pub fn create_generated(store: &dyn Store, group_plural: &str, obj: Value) -> Result<Stored, StoreError> {
    create_generated_each(store, group_plural, vec![obj])
        .pop()
        .unwrap_or_else(|| Err(StoreError::Backend("nothing created".into())))
}

/// [`create_generated`] for several objects, admitted one by one and written in one store
/// transaction (a ReplicaSet's slow-start batch of pods: one fsync, not one per pod); the
/// results in the order given.
pub fn create_generated_each(
    store: &dyn Store,
    group_plural: &str,
    objs: Vec<Value>,
) -> Vec<Result<Stored, StoreError>> {
    // Admission and the store's create under one lock where the namespace has quotas
    // (`quota::admission_lock_in`); a batch is of one owner, in one namespace.
    let ns = objs.first().and_then(|o| o["metadata"]["namespace"].as_str()).unwrap_or("default").to_string();
    let _quota = crate::quota::admission_lock_in(store, Some(&ns));
    let mut out: Vec<Option<Result<Stored, StoreError>>> = Vec::new();
    let mut admitted: Vec<(usize, Value)> = Vec::new();
    for (i, mut obj) in objs.into_iter().enumerate() {
        out.push(None);
        match admit_generated(store, group_plural, &mut obj) {
            Ok(()) => admitted.push((i, obj)),
            Err(e) => out[i] = Some(Err(e)),
        }
    }
    let name = |obj: &mut Value| -> String {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = match obj["metadata"]["generateName"].as_str() {
            Some(b) => format!("{b}{}", random_suffix(5)),
            None => obj["metadata"]["name"].as_str().unwrap_or_default().to_string(),
        };
        obj["metadata"]["name"] = name.clone().into();
        crate::api::objects::on_create(obj, &uuid::Uuid::new_v4().to_string(), &crate::api::now());
        format!("{group_plural}/{ns}/{name}")
    };
    let batch: Vec<(String, Value)> = admitted.iter_mut().map(|(_, obj)| (name(obj), obj.clone())).collect();
    for ((i, mut obj), r) in admitted.into_iter().zip(store.create_each(batch)) {
        let generated = obj["metadata"]["generateName"].is_string();
        out[i] = Some(match r {
            // A taken name: seven more tries, one at a time.
            Err(StoreError::AlreadyExists(_)) if generated => (0..7)
                .map(|_| {
                    let key = name(&mut obj);
                    store.create(&key, obj.clone())
                })
                .find(|r| !matches!(r, Err(StoreError::AlreadyExists(_))))
                .unwrap_or_else(|| {
                    Err(StoreError::AlreadyExists(format!("{group_plural}: every generated name")))
                }),
            r => r,
        });
    }
    out.into_iter().map(|r| r.unwrap_or_else(|| Err(StoreError::Backend("not created".into())))).collect()
}

/// Admission of an object a controller makes, as the API server's for users' (under the
/// caller's `quota::admission_lock`).
fn admit_generated(store: &dyn Store, group_plural: &str, obj: &mut Value) -> Result<(), StoreError> {
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
    // Never into a namespace that is gone (deleted while its owners were being reconciled).
    let Some(namespace) = store.get(&format!("/namespaces//{ns}"))? else {
        return Err(StoreError::NotFound(format!("namespace {ns}")));
    };
    let base = obj["metadata"]["generateName"].as_str().map(str::to_string);
    if group_plural == "/pods" {
        // Pod Security holds for controllers' pods as for users': the owner gets a
        // FailedCreate event and the controller retries (with its back-off) until the pod
        // template or the namespace's level changes.
        let policy = crate::auth::podsecurity::policy(&ns, &namespace.object["metadata"]["labels"]);
        let found = crate::auth::podsecurity::violations_with(
            policy.enforce,
            &obj["spec"],
            &obj["metadata"]["annotations"],
        );
        // ServiceAccount admission as for users' pods: the account checked, the token mounted;
        // then the namespace's LimitRanges and ResourceQuotas.
        vpa::admit_pod(store, obj)?;
        let refused = if found.is_empty() {
            crate::auth::serviceaccounts::admit_pod(store, obj).err().or_else(|| {
                let info = tug_api::object::lookup("pods").expect("the Pod kind");
                crate::quota::admit(store, info, &ns, obj, false).err()
            })
        } else {
            Some(crate::auth::podsecurity::message(policy.enforce, &found))
        };
        if let Some(why) = refused {
            let name = base
                .clone()
                .unwrap_or_else(|| obj["metadata"]["name"].as_str().unwrap_or_default().to_string());
            let message = format!("Error creating: pods {name:?} is forbidden: {why}");
            if let Some(owner) = obj["metadata"]["ownerReferences"].as_array().and_then(|o| o.first()) {
                let meta = ObjectMeta {
                    name: owner["name"].as_str().unwrap_or_default().to_string(),
                    namespace: Some(ns.clone()),
                    uid: owner["uid"].as_str().map(str::to_string),
                    ..ObjectMeta::default()
                };
                let kind = owner["kind"].as_str().unwrap_or_default();
                let api_version = owner["apiVersion"].as_str().unwrap_or_default();
                let component = match kind {
                    "Job" => "job-controller",
                    "DaemonSet" => "daemonset-controller",
                    "StatefulSet" => "statefulset-controller",
                    _ => "replicaset-controller",
                };
                event(store, (kind, api_version, &meta), "Warning", "FailedCreate", &message, component)?;
            }
            return Err(StoreError::Backend(message));
        }
    } else if let Some(info) = tug_api::object::KINDS.iter().find(|k| {
        k.namespaced
            && format!("{}/{}", if k.group.is_empty() { "" } else { k.group }, k.plural) == group_plural
    }) {
        // Other objects controllers make (a StatefulSet's claims, Jobs, ReplicaSets) count
        // against the namespace's quotas as users' do.
        if let Err(why) = crate::quota::admit(store, info, &ns, obj, false) {
            let name = base
                .clone()
                .unwrap_or_else(|| obj["metadata"]["name"].as_str().unwrap_or_default().to_string());
            return Err(StoreError::Backend(format!(
                "Error creating: {} {name:?} is forbidden: {why}",
                info.plural
            )));
        }
    }
    Ok(())
}

/// Kubernetes' alphabet for generated names (no vowels, no confusable digits).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub fn random_suffix(n: usize) -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes.iter().take(n).map(|b| ALPHANUMS[usize::from(*b) % ALPHANUMS.len()] as char).collect()
}

/// Kubernetes' `SafeEncodeString`: every byte mapped into [`ALPHANUMS`].
pub fn safe_encode(s: &str) -> String {
    s.bytes().map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_times_and_conditions() {
        assert_eq!(parse_time(&timestamp(1_700_000_000)), Some(1_700_000_000));
        let mut conds = Vec::new();
        set_condition(&mut conds, condition("Available", "True", "A", "a"), "t1");
        set_condition(&mut conds, condition("Available", "True", "B", "b"), "t2");
        assert_eq!(conds[0].last_transition_time.as_deref(), Some("t1"));
        assert_eq!(conds[0].reason.as_deref(), Some("B"));
        set_condition(&mut conds, condition("Available", "False", "C", "c"), "t3");
        assert_eq!(conds[0].last_transition_time.as_deref(), Some("t3"));
        assert_eq!(safe_encode("12"), "56");
    }
}
