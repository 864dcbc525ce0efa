//! Deployments: one ReplicaSet per template revision, rolled over by `RollingUpdate` or
//! `Recreate`, with Kubernetes' arithmetic — and an automatic rollback Kubernetes lacks.
//!
//! [`plan`] is pure and follows kube-controller-manager's `syncDeployment`, one step per
//! reconcile (each ReplicaSet change brings the next):
//!
//! 1. The *new* ReplicaSet is the one whose template equals the Deployment's (ignoring the
//!    `pod-template-hash` label); the others are *old*. The new one gets revision
//!    max(old) + 1 — also when an old template comes back (a rollback).
//! 2. Paused, or a scaling event (a ReplicaSet's `desired-replicas` annotation differs from
//!    `spec.replicas`): scale proportionally and stop.
//! 3. `Recreate`: old ReplicaSets to zero; once their pods are gone, the new one to
//!    `replicas`.
//! 4. `RollingUpdate`: scale the new one up while the total stays ≤ replicas + maxSurge; scale
//!    old ones down while available pods stay ≥ replicas − maxUnavailable (unhealthy old pods
//!    first).
//! 5. Complete: old ReplicaSets beyond `revisionHistoryLimit` deleted; the new one marked
//!    `tug.io/fully-available`.
//! 6. Status with the Available and Progressing conditions; the progress deadline.
//!
//! The rollback: when a rollout misses its deadline or a pod of the new ReplicaSet
//! crash-loops (or cannot pull its image), and `spec.rollbackOnFailure` is not false, the
//! Deployment's template is set back to that of the newest ReplicaSet that was once fully
//! available, with a `RolledBack` condition and a Warning Event saying why.

use super::replicaset::{self, PODS};
use super::runtime::{Controller, Next};
use super::{condition, controller_of, controller_ref, decode, set_condition, timestamp};
use crate::store::{Event, Store, StoreError};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use tug_api::kinds::apps::{Deployment, DeploymentStatus, ReplicaSet};
use tug_api::kinds::pod::{Pod, PodTemplateSpec};
use tug_api::meta::Condition;

pub const PREFIX: &str = "apps/deployments/";
pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX: &str = "deployment.kubernetes.io/max-replicas";
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
/// On a ReplicaSet: its revision was once fully rolled out and available.
pub const FULLY_AVAILABLE: &str = "tug.io/fully-available";
/// Container states that mean a new revision's pods are failing.
const FAILING: [&str; 5] =
    ["CrashLoopBackOff", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CreateContainerError"];

/// One change to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Take an orphan ReplicaSet whose selector matches (or drop one that no longer does).
    Adopt(String),
    Release(String),
    Create(Box<ReplicaSet>),
    /// Set a ReplicaSet's replicas and annotations.
    Update {
        name: String,
        replicas: i32,
        annotations: BTreeMap<String, String>,
    },
    Delete(String),
    /// Put this template back in the Deployment (the automatic rollback).
    Rollback {
        template: Box<PodTemplateSpec>,
        to: i64,
        from: i64,
        why: String,
    },
    Event {
        type_: &'static str,
        reason: &'static str,
        message: String,
    },
}

/// What one reconcile does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub status: DeploymentStatus,
    /// The Deployment's own revision annotation.
    pub revision: i64,
    pub next: Next,
}

/// FNV-1a (32 bit) of the template, encoded the way Kubernetes names ReplicaSets.
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let mut t = t.clone();
    t.metadata.labels.remove(HASH_LABEL);
    let text = serde_json::to_string(&t).unwrap_or_default();
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    super::safe_encode(&h.to_string())
}

pub(crate) fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        t.metadata.labels.remove(HASH_LABEL);
        t
    };
    strip(a) == strip(b)
}

pub fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata.annotations.get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

pub(crate) fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(0)
}

pub(crate) fn st(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status
        .as_ref()
        .map_or((0, 0, 0), |s| (s.replicas, s.ready_replicas.unwrap_or(0), s.available_replicas.unwrap_or(0)))
}

/// maxSurge and maxUnavailable resolved against `replicas` (surge rounds up, unavailable
/// down; both zero means one unavailable), as Kubernetes' `ResolveFenceposts`.
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    let want = i64::from(d.spec.replicas.unwrap_or(1));
    let strategy = d.spec.strategy.as_ref();
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return (0, 0);
    }
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    let pct = |v: Option<&tug_api::meta::IntOrString>, up: bool| {
        v.map_or(Ok(if want > 0 { (want + 3) / 4 } else { 0 }), |x| x.scaled(want, up)).unwrap_or(0)
    };
    let surge = ru.map_or_else(|| (want * 25 + 99) / 100, |r| pct(r.max_surge.as_ref(), true));
    let mut unavailable = ru.map_or_else(|| want * 25 / 100, |r| pct(r.max_unavailable.as_ref(), false));
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    let clamp = |v: i64| i32::try_from(v.max(0)).unwrap_or(i32::MAX);
    (clamp(surge), clamp(unavailable.min(want)))
}

fn recreate(d: &Deployment) -> bool {
    d.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate")
}

