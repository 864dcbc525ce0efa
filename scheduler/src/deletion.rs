//! Graceful deletion, as Kubernetes' registry does it (`BeforeDelete` and the pod strategy's
//! `CheckGracefulDelete`).
//!
//! - A Pod bound to a node is not removed by a delete: it is marked (`deletionTimestamp` =
//!   now + grace, `deletionGracePeriodSeconds` = grace) and stays, `Terminating`, until its
//!   node's agent has stopped its containers and deletes it again with grace 0. A pod no node
//!   runs (unbound, or already Succeeded/Failed) goes at once.
//! - An object with `metadata.finalizers` is marked the same way (grace 0) and goes with the
//!   update that removes its last finalizer ([`after_update`]).
//! - Any other object goes at once.
//!
//! [`plan`] is the pure decision; [`delete`] applies it to the store (the API's DELETE and
//! every controller that deletes pods use it, so a ReplicaSet's scale-down, a Job's cleanup,
//! a namespace's deletion or a preemption all give the pod its grace period).

use crate::store::{Store, StoreError, Stored};
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// Kubernetes' `terminationGracePeriodSeconds` default.
pub const DEFAULT_POD_GRACE: i64 = 30;

/// What a delete does to an object.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Gone now.
    Remove,
    /// Kept and marked: write this object.
    Mark(Value),
    /// Already marked as asked (its finalizers or its node have yet to finish): nothing to do.
    Pending,
}

/// The grace period a pod's delete gets: the request's (`gracePeriodSeconds`), else the pod's
/// own; 0 for a pod no node runs.
fn pod_grace(obj: &Value, requested: Option<i64>) -> i64 {
    let bound = obj["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
    let finished = matches!(obj["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
    if !bound || finished {
        return 0;
    }
    match requested {
        Some(g) if g >= 0 => g,
        _ => obj["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(DEFAULT_POD_GRACE).max(0),
    }
}

/// Whether the object carries finalizers that must run before it goes.
pub fn has_finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty())
}

/// Whether the object is being deleted.
pub fn terminating(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

/// What a delete with `requested` grace (None: the object's own) does to `obj` at `now`.
pub fn plan(obj: &Value, requested: Option<i64>, now: SystemTime) -> Plan {
    let grace = if obj["kind"] == "Pod" { pod_grace(obj, requested) } else { 0 };
    let finalizers = has_finalizers(obj);
    if terminating(obj) {
        // Marked already: only a shorter grace period changes anything.
        let current = obj["metadata"]["deletionGracePeriodSeconds"].as_i64().unwrap_or(0);
        if grace >= current {
            return if current == 0 && !finalizers { Plan::Remove } else { Plan::Pending };
        }
    }
    if grace == 0 && !finalizers {
        return Plan::Remove;
    }
    let mut marked = obj.clone();
    let at = now + Duration::from_secs(u64::try_from(grace).unwrap_or(0));
    marked["metadata"]["deletionTimestamp"] = humantime::format_rfc3339_seconds(at).to_string().into();
    marked["metadata"]["deletionGracePeriodSeconds"] = grace.into();
    if !terminating(obj) {
        let generation = obj["metadata"]["generation"].as_i64().unwrap_or(0);
        marked["metadata"]["generation"] = (generation + 1).into();
    }
    Plan::Mark(marked)
}

/// Whether an update leaves the object to be removed rather than written: marked deleted,
/// its last finalizer gone, and no grace period left to wait for (Kubernetes'
/// `deleteAfterUpdate`).
pub fn after_update(obj: &Value) -> bool {
    terminating(obj)
        && !has_finalizers(obj)
        && obj["metadata"]["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0
}

/// What [`delete`] did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Removed; the object as it was.
    Removed(Stored),
    /// Marked (or already marked); the object as it is now.
    Marked(Stored),
}

impl Outcome {
    pub fn stored(&self) -> &Stored {
        match self {
            Outcome::Removed(s) | Outcome::Marked(s) => s,
        }
    }
}

/// A delete's `preconditions`: the object must still be the one meant.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Preconditions {
    /// Kubernetes' message when `s` is not the object meant.
    pub fn check(&self, s: &Stored) -> Result<(), String> {
        if let Some(uid) = &self.uid {
            let have = s.object["metadata"]["uid"].as_str().unwrap_or_default();
            if uid != have {
                return Err(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                ));
            }
        }
        if let Some(rv) = &self.resource_version {
            if *rv != s.revision.to_string() {
                return Err(format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    s.revision
                ));
            }
        }
        Ok(())
    }
}

/// Why [`delete`] did nothing.
#[derive(Debug)]
pub enum Refused {
    Store(StoreError),
    /// A precondition failed (Kubernetes answers 409).
    Precondition(String),
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Refused {
        Refused::Store(e)
    }
}

