//! StatefulSets: pods with stable names, stable storage and an order, as Kubernetes'
//! StatefulSet controller makes them.
//!
//! Ordinal `i` (from `ordinals.start`) is the pod `<set>-<i>`, with `hostname` its name and
//! `subdomain` the set's `serviceName` (so `web-0.nginx.NS.svc.DOMAIN` resolves through the
//! headless Service), and one claim `<template>-<set>-<i>` per `volumeClaimTemplates` entry,
//! made before the pod and kept across its restarts and replacements.
//!
//! [`plan`] is pure, after `updateStatefulSet` in Kubernetes' `stateful_set_control.go`:
//! - Failed or succeeded pods are deleted (to be made again).
//! - Missing ordinals are made — with `OrderedReady`, one at a time in order, each waiting
//!   until every lower one is running and ready; with `Parallel`, all at once.
//! - Ordinals past `replicas` are deleted — highest first and one at a time under
//!   `OrderedReady`, once every kept pod is ready; all at once under `Parallel`.
//! - `RollingUpdate`: once all that is settled, pods not of the update revision are deleted
//!   from the highest ordinal down to `partition`, while fewer than `maxUnavailable` of those
//!   ordinals are unavailable; each is made again from the new template. Ordinals below
//!   `partition` are made from the current revision. `OnDelete` deletes nothing.
//!
//! Claims follow `persistentVolumeClaimRetentionPolicy`: with `whenDeleted: Delete` each claim
//! is owned by the set (the garbage collector deletes it with the set); with `whenScaled:
//! Delete` a claim of an ordinal being scaled away is owned by its pod before the pod is
//! deleted (and goes with it). `Retain` keeps them for the next pod of that ordinal.

use super::history::{self, HASH_LABEL};
use super::runtime::{Controller, Next};
use super::{controller_ref, decode, pod_active, pod_available, ready_since};
use crate::store::{Event, Store, StoreError};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tug_api::kinds::apps::{StatefulSet, StatefulSetStatus};
use tug_api::kinds::pod::{Pod, PodTemplateSpec, Volume};
use tug_api::kinds::storage::PersistentVolumeClaim;
use tug_api::meta::OwnerReference;

pub const PREFIX: &str = "apps/statefulsets/";
const PODS: &str = "/pods/";
const CLAIMS: &str = "/persistentvolumeclaims/";
/// The pod label with its own name (Services can select one ordinal by it).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The pod label with its ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
const COMPONENT: &str = "statefulset-controller";

/// The ordinal of a pod of the set `set` (its name is `<set>-<ordinal>`).
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok()
}

/// The claim of ordinal `ordinal` from the claim template `template`.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

fn start(s: &StatefulSet) -> i32 {
    s.spec.ordinals.as_ref().map_or(0, |o| o.start.max(0))
}

fn replicas(s: &StatefulSet) -> i32 {
    s.spec.replicas.unwrap_or(1).max(0)
}

fn parallel(s: &StatefulSet) -> bool {
    s.spec.pod_management_policy.as_deref() == Some("Parallel")
}

/// `(partition, maxUnavailable)` for `RollingUpdate`; None for `OnDelete`.
fn rolling(s: &StatefulSet) -> Option<(i32, usize)> {
    let u = s.spec.update_strategy.as_ref();
    if u.and_then(|u| u.type_.as_deref()) == Some("OnDelete") {
        return None;
    }
    let ru = u.and_then(|u| u.rolling_update.as_ref());
    let partition = ru.and_then(|r| r.partition).unwrap_or(0).max(0);
    let total = i64::from(replicas(s));
    let max = ru
        .and_then(|r| r.max_unavailable.as_ref())
        .map_or(Ok(1), |m| m.scaled(total, false))
        .unwrap_or(1)
        .max(1);
    Some((partition, usize::try_from(max).unwrap_or(1)))
}

