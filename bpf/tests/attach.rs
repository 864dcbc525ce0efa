//! Root test: a device filter attached to a real cgroup v2 directory decides what a process
//! in it may open. Runs on pure v2 hosts and on hybrid ones (the unified hierarchy carries BPF
//! programs even without controllers).

use std::path::PathBuf;
use std::process::Command;
use tug_bpf::{Access, DeviceKind, DeviceRule, device_filter, loader};

/// This process's own directory in the cgroup2 hierarchy.
fn own_unified_dir() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let line = mountinfo.lines().find(|l| l.contains(" - cgroup2 "))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let (root, point) = (fields[3], fields[4]);
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let rel = own.strip_prefix(root).unwrap_or(own).trim_start_matches('/');
    Some(PathBuf::from(point).join(rel))
}

/// Removes the test cgroup when dropped, also on failure.
struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn an_attached_filter_denies_what_its_rules_do_not_allow() {
    let dir =
        own_unified_dir().expect("a cgroup2 mount").join(format!("tug-bpf-test-{}", std::process::id()));
    std::fs::create_dir(&dir).expect("make a cgroup");
    let guard = Guard(dir.clone());
    // /dev/zero (1:5) may be read but not written; everything else is denied.
    let prog = device_filter(&[DeviceRule::allow(Some(DeviceKind::Char), Some(1), Some(5), Access::READ)]);
    let fd = loader::load_device_filter(&prog).expect("load");
    loader::attach_device_filter(&fd, &dir).expect("attach");
    let script = format!(
        "echo $$ > {}/cgroup.procs && {{ cat /dev/null; echo null=$?; head -c 3 /dev/zero | wc -c; echo x > /dev/zero; echo zero-write=$?; }}",
        dir.display()
    );
    let out = Command::new("/bin/busybox").args(["sh", "-c", &script]).output().expect("run sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("null=1"), "/dev/null (1:3) is denied: {stdout} {stderr}");
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    assert!(stdout.lines().any(|l| l.trim() == "3"), "/dev/zero (1:5) may be read: {stdout}");
    assert!(stdout.contains("zero-write=1"), "but not written: {stdout} {stderr}");
    drop(guard);
}

#[test]
fn the_verifier_accepts_a_large_rule_set() {
    let rules: Vec<DeviceRule> = (0..200)
        .map(|i| DeviceRule::allow(Some(DeviceKind::Block), Some(8), Some(i), Access::parse("rw").unwrap()))
        .collect();
    loader::load_device_filter(&device_filter(&rules)).expect("the kernel accepts the program");
}
