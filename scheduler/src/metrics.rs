//! The control plane's metrics, served at `/metrics` (behind authorization: `get` on the
//! non-resource URL, which the `system:monitoring` group and cluster-admin have), named as
//! Kubernetes' components name theirs so existing dashboards read them:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `apiserver_request_total` | verb, group, resource, subresource, code | every request |
//! | `apiserver_request_duration_seconds` | verb, group, resource, subresource | latency, long-running ones (WATCH, CONNECT) excepted |
//! | `apiserver_longrunning_requests` | verb, group, resource | open watches and upgraded connections |
//! | `tug_store_request_duration_seconds` | operation | store calls (etcd or the embedded store) |
//! | `tug_store_fsync_duration_seconds` | | the embedded store's durable commits |
//! | `tug_store_commit_writes` | | writes per durable commit of the embedded store |
//! | `scheduler_schedule_attempts_total` | result | scheduled, unschedulable, error |
//! | `scheduler_scheduling_attempt_duration_seconds` | result | one pod's attempt |
//! | `workqueue_depth`, `workqueue_retries_total` | name | each controller's queue |
//! | `workqueue_work_duration_seconds` | name | one reconcile |
//! | `leader_election_master_status` | name | 1 while this replica runs the controllers |
//! | `apiserver_flowcontrol_nominal_limit_seats` | priority_level | each level's seats (`api::flow`) |
//! | `apiserver_flowcontrol_current_executing_requests` | priority_level | requests holding a seat |
//! | `apiserver_flowcontrol_current_inqueue_requests` | priority_level | requests waiting for one |
//! | `apiserver_flowcontrol_request_wait_duration_seconds` | priority_level | the wait for a seat |
//! | `apiserver_flowcontrol_rejected_requests_total` | priority_level, reason | 429s after the queue's timeout |

use std::sync::OnceLock;
use std::time::Instant;
use tug_metrics::{Counters, Gauges, Histogram, Histograms, labels};

pub struct Metrics {
    pub requests: Counters,
    pub request_duration: Histograms,
    pub longrunning: Gauges,
    pub store: Histograms,
    pub fsync: Histogram,
    pub commit_writes: Histogram,
    pub schedule_attempts: Counters,
    pub attempt_duration: Histograms,
    pub queue_depth: Gauges,
    pub queue_retries: Counters,
    pub work_duration: Histograms,
    pub leader: Gauges,
    pub flow_limit: Gauges,
    pub flow_executing: Gauges,
    pub flow_inqueue: Gauges,
    pub flow_wait: Histograms,
    pub flow_rejected: Counters,
}

/// The metrics, registered on first use.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let fsync = tug_metrics::latency();
        tug_metrics::register(
            "tug_store_fsync_duration_seconds",
            "How long the embedded store's durable commits (write and fsync) took.",
            fsync.clone(),
        );
        let commit_writes = tug_metrics::sizes();
        tug_metrics::register(
            "tug_store_commit_writes",
            "How many writes the embedded store's durable commits carried (writers arriving together share one).",
            commit_writes.clone(),
        );
        Metrics {
            requests: tug_metrics::counters(
                "apiserver_request",
                "Requests, by verb, group, resource, subresource and HTTP code.",
            ),
            request_duration: tug_metrics::histograms(
                "apiserver_request_duration_seconds",
                "Response latency by verb, group, resource and subresource (watches and upgraded connections excepted).",
            ),
            longrunning: tug_metrics::gauges(
                "apiserver_longrunning_requests",
                "Long-running requests open now (watches, exec, attach, port-forward, log follows).",
            ),
            store: tug_metrics::histograms(
                "tug_store_request_duration_seconds",
                "Store calls' latency by operation (get, list, create, update, delete, watch).",
            ),
            fsync,
            commit_writes,
            schedule_attempts: tug_metrics::counters(
                "scheduler_schedule_attempts",
                "Scheduling attempts by result (scheduled, unschedulable, error).",
            ),
            attempt_duration: tug_metrics::histograms(
                "scheduler_scheduling_attempt_duration_seconds",
                "One pod's scheduling attempt, by result.",
            ),
            queue_depth: tug_metrics::gauges("workqueue_depth", "Keys waiting in each controller's queue."),
            queue_retries: tug_metrics::counters(
                "workqueue_retries",
                "Keys queued again after a failed reconcile, by controller.",
            ),
            work_duration: tug_metrics::histograms(
                "workqueue_work_duration_seconds",
                "How long one reconcile took, by controller.",
            ),
            leader: tug_metrics::gauges(
                "leader_election_master_status",
                "1 while this replica holds the named lease and runs what it guards.",
            ),
            flow_limit: tug_metrics::gauges(
                "apiserver_flowcontrol_nominal_limit_seats",
                "Seats of each priority level: requests it runs at once.",
            ),
            flow_executing: tug_metrics::gauges(
                "apiserver_flowcontrol_current_executing_requests",
                "Requests holding a seat of each priority level now.",
            ),
            flow_inqueue: tug_metrics::gauges(
                "apiserver_flowcontrol_current_inqueue_requests",
                "Requests waiting for a seat of each priority level now.",
            ),
            flow_wait: tug_metrics::histograms(
                "apiserver_flowcontrol_request_wait_duration_seconds",
                "How long requests waited for a seat of their priority level.",
            ),
            flow_rejected: tug_metrics::counters(
                "apiserver_flowcontrol_rejected_requests",
                "Requests refused (429) after waiting for a seat, by priority level and reason.",
            ),
        }
    })
}

