//! What the server does to an object between the request and the store. Pure: server-owned
//! metadata on create, kept fields on update, generation, and apply's decision.

use serde_json::Value;
use tug_api::status::Status;

/// Annotations the controllers write (a Deployment's revision): not the user's, so an apply
/// without them changes nothing and keeps them.
const CONTROLLER_ANNOTATIONS: [&str; 1] = ["deployment.kubernetes.io/"];

pub fn controller_owned(key: &str) -> bool {
    CONTROLLER_ANNOTATIONS.iter().any(|p| key.starts_with(p))
}

/// The fields a user's apply owns: everything but the server's metadata and `status`.
pub fn user_view(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                a.retain(|k, _| !controller_owned(k));
                if a.is_empty() {
                    meta.remove("annotations");
                }
            }
            for f in [
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
            ] {
                meta.remove(f);
            }
        }
    }
    v
}

/// The fields whose change bumps `metadata.generation` (everything but metadata and status).
fn spec_view(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
        m.remove("metadata");
    }
    v
}

/// Server-owned metadata for a new object.
pub fn on_create(object: &mut Value, uid: &str, now: &str) {
    let meta = &mut object["metadata"];
    meta["uid"] = uid.into();
    meta["creationTimestamp"] = now.into();
    meta["generation"] = 1.into();
    if let Some(m) = meta.as_object_mut() {
        m.remove("resourceVersion");
    }
    if object.get("status").is_some() && !keeps_status_on_create(object) {
        if let Some(m) = object.as_object_mut() {
            m.remove("status");
        }
    }
    // A kind with a status shows an empty one until its controller writes it (clients such
    // as the Python one read `status` of a fresh Deployment).
    let has_status = object["kind"]
        .as_str()
        .and_then(|k| tug_api::object::KINDS.iter().find(|i| i.kind == k))
        .is_some_and(|i| i.has_status());
    if has_status && object.get("status").is_none_or(Value::is_null) {
        object["status"] = serde_json::json!({});
    }
    // A new pod is Pending until a node runs it, as the API server says from the start.
    if object["kind"] == "Pod" && object["status"]["phase"].is_null() {
        object["status"]["phase"] = "Pending".into();
    }
}

/// Pods and Namespaces may carry a status from their creator (the agent); others start empty.
fn keeps_status_on_create(object: &Value) -> bool {
    matches!(object["kind"].as_str(), Some("Pod"))
}

/// A replacement of `current` by `desired` (PUT or apply): the server's metadata and the
/// status are kept; the generation moves when anything outside metadata and status changed.
pub fn on_update(desired: &mut Value, current: &Value) -> Result<(), Status> {
    let name = current["metadata"]["name"].as_str().unwrap_or_default();
    if let Some(uid) = desired["metadata"]["uid"].as_str() {
        if Some(uid) != current["metadata"]["uid"].as_str() {
            return Err(Status::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    current["metadata"]["uid"].as_str().unwrap_or_default()
                ),
            )
            .with_name(name));
        }
    }
    for f in ["uid", "creationTimestamp"] {
        desired["metadata"][f] = current["metadata"][f].clone();
    }
    // The controllers' annotations stay unless the request sets them.
    if let Some(cur) = current["metadata"]["annotations"].as_object() {
        for (k, v) in cur.iter().filter(|(k, _)| controller_owned(k)) {
            if desired["metadata"]["annotations"].get(k).is_none() {
                if !desired["metadata"]["annotations"].is_object() {
                    desired["metadata"]["annotations"] = serde_json::json!({});
                }
                desired["metadata"]["annotations"][k] = v.clone();
            }
        }
    }
    // Only the server marks an object deleted (and it stays marked); no finalizer may be
    // added to an object on its way out.
    for f in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
        match current["metadata"].get(f) {
            Some(t) => desired["metadata"][f] = t.clone(),
            None => {
                if let Some(m) = desired["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    if current["metadata"].get("deletionTimestamp").is_some() {
        let had = current["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
        let added: Vec<&Value> = desired["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| !had.contains(f))
            .collect();
        if !added.is_empty() {
            let list = added.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", ");
            return Err(Status::invalid(
                current["kind"].as_str().unwrap_or_default(),
                name,
                &[tug_api::validation::FieldError {
                    field: "metadata.finalizers".into(),
                    message: format!(
                        "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers [{list}]"
                    ),
                }],
            ));
        }
    }
    let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
    let bump = spec_view(desired) != spec_view(current);
    desired["metadata"]["generation"] = (generation + i64::from(bump)).into();
    match current.get("status") {
        Some(s) => desired["status"] = s.clone(),
        None => {
            if let Some(m) = desired.as_object_mut() {
                m.remove("status");
            }
        }
    }
    Ok(())
}

/// A status write: the current object with `desired`'s status.
pub fn on_status(desired: &Value, current: &Value) -> Value {
    let mut out = current.clone();
    out["status"] = desired.get("status").cloned().unwrap_or(Value::Null);
    out
}

/// What apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Created => "created",
            Applied::Configured => "configured",
            Applied::Unchanged => "unchanged",
        }
    }
}

