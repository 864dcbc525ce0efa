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
    /// Program Services (`--proxy-mode` not `none`), and how.
    pub proxy_enabled: bool,
    pub proxy_mode: crate::proxy::Mode,
    pub cluster_cidr: tug_api::cidr::Cidr4,
    pub service_cidr: tug_api::cidr::Cidr4,
    /// The DNS domain of the cluster (`cluster.local`).
    pub cluster_domain: String,
}

impl Config {
    pub fn runtime_root(&self) -> PathBuf {
        self.state_dir.join("runtime")
    }

    pub fn supervisors(&self) -> PathBuf {
        self.state_dir.join("runtime/supervisors")
    }

    pub fn pods_dir(&self) -> PathBuf {
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
}
