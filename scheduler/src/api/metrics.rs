//! `metrics.k8s.io/v1beta1`, served by the API server itself (Kubernetes needs
//! metrics-server for this): NodeMetrics and PodMetrics from the agents' usage summaries,
//! asked for over the node tunnel when a client reads them. `tug top` and autoscalers read
//! these. [`node_metrics`] and [`pod_metrics`] are pure.

use super::AppState;
use super::handlers::{json_response, status_response};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use tug_api::status::Status;
use tug_api::tunnel::{Summary, Usage};

const API_VERSION: &str = "metrics.k8s.io/v1beta1";

fn usage(u: &Usage) -> Value {
    json!({"cpu": format!("{}n", u.cpu_nanocores), "memory": format!("{}Ki", u.memory_working_set_bytes / 1024)})
}

/// A node's NodeMetrics.
pub fn node_metrics(node: &str, s: &Summary) -> Value {
    json!({
        "kind": "NodeMetrics", "apiVersion": API_VERSION,
        "metadata": {"name": node},
        "timestamp": s.timestamp, "window": format!("{}s", s.window_seconds),
        "usage": usage(&s.node),
    })
}

/// The PodMetrics of a node's pods, those in `namespace` when given.
pub fn pod_metrics(s: &Summary, namespace: Option<&str>) -> Vec<Value> {
    s.pods
        .iter()
        .filter(|p| namespace.is_none_or(|ns| p.namespace == ns))
        .map(|p| {
            json!({
                "kind": "PodMetrics", "apiVersion": API_VERSION,
                "metadata": {"name": p.name, "namespace": p.namespace},
                "timestamp": s.timestamp, "window": format!("{}s", s.window_seconds),
                "containers": p.containers.iter().map(|c| json!({"name": c.name, "usage": usage(&c.usage)})).collect::<Vec<_>>(),
            })
        })
        .collect()
}

fn list(kind: &str, mut items: Vec<Value>) -> Value {
    items.sort_by_key(|i| {
        (
            i["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
            i["metadata"]["name"].as_str().unwrap_or_default().to_string(),
        )
    });
    json!({"kind": kind, "apiVersion": API_VERSION, "metadata": {}, "items": items})
}

/// The names of the nodes, all or one.
fn nodes(st: &AppState, only: Option<&str>) -> Result<Vec<String>, Status> {
    let info = tug_api::object::lookup("nodes").ok_or_else(|| Status::internal("no nodes kind"))?;
    let (items, _) = super::handlers::blocking(|| st.store.list(&super::path::prefix(info, None)))
        .map_err(|e| Status::internal(e.to_string()))?;
    let names: Vec<String> = items
        .iter()
        .filter_map(|s| s.object["metadata"]["name"].as_str().map(str::to_string))
        .filter(|n| only.is_none_or(|o| o == n))
        .collect();
    if let Some(o) = only {
        if names.is_empty() {
            return Err(Status::not_found("nodes", o));
        }
    }
    Ok(names)
}

/// Keeps `cache` on every node's latest usage summary, asked every `every`: what the HPA
/// controller reads (one round trip per period for all HPAs, not one per HPA).
pub async fn refresh_usage(
    st: Arc<AppState>,
    cache: crate::controllers::hpa::UsageCache,
    every: std::time::Duration,
) {
    loop {
        if let Ok(names) = nodes(&st, None) {
            let summaries = super::tunnel::summaries(&st, names).await;
            let index = Arc::new(crate::controllers::hpa::UsageIndex::of(&summaries));
            *cache.lock().unwrap_or_else(|e| e.into_inner()) = index;
        }
        tokio::time::sleep(every).await;
    }
}

async fn node_list(st: &AppState, only: Option<&str>) -> Result<Vec<Value>, Status> {
    let summaries = super::tunnel::summaries(st, nodes(st, only)?).await;
    Ok(summaries.iter().map(|(n, s)| node_metrics(n, s)).collect())
}

async fn pod_list(st: &AppState, namespace: Option<&str>) -> Result<Vec<Value>, Status> {
    let summaries = super::tunnel::summaries(st, nodes(st, None)?).await;
    Ok(summaries.iter().flat_map(|(_, s)| pod_metrics(s, namespace)).collect())
}

fn answer(r: Result<Value, Status>) -> Response {
    match r {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(s) => status_response(&s),
    }
}

/// `GET /apis/metrics.k8s.io/v1beta1/nodes`
pub async fn nodes_all(State(st): State<Arc<AppState>>) -> Response {
    answer(node_list(&st, None).await.map(|items| list("NodeMetricsList", items)))
}

/// `GET /apis/metrics.k8s.io/v1beta1/nodes/{name}`
pub async fn node_one(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    answer(
        node_list(&st, Some(&name)).await.and_then(|mut items| {
            items.pop().ok_or_else(|| Status::not_found("nodes.metrics.k8s.io", &name))
        }),
    )
}

/// `GET /apis/metrics.k8s.io/v1beta1/pods`
pub async fn pods_all(State(st): State<Arc<AppState>>) -> Response {
    answer(pod_list(&st, None).await.map(|items| list("PodMetricsList", items)))
}

/// `GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods`
pub async fn pods_in(State(st): State<Arc<AppState>>, Path(ns): Path<String>) -> Response {
    answer(pod_list(&st, Some(&ns)).await.map(|items| list("PodMetricsList", items)))
}

/// `GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}`
pub async fn pod_one(State(st): State<Arc<AppState>>, Path((ns, name)): Path<(String, String)>) -> Response {
    answer(pod_list(&st, Some(&ns)).await.and_then(|items| {
        items
            .into_iter()
            .find(|i| i["metadata"]["name"] == name.as_str())
            .ok_or_else(|| Status::not_found("pods.metrics.k8s.io", &name))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_api::tunnel::{ContainerUsage, PodUsage};

    #[test]
    fn summaries_become_metrics_objects() {
        let s = Summary {
            timestamp: "2026-11-26T10:00:00Z".into(),
            window_seconds: 10,
            node: Usage { cpu_nanocores: 250_000_000, memory_working_set_bytes: 2 << 30 },
            pods: vec![
                PodUsage {
                    namespace: "default".into(),
                    name: "web".into(),
                    containers: vec![ContainerUsage {
                        name: "web".into(),
                        usage: Usage { cpu_nanocores: 1_500_000, memory_working_set_bytes: 3 << 20 },
                    }],
                },
                PodUsage { namespace: "team-a".into(), name: "x".into(), containers: vec![] },
            ],
            connections: vec![],
        };
        let n = node_metrics("n1", &s);
        assert_eq!(n["usage"], json!({"cpu": "250000000n", "memory": "2097152Ki"}));
        assert_eq!(n["window"], "10s");
        let p = pod_metrics(&s, Some("default"));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0]["containers"][0]["usage"]["memory"], "3072Ki");
        assert_eq!(pod_metrics(&s, None).len(), 2);
    }
}
