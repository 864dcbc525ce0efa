//! The eviction subresource (`POST pods/NAME/eviction`, what `kubectl drain` and `tug drain`
//! send): a pod is deleted only if the PodDisruptionBudget covering it allows one more
//! disruption, which the eviction spends (`disruptionsAllowed - 1`, the pod noted in
//! `disruptedPods`) in the same optimistic write that checks it. Refusals are Kubernetes':
//! 429 TooManyRequests with the budget's numbers, which drains retry.
//!
//! [`decide`] is pure; [`evict`] reads the store, decides, writes the budget, deletes.

use crate::controllers::disruption;
use crate::store::{Store, StoreError};
use tug_api::kinds::pod::Pod;
use tug_api::kinds::policy::{ALWAYS_ALLOW, PodDisruptionBudget};
use tug_api::status::Status;
use tug_api::status::{StatusCause, StatusDetails};

/// What an eviction may do.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Delete the pod; no budget to spend.
    Delete,
    /// Spend one of the budget's disruptions (the budget as it must be written), then delete.
    Spend(Box<PodDisruptionBudget>),
    Refuse(Box<Status>),
}

const VIOLATES: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

fn too_many(cause: String) -> Status {
    let mut s = Status::new(429, "TooManyRequests", VIOLATES);
    s.details = Some(StatusDetails {
        causes: vec![StatusCause { reason: "DisruptionBudget".into(), message: cause, field: String::new() }],
        ..Default::default()
    });
    s
}

/// Kubernetes' eviction rules for `pod` under the namespace's `budgets` at `now`.
pub fn decide(pod: &Pod, budgets: &[PodDisruptionBudget], now: &str) -> Decision {
    // A pod already going, finished, or not yet running disrupts nothing.
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    if pod.metadata.deletion_timestamp.is_some() || matches!(phase, "Succeeded" | "Failed" | "Pending") {
        return Decision::Delete;
    }
    let covering: Vec<&PodDisruptionBudget> =
        budgets.iter().filter(|b| !disruption::covered(b, std::slice::from_ref(pod)).is_empty()).collect();
    let pdb = match covering.as_slice() {
        [] => return Decision::Delete,
        [one] => *one,
        _ => {
            return Decision::Refuse(Box::new(Status::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            )));
        }
    };
    let st = pdb.status.clone().unwrap_or_default();
    // A pod that is not ready may go without spending anything when the budget allows it.
    if !disruption::healthy(pod) {
        let policy = pdb.spec.unhealthy_pod_eviction_policy.as_deref();
        if policy == Some(ALWAYS_ALLOW)
            || (st.current_healthy >= st.desired_healthy && st.desired_healthy > 0)
        {
            return Decision::Delete;
        }
    }
    let name = &pdb.metadata.name;
    if st.observed_generation.unwrap_or(0) < pdb.metadata.generation.unwrap_or(0) || pdb.status.is_none() {
        return Decision::Refuse(Box::new(too_many(format!(
            "The disruption budget {name} is still being processed by the server."
        ))));
    }
    if st.disruptions_allowed < 0 {
        return Decision::Refuse(Box::new(Status::forbidden("pdb disruptions allowed is negative")));
    }
    if st.disrupted_pods.len() > 2000 {
        return Decision::Refuse(Box::new(Status::forbidden(
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        )));
    }
    if st.disruptions_allowed == 0 {
        return Decision::Refuse(Box::new(too_many(format!(
            "The disruption budget {name} needs {} healthy pods and has {} currently",
            st.desired_healthy, st.current_healthy
        ))));
    }
    let mut spent = pdb.clone();
    let s = spent.status.get_or_insert_with(Default::default);
    s.disruptions_allowed -= 1;
    s.disrupted_pods.insert(pod.metadata.name.clone(), now.to_string());
    Decision::Spend(Box::new(spent))
}

