//! tug-shim as an OCI runtime, checked from the inside with the probe and from the outside
//! with the lifecycle commands. Root tests: they make namespaces, mounts and cgroups.

use serde_json::{Value, json};
use tug_integration::bundle::Bundle;
use tug_integration::leaks::Debris;

fn report(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "run failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("probe output ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// The message of the failure a command printed, checking it is in runc's (logrus') shape:
/// `time="2026-12-06T12:18:27Z" level=error msg="…"`.
fn error_msg(out: &std::process::Output) -> String {
    let text = stderr(out);
    let line = text.lines().last().unwrap_or_default();
    let quoted = line
        .strip_prefix("time=\"")
        .and_then(|l| l.split_once("\" level=error msg="))
        .filter(|(time, _)| time.len() == 20 && time.ends_with('Z'))
        .map(|(_, msg)| msg)
        .unwrap_or_else(|| panic!("not runc's error line: {text}"));
    serde_json::from_str(quoted).unwrap_or_else(|e| panic!("{quoted}: {e}"))
}

fn state(b: &Bundle, id: &str) -> Value {
    let out = b.shim_output(&["state", id]);
    assert!(out.status.success(), "state {id}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("state json")
}

#[test]
fn the_probe_sees_an_isolated_container() {
    let mut b = Bundle::new(&["/bin/tug-probe"]);
    b.spec["process"]["env"].as_array_mut().unwrap().push(json!("MARK=inside"));
    b.spec["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654}]);
    b.spec["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 7], "umask": 0o27});
    b.spec["process"]["oomScoreAdj"] = json!(500);
    let r = report(&b.run("iso"));
    assert_eq!(r["umask"], "0027");
    assert_eq!(r["oom_score_adj"], 500);
    assert_eq!(r["pid"], 1);
    assert_eq!(r["hostname"], "tug-test");
    assert_eq!((r["uid"].clone(), r["gid"].clone()), (json!(1000), json!(1000)));
    assert_eq!(r["groups"], json!([5, 7]));
    assert!(r["env"].as_array().unwrap().contains(&json!("MARK=inside")));
    assert_eq!(r["rlimits"]["RLIMIT_NOFILE"], json!({"soft": 321, "hard": 654}));
    assert_eq!(r["no_new_privs"], true);
    let caps = &r["capabilities"];
    assert_eq!(caps["bounding"], json!(["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]));
    // As with runc: a non-root user's exec drops permitted and effective, and the ambient
    // set cannot be raised without the inheritable one, which this spec (runc's default) omits.
    assert_eq!(caps["effective"], json!([]));
    assert_eq!(caps["ambient"], json!([]));
    let mounts: Vec<(String, String)> = r["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["target"].as_str().unwrap().to_string(), m["type"].as_str().unwrap().to_string()))
        .collect();
    for (target, fstype) in [
        ("/proc", "proc"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/sys", "sysfs"),
    ] {
        assert!(
            mounts.contains(&(target.to_string(), fstype.to_string())),
            "{target} {fstype} in {mounts:?}"
        );
    }
    let root = r["mounts"].as_array().unwrap().iter().find(|m| m["target"] == "/").unwrap();
    assert!(root["options"].as_str().unwrap().starts_with("ro"), "root.readonly: {root}");
    let ifaces: Vec<&str> =
        r["interfaces"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(ifaces, ["lo"], "a new network namespace has only lo");
    let host_pid_ns = std::fs::read_link("/proc/self/ns/pid").unwrap().display().to_string();
    assert_ne!(r["namespaces"]["pid"], json!(host_pid_ns));
    let fds: Vec<&str> = r["fds"].as_array().unwrap().iter().map(|f| f["fd"].as_str().unwrap()).collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "only stdio and the probe's own directory handle: {}", r["fds"]);
}

#[test]
fn root_keeps_exactly_the_listed_capabilities() {
    let mut b = Bundle::new(&["/bin/tug-probe"]);
    let caps = json!(["CAP_CHOWN", "CAP_NET_RAW"]);
    b.spec["process"]["capabilities"] = json!({"bounding": caps, "effective": ["CAP_CHOWN"], "permitted": caps, "inheritable": ["CAP_NET_RAW"], "ambient": ["CAP_NET_RAW"]});
    let r = report(&b.run("caps"));
    let c = &r["capabilities"];
    assert_eq!(c["bounding"], json!(["CAP_CHOWN", "CAP_NET_RAW"]));
    assert_eq!(c["inheritable"], json!(["CAP_NET_RAW"]));
    assert_eq!(c["ambient"], json!(["CAP_NET_RAW"]));
    // exec as root recomputes effective from permitted; the bounding set is what must hold.
    assert!(!c["effective"].as_array().unwrap().contains(&json!("CAP_SYS_ADMIN")));
}

#[test]
fn limits_are_written_to_the_containers_cgroup() {
    let mut b = Bundle::new(&["/bin/tug-probe"]);
    b.spec["linux"]["resources"] = json!({
        "memory": {"limit": 67108864},
        "cpu": {"quota": 50000, "period": 100000, "shares": 512},
        "pids": {"limit": 64}
    });
    let r = report(&b.run("limits"));
    let limits = &r["cgroup"]["limits"];
    if r["cgroup"]["version"] == 2 {
        assert_eq!(limits["memory.max"], "67108864");
        assert_eq!(limits["cpu.max"], "50000 100000");
        assert_eq!(limits["pids.max"], "64");
    } else {
        assert_eq!(limits["memory/memory.limit_in_bytes"], "67108864");
        assert_eq!(limits["cpu/cpu.cfs_quota_us"], "50000");
        assert_eq!(limits["cpu/cpu.cfs_period_us"], "100000");
        assert_eq!(limits["cpu/cpu.shares"], "512");
        assert_eq!(limits["pids/pids.max"], "64");
    }
    let membership = r["cgroup"]["membership"].as_str().unwrap();
    assert!(
        membership.lines().all(|l| l.ends_with(":/") || l.contains("name=")),
        "cgroup namespace root: {membership}"
    );
}

#[test]
fn a_cpu_quota_throttles_a_spinning_process() {
    let mut b = Bundle::new(&["/bin/tug-probe", "spin", "600"]);
    b.spec["linux"]["resources"] = json!({"cpu": {"quota": 10000, "period": 100000}});
    let r = report(&b.run("spin"));
    // 10 ms of CPU per 100 ms period: 600 ms of spinning must hit the quota in some period.
    assert!(r["nr_throttled"].as_u64().unwrap() > 0, "cpu.stat: {r}");
}

#[test]
fn a_memory_hog_is_oom_killed_and_the_exit_says_so() {
    let mut b = Bundle::new(&["/bin/tug-probe", "hog", "512"]);
    b.spec["linux"]["resources"] = json!({"memory": {"limit": 33554432, "swap": 33554432}});
    let out = b.run("oom");
    assert_eq!(out.status.code(), Some(137), "SIGKILL by the OOM killer: {}", stderr(&out));
    assert!(stderr(&out).contains("was OOM-killed"), "{}", stderr(&out));
}

#[test]
fn a_fork_bomb_stops_at_pids_max() {
    let mut b = Bundle::new(&["/bin/tug-probe", "fork", "200"]);
    b.spec["linux"]["resources"] = json!({"pids": {"limit": 16}});
    let r = report(&b.run("forks"));
    let forked = r["forked"].as_u64().unwrap();
    assert_eq!(forked, 15, "the init and 15 children fill pids.max 16: {r}");
    assert_eq!(r["error"], "Try again", "fork fails with EAGAIN: {r}");
}

#[test]
fn lifecycle_create_start_state_kill_delete() {
    let mut b = Bundle::new(&["/bin/sh", "-c", "echo started; exec sleep 600"]);
    let out = b.create("life");
    assert!(out.status.success(), "create: {}", stderr(&out));
    let st = state(&b, "life");
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], "life");
    assert_eq!(st["ociVersion"], "1.2.0");
    let pid = st["pid"].as_i64().unwrap();
    assert!(pid > 1);
    assert_eq!(
        error_msg(&b.shim_output(&["create", "--bundle", b.path().to_str().unwrap(), "life"])),
        "container with id exists: life"
    );
    let list = String::from_utf8_lossy(&b.shim_output(&["list"]).stdout).to_string();
    assert!(list.starts_with("ID") && list.contains("life") && list.contains("created"), "{list}");
    assert!(b.shim_output(&["start", "life"]).status.success());
    assert_eq!(state(&b, "life")["status"], "running");
    let again = b.shim_output(&["start", "life"]);
    assert_eq!(error_msg(&again), "cannot start an already running container");
    let ps = b.shim_output(&["ps", "--format", "json", "life"]);
    let pids: Vec<i64> = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(pids, [pid]);
    let refuse = b.shim_output(&["delete", "life"]);
    assert_eq!(error_msg(&refuse), "cannot delete container life that is not stopped: running");
    assert!(b.shim_output(&["kill", "life", "KILL"]).status.success());
    assert!(wait_for(|| state(&b, "life")["status"] == "stopped"), "stopped after SIGKILL");
    assert_eq!(error_msg(&b.shim_output(&["kill", "life", "9"])), "container not running");
    let start = b.shim_output(&["start", "life"]);
    assert_eq!(error_msg(&start), "cannot start a container that has stopped");
    assert!(b.shim_output(&["delete", "life"]).status.success());
    assert_eq!(error_msg(&b.shim_output(&["state", "life"])), "container \"life\" does not exist");
    assert_eq!(b.stdout_of("life").trim(), "started");
    assert_cgroup_gone(&b);
}

#[test]
fn delete_force_kills_a_running_container() {
    let mut b = Bundle::new(&["/bin/sleep", "600"]);
    assert!(b.create("force").status.success());
    assert!(b.shim_output(&["start", "force"]).status.success());
    let pid = state(&b, "force")["pid"].as_i64().unwrap();
    let out = b.shim_output(&["delete", "--force", "force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!tug_integration::leaks::process_alive(u32::try_from(pid).unwrap()));
    assert_cgroup_gone(&b);
}

#[test]
fn a_created_container_can_be_deleted_without_force() {
    let mut b = Bundle::new(&["/bin/true"]);
    assert!(b.create("never").status.success());
    assert!(b.shim_output(&["delete", "never"]).status.success());
    assert_cgroup_gone(&b);
}

#[test]
fn a_missing_program_fails_create_and_leaves_nothing() {
    let mut b = Bundle::new(&["/bin/no-such-program"]);
    let out = b.create("missing");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        error_msg(&out),
        "container init failed at exec: exec: \"/bin/no-such-program\": no such file or directory"
    );
    let mut b2 = Bundle::new(&["nothere"]);
    let out = b2.run("missing2");
    assert!(
        error_msg(&out).ends_with("exec: \"nothere\": executable file not found in $PATH"),
        "{}",
        stderr(&out)
    );
    for b in [&b, &b2] {
        assert!(b.shim_output(&["list", "-q"]).stdout.is_empty(), "no state left");
        assert_cgroup_gone(b);
    }
}

#[test]
fn exit_codes_pass_through_run() {
    let mut b = Bundle::new(&["/bin/sh", "-c", "exit 42"]);
    assert_eq!(b.run("code").status.code(), Some(42));
    // A container killed by a signal exits 128 + the signal, as a shell reports it.
    let mut b = Bundle::new(&["/bin/sleep", "600"]);
    b.write("signal");
    let bundle = b.path().display().to_string();
    let mut run =
        b.shim(&["run", "--bundle", &bundle, "signal"]).stdin(std::process::Stdio::null()).spawn().unwrap();
    assert!(wait_for(|| b.shim_output(&["state", "signal"]).stdout.windows(9).any(|w| w == b"\"running\"")));
    assert!(b.shim_output(&["kill", "signal", "KILL"]).status.success());
    assert_eq!(run.wait().unwrap().code(), Some(137));
    assert_cgroup_gone(&b);
}

#[test]
fn bad_specs_are_refused_with_the_field() {
    let mut b = Bundle::new(&["/bin/true"]);
    b.spec["process"]["cwd"] = json!("relative");
    assert_eq!(error_msg(&b.run("bad1")), "process.cwd: \"relative\" must be an absolute path");
    let mut b = Bundle::new(&["/bin/true"]);
    b.spec["linux"]["sysctl"] = json!({"kernel.panic": "1"});
    assert_eq!(
        error_msg(&b.run("bad2")),
        "linux.sysctl.kernel.panic: not namespaced: it would change the host"
    );
    assert_eq!(
        error_msg(&b.shim_output(&["state", "../x"])),
        "invalid container id \"../x\": use letters, digits, '_', '-', '.' and no leading '.'"
    );
    assert_eq!(error_msg(&b.shim_output(&["kill", "x", "NOPE"])), "invalid signal \"NOPE\"");
}

#[test]
fn sysctls_hostname_and_a_joined_network_namespace() {
    let cluster = tug_integration::cluster::Cluster::new(1).expect("cluster");
    let node = &cluster.nodes[0];
    let mut b = Bundle::new(&["/bin/tug-probe"]);
    let ns = b.spec["linux"]["namespaces"].as_array_mut().unwrap();
    ns.retain(|n| n["type"] != "network");
    ns.push(json!({"type": "network", "path": format!("/run/netns/{}", node.netns)}));
    b.spec["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmax": "123456"});
    b.spec["hostname"] = json!("joined");
    let r = report(&b.run("joined"));
    assert_eq!(r["hostname"], "joined");
    let eth0 =
        r["interfaces"].as_array().unwrap().iter().find(|i| i["name"] == "eth0").expect("eth0 of the node");
    assert_eq!(eth0["addresses"][0], node.ip.to_string());
    let fwd = node.run(&["cat", "/proc/sys/net/ipv4/ip_forward"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&fwd.stdout).trim(),
        "1",
        "the sysctl applied in the joined namespace"
    );
}

#[test]
fn masked_paths_and_devices() {
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "cat /proc/kcore | wc -c; echo x > /dev/null && echo null-ok; ls /dev",
    ]);
    let out = b.run("dev");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0].trim(), "0", "/proc/kcore is masked");
    assert_eq!(lines[1], "null-ok");
    for d in
        ["full", "null", "ptmx", "random", "tty", "urandom", "zero", "pts", "shm", "mqueue", "fd", "stdin"]
    {
        assert!(lines.contains(&d), "/dev/{d} in {lines:?}");
    }
}

#[test]
fn bind_mounts_keep_their_options_and_time_namespaces_are_new() {
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "cat /data/hello; touch /data/x 2>/dev/null || echo read-only; readlink /proc/self/ns/time",
    ]);
    let data = b.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("hello"), "from the host\n").unwrap();
    b.spec["mounts"].as_array_mut().unwrap().push(json!({"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "ro", "rprivate"]}));
    b.spec["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "time"}));
    let out = b.run("bind");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..2], ["from the host", "read-only"], "{}", stderr(&out));
    assert_ne!(
        lines[2],
        std::fs::read_link("/proc/self/ns/time").unwrap().display().to_string(),
        "a new time namespace"
    );
    assert!(!data.join("x").exists());
}

/// Mount targets that the image planted as symlinks to host paths (`/etc/evil -> HOST`,
/// `/dev -> HOST`) resolve inside the rootfs, as they would for the container: nothing is
/// mounted, made or linked on the host (runc's CVE-2021-30465 family).
#[test]
fn symlinked_mount_targets_stay_inside_the_rootfs() {
    let mut b = Bundle::new(&["/bin/sh", "-c", "cat /etc/evil/x/hello; echo x > /dev/null && echo dev-ok"]);
    let host = tempfile::Builder::new().prefix("tug-host-target").tempdir().unwrap();
    let rootfs = b.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::os::unix::fs::symlink(host.path(), rootfs.join("etc/evil")).unwrap();
    let host_dev = tempfile::Builder::new().prefix("tug-host-dev").tempdir().unwrap();
    let _ = std::fs::remove_dir_all(rootfs.join("dev"));
    std::os::unix::fs::symlink(host_dev.path(), rootfs.join("dev")).unwrap();
    let data = b.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("hello"), "from the host\n").unwrap();
    b.spec["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/etc/evil/x", "type": "bind", "source": "data", "options": ["rbind", "ro"]}),
    );
    let out = b.run("symlinked");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the host\ndev-ok\n", "{}", stderr(&out));
    for dir in [host.path(), host_dev.path()] {
        let left: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "the host directory {} got {left:?}", dir.display());
    }
    assert!(rootfs.join(host.path().strip_prefix("/").unwrap()).join("x").is_dir(), "made inside the rootfs");
}