/// The ReplicaSet a Deployment would create for its current template.
pub fn new_replicaset(d: &Deployment, hash: &str, replicas: i32, revision: i64) -> ReplicaSet {
    let mut template = d.spec.template.clone();
    template.metadata.labels.insert(HASH_LABEL.into(), hash.into());
    let mut selector = d.spec.selector.clone();
    selector.match_labels.insert(HASH_LABEL.into(), hash.into());
    let mut annotations = d.metadata.annotations.clone();
    annotations.retain(|k, _| k == CHANGE_CAUSE);
    annotations.insert(REVISION.into(), revision.to_string());
    let mut rs =
        ReplicaSet { api_version: "apps/v1".into(), kind: "ReplicaSet".into(), ..Default::default() };
    rs.metadata.name = format!("{}-{hash}", d.metadata.name);
    rs.metadata.namespace = d.metadata.namespace.clone();
    rs.metadata.labels = template.metadata.labels.clone();
    rs.metadata.annotations = annotations;
    rs.metadata.owner_references = vec![controller_ref("apps/v1", "Deployment", &d.metadata)];
    rs.spec.replicas = Some(replicas);
    rs.spec.selector = selector;
    rs.spec.template = template;
    rs.spec.min_ready_seconds = d.spec.min_ready_seconds;
    let a = scale_annotations(d, &rs, None);
    rs.metadata.annotations = a;
    rs
}

/// Scaling annotations for a ReplicaSet of `d`.
fn scale_annotations(d: &Deployment, rs: &ReplicaSet, revision: Option<i64>) -> BTreeMap<String, String> {
    let (surge, _) = fenceposts(d);
    let want = d.spec.replicas.unwrap_or(1);
    let mut a = rs.metadata.annotations.clone();
    a.insert(DESIRED.into(), want.to_string());
    a.insert(MAX.into(), (want + surge).to_string());
    if let Some(r) = revision {
        a.insert(REVISION.into(), r.to_string());
    }
    a
}

