//! Volume placement (Kubernetes' VolumeBinding filter, for pre-bound volumes): a pod using
//! a PersistentVolumeClaim waits until the claim is bound, and then may only go where the
//! volume is — its `nodeAffinity`, ANDed into the pod's own required node affinity so the
//! node filters apply it. Pure.

use std::collections::HashMap;
use tug_api::kinds::pod::{Affinity, NodeAffinity, NodeSelectorSpec, NodeSelectorTerm, Pod};
use tug_api::kinds::storage::{PersistentVolume, PersistentVolumeClaim};

/// Claims by `namespace/name`, volumes by name.
#[derive(Debug, Default)]
pub struct Volumes {
    pub claims: HashMap<String, PersistentVolumeClaim>,
    pub volumes: HashMap<String, PersistentVolume>,
}

/// Every term of `a` ANDed with every term of `b` (each is an OR of terms).
fn and(a: &[NodeSelectorTerm], b: &[NodeSelectorTerm]) -> Vec<NodeSelectorTerm> {
    if a.is_empty() {
        return b.to_vec();
    }
    a.iter()
        .flat_map(|x| {
            b.iter().map(move |y| NodeSelectorTerm {
                match_expressions: x.match_expressions.iter().chain(&y.match_expressions).cloned().collect(),
                match_fields: x.match_fields.iter().chain(&y.match_fields).cloned().collect(),
            })
        })
        .collect()
}

/// The pod as the node filters should see it: `Ok(None)` when it uses no claims (nothing to
/// add), `Ok(Some(pod))` with the volumes' node affinity added, or `Err` with the reason it
/// cannot be placed at all yet.
pub fn constrain(pod: &Pod, v: &Volumes) -> Result<Option<Pod>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut terms: Option<Vec<NodeSelectorTerm>> = None;
    for vol in &pod.spec.volumes {
        let Some((claim_name, _)) = vol.claim(&pod.metadata.name) else { continue };
        let claim = v
            .claims
            .get(&format!("{ns}/{claim_name}"))
            .ok_or_else(|| format!("persistentvolumeclaim {claim_name:?} not found"))?;
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim {claim_name:?} is being deleted"));
        }
        // An ephemeral volume's claim must be the pod's own, not one that happens to share
        // its name.
        if vol.ephemeral.is_some()
            && !claim.metadata.owner_references.iter().any(|o| Some(&o.uid) == pod.metadata.uid.as_ref())
        {
            return Err(format!("persistentvolumeclaim {claim_name:?} was not created for the pod"));
        }
        let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let pv = claim.spec.volume_name.as_deref().filter(|_| bound).and_then(|n| v.volumes.get(n));
        let Some(pv) = pv else {
            return Err("pod has unbound immediate PersistentVolumeClaims".into());
        };
        if let Some(req) = pv.spec.node_affinity.as_ref().and_then(|a| a.required.as_ref()) {
            let cur = terms.take().unwrap_or_default();
            terms = Some(and(&cur, &req.node_selector_terms));
        }
    }
    let Some(extra) = terms else {
        return Ok(pod.spec.volumes.iter().any(|v| v.claim("").is_some()).then(|| pod.clone()));
    };
    let mut out = pod.clone();
    let affinity = out.spec.affinity.get_or_insert_with(Affinity::default);
    let node = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    let own = node.required.take().map(|r| r.node_selector_terms).unwrap_or_default();
    node.required = Some(NodeSelectorSpec { node_selector_terms: and(&own, &extra) });
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(claims: &[&str]) -> Pod {
        let vols: Vec<_> =
            claims.iter().map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}})).collect();
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "x"}], "volumes": vols}}))
        .unwrap()
    }

    fn volumes(bound: bool) -> Volumes {
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "default"},
            "spec": {"volumeName": "pv1", "accessModes": ["ReadWriteOnce"]},
            "status": {"phase": if bound { "Bound" } else { "Pending" }}
        }))
        .unwrap();
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pv1"},
            "spec": {"local": {"path": "/d"}, "nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n2"]}]}]}}}
        }))
        .unwrap();
        Volumes {
            claims: [("default/data".to_string(), claim)].into(),
            volumes: [("pv1".to_string(), pv)].into(),
        }
    }

    #[test]
    fn claims_pin_the_pod_to_their_volume_or_hold_it_back() {
        assert_eq!(constrain(&pod(&[]), &volumes(true)), Ok(None));
        assert_eq!(
            constrain(&pod(&["nope"]), &volumes(true)),
            Err("persistentvolumeclaim \"nope\" not found".into())
        );
        assert_eq!(
            constrain(&pod(&["data"]), &volumes(false)),
            Err("pod has unbound immediate PersistentVolumeClaims".into())
        );
        let p = constrain(&pod(&["data"]), &volumes(true)).unwrap().unwrap();
        let terms = &p.spec.affinity.unwrap().node_affinity.unwrap().required.unwrap().node_selector_terms;
        assert_eq!(terms.len(), 1);
        assert_eq!(terms[0].match_expressions[0].values, ["n2"]);
    }

    #[test]
    fn the_volume_is_anded_with_the_pods_own_affinity() {
        let mut p = pod(&["data"]);
        p.spec.affinity =
            serde_json::from_value(json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}))
            .unwrap();
        let p = constrain(&p, &volumes(true)).unwrap().unwrap();
        let terms = &p.spec.affinity.unwrap().node_affinity.unwrap().required.unwrap().node_selector_terms;
        assert_eq!(terms.len(), 2, "each of the pod's terms, with the volume's");
        assert!(terms.iter().all(|t| t.match_expressions.len() == 2));
    }
}
