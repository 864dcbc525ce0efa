//! Disruption: every PodDisruptionBudget's status — the pods it expects, how many must stay
//! healthy, how many are, and so how many voluntary disruptions it allows now — as
//! Kubernetes' disruption controller keeps it. The eviction API (`pods/NAME/eviction`)
//! spends `disruptionsAllowed` one pod at a time and notes the pod in `disruptedPods`, so an
//! evicted pod that has not gone yet is not counted healthy twice.
//!
//! [`plan`] is pure: budget, pods and the scale of their controllers in, status out.

use super::runtime::{Controller, Next};
use super::{condition, decode, set_condition, timestamp, unix_now};
use crate::store::{Event, Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use tug_api::kinds::pod::Pod;
use tug_api::kinds::policy::{PdbStatus, PodDisruptionBudget};
use tug_api::meta::IntOrString;

pub const PREFIX: &str = "policy/poddisruptionbudgets/";
const PODS: &str = "/pods/";
const REPLICASETS: &str = "apps/replicasets/";
const DEPLOYMENTS: &str = "apps/deployments/";

/// How long an evicted pod stays in `disruptedPods` waiting to go (Kubernetes' 2 minutes).
pub const DELETION_TIMEOUT_SECS: u64 = 120;

/// The pods a budget covers: in its namespace, matching its selector (a missing selector
/// covers none, an empty one all), not finished.
pub fn covered<'a, P: std::borrow::Borrow<Pod>>(pdb: &PodDisruptionBudget, pods: &'a [P]) -> Vec<&'a Pod> {
    let Some(sel) = pdb.spec.selector.as_ref().and_then(|s| s.to_selector("spec.selector").ok()) else {
        return Vec::new();
    };
    let ns = pdb.metadata.namespace.as_deref().unwrap_or("default");
    pods.iter()
        .map(std::borrow::Borrow::borrow)
        .filter(|p: &&Pod| {
            p.metadata.namespace.as_deref().unwrap_or("default") == ns && sel.matches(&p.metadata.labels)
        })
        .filter(|p| {
            !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
        })
        .collect()
}

/// Whether a pod counts as healthy: Ready and not being deleted.
pub fn healthy(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && super::ready_since(p).is_some()
}

/// The budget's status now. `scale` gives the replicas of each pod's controller (a
/// Deployment's for its ReplicaSets' pods), keyed by the controller's uid; pods without one
/// count as one each.
pub fn plan<P: std::borrow::Borrow<Pod>>(
    pdb: &PodDisruptionBudget,
    pods: &[P],
    scale: &dyn Fn(&Pod) -> Option<(String, i32)>,
    now: u64,
) -> Result<PdbStatus, String> {
    let pods = covered(pdb, pods);
    let expected_scale = || -> i64 {
        let mut controllers: HashMap<String, i32> = HashMap::new();
        let mut unmanaged = 0i64;
        for p in &pods {
            match scale(p) {
                Some((uid, n)) => {
                    controllers.insert(uid, n);
                }
                None => unmanaged += 1,
            }
        }
        controllers.values().map(|n| i64::from(*n)).sum::<i64>() + unmanaged
    };
    let (expected, desired) = match (&pdb.spec.max_unavailable, &pdb.spec.min_available) {
        (Some(max), _) => {
            let expected = expected_scale();
            let max = max.scaled(expected, true)?;
            (expected, (expected - max).max(0))
        }
        (None, Some(IntOrString::Int(n))) => (pods.len() as i64, *n),
        (None, Some(min)) => {
            let expected = expected_scale();
            (expected, min.scaled(expected, true)?)
        }
        (None, None) => (pods.len() as i64, 0),
    };
    // Evicted pods still here are not healthy; the entries of pods gone (or evicted long
    // ago) are dropped.
    let old = pdb.status.as_ref().map(|s| s.disrupted_pods.clone()).unwrap_or_default();
    let mut disrupted = BTreeMap::new();
    for (name, at) in old {
        let Some(p) = pods.iter().find(|p| p.metadata.name == name) else { continue };
        let at_secs = super::parse_time(&at).unwrap_or(0);
        if p.metadata.deletion_timestamp.is_none() && at_secs + DELETION_TIMEOUT_SECS > now {
            disrupted.insert(name, at);
        }
    }
    let current =
        pods.iter().filter(|p| healthy(p) && !disrupted.contains_key(&p.metadata.name)).count() as i64;
    let allowed = if expected <= 0 { 0 } else { (current - desired).max(0) };
    let narrow = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
    let mut status = PdbStatus {
        observed_generation: pdb.metadata.generation,
        disrupted_pods: disrupted,
        disruptions_allowed: narrow(allowed),
        current_healthy: narrow(current),
        desired_healthy: narrow(desired),
        expected_pods: narrow(expected),
        conditions: pdb.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
    };
    let c = if allowed > 0 {
        condition("DisruptionAllowed", "True", "SufficientPods", "")
    } else {
        condition("DisruptionAllowed", "False", "InsufficientPods", "")
    };
    let mut c = c;
    c.message = None;
    c.observed_generation = pdb.metadata.generation;
    // The condition's own update time is not kept: it would make every pass a write.
    let was = status.conditions.iter().find(|x| x.type_ == c.type_).cloned();
    set_condition(&mut status.conditions, c, &timestamp(now));
    for x in &mut status.conditions {
        x.last_update_time = None;
        if let Some(w) = was.as_ref().filter(|w| w.status == x.status && w.type_ == x.type_) {
            x.last_transition_time = w.last_transition_time.clone();
        }
    }
    Ok(status)
}

/// The reconciler.
pub struct Disruption;

