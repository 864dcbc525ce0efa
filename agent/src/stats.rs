//! Resource usage, as cAdvisor gives kubelet: every `--stats-period` the agent samples the
//! node (`/proc/stat`, `/proc/meminfo`) and every running container (its supervisor's
//! `Stats`, read from the container's cgroup), and turns the last two samples into rates —
//! the [`Summary`] the API server serves as `metrics.k8s.io` for `tug top` and autoscalers.
//! [`summarize`] and [`busy_cpu_ns`] are pure.

use crate::pods::Ctx;
use crate::pods::record::{PodRecord, State};
use crate::proxy::ConnCounts;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tug_api::tunnel::{ConnectionCounts, ContainerUsage, PodUsage, Summary, Usage};
use tug_shim::supervisor::protocol::{Reply, Request};

/// One container's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSample {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub cpu_ns: u64,
    pub working_set: u64,
}

/// The counters at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub node_cpu_ns: u64,
    pub node_working_set: u64,
    /// By container id (a restarted container is a new id: its counters start again).
    pub containers: BTreeMap<String, ContainerSample>,
}

/// The latest summary and the sample it was made from.
#[derive(Default)]
pub struct Cache {
    last: Mutex<Option<Sample>>,
    summary: Mutex<Option<Summary>>,
    /// The weighted ports the proxy counts connections of.
    pub counted: crate::proxy::Counted,
    /// Per (port, canary?): the counters last read and their running totals.
    totals: Mutex<Totals>,
    conn: Mutex<Option<crate::proxy::nft::Conn>>,
}

type Totals = BTreeMap<(String, bool), (ConnCounts, ConnCounts)>;

impl Cache {
    pub fn summary(&self) -> Option<Summary> {
        self.summary.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn rate(before: u64, after: u64, window: Duration) -> u64 {
    let ns = window.as_nanos().max(1);
    u64::try_from(u128::from(after.saturating_sub(before)) * 1_000_000_000 / ns).unwrap_or(u64::MAX)
}

/// Usage between two samples. Containers not in both (started or gone in between) have no
/// rate yet and are left out, as metrics-server does.
pub fn summarize(prev: &Sample, cur: &Sample, timestamp: String) -> Summary {
    let window = cur.at.saturating_duration_since(prev.at);
    let mut pods: BTreeMap<(String, String), Vec<ContainerUsage>> = BTreeMap::new();
    for (id, c) in &cur.containers {
        let Some(p) = prev.containers.get(id) else { continue };
        pods.entry((c.namespace.clone(), c.pod.clone())).or_default().push(ContainerUsage {
            name: c.container.clone(),
            usage: Usage {
                cpu_nanocores: rate(p.cpu_ns, c.cpu_ns, window),
                memory_working_set_bytes: c.working_set,
            },
        });
    }
    Summary {
        timestamp,
        window_seconds: window.as_secs().max(1),
        node: Usage {
            cpu_nanocores: rate(prev.node_cpu_ns, cur.node_cpu_ns, window),
            memory_working_set_bytes: cur.node_working_set,
        },
        pods: pods
            .into_iter()
            .map(|((namespace, name), mut containers)| {
                containers.sort_by(|a, b| a.name.cmp(&b.name));
                PodUsage { namespace, name, containers }
            })
            .collect(),
        connections: Vec::new(),
    }
}

/// Adds the counters just read to the running totals and returns them. The table is made
/// again now and then (a resync), which starts its counters from zero: counters from a new
/// chain add all they have, so totals only grow while a split lasts. Ports no longer
/// counted are dropped.
pub fn accumulate(totals: &mut Totals, read: Vec<(String, bool, ConnCounts)>) -> Vec<ConnectionCounts> {
    let mut next = Totals::new();
    for (base, canary, now) in read {
        let (last, total) = totals.remove(&(base.clone(), canary)).unwrap_or_default();
        let same = last.chain == now.chain;
        let add = |total: u64, last: u64, now: u64| total + if same { now.saturating_sub(last) } else { now };
        let total = ConnCounts {
            chain: now.chain,
            accepted: add(total.accepted, last.accepted, now.accepted),
            refused: add(total.refused, last.refused, now.refused),
            reset: add(total.reset, last.reset, now.reset),
        };
        next.insert((base, canary), (now, total));
    }
    *totals = next;
    totals
        .iter()
        .filter_map(|((base, canary), (_, t))| {
            // namespace/name/tcp/port-name
            let mut parts = base.splitn(4, '/');
            let (namespace, service, _, port) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            Some(ConnectionCounts {
                namespace: namespace.into(),
                service: service.into(),
                port: port.into(),
                set: if *canary { "canary" } else { "stable" }.into(),
                accepted: t.accepted,
                refused: t.refused,
                reset: t.reset,
            })
        })
        .collect()
}

/// The proxy's connection counts, read over netlink in the node's namespace.
fn connections(ctx: &Ctx) -> Vec<ConnectionCounts> {
    let bases = ctx.stats.counted.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut totals = ctx.stats.totals.lock().unwrap_or_else(|e| e.into_inner());
    if bases.is_empty() {
        totals.clear();
        return Vec::new();
    }
    let mut conn = ctx.stats.conn.lock().unwrap_or_else(|e| e.into_inner());
    if conn.is_none() {
        let netns = ctx.cfg.node_netns.clone();
        match crate::network::netns::run_in(netns.as_deref(), crate::proxy::nft::Conn::open) {
            Ok(Ok(c)) => *conn = Some(c),
            Ok(Err(e)) | Err(e) => {
                tracing::warn!("tug-agent: reading the proxy's counters: {e}");
                return Vec::new();
            }
        }
    }
    let Some(c) = conn.as_ref() else { return Vec::new() };
    let read = crate::proxy::read_counts(c, &bases);
    if read.is_empty() {
        // Maybe a broken socket: a new one next time.
        *conn = None;
    }
    accumulate(&mut totals, read)
}

/// CPU time spent busy (all but idle and iowait) from `/proc/stat`'s `cpu` line, in ns
/// (the kernel counts in USER_HZ, 100 per second on Linux).
pub fn busy_cpu_ns(proc_stat: &str) -> u64 {
    let Some(line) = proc_stat.lines().find(|l| l.starts_with("cpu ")) else { return 0 };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = v.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, x)| x).sum();
    busy * 10_000_000
}

