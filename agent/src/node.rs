//! The node object: what this host has (capacity, allocatable, addresses, system info), how
//! it feels (conditions from the kernel's pressure figures and free space), and the heartbeat.
//!
//! [`facts`] reads the host; [`node_status`] and [`node_object`] are pure.

use crate::config::{Config, Eviction, Threshold};
use serde_json::{Value, json};
use std::path::Path;

/// What the agent reads off the host for its node's status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub memory_available_bytes: u64,
    pub disk_bytes: u64,
    pub disk_available_bytes: u64,
    pub gpus: u32,
    pub pids_max: u64,
    pub pids_used: u64,
    /// `/proc/pressure/*`: the `some avg10` percentages (memory, io, cpu); None without PSI.
    pub psi_memory: Option<f64>,
    pub psi_io: Option<f64>,
    pub psi_cpu: Option<f64>,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    pub hostname: String,
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn meminfo(field: &str, text: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// `(MemTotal, MemAvailable)` in bytes from `/proc/meminfo`'s text.
pub fn facts_memory(meminfo_text: &str) -> (u64, u64) {
    (meminfo("MemTotal", meminfo_text), meminfo("MemAvailable", meminfo_text))
}

/// The `some avg10` figure of a `/proc/pressure/*` file.
pub fn psi_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace().find_map(|f| f.strip_prefix("avg10=")?.parse().ok())
}

/// Reads the host.
pub fn facts(state_dir: &Path) -> Facts {
    let mem = read("/proc/meminfo");
    let (disk, avail) = nix::sys::statvfs::statvfs(state_dir)
        .map(|s| (s.blocks() * s.fragment_size(), s.blocks_available() * s.fragment_size()))
        .unwrap_or((0, 0));
    let gpus = std::fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix("nvidia")
                        .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0);
    let os = read("/etc/os-release");
    let os_image = os
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into());
    let pids_used = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
                .count()
        })
        .unwrap_or(0) as u64;
    Facts {
        cpus: u32::try_from(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).unwrap_or(1),
        memory_bytes: meminfo("MemTotal", &mem),
        memory_available_bytes: meminfo("MemAvailable", &mem),
        disk_bytes: disk,
        disk_available_bytes: avail,
        gpus: u32::try_from(gpus).unwrap_or(0),
        pids_max: read("/proc/sys/kernel/pid_max").parse().unwrap_or(32768),
        pids_used,
        psi_memory: psi_avg10(&read("/proc/pressure/memory")),
        psi_io: psi_avg10(&read("/proc/pressure/io")),
        psi_cpu: psi_avg10(&read("/proc/pressure/cpu")),
        kernel: read("/proc/sys/kernel/osrelease"),
        os_image,
        machine_id: read("/etc/machine-id"),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        hostname: read("/proc/sys/kernel/hostname"),
    }
}

fn condition(type_: &str, on: bool, reason_on: &str, reason_off: &str, message: String, now: &str) -> Value {
    json!({
        "type": type_,
        "status": if on { "True" } else { "False" },
        "reason": if on { reason_on } else { reason_off },
        "message": message,
        "lastTransitionTime": now,
        "lastProbeTime": now,
    })
}