#[test]
fn errors_go_to_the_log_file_in_json() {
    let b = Bundle::new(&["/bin/true"]);
    let log = b.path().join("shim.log");
    let out = b.shim_output(&["--log", log.to_str().unwrap(), "--log-format", "json", "state", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    let line: Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(line["level"], "error");
    assert_eq!(line["msg"], "container \"ghost\" does not exist");
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
    // With the record in the log, stderr has the plain message (runc's habit).
    assert_eq!(stderr(&out), "container \"ghost\" does not exist");
    // Without one, logrus' text line: `time="…" level=error msg="…"`.
    let out = b.shim_output(&["state", "ghost"]);
    assert_eq!(error_msg(&out), "container \"ghost\" does not exist");
    assert!(
        stderr(&out).contains(r#" level=error msg="container \"ghost\" does not exist""#),
        "{}",
        stderr(&out)
    );
}

#[test]
fn features_lists_what_is_supported() {
    let b = Bundle::new(&["/bin/true"]);
    let out = b.shim_output(&["features"]);
    let f: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["ociVersionMax"], "1.2.0");
    assert!(f["linux"]["namespaces"].as_array().unwrap().contains(&json!("pid")));
    assert!(f["mountOptions"].as_array().unwrap().contains(&json!("rbind")));
    assert_eq!(f["linux"]["seccomp"]["enabled"], true);
    assert!(f["linux"]["namespaces"].as_array().unwrap().contains(&json!("user")));
    assert_eq!(f["hooks"].as_array().unwrap().len(), 6);
    // What create refuses, features says it does not support.
    assert_eq!(f["linux"]["mountExtensions"]["idmap"]["enabled"], false);
    assert_eq!(f["linux"]["netDevices"]["enabled"], false);
    assert_eq!(f["linux"]["intelRdt"]["enabled"], false);
}

fn wait_for(cond: impl FnMut() -> bool) -> bool {
    tug_integration::wait_for(std::time::Duration::from_secs(20), cond)
}

fn assert_cgroup_gone(b: &Bundle) {
    for dir in b.cgroup_dirs() {
        let children: Vec<_> =
            std::fs::read_dir(&dir).into_iter().flatten().flatten().filter(|e| e.path().is_dir()).collect();
        assert!(children.is_empty(), "container cgroups left under {}: {children:?}", dir.display());
    }
    let left = Debris::containing(&b.cgroup_parent);
    assert!(left.mounts.is_empty() && left.processes.is_empty(), "{left:?}");
}

#[test]
fn device_rules_deny_mknod_and_opening_other_devices() {
    let script = "mknod /tmp/sda b 8 0 2>&1 | grep -o 'Operation not permitted'; \
                  cat /dev/kmsg-host 2>&1 | head -1 | grep -o 'Operation not permitted'; \
                  echo x > /dev/null && echo null-ok; head -c 2 /dev/zero | wc -c";
    let mut b = Bundle::new(&["/bin/sh", "-c", script]);
    // CAP_MKNOD, so a refused mknod is the device rules' doing, not a missing capability.
    let caps = json!(["CAP_MKNOD", "CAP_DAC_OVERRIDE"]);
    b.spec["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
    b.spec["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/dev/kmsg-host", "type": "bind", "source": "/dev/kmsg", "options": ["bind"]}),
    );
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["dev"]}));
    let out = b.run("devices");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        ["Operation not permitted", "Operation not permitted", "null-ok", "2"],
        "{}",
        stderr(&out)
    );
}