/// Whether applying `desired` over `current` changes anything the user owns.
pub fn apply_changes(desired: &Value, current: &Value) -> bool {
    user_view(desired) != user_view(current)
}

trait WithName {
    fn with_name(self, name: &str) -> Self;
}

impl WithName for Status {
    fn with_name(mut self, name: &str) -> Status {
        self.details = Some(tug_api::status::StatusDetails { name: Some(name.into()), ..Default::default() });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn create_sets_server_fields_and_drops_status() {
        let mut o = json!({"kind": "Deployment", "metadata": {"name": "a", "resourceVersion": "9"}, "spec": {}, "status": {"replicas": 3}});
        on_create(&mut o, "u-1", "2026-01-01T00:00:00Z");
        assert_eq!(o["metadata"]["uid"], "u-1");
        assert_eq!(o["metadata"]["generation"], 1);
        assert!(o["metadata"].get("resourceVersion").is_none());
        assert_eq!(o["status"], json!({}), "a sent status is dropped; the kind's empty one shows");
        let mut cm = json!({"kind": "ConfigMap", "metadata": {"name": "c"}});
        on_create(&mut cm, "u-2", "2026-01-01T00:00:00Z");
        assert!(cm.get("status").is_none(), "kinds without a status get none");
    }

    #[test]
    fn update_keeps_identity_and_status_and_bumps_generation_on_spec_change() {
        let current = json!({"metadata": {"name": "a", "uid": "u", "creationTimestamp": "t", "generation": 4}, "spec": {"replicas": 1}, "status": {"x": 1}});
        let mut same = json!({"metadata": {"name": "a", "labels": {"l": "1"}}, "spec": {"replicas": 1}});
        on_update(&mut same, &current).unwrap();
        assert_eq!(same["metadata"]["generation"], 4, "labels are metadata: no new generation");
        assert_eq!(same["status"], json!({"x": 1}));
        let mut changed = json!({"metadata": {"name": "a"}, "spec": {"replicas": 2}});
        on_update(&mut changed, &current).unwrap();
        assert_eq!(changed["metadata"]["generation"], 5);
        assert_eq!(changed["metadata"]["uid"], "u");
        let mut other = json!({"metadata": {"name": "a", "uid": "zzz"}, "spec": {}});
        assert_eq!(on_update(&mut other, &current).unwrap_err().code, 409);
    }

    #[test]
    fn apply_compares_what_the_user_owns() {
        let current = json!({"metadata": {"name": "a", "uid": "u", "resourceVersion": "3"}, "data": {"k": "v"}, "status": {}});
        assert!(!apply_changes(&json!({"metadata": {"name": "a"}, "data": {"k": "v"}}), &current));
        assert!(apply_changes(&json!({"metadata": {"name": "a"}, "data": {"k": "w"}}), &current));
    }
}
