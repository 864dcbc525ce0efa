//! `linux.resources` → the cgroup file writes that enforce it, for v2 or v1. Pure.

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxDeviceType, LinuxMemory, LinuxResources, LinuxThrottleDevice,
};
use tug_bpf::{Access, DeviceKind, DeviceRule};

/// One write: a file in the container's directory of the hierarchy that holds `controller`
/// (on v2 every file lives in the one unified directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub controller: &'static str,
    pub file: String,
    pub value: String,
}

/// A resource the spec asks for that cannot be expressed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    #[error("linux.resources.{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn w(controller: &'static str, file: impl Into<String>, value: impl ToString) -> Write {
    Write { controller, file: file.into(), value: value.to_string() }
}

/// The writes for `res`; `v2` chooses the unified interface files.
pub fn writes(res: &LinuxResources, v2: bool) -> Result<Vec<Write>, ResourceError> {
    let mut out = Vec::new();
    if let Some(m) = res.memory() {
        memory(m, v2, &mut out)?;
    }
    if let Some(c) = res.cpu() {
        cpu(c, v2, &mut out)?;
    }
    if let Some(p) = res.pids() {
        let limit = if p.limit() <= 0 { "max".to_string() } else { p.limit().to_string() };
        out.push(w("pids", "pids.max", limit));
    }
    if let Some(b) = res.block_io() {
        block_io(b, v2, &mut out)?;
    }
    for h in res.hugepage_limits().iter().flatten() {
        let file = if v2 {
            format!("hugetlb.{}.max", h.page_size())
        } else {
            format!("hugetlb.{}.limit_in_bytes", h.page_size())
        };
        out.push(w("hugetlb", file, h.limit()));
    }
    if let Some(n) = res.network() {
        network(n, v2, &mut out)?;
    }
    if let Some(unified) = res.unified() {
        if !v2 && !unified.is_empty() {
            return Err(ResourceError::Invalid {
                field: "unified",
                reason: "needs a cgroup v2 host (this host's resource controllers are v1)".into(),
            });
        }
        let mut keys: Vec<_> = unified.iter().collect();
        keys.sort();
        for (k, v) in keys {
            if k.contains('/') || k.starts_with("cgroup.") {
                return Err(ResourceError::Invalid {
                    field: "unified",
                    reason: format!("{k:?} is not a controller file"),
                });
            }
            out.push(w("", k.clone(), v));
        }
    }
    Ok(out)
}

/// `network`: the v1 `net_cls` class id and `net_prio` priorities. Cgroup v2 has neither
/// controller, so there it is refused, never dropped; on v1 a host without the hierarchy
/// fails at the write, naming the controller.
fn network(n: &oci_spec::runtime::LinuxNetwork, v2: bool, out: &mut Vec<Write>) -> Result<(), ResourceError> {
    let asked = n.class_id().is_some() || n.priorities().as_ref().is_some_and(|p| !p.is_empty());
    if asked && v2 {
        return Err(ResourceError::Invalid {
            field: "network",
            reason:
                "cgroup v2 has no net_cls or net_prio controller (classify traffic with nftables instead)"
                    .into(),
        });
    }
    if let Some(id) = n.class_id() {
        out.push(w("net_cls", "net_cls.classid", id));
    }
    for p in n.priorities().iter().flatten() {
        out.push(w("net_prio", "net_prio.ifpriomap", format!("{} {}", p.name(), p.priority())));
    }
    Ok(())
}

fn memory(m: &LinuxMemory, v2: bool, out: &mut Vec<Write>) -> Result<(), ResourceError> {
    let limit = m.limit().filter(|l| *l != 0);
    if let Some(limit) = limit {
        out.push(if v2 {
            w("memory", "memory.max", max_or(limit))
        } else {
            w("memory", "memory.limit_in_bytes", limit)
        });
    }
    if let Some(r) = m.reservation() {
        out.push(if v2 {
            w("memory", "memory.low", max_or(r))
        } else {
            w("memory", "memory.soft_limit_in_bytes", r)
        });
    }
    if let Some(swap) = m.swap() {
        // OCI's swap is memory plus swap; v2's memory.swap.max is swap alone.
        if v2 {
            let value = match (swap, limit) {
                (-1, _) => "max".to_string(),
                (s, Some(l)) if l > 0 && s >= l => (s - l).to_string(),
                (s, Some(l)) if l > 0 => {
                    return Err(ResourceError::Invalid {
                        field: "memory.swap",
                        reason: format!("{s} is below memory.limit {l} (swap counts memory plus swap)"),
                    });
                }
                _ => {
                    return Err(ResourceError::Invalid {
                        field: "memory.swap",
                        reason: "needs memory.limit too on cgroup v2".into(),
                    });
                }
            };
            out.push(w("memory", "memory.swap.max", value));
        } else {
            out.push(w("memory", "memory.memsw.limit_in_bytes", swap));
        }
    }
    if let Some(s) = m.swappiness() {
        if s > 100 {
            return Err(ResourceError::Invalid {
                field: "memory.swappiness",
                reason: format!("{s} is above 100"),
            });
        }
        if !v2 {
            out.push(w("memory", "memory.swappiness", s));
        }
    }
    if m.disable_oom_killer() == Some(true) && !v2 {
        out.push(w("memory", "memory.oom_control", 1));
    }
    Ok(())
}