impl Controller for Disruption {
    fn name(&self) -> &'static str {
        "disruption"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec![PODS, REPLICASETS, DEPLOYMENTS]
    }

    fn keys_for(&self, store: &dyn Store, e: &Event) -> Vec<String> {
        // Any budget of the namespace may cover the pod (or have, before a relabel).
        let ns = e.object["metadata"]["namespace"].as_str().unwrap_or("default");
        let Ok((pdbs, _)) = store.list(&format!("{PREFIX}{ns}/")) else { return Vec::new() };
        pdbs.into_iter().map(|s| s.key).collect()
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(stored) = store.get(key)? else { return Ok(Next::Done) };
        let pdb: PodDisruptionBudget = decode(&stored)?;
        let ns = pdb.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let pods = super::pods_in(store, &ns)?;
        let (rs, _) = store.list(&format!("{REPLICASETS}{ns}/"))?;
        let (deploys, _) = store.list(&format!("{DEPLOYMENTS}{ns}/"))?;
        let scale_of =
            |objs: &[crate::store::Stored], name: &str| -> Option<(String, i32, serde_json::Value)> {
                let o = objs.iter().find(|s| s.object["metadata"]["name"].as_str() == Some(name))?;
                let uid = o.object["metadata"]["uid"].as_str().unwrap_or(name).to_string();
                let n = o.object["spec"]["replicas"].as_i64().unwrap_or(1);
                Some((uid, i32::try_from(n).unwrap_or(0), o.object["metadata"].clone()))
            };
        let scale = |p: &Pod| -> Option<(String, i32)> {
            let owner = super::controller_of(&p.metadata)?;
            if owner.kind != "ReplicaSet" {
                return None;
            }
            let (uid, n, meta) = scale_of(&rs, &owner.name)?;
            let deploy = meta["ownerReferences"]
                .as_array()
                .and_then(|o| o.iter().find(|o| o["controller"] == true && o["kind"] == "Deployment"))
                .and_then(|o| o["name"].as_str())
                .and_then(|d| scale_of(&deploys, d));
            Some(deploy.map_or((uid, n), |(u, n, _)| (u, n)))
        };
        let now = unix_now();
        let status = match plan(&pdb, &pods, &scale, now) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("tug-scheduler: disruption: {key}: {e}");
                return Ok(Next::Done);
            }
        };
        // Disrupted pods leave the list after the timeout: look again then.
        let next = status
            .disrupted_pods
            .values()
            .filter_map(|t| super::parse_time(t))
            .map(|t| (t + DELETION_TIMEOUT_SECS).saturating_sub(now) + 1)
            .min()
            .map_or(Next::Done, |s| Next::After(std::time::Duration::from_secs(s)));
        if pdb.status.as_ref() != Some(&status) {
            let mut v = stored.object.clone();
            v["status"] = serde_json::to_value(&status).unwrap_or_default();
            store.update(key, v, Some(stored.revision))?;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::replicaset::tests::pod;
    use tug_api::labels::LabelSelector;

    fn budget(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
        let mut b = PodDisruptionBudget::default();
        b.metadata.name = "web".into();
        b.metadata.namespace = Some("default".into());
        b.metadata.generation = Some(1);
        let mut sel = LabelSelector::default();
        sel.match_labels.insert("app".into(), "web".into());
        b.spec.selector = Some(sel);
        b.spec.min_available = min;
        b.spec.max_unavailable = max;
        b
    }

    #[test]
    fn budgets_count_expected_desired_and_healthy_pods() {
        let pods = vec![
            pod("a", None, 1, true, Some(1)),
            pod("b", None, 1, true, Some(1)),
            pod("c", None, 1, true, None),
        ];
        let three = |_: &Pod| Some(("rs".to_string(), 3));
        // minAvailable 1 of 3 pods, 2 healthy: one may go.
        let s = plan(&budget(Some(IntOrString::Int(1)), None), &pods, &three, 100).unwrap();
        assert_eq!(
            (s.expected_pods, s.desired_healthy, s.current_healthy, s.disruptions_allowed),
            (3, 1, 2, 1)
        );
        assert_eq!(s.conditions[0].reason.as_deref(), Some("SufficientPods"));
        // maxUnavailable 1 of the controller's 3: 2 desired, 2 healthy, none may go.
        let s = plan(&budget(None, Some(IntOrString::Int(1))), &pods, &three, 100).unwrap();
        assert_eq!((s.expected_pods, s.desired_healthy, s.disruptions_allowed), (3, 2, 0));
        assert_eq!(s.conditions[0].reason.as_deref(), Some("InsufficientPods"));
        // 50% of 3 rounds up to 2.
        let s = plan(&budget(Some(IntOrString::String("50%".into())), None), &pods, &three, 100).unwrap();
        assert_eq!(s.desired_healthy, 2);
        // An evicted pod not yet gone is not healthy, until the timeout drops it.
        let mut b = budget(Some(IntOrString::Int(1)), None);
        let mut st = PdbStatus::default();
        st.disrupted_pods.insert("a".into(), timestamp(100));
        b.status = Some(st);
        let s = plan(&b, &pods, &three, 110).unwrap();
        assert_eq!((s.current_healthy, s.disruptions_allowed, s.disrupted_pods.len()), (1, 0, 1));
        let s = plan(&b, &pods, &three, 100 + DELETION_TIMEOUT_SECS).unwrap();
        assert_eq!((s.current_healthy, s.disrupted_pods.len()), (2, 0));
        // No selector: no pods, nothing allowed.
        let mut none = budget(Some(IntOrString::Int(0)), None);
        none.spec.selector = None;
        assert_eq!(plan(&none, &pods, &three, 100).unwrap().disruptions_allowed, 0);
    }
}
