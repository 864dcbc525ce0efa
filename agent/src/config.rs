//! The agent's settings, from its flags (and, with the host-service issue, a file).

use crate::network::routes::Backend;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// A taint from `--taints key[=value]:Effect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub state_dir: PathBuf,
    /// Volatile state (a tmpfs on a host): the runtime's root, supervisors, bundles.
    pub run_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub node_ip: Ipv4Addr,
    /// The network namespace holding the node's interfaces (`None`: the agent's own).
    pub node_netns: Option<PathBuf>,
    pub netns_dir: PathBuf,
    pub backend: Backend,
    pub image_root: PathBuf,
    pub insecure_registries: Vec<String>,
    /// Pods' cgroups go under this, relative to the agent's own cgroup.
    pub cgroup_parent: String,
    /// How often the node's status (the heartbeat) is written.
    pub status_frequency: Duration,
    /// How often every pod is checked even without an event.
    pub sync_frequency: Duration,
    pub max_pods: u32,
    /// The `tug-shim` binary (`tug-supervisor` sits beside it).
    pub shim: PathBuf,
    /// Image garbage collection thresholds, percent of the image filesystem.
    pub image_gc_high: u8,
    pub image_gc_low: u8,
    /// Images used (or stored) more recently than this are never collected.
    pub image_gc_min_age: Duration,
    /// Program Services (`--proxy-mode` not `none`), and how.
    pub proxy_enabled: bool,
    pub proxy_mode: crate::proxy::Mode,
    pub cluster_cidr: tug_api::cidr::Cidr4,
    pub service_cidr: tug_api::cidr::Cidr4,
    /// The DNS domain of the cluster (`cluster.local`).
    pub cluster_domain: String,
    /// How often resource usage is sampled (kubelet's cAdvisor housekeeping).
    pub housekeeping_interval: Duration,
    /// When the node reports pressure (`--eviction-hard`).
    pub eviction: Eviction,
    /// The Ingress controller's HTTP and HTTPS ports (0: off).
    pub ingress_ports: (u16, u16),
    /// `--metrics-bind-address`: where `/metrics` is served (in the node's network
    /// namespace); None turns it off.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// A floor on what is left of a resource: an amount, or a percentage of the capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Amount(u64),
    Percent(f64),
}

impl Threshold {
    /// The floor for a resource of `capacity`.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    pub fn of(self, capacity: u64) -> u64 {
        match self {
            Threshold::Amount(a) => a,
            Threshold::Percent(p) => (capacity as f64 * p / 100.0) as u64,
        }
    }

    /// Whether `available` out of `capacity` is under the floor.
    pub fn crossed(self, available: u64, capacity: u64) -> bool {
        available < self.of(capacity)
    }
}

/// Kubelet's hard eviction thresholds, which here set the node's pressure conditions (and
/// through them the scheduler's `node.kubernetes.io/*-pressure` taints) and what is kept out
/// of allocatable. A signal left out of `--eviction-hard` has no threshold, as in kubelet.
#[derive(Debug, Clone, PartialEq)]
pub struct Eviction {
    pub memory_available: Option<Threshold>,
    pub nodefs_available: Option<Threshold>,
    pub pid_available: Option<Threshold>,
}

/// Kubelet's defaults (`pid.available` is ours: kubelet has the signal but no default).
pub const DEFAULT_EVICTION_HARD: &str = "memory.available<100Mi,nodefs.available<10%,pid.available<10%";

/// `memory.available<100Mi,nodefs.available<10%,pid.available<10%` → thresholds.
pub fn parse_eviction(s: &str) -> Result<Eviction, String> {
    let mut out = Eviction { memory_available: None, nodefs_available: None, pid_available: None };
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (signal, value) = part.split_once('<').ok_or_else(|| {
            format!("--eviction-hard: {part:?} is not SIGNAL<VALUE (e.g. nodefs.available<10%)")
        })?;
        let value = value.trim();
        let threshold = if let Some(p) = value.strip_suffix('%') {
            match p.trim().parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => Threshold::Percent(p),
                _ => {
                    return Err(format!(
                        "--eviction-hard: {signal}: {value:?} is not a percentage from 0% to 100%"
                    ));
                }
            }
        } else {
            let q = tug_api::quantity::Quantity::parse(value)
                .map_err(|e| format!("--eviction-hard: {signal}: {value:?}: {e}"))?;
            Threshold::Amount(u64::try_from(q.value()).unwrap_or(u64::MAX))
        };
        let slot = match signal.trim() {
            "memory.available" => &mut out.memory_available,
            "nodefs.available" | "imagefs.available" => &mut out.nodefs_available,
            "pid.available" => &mut out.pid_available,
            other => {
                return Err(format!(
                    "--eviction-hard: unknown signal {other:?} (memory.available, nodefs.available, \
                     imagefs.available, pid.available)"
                ));
            }
        };
        *slot = Some(threshold);
    }
    Ok(out)
}