fn sample(ctx: &Ctx) -> Sample {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mem = crate::node::facts_memory(&read("/proc/meminfo"));
    let mut containers = BTreeMap::new();
    for rec in PodRecord::load_all(&ctx.cfg.pods_dir()) {
        for (name, c) in &rec.containers {
            let (Some(id), State::Running { .. }) = (&c.id, &c.state) else { continue };
            let Ok(Reply::Stats(s)) =
                crate::pods::supervisor_call(&ctx.supervisor_socket(id), &Request::Stats)
            else {
                continue;
            };
            containers.insert(
                id.clone(),
                ContainerSample {
                    namespace: rec.namespace.clone(),
                    pod: rec.name.clone(),
                    container: name.clone(),
                    cpu_ns: s.cpu_usage_ns,
                    working_set: if s.memory_working_set_bytes > 0 {
                        s.memory_working_set_bytes
                    } else {
                        s.memory_usage_bytes
                    },
                },
            );
        }
    }
    Sample {
        at: Instant::now(),
        node_cpu_ns: busy_cpu_ns(&read("/proc/stat")),
        node_working_set: mem.0.saturating_sub(mem.1),
        containers,
    }
}

/// Samples every `period`, forever.
pub async fn run(ctx: Arc<Ctx>, period: Duration) {
    loop {
        let c = Arc::clone(&ctx);
        if let Ok((cur, conns)) = tokio::task::spawn_blocking(move || (sample(&c), connections(&c))).await {
            let mut last = ctx.stats.last.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(prev) = last.as_ref() {
                let now = crate::pods::rfc3339(std::time::SystemTime::now());
                let mut s = summarize(prev, &cur, now);
                s.connections = conns;
                *ctx.stats.summary.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
            }
            *last = Some(cur);
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(pod: &str, name: &str, cpu_ns: u64, ws: u64) -> ContainerSample {
        ContainerSample {
            namespace: "default".into(),
            pod: pod.into(),
            container: name.into(),
            cpu_ns,
            working_set: ws,
        }
    }

    #[test]
    fn rates_come_from_two_samples() {
        let t0 = Instant::now();
        let prev = Sample {
            at: t0,
            node_cpu_ns: 1_000_000_000,
            node_working_set: 1,
            containers: [("a1".to_string(), c("web", "a", 0, 10)), ("gone".to_string(), c("old", "x", 0, 1))]
                .into(),
        };
        let cur = Sample {
            at: t0 + Duration::from_secs(10),
            node_cpu_ns: 6_000_000_000,
            node_working_set: 2048,
            containers: [
                ("a1".to_string(), c("web", "a", 2_500_000_000, 4096)),
                ("b1".to_string(), c("web", "b", 1, 1)),
            ]
            .into(),
        };
        let s = summarize(&prev, &cur, "T".into());
        assert_eq!(s.window_seconds, 10);
        assert_eq!(s.node, Usage { cpu_nanocores: 500_000_000, memory_working_set_bytes: 2048 });
        assert_eq!(s.pods.len(), 1, "only containers seen twice have a rate");
        assert_eq!(
            s.pods[0].containers[0].usage,
            Usage { cpu_nanocores: 250_000_000, memory_working_set_bytes: 4096 }
        );
    }

    #[test]
    fn connection_totals_only_grow_across_a_table_remade() {
        let c = |chain, accepted, refused, reset| ConnCounts { chain, accepted, refused, reset };
        let base = "default/web/tcp/http".to_string();
        let mut totals = Totals::new();
        let first = accumulate(
            &mut totals,
            vec![(base.clone(), true, c(7, 5, 1, 0)), (base.clone(), false, c(9, 9, 0, 0))],
        );
        assert_eq!(first.len(), 2);
        let canary = first.iter().find(|x| x.set == "canary").unwrap();
        assert_eq!(
            (canary.namespace.as_str(), canary.service.as_str(), canary.port.as_str()),
            ("default", "web", "http")
        );
        assert_eq!((canary.accepted, canary.refused), (5, 1));
        // More, then the table is made again (counters from zero), then more.
        accumulate(&mut totals, vec![(base.clone(), true, c(7, 8, 2, 0))]);
        accumulate(&mut totals, vec![(base.clone(), true, c(40, 9, 1, 1))]);
        let now = accumulate(&mut totals, vec![(base.clone(), true, c(40, 11, 1, 1))]);
        assert_eq!(now.len(), 1, "the stable set is no longer counted");
        assert_eq!((now[0].accepted, now[0].refused, now[0].reset), (8 + 9 + 2, 2 + 1, 1));
    }

    #[test]
    fn busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 3 2 0 0 0\ncpu0 1 1 1 1 1 1 1 1 1 1\n";
        assert_eq!(busy_cpu_ns(stat), (100 + 5 + 50 + 3 + 2) * 10_000_000);
        assert_eq!(busy_cpu_ns(""), 0);
    }
}
