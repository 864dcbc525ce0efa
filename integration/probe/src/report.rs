//! Gathers the report: each field from the kernel's own view (`/proc/self`, syscalls), so the
//! probe needs nothing from the image but itself.

use serde_json::{Map, Value, json};
use std::fs;

/// Capability names by bit number, as in `linux/capability.h`.
const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The full report as one JSON object.
pub fn collect() -> Value {
    let status = proc_status();
    let field = |k: &str| status.get(k).cloned().unwrap_or_default();
    json!({
        "pid": std::process::id(),
        "ppid": nix::unistd::getppid().as_raw(),
        "hostname": nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()),
        "domainname": read_trim("/proc/sys/kernel/domainname"),
        "uid": nix::unistd::getuid().as_raw(),
        "euid": nix::unistd::geteuid().as_raw(),
        "gid": nix::unistd::getgid().as_raw(),
        "egid": nix::unistd::getegid().as_raw(),
        "groups": nix::unistd::getgroups().map(|g| g.iter().map(|g| g.as_raw()).collect::<Vec<_>>()).unwrap_or_default(),
        "umask": field("Umask"),
        "cwd": std::env::current_dir().ok().map(|p| p.display().to_string()),
        "args": std::env::args().collect::<Vec<_>>(),
        "env": std::env::vars().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "capabilities": {
            "bounding": cap_names(&field("CapBnd")),
            "effective": cap_names(&field("CapEff")),
            "permitted": cap_names(&field("CapPrm")),
            "inheritable": cap_names(&field("CapInh")),
            "ambient": cap_names(&field("CapAmb")),
        },
        "no_new_privs": field("NoNewPrivs") == "1",
        "seccomp": match field("Seccomp").as_str() { "1" => "strict", "2" => "filter", _ => "disabled" },
        "namespaces": namespaces(),
        "mounts": mounts(),
        "cgroup": cgroup(),
        "rlimits": rlimits(),
        "oom_score_adj": read_trim("/proc/self/oom_score_adj").and_then(|s| s.parse::<i64>().ok()),
        "fds": fds(),
        "interfaces": interfaces(),
    })
}

fn read_trim(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn proc_status() -> std::collections::HashMap<String, String> {
    let text = fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Decodes a hex capability mask from `/proc/self/status` into capability names.
fn cap_names(hex: &str) -> Vec<&'static str> {
    let mask = u64::from_str_radix(hex, 16).unwrap_or(0);
    CAP_NAMES.iter().enumerate().filter(|(bit, _)| mask & (1u64 << bit) != 0).map(|(_, name)| *name).collect()
}

fn namespaces() -> Map<String, Value> {
    let kinds = ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"];
    kinds
        .iter()
        .filter_map(|k| {
            let link = fs::read_link(format!("/proc/self/ns/{k}")).ok()?;
            Some((k.to_string(), Value::from(link.display().to_string())))
        })
        .collect()
}

/// Mounts from `/proc/self/mountinfo`: mount point, type, source, and the per-mount plus
/// superblock options together.
fn mounts() -> Vec<Value> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            Some(json!({
                "target": pre.get(4)?,
                "options": pre.get(5)?,
                "propagation": pre.get(6..).unwrap_or_default().join(" "),
                "type": post.first()?,
                "source": post.get(1)?,
                "super_options": post.get(2).copied().unwrap_or_default(),
            }))
        })
        .collect()
}

/// The cgroup membership and whatever limit files the container can see under
/// `/sys/fs/cgroup` (v2 at the root, or the v1 controllers' directories).
fn cgroup() -> Value {
    let membership = read_trim("/proc/self/cgroup").unwrap_or_default();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let files: &[&str] = if v2 {
        &[
            "memory.max",
            "memory.low",
            "memory.swap.max",
            "pids.max",
            "cpu.max",
            "cpu.weight",
            "cpuset.cpus",
            "io.max",
            "io.weight",
            "hugetlb.2MB.max",
        ]
    } else {
        &[
            "memory/memory.limit_in_bytes",
            "memory/memory.soft_limit_in_bytes",
            "pids/pids.max",
            "cpu/cpu.cfs_quota_us",
            "cpu/cpu.cfs_period_us",
            "cpu/cpu.shares",
            "cpuset/cpuset.cpus",
        ]
    };
    let limits: Map<String, Value> = files
        .iter()
        .filter_map(|f| Some((f.to_string(), Value::from(read_trim(&format!("/sys/fs/cgroup/{f}"))?))))
        .collect();
    json!({ "membership": membership, "version": if v2 { 2 } else { 1 }, "limits": limits })
}

fn rlimits() -> Map<String, Value> {
    use nix::sys::resource::{Resource, getrlimit};
    let list = [
        ("RLIMIT_CORE", Resource::RLIMIT_CORE),
        ("RLIMIT_CPU", Resource::RLIMIT_CPU),
        ("RLIMIT_DATA", Resource::RLIMIT_DATA),
        ("RLIMIT_FSIZE", Resource::RLIMIT_FSIZE),
        ("RLIMIT_MEMLOCK", Resource::RLIMIT_MEMLOCK),
        ("RLIMIT_NOFILE", Resource::RLIMIT_NOFILE),
        ("RLIMIT_NPROC", Resource::RLIMIT_NPROC),
        ("RLIMIT_STACK", Resource::RLIMIT_STACK),
    ];
    list.iter()
        .filter_map(|(name, r)| {
            let (soft, hard) = getrlimit(*r).ok()?;
            Some((name.to_string(), json!({"soft": soft, "hard": hard})))
        })
        .collect()
}

/// Open file descriptors and what they point at (taken before the directory is read, so the
/// directory's own descriptor shows up as one more entry).
fn fds() -> Vec<Value> {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else { return Vec::new() };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let target = fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default();
        Some(json!({"fd": e.file_name().to_string_lossy(), "target": target}))
    })
    .collect()
}

fn interfaces() -> Vec<Value> {
    let mut out: Map<String, Value> = Map::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let entry = out
                .entry(a.interface_name.clone())
                .or_insert_with(|| json!({"name": a.interface_name, "up": a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP), "addresses": []}));
            let ip = a.address.as_ref().and_then(|s| {
                s.as_sockaddr_in()
                    .map(|v4| v4.ip().to_string())
                    .or_else(|| s.as_sockaddr_in6().map(|v6| v6.ip().to_string()))
            });
            if let (Some(ip), Some(list)) = (ip, entry["addresses"].as_array_mut()) {
                list.push(Value::from(ip));
            }
        }
    }
    out.into_iter().map(|(_, v)| v).collect()
}
