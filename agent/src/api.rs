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

/// Whether a call failed because the object changed under us (or exists already).
pub fn is_conflict(e: &CallError) -> bool {
    matches!(e, CallError::Server(s) if s.code == 409)
}

pub fn is_not_found(e: &CallError) -> bool {
    matches!(e, CallError::Server(s) if s.code == 404)
}
