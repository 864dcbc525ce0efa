//! The agent's metrics, served at `http://--metrics-bind-address/metrics` (loopback by
//! default, in the node's network namespace), named as kubelet and kube-proxy name theirs:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `kubelet_pod_start_duration_seconds` | | a pod first seen to all its containers running |
//! | `kubelet_run_podsandbox_duration_seconds` | | a pod's network namespace and address |
//! | `kubelet_image_pull_duration_seconds` | result | an image pull (pulled, failed) |
//! | `tug_container_start_duration_seconds` | | a container's create and start (the runtime) |
//! | `kube_pod_container_status_restarts_total` | namespace, pod, container | restarts |
//! | `prober_probe_total` | probe_type, result | probes run (successful, failed) |
//! | `kubeproxy_sync_proxy_rules_duration_seconds` | | one sync of the service rules |
//! | `kubeproxy_sync_proxy_rules_last_timestamp_seconds` | | when the last sync ended |
//! | `tug_proxy_service_ports` | | service ports the last sync programmed |
//! | `kubelet_evictions` | eviction_signal | pods evicted for a pressure signal |
//! | `tug_node_pressure` | condition | 1 while the node reports MemoryPressure, DiskPressure or PIDPressure |

use std::sync::OnceLock;
use tug_metrics::{Counters, Gauge, Gauges, Histogram, Histograms, labels};

pub struct Metrics {
    pub pod_start: Histogram,
    pub sandbox: Histogram,
    pub image_pull: Histograms,
    pub container_start: Histogram,
    pub restarts: Counters,
    pub probes: Counters,
    pub proxy_sync: Histogram,
    pub proxy_last_sync: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub proxy_ports: Gauge,
    pub evictions: Counters,
    pub pressure: Gauges,
}

fn histogram(name: &str, help: &str) -> Histogram {
    let h = tug_metrics::latency();
    tug_metrics::register(name, help, h.clone());
    h
}

/// The metrics, registered on first use.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let proxy_last_sync = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        tug_metrics::register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "When the service rules were last synced (seconds since the epoch).",
            proxy_last_sync.clone(),
        );
        let proxy_ports = Gauge::default();
        tug_metrics::register(
            "tug_proxy_service_ports",
            "Service ports (a Service's port, with its NodePort and external addresses) the last sync programmed.",
            proxy_ports.clone(),
        );
        Metrics {
            pod_start: histogram(
                "kubelet_pod_start_duration_seconds",
                "From the agent first seeing a pod to all its containers running.",
            ),
            sandbox: histogram(
                "kubelet_run_podsandbox_duration_seconds",
                "Making a pod's sandbox: its network namespace, link and address.",
            ),
            image_pull: tug_metrics::histograms(
                "kubelet_image_pull_duration_seconds",
                "Image pulls, by result (pulled, failed).",
            ),
            container_start: histogram(
                "tug_container_start_duration_seconds",
                "Creating and starting one container (bundle, supervisor, runtime).",
            ),
            restarts: tug_metrics::counters(
                "kube_pod_container_status_restarts",
                "Container restarts, by namespace, pod and container.",
            ),
            probes: tug_metrics::counters(
                "prober_probe",
                "Probes run, by probe_type (Liveness, Readiness, Startup) and result (successful, failed).",
            ),
            proxy_sync: histogram(
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "One sync of the service rules (plan and apply).",
            ),
            proxy_last_sync,
            proxy_ports,
            evictions: tug_metrics::counters(
                "kubelet_evictions",
                "Pods evicted, by the eviction signal that crossed its threshold.",
            ),
            pressure: tug_metrics::gauges(
                "tug_node_pressure",
                "1 while the node reports the condition (MemoryPressure, DiskPressure, PIDPressure).",
            ),
        }
    })
}

/// Counts one probe's outcome.
pub fn probed(probe_type: &'static str, ok: bool) {
    let result = if ok { "successful" } else { "failed" };
    get().probes.get_or_create(&labels([("probe_type", probe_type), ("result", result)])).inc();
}

/// Serves `/metrics` on `addr` for ever (in the runtime this is called on). A port that cannot
/// be bound is said and tried again, as the agent's other servers do.
pub async fn serve(addr: std::net::SocketAddr) {
    get();
    let listener = crate::network::netns::listen_on("metrics", addr).await;
    loop {
        let Ok((s, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let (status, ctype, body) = if req.uri().path() == "/metrics" {
                    (200, tug_metrics::CONTENT_TYPE, tug_metrics::encode())
                } else {
                    (404, "text/plain", "404 page not found\n".to_string())
                };
                let mut r = hyper::Response::new(http_body_util::Full::new(hyper::body::Bytes::from(body)));
                *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
                r.headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
                Ok::<_, std::convert::Infallible>(r)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        });
    }
}