/// Times a store call.
pub fn store_call<T>(operation: &'static str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let r = f();
    get().store.get_or_create(&labels([("operation", operation)])).observe(started.elapsed().as_secs_f64());
    r
}

/// A store whose every call is timed in `tug_store_request_duration_seconds`.
pub struct Measured(pub std::sync::Arc<dyn crate::store::Store>);

impl crate::store::Store for Measured {
    fn get(&self, key: &str) -> Result<Option<crate::store::Stored>, crate::store::StoreError> {
        store_call("get", || self.0.get(key))
    }
    fn list(&self, prefix: &str) -> Result<(Vec<crate::store::Stored>, u64), crate::store::StoreError> {
        store_call("list", || self.0.list(prefix))
    }
    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        each: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<u64, crate::store::StoreError> {
        store_call("list", || self.0.scan(prefix, after, each))
    }
    fn create(
        &self,
        key: &str,
        object: serde_json::Value,
    ) -> Result<crate::store::Stored, crate::store::StoreError> {
        store_call("create", || self.0.create(key, object))
    }
    fn update(
        &self,
        key: &str,
        object: serde_json::Value,
        expected: Option<u64>,
    ) -> Result<crate::store::Stored, crate::store::StoreError> {
        store_call("update", || self.0.update(key, object, expected))
    }
    fn update_each(
        &self,
        updates: Vec<(String, serde_json::Value, Option<u64>)>,
    ) -> Vec<Result<crate::store::Stored, crate::store::StoreError>> {
        store_call("update", || self.0.update_each(updates))
    }
    fn create_each(
        &self,
        objects: Vec<(String, serde_json::Value)>,
    ) -> Vec<Result<crate::store::Stored, crate::store::StoreError>> {
        store_call("create", || self.0.create_each(objects))
    }
    fn delete(
        &self,
        key: &str,
        expected: Option<u64>,
    ) -> Result<crate::store::Stored, crate::store::StoreError> {
        store_call("delete", || self.0.delete(key, expected))
    }
    fn watch(&self, prefix: &str, after: u64) -> Result<crate::store::Watch, crate::store::StoreError> {
        store_call("watch", || self.0.watch(prefix, after))
    }
    fn watch_node(
        &self,
        prefix: &str,
        after: u64,
        node: &str,
    ) -> Result<crate::store::Watch, crate::store::StoreError> {
        store_call("watch", || self.0.watch_node(prefix, after, node))
    }
    fn compact(&self, revision: u64) -> Result<(), crate::store::StoreError> {
        store_call("compact", || self.0.compact(revision))
    }
    fn revision(&self) -> Result<u64, crate::store::StoreError> {
        self.0.revision()
    }
    fn fenced(&self, fence: &crate::store::Fence) -> Option<std::sync::Arc<dyn crate::store::Store>> {
        Some(std::sync::Arc::new(Measured(self.0.fenced(fence)?)))
    }
}

