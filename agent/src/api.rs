//! The agent's calls to the control plane, over `tug-client`.

use serde_json::Value;
use tug_client::{CallError, Client, Method};

/// The API path of a namespaced core object.
pub fn core_path(ns: &str, plural: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{ns}/{plural}/{name}")
}

pub async fn get(api: &Client, path: &str) -> Result<Option<Value>, String> {
    match api.get(path).await {
        Ok(v) => Ok(Some(v)),
        Err(CallError::Server(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

pub async fn create(api: &Client, collection: &str, obj: &Value) -> Result<Value, CallError> {
    api.call(Method::POST, collection, "application/json", obj.to_string().into_bytes()).await.map(|r| r.0)
}

pub async fn put(api: &Client, path: &str, obj: &Value) -> Result<Value, CallError> {
    api.call(Method::PUT, path, "application/json", obj.to_string().into_bytes()).await.map(|r| r.0)
}

/// A DELETE with `DeleteOptions` (a grace period, preconditions).
pub async fn delete(api: &Client, path: &str, options: &Value) -> Result<(), CallError> {
    api.call(Method::DELETE, path, "application/json", options.to_string().into_bytes()).await.map(|_| ())
}

/// Records an Event about a pod (kubelet's reasons: Pulling, Pulled, Failed, BackOff,
/// Started, Killing, Unhealthy). Best effort: an event that cannot be written is logged.
/// `(ns, pod, uid)` names the pod.
pub async fn pod_event(
    api: &Client,
    node: &str,
    (ns, pod, uid): (&str, &str, &str),
    type_: &str,
    reason: &str,
    message: &str,
) {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let name = format!("{pod}.{nanos:x}");
    let ev = serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": pod, "uid": uid, "apiVersion": "v1"},
        "reason": reason, "message": message, "type": type_,
        "source": {"component": "tug-agent", "host": node},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    if let Err(e) = create(api, &format!("/api/v1/namespaces/{ns}/events"), &ev).await {
        eprintln!("tug-agent: event {reason} for {ns}/{pod}: {e}");
    }
}

/// Whether a call failed because the object changed under us (or exists already).
pub fn is_conflict(e: &CallError) -> bool {
    matches!(e, CallError::Server(s) if s.code == 409)
}

pub fn is_not_found(e: &CallError) -> bool {
    matches!(e, CallError::Server(s) if s.code == 404)
}