/// The pure decision. `rss` are the namespace's ReplicaSets, `pods` its pods.
pub fn plan<P: std::borrow::Borrow<Pod>>(d: &Deployment, rss: &[ReplicaSet], pods: &[P], now: u64) -> Plan {
    let pods: Vec<&Pod> = pods.iter().map(std::borrow::Borrow::borrow).collect();
    let pods = pods.as_slice();
    let mut out = Plan::default();
    let uid = d.metadata.uid.as_deref().unwrap_or_default();
    let Ok(selector) = d.spec.selector.to_selector("spec.selector") else { return out };
    let deleting = d.metadata.deletion_timestamp.is_some();
    // Owned ReplicaSets, adopting matching orphans and releasing owned ones that stopped matching.
    let mut owned: Vec<ReplicaSet> = Vec::new();
    for rs in rss {
        let matches = !d.spec.selector.is_empty() && selector.matches(&rs.metadata.labels);
        match controller_of(&rs.metadata) {
            Some(o) if o.uid == uid && matches => owned.push(rs.clone()),
            Some(o) if o.uid == uid => out.actions.push(Action::Release(rs.metadata.name.clone())),
            None if matches && !deleting => {
                out.actions.push(Action::Adopt(rs.metadata.name.clone()));
                owned.push(rs.clone());
            }
            _ => {}
        }
    }
    let want = d.spec.replicas.unwrap_or(1).max(0);
    let (surge, max_unavailable) = fenceposts(d);
    let new_idx = owned.iter().position(|r| same_template(&r.spec.template, &d.spec.template));
    let mut olds: Vec<ReplicaSet> =
        owned.iter().enumerate().filter(|(i, _)| Some(*i) != new_idx).map(|(_, r)| r.clone()).collect();
    olds.sort_by_key(revision_of);
    let max_old = olds.iter().map(revision_of).max().unwrap_or(0);
    let mut new = new_idx.map(|i| owned[i].clone());
    let paused = d.spec.paused == Some(true);
    let hash = template_hash(&d.spec.template);

    // The new ReplicaSet's revision: bumped past the olds when an old template came back.
    if let Some(n) = new.as_mut() {
        if revision_of(n) <= max_old {
            let rev = max_old + 1;
            let a = scale_annotations(d, n, Some(rev));
            out.actions.push(Action::Update {
                name: n.metadata.name.clone(),
                replicas: replicas(n),
                annotations: a.clone(),
            });
            n.metadata.annotations = a;
        }
    }
    out.revision = new.as_ref().map_or(max_old, revision_of);

    let mut conds = d.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let stamp = timestamp(now);

    if deleting {
        out.status = status(d, new.as_ref(), &olds, conds);
        return out;
    }

    let scaling_event = owned
        .iter()
        .filter(|r| replicas(r) > 0)
        .any(|r| r.metadata.annotations.get(DESIRED).and_then(|v| v.parse::<i32>().ok()) != Some(want));
    if paused || (scaling_event && new.is_some()) {
        scale(d, new.as_mut(), &mut olds, &mut out.actions);
        if paused {
            set_condition(
                &mut conds,
                condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused"),
                &stamp,
            );
        } else if conds
            .iter()
            .any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("DeploymentPaused"))
        {
            set_condition(
                &mut conds,
                condition("Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed"),
                &stamp,
            );
        }
        out.status = status(d, new.as_ref(), &olds, conds);
        return out;
    }

    let mut created = false;
    if recreate(d) {
        let old_active = olds.iter().any(|r| replicas(r) > 0);
        for o in olds.iter_mut().filter(|r| replicas(r) > 0) {
            let a = scale_annotations(d, o, None);
            out.actions.push(Action::Update {
                name: o.metadata.name.clone(),
                replicas: 0,
                annotations: a.clone(),
            });
            o.spec.replicas = Some(0);
            o.metadata.annotations = a;
        }
        // Recreate: the new pods wait until the old ones are gone, Terminating ones too.
        let old_pods = pods.iter().any(|p| {
            !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
                && controller_of(&p.metadata)
                    .is_some_and(|c| olds.iter().any(|o| o.metadata.uid.as_deref() == Some(c.uid.as_str())))
        });
        if !old_active && !old_pods {
            match new.as_mut() {
                None => {
                    let rs = new_replicaset(d, &hash, want, max_old + 1);
                    created = true;
                    out.actions.push(Action::Create(Box::new(rs.clone())));
                    new = Some(rs);
                }
                Some(n) if replicas(n) != want => {
                    let a = scale_annotations(d, n, None);
                    out.actions.push(Action::Update {
                        name: n.metadata.name.clone(),
                        replicas: want,
                        annotations: a.clone(),
                    });
                    n.spec.replicas = Some(want);
                    n.metadata.annotations = a;
                }
                Some(_) => {}
            }
        }
    } else {
        // Scale up the new ReplicaSet within maxSurge.
        let total: i32 = olds.iter().map(replicas).sum::<i32>() + new.as_ref().map_or(0, replicas);
        let room = (want + surge - total).max(0);
        match new.as_mut() {
            None => {
                let n = room.min(want);
                let rs = new_replicaset(d, &hash, n, max_old + 1);
                created = true;
                out.actions.push(Action::Create(Box::new(rs.clone())));
                new = Some(rs);
            }
            Some(n) => {
                let target = if replicas(n) > want { want } else { (replicas(n) + room).min(want) };
                if target != replicas(n) || n.metadata.annotations.get(DESIRED) != Some(&want.to_string()) {
                    let a = scale_annotations(d, n, None);
                    out.actions.push(Action::Update {
                        name: n.metadata.name.clone(),
                        replicas: target,
                        annotations: a.clone(),
                    });
                    n.spec.replicas = Some(target);
                    n.metadata.annotations = a;
                }
            }
        }
        // Scale down old ReplicaSets while enough stay available.
        let n = new.as_ref().map(|n| (replicas(n), st(n).2)).unwrap_or((0, 0));
        let min_available = want - max_unavailable;
        let all: i32 = olds.iter().map(replicas).sum::<i32>() + n.0;
        let new_unavailable = (n.0 - n.1).max(0);
        let mut budget = (all - min_available - new_unavailable).max(0);
        // First the old pods that are not available anyway.
        for o in olds.iter_mut() {
            if budget == 0 {
                break;
            }
            let unhealthy = (replicas(o) - st(o).2).max(0).min(budget);
            if unhealthy > 0 {
                let r = replicas(o) - unhealthy;
                budget -= unhealthy;
                let a = scale_annotations(d, o, None);
                out.actions.push(Action::Update {
                    name: o.metadata.name.clone(),
                    replicas: r,
                    annotations: a.clone(),
                });
                o.spec.replicas = Some(r);
                o.metadata.annotations = a;
            }
        }
        // Then available ones, oldest first, keeping minAvailable.
        let available: i32 = olds.iter().map(|o| st(o).2.min(replicas(o))).sum::<i32>() + n.1;
        let mut down = (available - min_available).max(0);
        for o in olds.iter_mut() {
            if down == 0 {
                break;
            }
            let cut = replicas(o).min(down);
            if cut > 0 {
                let r = replicas(o) - cut;
                down -= cut;
                let a = scale_annotations(d, o, None);
                match out
                    .actions
                    .iter_mut()
                    .find(|a| matches!(a, Action::Update { name, .. } if *name == o.metadata.name))
                {
                    Some(Action::Update { replicas: rr, .. }) => *rr = r,
                    _ => out.actions.push(Action::Update {
                        name: o.metadata.name.clone(),
                        replicas: r,
                        annotations: a.clone(),
                    }),
                }
                o.spec.replicas = Some(r);
                o.metadata.annotations = a;
            }
        }
    }

    // Status and conditions.
    let mut status = status(d, new.as_ref(), &olds, conds.clone());
    let complete = complete(d, &status, new.as_ref(), &olds);
    let new_name = new.as_ref().map(|n| n.metadata.name.clone()).unwrap_or_default();
    let old_status = d.status.clone().unwrap_or_default();
    let deadline = d.spec.progress_deadline_seconds.map(|s| u64::try_from(s.max(0)).unwrap_or(0));
    let progressing = conds.iter().find(|c| c.type_ == "Progressing").cloned();
    let mut failure: Option<String> = None;
    if complete {
        set_condition(
            &mut conds,
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                &format!("ReplicaSet {new_name:?} has successfully progressed."),
            ),
            &stamp,
        );
        if let Some(n) = new.as_ref().filter(|n| !n.metadata.annotations.contains_key(FULLY_AVAILABLE)) {
            let mut a = n.metadata.annotations.clone();
            a.insert(FULLY_AVAILABLE.into(), stamp.clone());
            out.actions.push(Action::Update {
                name: n.metadata.name.clone(),
                replicas: replicas(n),
                annotations: a,
            });
        }
        // History: old, empty ReplicaSets beyond the limit, oldest first.
        let limit = usize::try_from(d.spec.revision_history_limit.unwrap_or(10).max(0)).unwrap_or(0);
        let empty: Vec<&ReplicaSet> = olds.iter().filter(|o| replicas(o) == 0 && st(o).0 == 0).collect();
        for o in empty.iter().take(empty.len().saturating_sub(limit)) {
            out.actions.push(Action::Delete(o.metadata.name.clone()));
        }
        if conds.iter().any(|c| c.type_ == "RolledBack" && c.observed_generation < d.metadata.generation) {
            conds.retain(|c| c.type_ != "RolledBack");
        }
    } else if created {
        set_condition(
            &mut conds,
            condition(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                &format!("Created new replica set {new_name:?}"),
            ),
            &stamp,
        );
    } else if progressing.is_none()
        || made_progress(&old_status, &status)
        || d.status.as_ref().and_then(|s| s.observed_generation) != d.metadata.generation
    {
        set_condition(
            &mut conds,
            condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                &format!("ReplicaSet {new_name:?} is progressing."),
            ),
            &stamp,
        );
    } else if let (Some(p), Some(limit)) = (progressing.as_ref(), deadline) {
        let since = p.last_update_time.as_deref().and_then(super::parse_time).unwrap_or(now);
        if p.reason.as_deref() == Some("ProgressDeadlineExceeded") {
            // Marked already; the rollback (if any) happened then.
        } else if since + limit <= now {
            set_condition(
                &mut conds,
                condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    &format!("ReplicaSet {new_name:?} has timed out progressing."),
                ),
                &stamp,
            );
            failure = Some(format!(
                "the rollout of revision {} exceeded its progress deadline ({limit}s)",
                out.revision
            ));
            out.actions.push(Action::Event {
                type_: "Warning",
                reason: "ProgressDeadlineExceeded",
                message: format!("ReplicaSet {new_name:?} has timed out progressing."),
            });
        } else {
            out.next = Next::After(Duration::from_secs(since + limit - now));
        }
    }
    if !complete && failure.is_none() {
        if let Some(n) = new.as_ref().filter(|n| !n.metadata.annotations.contains_key(FULLY_AVAILABLE)) {
            failure = failing_pod(n, pods);
        }
    }
    if let (Some(why), true) = (failure, d.spec.rollback_on_failure != Some(false)) {
        let target = olds.iter().rev().find(|o| o.metadata.annotations.contains_key(FULLY_AVAILABLE));
        if let Some(t) = target {
            let mut template = t.spec.template.clone();
            template.metadata.labels.remove(HASH_LABEL);
            let (to, from) = (revision_of(t), out.revision);
            let message = format!("Rolled back from revision {from} to revision {to}: {why}");
            let mut c = condition("RolledBack", "True", "RolloutFailed", &message);
            c.observed_generation = d.metadata.generation.map(|g| g + 1);
            set_condition(&mut conds, c, &stamp);
            out.actions.push(Action::Rollback { template: Box::new(template), to, from, why });
            out.actions.push(Action::Event { type_: "Warning", reason: "RolledBack", message });
        }
    }
    let available = status.available_replicas.unwrap_or(0) >= want - max_unavailable;
    set_condition(
        &mut conds,
        if available {
            condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        } else {
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        },
        &stamp,
    );
    // Conditions whose status did not change keep their update time: no write every round.
    for c in conds.iter_mut() {
        if let Some(old) = d.status.as_ref().and_then(|s| s.conditions.iter().find(|o| o.type_ == c.type_)) {
            if old.status == c.status
                && old.reason == c.reason
                && old.message == c.message
                && !(c.type_ == "Progressing" && made_progress(&old_status, &status))
            {
                c.last_update_time = old.last_update_time.clone();
                c.last_transition_time = old.last_transition_time.clone();
            }
        }
    }
    status.conditions = conds;
    out.status = status;
    out
}