/// Kubernetes' verb label for a request: `LIST`, `WATCH`, `GET`, `POST`, `PUT`, `PATCH`,
/// `APPLY`, `DELETE`, `CONNECT`; a non-resource request's HTTP method.
pub fn verb(a: &crate::auth::Attributes, method: &str, content_type: &str) -> &'static str {
    match a.verb.as_str() {
        "list" => "LIST",
        "watch" => "WATCH",
        "get" if ["exec", "attach", "portforward", "proxy"].contains(&a.subresource.as_str()) => "CONNECT",
        "create" if ["exec", "attach", "portforward", "proxy"].contains(&a.subresource.as_str()) => "CONNECT",
        "get" => "GET",
        "create" => "POST",
        "update" => "PUT",
        "patch" if content_type.starts_with("application/apply-patch") => "APPLY",
        "patch" => "PATCH",
        "delete" | "deletecollection" => "DELETE",
        _ => match method {
            "GET" => "GET",
            "POST" => "POST",
            "PUT" => "PUT",
            "PATCH" => "PATCH",
            "DELETE" => "DELETE",
            "HEAD" => "HEAD",
            _ => "OTHER",
        },
    }
}

/// The outermost layer: counts and times every request, and keeps long-running ones in
/// `apiserver_longrunning_requests` for as long as their response body lives.
pub async fn measure(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let query = crate::api::handlers::parse_query(req.uri().query().unwrap_or_default());
    let a = crate::auth::attributes(req.method().as_str(), req.uri().path(), &query);
    // The authorizer inside reads them from here rather than working them out again.
    req.extensions_mut().insert(a.clone());
    let content_type =
        req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let verb = verb(&a, req.method().as_str(), &content_type);
    let long = verb == "WATCH" || verb == "CONNECT";
    let m = get();
    let started = Instant::now();
    let open = long.then(|| {
        let l = labels([("verb", verb), ("group", &a.api_group), ("resource", &a.resource)]);
        tug_metrics::InFlight::new(m.longrunning.get_or_create(&l).clone())
    });
    let resp = next.run(req).await;
    let code = resp.status().as_u16().to_string();
    m.requests
        .get_or_create(&labels([
            ("verb", verb),
            ("group", &a.api_group),
            ("resource", &a.resource),
            ("subresource", &a.subresource),
            ("code", &code),
        ]))
        .inc();
    if !long {
        let l = labels([
            ("verb", verb),
            ("group", &a.api_group),
            ("resource", &a.resource),
            ("subresource", &a.subresource),
        ]);
        m.request_duration.get_or_create(&l).observe(started.elapsed().as_secs_f64());
        return resp;
    }
    // The gauge comes down when the stream (or the upgraded connection's response) is dropped.
    let (parts, body) = resp.into_parts();
    let open = open.map(std::sync::Arc::new);
    let stream = futures_util::StreamExt::map(body.into_data_stream(), move |chunk| {
        let _ = &open;
        chunk
    });
    axum::response::Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// `GET /metrics`.
pub async fn serve() -> axum::response::Response {
    get();
    axum::response::Response::builder()
        .header("content-type", tug_metrics::CONTENT_TYPE)
        .body(axum::body::Body::from(tug_metrics::encode()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    /// The measured store passes a node's watch on to the store's index by node.
    #[tokio::test]
    async fn a_measured_store_keeps_the_watch_by_node() {
        let dir = tempfile::tempdir().unwrap();
        let raw = crate::store::redb_store::RedbStore::open(&dir.path().join("s.redb"), 16).unwrap();
        crate::store::a_nodes_watch_hears_its_node_only(&super::Measured(std::sync::Arc::new(raw))).await;
    }

    use super::*;

    #[test]
    fn verbs_read_as_kubernetes_labels_them() {
        let q = std::collections::HashMap::from([("watch".to_string(), "true".to_string())]);
        let none = std::collections::HashMap::new();
        let cases = [
            ("GET", "/api/v1/pods", &none, "", "LIST"),
            ("GET", "/api/v1/pods", &q, "", "WATCH"),
            ("GET", "/api/v1/namespaces/a/pods/p", &none, "", "GET"),
            ("POST", "/api/v1/namespaces/a/pods", &none, "", "POST"),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/a/deployments/d",
                &none,
                "application/apply-patch+yaml",
                "APPLY",
            ),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/a/deployments/d",
                &none,
                "application/merge-patch+json",
                "PATCH",
            ),
            ("POST", "/api/v1/namespaces/a/pods/p/exec", &none, "", "CONNECT"),
            ("GET", "/healthz", &none, "", "GET"),
        ];
        for (method, path, query, ct, want) in cases {
            let a = crate::auth::attributes(method, path, query);
            assert_eq!(verb(&a, method, ct), want, "{method} {path}");
        }
    }
}