#[test]
fn no_host_descriptor_reaches_the_container() {
    use std::os::unix::process::CommandExt;
    // The runtime is started with extra inherited descriptors (a host directory and a file,
    // as a careless caller or CVE-2024-21626's leaked cgroup fd would give it); none may
    // reach the container's process.
    let mut b = Bundle::new(&["/bin/tug-probe"]);
    b.write("fds");
    let host_dir = std::fs::File::open("/").unwrap();
    let host_file = std::fs::File::open(b.path().join("config.json")).unwrap();
    let (d, f) = (std::os::fd::AsRawFd::as_raw_fd(&host_dir), std::os::fd::AsRawFd::as_raw_fd(&host_file));
    let bundle = b.path().display().to_string();
    let mut cmd = b.shim(&["run", "--bundle", &bundle, "fds"]);
    // SAFETY: between fork and exec only dup2 and fcntl run, both async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in [(d, 7), (f, 8)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    let r = report(&out);
    let fds: Vec<(String, String)> = r["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["fd"].as_str().unwrap().to_string(), f["target"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(fds.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(), ["0", "1", "2", "3"], "{fds:?}");
    assert!(fds[3].1.starts_with("/proc/"), "fd 3 is the probe's own directory handle: {fds:?}");
    assert_eq!(r["cwd"], "/", "the working directory is inside the container");
}

/// A console socket: accepts one connection, takes the terminal master it carries, and reads
/// everything the terminal prints until its last slave closes.
struct ConsoleSocket {
    path: std::path::PathBuf,
    reader: std::thread::JoinHandle<(String, String)>,
}

impl ConsoleSocket {
    fn new(b: &Bundle, name: &str) -> ConsoleSocket {
        let path = b.path().join(name);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let reader = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let (master, slave) =
                tug_shim::terminal::recv_fd(std::os::fd::AsRawFd::as_raw_fd(&conn)).unwrap();
            let mut text = Vec::new();
            // EIO once the slave side is gone.
            let _ = std::io::Read::read_to_end(&mut std::fs::File::from(master), &mut text);
            (String::from_utf8_lossy(&text).replace('\r', ""), slave)
        });
        ConsoleSocket { path, reader }
    }

    fn arg(&self) -> String {
        self.path.display().to_string()
    }

    fn output(self) -> (String, String) {
        self.reader.join().unwrap()
    }
}

