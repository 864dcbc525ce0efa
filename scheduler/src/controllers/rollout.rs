//! Rollouts (`argoproj.io/v1alpha1`): canary and blue-green updates, built in.
//!
//! Pods are managed through ReplicaSets as a Deployment's are (same template hash, revision
//! annotations, history), labelled `rollouts-pod-template-hash`. [`plan`] is pure; one
//! reconcile does what it can and the next event (a ReplicaSet's status, a pod, an
//! AnalysisRun, the stable Service's Endpoints) brings the next step.
//!
//! - **Canary.** The `stableService` selects the stable ReplicaSet's pods, the
//!   `canaryService` the new one's. Each `setWeight` first brings up enough canary pods
//!   (ceil(weight × replicas / 100), or what `setCanaryScale` says), then writes the weight
//!   on the stable Service (`rollouts.tug.io/canary-weight`, `…/canary-service`): every
//!   node's proxy sends exactly that share of the stable ClusterIP's connections to the
//!   canary Service's endpoints, whatever the replica counts. `pause` waits for its duration
//!   or for `promote`; `analysis` runs an AnalysisRun and goes on when it succeeds. After the
//!   last step the canary is scaled to full, takes 100% of the traffic, the stable Service's
//!   selector moves to it, and once the stable Endpoints hold only its pods the weight goes
//!   back to 0 and it is the stable ReplicaSet; the old one keeps its pods for
//!   `scaleDownDelaySeconds`. Without both Services the split follows replica counts.
//! - **Blue-green.** The new ReplicaSet comes up beside the active one, selected by the
//!   `previewService`; once available (and after `prePromotionAnalysis`, and a `promote` when
//!   `autoPromotionEnabled` is false, or `autoPromotionSeconds`) the `activeService`'s
//!   selector moves to it in one write — one Endpoints change on every node.
//!   `postPromotionAnalysis` failing moves it back.
//! - **Recovery.** A failed analysis, a crash-looping canary or a missed
//!   `progressDeadlineSeconds` aborts: the weight returns to 0 at once, the canary scales
//!   down, the phase is `Degraded` with the reason and a Warning Event says why. `retry`
//!   starts the steps again; a new template starts a new update.

use super::deployment::{failing_pod, replicas, st, template_hash};
use super::replicaset::PODS;
use super::runtime::{Controller, Next};
use super::{condition, controller_of, controller_ref, decode, set_condition, timestamp};
use crate::store::{Event, Store, StoreError};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use tug_api::kinds::apps::ReplicaSet;
use tug_api::kinds::pod::Pod;
use tug_api::kinds::rollouts::{
    AnalysisRun, AnalysisRunSpec, AnalysisTemplateSpec, Argument, CANARY_SERVICE, CANARY_WEIGHT,
    CanaryStatus, CanaryStep, HASH_LABEL, MANAGED_BY, PauseCondition, Rollout, RolloutAnalysis,
    RolloutAnalysisRunStatus, RolloutStatus, TrafficWeights, WeightDestination,
};
use tug_api::validate_rollouts::pause_duration;

pub const PREFIX: &str = "argoproj.io/rollouts/";
pub const RUNS: &str = "argoproj.io/analysisruns/";
const TEMPLATES: &str = "argoproj.io/analysistemplates/";
/// Cluster-scoped keys have an empty namespace part: `…/clusteranalysistemplates//NAME`.
const CLUSTER_TEMPLATES: &str = "argoproj.io/clusteranalysistemplates/";
const SERVICES: &str = "/services/";
const ENDPOINTS: &str = "/endpoints/";
const RS_PREFIX: &str = "apps/replicasets/";
pub const REVISION: &str = "rollout.argoproj.io/revision";
/// On an old ReplicaSet: when it may lose its pods (seconds since the epoch).
pub const SCALE_DOWN_AT: &str = "argo-rollouts.argoproj.io/scale-down-deadline";
const API_VERSION: &str = "argoproj.io/v1alpha1";

/// One change to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Adopt(String),
    Release(String),
    Create(Box<ReplicaSet>),
    /// Set a ReplicaSet's replicas and annotations.
    Scale {
        name: String,
        replicas: i32,
        annotations: BTreeMap<String, String>,
    },
    Delete(String),
    /// A managed Service's selector hash and (for the stable Service) the canary weight.
    Service {
        name: String,
        hash: String,
        weight: Option<(i32, String)>,
    },
    CreateRun(Box<AnalysisRun>),
    TerminateRun(String),
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
    pub status: RolloutStatus,
    pub next: Next,
}

/// What the planner sees besides the Rollout.
pub struct World<'a> {
    pub rss: &'a [ReplicaSet],
    pub pods: &'a [Pod],
    /// The namespace's Services' selectors, by name.
    pub services: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// The ready addresses of the stable Service's Endpoints.
    pub stable_endpoints: &'a [String],
    /// The ready addresses of the canary Service's Endpoints.
    pub canary_endpoints: &'a [String],
    /// The AnalysisRuns this Rollout owns.
    pub runs: &'a [AnalysisRun],
    /// Analysis templates by (cluster scope, name).
    pub templates: &'a BTreeMap<(bool, String), AnalysisTemplateSpec>,
    pub now: u64,
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata.annotations.get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// Whether a ReplicaSet's template is the Rollout's (its hash label aside).
fn same_template(a: &tug_api::kinds::pod::PodTemplateSpec, b: &tug_api::kinds::pod::PodTemplateSpec) -> bool {
    let strip = |t: &tug_api::kinds::pod::PodTemplateSpec| {
        let mut t = t.clone();
        t.metadata.labels.remove(HASH_LABEL);
        t
    };
    strip(a) == strip(b)
}

fn hash_of(rs: &ReplicaSet) -> Option<&str> {
    rs.metadata.labels.get(HASH_LABEL).map(String::as_str)
}

/// The ReplicaSet a Rollout makes for its current template.
pub fn new_replicaset(r: &Rollout, hash: &str, replicas: i32, revision: i64) -> ReplicaSet {
    let mut template = r.spec.template.clone();
    template.metadata.labels.insert(HASH_LABEL.into(), hash.into());
    let mut selector = r.spec.selector.clone();
    selector.match_labels.insert(HASH_LABEL.into(), hash.into());
    let mut rs =
        ReplicaSet { api_version: "apps/v1".into(), kind: "ReplicaSet".into(), ..Default::default() };
    rs.metadata.name = format!("{}-{hash}", r.metadata.name);
    rs.metadata.namespace = r.metadata.namespace.clone();
    rs.metadata.labels = template.metadata.labels.clone();
    rs.metadata.annotations.insert(REVISION.into(), revision.to_string());
    rs.metadata.owner_references = vec![controller_ref(API_VERSION, "Rollout", &r.metadata)];
    rs.spec.replicas = Some(replicas);
    rs.spec.selector = selector;
    rs.spec.template = template;
    rs.spec.min_ready_seconds = r.spec.min_ready_seconds;
    rs
}

/// ceil(weight × n / 100).
fn share(weight: i32, n: i32) -> i32 {
    let (w, n) = (i64::from(weight.clamp(0, 100)), i64::from(n.max(0)));
    i32::try_from((w * n + 99) / 100).unwrap_or(0)
}

/// The weight in force at step `idx` once that step is done, and the canary's replicas.
fn step_state(steps: &[CanaryStep], idx: usize, n: i32) -> (i32, i32) {
    let mut weight = 0;
    let mut scale: Option<i32> = None;
    for s in steps.iter().take(idx + 1) {
        if let Some(w) = s.set_weight {
            weight = w;
        }
        if let Some(sc) = &s.set_canary_scale {
            scale = if sc.match_traffic_weight == Some(true) {
                None
            } else if let Some(r) = sc.replicas {
                Some(r)
            } else {
                sc.weight.map(|w| share(w, n))
            };
        }
    }
    (weight, scale.unwrap_or_else(|| share(weight, n)))
}

fn pause_reason(s: &RolloutStatus, reason: &str) -> Option<u64> {
    s.pause_conditions
        .iter()
        .find(|p| p.reason == reason)
        .map(|p| super::parse_time(&p.start_time).unwrap_or(0))
}