fn max_or(v: i64) -> String {
    if v < 0 { "max".into() } else { v.to_string() }
}

fn cpu(c: &LinuxCpu, v2: bool, out: &mut Vec<Write>) -> Result<(), ResourceError> {
    if let Some(shares) = c.shares().filter(|s| *s != 0) {
        if v2 {
            out.push(w("cpu", "cpu.weight", shares_to_weight(shares)));
        } else {
            out.push(w("cpu", "cpu.shares", shares));
        }
    }
    let (quota, period) = (c.quota(), c.period());
    if quota.is_some() || period.is_some() {
        let period = period.unwrap_or(100_000);
        if !(1000..=1_000_000).contains(&period) {
            return Err(ResourceError::Invalid {
                field: "cpu.period",
                reason: format!("{period} is outside 1000..1000000"),
            });
        }
        if v2 {
            let q = match quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            out.push(w("cpu", "cpu.max", format!("{q} {period}")));
        } else {
            out.push(w("cpu", "cpu.cfs_period_us", period));
            if let Some(q) = quota {
                out.push(w("cpu", "cpu.cfs_quota_us", if q > 0 { q } else { -1 }));
            }
        }
    }
    if let Some(b) = c.burst() {
        out.push(w("cpu", if v2 { "cpu.max.burst" } else { "cpu.cfs_burst_us" }, b));
    }
    if let Some(cpus) = c.cpus().as_ref().filter(|s| !s.is_empty()) {
        out.push(w("cpuset", "cpuset.cpus", cpus));
    }
    if let Some(mems) = c.mems().as_ref().filter(|s| !s.is_empty()) {
        out.push(w("cpuset", "cpuset.mems", mems));
    }
    Ok(())
}

/// The conversion runc and crun use: shares 2..262144 onto weight 1..10000.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

fn block_io(b: &LinuxBlockIo, v2: bool, out: &mut Vec<Write>) -> Result<(), ResourceError> {
    if let Some(weight) = b.weight() {
        if !(10..=1000).contains(&weight) {
            return Err(ResourceError::Invalid {
                field: "blockIO.weight",
                reason: format!("{weight} is outside 10..1000"),
            });
        }
        if v2 {
            // blkio's 10..1000 maps onto io's 1..10000 as runc does.
            out.push(w("io", "io.weight", 1 + (u64::from(weight) - 10) * 9999 / 990));
        } else {
            out.push(w("blkio", "blkio.weight", weight));
        }
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(weight) = d.weight() {
            let (file, value) = if v2 {
                (
                    "io.weight",
                    format!(
                        "{}:{} {}",
                        d.major(),
                        d.minor(),
                        1 + (u64::from(weight).max(10) - 10) * 9999 / 990
                    ),
                )
            } else {
                ("blkio.weight_device", format!("{}:{} {weight}", d.major(), d.minor()))
            };
            out.push(w(if v2 { "io" } else { "blkio" }, file, value));
        }
    }
    let lists: [(&Option<Vec<LinuxThrottleDevice>>, &str, &str); 4] = [
        (b.throttle_read_bps_device(), "rbps", "blkio.throttle.read_bps_device"),
        (b.throttle_write_bps_device(), "wbps", "blkio.throttle.write_bps_device"),
        (b.throttle_read_iops_device(), "riops", "blkio.throttle.read_iops_device"),
        (b.throttle_write_iops_device(), "wiops", "blkio.throttle.write_iops_device"),
    ];
    for (list, key, v1_file) in lists {
        for d in list.iter().flatten() {
            if v2 {
                out.push(w("io", "io.max", format!("{}:{} {key}={}", d.major(), d.minor(), d.rate())));
            } else {
                out.push(w("blkio", v1_file, format!("{}:{} {}", d.major(), d.minor(), d.rate())));
            }
        }
    }
    Ok(())
}