#[test]
fn exec_joins_the_namespaces_cgroup_and_settings_of_the_container() {
    let mut b = Bundle::new(&["/bin/tug-probe", "sleep", "600000"]);
    assert!(b.create("ex").status.success());
    assert!(b.shim_output(&["start", "ex"]).status.success());
    let init_pid = state(&b, "ex")["pid"].as_i64().unwrap();
    let ns_of = |pid: i64, kind: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap().display().to_string()
    };
    let r = report(&b.shim_output(&["exec", "-e", "MARK=exec", "ex", "/bin/tug-probe"]));
    for kind in ["mnt", "uts", "ipc", "net", "pid", "cgroup", "time"] {
        assert_eq!(r["namespaces"][kind], json!(ns_of(init_pid, kind)), "{kind} namespace");
    }
    assert_ne!(r["pid"], 1, "a second process in the container's pid namespace");
    assert_eq!(r["hostname"], "tug-test");
    assert!(r["env"].as_array().unwrap().contains(&json!("MARK=exec")));
    assert_eq!(r["capabilities"]["bounding"], json!(["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]));
    assert_eq!(r["no_new_privs"], true);
    // Flags override the container's process.
    let out = b.shim_output(&[
        "exec",
        "--user",
        "1000:1000",
        "--cwd",
        "/tmp",
        "ex",
        "sh",
        "-c",
        "id -u; pwd; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1000\n/tmp\n");
    let out = b.shim_output(&["exec", "ex", "nothere"]);
    assert_eq!(error_msg(&out), "exec: \"nothere\": executable file not found in $PATH");
    // Detached: its stdio must not hold this test's pipes open.
    let pid_file = b.path().join("ex.pid").display().to_string();
    let status = b
        .shim(&["exec", "-d", "--pid-file", &pid_file, "ex", "sleep", "600"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let ps = b.shim_output(&["ps", "--format", "json", "ex"]);
    let pids: Vec<i64> = serde_json::from_slice(&ps.stdout).unwrap();
    let detached: i64 = std::fs::read_to_string(b.path().join("ex.pid")).unwrap().trim().parse().unwrap();
    assert!(pids.contains(&detached), "the detached process is in the container's cgroup: {pids:?}");
    // In every hierarchy, the unified one too: the init is born there (CLONE_INTO_CGROUP)
    // and moves itself into the v1 ones; an exec'd process likewise.
    let init = state(&b, "ex")["pid"].as_i64().unwrap();
    let cgroups = |pid: i64| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let own = format!("/{}/ex", b.cgroup_parent);
    let placed: Vec<String> = cgroups(init)
        .lines()
        .filter(|l| {
            l.starts_with("0::") || [":cpu", ":memory", ":pids"].iter().any(|c| l.contains(&format!("{c}:")))
        })
        .map(String::from)
        .collect();
    assert!(!placed.is_empty() && placed.iter().all(|l| l.ends_with(&own)), "{own} in {placed:?}");
    assert_eq!(cgroups(detached), cgroups(init), "the exec'd process is where the init is");
    assert!(b.shim_output(&["kill", "ex", "KILL"]).status.success());
    assert!(wait_for(|| state(&b, "ex")["status"] == "stopped"));
    assert_eq!(error_msg(&b.shim_output(&["exec", "ex", "true"])), "cannot exec in a stopped container");
}

#[test]
fn terminals_go_to_the_console_socket() {
    let mut b = Bundle::new(&["/bin/sh", "-c", "tty; stty size; echo done"]);
    b.spec["process"]["terminal"] = json!(true);
    b.spec["process"]["consoleSize"] = json!({"height": 33, "width": 101});
    // A terminal needs a console socket, and a console socket needs a terminal.
    assert_eq!(
        error_msg(&b.run("tty0")),
        "process.terminal is true: a --console-socket is needed to receive the terminal"
    );
    let console = ConsoleSocket::new(&b, "console.sock");
    b.write("tty1");
    let bundle = b.path().display().to_string();
    let out = b.shim_output(&["run", "--bundle", &bundle, "--console-socket", &console.arg(), "tty1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (text, slave) = console.output();
    assert_eq!(text, "/dev/pts/0\n33 101\ndone\n");
    assert_eq!(slave, "/dev/pts/0");
    // exec -t with a console socket, into a running container.
    let mut b = Bundle::new(&["/bin/sleep", "600"]);
    assert!(b.create("tty2").status.success());
    assert!(b.shim_output(&["start", "tty2"]).status.success());
    let console = ConsoleSocket::new(&b, "exec.sock");
    let out =
        b.shim_output(&["exec", "-t", "--console-socket", &console.arg(), "tty2", "sh", "-c", "tty; exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(console.output().0, "/dev/pts/0\n");
    let out = b.shim_output(&["exec", "--console-socket", "/nonexistent", "tty2", "true"]);
    assert_eq!(
        error_msg(&out),
        "--console-socket is only for a process with a terminal (process.terminal is false)"
    );
}

#[test]
fn the_runtime_binary_cannot_be_reached_through_proc_exe() {
    // CVE-2019-5736: while tug-shim's own code runs in the container (here the init of a
    // created container, waiting for `start`), a process in the container must not be able to
    // open /proc/<pid>/exe — the host's runtime binary.
    let mut b = Bundle::new(&["/bin/sleep", "600"]);
    assert!(b.create("exe").status.success());
    let out = b.shim_output(&[
        "exec",
        "exe",
        "sh",
        "-c",
        "readlink /proc/1/exe; cat /proc/1/exe > /dev/null; echo rc=$?",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = stderr(&out);
    assert!(text.ends_with("rc=1\n") && !text.contains("tug-shim"), "stdout {text:?} stderr {err:?}");
    assert!(err.contains("'/proc/1/exe': Permission denied"), "{err}");
}

fn syscalls(out: &std::process::Output) -> Value {
    report(out)
}

#[test]
fn the_default_seccomp_profile_stops_what_capabilities_alone_would_allow() {
    // Capabilities that let each call past the kernel's own checks, and the default profile
    // made for runc's default capabilities: only the filter can stop them.
    let strong = json!(["CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_DAC_READ_SEARCH", "CAP_KILL"]);
    let base = |b: &mut Bundle| {
        b.spec["process"]["capabilities"] =
            json!({"bounding": strong, "effective": strong, "permitted": strong});
    };
    let mut open = Bundle::new(&["/bin/tug-probe", "syscalls"]);
    base(&mut open);
    let without = syscalls(&open.run("sc-open"));
    for call in ["kexec_load", "open_by_handle_at", "mount", "bpf"] {
        assert_ne!(without[call], "EPERM", "without a filter {call} reaches the kernel: {without}");
    }
    let mut b = Bundle::new(&["/bin/tug-probe", "syscalls"]);
    base(&mut b);
    let caps: Vec<String> =
        ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"].map(String::from).to_vec();
    b.spec["linux"]["seccomp"] = tug_shim::seccomp::profile::default_profile(&caps);
    let with = syscalls(&b.run("sc-default"));
    for call in
        ["kexec_load", "open_by_handle_at", "mount", "keyctl", "bpf", "unshare_user", "personality_other"]
    {
        assert_eq!(with[call], "EPERM", "{call}: {with}");
    }
    for call in ["getpid", "getppid", "personality_query"] {
        assert_eq!(with[call], "ok", "{call}: {with}");
    }
}

#[test]
fn seccomp_rules_with_arguments_errnos_and_flags_apply_to_exec_too() {
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
             "args": [{"index": 0, "value": 67108864, "op": "SCMP_CMP_EQ"}]},
            {"names": ["no_such_call_anywhere"], "action": "SCMP_ACT_KILL"}
        ]
    });
    for nnp in [true, false] {
        let mut b = Bundle::new(&["/bin/tug-probe", "syscalls"]);
        b.spec["process"]["noNewPrivileges"] = json!(nnp);
        b.spec["linux"]["seccomp"] = profile.clone();
        let r = syscalls(&b.run("sc-args"));
        assert_eq!(r["getppid"], "ENOSYS", "noNewPrivileges {nnp}: {r}");
        assert_eq!(r["personality_other"], "EINVAL", "{r}");
        assert_eq!(r["personality_query"], "ok", "other arguments pass: {r}");
    }
    let mut b = Bundle::new(&["/bin/sleep", "600"]);
    b.spec["linux"]["seccomp"] = profile;
    assert!(b.create("sc-exec").status.success());
    assert!(b.shim_output(&["start", "sc-exec"]).status.success());
    let r = report(&b.shim_output(&["exec", "sc-exec", "/bin/tug-probe", "syscalls"]));
    assert_eq!(r["getppid"], "ENOSYS", "an exec'd process is under the container's filter: {r}");
    let mut bad = Bundle::new(&["/bin/true"]);
    bad.spec["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}
    ]});
    assert_eq!(error_msg(&bad.run("sc-bad")), "linux.seccomp.syscalls[0].args[0].index: 9 is not 0..5");
}

#[test]
fn a_user_namespace_maps_container_root_to_an_unprivileged_host_uid() {
    use std::os::unix::fs::MetadataExt;
    let mut b = Bundle::new(&["/bin/sh", "-c", "touch /data/made-inside; exec sleep 600"]);
    let data = b.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Writable by the mapped root.
    nix::unistd::chown(&data, Some(100_000.into()), Some(100_000.into())).unwrap();
    // The rootfs belongs to the host's root, which the container cannot write as its own
    // root: mount points must exist in it already (as an image's would).
    std::fs::create_dir(b.path().join("rootfs/data")).unwrap();
    b.spec["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
    b.spec["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.spec["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]}));
    let out = b.create("userns");
    assert!(out.status.success(), "create: {}", stderr(&out));
    assert!(b.shim_output(&["start", "userns"]).status.success());
    let made = data.join("made-inside");
    assert!(wait_for(|| made.exists()), "the container created its file");
    let meta = std::fs::metadata(&made).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (100_000, 100_000), "owned by the mapped uid on the host");
    // On the host the init runs as the mapped uid...
    let pid = state(&b, "userns")["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid_line.split_whitespace().nth(1), Some("100000"), "{uid_line}");
    // ...and inside it is root, with the maps the spec gave; exec joins the same namespace.
    let r = report(&b.shim_output(&["exec", "userns", "/bin/tug-probe"]));
    assert_eq!((r["uid"].clone(), r["gid"].clone()), (json!(0), json!(0)));
    let maps = b.shim_output(&["exec", "userns", "cat", "/proc/self/uid_map"]);
    let text = String::from_utf8_lossy(&maps.stdout);
    assert_eq!(text.split_whitespace().collect::<Vec<_>>(), ["0", "100000", "65536"]);
    let host_ns = std::fs::read_link("/proc/self/ns/user").unwrap().display().to_string();
    assert_ne!(r["namespaces"]["user"], json!(host_ns));
}

#[test]
fn user_namespace_specs_are_checked() {
    let mut b = Bundle::new(&["/bin/true"]);
    b.spec["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    assert_eq!(error_msg(&b.run("un1")), "linux.uidMappings: needs a new user namespace in linux.namespaces");
    let mut b = Bundle::new(&["/bin/true"]);
    b.spec["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
    assert_eq!(error_msg(&b.run("un2")), "linux.uidMappings: required with a new user namespace");
}

#[test]
fn hooks_run_in_order_with_the_state_and_a_failing_one_stops_create() {
    let mut b = Bundle::new(&["/bin/true"]);
    let logdir = b.path().join("hooklog");
    std::fs::create_dir(&logdir).unwrap();
    std::fs::create_dir(b.path().join("rootfs/hooklog")).unwrap();
    let log = logdir.join("log");
    // Each host-side hook logs its name, the status it was given and its mount namespace.
    let host_hook = |name: &str| {
        json!({"path": "/bin/sh", "args": ["sh", "-c", format!(
            "read -r s; st=$(echo \"$s\" | grep -o '\"status\":\"[a-z]*\"'); pid=$(echo \"$s\" | grep -o '\"pid\":[0-9]*'); echo \"{name} $st $(readlink /proc/self/ns/mnt) $pid\" >> {}",
            log.display()
        )], "timeout": 10})
    };
    b.spec["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/hooklog", "type": "bind", "source": logdir, "options": ["rbind", "rw"]}),
    );
    b.spec["hooks"] = json!({
        "prestart": [host_hook("prestart")],
        "createRuntime": [host_hook("createRuntime")],
        "createContainer": [host_hook("createContainer")],
        // Resolved and run inside the container, with the environment the spec gives it.
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "read -r s; st=$(echo \"$s\" | grep -o '\"status\":\"[a-z]*\"'); pid=$(echo \"$s\" | grep -o '\"pid\":[0-9]*'); echo startContainer $st $HOOKVAR $pid >> /hooklog/log"], "env": ["HOOKVAR=given"]}],
        // A failing poststart or poststop hook is a warning: the ones after it still run.
        "poststart": [{"path": "/bin/false"}, host_hook("poststart")],
        "poststop": [{"path": "/bin/false"}, host_hook("poststop")]
    });
    let out = b.run("hooks");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("level=warning msg=\"poststart hook 0 (/bin/false)"), "{}", stderr(&out));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("startContainer \"status\":\"created\" given"), "{text}");
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    let names: Vec<&str> = lines.iter().map(|l| l[0]).collect();
    assert_eq!(
        names,
        ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"]
    );
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap().display().to_string();
    assert_eq!(lines[0][1..3], ["\"status\":\"creating\"", host_mnt.as_str()], "prestart: {text}");
    assert_eq!(lines[1][2], host_mnt, "createRuntime runs in the runtime's namespaces");
    assert_ne!(lines[2][2], host_mnt, "createContainer runs in the container's mount namespace");
    // Each stage's state, as the spec and runc give it: creating until the init waits for
    // start, created while start runs the init's hooks, then running and stopped; the init's
    // host pid throughout (0 once stopped).
    let statuses: Vec<&str> = lines.iter().map(|l| l[1]).collect();
    assert_eq!(
        statuses,
        ["creating", "creating", "creating", "created", "running", "stopped"]
            .map(|s| format!("\"status\":\"{s}\"")),
        "{text}"
    );
    let pids: Vec<&str> = lines.iter().map(|l| *l.last().unwrap()).collect();
    assert!(pids[0].starts_with("\"pid\":") && pids[0] != "\"pid\":0", "{text}");
    assert!(pids[..5].iter().all(|p| *p == pids[0]), "one init pid for every stage: {text}");
    assert_eq!(pids[5], "\"pid\":0", "{text}");

    let mut b = Bundle::new(&["/bin/true"]);
    b.spec["hooks"] =
        json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 1"]}]});
    let out = b.run("hookfail");
    assert_eq!(
        error_msg(&out),
        "container init failed at createRuntime hooks: createRuntime hook 0 (/bin/sh): exit status: 1: nope"
    );
    assert!(b.shim_output(&["list", "-q"]).stdout.is_empty(), "nothing left");
    assert_cgroup_gone(&b);
}