/// Kubernetes' `DeploymentProgressing`: more updated, ready or available pods, or fewer old.
fn made_progress(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let g = |v: Option<i32>| v.unwrap_or(0);
    let old_old = g(old.replicas) - g(old.updated_replicas);
    let new_old = g(new.replicas) - g(new.updated_replicas);
    g(new.updated_replicas) > g(old.updated_replicas)
        || new_old < old_old
        || g(new.ready_replicas) > g(old.ready_replicas)
        || g(new.available_replicas) > g(old.available_replicas)
}

/// Every replica updated and available, no old pod left.
fn complete(d: &Deployment, s: &DeploymentStatus, new: Option<&ReplicaSet>, olds: &[ReplicaSet]) -> bool {
    let want = d.spec.replicas.unwrap_or(1);
    new.is_some_and(|n| replicas(n) == want)
        && s.updated_replicas == Some(want)
        && s.replicas == Some(want)
        && s.available_replicas == Some(want)
        && olds.iter().all(|o| replicas(o) == 0 && st(o).0 == 0)
}

/// A pod of the new ReplicaSet whose container is failing, as a reason.
pub(crate) fn failing_pod<P: std::borrow::Borrow<Pod>>(new: &ReplicaSet, pods: &[P]) -> Option<String> {
    let mut pods = pods.iter().map(std::borrow::Borrow::borrow);
    let uid = new.metadata.uid.as_deref()?;
    pods.find_map(|p: &Pod| {
        if controller_of(&p.metadata).is_none_or(|o| o.uid != uid) {
            return None;
        }
        p.status.as_ref()?.container_statuses.iter().find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            let restarts = c.restart_count;
            let failing = FAILING.contains(&reason) && (reason != "CrashLoopBackOff" || restarts >= 2);
            failing.then(|| {
                format!(
                    "pod {} container {} is in {reason}{}",
                    p.metadata.name,
                    c.name,
                    waiting.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
                )
            })
        })
    })
}

fn status(
    d: &Deployment,
    new: Option<&ReplicaSet>,
    olds: &[ReplicaSet],
    conditions: Vec<Condition>,
) -> DeploymentStatus {
    let all = new.into_iter().chain(olds.iter());
    let (mut r, mut ready, mut avail) = (0, 0, 0);
    for rs in all {
        let (a, b, c) = st(rs);
        r += a;
        ready += b;
        avail += c;
    }
    let want = d.spec.replicas.unwrap_or(1);
    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(r),
        updated_replicas: Some(new.map_or(0, |n| st(n).0)),
        ready_replicas: Some(ready),
        available_replicas: Some(avail),
        unavailable_replicas: Some((want - avail).max(0)),
        conditions,
    }
}