/// An AnalysisRun for `a` (the templates' metrics, their arguments resolved).
fn analysis_run(
    r: &Rollout,
    a: &RolloutAnalysis,
    name: &str,
    kind: &str,
    world: &World,
    stable: &str,
    latest: &str,
) -> Result<AnalysisRun, String> {
    let mut spec = AnalysisRunSpec::default();
    let mut args: BTreeMap<String, Option<String>> = BTreeMap::new();
    for t in &a.templates {
        let cluster = t.cluster_scope == Some(true);
        let Some(tpl) = world.templates.get(&(cluster, t.template_name.clone())) else {
            let k = if cluster { "ClusterAnalysisTemplate" } else { "AnalysisTemplate" };
            return Err(format!("{k} {:?} not found", t.template_name));
        };
        spec.metrics.extend(tpl.metrics.iter().cloned());
        for arg in &tpl.args {
            args.entry(arg.name.clone()).or_insert_with(|| arg.value.clone());
        }
    }
    for arg in &a.args {
        let v = if let Some(v) = &arg.value {
            Some(v.clone())
        } else if let Some(from) = &arg.value_from {
            match (from.pod_template_hash_value.as_deref(), &from.field_ref) {
                (Some("Stable"), _) => Some(stable.to_string()),
                (Some(_), _) => Some(latest.to_string()),
                (None, Some(f)) => {
                    let v = serde_json::to_value(r).unwrap_or(Value::Null);
                    let mut cur = &v;
                    for part in f.field_path.split('.') {
                        cur = &cur[part];
                    }
                    Some(match cur {
                        Value::String(s) => s.clone(),
                        Value::Null => return Err(format!("fieldRef {:?} is not set", f.field_path)),
                        other => other.to_string(),
                    })
                }
                (None, None) => None,
            }
        } else {
            None
        };
        args.insert(arg.name.clone(), v);
    }
    for (k, v) in &args {
        if v.is_none() {
            return Err(format!("argument {k:?} has no value"));
        }
    }
    spec.args = args.into_iter().map(|(name, value)| Argument { name, value }).collect();
    let mut run =
        AnalysisRun { api_version: API_VERSION.into(), kind: "AnalysisRun".into(), ..Default::default() };
    run.metadata.name = name.to_string();
    run.metadata.namespace = r.metadata.namespace.clone();
    run.metadata.labels.insert(HASH_LABEL.into(), latest.to_string());
    run.metadata.labels.insert("rollout-type".into(), kind.to_string());
    run.metadata.owner_references = vec![controller_ref(API_VERSION, "Rollout", &r.metadata)];
    run.spec = spec;
    Ok(run)
}

/// Where an analysis stands: None while it runs (it is created if missing).
enum Verdict {
    Running,
    Passed,
    Failed(String),
    Inconclusive,
}

fn analysis_verdict(
    r: &Rollout,
    a: &RolloutAnalysis,
    name: &str,
    kind: &str,
    world: &World,
    (stable, latest): (&str, &str),
    out: &mut Plan,
) -> (Verdict, RolloutAnalysisRunStatus) {
    let mut rs = RolloutAnalysisRunStatus { name: name.to_string(), status: "Pending".into(), message: None };
    let Some(run) = world.runs.iter().find(|x| x.metadata.name == name) else {
        match analysis_run(r, a, name, kind, world, stable, latest) {
            Ok(run) => out.actions.push(Action::CreateRun(Box::new(run))),
            Err(e) => {
                let why = format!("AnalysisRun {name} cannot start: {e}");
                rs.status = "Error".into();
                rs.message = Some(why.clone());
                return (Verdict::Failed(why), rs);
            }
        }
        return (Verdict::Running, rs);
    };
    let st = run.status.clone().unwrap_or_default();
    rs.status = if st.phase.is_empty() { "Pending".into() } else { st.phase.clone() };
    rs.message = st.message.clone();
    let v = match st.phase.as_str() {
        "Successful" => Verdict::Passed,
        "Failed" | "Error" => Verdict::Failed(format!(
            "AnalysisRun {name} {}: {}",
            st.phase.to_ascii_lowercase(),
            st.message.unwrap_or_default()
        )),
        "Inconclusive" => Verdict::Inconclusive,
        _ => Verdict::Running,
    };
    (v, rs)
}