#[test]
fn delete_force_of_a_missing_container_succeeds_and_a_closed_stdout_is_quiet() {
    let b = Bundle::new(&["/bin/true"]);
    let out = b.shim_output(&["delete", "--force", "tug-never-made"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = b.shim_output(&["delete", "tug-never-made"]);
    assert!(!out.status.success() && stderr(&out).contains("does not exist"), "{}", stderr(&out));
    // `tug-shim features | head -c0`: the reader is gone before the output is written.
    use std::os::unix::process::ExitStatusExt;
    let mut child = b
        .shim(&["features"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success() || out.status.signal() == Some(libc::SIGPIPE), "{:?} {err}", out.status);
}

#[test]
fn a_bad_field_in_config_json_is_named_with_the_reason() {
    let mut b = Bundle::new(&["/bin/true"]);
    b.spec["process"]["capabilities"] = serde_json::json!({"bounding": ["CAP_CHOWN", "CAP_BOGUS"]});
    let out = b.run("tug-badcap");
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("process.capabilities.bounding[1]")
            && err.contains("CAP_BOGUS")
            && !err.contains("serde failed"),
        "{err}"
    );
}

#[test]
fn proc_on_a_symlink_in_the_rootfs_is_refused() {
    let mut b = Bundle::new(&["/bin/true"]);
    let proc_dir = b.path().join("rootfs/proc");
    let _ = std::fs::remove_dir(&proc_dir);
    std::fs::create_dir_all(b.path().join("rootfs/tmp")).unwrap();
    std::os::unix::fs::symlink("/tmp", &proc_dir).unwrap();
    let out = b.run("tug-procsym");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("must be mounted on ordinary directory") && err.contains("/proc"), "{err}");
    assert!(b.shim_output(&["list", "-q"]).stdout.is_empty(), "nothing left");
    assert_cgroup_gone(&b);
}

#[test]
fn recursive_read_only_reaches_submounts_and_unknown_options_are_refused() {
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "touch /data/a 2>/dev/null && echo top-writable; touch /data/sub/b 2>/dev/null && echo sub-writable; echo done",
    ]);
    let src = b.path().join("tug-rro-src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tug-rro", src.join("sub").to_str().unwrap()])
        .status()
        .unwrap();
    assert!(ok.success());
    let _sub = Unmount(src.join("sub"));
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/data", "type": "bind", "source": src, "options": ["rbind", "rro"]}));
    let out = b.run("tug-rro");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n", "rro left part of the tree writable");
    // An option the runtime does not know is refused, naming it and the mount.
    let mut b = Bundle::new(&["/bin/true"]);
    b.spec["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/data", "type": "bind", "source": "/tmp", "options": ["rbind", "rreadonly"]}),
    );
    let out = b.run("tug-badopt");
    let err = error_msg(&out);
    assert!(!out.status.success());
    assert!(err.contains("unknown mount option \"rreadonly\"") && err.contains("/data"), "{err}");
    let f: Value = serde_json::from_slice(&b.shim_output(&["features"]).stdout).unwrap();
    assert!(f["mountOptions"].as_array().unwrap().contains(&json!("rro")));
}