/// Proportional scaling (Kubernetes' `scale`): a single active ReplicaSet takes `replicas`;
/// a saturated new one zeroes the olds; otherwise the difference to replicas + maxSurge is
/// shared in proportion to each ReplicaSet's size, the remainder to the largest.
fn scale(d: &Deployment, new: Option<&mut ReplicaSet>, olds: &mut [ReplicaSet], actions: &mut Vec<Action>) {
    let want = d.spec.replicas.unwrap_or(1).max(0);
    let (surge, _) = fenceposts(d);
    let mut all: Vec<&mut ReplicaSet> = olds.iter_mut().collect();
    let has_new = new.is_some();
    if let Some(n) = new {
        all.push(n);
    }
    let set = |rs: &mut ReplicaSet, r: i32, actions: &mut Vec<Action>| {
        let a = scale_annotations(d, rs, None);
        if r != replicas(rs) || rs.metadata.annotations != a {
            actions.push(Action::Update {
                name: rs.metadata.name.clone(),
                replicas: r,
                annotations: a.clone(),
            });
            rs.spec.replicas = Some(r);
            rs.metadata.annotations = a;
        }
    };
    let active: Vec<usize> = (0..all.len()).filter(|&i| replicas(all[i]) > 0).collect();
    if active.len() <= 1 {
        // The active one, else the newest.
        let i = active.first().copied().or(if all.is_empty() { None } else { Some(all.len() - 1) });
        if let Some(i) = i {
            set(all[i], want, actions);
        }
        return;
    }
    if has_new {
        let last = all.len() - 1;
        let n = &all[last];
        if replicas(n) == want && st(n).2 == want {
            for o in all.iter_mut().take(last) {
                set(o, 0, actions);
            }
            return;
        }
    }
    let allowed = want + surge;
    let current: i32 = all.iter().map(|r| replicas(r)).sum();
    let to_add = allowed - current;
    if to_add == 0 {
        for rs in all.iter_mut() {
            let r = replicas(rs);
            set(rs, r, actions);
        }
        return;
    }
    // Largest first (newer first among equals) when growing, so the remainder goes there.
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by(|&a, &b| replicas(all[b]).cmp(&replicas(all[a])).then(b.cmp(&a)));
    let mut added = 0;
    let mut sizes: Vec<i32> = all.iter().map(|r| replicas(r)).collect();
    for &i in &order {
        let share = if current == 0 {
            0
        } else {
            i32::try_from(i64::from(sizes[i]) * i64::from(to_add) / i64::from(current)).unwrap_or(0)
        };
        let share = if to_add > 0 { share.min(to_add - added) } else { share.max(to_add - added) };
        sizes[i] = (sizes[i] + share).max(0);
        added += share;
    }
    if let Some(&first) = order.first() {
        sizes[first] = (sizes[first] + to_add - added).max(0);
    }
    for (i, rs) in all.iter_mut().enumerate() {
        set(rs, sizes[i], actions);
    }
}

/// The reconciler.
pub struct Deployments;

impl Controller for Deployments {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec![replicaset::PREFIX, PODS]
    }

    fn keys_for(&self, store: &dyn Store, e: &Event) -> Vec<String> {
        if e.key.starts_with(replicaset::PREFIX) {
            return replicaset::owner_keys(store, e, "Deployment", PREFIX, |d: &Deployment| &d.spec.selector);
        }
        // A pod: its ReplicaSet's Deployment (for crash-loop detection and Recreate).
        let Ok(meta) = tug_api::from_value_ref::<tug_api::meta::ObjectMeta>(&e.object["metadata"]) else {
            return Vec::new();
        };
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let Some(o) = controller_of(&meta).filter(|o| o.kind == "ReplicaSet") else { return Vec::new() };
        let Ok(Some(rs)) = store.get(&format!("{}{ns}/{}", replicaset::PREFIX, o.name)) else {
            return Vec::new();
        };
        match decode::<ReplicaSet>(&rs).ok().as_ref().and_then(|r| controller_of(&r.metadata).cloned()) {
            Some(d) if d.kind == "Deployment" => vec![format!("{PREFIX}{ns}/{}", d.name)],
            _ => Vec::new(),
        }
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(stored) = store.get(key)? else { return Ok(Next::Done) };
        let d: Deployment = decode(&stored)?;
        let ns = d.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        // Decoded once per change in the store's copy (500 Deployments each parsed all 500
        // ReplicaSets of their namespace at every resync).
        let (rs_items, _) =
            crate::store::cache::list_typed::<ReplicaSet>(store, &format!("{}{ns}/", replicaset::PREFIX))?;
        // Only its own and the orphans it may adopt are cloned for the plan (the others are
        // none of its business, and 500 cloned per reconcile were most of its time).
        let uid = d.metadata.uid.as_deref().unwrap_or_default();
        let rss: Vec<ReplicaSet> = rs_items
            .iter()
            .filter(|r| controller_of(&r.value.metadata).is_none_or(|o| o.uid == uid))
            .map(|r| (*r.value).clone())
            .collect();
        // The plan looks only at the pods of the ReplicaSets it owns.
        let mine: Vec<&str> = rss
            .iter()
            .filter(|r| controller_of(&r.metadata).is_some_and(|o| o.uid == uid))
            .filter_map(|r| r.metadata.uid.as_deref())
            .filter(|u| !u.is_empty())
            .collect();
        let pods = super::pods_of(store, &ns, &mine, |_| true)?;
        let p = plan(&d, &rss, &pods, super::unix_now());
        apply(store, &d, &stored, &p)?;
        Ok(p.next)
    }
}

/// Creates a ReplicaSet a workload made. One of that name already there (a hash collision,
/// or one made a moment ago) is a conflict: the next round sees it.
pub(crate) fn create_replicaset(store: &dyn Store, key: &str, rs: &ReplicaSet) -> Result<(), StoreError> {
    let mut v = serde_json::to_value(rs).unwrap_or(Value::Null);
    crate::api::objects::on_create(&mut v, &uuid::Uuid::new_v4().to_string(), &crate::api::now());
    match store.create(key, v) {
        Ok(_) => Ok(()),
        Err(StoreError::AlreadyExists(k)) => Err(StoreError::Conflict { key: k, expected: 0, current: 0 }),
        Err(e) => Err(e),
    }
}