/// The node's conditions. Pressure is what kubelet's hard eviction thresholds call it
/// (`--eviction-hard`: by default memory available under 100 MiB, the state filesystem under
/// 10 % free, PIDs over 90 % of `pid_max`), or the kernel's PSI saying tasks stalled on
/// memory more than 25 % of the last 10 s. As in Kubernetes, pressure does not make a node
/// NotReady: the node controller taints it `node.kubernetes.io/*-pressure:NoSchedule`, so it
/// keeps its pods and takes no new ones.
pub fn conditions(f: &Facts, e: &Eviction, now: &str) -> Vec<Value> {
    let psi = |v: Option<f64>| v.map_or_else(|| "no PSI".to_string(), |p| format!("{p:.1}% stalled (avg10)"));
    let mem = e.memory_available.is_some_and(|t| t.crossed(f.memory_available_bytes, f.memory_bytes))
        || f.psi_memory.is_some_and(|p| p > 25.0);
    #[allow(clippy::cast_precision_loss)]
    let disk_free =
        if f.disk_bytes == 0 { 100.0 } else { f.disk_available_bytes as f64 * 100.0 / f.disk_bytes as f64 };
    let disk = f.disk_bytes > 0
        && e.nodefs_available.is_some_and(|t| t.crossed(f.disk_available_bytes, f.disk_bytes));
    let pids = f.pids_max > 0
        && e.pid_available.is_some_and(|t| t.crossed(f.pids_max.saturating_sub(f.pids_used), f.pids_max));
    for (name, on) in [("MemoryPressure", mem), ("DiskPressure", disk), ("PIDPressure", pids)] {
        crate::metrics::get()
            .pressure
            .get_or_create(&tug_metrics::labels([("condition", name)]))
            .set(i64::from(on));
    }
    vec![
        condition(
            "Ready",
            true,
            "KubeletReady",
            "KubeletNotReady",
            "tug-agent is posting ready status".into(),
            now,
        ),
        condition(
            "MemoryPressure",
            mem,
            "KubeletHasInsufficientMemory",
            "KubeletHasSufficientMemory",
            format!("{} MiB available, memory {}", f.memory_available_bytes >> 20, psi(f.psi_memory)),
            now,
        ),
        condition(
            "DiskPressure",
            disk,
            "KubeletHasDiskPressure",
            "KubeletHasNoDiskPressure",
            format!("{disk_free:.0}% of the state filesystem free, io {}", psi(f.psi_io)),
            now,
        ),
        condition(
            "PIDPressure",
            pids,
            "KubeletHasInsufficientPID",
            "KubeletHasSufficientPID",
            format!("{} of {} PIDs in use", f.pids_used, f.pids_max),
            now,
        ),
    ]
}

/// What a hard eviction threshold keeps out of allocatable.
fn reserved(t: Option<Threshold>, capacity: u64) -> u64 {
    t.map_or(0, |t| t.of(capacity))
}

/// `status` of the Node.
pub fn node_status(cfg: &Config, f: &Facts, now: &str) -> Value {
    let mut capacity = json!({
        "cpu": f.cpus.to_string(),
        "memory": format!("{}Ki", f.memory_bytes / 1024),
        "ephemeral-storage": format!("{}Ki", f.disk_bytes / 1024),
        "pods": cfg.max_pods.to_string(),
    });
    let mut allocatable = json!({
        "cpu": f.cpus.to_string(),
        "memory": format!("{}Ki", f.memory_bytes.saturating_sub(reserved(cfg.eviction.memory_available, f.memory_bytes)) / 1024),
        "ephemeral-storage": format!("{}Ki", f.disk_bytes.saturating_sub(reserved(cfg.eviction.nodefs_available, f.disk_bytes)) / 1024),
        "pods": cfg.max_pods.to_string(),
    });
    if f.gpus > 0 {
        capacity["tug.io/gpu"] = f.gpus.to_string().into();
        allocatable["tug.io/gpu"] = f.gpus.to_string().into();
    }
    json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": conditions(f, &cfg.eviction, now),
        "addresses": [
            {"type": "InternalIP", "address": cfg.node_ip.to_string()},
            {"type": "Hostname", "address": f.hostname},
        ],
        "nodeInfo": {
            "kernelVersion": f.kernel,
            "osImage": f.os_image,
            "operatingSystem": "linux",
            "architecture": tug_images::manifest::host_platform().architecture,
            "containerRuntimeVersion": format!("tug://{}", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": format!("v{}", env!("CARGO_PKG_VERSION")),
            "machineID": f.machine_id,
            "bootID": f.boot_id,
        },
    })
}

/// The annotation that lists the taints the agent set (from `--taints`), so that a later
/// registration replaces those and no other: taints from the API (`tug taint`) and the node
/// controller's stay.
pub const AGENT_TAINTS: &str = "tug.io/agent-taints";

/// The node's taints after a re-registration: `current` without the ones the agent set last
/// time (`previous`, as the annotation lists them) or sets now, then the agent's `agent`.
pub fn merge_taints(current: &[Value], previous: &[Value], agent: &[Value]) -> Vec<Value> {
    let same = |a: &Value, b: &Value| a["key"] == b["key"] && a["effect"] == b["effect"];
    let mut out: Vec<Value> =
        current.iter().filter(|t| !previous.iter().chain(agent).any(|o| same(t, o))).cloned().collect();
    out.extend(agent.iter().cloned());
    out
}