/// The devices every container may use whatever its rules say (a fresh `/dev` holds them).
const DEFAULT_DEVICES: [(u32, Option<u32>); 9] = [
    (1, Some(3)),
    (1, Some(5)),
    (1, Some(7)),
    (1, Some(8)),
    (1, Some(9)),
    (5, Some(0)),
    (5, Some(1)),
    (5, Some(2)),
    (136, None),
];

/// The container's device rules in order: the spec's, then the default devices and those the
/// spec creates, allowed (later rules win, as in cgroup v1). Empty when the spec has no
/// rules: the container then keeps what its parent cgroup allows.
pub fn device_rules(
    res: &LinuxResources,
    created: &[crate::mounts::DeviceNode],
) -> Result<Vec<DeviceRule>, ResourceError> {
    let mut out = Vec::new();
    for (i, rule) in res.devices().iter().flatten().enumerate() {
        let kind = match rule.typ().unwrap_or_default() {
            LinuxDeviceType::A => None,
            LinuxDeviceType::B => Some(DeviceKind::Block),
            LinuxDeviceType::C | LinuxDeviceType::U => Some(DeviceKind::Char),
            LinuxDeviceType::P => {
                return Err(ResourceError::Invalid {
                    field: "devices",
                    reason: format!("[{i}]: type p cannot be a device rule"),
                });
            }
        };
        let num = |n: Option<i64>| n.filter(|n| *n >= 0).and_then(|n| u32::try_from(n).ok());
        let text = rule.access().clone().unwrap_or_else(|| "rwm".into());
        let access = Access::parse(&text).filter(|a| a.0 != 0).ok_or_else(|| ResourceError::Invalid {
            field: "devices",
            reason: format!("[{i}].access {text:?} is not a subset of rwm"),
        })?;
        out.push(DeviceRule {
            allow: rule.allow(),
            kind,
            major: num(rule.major()),
            minor: num(rule.minor()),
            access,
        });
    }
    if out.is_empty() {
        return Ok(out);
    }
    for (major, minor) in DEFAULT_DEVICES {
        out.push(DeviceRule::allow(Some(DeviceKind::Char), Some(major), minor, Access::ALL));
    }
    for d in created {
        let kind =
            if d.kind == nix::sys::stat::SFlag::S_IFBLK { DeviceKind::Block } else { DeviceKind::Char };
        let (major, minor) = (u32::try_from(d.major).ok(), u32::try_from(d.minor).ok());
        out.push(DeviceRule::allow(Some(kind), major, minor, Access::ALL));
    }
    Ok(out)
}

/// The rules as writes to the v1 `devices` controller's `devices.allow` / `devices.deny`.
pub fn device_writes_v1(rules: &[DeviceRule]) -> Vec<Write> {
    rules
        .iter()
        .map(|r| {
            let file = if r.allow { "devices.allow" } else { "devices.deny" };
            let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
            let access: String = [(2, 'r'), (4, 'w'), (1, 'm')]
                .iter()
                .filter(|(b, _)| r.access.0 & b != 0)
                .map(|(_, c)| *c)
                .collect();
            let value = match r.kind {
                None if r.major.is_none() && r.minor.is_none() && r.access == Access::ALL => "a".to_string(),
                None => format!("a {}:{} {access}", num(r.major), num(r.minor)),
                Some(k) => format!(
                    "{} {}:{} {access}",
                    if k == DeviceKind::Block { 'b' } else { 'c' },
                    num(r.major),
                    num(r.minor)
                ),
            };
            w("devices", file, value)
        })
        .collect()
}