fn retention(s: &StatefulSet) -> (bool, bool) {
    let r = s.spec.persistent_volume_claim_retention_policy.as_ref();
    let delete = |v: Option<&String>| v.map(String::as_str) == Some("Delete");
    (delete(r.and_then(|r| r.when_deleted.as_ref())), delete(r.and_then(|r| r.when_scaled.as_ref())))
}

/// Which template a new pod is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revision {
    Current,
    Update,
}

/// What one reconcile of a StatefulSet does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Ordinals to make a pod for (their missing claims first).
    pub create: Vec<(i32, Revision)>,
    /// Claims to make for pods that exist, by ordinal.
    pub claims: Vec<i32>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    pub adopt: Vec<String>,
    pub release: Vec<String>,
    /// Claims whose owner references change (retention), by name, with the new list.
    pub claim_owners: Vec<(String, Vec<OwnerReference>)>,
    pub status: StatefulSetStatus,
    pub next: Next,
}

/// The pure decision. `pods` are the namespace's pods, `claims` its claims, `current` and
/// `update` the names of the current and update revisions.
pub fn plan<P: std::borrow::Borrow<Pod>>(
    set: &StatefulSet,
    pods: &[P],
    claims: &[PersistentVolumeClaim],
    (current, update): (&str, &str),
    now: u64,
) -> Plan {
    let mut out = Plan::default();
    let name = set.metadata.name.as_str();
    let deleting = set.metadata.deletion_timestamp.is_some();
    let (first, count) = (start(set), replicas(set));
    let in_range = |o: i32| o >= first && o - first < count;
    // Ordinal → its pod; pods of no ordinal are condemned.
    let mut by_ordinal: BTreeMap<i32, &Pod> = BTreeMap::new();
    let mut strays: Vec<&Pod> = Vec::new();
    let Some((mine, adopt, release)) = super::replicaset::claim_pods(&set.metadata, &set.spec.selector, pods)
    else {
        return out;
    };
    (out.adopt, out.release) = (adopt, release);
    for p in mine {
        match ordinal_of(name, &p.metadata.name) {
            Some(o) => {
                by_ordinal.insert(o, p);
            }
            None => strays.push(p),
        }
    }
    let m = u64::try_from(set.spec.min_ready_seconds.unwrap_or(0).max(0)).unwrap_or(0);
    let revision = |p: &Pod| p.metadata.labels.get(HASH_LABEL).cloned().unwrap_or_default();
    let terminating = |p: &Pod| p.metadata.deletion_timestamp.is_some();
    let healthy = |p: &Pod| {
        !terminating(p)
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && ready_since(p).is_some()
    };
    let available = |p: &Pod| healthy(p) && pod_available(p, m, now);
    out.status = status(set, &by_ordinal, &strays, (current, update), &available, &healthy);
    out.next = by_ordinal
        .values()
        .filter_map(|p| ready_since(p))
        .filter(|t| t + m > now)
        .map(|t| Next::After(Duration::from_secs(t + m - now)))
        .fold(Next::Done, Next::min);
    if deleting {
        return out;
    }
    let (delete_with_set, delete_when_scaled) = retention(set);
    let claim_of = |tmpl: &str, o: i32| {
        let n = claim_name(tmpl, name, o);
        claims.iter().find(|c| c.metadata.name == n)
    };
    let partition = rolling(set).map(|(p, _)| p);
    let made_from = |o: i32| match partition {
        Some(p) if o < first.saturating_add(p) && !current.is_empty() => Revision::Current,
        _ => Revision::Update,
    };
    // Retention: the owner references each existing claim should have.
    for (o, p) in
        by_ordinal.iter().map(|(o, p)| (*o, Some(*p))).chain((first..first + count).map(|o| (o, None)))
    {
        for t in &set.spec.volume_claim_templates {
            let Some(c) = claim_of(&t.metadata.name, o) else { continue };
            let pod_ref = p
                .filter(|_| delete_when_scaled && !in_range(o))
                .map(|p| controller_ref("v1", "Pod", &p.metadata))
                .map(|r| OwnerReference { controller: None, ..r });
            let want = claim_owners(c, set, delete_with_set, pod_ref, by_ordinal.values().copied());
            if want != c.metadata.owner_references
                && !out.claim_owners.iter().any(|(n, _)| *n == c.metadata.name)
            {
                out.claim_owners.push((c.metadata.name.clone(), want));
            }
        }
    }
    let claims_missing =
        |o: i32| set.spec.volume_claim_templates.iter().any(|t| claim_of(&t.metadata.name, o).is_none());
    let claim_terminating = |o: i32| {
        set.spec
            .volume_claim_templates
            .iter()
            .filter_map(|t| claim_of(&t.metadata.name, o))
            .any(|c| c.metadata.deletion_timestamp.is_some())
    };
    let monotonic = !parallel(set);
    // Replicas: in ordinal order, failed ones replaced, missing ones made.
    let mut blocked = false;
    for o in first..first.saturating_add(count) {
        match by_ordinal.get(&o) {
            Some(p) if !terminating(p) && !pod_active(p) => {
                out.delete.push(p.metadata.name.clone());
                blocked |= monotonic;
            }
            Some(p) => {
                if claims_missing(o) {
                    out.claims.push(o);
                }
                if monotonic && !healthy(p) {
                    blocked = true;
                }
            }
            None if claim_terminating(o) => blocked |= monotonic,
            None => {
                out.create.push((o, made_from(o)));
                blocked |= monotonic;
            }
        }
        if blocked {
            break;
        }
    }
    if blocked {
        return out;
    }
    // Condemned: ordinals past the range (highest first) and pods of no ordinal.
    let mut condemned: Vec<&Pod> =
        by_ordinal.iter().rev().filter(|(o, _)| !in_range(**o)).map(|(_, p)| *p).collect();
    condemned.extend(strays.iter().copied());
    for p in condemned {
        if terminating(p) {
            if monotonic {
                return out;
            }
            continue;
        }
        out.delete.push(p.metadata.name.clone());
        if monotonic {
            return out;
        }
    }
    // The rolling update, highest ordinal first down to the partition.
    let Some((partition, max_unavailable)) = rolling(set) else { return out };
    let updating: Vec<&Pod> = (first.saturating_add(partition)..first.saturating_add(count))
        .rev()
        .filter_map(|o| by_ordinal.get(&o).copied())
        .collect();
    let mut unavailable = updating.iter().filter(|p| !available(p)).count();
    for p in updating {
        if revision(p) == update {
            continue;
        }
        if terminating(p) {
            continue;
        }
        // An old pod that is not available goes without waiting; one that is, within budget.
        if available(p) {
            if unavailable >= max_unavailable {
                break;
            }
            unavailable += 1;
        }
        out.delete.push(p.metadata.name.clone());
    }
    out
}