/// Deletes the object at `key` gracefully, retrying when another writer changed it meanwhile.
pub fn delete(
    store: &dyn Store,
    key: &str,
    requested: Option<i64>,
    pre: &Preconditions,
) -> Result<Outcome, Refused> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = store.get(key)?.ok_or_else(|| StoreError::NotFound(key.to_string()))?;
        pre.check(&current).map_err(Refused::Precondition)?;
        let result = match plan(&current.object, requested, SystemTime::now()) {
            Plan::Remove => store.delete(key, Some(current.revision)).map(Outcome::Removed),
            Plan::Mark(obj) => store.update(key, obj, Some(current.revision)).map(Outcome::Marked),
            Plan::Pending => return Ok(Outcome::Marked(current)),
        };
        match result {
            Err(StoreError::Conflict { .. }) if attempt < 10 => continue,
            r => return Ok(r?),
        }
    }
}

/// [`delete`] by a controller: gone or going is what it wants, and so is an object already
/// gone or replaced (a failed precondition); only a store error is one.
pub fn delete_if_there(
    store: &dyn Store,
    key: &str,
    requested: Option<i64>,
    pre: &Preconditions,
) -> Result<(), StoreError> {
    match delete(store, key, requested, pre) {
        Ok(_) | Err(Refused::Store(StoreError::NotFound(_)) | Refused::Precondition(_)) => Ok(()),
        Err(Refused::Store(e)) => Err(e),
    }
}

/// [`delete_if_there`] with the object's own grace and no precondition.
pub fn delete_quietly(store: &dyn Store, key: &str) -> Result<(), StoreError> {
    delete_if_there(store, key, None, &Preconditions::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(node: &str, phase: &str, grace: Option<i64>) -> Value {
        let mut p = json!({"kind": "Pod", "metadata": {"name": "p", "generation": 1}, "spec": {"nodeName": node}, "status": {"phase": phase}});
        if let Some(g) = grace {
            p["spec"]["terminationGracePeriodSeconds"] = g.into();
        }
        p
    }

    fn t0() -> SystemTime {
        humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap()
    }

    fn marked(p: &Plan) -> &Value {
        match p {
            Plan::Mark(v) => v,
            other => panic!("not marked: {other:?}"),
        }
    }

    #[test]
    fn a_running_pod_is_marked_with_its_grace_period() {
        let p = plan(&pod("n1", "Running", None), None, t0());
        let m = marked(&p);
        assert_eq!(m["metadata"]["deletionTimestamp"], "2026-01-01T00:00:30Z");
        assert_eq!(m["metadata"]["deletionGracePeriodSeconds"], 30);
        assert_eq!(m["metadata"]["generation"], 2);
        let own = plan(&pod("n1", "Running", Some(5)), None, t0());
        assert_eq!(marked(&own)["metadata"]["deletionGracePeriodSeconds"], 5);
        let asked = plan(&pod("n1", "Running", Some(5)), Some(2), t0());
        assert_eq!(marked(&asked)["metadata"]["deletionTimestamp"], "2026-01-01T00:00:02Z");
    }

    #[test]
    fn pods_no_node_runs_and_forced_deletes_go_at_once() {
        assert_eq!(plan(&pod("", "Pending", None), None, t0()), Plan::Remove);
        assert_eq!(plan(&pod("n1", "Succeeded", None), None, t0()), Plan::Remove);
        assert_eq!(plan(&pod("n1", "Failed", None), None, t0()), Plan::Remove);
        assert_eq!(plan(&pod("n1", "Running", None), Some(0), t0()), Plan::Remove);
        // A negative grace is no request: the pod's own applies.
        assert!(matches!(plan(&pod("n1", "Running", None), Some(-1), t0()), Plan::Mark(_)));
    }

    #[test]
    fn a_second_delete_only_shortens() {
        let m = marked(&plan(&pod("n1", "Running", None), None, t0())).clone();
        assert_eq!(plan(&m, None, t0()), Plan::Pending);
        assert_eq!(plan(&m, Some(60), t0()), Plan::Pending);
        let shorter = plan(&m, Some(3), t0());
        assert_eq!(marked(&shorter)["metadata"]["deletionGracePeriodSeconds"], 3);
        assert_eq!(marked(&shorter)["metadata"]["generation"], 2, "one bump per deletion");
        // The node's confirmation.
        assert_eq!(plan(&m, Some(0), t0()), Plan::Remove);
    }

    #[test]
    fn finalizers_hold_any_object_until_they_are_removed() {
        let cm = json!({"kind": "ConfigMap", "metadata": {"name": "c", "finalizers": ["example.com/x"]}});
        let m = marked(&plan(&cm, None, t0())).clone();
        assert_eq!(m["metadata"]["deletionGracePeriodSeconds"], 0);
        assert_eq!(plan(&m, None, t0()), Plan::Pending);
        assert!(!after_update(&m));
        let mut done = m.clone();
        done["metadata"]["finalizers"] = json!([]);
        assert!(after_update(&done));
        // A pod with a finalizer, confirmed by its node, waits for the finalizer.
        let mut p = pod("n1", "Running", None);
        p["metadata"]["finalizers"] = json!(["example.com/x"]);
        let m = marked(&plan(&p, Some(0), t0())).clone();
        assert_eq!(m["metadata"]["deletionGracePeriodSeconds"], 0);
        let plain = json!({"kind": "ConfigMap", "metadata": {"name": "c"}});
        assert_eq!(plan(&plain, None, t0()), Plan::Remove);
        assert!(!after_update(&plain));
    }
}