/// Sets a ReplicaSet's replicas and annotations (its generation moves with its replicas);
/// the replicas it had when they changed.
pub(crate) fn scale_replicaset(
    store: &dyn Store,
    key: &str,
    replicas: i32,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<i64>, StoreError> {
    let Some(s) = store.get(key)? else { return Ok(None) };
    let mut v = s.object.clone();
    let before = v["spec"]["replicas"].as_i64().unwrap_or(0);
    v["spec"]["replicas"] = replicas.into();
    v["metadata"]["annotations"] = serde_json::to_value(annotations).unwrap_or(Value::Null);
    if v == s.object {
        return Ok(None);
    }
    let changed = before != i64::from(replicas);
    if changed {
        let g = v["metadata"]["generation"].as_i64().unwrap_or(1);
        v["metadata"]["generation"] = (g + 1).into();
    }
    store.update(&s.key, v, Some(s.revision))?;
    Ok(changed.then_some(before))
}

/// The executor.
fn apply(
    store: &dyn Store,
    d: &Deployment,
    stored: &crate::store::Stored,
    p: &Plan,
) -> Result<(), StoreError> {
    let ns = d.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let rs_key = |name: &str| format!("{}{ns}/{name}", replicaset::PREFIX);
    let involved = ("Deployment", "apps/v1", &d.metadata);
    let mut obj = stored.object.clone();
    for a in &p.actions {
        match a {
            Action::Adopt(name) => replicaset::set_owner(
                store,
                &rs_key(name),
                Some(controller_ref("apps/v1", "Deployment", &d.metadata)),
            )?,
            Action::Release(name) => replicaset::set_owner(store, &rs_key(name), None)?,
            Action::Create(rs) => {
                create_replicaset(store, &rs_key(&rs.metadata.name), rs)?;
                let r = rs.spec.replicas.unwrap_or(0);
                super::event(
                    store,
                    involved,
                    "Normal",
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {} to {r}", rs.metadata.name),
                    "deployment-controller",
                )?;
            }
            Action::Update { name, replicas, annotations } => {
                if let Some(before) = scale_replicaset(store, &rs_key(name), *replicas, annotations)? {
                    let dir = if i64::from(*replicas) > before { "up" } else { "down" };
                    super::event(
                        store,
                        involved,
                        "Normal",
                        "ScalingReplicaSet",
                        &format!("Scaled {dir} replica set {name} from {before} to {replicas}"),
                        "deployment-controller",
                    )?;
                }
            }
            Action::Delete(name) => match store.delete(&rs_key(name), None) {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            },
            Action::Rollback { template, .. } => {
                obj["spec"]["template"] = serde_json::to_value(template.as_ref()).unwrap_or(Value::Null);
                let g = obj["metadata"]["generation"].as_i64().unwrap_or(1);
                obj["metadata"]["generation"] = (g + 1).into();
            }
            Action::Event { type_, reason, message } => {
                super::event(store, involved, type_, reason, message, "deployment-controller")?
            }
        }
    }
    let rev = p.revision.to_string();
    if p.revision > 0 && obj["metadata"]["annotations"][REVISION].as_str() != Some(rev.as_str()) {
        if !obj["metadata"]["annotations"].is_object() {
            obj["metadata"]["annotations"] = serde_json::json!({});
        }
        obj["metadata"]["annotations"][REVISION] = rev.into();
    }
    obj["status"] = serde_json::to_value(&p.status).unwrap_or(Value::Null);
    if obj != stored.object {
        store.update(&stored.key, obj, Some(stored.revision))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::replicaset::tests::pod;
    use tug_api::meta::{IntOrString, ObjectMeta};

    fn dep(replicas: i32, image: &str) -> Deployment {
        let mut d = Deployment {
            metadata: ObjectMeta {
                name: "web".into(),
                namespace: Some("default".into()),
                uid: Some("uid-web".into()),
                generation: Some(1),
                ..Default::default()
            },
            ..Default::default()
        };
        d.spec.replicas = Some(replicas);
        d.spec.selector.match_labels.insert("app".into(), "web".into());
        d.spec.template.metadata.labels.insert("app".into(), "web".into());
        d.spec.template.spec.containers.push(tug_api::kinds::pod::Container {
            name: "web".into(),
            image: image.into(),
            ..Default::default()
        });
        d.spec.progress_deadline_seconds = Some(600);
        d.spec.revision_history_limit = Some(10);
        d
    }

    /// The ReplicaSet a plan created or updated, as the store would hold it, with its pods
    /// all available (`available` of them) — a world that follows the plan.
    fn world(d: &Deployment, rss: &mut Vec<ReplicaSet>, p: &Plan, available: &dyn Fn(&ReplicaSet) -> i32) {
        for a in &p.actions {
            match a {
                Action::Create(rs) => {
                    let mut rs = (**rs).clone();
                    rs.metadata.uid = Some(format!("uid-{}", rs.metadata.name));
                    rss.push(rs);
                }
                Action::Update { name, replicas, annotations } => {
                    let rs = rss.iter_mut().find(|r| r.metadata.name == *name).unwrap();
                    rs.spec.replicas = Some(*replicas);
                    rs.metadata.annotations = annotations.clone();
                }
                Action::Delete(name) => rss.retain(|r| r.metadata.name != *name),
                _ => {}
            }
        }
        let _ = d;
        for rs in rss.iter_mut() {
            let r = rs.spec.replicas.unwrap_or(0);
            let a = available(rs).min(r);
            rs.status = Some(tug_api::kinds::apps::ReplicaSetStatus {
                replicas: r,
                ready_replicas: Some(a),
                available_replicas: Some(a),
                ..Default::default()
            });
        }
    }

    fn rolled(d: &Deployment) -> (Vec<ReplicaSet>, Deployment) {
        let mut rss = Vec::new();
        let mut d = d.clone();
        for _ in 0..10 {
            let p = plan::<Pod>(&d, &rss, &[], 1000);
            world(&d, &mut rss, &p, &|rs| rs.spec.replicas.unwrap_or(0));
            d.status = Some(p.status);
        }
        (rss, d)
    }

    #[test]
    fn fenceposts_follow_kubernetes_rounding() {
        let mut d = dep(10, "a");
        assert_eq!(fenceposts(&d), (3, 2));
        let ru = tug_api::kinds::apps::RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(0)),
            max_unavailable: Some(IntOrString::String("0%".into())),
        };
        d.spec.strategy = Some(tug_api::kinds::apps::DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(ru),
        });
        assert_eq!(fenceposts(&d), (0, 1));
    }

    #[test]
    fn first_rollout_creates_revision_one_and_completes() {
        let d = dep(3, "a");
        let p = plan::<Pod>(&d, &[], &[], 1000);
        let Some(Action::Create(rs)) = p.actions.first() else { panic!("{:?}", p.actions) };
        assert_eq!(rs.spec.replicas, Some(3));
        assert_eq!(revision_of(rs), 1);
        assert!(rs.metadata.name.starts_with("web-"));
        assert_eq!(
            rs.spec.template.metadata.labels.get(HASH_LABEL).map(String::as_str),
            Some(&rs.metadata.name[4..])
        );
        let (rss, d) = rolled(&d);
        let s = d.status.unwrap();
        assert_eq!(s.available_replicas, Some(3));
        assert!(s.conditions.iter().any(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable")));
        assert!(rss[0].metadata.annotations.contains_key(FULLY_AVAILABLE));
    }

    proptest::proptest! {
        /// A rolling update never has fewer than replicas − maxUnavailable available pods nor
        /// more than replicas + maxSurge pods, and finishes with every pod on the new template.
        #[test]
        fn rolling_update_keeps_its_bounds(want in 1i32..12, surge in 0i64..4, unavail in 0i64..4, lag in 0i32..3) {
            let mut d = dep(want, "a");
            d.spec.strategy = Some(tug_api::kinds::apps::DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(tug_api::kinds::apps::RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(surge)),
                    max_unavailable: Some(IntOrString::Int(unavail)),
                }),
            });
            let (mut rss, mut d) = rolled(&d);
            d.spec.template.spec.containers[0].image = "b".into();
            d.metadata.generation = Some(2);
            let (max_surge, max_unavailable) = fenceposts(&d);
            let mut step = 0;
            loop {
                let p = plan::<Pod>(&d, &rss, &[], 1000);
                // New pods become available `lag` rounds late: the world lags the plan.
                let before: Vec<(String, i32)> = rss.iter().map(|r| (r.metadata.name.clone(), r.status.as_ref().map_or(0, |s| s.available_replicas.unwrap_or(0)))).collect();
                world(&d, &mut rss, &p, &|rs| {
                    let prev = before.iter().find(|(n, _)| *n == rs.metadata.name).map_or(0, |x| x.1);
                    let r = rs.spec.replicas.unwrap_or(0);
                    if r <= prev || step % (lag + 1) == 0 { r } else { prev }
                });
                d.status = Some(p.status.clone());
                let total: i32 = rss.iter().map(|r| r.spec.replicas.unwrap_or(0)).sum();
                let available: i32 = rss.iter().map(|r| r.status.as_ref().unwrap().available_replicas.unwrap_or(0)).sum();
                proptest::prop_assert!(total <= want + max_surge, "total {total} > {want} + {max_surge}");
                proptest::prop_assert!(available >= want - max_unavailable, "available {available} < {want} - {max_unavailable}");
                step += 1;
                if p.status.conditions.iter().any(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable")) { break; }
                proptest::prop_assert!(step < 200, "no convergence");
            }
            let live: Vec<&ReplicaSet> = rss.iter().filter(|r| r.spec.replicas.unwrap_or(0) > 0).collect();
            proptest::prop_assert_eq!(live.len(), 1);
            proptest::prop_assert_eq!(&live[0].spec.template.spec.containers[0].image, "b");
            proptest::prop_assert_eq!(revision_of(live[0]), 2);
        }
    }

    #[test]
    fn recreate_waits_for_old_pods_to_go() {
        let mut d = dep(2, "a");
        d.spec.strategy = Some(tug_api::kinds::apps::DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        let (mut rss, mut d) = rolled(&d);
        d.spec.template.spec.containers[0].image = "b".into();
        let old_pod = pod("web-old", Some(&rss[0]), 1, true, Some(1));
        let p = plan(&d, &rss, std::slice::from_ref(&old_pod), 1000);
        assert!(matches!(&p.actions[..], [Action::Update { replicas: 0, .. }]), "{:?}", p.actions);
        world(&d, &mut rss, &p, &|_| 0);
        let p = plan(&d, &rss, &[old_pod], 1000);
        assert!(p.actions.is_empty(), "old pods still running: {:?}", p.actions);
        let p = plan::<Pod>(&d, &rss, &[], 1000);
        assert!(
            matches!(&p.actions[..], [Action::Create(rs)] if rs.spec.replicas == Some(2)),
            "{:?}",
            p.actions
        );
    }

    #[test]
    fn scaling_during_a_rollout_is_proportional() {
        let mut d = dep(10, "a");
        let (mut rss, mut d2) = rolled(&d);
        d2.spec.template.spec.containers[0].image = "b".into();
        // One step of the rollout: new 3 (surge), old 10 → 8.
        let p = plan::<Pod>(&d2, &rss, &[], 1000);
        world(&d2, &mut rss, &p, &|rs| {
            if rs.spec.template.spec.containers[0].image == "a" { rs.spec.replicas.unwrap_or(0) } else { 0 }
        });
        // Surge and scale-down in one round: new 3, old 10 → 8 (maxUnavailable 2).
        let sizes: Vec<i32> = rss.iter().map(|r| r.spec.replicas.unwrap()).collect();
        assert_eq!(sizes, vec![8, 3]);
        d = d2.clone();
        d.spec.replicas = Some(20);
        let p = plan::<Pod>(&d, &rss, &[], 1000);
        world(&d, &mut rss, &p, &|_| 0);
        let total: i32 = rss.iter().map(|r| r.spec.replicas.unwrap()).sum();
        assert_eq!(total, 20 + 5, "replicas + maxSurge(25% of 20)");
        assert!(rss.iter().all(|r| r.spec.replicas.unwrap() > 0));
    }

    #[test]
    fn a_crash_looping_revision_rolls_back_to_the_last_available_one() {
        let d = dep(2, "good");
        let (mut rss, mut d) = rolled(&d);
        d.spec.template.spec.containers[0].image = "broken".into();
        d.metadata.generation = Some(2);
        let p = plan::<Pod>(&d, &rss, &[], 1000);
        world(&d, &mut rss, &p, &|rs| {
            if rs.spec.template.spec.containers[0].image == "good" { 2 } else { 0 }
        });
        d.status = Some(p.status);
        let new = rss.iter().find(|r| r.spec.template.spec.containers[0].image == "broken").unwrap().clone();
        let mut bad = pod("web-bad", Some(&new), 1, true, None);
        bad.status.as_mut().unwrap().container_statuses.push(
            serde_json::from_value(serde_json::json!({
                "name": "web", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}
            }))
            .unwrap(),
        );
        let p = plan(&d, &rss, &[bad.clone()], 1010);
        let rb = p.actions.iter().find_map(|a| match a {
            Action::Rollback { template, to, from, why } => Some((template.clone(), *to, *from, why.clone())),
            _ => None,
        });
        let (template, to, from, why) = rb.expect("a rollback");
        assert_eq!((to, from), (1, 2));
        assert_eq!(template.spec.containers[0].image, "good");
        assert!(why.contains("CrashLoopBackOff"), "{why}");
        assert!(p.status.conditions.iter().any(|c| c.type_ == "RolledBack"));
        // Turned off: no rollback.
        d.spec.rollback_on_failure = Some(false);
        let p = plan(&d, &rss, &[bad], 1010);
        assert!(!p.actions.iter().any(|a| matches!(a, Action::Rollback { .. })));
    }

    #[test]
    fn a_missed_deadline_is_marked_and_rolls_back() {
        let d = dep(1, "good");
        let (mut rss, mut d) = rolled(&d);
        d.spec.template.spec.containers[0].image = "slow".into();
        d.spec.progress_deadline_seconds = Some(60);
        d.metadata.generation = Some(2);
        let p = plan::<Pod>(&d, &rss, &[], 1000);
        world(&d, &mut rss, &p, &|rs| {
            if rs.spec.template.spec.containers[0].image == "good" { 1 } else { 0 }
        });
        d.status = Some(p.status);
        // The new pod appears (progress, at 1000), then nothing more happens.
        let p = plan::<Pod>(&d, &rss, &[], 1000);
        d.status = Some(p.status);
        let p = plan::<Pod>(&d, &rss, &[], 1030);
        assert_eq!(p.next, Next::After(Duration::from_secs(30)));
        assert!(!p.actions.iter().any(|a| matches!(a, Action::Rollback { .. })));
        let p = plan::<Pod>(&d, &rss, &[], 1061);
        let prog = p.status.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
        assert_eq!(
            (prog.status.as_str(), prog.reason.as_deref()),
            ("False", Some("ProgressDeadlineExceeded"))
        );
        assert!(p.actions.iter().any(|a| matches!(a, Action::Rollback { to: 1, .. })));
    }

    #[test]
    fn history_beyond_the_limit_is_deleted() {
        let mut d = dep(1, "v0");
        d.spec.revision_history_limit = Some(2);
        let (mut rss, mut d) = rolled(&d);
        for v in 1..5 {
            d.spec.template.spec.containers[0].image = format!("v{v}");
            for _ in 0..10 {
                let p = plan::<Pod>(&d, &rss, &[], 1000);
                world(&d, &mut rss, &p, &|rs| rs.spec.replicas.unwrap_or(0));
                d.status = Some(p.status);
            }
        }
        let mut revs: Vec<i64> = rss.iter().map(revision_of).collect();
        revs.sort();
        assert_eq!(revs, vec![3, 4, 5]);
        // An old template again: its ReplicaSet comes back with the next revision.
        d.spec.template.spec.containers[0].image = "v3".into();
        let p = plan::<Pod>(&d, &rss, &[], 1000);
        assert_eq!(p.revision, 6);
    }

    #[test]
    fn paused_deployments_scale_but_do_not_roll() {
        let d = dep(2, "a");
        let (rss, mut d) = rolled(&d);
        d.spec.paused = Some(true);
        d.spec.template.spec.containers[0].image = "b".into();
        d.spec.replicas = Some(4);
        let p = plan::<Pod>(&d, &rss, &[], 1000);
        assert!(!p.actions.iter().any(|a| matches!(a, Action::Create(_))));
        assert!(p.actions.iter().any(|a| matches!(a, Action::Update { replicas: 4, .. })));
        let prog = p.status.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
        assert_eq!(prog.reason.as_deref(), Some("DeploymentPaused"));
    }
}