/// A claim's owner references as the retention policy wants them: the set's present iff
/// `with_set`, a pod's only as `pod_ref` (other pods of the set dropped), others kept.
fn claim_owners<'a>(
    c: &PersistentVolumeClaim,
    set: &StatefulSet,
    with_set: bool,
    pod_ref: Option<OwnerReference>,
    pods: impl Iterator<Item = &'a Pod>,
) -> Vec<OwnerReference> {
    let uid = set.metadata.uid.as_deref().unwrap_or_default();
    let pod_uids: Vec<&str> = pods.filter_map(|p| p.metadata.uid.as_deref()).collect();
    let mut refs: Vec<OwnerReference> = c
        .metadata
        .owner_references
        .iter()
        .filter(|r| r.uid != uid && !(r.kind == "Pod" && pod_uids.contains(&r.uid.as_str())))
        .cloned()
        .collect();
    if with_set {
        refs.push(OwnerReference {
            controller: None,
            ..controller_ref("apps/v1", "StatefulSet", &set.metadata)
        });
    }
    refs.extend(pod_ref);
    refs
}

fn status(
    set: &StatefulSet,
    by_ordinal: &BTreeMap<i32, &Pod>,
    strays: &[&Pod],
    (current, update): (&str, &str),
    available: &dyn Fn(&Pod) -> bool,
    healthy: &dyn Fn(&Pod) -> bool,
) -> StatefulSetStatus {
    let all: Vec<&Pod> = by_ordinal.values().chain(strays).copied().filter(|p| pod_active(p)).collect();
    let n = |f: &dyn Fn(&Pod) -> bool| i32::try_from(all.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX);
    let at = |p: &Pod, rev: &str| p.metadata.labels.get(HASH_LABEL).is_some_and(|h| h == rev);
    let mut s = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: n(&|_| true),
        ready_replicas: Some(n(healthy)),
        available_replicas: Some(n(available)),
        current_replicas: Some(n(&|p| at(p, current))),
        updated_replicas: Some(n(&|p| at(p, update))),
        current_revision: Some(current.to_string()),
        update_revision: Some(update.to_string()),
        collision_count: set.status.as_ref().and_then(|s| s.collision_count).or(Some(0)),
        conditions: set.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
    };
    // A rolling update is complete when every pod is of the update revision and ready.
    let done = rolling(set).is_some()
        && s.updated_replicas == Some(s.replicas)
        && s.ready_replicas == Some(s.replicas)
        && s.replicas == replicas(set);
    if done || current.is_empty() {
        s.current_revision = Some(update.to_string());
        s.current_replicas = s.updated_replicas;
    }
    s
}