/// The Node as the agent registers it: name, labels (the well-known ones and `--labels`),
/// taints from `--taints` (listed in the [`AGENT_TAINTS`] annotation too).
pub fn node_object(cfg: &Config, f: &Facts, now: &str) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": cfg.node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": tug_images::manifest::host_platform().architecture,
    });
    for (k, v) in &cfg.labels {
        labels[k] = v.clone().into();
    }
    let taints: Vec<Value> = cfg
        .taints
        .iter()
        .map(|t| {
            let mut v = json!({"key": t.key, "effect": t.effect});
            if let Some(val) = &t.value {
                v["value"] = val.clone().into();
            }
            v
        })
        .collect();
    let mut spec = json!({});
    if !taints.is_empty() {
        spec["taints"] = taints.into();
    }
    let own =
        serde_json::to_string(&spec["taints"].as_array().cloned().unwrap_or_default()).unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": cfg.node_name, "labels": labels, "annotations": {AGENT_TAINTS: own}},
        "spec": spec,
        "status": node_status(cfg, f, now),
    })
}

#[cfg(test)]
mod tests {
    /// Re-registration replaces the taints the agent set before, keeps everyone else's.
    #[test]
    fn only_the_agents_own_taints_are_replaced() {
        let t = |k: &str, e: &str| json!({"key": k, "effect": e});
        let current = vec![
            t("old-flag", "NoSchedule"),
            t("by-admin", "NoExecute"),
            t("node.kubernetes.io/unreachable", "NoSchedule"),
        ];
        let merged =
            merge_taints(&current, &[t("old-flag", "NoSchedule")], &[t("new-flag", "PreferNoSchedule")]);
        assert_eq!(
            merged,
            vec![
                t("by-admin", "NoExecute"),
                t("node.kubernetes.io/unreachable", "NoSchedule"),
                t("new-flag", "PreferNoSchedule")
            ]
        );
        // The same flag again is not doubled.
        assert_eq!(
            merge_taints(&merged, &[t("new-flag", "PreferNoSchedule")], &[t("new-flag", "PreferNoSchedule")]),
            merged
        );
    }

    use super::*;

    #[test]
    fn reads_psi_and_meminfo() {
        let psi =
            "some avg10=12.50 avg60=1.00 avg300=0.10 total=1\nfull avg10=3.00 avg60=0 avg300=0 total=1\n";
        assert_eq!(psi_avg10(psi), Some(12.5));
        assert_eq!(psi_avg10(""), None);
        assert_eq!(meminfo("MemTotal", "MemTotal:       1024 kB\nMemFree: 1 kB\n"), 1 << 20);
    }

    #[test]
    fn pressure_conditions() {
        let f = Facts {
            memory_available_bytes: 50 << 20,
            disk_bytes: 100,
            disk_available_bytes: 5,
            pids_max: 100,
            pids_used: 95,
            ..Default::default()
        };
        let defaults = crate::config::parse_eviction(crate::config::DEFAULT_EVICTION_HARD).unwrap();
        let c = conditions(&f, &defaults, "t");
        let status =
            |t: &str| c.iter().find(|c| c["type"] == t).unwrap()["status"].as_str().unwrap().to_string();
        assert_eq!(status("MemoryPressure"), "True");
        assert_eq!(status("DiskPressure"), "True");
        assert_eq!(status("PIDPressure"), "True");
        assert_eq!(status("Ready"), "True", "pressure is not NotReady");
        // Thresholds set off (kind's nodefs.available<0% for test machines) report none.
        let off = crate::config::parse_eviction("nodefs.available<0%").unwrap();
        let c = conditions(&f, &off, "t");
        let status =
            |t: &str| c.iter().find(|c| c["type"] == t).unwrap()["status"].as_str().unwrap().to_string();
        assert_eq!(status("MemoryPressure"), "False");
        assert_eq!(status("DiskPressure"), "False");
        assert_eq!(status("PIDPressure"), "False");
        let ok = Facts {
            memory_available_bytes: 1 << 30,
            disk_bytes: 100,
            disk_available_bytes: 50,
            pids_max: 100,
            pids_used: 10,
            psi_memory: Some(30.0),
            ..Default::default()
        };
        let c = conditions(&ok, &defaults, "t");
        let status =
            |t: &str| c.iter().find(|c| c["type"] == t).unwrap()["status"].as_str().unwrap().to_string();
        assert_eq!(status("Ready"), "True");
        assert_eq!(status("MemoryPressure"), "True", "PSI stall over 25% is pressure");
    }
}
