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
/// Created, Started, Killing, Unhealthy). Best effort: an event that cannot be written is
/// logged. `(ns, pod, uid)` names the pod. The same event again (pod, type, reason, message)
/// within ten minutes is not a new object: its `count` goes up and its `lastTimestamp` moves,
/// as Kubernetes' event recorder does, so a crash loop is one event, not a storm.
pub async fn pod_event(
    api: &Client,
    node: &str,
    (ns, pod, uid): (&str, &str, &str),
    type_: &str,
    reason: &str,
    message: &str,
) {
    // A new event is written under its key's lock, and a repeat found while waiting bumps the
    // event just written: two of the same at once (a crash loop's BackOff from the worker and
    // from a resync) must not make two objects. Different events go at once (a burst of pod
    // starts' events, one at a time, each waited for its own commit).
    const STRIPES: usize = 16;
    static CREATING: [tokio::sync::Mutex<()>; STRIPES] =
        [const { tokio::sync::Mutex::const_new(()) }; STRIPES];
    let now = std::time::SystemTime::now();
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let key = format!("{uid}\0{type_}\0{reason}\0{message}");
    let mut seen = recorded().lock().unwrap_or_else(|e| e.into_inner()).repeat(&key, now);
    let _creating = if seen.is_none() {
        let stripe = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut h);
            usize::try_from(h.finish() % STRIPES as u64).unwrap_or(0)
        };
        let g = CREATING[stripe].lock().await;
        seen = recorded().lock().unwrap_or_else(|e| e.into_inner()).repeat(&key, now);
        Some(g)
    } else {
        None
    };
    if let Some((name, count)) = seen {
        let patch = serde_json::json!({"count": count, "lastTimestamp": stamp});
        let path = format!("/api/v1/namespaces/{ns}/events/{name}");
        match api
            .call(Method::PATCH, &path, "application/merge-patch+json", patch.to_string().into_bytes())
            .await
        {
            Ok(_) => return,
            // Gone (expired, deleted): a new event below.
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!("tug-agent: event {reason} for {ns}/{pod}: {e}");
                return;
            }
        }
    }
    let nanos = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let name = format!("{pod}.{nanos:x}");
    let ev = serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": pod, "uid": uid, "apiVersion": "v1"},
        "reason": reason, "message": message, "type": type_,
        "source": {"component": "kubelet", "host": node},
        "reportingComponent": "kubelet", "reportingInstance": node,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    });
    match create(api, &format!("/api/v1/namespaces/{ns}/events"), &ev).await {
        Ok(_) => recorded().lock().unwrap_or_else(|e| e.into_inner()).created(key, name, now),
        Err(e) => tracing::warn!("tug-agent: event {reason} for {ns}/{pod}: {e}"),
    }
}

/// The events written lately, for deduplication: key → (name, count, last seen).
#[derive(Default)]
pub struct Recorded(std::collections::HashMap<String, (String, u64, std::time::SystemTime)>);

/// How long a repeated event adds to the same object.
const DEDUP_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
/// Events remembered at most (the oldest go first).
const DEDUP_MAX: usize = 4096;

impl Recorded {
    /// The event to bump and its new count, when `key` was written within the window.
    pub fn repeat(&mut self, key: &str, now: std::time::SystemTime) -> Option<(String, u64)> {
        let e = self.0.get_mut(key)?;
        if now.duration_since(e.2).unwrap_or_default() > DEDUP_WINDOW {
            self.0.remove(key);
            return None;
        }
        e.1 += 1;
        e.2 = now;
        Some((e.0.clone(), e.1))
    }

    pub fn created(&mut self, key: String, name: String, now: std::time::SystemTime) {
        if self.0.len() >= DEDUP_MAX {
            let oldest = self.0.iter().min_by_key(|(_, v)| v.2).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.0.remove(&k);
            }
        }
        self.0.insert(key, (name, 1, now));
    }
}

fn recorded() -> &'static std::sync::Mutex<Recorded> {
    static R: std::sync::OnceLock<std::sync::Mutex<Recorded>> = std::sync::OnceLock::new();
    R.get_or_init(Default::default)
}

/// Whether a call failed because the object changed under us (or exists already).
pub fn is_conflict(e: &CallError) -> bool {
    matches!(e, CallError::Server(s) if s.code == 409)
}

pub fn is_not_found(e: &CallError) -> bool {
    matches!(e, CallError::Server(s) if s.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_event_counts_up_within_the_window() {
        let mut r = Recorded::default();
        let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        assert_eq!(r.repeat("k", t0), None);
        r.created("k".into(), "web.1".into(), t0);
        assert_eq!(r.repeat("k", t0 + std::time::Duration::from_secs(10)), Some(("web.1".into(), 2)));
        assert_eq!(r.repeat("k", t0 + std::time::Duration::from_secs(20)), Some(("web.1".into(), 3)));
        assert_eq!(
            r.repeat("k", t0 + std::time::Duration::from_secs(2000)),
            None,
            "past the window: a new event"
        );
    }
}
