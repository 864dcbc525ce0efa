//! The process's metrics: one registry that the control plane and the agent fill and serve at
//! `/metrics` (OpenMetrics text, which Prometheus scrapes), built on `prometheus-client`.
//!
//! Each component defines its metrics once, as families with label sets of `(name, value)`
//! pairs, and registers them here; [`encode`] writes all of them. Names follow the Kubernetes
//! components' where one exists (`apiserver_request_total`, `scheduler_schedule_attempts_total`,
//! `kubelet_pod_start_duration_seconds`), so existing dashboards read them.

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use std::sync::{Mutex, OnceLock};

/// A label set: `[("verb", "GET"), ("code", "200")]`.
pub type Labels = Vec<(&'static str, String)>;

/// A family of histograms with the latency buckets.
pub type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// A family of counters.
pub type Counters = Family<Labels, Counter>;

/// A family of gauges.
pub type Gauges = Family<Labels, Gauge>;

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::default()))
}

/// Adds a metric to the registry under `name` (a counter's `_total` is added when written).
pub fn register(name: &str, help: &str, metric: impl Metric) {
    registry().lock().unwrap_or_else(|e| e.into_inner()).register(name, help, metric);
}

/// Latency buckets from 1 ms to about 33 s, doubling.
pub fn latency() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16))
}

/// Buckets for a count (items per batch) from 1 to 2,048, doubling.
pub fn sizes() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 12))
}

/// A new histogram family with [`latency`] buckets, registered.
pub fn histograms(name: &str, help: &str) -> Histograms {
    let f = Histograms::new_with_constructor(latency);
    register(name, help, f.clone());
    f
}

/// A new counter family, registered.
pub fn counters(name: &str, help: &str) -> Counters {
    let f = Counters::default();
    register(name, help, f.clone());
    f
}

/// A new gauge family, registered.
pub fn gauges(name: &str, help: &str) -> Gauges {
    let f = Gauges::default();
    register(name, help, f.clone());
    f
}

/// Every registered metric, in the OpenMetrics text format.
pub fn encode() -> String {
    let mut out = String::new();
    let registry = registry().lock().unwrap_or_else(|e| e.into_inner());
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// A label set from pairs.
pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_string())).collect()
}

/// A gauge that is up while it lives: a watch's, a long request's.
pub struct InFlight {
    gauge: Gauge,
}

impl InFlight {
    pub fn new(gauge: Gauge) -> InFlight {
        gauge.inc();
        InFlight { gauge }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_written_with_their_labels() {
        let c = counters("tug_test_requests", "Requests seen in a test.");
        c.get_or_create(&labels([("verb", "GET"), ("code", "200")])).inc_by(2);
        let h = histograms("tug_test_duration_seconds", "How long a test request took.");
        h.get_or_create(&labels([("verb", "GET")])).observe(0.003);
        let g = gauges("tug_test_watchers", "Watches open in a test.");
        {
            let _w = InFlight::new(g.get_or_create(&labels([("resource", "pods")])).clone());
            assert!(encode().contains("tug_test_watchers{resource=\"pods\"} 1"));
        }
        let text = encode();
        assert!(text.contains("tug_test_requests_total{verb=\"GET\",code=\"200\"} 2"), "{text}");
        assert!(text.contains("tug_test_duration_seconds_bucket{le=\"0.004\",verb=\"GET\"} 1"), "{text}");
        assert!(text.contains("tug_test_watchers{resource=\"pods\"} 0"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