/// The pod of `ordinal` from `template` (of the revision `revision`).
pub fn pod_for(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Value {
    let name = format!("{}-{ordinal}", set.metadata.name);
    let mut labels = template.metadata.labels.clone();
    labels.insert(HASH_LABEL.into(), revision.into());
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    let mut spec = template.spec.clone();
    spec.hostname = Some(name.clone());
    if let Some(svc) = set.spec.service_name.as_deref().filter(|s| !s.is_empty()) {
        spec.subdomain = Some(svc.to_string());
    }
    for t in &set.spec.volume_claim_templates {
        let claim = claim_name(&t.metadata.name, &set.metadata.name, ordinal);
        let volume: Volume = serde_json::from_value(json!({
            "name": t.metadata.name, "persistentVolumeClaim": {"claimName": claim}
        }))
        .unwrap_or_default();
        match spec.volumes.iter_mut().find(|v| v.name == t.metadata.name) {
            Some(v) => *v = volume,
            None => spec.volumes.push(volume),
        }
    }
    let mut pod = super::new_pod(
        String::new(),
        set.metadata.namespace.clone(),
        labels,
        template.metadata.annotations.clone(),
        controller_ref("apps/v1", "StatefulSet", &set.metadata),
        spec,
    );
    pod["metadata"]["name"] = name.into();
    if let Some(m) = pod["metadata"].as_object_mut() {
        m.remove("generateName");
    }
    pod
}

/// The claim of `ordinal` from the claim template `t`: its labels with the set's selector's
/// `matchLabels`, owned by the set when `whenDeleted` is `Delete`.
pub fn claim_for(set: &StatefulSet, t: &PersistentVolumeClaim, ordinal: i32) -> Value {
    let mut c = t.clone();
    c.api_version = "v1".into();
    c.kind = "PersistentVolumeClaim".into();
    c.status = None;
    c.metadata.name = claim_name(&t.metadata.name, &set.metadata.name, ordinal);
    c.metadata.namespace = set.metadata.namespace.clone();
    for (k, v) in &set.spec.selector.match_labels {
        c.metadata.labels.insert(k.clone(), v.clone());
    }
    c.metadata.owner_references.clear();
    if retention(set).0 {
        c.metadata.owner_references.push(OwnerReference {
            controller: None,
            ..controller_ref("apps/v1", "StatefulSet", &set.metadata)
        });
    }
    serde_json::to_value(c).unwrap_or(Value::Null)
}

/// The reconciler.
pub struct StatefulSets;

impl StatefulSets {
    fn make_claims(
        store: &dyn Store,
        set: &StatefulSet,
        ordinal: i32,
        claims: &[PersistentVolumeClaim],
    ) -> Result<(), StoreError> {
        let involved = ("StatefulSet", "apps/v1", &set.metadata);
        for t in &set.spec.volume_claim_templates {
            let name = claim_name(&t.metadata.name, &set.metadata.name, ordinal);
            if claims.iter().any(|c| c.metadata.name == name) {
                continue;
            }
            match super::create_generated(store, "/persistentvolumeclaims", claim_for(set, t, ordinal)) {
                Ok(_) => {
                    let msg = format!(
                        "create Claim {name} Pod {}-{ordinal} in StatefulSet {} success",
                        set.metadata.name, set.metadata.name
                    );
                    super::event(store, involved, "Normal", "SuccessfulCreate", &msg, COMPONENT)?;
                }
                Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => {
                    let msg = format!(
                        "create Claim {name} for Pod {}-{ordinal} in StatefulSet {} failed error: {e}",
                        set.metadata.name, set.metadata.name
                    );
                    super::event(store, involved, "Warning", "FailedCreate", &msg, COMPONENT)?;
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl Controller for StatefulSets {
    fn name(&self) -> &'static str {
        "statefulset"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec![PODS, CLAIMS]
    }

    fn keys_for(&self, store: &dyn Store, e: &Event) -> Vec<String> {
        if e.key.starts_with(CLAIMS) {
            // A claim of a set (`<template>-<set>-<ordinal>`): the set whose name it carries.
            let ns = e.object["metadata"]["namespace"].as_str().unwrap_or("default");
            let claim = e.object["metadata"]["name"].as_str().unwrap_or_default();
            return store
                .list(&format!("{PREFIX}{ns}/"))
                .map(|(items, _)| {
                    items
                        .into_iter()
                        .filter(|s| {
                            let set = s.object["metadata"]["name"].as_str().unwrap_or_default();
                            s.object["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten().any(
                                |t| {
                                    let t = t["metadata"]["name"].as_str().unwrap_or_default();
                                    claim.strip_prefix(&format!("{t}-")).is_some_and(|rest| {
                                        rest.rsplit_once('-').is_some_and(|(s, _)| s == set)
                                    })
                                },
                            )
                        })
                        .map(|s| s.key)
                        .collect()
                })
                .unwrap_or_default();
        }
        super::replicaset::owner_keys(store, e, "StatefulSet", PREFIX, |o: &StatefulSet| &o.spec.selector)
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(stored) = store.get(key)? else { return Ok(Next::Done) };
        let set: StatefulSet = decode(&stored)?;
        let ns = set.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        // Its own pods and the orphans it may adopt (all the plan claims from), from the store
        // copy's index by controller, not every pod of the namespace.
        let uid = set.metadata.uid.as_deref().unwrap_or_default();
        let pods = super::pods_of(store, &ns, &[uid, ""], |_| true)?;
        let (claim_items, _) = store.list(&format!("{CLAIMS}{ns}/"))?;
        let claims: Vec<PersistentVolumeClaim> = claim_items.iter().filter_map(|s| decode(s).ok()).collect();
        let hash = super::deployment::template_hash(&set.spec.template);
        let update = format!("{}-{hash}", set.metadata.name);
        let revs = if set.metadata.deletion_timestamp.is_none() {
            let owner = history::Owner {
                kind: "StatefulSet",
                meta: &set.metadata,
                template: &set.spec.template,
                history_limit: set.spec.revision_history_limit,
            };
            history::sync(store, &owner, &hash, &update, &pods)?
        } else {
            history::revisions(store, &set.metadata)?.into_iter().map(|(_, r)| r).collect()
        };
        let current = set.status.as_ref().and_then(|s| s.current_revision.clone()).unwrap_or_default();
        let current_template =
            revs.iter().find(|r| r.metadata.name == current).and_then(history::template_of);
        // A current revision whose history is gone cannot be made again: the update is.
        let current = if current_template.is_some() { current } else { String::new() };
        let p = plan(&set, &pods, &claims, (&current, &update), super::unix_now());
        let involved = ("StatefulSet", "apps/v1", &set.metadata);
        let owner = controller_ref("apps/v1", "StatefulSet", &set.metadata);
        let setname = &set.metadata.name;
        for name in &p.adopt {
            super::replicaset::set_owner(store, &format!("{PODS}{ns}/{name}"), Some(owner.clone()))?;
        }
        for name in &p.release {
            super::replicaset::set_owner(store, &format!("{PODS}{ns}/{name}"), None)?;
        }
        // Claim owners first: a scaled-away pod's claim is its before the pod goes.
        for (claim, refs) in &p.claim_owners {
            let k = format!("{CLAIMS}{ns}/{claim}");
            if let Some(s) = store.get(&k)? {
                let mut obj = s.object.clone();
                obj["metadata"]["ownerReferences"] = serde_json::to_value(refs).unwrap_or(Value::Null);
                store.update(&k, obj, Some(s.revision))?;
            }
        }
        for o in &p.claims {
            Self::make_claims(store, &set, *o, &claims)?;
        }
        for name in &p.delete {
            crate::deletion::delete_quietly(store, &format!("{PODS}{ns}/{name}"))?;
            let msg = format!("delete Pod {name} in StatefulSet {setname} successful");
            super::event(store, involved, "Normal", "SuccessfulDelete", &msg, COMPONENT)?;
        }
        for (o, rev) in &p.create {
            Self::make_claims(store, &set, *o, &claims)?;
            let (template, revision) = match (rev, &current_template) {
                (Revision::Current, Some(t)) => (t, current.as_str()),
                _ => (&set.spec.template, update.as_str()),
            };
            match super::create_generated(store, "/pods", pod_for(&set, template, *o, revision)) {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
            let msg = format!("create Pod {setname}-{o} in StatefulSet {setname} successful");
            super::event(store, involved, "Normal", "SuccessfulCreate", &msg, COMPONENT)?;
        }
        if set.status.as_ref() != Some(&p.status) {
            let mut obj = stored.object.clone();
            obj["status"] = serde_json::to_value(&p.status).unwrap_or(Value::Null);
            store.update(key, obj, Some(stored.revision))?;
        }
        Ok(p.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_api::meta::Condition;

    fn set(extra: Value) -> StatefulSet {
        let mut v = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "set-uid", "generation": 1},
            "spec": {"replicas": 3, "serviceName": "nginx",
                     "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "i"}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "www"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}
        });
        if let (Some(s), Some(x)) = (v["spec"].as_object_mut(), extra.as_object()) {
            for (k, val) in x {
                s.insert(k.clone(), val.clone());
            }
        }
        serde_json::from_value(v).unwrap()
    }

    /// The pod of `ordinal` at `rev`, running and ready when `ready`.
    fn pod(s: &StatefulSet, ordinal: i32, rev: &str, ready: bool) -> Pod {
        let mut p: Pod = serde_json::from_value(pod_for(s, &s.spec.template, ordinal, rev)).unwrap();
        p.metadata.uid = Some(format!("pod-{ordinal}"));
        let mut st = tug_api::kinds::pod::PodStatus { phase: Some("Running".into()), ..Default::default() };
        if ready {
            st.conditions.push(Condition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some("2026-01-01T00:00:00Z".into()),
                ..Default::default()
            });
        }
        p.status = Some(st);
        p
    }

    fn claims(s: &StatefulSet, ordinals: &[i32]) -> Vec<PersistentVolumeClaim> {
        ordinals
            .iter()
            .map(|o| serde_json::from_value(claim_for(s, &s.spec.volume_claim_templates[0], *o)).unwrap())
            .collect()
    }

    const NOW: u64 = 2_000_000_000;

    #[test]
    fn ordinals_are_exact_decimal_suffixes() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        for bad in ["web-", "web-01", "web-x", "webs-1", "web-1-2", "web"] {
            assert_eq!(ordinal_of("web", bad), None, "{bad}");
        }
    }

    #[test]
    fn pods_carry_their_identity_and_their_own_claims() {
        let s = set(json!({}));
        let p = pod(&s, 2, "web-abc", true);
        assert_eq!(p.metadata.name, "web-2");
        assert_eq!(p.spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(p.spec.subdomain.as_deref(), Some("nginx"));
        assert_eq!(p.metadata.labels[POD_NAME_LABEL], "web-2");
        assert_eq!(p.metadata.labels[POD_INDEX_LABEL], "2");
        assert_eq!(p.metadata.labels[HASH_LABEL], "web-abc");
        let v = serde_json::to_value(&p.spec.volumes).unwrap();
        assert_eq!(v, json!([{"name": "www", "persistentVolumeClaim": {"claimName": "www-web-2"}}]));
        let c = &claims(&s, &[2])[0];
        assert_eq!(c.metadata.name, "www-web-2");
        assert_eq!(c.metadata.labels["app"], "web");
        assert!(c.metadata.owner_references.is_empty(), "Retain: the claim is nobody's");
        let d = set(json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}}));
        assert_eq!(claims(&d, &[0])[0].metadata.owner_references[0].kind, "StatefulSet");
    }

    #[test]
    fn ordered_ready_makes_one_pod_at_a_time_in_order() {
        let s = set(json!({}));
        let revs = ("web-h1", "web-h1");
        let p = plan::<Pod>(&s, &[], &[], revs, NOW);
        assert_eq!(p.create, vec![(0, Revision::Update)]);
        // web-0 not ready yet: nothing more.
        let p = plan(&s, &[pod(&s, 0, "web-h1", false)], &claims(&s, &[0]), revs, NOW);
        assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
        let p = plan(&s, &[pod(&s, 0, "web-h1", true)], &claims(&s, &[0]), revs, NOW);
        assert_eq!(p.create, vec![(1, Revision::Update)]);
        // A failed pod is replaced before anything above it.
        let mut failed = pod(&s, 0, "web-h1", false);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let p = plan(&s, &[failed, pod(&s, 1, "web-h1", true)], &claims(&s, &[0, 1]), revs, NOW);
        assert_eq!((p.delete, p.create), (vec!["web-0".to_string()], vec![]));
        // Parallel: all at once.
        let par = set(json!({"podManagementPolicy": "Parallel"}));
        let p = plan::<Pod>(&par, &[], &[], revs, NOW);
        assert_eq!(p.create.len(), 3);
        // A pod whose claim is missing gets it.
        let p = plan(&s, &[pod(&s, 0, "web-h1", true)], &[], revs, NOW);
        assert_eq!(p.claims, vec![0]);
    }

    #[test]
    fn scaling_down_takes_the_highest_ordinal_first_once_all_are_ready() {
        let mut s = set(json!({}));
        s.spec.replicas = Some(1);
        let revs = ("web-h1", "web-h1");
        let three = [pod(&s, 0, "web-h1", true), pod(&s, 1, "web-h1", true), pod(&s, 2, "web-h1", true)];
        let p = plan(&s, &three, &claims(&s, &[0, 1, 2]), revs, NOW);
        assert_eq!(p.delete, vec!["web-2".to_string()]);
        let mut going = three.clone();
        going[2].metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        let p = plan(&s, &going, &claims(&s, &[0, 1, 2]), revs, NOW);
        assert!(p.delete.is_empty(), "one at a time: {p:?}");
        assert_eq!(p.status.replicas, 2);
        // whenScaled: Delete: the condemned pods' claims become theirs first.
        s.spec.persistent_volume_claim_retention_policy =
            Some(serde_json::from_value(json!({"whenDeleted": "Retain", "whenScaled": "Delete"})).unwrap());
        let p = plan(&s, &three, &claims(&s, &[0, 1, 2]), revs, NOW);
        let owners: Vec<(&str, &str)> =
            p.claim_owners.iter().map(|(c, r)| (c.as_str(), r[0].name.as_str())).collect();
        assert_eq!(owners, vec![("www-web-1", "web-1"), ("www-web-2", "web-2")]);
    }

    #[test]
    fn a_rolling_update_goes_down_from_the_top_to_the_partition() {
        let s = set(json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}}));
        let revs = ("web-h1", "web-h2");
        let c = claims(&s, &[0, 1, 2]);
        let old = [pod(&s, 0, "web-h1", true), pod(&s, 1, "web-h1", true), pod(&s, 2, "web-h1", true)];
        let p = plan(&s, &old, &c, revs, NOW);
        assert_eq!(p.delete, vec!["web-2".to_string()]);
        assert_eq!((p.status.current_replicas, p.status.updated_replicas), (Some(3), Some(0)));
        // web-2 made again from the update; not ready: wait.
        let mid = [pod(&s, 0, "web-h1", true), pod(&s, 1, "web-h1", true), pod(&s, 2, "web-h2", false)];
        assert!(plan(&s, &mid, &c, revs, NOW).delete.is_empty());
        let next = [pod(&s, 0, "web-h1", true), pod(&s, 1, "web-h1", true), pod(&s, 2, "web-h2", true)];
        assert_eq!(plan(&s, &next, &c, revs, NOW).delete, vec!["web-1".to_string()]);
        // Below the partition: kept, and made again from the current revision.
        let done = [pod(&s, 0, "web-h1", true), pod(&s, 1, "web-h2", true), pod(&s, 2, "web-h2", true)];
        let p = plan(&s, &done, &c, revs, NOW);
        assert!(p.delete.is_empty(), "{p:?}");
        assert_eq!(p.status.current_revision.as_deref(), Some("web-h1"), "the partition holds web-0");
        let p = plan(&s, &done[1..], &c, revs, NOW);
        assert_eq!(p.create, vec![(0, Revision::Current)]);
        // Partition 0, all updated and ready: the update becomes current.
        let all = set(json!({}));
        let up = [pod(&all, 0, "web-h2", true), pod(&all, 1, "web-h2", true), pod(&all, 2, "web-h2", true)];
        let p = plan(&all, &up, &c, revs, NOW);
        assert_eq!(
            (p.status.current_revision.as_deref(), p.status.current_replicas),
            (Some("web-h2"), Some(3))
        );
        // maxUnavailable 2: two at once. OnDelete: none.
        let two = set(json!({"updateStrategy": {"rollingUpdate": {"maxUnavailable": 2}}}));
        assert_eq!(plan(&two, &old, &c, revs, NOW).delete, vec!["web-2".to_string(), "web-1".to_string()]);
        let manual = set(json!({"updateStrategy": {"type": "OnDelete"}}));
        assert!(plan(&manual, &old, &c, revs, NOW).delete.is_empty());
    }

    #[test]
    fn orphans_with_the_labels_are_adopted() {
        let s = set(json!({}));
        let mut orphan = pod(&s, 0, "web-h1", true);
        orphan.metadata.owner_references.clear();
        let p = plan(&s, &[orphan], &claims(&s, &[0]), ("web-h1", "web-h1"), NOW);
        assert_eq!(p.adopt, vec!["web-0".to_string()]);
    }
}