#[test]
fn pause_freezes_a_container_and_resume_thaws_it() {
    let mut b =
        Bundle::new(&["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /count; sleep 0.05; done"]);
    b.spec["root"]["readonly"] = json!(false);
    assert!(b.create("tug-pause").status.success());
    assert!(b.shim_output(&["start", "tug-pause"]).status.success());
    let count = || {
        std::fs::read_to_string(b.path().join("rootfs/count"))
            .unwrap_or_default()
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    assert!(tug_integration::wait_for(std::time::Duration::from_secs(5), || count() > 2));
    let out = b.shim_output(&["pause", "tug-pause"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let frozen = count();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(count(), frozen, "the container ran while paused");
    let out = b.shim_output(&["resume", "tug-pause"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tug_integration::wait_for(std::time::Duration::from_secs(5), || count() > frozen + 2));
    // Resuming what is not paused is an error, as with runc.
    let out = b.shim_output(&["resume", "tug-pause"]);
    assert!(!out.status.success() && stderr(&out).contains("is not paused"), "{}", stderr(&out));
    assert!(b.shim_output(&["delete", "--force", "tug-pause"]).status.success());
    assert_cgroup_gone(&b);
}

#[test]
fn preserve_fds_passes_descriptors_and_no_pivot_enters_by_chroot() {
    // `tug-shim run` from a shell that opened fd 3 on `file`.
    let run_with_fd3 = |b: &mut Bundle, id: &str, file: &std::path::Path, flags: &str| {
        b.write(id);
        let script = format!(
            "exec 3>{}; exec {} --root {} run --bundle {} {flags} {id}",
            file.display(),
            tug_integration::bundle::shim_binary().display(),
            b.root().display(),
            b.path().display()
        );
        std::process::Command::new("bash").args(["-c", &script]).output().unwrap()
    };
    let mut b = Bundle::new(&["/bin/sh", "-c", "echo through-fd-3 >&3; ls /proc/self/fd"]);
    let file = b.path().join("fd3.out");
    let out = run_with_fd3(&mut b, "tug-fds", &file, "--preserve-fds 1");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "through-fd-3\n");
    // Without the flag the descriptor stays behind.
    let mut b = Bundle::new(&["/bin/sh", "-c", "echo leaked >&3"]);
    let out = run_with_fd3(&mut b, "tug-nofds", &file, "");
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "", "fd 3 reached the container");
    // --no-pivot: the same container, entered by chroot.
    let mut b = Bundle::new(&["/bin/sh", "-c", "cat /proc/self/mountinfo | head -1; echo in"]);
    b.write("tug-nopivot");
    let bundle = b.path().display().to_string();
    let out = b.shim_output(&["run", "--no-pivot", "--bundle", &bundle, "tug-nopivot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("in\n"), "{:?}", out);
}

#[test]
fn delete_and_a_failed_create_leave_no_cgroup_directory_they_made() {
    let gone = |b: &Bundle| b.cgroup_dirs().iter().all(|d| !d.exists());
    let mut b = Bundle::new(&["/bin/true"]);
    assert!(b.create("tug-made").status.success());
    assert!(!gone(&b), "the container's parent directory was made");
    assert!(b.shim_output(&["delete", "tug-made"]).status.success());
    assert!(gone(&b), "delete left {:?}", b.cgroup_dirs().iter().filter(|d| d.exists()).collect::<Vec<_>>());
    // A create that fails after its cgroup was made (a failing createRuntime hook).
    let mut b = Bundle::new(&["/bin/true"]);
    b.spec["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]});
    assert!(!b.create("tug-failed").status.success());
    assert!(
        gone(&b),
        "a failed create left {:?}",
        b.cgroup_dirs().iter().filter(|d| d.exists()).collect::<Vec<_>>()
    );
    // Without cgroupsPath: the runtime's own tug-shim directory goes with its last container.
    let mut b = Bundle::new(&["/bin/true"]);
    b.write("tug-default");
    b.spec["linux"].as_object_mut().unwrap().remove("cgroupsPath");
    std::fs::write(b.path().join("config.json"), serde_json::to_string(&b.spec).unwrap()).unwrap();
    let bundle = b.path().display().to_string();
    // The created init holds its stdio: not pipes the test would wait on.
    let null = std::process::Stdio::null;
    let created = b
        .shim(&["create", "--bundle", &bundle, "tug-default"])
        .stdin(null())
        .stdout(null())
        .stderr(null())
        .status();
    assert!(created.unwrap().success());
    let dirs: Vec<std::path::PathBuf> = tug_integration::bundle::own_cgroup_dirs_all_hierarchies()
        .into_iter()
        .map(|d| d.join("tug-shim").join("tug-default"))
        .filter(|d| d.exists())
        .collect();
    assert!(!dirs.is_empty());
    assert!(b.shim_output(&["delete", "tug-default"]).status.success());
    for d in &dirs {
        assert!(!d.exists(), "{} left", d.display());
        let parent = d.parent().unwrap();
        let others =
            std::fs::read_dir(parent).map(|r| r.flatten().filter(|e| e.path().is_dir()).count()).unwrap_or(0);
        assert!(!parent.exists() || others > 0, "an empty {} left", parent.display());
    }
}

#[test]
fn time_offsets_and_personality_are_applied_and_unsupported_fields_refused() {
    let mut b = Bundle::new(&["/bin/sh", "-c", "cat /proc/self/timens_offsets; uname -m"]);
    b.spec["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "time"}));
    b.spec["linux"]["timeOffsets"] =
        json!({"monotonic": {"secs": 86400}, "boottime": {"secs": 7, "nanosecs": 5}});
    b.spec["linux"]["personality"] = json!({"domain": "LINUX32"});
    let out = b.run("tug-timens");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("monotonic") && text.contains("86400"), "{text}");
    assert!(
        text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["boottime", "7", "5"]),
        "{text}"
    );
    assert!(text.trim_end().ends_with("i686"), "LINUX32 personality: {text}");
    // Offsets without a time namespace, and fields this runtime cannot honour: refused by name.
    for (field, value, said) in [
        ("timeOffsets", json!({"monotonic": {"secs": 1}}), "linux.timeOffsets"),
        ("intelRdt", json!({"closID": "x"}), "linux.intelRdt"),
        (
            "personality",
            json!({"domain": "LINUX", "flags": ["ADDR_NO_RANDOMIZE"]}),
            "linux.personality.flags",
        ),
    ] {
        let mut b = Bundle::new(&["/bin/true"]);
        b.spec["linux"][field] = value;
        let out = b.run("tug-refused");
        assert!(!out.status.success() && stderr(&out).contains(said), "{field}: {}", stderr(&out));
    }
}

#[test]
fn a_hostname_is_set_in_a_joined_uts_namespace_but_never_the_runtimes_own() {
    let mut holder = std::process::Command::new("unshare").args(["-u", "sleep", "60"]).spawn().unwrap();
    let ns = format!("/proc/{}/ns/uts", holder.id());
    assert!(tug_integration::wait_for(std::time::Duration::from_secs(5), || {
        std::fs::read_link(&ns).ok() != std::fs::read_link("/proc/self/ns/uts").ok()
    }));
    let with_uts = |b: &mut Bundle, path: &str| {
        let list = b.spec["linux"]["namespaces"].as_array_mut().unwrap();
        list.retain(|n| n["type"] != "uts");
        list.push(json!({"type": "uts", "path": path}));
        b.spec["hostname"] = json!("tug-joined");
    };
    let mut b = Bundle::new(&["/bin/hostname"]);
    with_uts(&mut b, &ns);
    let out = b.run("tug-uts");
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tug-joined\n");
    // The runtime's own namespace: refused before anything is set.
    let before = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let mut b = Bundle::new(&["/bin/hostname"]);
    with_uts(&mut b, "/proc/self/ns/uts");
    let out = b.run("tug-uts-own");
    assert!(!out.status.success() && stderr(&out).contains("rename the host"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(), before);
}

#[test]
fn a_shared_rootfs_propagation_runs_and_leaves_no_mount_behind() {
    // Tests beside this one mount and unmount too: what counts is that nothing of this
    // bundle's (its rootfs, its mounts) is in the caller's namespace.
    for p in ["shared", "rshared"] {
        let mut b =
            Bundle::new(&["/bin/sh", "-c", "grep -E '^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ / ' /proc/self/mountinfo"]);
        b.spec["linux"]["rootfsPropagation"] = json!(p);
        let out = b.run(&format!("tug-prop-{p}"));
        assert!(out.status.success(), "{p}: {}", stderr(&out));
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(line.contains("shared:"), "{p}: the container's / is not shared: {line}");
        let left = Debris::containing(&b.path().display().to_string());
        assert!(left.mounts.is_empty(), "{p}: {left:?}");
    }
}

#[test]
fn without_a_mount_namespace_the_container_is_chrooted_and_nothing_is_mounted() {
    let mut b = Bundle::new(&["/bin/sh", "-c", "readlink /proc/1/ns/mnt 2>/dev/null; ls /; echo in"]);
    let linux = &mut b.spec["linux"];
    linux["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "mount");
    for f in ["maskedPaths", "readonlyPaths", "devices", "sysctl", "rootfsPropagation"] {
        linux.as_object_mut().unwrap().remove(f);
    }
    b.spec["mounts"] = json!([]);
    b.spec["root"]["readonly"] = json!(false);
    let out = b.run("tug-nomnt");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.ends_with("in\n") && text.contains("bin"), "{text}");
    // Nothing was mounted in the caller's namespace for it (tests beside this one mount
    // their own: only this bundle's paths count).
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ours = b.path().display().to_string();
    assert!(!mountinfo.contains(&ours), "mounts of the container in the caller's namespace:\n{mountinfo}");
    // A mount would be the caller's: refused, naming the field.
    let mut b = Bundle::new(&["/bin/true"]);
    b.spec["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "mount");
    let out = b.run("tug-nomnt-mounts");
    assert!(
        !out.status.success() && stderr(&out).contains("needs a mount namespace of the container's own"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_mount_namespace_joined_by_path_is_where_the_rootfs_is_built() {
    let mut b = Bundle::new(&["/bin/sh", "-c", "readlink /proc/self/ns/mnt; ls /"]);
    // A mount namespace held by a process of the test's own (made after the bundle, so the
    // bundle is in it too).
    struct Holder(std::process::Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let holder = Holder(
        std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "60"])
            .spawn()
            .unwrap(),
    );
    let ns_path = format!("/proc/{}/ns/mnt", holder.0.id());
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let mut theirs = ours.clone();
    assert!(wait_for(|| {
        theirs = std::fs::read_link(&ns_path).unwrap_or_else(|_| ours.clone());
        theirs != ours
    }));
    for n in b.spec["linux"]["namespaces"].as_array_mut().unwrap() {
        if n["type"] == "mount" {
            n["path"] = json!(ns_path);
        }
    }
    let out = b.run("tug-joinmnt");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        text.lines().next(),
        Some(theirs.to_str().unwrap()),
        "the container is in the joined namespace"
    );
    assert!(text.contains("\nbin\n"), "its root is the rootfs: {text}");
    // Its mounts were made there, not in the caller's namespace.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&b.path().display().to_string()), "{mountinfo}");
    drop(holder);
}