/// The pure decision.
pub fn plan(r: &Rollout, world: &World) -> Plan {
    let mut out = Plan::default();
    let now = world.now;
    let stamp = timestamp(now);
    let uid = r.metadata.uid.as_deref().unwrap_or_default();
    let prev = r.status.clone().unwrap_or_default();
    let Ok(selector) = r.spec.selector.to_selector("spec.selector") else { return out };
    let deleting = r.metadata.deletion_timestamp.is_some();
    let mut owned: Vec<ReplicaSet> = Vec::new();
    for rs in world.rss {
        let matches = !r.spec.selector.is_empty() && selector.matches(&rs.metadata.labels);
        match controller_of(&rs.metadata) {
            Some(o) if o.uid == uid && matches => owned.push(rs.clone()),
            Some(o) if o.uid == uid => out.actions.push(Action::Release(rs.metadata.name.clone())),
            None if matches && !deleting && hash_of(rs).is_some() => {
                out.actions.push(Action::Adopt(rs.metadata.name.clone()));
                owned.push(rs.clone());
            }
            _ => {}
        }
    }
    let n = r.spec.replicas.unwrap_or(1).max(0);
    let hash = template_hash(&r.spec.template);
    let mut status = RolloutStatus {
        observed_generation: r.metadata.generation.map(|g| g.to_string()),
        current_pod_hash: Some(hash.clone()),
        selector: Some(
            r.spec
                .selector
                .match_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        ),
        conditions: prev.conditions.clone(),
        ..Default::default()
    };
    // The same update as before keeps its place; a new template starts over.
    let same_update = prev.current_pod_hash.as_deref() == Some(hash.as_str());
    if same_update {
        status.abort = prev.abort;
        status.aborted_at = prev.aborted_at.clone();
        status.pause_conditions = prev.pause_conditions.clone();
        status.controller_pause = prev.controller_pause;
        status.promote_full = prev.promote_full;
        status.current_step_index = prev.current_step_index;
        status.blue_green = prev.blue_green.clone();
        status.message = prev.message.clone();
    }
    let max_rev = owned.iter().map(revision_of).max().unwrap_or(0);
    let new_idx = owned.iter().position(|x| same_template(&x.spec.template, &r.spec.template));
    let mut new = new_idx.map(|i| owned[i].clone());
    if let Some(nw) = new.as_mut() {
        let others = owned.iter().filter(|o| o.metadata.name != nw.metadata.name).map(revision_of).max();
        if others.is_some_and(|m| revision_of(nw) <= m) {
            nw.metadata.annotations.insert(REVISION.into(), (max_rev + 1).to_string());
            out.actions.push(Action::Scale {
                name: nw.metadata.name.clone(),
                replicas: replicas(nw),
                annotations: nw.metadata.annotations.clone(),
            });
        }
    }
    let stable_hash = prev
        .stable_rs
        .clone()
        .filter(|h| owned.iter().any(|o| hash_of(o) == Some(h.as_str())))
        .unwrap_or_else(|| hash.clone());
    if deleting {
        status.stable_rs = Some(stable_hash);
        out.status = counts(status, new.as_ref(), &owned);
        return out;
    }
    let created = new.is_none();
    if new.is_none() {
        let first = if stable_hash == hash { n } else { 0 };
        let rs = new_replicaset(r, &hash, first, max_rev + 1);
        out.actions.push(Action::Create(Box::new(rs.clone())));
        new = Some(rs);
    }
    let Some(new) = new else { return out };
    let stable = owned.iter().find(|o| hash_of(o) == Some(stable_hash.as_str())).cloned();
    let mut want: BTreeMap<String, i32> = BTreeMap::new();
    let mut annotate: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();

    if stable_hash == hash {
        // Steady: the current template is stable.
        status.stable_rs = Some(hash.clone());
        status.abort = false;
        status.aborted_at = None;
        status.pause_conditions.clear();
        status.controller_pause = false;
        status.promote_full = false;
        want.insert(new.metadata.name.clone(), n);
        services(r, &hash, &hash, None, &mut out);
        if let Some(c) = &r.spec.strategy.canary {
            status.current_step_index = Some(i32::try_from(c.steps.len()).unwrap_or(0));
            status.canary = Some(CanaryStatus { weights: weights(r, 0, &hash, &hash), ..Default::default() });
        }
        if r.spec.strategy.blue_green.is_some() {
            let mut bg = status.blue_green.clone().unwrap_or_default();
            bg.active_selector = Some(hash.clone());
            bg.preview_selector = Some(hash.clone());
            status.blue_green = Some(bg);
        }
        let (_, _, avail) = st(&new);
        let done = replicas(&new) == n && avail >= n;
        status.phase = Some(if done { "Healthy" } else { "Progressing" }.into());
        status.message = (!done).then(|| "more replicas need to be updated".to_string());
    } else if r.spec.paused == Some(true) && !status.abort {
        // `tug rollout pause`: everything stays as it is, the Services too.
        want.insert(new.metadata.name.clone(), replicas(&new));
        if let Some(s) = &stable {
            want.insert(s.metadata.name.clone(), replicas(s));
        }
        status.stable_rs = Some(stable_hash.clone());
        status.canary = prev.canary.clone();
        status.blue_green = prev.blue_green.clone();
        status.phase = Some("Paused".into());
        status.message = Some("manually paused".into());
    } else if let Some(c) = r.spec.strategy.canary.clone() {
        let (new, stable) = (&new, stable.as_ref());
        step_or_abort(&mut status, world.now, &mut out, |status, out| {
            canary_step(r, &c, world, new, stable, &stable_hash, &hash, status, &mut want, &mut annotate, out)
        });
    } else if let Some(b) = r.spec.strategy.blue_green.clone() {
        let (new, stable) = (&new, stable.as_ref());
        step_or_abort(&mut status, world.now, &mut out, |status, out| {
            blue_green_step(
                r,
                &b,
                world,
                new,
                stable,
                &stable_hash,
                &hash,
                status,
                &mut want,
                &mut annotate,
                out,
            )
        });
    }

    // Failures abort an update in progress.
    let updating = status.stable_rs.as_deref() != Some(hash.as_str());
    if updating && !status.abort {
        let cur = counts(status.clone(), Some(&new), &owned);
        let stalled = progress_deadline(r, &prev, &cur, &new, now, same_update && !created, &mut out.next);
        let why = failing_pod(&new, world.pods).or(stalled);
        if let Some(why) = why {
            abort(&mut status, &why, &stamp, &mut out);
            // This round already acts on it.
            let mut p = plan(&with_status(r, &status), world);
            p.actions.extend(out.actions.into_iter().filter(|a| matches!(a, Action::Event { .. })));
            return p;
        }
    }

    // Old ReplicaSets: none but the stable and the new keep pods, the previous stable one
    // until its scale-down deadline.
    let stable_name =
        owned.iter().find(|o| status.stable_rs.as_deref() == hash_of(o)).map(|o| o.metadata.name.clone());
    for o in &owned {
        let decided =
            annotate.get(&o.metadata.name).and_then(|a| a.get(SCALE_DOWN_AT)).is_some_and(|v| !v.is_empty());
        if o.metadata.name == new.metadata.name || Some(&o.metadata.name) == stable_name.as_ref() || decided {
            continue;
        }
        let deadline = o.metadata.annotations.get(SCALE_DOWN_AT).and_then(|v| v.parse::<u64>().ok());
        match deadline {
            Some(t) if t > now && replicas(o) > 0 => {
                out.next = out.next.min(Next::After(Duration::from_secs(t - now)));
                want.entry(o.metadata.name.clone()).or_insert(replicas(o));
            }
            _ => {
                want.insert(o.metadata.name.clone(), 0);
                annotate
                    .entry(o.metadata.name.clone())
                    .or_default()
                    .insert(SCALE_DOWN_AT.into(), String::new());
            }
        }
    }
    // The scale changes, as Scale actions.
    let all: Vec<&ReplicaSet> = owned.iter().chain(std::iter::once(&new)).collect();
    for (name, target) in &want {
        let Some(rs) = all.iter().find(|x| x.metadata.name == *name) else { continue };
        let mut a = rs.metadata.annotations.clone();
        for (k, v) in annotate.get(name).into_iter().flatten() {
            if v.is_empty() {
                a.remove(k);
            } else {
                a.insert(k.clone(), v.clone());
            }
        }
        if created && *name == new.metadata.name {
            if let Some(Action::Create(rs)) = out.actions.iter_mut().find(|x| matches!(x, Action::Create(_)))
            {
                rs.spec.replicas = Some(*target);
            }
            continue;
        }
        if *target != replicas(rs) || a != rs.metadata.annotations {
            out.actions.retain(|x| !matches!(x, Action::Scale { name: nm, .. } if nm == name));
            out.actions.push(Action::Scale { name: name.clone(), replicas: *target, annotations: a });
        }
    }
    // History: empty old ReplicaSets beyond the limit.
    let limit = usize::try_from(r.spec.revision_history_limit.unwrap_or(10).max(0)).unwrap_or(0);
    let mut empty: Vec<&ReplicaSet> = owned
        .iter()
        .filter(|o| {
            o.metadata.name != new.metadata.name
                && Some(&o.metadata.name) != stable_name.as_ref()
                && replicas(o) == 0
                && st(o).0 == 0
                && want.get(&o.metadata.name).is_none_or(|w| *w <= 0)
        })
        .collect();
    empty.sort_by_key(|o| revision_of(o));
    for o in empty.iter().take(empty.len().saturating_sub(limit)) {
        out.actions.push(Action::Delete(o.metadata.name.clone()));
    }
    let mut status = counts(status, Some(&new), &owned);
    let healthy = status.phase.as_deref() == Some("Healthy");
    let (ps, reason, msg) = match status.phase.as_deref() {
        Some("Healthy") => {
            ("True", "NewReplicaSetAvailable", "Rollout has completed rollout transition".to_string())
        }
        Some("Paused") => ("Unknown", "RolloutPaused", "Rollout is paused".to_string()),
        Some("Degraded") => ("False", "RolloutAborted", status.message.clone().unwrap_or_default()),
        _ => ("True", "ReplicaSetUpdated", format!("ReplicaSet {:?} is progressing.", new.metadata.name)),
    };
    let mut conds = status.conditions.clone();
    let old_progressing = prev.conditions.iter().find(|c| c.type_ == "Progressing").cloned();
    set_condition(&mut conds, condition("Progressing", ps, reason, msg.as_str()), &stamp);
    // The update time moves only with progress (the deadline counts from it).
    if let (Some(old), Some(c)) = (old_progressing, conds.iter_mut().find(|c| c.type_ == "Progressing")) {
        let moved = made_progress(&prev, &status) || old.reason != c.reason;
        if !moved {
            c.last_update_time = old.last_update_time.clone();
        }
        if old.status == c.status {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    let available = status.available_replicas.unwrap_or(0) >= n;
    set_condition(
        &mut conds,
        if available {
            condition("Available", "True", "AvailableReason", "Rollout has minimum availability")
        } else {
            condition("Available", "False", "AvailableReason", "Rollout does not have minimum availability")
        },
        &stamp,
    );
    set_condition(
        &mut conds,
        condition(
            "Healthy",
            if healthy { "True" } else { "False" },
            if healthy { "RolloutHealthy" } else { "RolloutHealthyReason" },
            if healthy { "Rollout is healthy" } else { "Rollout is not healthy" },
        ),
        &stamp,
    );
    for c in conds.iter_mut() {
        if let Some(old) = prev.conditions.iter().find(|o| o.type_ == c.type_ && c.type_ != "Progressing") {
            if old.status == c.status && old.reason == c.reason && old.message == c.message {
                c.last_update_time = old.last_update_time.clone();
                c.last_transition_time = old.last_transition_time.clone();
            }
        }
    }
    status.conditions = conds;
    out.status = status;
    out
}

/// Runs a strategy's step; when it finds a reason to abort, the abort, and the step again
/// (which then acts on it in the same reconcile).
fn step_or_abort(
    status: &mut RolloutStatus,
    now: u64,
    out: &mut Plan,
    mut step: impl FnMut(&mut RolloutStatus, &mut Plan) -> Option<String>,
) {
    if let Some(why) = step(status, out) {
        abort(status, &why, &timestamp(now), out);
        let _ = step(status, out);
    }
}

fn with_status(r: &Rollout, s: &RolloutStatus) -> Rollout {
    let mut r = r.clone();
    r.status = Some(s.clone());
    r
}

fn made_progress(old: &RolloutStatus, new: &RolloutStatus) -> bool {
    let g = |v: Option<i32>| v.unwrap_or(0);
    g(new.updated_replicas) > g(old.updated_replicas)
        || g(new.available_replicas) > g(old.available_replicas)
        || g(new.ready_replicas) > g(old.ready_replicas)
        || new.current_step_index != old.current_step_index
        || new.stable_rs != old.stable_rs
        || new.current_pod_hash != old.current_pod_hash
}

/// The reason when an update that is not paused made no progress for
/// `progressDeadlineSeconds`; else asks to be looked at when it would expire.
fn progress_deadline(
    r: &Rollout,
    prev: &RolloutStatus,
    status: &RolloutStatus,
    new: &ReplicaSet,
    now: u64,
    same_update: bool,
    next: &mut Next,
) -> Option<String> {
    let limit = u64::try_from(r.spec.progress_deadline_seconds.unwrap_or(600).max(0)).ok()?;
    if !same_update || status.phase.as_deref() == Some("Paused") || !status.pause_conditions.is_empty() {
        return None;
    }
    let c = prev.conditions.iter().find(|c| c.type_ == "Progressing")?;
    if c.reason.as_deref() == Some("RolloutPaused") {
        return None;
    }
    let since = c.last_update_time.as_deref().and_then(super::parse_time).unwrap_or(now);
    if made_progress(prev, status) {
        *next = next.min(Next::After(Duration::from_secs(limit)));
        return None;
    }
    if since + limit <= now {
        return Some(format!(
            "ProgressDeadlineExceeded: ReplicaSet {:?} has timed out progressing.",
            new.metadata.name
        ));
    }
    *next = next.min(Next::After(Duration::from_secs(since + limit - now)));
    None
}

fn abort(status: &mut RolloutStatus, why: &str, stamp: &str, out: &mut Plan) {
    status.abort = true;
    status.aborted_at = Some(stamp.to_string());
    status.message = Some(format!("RolloutAborted: {why}"));
    status.pause_conditions.clear();
    status.controller_pause = false;
    out.actions.push(Action::Event {
        type_: "Warning",
        reason: "RolloutAborted",
        message: format!("Rollout aborted update to revision: {why}"),
    });
}

fn weights(r: &Rollout, w: i32, stable: &str, canary: &str) -> Option<TrafficWeights> {
    let c = r.spec.strategy.canary.as_ref()?;
    Some(TrafficWeights {
        canary: WeightDestination {
            weight: w,
            service_name: c.canary_service.clone(),
            pod_template_hash: Some(canary.to_string()),
        },
        stable: WeightDestination {
            weight: 100 - w,
            service_name: c.stable_service.clone(),
            pod_template_hash: Some(stable.to_string()),
        },
    })
}

/// The managed Services' selectors (and the canary weight): `stable` for the stable or
/// active Service, `latest` for the canary or preview one.
fn services(r: &Rollout, stable: &str, latest: &str, weight: Option<i32>, out: &mut Plan) {
    if let Some(c) = &r.spec.strategy.canary {
        if let Some(s) = &c.stable_service {
            let w = match (weight, &c.canary_service) {
                (Some(w), Some(cs)) if w > 0 => Some((w, cs.clone())),
                _ => None,
            };
            out.actions.push(Action::Service { name: s.clone(), hash: stable.into(), weight: w });
        }
        if let Some(s) = &c.canary_service {
            out.actions.push(Action::Service { name: s.clone(), hash: latest.into(), weight: None });
        }
    }
    if let Some(b) = &r.spec.strategy.blue_green {
        out.actions.push(Action::Service {
            name: b.active_service.clone(),
            hash: stable.into(),
            weight: None,
        });
        if let Some(p) = &b.preview_service {
            out.actions.push(Action::Service { name: p.clone(), hash: latest.into(), weight: None });
        }
    }
}

fn abort_delay(d: Option<i32>, traffic: bool, aborted_at: Option<&str>, now: u64, next: &mut Next) -> bool {
    let delay = u64::try_from(d.unwrap_or(if traffic { 30 } else { 0 }).max(0)).unwrap_or(0);
    let since = aborted_at.and_then(super::parse_time).unwrap_or(0);
    if since + delay > now {
        *next = next.min(Next::After(Duration::from_secs(since + delay - now)));
        false
    } else {
        true
    }
}

#[allow(clippy::too_many_arguments)]
fn canary_step(
    r: &Rollout,
    c: &tug_api::kinds::rollouts::CanaryStrategy,
    world: &World,
    new: &ReplicaSet,
    stable: Option<&ReplicaSet>,
    stable_hash: &str,
    hash: &str,
    status: &mut RolloutStatus,
    want: &mut BTreeMap<String, i32>,
    annotate: &mut BTreeMap<String, BTreeMap<String, String>>,
    out: &mut Plan,
) -> Option<String> {
    let now = world.now;
    let stamp = timestamp(now);
    let n = r.spec.replicas.unwrap_or(1).max(0);
    let steps = &c.steps;
    let traffic = c.stable_service.is_some() && c.canary_service.is_some();
    let new_avail = st(new).2.min(replicas(new));
    let stable_name = stable.map(|s| s.metadata.name.clone());
    // With Services the stable side keeps every pod and traffic moves by weight; without,
    // the split is the replica ratio, reached within maxSurge and maxUnavailable.
    let (surge, unavailable) = fenceposts(c, n);
    let stable_now = stable.map_or(0, replicas);
    let set_counts = |want: &mut BTreeMap<String, i32>, canary: i32| {
        if traffic {
            want.insert(new.metadata.name.clone(), canary);
            if let Some(s) = &stable_name {
                want.insert(s.clone(), n);
            }
            return;
        }
        let up = canary.min(replicas(new).max(n + surge - stable_now)).max(0);
        want.insert(new.metadata.name.clone(), up);
        if let Some(s) = &stable_name {
            let floor = (n - canary).max(0);
            let keep = if stable_now <= floor {
                floor
            } else {
                floor.max(n - unavailable - new_avail).min(stable_now)
            };
            want.insert(s.clone(), keep);
        }
    };
    let mut cs = CanaryStatus::default();
    if status.abort {
        // Traffic back to stable at once; the canary's pods go after the abort delay.
        services(r, stable_hash, hash, None, out);
        let gone = abort_delay(
            c.abort_scale_down_delay_seconds,
            traffic,
            status.aborted_at.as_deref(),
            now,
            &mut out.next,
        );
        set_counts(want, if gone { 0 } else { replicas(new) });
        if let Some(s) = &stable_name {
            want.insert(s.clone(), n);
        }
        cs.weights = weights(r, 0, stable_hash, hash);
        status.canary = Some(cs);
        status.stable_rs = Some(stable_hash.to_string());
        status.phase = Some("Degraded".into());
        return None;
    }
    let new_ips: Vec<String> = world
        .pods
        .iter()
        .filter(|p| p.metadata.labels.get(HASH_LABEL).map(String::as_str) == Some(hash))
        .filter_map(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()))
        .collect();
    let mut idx =
        usize::try_from(status.current_step_index.unwrap_or(0).max(0)).unwrap_or(0).min(steps.len());
    let (mut weight, _) = if idx == 0 { (0, 0) } else { step_state(steps, idx - 1, n) };
    status.phase = Some("Progressing".into());
    status.message = None;
    let mut stable_selector = stable_hash.to_string();
    let mut promoted = false;
    // Background analysis.
    if let Some(bg) = &c.analysis {
        let start = usize::try_from(bg.starting_step.unwrap_or(0).max(0)).unwrap_or(0);
        if idx >= start {
            let a = RolloutAnalysis { templates: bg.templates.clone(), args: bg.args.clone() };
            let name = format!("{}-{hash}", r.metadata.name);
            let (v, rs) = analysis_verdict(r, &a, &name, "Background", world, (stable_hash, hash), out);
            cs.current_background_analysis_run_status = Some(rs);
            if let Verdict::Failed(why) = v {
                status.canary = Some(cs);
                return Some(why);
            }
        }
    }
    loop {
        if idx >= steps.len() || status.promote_full {
            // Full promotion: the canary to full size, all traffic to it, then the stable
            // Service's selector, then (its Endpoints switched) weight 0 and a new stable.
            set_counts(want, n);
            if new_avail < n {
                status.message = Some("more replicas need to be updated".into());
                break;
            }
            if !traffic {
                promoted = true;
                break;
            }
            weight = 100;
            stable_selector = hash.to_string();
            let svc = c.stable_service.clone().unwrap_or_default();
            let selects_new =
                world.services.get(&svc).and_then(|s| s.get(HASH_LABEL)).map(String::as_str) == Some(hash);
            let switched = selects_new
                && !world.stable_endpoints.is_empty()
                && world.stable_endpoints.iter().all(|ip| new_ips.contains(ip));
            if switched {
                promoted = true;
            } else {
                status.message = Some("waiting for the stable Service's endpoints to switch".into());
            }
            break;
        }
        let step = &steps[idx];
        let (w, canary_n) = step_state(steps, idx, n);
        set_counts(want, canary_n);
        if new_avail < canary_n {
            status.message =
                Some(format!("waiting for {canary_n} canary pods to be available ({new_avail} are)"));
            break;
        }
        // With Services, the canary's pods in its Service's Endpoints too before traffic or
        // an analysis goes to them (the endpoints controller follows readiness a moment later).
        let listed = world.canary_endpoints.iter().filter(|ip| new_ips.contains(ip)).count();
        if traffic && i32::try_from(listed).unwrap_or(i32::MAX) < canary_n {
            status.message =
                Some(format!("waiting for the canary Service's endpoints ({listed} of {canary_n})"));
            break;
        }
        if step.set_weight.is_some() || step.set_canary_scale.is_some() {
            weight = w;
            idx += 1;
            continue;
        }
        if let Some(p) = &step.pause {
            match &p.duration {
                Some(d) => {
                    let d = pause_duration(d).unwrap_or_default().as_secs();
                    match pause_reason(status, "CanaryPauseStep") {
                        Some(t) if t + d <= now => {
                            status.pause_conditions.clear();
                            status.controller_pause = false;
                            idx += 1;
                            continue;
                        }
                        Some(t) => out.next = out.next.min(Next::After(Duration::from_secs(t + d - now))),
                        None => {
                            status.pause_conditions = vec![PauseCondition {
                                reason: "CanaryPauseStep".into(),
                                start_time: stamp.clone(),
                            }];
                            status.controller_pause = true;
                            out.next = out.next.min(Next::After(Duration::from_secs(d.max(1))));
                        }
                    }
                }
                None => {
                    if pause_reason(status, "CanaryPauseStep").is_none() {
                        status.pause_conditions = vec![PauseCondition {
                            reason: "CanaryPauseStep".into(),
                            start_time: stamp.clone(),
                        }];
                        status.controller_pause = true;
                    }
                }
            }
            status.phase = Some("Paused".into());
            status.message = Some("CanaryPauseStep".into());
            break;
        }
        if let Some(a) = &step.analysis {
            let name = format!("{}-{hash}-{idx}", r.metadata.name);
            let (v, rs) = analysis_verdict(r, a, &name, "Step", world, (stable_hash, hash), out);
            cs.current_step_analysis_run_status = Some(rs);
            match v {
                Verdict::Passed => {
                    idx += 1;
                    continue;
                }
                Verdict::Running => break,
                Verdict::Inconclusive => {
                    if pause_reason(status, "InconclusiveAnalysisRun").is_none() {
                        status.pause_conditions = vec![PauseCondition {
                            reason: "InconclusiveAnalysisRun".into(),
                            start_time: stamp.clone(),
                        }];
                        status.controller_pause = true;
                    }
                    status.phase = Some("Paused".into());
                    status.message = Some("InconclusiveAnalysisRun".into());
                    break;
                }
                Verdict::Failed(why) => {
                    status.current_step_index = Some(i32::try_from(idx).unwrap_or(0));
                    status.canary = Some(cs);
                    return Some(why);
                }
            }
        }
        idx += 1;
    }
    status.current_step_index = Some(i32::try_from(idx).unwrap_or(0));
    if promoted {
        // The new ReplicaSet is stable; the old one keeps its pods for the delay.
        status.stable_rs = Some(hash.to_string());
        status.promote_full = false;
        status.pause_conditions.clear();
        status.controller_pause = false;
        services(r, hash, hash, None, out);
        retire(stable_name.as_deref(), c.scale_down_delay_seconds, traffic, now, want, annotate, n);
        if let Some(bg) = c.analysis.as_ref().map(|_| format!("{}-{hash}", r.metadata.name)) {
            if world.runs.iter().any(|x| x.metadata.name == bg && x.spec.terminate != Some(true)) {
                out.actions.push(Action::TerminateRun(bg));
            }
        }
        out.actions.push(Action::Event {
            type_: "Normal",
            reason: "RolloutCompleted",
            message: format!(
                "Rollout completed update to revision {}: {}",
                revision_of(new),
                new.metadata.name
            ),
        });
        cs.weights = weights(r, 0, hash, hash);
        status.canary = Some(cs);
        status.phase = Some("Progressing".into());
        return None;
    }
    services(r, &stable_selector, hash, Some(weight), out);
    status.stable_rs = Some(stable_hash.to_string());
    cs.weights = weights(r, weight, stable_hash, hash);
    status.canary = Some(cs);
    None
}

/// A basic canary's maxSurge and maxUnavailable against `n` (25% each by default; surge
/// rounds up, unavailable down; both zero means one unavailable), as a Deployment's.
fn fenceposts(c: &tug_api::kinds::rollouts::CanaryStrategy, n: i32) -> (i32, i32) {
    let want = i64::from(n);
    let resolve = |v: Option<&tug_api::meta::IntOrString>, up: bool| {
        v.map_or(Ok(if up { (want * 25 + 99) / 100 } else { want * 25 / 100 }), |x| x.scaled(want, up))
            .unwrap_or(0)
    };
    let surge = resolve(c.max_surge.as_ref(), true);
    let mut unavailable = resolve(c.max_unavailable.as_ref(), false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    let clamp = |v: i64| i32::try_from(v.clamp(0, want)).unwrap_or(0);
    (clamp(surge), clamp(unavailable))
}

/// The previous stable ReplicaSet keeps its pods for `delay` seconds (default 30 where
/// traffic moved by Service, none otherwise) after the switch.
fn retire(
    name: Option<&str>,
    delay: Option<i32>,
    traffic: bool,
    now: u64,
    want: &mut BTreeMap<String, i32>,
    annotate: &mut BTreeMap<String, BTreeMap<String, String>>,
    n: i32,
) {
    let Some(name) = name else { return };
    let d = u64::try_from(delay.unwrap_or(if traffic { 30 } else { 0 }).max(0)).unwrap_or(0);
    if d == 0 {
        want.insert(name.to_string(), 0);
    } else {
        want.insert(name.to_string(), n);
        annotate.entry(name.to_string()).or_default().insert(SCALE_DOWN_AT.into(), (now + d).to_string());
    }
}

#[allow(clippy::too_many_arguments)]
fn blue_green_step(
    r: &Rollout,
    b: &tug_api::kinds::rollouts::BlueGreenStrategy,
    world: &World,
    new: &ReplicaSet,
    stable: Option<&ReplicaSet>,
    stable_hash: &str,
    hash: &str,
    status: &mut RolloutStatus,
    want: &mut BTreeMap<String, i32>,
    annotate: &mut BTreeMap<String, BTreeMap<String, String>>,
    out: &mut Plan,
) -> Option<String> {
    let now = world.now;
    let stamp = timestamp(now);
    let n = r.spec.replicas.unwrap_or(1).max(0);
    let mut bg = status.blue_green.clone().unwrap_or_default();
    let stable_name = stable.map(|s| s.metadata.name.clone());
    if let Some(s) = &stable_name {
        want.insert(s.clone(), n);
    }
    status.stable_rs = Some(stable_hash.to_string());
    let preview_n = b.preview_replica_count.unwrap_or(n).min(n).max(0);
    let new_avail = st(new).2.min(replicas(new));
    let active = world.services.get(&b.active_service).and_then(|s| s.get(HASH_LABEL)).cloned();
    if status.abort {
        services(r, stable_hash, hash, None, out);
        let gone = abort_delay(
            b.abort_scale_down_delay_seconds,
            true,
            status.aborted_at.as_deref(),
            now,
            &mut out.next,
        );
        want.insert(new.metadata.name.clone(), if gone { 0 } else { replicas(new) });
        bg.active_selector = Some(stable_hash.to_string());
        status.blue_green = Some(bg);
        status.phase = Some("Degraded".into());
        return None;
    }
    status.phase = Some("Progressing".into());
    status.message = None;
    let switched = active.as_deref() == Some(hash);
    if !switched {
        want.insert(new.metadata.name.clone(), preview_n.max(replicas(new).min(n)));
        services(r, stable_hash, hash, None, out);
        bg.active_selector = Some(stable_hash.to_string());
        bg.preview_selector = Some(hash.to_string());
        if new_avail < preview_n {
            bg.available_at = None;
            status.message = Some("waiting for the preview ReplicaSet to be available".into());
            status.blue_green = Some(bg);
            return None;
        }
        let since = bg.available_at.as_deref().and_then(super::parse_time).unwrap_or(now);
        bg.available_at.get_or_insert_with(|| stamp.clone());
        if let Some(a) = &b.pre_promotion_analysis {
            let name = format!("{}-{hash}-pre", r.metadata.name);
            let (v, rs) = analysis_verdict(r, a, &name, "PrePromotion", world, (stable_hash, hash), out);
            bg.pre_promotion_analysis_run_status = Some(rs);
            match v {
                Verdict::Passed => {}
                Verdict::Failed(why) => {
                    status.blue_green = Some(bg);
                    return Some(why);
                }
                Verdict::Running | Verdict::Inconclusive => {
                    status.blue_green = Some(bg);
                    return None;
                }
            }
        }
        let full = status.promote_full;
        if b.auto_promotion_enabled == Some(false) && !full {
            // Paused until `promote` clears the pause condition.
            let promoted = status.controller_pause && status.pause_conditions.is_empty();
            if !promoted {
                if !status.controller_pause {
                    status.pause_conditions =
                        vec![PauseCondition { reason: "BlueGreenPause".into(), start_time: stamp.clone() }];
                    status.controller_pause = true;
                }
                status.phase = Some("Paused".into());
                status.message = Some("BlueGreenPause".into());
                status.blue_green = Some(bg);
                return None;
            }
        } else if let Some(secs) = b.auto_promotion_seconds.filter(|_| !full) {
            let at = since + u64::try_from(secs.max(0)).unwrap_or(0);
            if at > now {
                out.next = out.next.min(Next::After(Duration::from_secs(at - now)));
                status.message = Some(format!("auto-promotion in {}s", at - now));
                status.blue_green = Some(bg);
                return None;
            }
        }
        // The preview at full size first, then the switch: one write of the active Service.
        want.insert(new.metadata.name.clone(), n);
        if new_avail < n {
            status.message = Some("waiting for the new ReplicaSet to reach full size".into());
            status.blue_green = Some(bg);
            return None;
        }
        out.actions.retain(|a| !matches!(a, Action::Service { name, .. } if *name == b.active_service));
        out.actions.push(Action::Service { name: b.active_service.clone(), hash: hash.into(), weight: None });
        out.actions.push(Action::Event {
            type_: "Normal",
            reason: "SwitchService",
            message: format!(
                "Switched selector for service '{}' from '{stable_hash}' to '{hash}'",
                b.active_service
            ),
        });
        bg.switched_at = Some(stamp.clone());
        bg.active_selector = Some(hash.to_string());
        status.blue_green = Some(bg);
        if b.post_promotion_analysis.is_some() {
            return None;
        }
    } else {
        want.insert(new.metadata.name.clone(), n);
        services(r, hash, hash, None, out);
        bg.active_selector = Some(hash.to_string());
        if let Some(a) = &b.post_promotion_analysis {
            let name = format!("{}-{hash}-post", r.metadata.name);
            let (v, rs) = analysis_verdict(r, a, &name, "PostPromotion", world, (stable_hash, hash), out);
            bg.post_promotion_analysis_run_status = Some(rs);
            match v {
                Verdict::Passed => {}
                Verdict::Failed(why) => {
                    // Back to the previous active ReplicaSet, which still has its pods.
                    status.blue_green = Some(bg);
                    out.actions.retain(|a| !matches!(a, Action::Service { .. }));
                    return Some(why);
                }
                Verdict::Running | Verdict::Inconclusive => {
                    status.blue_green = Some(bg);
                    return None;
                }
            }
        }
        status.blue_green = Some(bg);
    }
    status.stable_rs = Some(hash.to_string());
    status.pause_conditions.clear();
    status.controller_pause = false;
    status.promote_full = false;
    retire(stable_name.as_deref(), b.scale_down_delay_seconds, true, now, want, annotate, n);
    out.actions.push(Action::Event {
        type_: "Normal",
        reason: "RolloutCompleted",
        message: format!("Rollout completed update to revision {}: {}", revision_of(new), new.metadata.name),
    });
    None
}

fn counts(mut s: RolloutStatus, new: Option<&ReplicaSet>, owned: &[ReplicaSet]) -> RolloutStatus {
    let (mut total, mut ready, mut avail) = (0, 0, 0);
    let mut seen = std::collections::BTreeSet::new();
    for rs in new.into_iter().chain(owned.iter()) {
        if !seen.insert(rs.metadata.name.clone()) {
            continue;
        }
        let (a, b, c) = st(rs);
        total += a;
        ready += b;
        avail += c;
    }
    s.replicas = Some(total);
    s.ready_replicas = Some(ready);
    s.available_replicas = Some(avail);
    s.updated_replicas = Some(new.map_or(0, |n| st(n).0));
    s.hpa_replicas = s.replicas;
    s
}

/// The reconciler.
pub struct Rollouts;

impl Controller for Rollouts {
    fn name(&self) -> &'static str {
        "rollout"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec![RS_PREFIX, PODS, RUNS, ENDPOINTS]
    }

    fn keys_for(&self, store: &dyn Store, e: &Event) -> Vec<String> {
        let Ok(meta) = tug_api::from_value_ref::<tug_api::meta::ObjectMeta>(&e.object["metadata"]) else {
            return Vec::new();
        };
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        if e.key.starts_with(ENDPOINTS) {
            // The stable Service's Endpoints: the Services say which Rollout manages them.
            let Ok(Some(svc)) = store.get(&format!("{SERVICES}{ns}/{}", meta.name)) else {
                return Vec::new();
            };
            return svc.object["metadata"]["annotations"][MANAGED_BY]
                .as_str()
                .map(|r| vec![format!("{PREFIX}{ns}/{r}")])
                .unwrap_or_default();
        }
        if e.key.starts_with(RUNS) {
            return super::controller_key(e, "Rollout", PREFIX);
        }
        if e.key.starts_with(RS_PREFIX) {
            return super::controller_key(e, "Rollout", PREFIX);
        }
        // A pod: its ReplicaSet's Rollout.
        let Some(o) = controller_of(&meta).filter(|o| o.kind == "ReplicaSet") else { return Vec::new() };
        if !meta.labels.contains_key(HASH_LABEL) {
            return Vec::new();
        }
        let Ok(Some(rs)) = store.get(&format!("{RS_PREFIX}{ns}/{}", o.name)) else { return Vec::new() };
        match decode::<ReplicaSet>(&rs).ok().as_ref().and_then(|r| controller_of(&r.metadata).cloned()) {
            Some(d) if d.kind == "Rollout" => vec![format!("{PREFIX}{ns}/{}", d.name)],
            _ => Vec::new(),
        }
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(stored) = store.get(key)? else { return Ok(Next::Done) };
        let r: Rollout = decode(&stored)?;
        let ns = r.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let uid = r.metadata.uid.clone().unwrap_or_default();
        let (rs_items, _) = store.list(&format!("{RS_PREFIX}{ns}/"))?;
        let rss: Vec<ReplicaSet> = rs_items.iter().filter_map(|s| decode(s).ok()).collect();
        let (pod_items, _) = store.list(&format!("{PODS}{ns}/"))?;
        let pods: Vec<Pod> = pod_items
            .iter()
            .filter(|s| s.object["metadata"]["labels"][HASH_LABEL].is_string())
            .filter_map(|s| decode(s).ok())
            .collect();
        let mut names: Vec<String> = Vec::new();
        if let Some(c) = &r.spec.strategy.canary {
            names.extend(c.stable_service.iter().chain(c.canary_service.iter()).cloned());
        }
        if let Some(b) = &r.spec.strategy.blue_green {
            names.push(b.active_service.clone());
            names.extend(b.preview_service.iter().cloned());
        }
        let mut services = BTreeMap::new();
        for name in &names {
            if let Some(s) = store.get(&format!("{SERVICES}{ns}/{name}"))? {
                let sel: BTreeMap<String, String> =
                    tug_api::from_value_ref(&s.object["spec"]["selector"]).unwrap_or_default();
                services.insert(name.clone(), sel);
            }
        }
        let ready_ips = |svc: Option<&String>| -> Result<Vec<String>, StoreError> {
            let Some(s) = svc else { return Ok(Vec::new()) };
            Ok(store
                .get(&format!("{ENDPOINTS}{ns}/{s}"))?
                .map(|e| {
                    e.object["subsets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
                        .filter_map(|a| a["ip"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default())
        };
        let canary = r.spec.strategy.canary.as_ref();
        let stable_endpoints = ready_ips(canary.and_then(|c| c.stable_service.as_ref()))?;
        let canary_endpoints = ready_ips(canary.and_then(|c| c.canary_service.as_ref()))?;
        let (run_items, _) = store.list(&format!("{RUNS}{ns}/"))?;
        let runs: Vec<AnalysisRun> = run_items
            .iter()
            .filter_map(|s| decode::<AnalysisRun>(s).ok())
            .filter(|x| controller_of(&x.metadata).is_some_and(|o| o.uid == uid))
            .collect();
        let mut templates = BTreeMap::new();
        let refs = analysis_refs(&r);
        for (cluster, name) in refs {
            let key = if cluster {
                format!("{CLUSTER_TEMPLATES}/{name}")
            } else {
                format!("{TEMPLATES}{ns}/{name}")
            };
            if let Some(t) = store.get(&key)? {
                if let Ok(spec) = tug_api::from_value_ref::<AnalysisTemplateSpec>(&t.object["spec"]) {
                    templates.insert((cluster, name), spec);
                }
            }
        }
        let world = World {
            rss: &rss,
            pods: &pods,
            services: &services,
            stable_endpoints: &stable_endpoints,
            canary_endpoints: &canary_endpoints,
            runs: &runs,
            templates: &templates,
            now: super::unix_now(),
        };
        let p = plan(&r, &world);
        apply(store, &r, &stored, &p)?;
        Ok(p.next)
    }
}

/// Every analysis template a Rollout names: (cluster scope, name).
fn analysis_refs(r: &Rollout) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut add = |a: &RolloutAnalysis| {
        for t in &a.templates {
            out.push((t.cluster_scope == Some(true), t.template_name.clone()));
        }
    };
    if let Some(c) = &r.spec.strategy.canary {
        for s in &c.steps {
            if let Some(a) = &s.analysis {
                add(a);
            }
        }
        if let Some(b) = &c.analysis {
            add(&RolloutAnalysis { templates: b.templates.clone(), args: b.args.clone() });
        }
    }
    if let Some(b) = &r.spec.strategy.blue_green {
        for a in b.pre_promotion_analysis.iter().chain(b.post_promotion_analysis.iter()) {
            add(a);
        }
    }
    out
}

/// The executor.
fn apply(store: &dyn Store, r: &Rollout, stored: &crate::store::Stored, p: &Plan) -> Result<(), StoreError> {
    let ns = r.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let rs_key = |name: &str| format!("{RS_PREFIX}{ns}/{name}");
    let involved = ("Rollout", API_VERSION, &r.metadata);
    let who = "rollouts-controller";
    for a in &p.actions {
        match a {
            Action::Adopt(name) => super::replicaset::set_owner(
                store,
                &rs_key(name),
                Some(controller_ref(API_VERSION, "Rollout", &r.metadata)),
            )?,
            Action::Release(name) => super::replicaset::set_owner(store, &rs_key(name), None)?,
            Action::Create(rs) => {
                super::deployment::create_replicaset(store, &rs_key(&rs.metadata.name), rs)?;
                let n = rs.spec.replicas.unwrap_or(0);
                super::event(
                    store,
                    involved,
                    "Normal",
                    "ScalingReplicaSet",
                    &format!(
                        "Scaled up ReplicaSet {} (revision {}) from 0 to {n}",
                        rs.metadata.name,
                        revision_of(rs)
                    ),
                    who,
                )?;
            }
            Action::Scale { name, replicas, annotations } => {
                if let Some(before) =
                    super::deployment::scale_replicaset(store, &rs_key(name), *replicas, annotations)?
                {
                    let dir = if i64::from(*replicas) > before { "up" } else { "down" };
                    super::event(
                        store,
                        involved,
                        "Normal",
                        "ScalingReplicaSet",
                        &format!("Scaled {dir} ReplicaSet {name} from {before} to {replicas}"),
                        who,
                    )?;
                }
            }
            Action::Delete(name) => match store.delete(&rs_key(name), None) {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            },
            Action::Service { name, hash, weight } => {
                let key = format!("{SERVICES}{ns}/{name}");
                let Some(s) = store.get(&key)? else { continue };
                let mut v = s.object.clone();
                if !v["spec"]["selector"].is_object() {
                    v["spec"]["selector"] = serde_json::json!({});
                }
                v["spec"]["selector"][HASH_LABEL] = hash.clone().into();
                if !v["metadata"]["annotations"].is_object() {
                    v["metadata"]["annotations"] = serde_json::json!({});
                }
                let a = v["metadata"]["annotations"].as_object_mut().expect("an object");
                a.insert(MANAGED_BY.into(), r.metadata.name.clone().into());
                match weight {
                    Some((w, canary)) => {
                        a.insert(CANARY_WEIGHT.into(), w.to_string().into());
                        a.insert(CANARY_SERVICE.into(), canary.clone().into());
                    }
                    None => {
                        a.remove(CANARY_WEIGHT);
                        a.remove(CANARY_SERVICE);
                    }
                }
                if v != s.object {
                    store.update(&key, v, Some(s.revision))?;
                }
            }
            Action::CreateRun(run) => {
                let mut v = serde_json::to_value(run.as_ref()).unwrap_or(Value::Null);
                crate::api::objects::on_create(&mut v, &uuid::Uuid::new_v4().to_string(), &crate::api::now());
                match store.create(&format!("{RUNS}{ns}/{}", run.metadata.name), v) {
                    Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                }
                super::event(
                    store,
                    involved,
                    "Normal",
                    "AnalysisRunRunning",
                    &format!("AnalysisRun '{}' Status New: 'Running' Previous: ''", run.metadata.name),
                    who,
                )?;
            }
            Action::TerminateRun(name) => {
                let key = format!("{RUNS}{ns}/{name}");
                if let Some(s) = store.get(&key)? {
                    let mut v = s.object.clone();
                    v["spec"]["terminate"] = true.into();
                    store.update(&key, v, Some(s.revision))?;
                }
            }
            Action::Event { type_, reason, message } => {
                super::event(store, involved, type_, reason, message, who)?
            }
        }
    }
    let mut obj = stored.object.clone();
    obj["status"] = serde_json::to_value(&p.status).unwrap_or(Value::Null);
    if obj != stored.object {
        store.update(&stored.key, obj, Some(stored.revision))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_api::kinds::rollouts::{BlueGreenStrategy, CanaryStrategy, RolloutPause};
    use tug_api::meta::IntOrString;

    fn rollout(image: &str, strategy: tug_api::kinds::rollouts::RolloutStrategy) -> Rollout {
        let mut r = Rollout::default();
        r.metadata.name = "web".into();
        r.metadata.namespace = Some("default".into());
        r.metadata.uid = Some("uid-web".into());
        r.metadata.generation = Some(1);
        r.spec.replicas = Some(4);
        r.spec.selector.match_labels.insert("app".into(), "web".into());
        r.spec.template.metadata.labels.insert("app".into(), "web".into());
        r.spec.template.spec.containers.push(tug_api::kinds::pod::Container {
            name: "web".into(),
            image: image.into(),
            ..Default::default()
        });
        r.spec.progress_deadline_seconds = Some(600);
        r.spec.strategy = strategy;
        r
    }

    fn canary_steps() -> tug_api::kinds::rollouts::RolloutStrategy {
        let w = |n| CanaryStep { set_weight: Some(n), ..Default::default() };
        let pause = |d: Option<i64>| CanaryStep {
            pause: Some(RolloutPause { duration: d.map(IntOrString::Int) }),
            ..Default::default()
        };
        tug_api::kinds::rollouts::RolloutStrategy {
            canary: Some(CanaryStrategy {
                stable_service: Some("web".into()),
                canary_service: Some("web-canary".into()),
                steps: vec![w(10), pause(None), w(50), pause(Some(10))],
                ..Default::default()
            }),
            blue_green: None,
        }
    }

    /// A cluster that follows plans at once: every ReplicaSet's pods exist and are available,
    /// Services select what they are told, the stable Service's Endpoints follow it.
    #[derive(Default)]
    struct Sim {
        rss: Vec<ReplicaSet>,
        services: BTreeMap<String, BTreeMap<String, String>>,
        weight: Option<(i32, String)>,
        runs: Vec<AnalysisRun>,
        events: Vec<String>,
    }

    impl Sim {
        fn pods(&self) -> Vec<Pod> {
            let mut out = Vec::new();
            for (i, rs) in self.rss.iter().enumerate() {
                for k in 0..replicas(rs) {
                    let mut p = Pod::default();
                    p.metadata.name = format!("{}-{k}", rs.metadata.name);
                    p.metadata.labels = rs.spec.template.metadata.labels.clone();
                    p.status = Some(tug_api::kinds::pod::PodStatus {
                        pod_ip: Some(format!("10.244.{i}.{k}")),
                        ..Default::default()
                    });
                    out.push(p);
                }
            }
            out
        }

        fn step(&mut self, r: &mut Rollout, now: u64) -> Plan {
            let pods = self.pods();
            let endpoints = |svc: &str| -> Vec<String> {
                self.services
                    .get(svc)
                    .map(|sel| {
                        pods.iter()
                            .filter(|p| sel.iter().all(|(k, v)| p.metadata.labels.get(k) == Some(v)))
                            .filter_map(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (stable_endpoints, canary_endpoints) = (endpoints("web"), endpoints("web-canary"));
            let templates = BTreeMap::new();
            let services = self.services.clone();
            let world = World {
                rss: &self.rss,
                pods: &pods,
                services: &services,
                stable_endpoints: &stable_endpoints,
                canary_endpoints: &canary_endpoints,
                runs: &self.runs,
                templates: &templates,
                now,
            };
            let p = plan(r, &world);
            for a in &p.actions {
                match a {
                    Action::Create(rs) => {
                        let mut rs = (**rs).clone();
                        rs.metadata.uid = Some(format!("uid-{}", rs.metadata.name));
                        self.rss.push(rs);
                    }
                    Action::Scale { name, replicas, annotations } => {
                        let rs = self.rss.iter_mut().find(|x| x.metadata.name == *name).unwrap();
                        rs.spec.replicas = Some(*replicas);
                        rs.metadata.annotations = annotations.clone();
                    }
                    Action::Delete(name) => self.rss.retain(|x| x.metadata.name != *name),
                    Action::Service { name, hash, weight } => {
                        let mut sel: BTreeMap<String, String> =
                            [("app".to_string(), "web".to_string())].into();
                        sel.insert(HASH_LABEL.into(), hash.clone());
                        self.services.insert(name.clone(), sel);
                        if name == "web" {
                            self.weight = weight.clone();
                        }
                    }
                    Action::Event { reason, .. } => self.events.push(reason.to_string()),
                    _ => {}
                }
            }
            // Everything scaled is available.
            for rs in &mut self.rss {
                let n = replicas(rs);
                rs.status = Some(tug_api::kinds::apps::ReplicaSetStatus {
                    replicas: n,
                    ready_replicas: Some(n),
                    available_replicas: Some(n),
                    ..Default::default()
                });
            }
            r.status = Some(p.status.clone());
            p
        }

        fn sizes(&self) -> Vec<(String, i32)> {
            self.rss.iter().map(|x| (x.metadata.labels[HASH_LABEL].clone(), replicas(x))).collect()
        }
    }

    #[test]
    fn a_canary_steps_through_weights_pauses_and_promotion() {
        let mut sim = Sim::default();
        let mut r = rollout("v1", canary_steps());
        let v1 = template_hash(&r.spec.template);
        for t in 0..3 {
            sim.step(&mut r, 100 + t);
        }
        let s = r.status.clone().unwrap();
        assert_eq!((s.phase.as_deref(), s.stable_rs.as_deref()), (Some("Healthy"), Some(v1.as_str())));
        assert_eq!(sim.sizes(), vec![(v1.clone(), 4)], "the first template goes straight to full size");
        assert_eq!(sim.services["web"][HASH_LABEL], v1);

        // A new template: one canary pod (10% of 4, rounded up) beside all four stable ones,
        // then the weight, then the pause.
        r.spec.template.spec.containers[0].image = "v2".into();
        r.metadata.generation = Some(2);
        let v2 = template_hash(&r.spec.template);
        let p = sim.step(&mut r, 200);
        assert!(p.actions.iter().any(|a| matches!(a, Action::Create(rs) if replicas(rs) == 1)), "{p:?}");
        assert_eq!(sim.weight, None, "no traffic before the canary is available");
        sim.step(&mut r, 201);
        assert_eq!(sim.weight, Some((10, "web-canary".into())));
        assert_eq!(sim.sizes(), vec![(v1.clone(), 4), (v2.clone(), 1)]);
        assert_eq!(sim.services["web"][HASH_LABEL], v1);
        assert_eq!(sim.services["web-canary"][HASH_LABEL], v2);
        let s = r.status.clone().unwrap();
        assert_eq!((s.phase.as_deref(), s.current_step_index), (Some("Paused"), Some(1)));
        assert_eq!(s.pause_conditions[0].reason, "CanaryPauseStep");
        // Still paused later.
        sim.step(&mut r, 5000);
        assert_eq!(r.status.as_ref().unwrap().phase.as_deref(), Some("Paused"));

        // promote: past the pause, to 50% (two canary pods first), then a 10 s pause.
        let s = r.status.as_mut().unwrap();
        s.current_step_index = Some(2);
        s.pause_conditions.clear();
        s.controller_pause = false;
        sim.step(&mut r, 5001);
        assert_eq!(sim.weight, Some((10, "web-canary".into())), "the weight waits for the pods");
        let p = sim.step(&mut r, 5002);
        assert_eq!(sim.weight, Some((50, "web-canary".into())));
        assert_eq!(p.next, Next::After(Duration::from_secs(10)));
        assert_eq!(r.status.as_ref().unwrap().phase.as_deref(), Some("Paused"));

        // After the pause: the canary to full size, all traffic to it and the stable
        // Service's selector moved; once its endpoints follow, weight 0 and a new stable.
        sim.step(&mut r, 5012);
        assert_eq!(sim.sizes(), vec![(v1.clone(), 4), (v2.clone(), 4)]);
        sim.step(&mut r, 5013);
        assert_eq!(sim.weight, Some((100, "web-canary".into())));
        assert_eq!(sim.services["web"][HASH_LABEL], v2);
        sim.step(&mut r, 5014);
        assert_eq!(sim.weight, None);
        assert_eq!(r.status.as_ref().unwrap().stable_rs.as_deref(), Some(v2.as_str()));
        assert!(sim.events.contains(&"RolloutCompleted".to_string()), "{:?}", sim.events);
        // The old stable ReplicaSet keeps its pods for the scale-down delay (30 s).
        let p = sim.step(&mut r, 5015);
        assert_eq!(sim.sizes(), vec![(v1.clone(), 4), (v2.clone(), 4)]);
        assert!(matches!(p.next, Next::After(d) if d <= Duration::from_secs(30)), "{:?}", p.next);
        sim.step(&mut r, 5045);
        assert_eq!(sim.sizes(), vec![(v1, 0), (v2, 4)]);
        assert_eq!(r.status.as_ref().unwrap().phase.as_deref(), Some("Healthy"));
    }

    #[test]
    fn an_abort_returns_traffic_at_once_and_a_crash_looping_canary_aborts() {
        let mut sim = Sim::default();
        let mut strategy = canary_steps();
        strategy.canary.as_mut().unwrap().abort_scale_down_delay_seconds = Some(0);
        let mut r = rollout("v1", strategy);
        for t in 0..2 {
            sim.step(&mut r, 100 + t);
        }
        r.spec.template.spec.containers[0].image = "v2".into();
        sim.step(&mut r, 200);
        sim.step(&mut r, 201);
        assert_eq!(sim.weight, Some((10, "web-canary".into())));
        // `tug rollout abort`.
        let s = r.status.as_mut().unwrap();
        s.abort = true;
        s.aborted_at = Some(timestamp(202));
        sim.step(&mut r, 202);
        assert_eq!(sim.weight, None);
        let v2 = template_hash(&r.spec.template);
        assert!(sim.sizes().contains(&(v2.clone(), 0)), "{:?}", sim.sizes());
        assert_eq!(r.status.as_ref().unwrap().phase.as_deref(), Some("Degraded"));
        // `retry`: the steps again from the first.
        let s = r.status.as_mut().unwrap();
        s.abort = false;
        s.current_step_index = Some(0);
        sim.step(&mut r, 203);
        sim.step(&mut r, 204);
        assert_eq!(sim.weight, Some((10, "web-canary".into())));

        // A canary pod crash-looping aborts by itself, with a Warning Event.
        let pods = sim.pods();
        let mut bad: Vec<Pod> = pods;
        let canary_rs = sim.rss.iter().find(|x| x.metadata.labels[HASH_LABEL] == v2).unwrap().clone();
        for p in bad.iter_mut().filter(|p| p.metadata.labels[HASH_LABEL] == v2) {
            p.metadata.owner_references = vec![controller_ref("apps/v1", "ReplicaSet", &canary_rs.metadata)];
            p.status.as_mut().unwrap().container_statuses = vec![
                serde_json::from_value(serde_json::json!({
                    "name": "web", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}))
                .unwrap(),
            ];
        }
        let templates = BTreeMap::new();
        let world = World {
            rss: &sim.rss,
            pods: &bad,
            services: &sim.services,
            stable_endpoints: &[],
            canary_endpoints: &[],
            runs: &[],
            templates: &templates,
            now: 205,
        };
        let p = plan(&r, &world);
        assert!(p.status.abort && p.status.phase.as_deref() == Some("Degraded"), "{:?}", p.status);
        assert!(
            p.status.message.as_deref().unwrap_or_default().contains("CrashLoopBackOff"),
            "{:?}",
            p.status.message
        );
        assert!(
            p.actions
                .iter()
                .any(|a| matches!(a, Action::Event { reason: "RolloutAborted", type_: "Warning", .. }))
        );
        assert!(
            p.actions
                .iter()
                .any(|a| matches!(a, Action::Service { name, weight: None, .. } if name == "web"))
        );
    }

    #[test]
    fn a_canary_without_services_splits_by_replicas_within_surge_and_unavailability() {
        let mut sim = Sim::default();
        let strategy = tug_api::kinds::rollouts::RolloutStrategy {
            canary: Some(CanaryStrategy {
                steps: vec![
                    CanaryStep { set_weight: Some(50), ..Default::default() },
                    CanaryStep { pause: Some(RolloutPause::default()), ..Default::default() },
                ],
                max_surge: Some(IntOrString::Int(1)),
                max_unavailable: Some(IntOrString::Int(0)),
                ..Default::default()
            }),
            blue_green: None,
        };
        let mut r = rollout("v1", strategy);
        let v1 = template_hash(&r.spec.template);
        for t in 0..2 {
            sim.step(&mut r, 100 + t);
        }
        r.spec.template.spec.containers[0].image = "v2".into();
        let v2 = template_hash(&r.spec.template);
        let mut seen = Vec::new();
        for t in 0..6 {
            sim.step(&mut r, 200 + t);
            let sizes = sim.sizes();
            // Never more than replicas + maxSurge, never fewer available than replicas.
            let total: i32 = sizes.iter().map(|(_, n)| n).sum();
            assert!((4..=5).contains(&total), "{sizes:?}");
            seen.push(sizes);
        }
        assert_eq!(seen.last().unwrap(), &vec![(v1, 2), (v2, 2)], "{seen:?}");
        assert_eq!(r.status.as_ref().unwrap().phase.as_deref(), Some("Paused"));
        assert!(sim.weight.is_none() && sim.services.is_empty());
    }

    #[test]
    fn blue_green_waits_for_promote_then_switches_the_active_service_in_one_write() {
        let mut sim = Sim::default();
        let strategy = tug_api::kinds::rollouts::RolloutStrategy {
            canary: None,
            blue_green: Some(BlueGreenStrategy {
                active_service: "web".into(),
                preview_service: Some("web-preview".into()),
                auto_promotion_enabled: Some(false),
                scale_down_delay_seconds: Some(5),
                ..Default::default()
            }),
        };
        let mut r = rollout("v1", strategy);
        let v1 = template_hash(&r.spec.template);
        for t in 0..2 {
            sim.step(&mut r, 100 + t);
        }
        assert_eq!(sim.services["web"][HASH_LABEL], v1);
        r.spec.template.spec.containers[0].image = "v2".into();
        let v2 = template_hash(&r.spec.template);
        sim.step(&mut r, 200);
        sim.step(&mut r, 201);
        assert_eq!(sim.sizes(), vec![(v1.clone(), 4), (v2.clone(), 4)]);
        assert_eq!(
            (sim.services["web"][HASH_LABEL].as_str(), sim.services["web-preview"][HASH_LABEL].as_str()),
            (v1.as_str(), v2.as_str())
        );
        assert_eq!(r.status.as_ref().unwrap().phase.as_deref(), Some("Paused"));
        // promote clears the pause condition.
        r.status.as_mut().unwrap().pause_conditions.clear();
        let p = sim.step(&mut r, 202);
        let switches: Vec<&Action> =
            p.actions.iter().filter(|a| matches!(a, Action::Service { name, .. } if name == "web")).collect();
        assert_eq!(switches, vec![&Action::Service { name: "web".into(), hash: v2.clone(), weight: None }]);
        assert_eq!(r.status.as_ref().unwrap().stable_rs.as_deref(), Some(v2.as_str()));
        sim.step(&mut r, 203);
        assert_eq!(sim.sizes(), vec![(v1.clone(), 4), (v2.clone(), 4)], "the old side stays for the delay");
        sim.step(&mut r, 208);
        assert_eq!(sim.sizes(), vec![(v1, 0), (v2, 4)]);
        assert_eq!(r.status.as_ref().unwrap().phase.as_deref(), Some("Healthy"));
    }
}
