//! Behaviour only a pure cgroup v2 host has: run by the VM suite (`make vm-test`) in a guest
//! kernel that mounts cgroup2 alone, and on the host too when the host is pure v2.

use serde_json::{Value, json};
use tug_integration::bundle::Bundle;

fn report(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "run failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The first real block device's `major:minor` (virtio disk in the guest).
fn block_device() -> String {
    let dir = std::fs::read_dir("/sys/block").expect("/sys/block");
    let mut names: Vec<String> = dir.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    names.sort();
    let name =
        names.iter().find(|n| !n.starts_with("loop") && !n.starts_with("ram")).expect("a block device");
    std::fs::read_to_string(format!("/sys/block/{name}/dev")).unwrap().trim().to_string()
}

#[test]
fn cgroup_v2_is_the_only_hierarchy() {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mounts.lines().any(|l| l.contains(" - cgroup2 ")), "{mounts}");
    assert!(!mounts.lines().any(|l| l.contains(" - cgroup ")), "no v1 hierarchy: {mounts}");
}

#[test]
fn cgroup_v2_limits_are_written_in_the_unified_files() {
    let dev = block_device();
    let (major, minor) = dev.split_once(':').unwrap();
    let (major, minor): (i64, i64) = (major.parse().unwrap(), minor.parse().unwrap());
    let mut b = Bundle::new(&["/bin/tug-probe"]);
    b.spec["linux"]["resources"] = json!({
        "memory": {"limit": 67108864, "reservation": 16777216, "swap": 134217728},
        "cpu": {"quota": 20000, "period": 100000, "shares": 2048, "cpus": "0"},
        "pids": {"limit": 99},
        "blockIO": {"weight": 100, "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]
    });
    let r = report(&b.run("v2limits"));
    assert_eq!(r["cgroup"]["version"], 2);
    let l = &r["cgroup"]["limits"];
    assert_eq!(l["memory.max"], "67108864");
    assert_eq!(l["memory.low"], "16777216");
    assert_eq!(l["memory.swap.max"], "67108864");
    assert_eq!(l["cpu.max"], "20000 100000");
    assert_eq!(l["cpu.weight"], "79");
    assert_eq!(l["cpuset.cpus"], "0");
    assert_eq!(l["pids.max"], "99");
    assert_eq!(l["io.weight"], "default 910");
    assert_eq!(l["io.max"], format!("{dev} rbps=1048576 wbps=max riops=max wiops=max"));
    assert_eq!(l["hugetlb.2MB.max"], "4194304");
}

#[test]
fn cgroup_v2_kill_removes_every_process_of_a_container() {
    let mut b = Bundle::new(&["/bin/sh", "-c", "sleep 600 & sleep 600 & exec sleep 600"]);
    assert!(b.create("killall").status.success());
    assert!(b.shim_output(&["start", "killall"]).status.success());
    let dir = b.cgroup_dirs()[0].join("killall");
    let procs = || std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines().count();
    tug_integration::wait_for(std::time::Duration::from_secs(20), || procs() >= 3);
    assert_eq!(procs(), 3, "three processes in the container");
    let out = b.shim_output(&["delete", "--force", "killall"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.exists(), "the cgroup is gone");
}

/// A single-node cluster in the guest: the agent moves itself into a leaf of its cgroup (the
/// "no internal processes" rule) and its pod gets its limits in a cgroup beside it.
#[test]
fn cgroup_v2_an_agent_runs_a_pod_with_its_limits_beside_its_own_leaf() {
    use std::time::Duration;
    use tug_integration::agent::Agent;
    let cluster = tug_integration::cluster::Cluster::new(1).expect("cluster");
    let cp = tug_integration::control_plane::ControlPlane::start();
    let agent = Agent::start(&cp, &cluster.nodes[0], "tug-vm-node", &["--network-backend", "host-gw"]);
    agent.import_probe_image("tug.local/probe:1");
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: limited}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: tug.local/probe:1\n    imagePullPolicy: Never\n    command: [/bin/sleep, '600']\n    resources: {limits: {memory: 64Mi, cpu: 500m}}\n";
    let out = cp.tug_with_input(&["apply", "-f", "-"], pod);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut last = Value::Null;
    let running = tug_integration::wait_for(Duration::from_secs(180), || {
        let o = cp.tug(&["get", "pod", "limited", "-o", "json"]);
        last = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        last["status"]["phase"] == "Running"
    });
    assert!(running, "pod: {last:#}\nagent log:\n{}", agent.log());
    let agent_cg = std::fs::read_to_string(format!("/proc/{}/cgroup", agent.pid().unwrap())).unwrap();
    assert!(agent_cg.trim_end().ends_with("/tug-agent"), "the agent keeps itself in a leaf: {agent_cg}");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.trim().trim_start_matches("0::").trim_start_matches('/');
    let parent = std::path::Path::new("/sys/fs/cgroup").join(own).join(&agent.cgroup_parent);
    let id = last["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("tug://")
        .to_string();
    // The container's supervisor lives outside the agent's cgroup, beside it: restarting the
    // agent's unit (KillMode=process) or its accounting never reaches it.
    let sup_pid =
        std::fs::read_to_string(agent.supervisor_dir(&id).join("supervisor.pid")).expect("supervisor.pid");
    let sup_cg = std::fs::read_to_string(format!("/proc/{}/cgroup", sup_pid.trim())).unwrap();
    assert!(sup_cg.trim_end().ends_with("/tug-supervisors"), "the supervisor's cgroup: {sup_cg}");
    assert_eq!(
        sup_cg.trim_end().trim_end_matches("/tug-supervisors"),
        agent_cg.trim_end().trim_end_matches("/tug-agent"),
        "beside the agent's leaf"
    );
    let pod_dir = std::fs::read_dir(&parent)
        .unwrap()
        .flatten()
        .find(|e| e.path().join(&id).is_dir())
        .expect("the pod's cgroup")
        .path();
    assert_eq!(std::fs::read_to_string(pod_dir.join(&id).join("memory.max")).unwrap().trim(), "67108864");
    assert_eq!(std::fs::read_to_string(pod_dir.join(&id).join("cpu.max")).unwrap().trim(), "50000 100000");
    assert!(cp.tug(&["delete", "pod", "limited"]).status.success());
    let gone = tug_integration::wait_for(Duration::from_secs(60), || {
        agent.containers().is_empty() && !pod_dir.exists()
    });
    assert!(gone, "the pod's cgroup stayed: {}\n{}", pod_dir.display(), agent.log());
}

/// A single-node cluster in the guest runs a Deployment behind a Service that answers at its
/// ClusterIP, through the agent's nftables proxy, on cgroup v2 alone.
#[test]
fn cgroup_v2_a_deployment_behind_a_service_answers() {
    use std::time::Duration;
    use tug_integration::agent::Agent;
    let cluster = tug_integration::cluster::Cluster::new(1).expect("cluster");
    let cp = tug_integration::control_plane::ControlPlane::start();
    let agent = Agent::start(&cp, &cluster.nodes[0], "tug-vm-svc", &["--network-backend", "host-gw"]);
    agent.import_probe_image("tug.local/probe:1");
    cp.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: tug.local/probe:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "mkdir -p /tmp/w && hostname > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"]
        ports: [{name: http, containerPort: 8080}]
        resources: {limits: {memory: 32Mi}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"#,
    );
    let ready = tug_integration::wait_for(Duration::from_secs(240), || {
        cp.get_json(&["deployment", "web"]).is_some_and(|d| d["status"]["availableReplicas"] == 2)
    });
    assert!(
        ready,
        "deployment: {:#}\nagent log:\n{}",
        cp.get_json(&["deployment", "web"]).unwrap_or_default(),
        agent.log()
    );
    let ip = cp.get_json(&["service", "web"]).unwrap()["spec"]["clusterIP"].as_str().unwrap().to_string();
    let mut body = String::new();
    let answered = tug_integration::wait_for(Duration::from_secs(60), || {
        // The probe, not busybox's wget (which the static build runs into a SIGSEGV here).
        let probe = tug_integration::probe::path();
        match cluster.nodes[0].run(&[probe.to_str().unwrap_or_default(), "get", &format!("{ip}:80")]) {
            Ok(o) => {
                body = String::from_utf8_lossy(&o.stdout).trim().to_string();
                body.starts_with("web-")
            }
            Err(e) => {
                body = e.to_string();
                false
            }
        }
    });
    assert!(answered, "the Service did not answer: {body}\nagent log:\n{}", agent.log());
    assert!(cp.tug(&["delete", "deployment", "web"]).status.success());
    let gone = tug_integration::wait_for(Duration::from_secs(120), || agent.containers().is_empty());
    assert!(gone, "containers left: {:?}", agent.containers());
}

/// The provisioning script the Vagrantfile uses, run in the guest as on a fresh host:
/// `make install` (scripts/install.sh) into the guest's own root, the configuration files,
/// the daemons started from them; a pod then runs on the node it made. Only in the VM: it
/// installs into `/`.
#[test]
fn cgroup_v2_provisioning_installs_configures_and_starts_a_node() {
    use std::time::Duration;
    if std::env::var_os("TUG_IN_VM").is_none() {
        eprintln!("skipped: this test installs into / and runs only inside the VM guest");
        return;
    }
    let ws = tug_integration::probe::workspace_root();
    // A node address of its own (the guest has no network).
    let _ = std::process::Command::new("ip").args(["addr", "add", "10.250.9.1/32", "dev", "lo"]).status();
    let out = std::process::Command::new("bash")
        .arg(ws.join("scripts/vm/provision.sh"))
        .args(["server", "--listen", "127.0.0.1:6443", "--node-ip", "10.250.9.1"])
        .args(["--network-backend", "host-gw", "--node-name", "tug-vm-provisioned"])
        .env("BUILD", ws.join("target/debug"))
        .current_dir(&ws)
        .output()
        .expect("provision.sh");
    let log = |name: &str| std::fs::read_to_string(format!("/var/log/tug-{name}.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "provision.sh: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log("scheduler")
    );
    let pid = |name: &str| {
        std::fs::read_to_string(format!("/run/tug/{name}.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
    };
    // The daemons run the installed binaries with the installed configuration.
    for name in ["scheduler", "agent"] {
        let p = pid(name).unwrap_or_else(|| panic!("no pid file for {name}"));
        // The script returns as soon as it has started the agent, which may not have reached
        // its execve yet: the pid is setsid's (busybox) until then, and setsid's own command
        // line already holds `--config`. Wait for the exe to be the daemon's.
        let cmdline_of = || std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let installed = std::path::PathBuf::from(format!("/usr/local/bin/tug-{name}"));
        tug_integration::wait_for(Duration::from_secs(30), || {
            std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == installed)
                && cmdline_of().contains("--config")
        });
        let exe = std::fs::read_link(format!("/proc/{p}/exe"))
            .unwrap_or_else(|e| panic!("tug-{name} (pid {p}) is gone ({e}); its log:\n{}", log(name)));
        assert_eq!(exe, std::path::PathBuf::from(format!("/usr/local/bin/tug-{name}")));
        let cmdline =
            std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default().replace('\0', " ");
        assert!(
            cmdline.contains(&format!("--config /etc/tug/{name}.toml")),
            "tug-{name} (pid {p}): command line {cmdline:?}; its log:\n{}",
            log(name)
        );
    }
    let tug = |args: &[&str]| std::process::Command::new("/usr/local/bin/tug").args(args).output().unwrap();
    let ready = tug_integration::wait_for(Duration::from_secs(120), || {
        String::from_utf8_lossy(&tug(&["get", "nodes"]).stdout).contains(" Ready ")
    });
    assert!(
        ready,
        "the node: {}\nagent log:\n{}",
        String::from_utf8_lossy(&tug(&["get", "nodes"]).stdout),
        log("agent")
    );
    let cfg = std::process::Command::new("/usr/local/bin/tug-agent")
        .args(["--config", "/etc/tug/agent.toml", "--print-config"])
        .output()
        .unwrap();
    let cfg = String::from_utf8_lossy(&cfg.stdout).into_owned();
    assert!(
        cfg.contains("node-ip = \"10.250.9.1\"") && cfg.contains("network-backend = \"host-gw\""),
        "{cfg}"
    );
    let token = std::fs::read_to_string("/etc/tug/join-token").unwrap_or_default();
    assert!(token.starts_with("tug::"), "the join token for other hosts: {token:?}");
    let node = String::from_utf8_lossy(&tug(&["get", "node", "tug-vm-provisioned", "-o", "json"]).stdout)
        .into_owned();
    assert!(node.contains("10.250.9.1"), "{node}");
    // Done: stop what the script started (by the pids it recorded).
    for name in ["agent", "scheduler"] {
        if let Some(p) = pid(name) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGTERM);
        }
    }
}