/// The `oom_kill` count from v2's `memory.events` or v1's `memory.oom_control`.
pub fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|v| v.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data-driven: resources JSON (the spec's shape) → the writes for v2 and for v1.
    fn check(json: &str, v2: &[(&str, &str)], v1: &[(&str, &str)]) {
        let res: LinuxResources = serde_json::from_str(json).unwrap();
        let got = |v: bool| -> Vec<(String, String)> {
            writes(&res, v).unwrap().into_iter().map(|w| (w.file, w.value)).collect()
        };
        let want = |l: &[(&str, &str)]| -> Vec<(String, String)> {
            l.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
        };
        assert_eq!(got(true), want(v2), "v2");
        assert_eq!(got(false), want(v1), "v1");
    }

    /// `network` is written to net_cls and net_prio on v1, refused on v2 (never dropped).
    #[test]
    fn network_class_and_priorities_need_v1() {
        let res: LinuxResources = serde_json::from_str(
            r#"{"network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]}}"#,
        )
        .unwrap();
        let got: Vec<_> =
            writes(&res, false).unwrap().into_iter().map(|w| (w.controller, w.file, w.value)).collect();
        assert_eq!(
            got,
            [
                ("net_cls", "net_cls.classid".to_string(), "1048577".to_string()),
                ("net_prio", "net_prio.ifpriomap".to_string(), "eth0 5".to_string())
            ]
        );
        let e = writes(&res, true).unwrap_err().to_string();
        assert!(e.starts_with("linux.resources.network: cgroup v2 has no net_cls"), "{e}");
    }

    #[test]
    fn memory_limits() {
        check(
            r#"{"memory":{"limit":67108864,"reservation":33554432}}"#,
            &[("memory.max", "67108864"), ("memory.low", "33554432")],
            &[("memory.limit_in_bytes", "67108864"), ("memory.soft_limit_in_bytes", "33554432")],
        );
        check(
            r#"{"memory":{"limit":100,"swap":300}}"#,
            &[("memory.max", "100"), ("memory.swap.max", "200")],
            &[("memory.limit_in_bytes", "100"), ("memory.memsw.limit_in_bytes", "300")],
        );
    }

    #[test]
    fn cpu_quota_shares_and_sets() {
        check(
            r#"{"cpu":{"quota":50000,"period":100000,"shares":1024,"cpus":"0"}}"#,
            &[("cpu.weight", "39"), ("cpu.max", "50000 100000"), ("cpuset.cpus", "0")],
            &[
                ("cpu.shares", "1024"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "50000"),
                ("cpuset.cpus", "0"),
            ],
        );
        check(
            r#"{"cpu":{"quota":-1}}"#,
            &[("cpu.max", "max 100000")],
            &[("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "-1")],
        );
    }

    #[test]
    fn pids_and_io() {
        check(r#"{"pids":{"limit":32}}"#, &[("pids.max", "32")], &[("pids.max", "32")]);
        check(
            r#"{"blockIO":{"weight":500,"throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1048576}]}}"#,
            &[("io.weight", "4950"), ("io.max", "8:0 rbps=1048576")],
            &[("blkio.weight", "500"), ("blkio.throttle.read_bps_device", "8:0 1048576")],
        );
    }

    #[test]
    fn hugepages() {
        check(
            r#"{"hugepageLimits":[{"pageSize":"2MB","limit":4194304}]}"#,
            &[("hugetlb.2MB.max", "4194304")],
            &[("hugetlb.2MB.limit_in_bytes", "4194304")],
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let res: LinuxResources = serde_json::from_str(r#"{"cpu":{"period":5}}"#).unwrap();
        assert_eq!(
            writes(&res, true).unwrap_err().to_string(),
            "linux.resources.cpu.period: 5 is outside 1000..1000000"
        );
        let res: LinuxResources = serde_json::from_str(r#"{"memory":{"limit":100,"swap":50}}"#).unwrap();
        assert!(writes(&res, true).unwrap_err().to_string().starts_with("linux.resources.memory.swap"));
        let res: LinuxResources = serde_json::from_str(r#"{"unified":{"memory.high":"5"}}"#).unwrap();
        assert!(writes(&res, false).is_err());
    }

    #[test]
    fn shares_map_onto_weights_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn device_rules_keep_the_default_devices_usable() {
        let res: LinuxResources =
            serde_json::from_str(r#"{"devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":10,"access":"r"}]}"#).unwrap();
        let rules = device_rules(&res, &[]).unwrap();
        let got: Vec<(String, String)> =
            device_writes_v1(&rules).into_iter().map(|w| (w.file, w.value)).collect();
        assert_eq!(got[0], ("devices.deny".to_string(), "a".to_string()));
        assert_eq!(got[1], ("devices.allow".to_string(), "c 10:* r".to_string()));
        assert!(got.contains(&("devices.allow".to_string(), "c 1:3 rwm".to_string())));
        assert!(!got.iter().any(|(_, v)| v.starts_with("b *:*")), "no blanket mknod of block devices");
        let prog = tug_bpf::device_filter(&rules);
        let req = |kind, major, minor, a: &str| tug_bpf::Request {
            kind,
            major,
            minor,
            access: Access::parse(a).unwrap(),
        };
        assert!(tug_bpf::interpret(&prog, req(DeviceKind::Char, 1, 3, "rw")));
        assert!(tug_bpf::interpret(&prog, req(DeviceKind::Char, 10, 200, "r")));
        assert!(!tug_bpf::interpret(&prog, req(DeviceKind::Char, 10, 200, "w")));
        assert!(!tug_bpf::interpret(&prog, req(DeviceKind::Block, 8, 0, "m")));
        assert!(device_rules(&LinuxResources::default(), &[]).unwrap().is_empty(), "no rules, no filter");
    }

    #[test]
    fn oom_counts() {
        assert_eq!(oom_kill_count("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"), 1);
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"), 2);
        assert_eq!(oom_kill_count(""), 0);
    }
}