impl Config {
    pub fn runtime_root(&self) -> PathBuf {
        self.run_dir.join("runtime")
    }

    pub fn supervisors(&self) -> PathBuf {
        self.run_dir.join("supervisors")
    }

    pub fn bundles(&self) -> PathBuf {
        self.run_dir.join("bundles")
    }

    /// The pods' records and `/etc` files (`hosts`, `hostname`, `resolv.conf`): they describe
    /// what runs, and go with it at a reboot.
    pub fn pods_dir(&self) -> PathBuf {
        self.run_dir.join("pods")
    }

    /// The pods' volumes (emptyDir on disk, configMaps, secrets' mount points, …).
    pub fn volumes_dir(&self) -> PathBuf {
        self.state_dir.join("pods")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
}

/// `a=b,c=d` → a map; the key and value rules are Kubernetes' label rules.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("--labels: {part:?} is not KEY=VALUE"))?;
        tug_api::validation::qualified_name(k).map_err(|e| format!("--labels: key {k:?}: {e}"))?;
        tug_api::validation::label_value(v).map_err(|e| format!("--labels: value {v:?} of {k}: {e}"))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// `key=value:NoSchedule,key2:NoExecute` → taints.
pub fn parse_taints(s: &str) -> Result<Vec<Taint>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (kv, effect) =
            part.rsplit_once(':').ok_or_else(|| format!("--taints: {part:?} is not KEY[=VALUE]:EFFECT"))?;
        if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
            return Err(format!(
                "--taints: {part:?}: effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
            ));
        }
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (kv, None),
        };
        tug_api::validation::qualified_name(key).map_err(|e| format!("--taints: key {key:?}: {e}"))?;
        out.push(Taint { key: key.to_string(), value, effect: effect.to_string() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_taints() {
        let l = parse_labels("zone=a, tug.io/role=edge").unwrap();
        assert_eq!(l["zone"], "a");
        assert_eq!(l["tug.io/role"], "edge");
        assert!(parse_labels("zone").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_labels("Bad Key=x").unwrap_err().contains("Bad Key"));
        let t = parse_taints("gpu=yes:NoSchedule,edge:NoExecute").unwrap();
        assert_eq!(t[0], Taint { key: "gpu".into(), value: Some("yes".into()), effect: "NoSchedule".into() });
        assert_eq!(t[1].value, None);
        assert!(parse_taints("gpu=yes:Sometimes").unwrap_err().contains("Sometimes"));
        assert!(parse_taints("gpu").is_err());
    }

    #[test]
    fn eviction_thresholds() {
        let e = parse_eviction(DEFAULT_EVICTION_HARD).unwrap();
        assert_eq!(e.memory_available, Some(Threshold::Amount(100 << 20)));
        assert_eq!(e.nodefs_available, Some(Threshold::Percent(10.0)));
        assert!(e.nodefs_available.unwrap().crossed(9, 100));
        assert!(!e.nodefs_available.unwrap().crossed(10, 100));
        let off = parse_eviction("nodefs.available<0%").unwrap();
        assert_eq!(off.memory_available, None, "a signal left out has no threshold");
        assert!(!off.nodefs_available.unwrap().crossed(0, 100));
        assert!(parse_eviction("disk.free<1%").unwrap_err().contains("unknown signal \"disk.free\""));
        assert!(parse_eviction("nodefs.available<140%").unwrap_err().contains("nodefs.available"));
        assert!(parse_eviction("memory.available<lots").unwrap_err().contains("\"lots\""));
        assert!(parse_eviction("memory.available=1Gi").unwrap_err().contains("SIGNAL<VALUE"));
    }
}