/// Checks the budgets and spends one (unless `dry`); the caller deletes the pod when this
/// returns Ok. A budget written meanwhile is read again.
pub fn evict(store: &dyn Store, ns: &str, name: &str, dry: bool) -> Result<(), Status> {
    let err = |e: StoreError| Status::internal(e.to_string());
    for _ in 0..5 {
        let Some(stored) = store.get(&format!("/pods/{ns}/{name}")).map_err(err)? else {
            return Err(Status::not_found("pods", name));
        };
        let pod: Pod = serde_json::from_value(stored.object).map_err(|e| Status::internal(e.to_string()))?;
        let (items, _) = store.list(&format!("{}{ns}/", disruption::PREFIX)).map_err(err)?;
        let budgets: Vec<(PodDisruptionBudget, u64, String)> = items
            .into_iter()
            .filter_map(|s| Some((serde_json::from_value(s.object).ok()?, s.revision, s.key)))
            .collect();
        let plain: Vec<PodDisruptionBudget> = budgets.iter().map(|b| b.0.clone()).collect();
        match decide(&pod, &plain, &super::now()) {
            Decision::Delete => return Ok(()),
            Decision::Refuse(s) => return Err(*s),
            Decision::Spend(_) if dry => return Ok(()),
            Decision::Spend(pdb) => {
                let Some((_, rev, key)) = budgets.iter().find(|b| b.0.metadata.name == pdb.metadata.name)
                else {
                    continue;
                };
                let v = serde_json::to_value(&*pdb).map_err(|e| Status::internal(e.to_string()))?;
                match store.update(key, v, Some(*rev)) {
                    Ok(_) => return Ok(()),
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(err(e)),
                }
            }
        }
    }
    Err(Status::new(
        409,
        "Conflict",
        format!("the disruption budget of pod {name:?} kept changing; try again"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::replicaset::tests::pod;
    use tug_api::kinds::policy::PdbStatus;
    use tug_api::labels::LabelSelector;
    use tug_api::meta::IntOrString;

    fn budget(allowed: i32, current: i32, desired: i32) -> PodDisruptionBudget {
        let mut b = PodDisruptionBudget::default();
        b.metadata.name = "web".into();
        b.metadata.namespace = Some("default".into());
        b.metadata.generation = Some(1);
        let mut sel = LabelSelector::default();
        sel.match_labels.insert("app".into(), "web".into());
        b.spec.selector = Some(sel);
        b.spec.min_available = Some(IntOrString::Int(desired.into()));
        b.status = Some(PdbStatus {
            observed_generation: Some(1),
            disruptions_allowed: allowed,
            current_healthy: current,
            desired_healthy: desired,
            expected_pods: 3,
            ..Default::default()
        });
        b
    }

    #[test]
    fn evictions_spend_the_budget_and_are_refused_when_it_is_spent() {
        let ready = pod("a", None, 1, true, Some(1));
        let Decision::Spend(b) = decide(&ready, &[budget(1, 3, 2)], "t") else { panic!("spend") };
        let s = b.status.unwrap();
        assert_eq!((s.disruptions_allowed, s.disrupted_pods.get("a").map(String::as_str)), (0, Some("t")));
        let Decision::Refuse(s) = decide(&ready, &[budget(0, 2, 2)], "t") else { panic!("refuse") };
        assert_eq!((s.code, s.message.as_str()), (429, VIOLATES));
        assert_eq!(
            s.details.unwrap().causes[0].message,
            "The disruption budget web needs 2 healthy pods and has 2 currently"
        );
        // Not covered, pending, or two budgets.
        let mut other = ready.clone();
        other.metadata.labels.insert("app".into(), "db".into());
        assert_eq!(decide(&other, &[budget(0, 2, 2)], "t"), Decision::Delete);
        let pending = pod("p", None, 1, false, None);
        assert_eq!(decide(&pending, &[budget(0, 2, 2)], "t"), Decision::Delete);
        let Decision::Refuse(s) = decide(&ready, &[budget(1, 3, 2), budget(1, 3, 2)], "t") else { panic!() };
        assert_eq!(s.code, 500);
        // A running pod that is not ready goes free while the budget holds.
        let unready = pod("u", None, 1, true, None);
        assert_eq!(decide(&unready, &[budget(0, 2, 2)], "t"), Decision::Delete);
        // A budget the controller has not seen yet refuses.
        let mut fresh = budget(1, 3, 2);
        fresh.metadata.generation = Some(2);
        assert!(matches!(decide(&ready, &[fresh], "t"), Decision::Refuse(s) if s.code == 429));
    }
}
