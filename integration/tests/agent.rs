//! The agent end to end: a control plane, one node of the cluster in namespaces with a real
//! `tug-agent`, pods applied with `tug`.

use serde_json::Value;
use std::time::Duration;
use tug_integration::agent::Agent;
use tug_integration::cluster::Cluster;
use tug_integration::control_plane::ControlPlane;
use tug_integration::wait_for;

fn get(cp: &ControlPlane, args: &[&str]) -> Option<Value> {
    cp.get_json(args)
}

fn apply(cp: &ControlPlane, yaml: &str) {
    cp.apply(yaml)
}

/// Waits until `cond` holds for the pod's JSON; panics with the pod and the agent's log.
fn wait_pod(
    cp: &ControlPlane,
    agent: &Agent,
    name: &str,
    limit: u64,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let ok = wait_for(Duration::from_secs(limit), || {
        last = get(cp, &["pod", name]).unwrap_or(Value::Null);
        cond(&last)
    });
    assert!(ok, "pod {name}: {what}\npod: {last:#}\nagent log:\n{}", agent.log());
    last
}

fn setup() -> (Cluster, ControlPlane, Agent) {
    setup_with(&[])
}

fn setup_with(extra: &[&str]) -> (Cluster, ControlPlane, Agent) {
    setup_both(&[], extra)
}

/// A cluster with flags for the control plane and for the agent.
fn setup_both(control_plane: &[&str], extra: &[&str]) -> (Cluster, ControlPlane, Agent) {
    let cluster = Cluster::new(1).expect("cluster");
    let cp = ControlPlane::start_with(control_plane);
    let mut args = vec!["--labels", "zone=a", "--taints", "dedicated=test:PreferNoSchedule"];
    args.extend_from_slice(extra);
    let agent = Agent::start(&cp, &cluster.nodes[0], "tug-it-node0", &args);
    agent.import_example_image();
    let ok = wait_for(Duration::from_secs(30), || {
        get(&cp, &["node", "tug-it-node0"]).is_some_and(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    });
    assert!(ok, "the node did not become Ready:\n{}", agent.log());
    (cluster, cp, agent)
}

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo hello from $(hostname) as $MY_POD; exec httpd -f -p 8080 -h /www"]
    env:
    - name: MY_POD
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
"#;

#[test]
fn a_node_registers_and_a_pod_runs_answers_logs_and_leaves_nothing() {
    let (cluster, cp, agent) = setup();
    let node = get(&cp, &["node", "tug-it-node0"]).unwrap();
    assert_eq!(node["metadata"]["labels"]["zone"], "a");
    assert_eq!(node["spec"]["taints"][0]["key"], "dedicated");
    assert!(node["status"]["capacity"]["cpu"].as_str().is_some_and(|c| c.parse::<u32>().unwrap() >= 1));
    assert_eq!(node["status"]["addresses"][0]["address"], cluster.nodes[0].ip.to_string());
    let lease = get(&cp, &["lease", "tug-it-node0", "-n", "tug-node-lease"]).expect("the node's lease");
    assert_eq!(lease["spec"]["holderIdentity"], "tug-it-node0");
    // The node verbs: cordon, uncordon, taint and its removal.
    let said = |args: &[&str]| String::from_utf8_lossy(&cp.tug(args).stdout).into_owned();
    assert_eq!(said(&["cordon", "tug-it-node0"]), "node/tug-it-node0 cordoned\n");
    assert!(said(&["get", "node", "tug-it-node0"]).contains("Ready,SchedulingDisabled"));
    assert_eq!(said(&["uncordon", "node/tug-it-node0"]), "node/tug-it-node0 uncordoned\n");
    assert_eq!(said(&["taint", "nodes", "tug-it-node0", "tug=x:NoExecute"]), "node/tug-it-node0 tainted\n");
    let taints = get(&cp, &["node", "tug-it-node0"]).unwrap()["spec"]["taints"].clone();
    assert!(
        taints.as_array().unwrap().iter().any(|t| t["key"] == "tug" && t["effect"] == "NoExecute"),
        "{taints}"
    );
    assert_eq!(said(&["taint", "node/tug-it-node0", "tug:NoExecute-"]), "node/tug-it-node0 untainted\n");
    let node = get(&cp, &["node", "tug-it-node0"]).unwrap();
    assert_eq!(node["spec"]["taints"].as_array().map(Vec::len), Some(1), "only the agent's own taint stays");
    assert!(node["spec"].get("unschedulable").is_none_or(|u| u == false));

    apply(&cp, WEB);
    let pod = wait_pod(&cp, &agent, "web", 60, "Running with an IP", |p| {
        p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string()
    });
    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.244."), "{ip}");
    let ready =
        pod["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(ready["status"], "True");
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
    // The node reaches the pod over the pod network.
    let mut body = String::new();
    let answered = wait_for(Duration::from_secs(10), || {
        cluster.nodes[0]
            .run(&["curl", "-s", "-m", "2", &format!("http://{ip}:8080/")])
            .map(|o| body = String::from_utf8_lossy(&o.stdout).into_owned())
            .map_err(|e| body = e.to_string())
            .is_ok()
    });
    assert!(answered && body.contains("Hello from Tug"), "{body}\n{}", agent.log());
    // The container's output is in its CRI log.
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let log = agent.state_dir().join(format!("logs/default_web_{uid}/web/1.log"));
    let mut text = String::new();
    assert!(
        wait_for(Duration::from_secs(5), || {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("hello from web as web")
        }),
        "log {}: {text:?}",
        log.display()
    );
    assert!(text.split(' ').nth(1) == Some("stdout"), "{text}");
    logs_and_exec(&cp, &agent);
    // attach -i: the container's own stdin and output (it has `stdin: true`).
    apply(
        &cp,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: r
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    stdin: true
    command: ["/bin/sh", "-c", "read x; echo got $x"]
"#,
    );
    wait_pod(&cp, &agent, "reader", 60, "Running", |p| p["status"]["phase"] == "Running");
    let out = cp.tug_with_input(&["attach", "-i", "reader"], "hello\n");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("got hello"),
        "tug attach: {out:?}\n{}",
        agent.log()
    );
    cp.tug(&["delete", "pod", "reader", "--now"]);

    let out = cp.tug(&["delete", "pod", "web"]);
    assert!(out.status.success());
    // The tear-down goes containers, network, cgroups, volumes, record: wait for all of it.
    let pod_cgroups = || -> Vec<_> {
        tug_integration::bundle::own_cgroup_dirs_all_hierarchies()
            .into_iter()
            .flat_map(|d| std::fs::read_dir(d.join(&agent.cgroup_parent)).into_iter().flatten().flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    };
    let gone = wait_for(Duration::from_secs(40), || {
        agent.containers().is_empty()
            && std::fs::read_dir(agent.netns_dir()).map(|d| d.count() == 0).unwrap_or(true)
            && std::fs::read_dir(agent.image_root().join("snapshots")).map(|d| d.count() == 0).unwrap_or(true)
            && std::fs::read_dir(agent.state_dir().join("pods")).map(|d| d.count() == 0).unwrap_or(true)
            && pod_cgroups().is_empty()
    });
    assert!(
        gone,
        "the pod left something: containers {:?}, cgroups {:?}\n{}",
        agent.containers(),
        pod_cgroups(),
        agent.log()
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(agent.image_root().to_str().unwrap()), "a rootfs is still mounted");
}

fn text(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `tug logs` and `tug exec` on the running pod `web`, through the API server's tunnel to
/// the node's agent.
fn logs_and_exec(cp: &ControlPlane, agent: &Agent) {
    let out = cp.tug(&["logs", "web"]);
    assert_eq!(text(&out).0, "hello from web as web\n", "{out:?}\n{}", agent.log());
    let out = cp.tug(&["logs", "pod/web", "--timestamps", "--tail", "1"]);
    let (o, _) = text(&out);
    assert!(o.starts_with("20") && o.ends_with("Z hello from web as web\n"), "{o:?}");
    assert_eq!(text(&cp.tug(&["logs", "web", "--tail", "0"])).0, "");
    // By selector, each line with its source; --since and --limit-bytes.
    let out = cp.tug(&["logs", "-l", "app=web", "--prefix"]);
    assert_eq!(text(&out).0, "[pod/web/web] hello from web as web\n", "{out:?}");
    assert_eq!(text(&cp.tug(&["logs", "web", "--since", "1h"])).0, "hello from web as web\n");
    assert_eq!(text(&cp.tug(&["logs", "web", "--since-time", "2100-01-01T00:00:00Z"])).0, "");
    assert_eq!(text(&cp.tug(&["logs", "web", "--limit-bytes", "5"])).0, "hello");
    assert_eq!(
        text(&cp.tug(&["logs", "web", "--all-containers", "--prefix"])).0,
        "[pod/web/web] hello from web as web\n"
    );

    // cp both ways (tar in the container).
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("up.txt");
    std::fs::write(&local, "copied up\n").unwrap();
    let out = cp.tug(&["cp", local.to_str().unwrap(), "web:/tmp/up.txt"]);
    assert!(out.status.success(), "tug cp up: {out:?}");
    assert_eq!(text(&cp.tug(&["exec", "web", "--", "cat", "/tmp/up.txt"])).0, "copied up\n");
    let back = dir.path().join("down.txt");
    let out = cp.tug(&["cp", "web:/tmp/up.txt", back.to_str().unwrap()]);
    assert!(out.status.success(), "tug cp down: {out:?}");
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied up\n");

    // port-forward: a local port to the pod's httpd, through the agent.
    let local = tug_integration::images::free_port();
    let mut forward = std::process::Command::new(tug_integration::bins::path("tug-cli", "tug"))
        .env("TUG_SOCKET", cp.socket())
        .args(["port-forward", "pod/web", &format!("{local}:8080")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tug port-forward");
    let fetch = || -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", local)) else { return String::new() };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut page = String::new();
        let _ = s.read_to_string(&mut page);
        page
    };
    let served = wait_for(Duration::from_secs(20), || fetch().contains("Hello from Tug"));
    let again = fetch();
    let _ = forward.kill();
    let _ = forward.wait();
    assert!(served && again.contains("Hello from Tug"), "tug port-forward: {again:?}\n{}", agent.log());

    let out = cp.tug(&["exec", "web", "--", "cat", "/www/index.html"]);
    assert!(out.status.success() && text(&out).0.contains("Hello from Tug"), "{out:?}");
    let out = cp.tug(&["exec", "web", "--", "sh", "-c", "echo to stderr >&2; exit 3"]);
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(e.contains("to stderr") && e.contains("command terminated with exit code 3"), "{e}");
    let out = cp.tug_with_input(&["exec", "-i", "web", "--", "cat"], "piped in\n");
    assert_eq!(text(&out).0, "piped in\n", "{out:?}");
    // Without -i the process reads no input.
    let out = cp.tug_with_input(&["exec", "web", "--", "cat"], "not passed\n");
    assert!(out.status.success() && text(&out).0.is_empty(), "{out:?}");
    // -t: script(1) gives tug a terminal, and the process gets one of its own.
    let tug = tug_integration::bins::path("tug-cli", "tug");
    let out = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("{} exec -t web -- sh -c '[ -t 0 ] && [ -t 1 ] && echo on a terminal'", tug.display()),
            "/dev/null",
        ])
        .env("TUG_SOCKET", cp.socket())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script");
    assert!(text(&out).0.contains("on a terminal"), "{out:?}");
    // -it: an interactive shell, typed into.
    let mut shell = std::process::Command::new("script")
        .args(["-qec", &format!("{} exec -it web -- sh", tug.display()), "/dev/null"])
        .env("TUG_SOCKET", cp.socket())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script");
    {
        use std::io::Write;
        let mut input = shell.stdin.take().unwrap();
        input.write_all(b"echo typed $((40 + 2))\nexit 4\n").unwrap();
        // Kept open until the shell is done: script(1) ends the session when its input ends.
        let ended = wait_for(Duration::from_secs(20), || shell.try_wait().ok().flatten().is_some());
        drop(input);
        if !ended {
            let _ = shell.kill();
        }
    }
    let out = shell.wait_with_output().unwrap();
    assert!(text(&out).0.contains("typed 42"), "{out:?}");
    assert_eq!(out.status.code(), Some(4), "{out:?}");

    // Errors name what is wrong.
    let (_, e) = text(&cp.tug(&["logs", "nosuch"]));
    assert!(e.contains("pods \"nosuch\" not found"), "{e}");
    let (_, e) = text(&cp.tug(&["exec", "web", "-c", "nope", "--", "true"]));
    assert!(e.contains("container nope is not valid for pod web"), "{e}");
    let (_, e) = text(&cp.tug(&["logs", "web", "--previous"]));
    assert!(e.contains("previous terminated container \"web\" in pod \"web\" not found"), "{e}");

    // tug top: usage sampled by the agent, served as metrics.k8s.io by the API server. A
    // spinning exec counts against the container (it runs in its cgroup).
    let mut spin = std::process::Command::new(&tug)
        .args([
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "end=$(($(date +%s) + 8)); while [ $(date +%s) -lt $end ]; do :; done",
        ])
        .env("TUG_SOCKET", cp.socket())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("tug exec");
    let mut top = String::new();
    let busy = wait_for(Duration::from_secs(8), || {
        top = text(&cp.tug(&["top", "pod", "web"])).0;
        // NAME CPU(cores) MEMORY(bytes): web 987m 1Mi
        top.lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.strip_suffix('m'))
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|m| m >= 300)
    });
    let _ = spin.wait();
    assert!(busy, "tug top pod web never showed the spinning exec: {top:?}");
    assert!(top.starts_with("NAME") && top.contains("CPU(cores)") && top.contains("Mi"), "{top}");
    let (o, e) = text(&cp.tug(&["top", "node"]));
    assert!(o.starts_with("NAME") && o.contains("tug-it-node0") && o.contains('%'), "{o}{e}");
    let (o, _) = text(&cp.tug(&["top", "pod", "--containers", "-A"]));
    assert!(o.starts_with("NAMESPACE") && o.contains("default") && o.contains("web"), "{o}");

    // -f follows while the container runs and ends when it does.
    apply(
        cp,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  restartPolicy: Never
  containers:
  - name: t
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo one; sleep 2; echo two; sleep 1; echo three"]
"#,
    );
    wait_pod(cp, agent, "ticker", 60, "Running", |p| p["status"]["phase"] == "Running");
    let mut follow = std::process::Command::new(&tug)
        .args(["logs", "-f", "ticker"])
        .env("TUG_SOCKET", cp.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tug logs -f");
    let ended = wait_for(Duration::from_secs(30), || follow.try_wait().ok().flatten().is_some());
    if !ended {
        let _ = follow.kill();
    }
    let out = follow.wait_with_output().unwrap();
    assert!(ended, "tug logs -f did not end with its container: {:?}", text(&out));
    assert_eq!(text(&out).0, "one\ntwo\nthree\n");
    let out = cp.tug(&["delete", "pod", "ticker"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_node_under_disk_pressure_stays_ready_takes_no_new_pods_and_evicts_the_tolerant() {
    // Any free space is under a threshold of 100%: the node always reports pressure.
    let (_cluster, cp, agent) = setup_with(&["--eviction-hard", "nodefs.available<100%"]);
    let mut node = Value::Null;
    let tainted = wait_for(Duration::from_secs(30), || {
        node = get(&cp, &["node", "tug-it-node0"]).unwrap_or(Value::Null);
        node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["key"] == "node.kubernetes.io/disk-pressure" && t["effect"] == "NoSchedule")
    });
    assert!(tainted, "no disk-pressure taint: {node:#}");
    let status = |t: &str| {
        node["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).unwrap()["status"]
            .clone()
    };
    assert_eq!(status("DiskPressure"), "True");
    assert_eq!(status("MemoryPressure"), "False", "a signal left out of --eviction-hard has no threshold");
    assert_eq!(status("Ready"), "True");
    apply(&cp, WEB);
    wait_pod(&cp, &agent, "web", 30, "Pending on the disk-pressure taint", |p| {
        p["status"]["conditions"].as_array().into_iter().flatten().any(|c| {
            c["type"] == "PodScheduled"
                && c["status"] == "False"
                && c["message"].as_str().is_some_and(|m| m.contains("node.kubernetes.io/disk-pressure"))
        })
    });
    // A pod that tolerates the taint is placed, then evicted for the pressure: kubelet's
    // Failed/Evicted with its message and event, and nothing started again.
    apply(
        &cp,
        &WEB.replace("name: web,", "name: tolerant,").replace(
            "  terminationGracePeriodSeconds: 2\n",
            "  terminationGracePeriodSeconds: 2\n  tolerations: [{key: node.kubernetes.io/disk-pressure, operator: Exists, effect: NoSchedule}]\n",
        ),
    );
    wait_pod(&cp, &agent, "tolerant", 60, "Failed, Evicted", |p| {
        p["status"]["phase"] == "Failed" && p["status"]["reason"] == "Evicted"
    });
    let pod = get(&cp, &["pod", "tolerant"]).unwrap();
    let message = pod["status"]["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.starts_with(
            "The node was low on resource: ephemeral-storage. Threshold quantity: 100%, available: "
        ),
        "{message}"
    );
    let table = text(&cp.tug(&["get", "pod", "tolerant"])).0;
    assert!(table.lines().nth(1).is_some_and(|l| l.contains(" Evicted ")), "{table}");
    let events = text(&cp.tug(&["get", "events", "--for", "pod/tolerant"])).0;
    assert!(events.contains("Warning   Evicted") && events.contains(message.trim_end()), "{events}");
    let stopped = || {
        let p = get(&cp, &["pod", "tolerant"]).unwrap_or_default();
        p["status"]["containerStatuses"][0]["state"]["terminated"].is_object()
    };
    assert!(wait_for(Duration::from_secs(20), stopped), "{}", agent.log());
}

#[test]
fn a_crashing_container_backs_off_and_an_oom_kill_is_reported() {
    let (_cluster, cp, agent) = setup();
    agent.import_probe_image("tug.local/probe:1");
    apply(
        &cp,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: tug.local/probe:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo going down; exit 3"]
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: h
    image: tug.local/probe:1
    imagePullPolicy: Never
    command: ["/bin/tug-probe", "hog", "512"]
    resources:
      limits: {memory: 32Mi}
"#,
    );
    let pod = wait_pod(&cp, &agent, "crash", 60, "in CrashLoopBackOff after a restart", |p| {
        let s = &p["status"]["containerStatuses"][0];
        s["restartCount"].as_u64().unwrap_or(0) >= 1 && s["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let s = &pod["status"]["containerStatuses"][0];
    assert_eq!(s["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(s["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(pod["status"]["phase"], "Running", "Always keeps a crashing pod Running");
    let out = cp.tug(&["logs", "crash", "--previous"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "going down\n", "{out:?}");
    // A third run: only its log and the previous run's stay on the node (kubelet's rule).
    let pod = wait_pod(&cp, &agent, "crash", 60, "restarted twice", |p| {
        p["status"]["containerStatuses"][0]["restartCount"].as_u64().unwrap_or(0) >= 2
    });
    // The STATUS column says what kubectl says: the crash loop, not the phase.
    let shows = |pod: &str, want: &str| {
        wait_for(Duration::from_secs(60), || {
            String::from_utf8_lossy(&cp.tug(&["get", "pod", pod]).stdout).contains(want)
        })
    };
    assert!(
        shows("crash", "CrashLoopBackOff"),
        "{}",
        String::from_utf8_lossy(&cp.tug(&["get", "pod", "crash"]).stdout)
    );
    // Events: started, and one BackOff event counted up (not one per restart).
    let events = |reason: &str| -> Vec<Value> {
        get(&cp, &["events"])
            .and_then(|l| l["items"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == "crash" && e["reason"] == reason)
            .collect()
    };
    assert!(!events("Started").is_empty(), "a Started event");
    let counted = wait_for(Duration::from_secs(60), || {
        let b = events("BackOff");
        b.len() == 1 && b[0]["count"].as_u64().unwrap_or(0) >= 2
    });
    assert!(counted, "one BackOff event, counted: {:#?}", events("BackOff"));
    let described = String::from_utf8_lossy(&cp.tug(&["describe", "pod/crash"]).stdout).into_owned();
    for want in ["Status:", "Restart Count:", "Last State:       Terminated", "Events:", "BackOff", "(x"] {
        assert!(described.contains(want), "{want:?} in:\n{described}");
    }
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let dir = agent.state_dir().join("logs").join(format!("default_crash_{uid}")).join("c");
    let runs = || tug_integration::names_in(&dir);
    let kept =
        wait_for(Duration::from_secs(30), || !runs().is_empty() && !runs().contains(&"1.log".to_string()));
    assert!(kept && runs().len() <= 2, "logs of {}: {:?}", dir.display(), runs());

    let pod = wait_pod(&cp, &agent, "hog", 60, "OOMKilled", |p| {
        p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
    });
    assert_eq!(pod["status"]["phase"], "Failed");
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0, "restartPolicy Never");
    assert!(shows("hog", "OOMKilled"), "{}", String::from_utf8_lossy(&cp.tug(&["get", "pod", "hog"]).stdout));
}

#[test]
fn a_killed_agent_restarts_nothing_and_adopts_its_pods() {
    let (_cluster, cp, mut agent) = setup();
    apply(&cp, WEB);
    // A pod that tolerates an unreachable node for 0 s: an agent restart must not look like
    // one (the node's lease is renewed before anything else, its taints kept).
    apply(
        &cp,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: tolerant}
spec:
  tolerations:
  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 0}
  - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 0}
  containers:
  - name: c
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "sleep 3600"]
"#,
    );
    let before = wait_pod(&cp, &agent, "web", 60, "Running", |p| p["status"]["phase"] == "Running");
    let tolerant = wait_pod(&cp, &agent, "tolerant", 60, "Running", |p| p["status"]["phase"] == "Running");
    let id = before["status"]["containerStatuses"][0]["containerID"].clone();
    let mut containers = agent.containers();
    containers.retain(|c| c.contains("-web-"));
    assert_eq!(containers.len(), 1);
    agent.kill9();
    // The container runs on without its agent.
    let socket = agent.supervisor_dir(&containers[0]).join("control.sock");
    let mut c =
        tug_shim::supervisor::protocol::Client::connect(&socket).expect("the supervisor outlives the agent");
    let state = c.call(&tug_shim::supervisor::protocol::Request::State).unwrap();
    assert!(
        matches!(state, tug_shim::supervisor::protocol::Reply::State { ref status, .. } if status == "running"),
        "{state:?}"
    );
    agent.restart();
    // The restarted agent says when its first sync of the pod is done; by then it would have
    // restarted anything it was going to.
    let adopted = wait_for(Duration::from_secs(30), || {
        agent.log().contains("adopted pod default/web (1 running containers)")
    });
    assert!(adopted, "the agent did not adopt the pod:\n{}", agent.log());
    let after = get(&cp, &["pod", "web"]).unwrap();
    assert_eq!(after["status"]["containerStatuses"][0]["containerID"], id);
    assert_eq!(after["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(after["status"]["phase"], "Running");
    let mut now = agent.containers();
    now.retain(|c| c.contains("-web-"));
    assert_eq!(now, containers, "{}", agent.log());
    // The 0 s toleration was never tested: the same pod, not marked for deletion.
    std::thread::sleep(Duration::from_secs(3));
    let t = get(&cp, &["pod", "tolerant"]).expect("the tolerant pod was evicted by an agent restart");
    assert_eq!(t["metadata"]["uid"], tolerant["metadata"]["uid"]);
    assert!(t["metadata"]["deletionTimestamp"].is_null(), "{t:#}");
    let events = String::from_utf8_lossy(&cp.tug(&["get", "events"]).stdout).into_owned();
    assert!(!events.contains("TaintManagerEviction") && !events.contains("NodeNotReady"), "{events}");
    // The restarted agent's tunnel replaces the dead one's.
    let out = cp.tug(&["exec", "web", "--", "echo", "still here"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n", "{out:?}\n{}", agent.log());
    // The adopted pod is still the agent's to remove.
    assert!(cp.tug(&["delete", "pod", "web", "tolerant", "--now"]).status.success());
    assert!(wait_for(Duration::from_secs(30), || agent.containers().is_empty()), "{}", agent.log());
}

#[test]
fn images_pull_with_pull_secrets_and_pull_errors_show_in_the_pod() {
    use base64::Engine;
    use tug_integration::images::{Compress, Layer, Layout, Registry, push};
    let reg = Registry::start(Some(("puller", "s3cret")));
    let dir = tempfile::Builder::new().prefix("tug-images").tempdir().unwrap();
    let mut layout = Layout::new(dir.path());
    let m = layout.image(&[(Layer::new().busybox().tar(), Compress::Zstd)], &["/bin/sleep", "600"], "amd64");
    layout.tag(m, "app");
    push(dir.path(), "app", &format!("{}/team/app:1", reg.addr), Some(("puller", "s3cret")), false);

    let cluster = Cluster::new(1).expect("cluster");
    let cp = ControlPlane::start();
    let agent = Agent::start(&cp, &cluster.nodes[0], "tug-it-node0", &["--insecure-registry", &reg.addr]);
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!(r#"{{"auths":{{"{}":{{"username":"puller","password":"s3cret"}}}}}}"#, reg.addr));
    apply(
        &cp,
        &format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: regcred}}
type: kubernetes.io/dockerconfigjson
data: {{.dockerconfigjson: {auth}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: anonymous}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: app, image: "{reg}/team/app:1", imagePullPolicy: Always}}
---
apiVersion: v1
kind: Pod
metadata: {{name: authorized}}
spec:
  terminationGracePeriodSeconds: 1
  imagePullSecrets: [{{name: regcred}}]
  containers:
  - {{name: app, image: "{reg}/team/app:1"}}
"#,
            reg = reg.addr
        ),
    );
    let pod = wait_pod(&cp, &agent, "authorized", 60, "Running from the registry", |p| {
        p["status"]["phase"] == "Running"
    });
    assert!(pod["status"]["containerStatuses"][0]["imageID"].as_str().unwrap().starts_with("sha256:"));
    let pod = wait_pod(&cp, &agent, "anonymous", 60, "ErrImagePull", |p| {
        let r = &p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
        r == "ErrImagePull" || r == "ImagePullBackOff"
    });
    let msg = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("Not authorized"), "{msg}");
    assert_eq!(pod["status"]["phase"], "Pending");
    wait_pod(&cp, &agent, "anonymous", 30, "ImagePullBackOff on the retry", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"
    });
    // The pulls are told as Events, kubelet's way.
    let events = get(&cp, &["events"]).expect("events");
    let has = |pod: &str, reason: &str, text: &str| {
        events["items"].as_array().into_iter().flatten().any(|e| {
            e["involvedObject"]["name"] == pod
                && e["reason"] == reason
                && e["message"].as_str().unwrap_or("").contains(text)
        })
    };
    assert!(has("authorized", "Pulling", "Pulling image"), "{events:#}");
    assert!(has("authorized", "Pulled", "Successfully pulled image"), "{events:#}");
    assert!(has("authorized", "Pulled", " including waiting). Image size: "), "{events:#}");
    assert!(has("anonymous", "Failed", "Not authorized"), "{events:#}");
}

#[test]
fn probes_drive_readiness_and_restart_unhealthy_containers() {
    let (cluster, cp, agent) = setup();
    agent.import_probe_image("tug.local/probe:1");
    apply(
        &cp,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  # Longer than the test waits: the liveness probe's own grace period must be the one used.
  terminationGracePeriodSeconds: 300
  containers:
  - name: web
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    # Ready only when the probe sends its httpHeaders (Host and User-Agent replaced).
    command: ["/bin/sh", "-c", "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\nif [ \"$HTTP_HOST\" = probe.tug ] && [ \"$HTTP_USER_AGENT\" = tug-check ]; then printf \"Content-Type: text/plain\\\\n\\\\nok\\\\n\"; else printf \"Status: 500 Internal Server Error\\\\n\\\\n$HTTP_HOST $HTTP_USER_AGENT\\\\n\"; fi\\n' > /www/cgi-bin/check && chmod +x /www/cgi-bin/check && sleep 2; exec httpd -f -p 8080 -h /www"]
    ports: [{name: http, containerPort: 8080}]
    startupProbe:
      tcpSocket: {port: http}
      periodSeconds: 1
      failureThreshold: 30
    readinessProbe:
      httpGet:
        path: /cgi-bin/check
        port: http
        httpHeaders: [{name: Host, value: probe.tug}, {name: User-Agent, value: tug-check}]
      periodSeconds: 1
  - name: flaky
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "trap '' TERM; touch /tmp/healthy; sleep 4; rm /tmp/healthy; while true; do sleep 1; done"]
    readinessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 1
    livenessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 1
      failureThreshold: 2
      terminationGracePeriodSeconds: 2
  # A gRPC health server whose service "db" is NOT_SERVING for its first 4 s.
  - name: grpc
    image: tug.local/probe:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "mkdir -p /tmp/grpc && echo SERVING > /tmp/grpc/_ && echo NOT_SERVING > /tmp/grpc/db && (sleep 4; echo SERVING > /tmp/grpc/db) & exec /bin/tug-probe serve-grpc-health 9090 /tmp/grpc"]
    readinessProbe:
      grpc: {port: 9090, service: db}
      periodSeconds: 1
    livenessProbe:
      grpc: {port: 9090}
      periodSeconds: 1
      failureThreshold: 3
"#,
    );
    // Running but not ready while the server is not up yet.
    let pod = wait_pod(&cp, &agent, "probed", 60, "Running", |p| p["status"]["phase"] == "Running");
    let web = pod["status"]["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "web")
        .unwrap()
        .clone();
    assert_eq!(web["ready"], false, "not ready before its probes passed: {web:#}");
    // httpGet, exec and grpc probes that pass make all three ready, the gRPC one once its
    // service answers SERVING; its liveness probe (the whole server) never failed.
    wait_pod(&cp, &agent, "probed", 30, "web, flaky and grpc ready", |p| {
        let s = p["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
        s.len() == 3 && s.iter().all(|c| c["ready"] == true && c["restartCount"] == 0)
    });
    // The liveness probe fails once /tmp/healthy is gone: the container, deaf to SIGTERM,
    // is killed after the probe's 2 s, not the pod's 300 s, and restarts.
    let pod = wait_pod(&cp, &agent, "probed", 60, "flaky restarted by its liveness probe", |p| {
        p["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == "flaky" && c["restartCount"].as_u64().unwrap_or(0) >= 1)
    });
    let flaky =
        pod["status"]["containerStatuses"].as_array().unwrap().iter().find(|c| c["name"] == "flaky").unwrap();
    assert!(flaky["lastState"]["terminated"]["exitCode"].as_i64().unwrap() != 0, "{flaky:#}");
    assert!(agent.log().contains("liveness probe failed"), "{}", agent.log());
    // kubelet's events: the failures as Unhealthy (counted, not one per probe), then Killing.
    let events: Vec<Value> = get(&cp, &["events"])
        .and_then(|l| l["items"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == "probed")
        .collect();
    let unhealthy: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["reason"] == "Unhealthy"
                && e["message"].as_str().is_some_and(|m| m.starts_with("Liveness probe failed"))
        })
        .collect();
    assert!(!unhealthy.is_empty(), "{events:#?}");
    assert!(
        events.iter().any(|e| e["reason"] == "Unhealthy"
            && e["message"] == "Readiness probe failed: service unhealthy (responded with \"NOT_SERVING\")"),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e["reason"] == "Killing"
            && e["message"] == "Container flaky failed liveness probe, will be restarted"),
        "{events:#?}"
    );
    // The agent's /metrics, on the node's loopback: what just happened, in kubelet's and
    // kube-proxy's names.
    let metrics = cluster.nodes[0]
        .run(&["curl", "-sf", "--max-time", "5", "http://127.0.0.1:10249/metrics"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| panic!("the agent's /metrics: {e}"));
    let value = |series: &str| -> f64 {
        metrics.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
    };
    assert!(value("kubelet_pod_start_duration_seconds_count") >= 1.0, "{metrics}");
    assert!(value("kubelet_run_podsandbox_duration_seconds_count") >= 1.0, "{metrics}");
    assert!(value("tug_container_start_duration_seconds_count") >= 4.0, "three, and a restart: {metrics}");
    assert!(value("prober_probe_total{probe_type=\"Liveness\",result=\"failed\"}") >= 1.0, "{metrics}");
    assert!(value("prober_probe_total{probe_type=\"Readiness\",result=\"successful\"}") >= 1.0, "{metrics}");
    assert!(
        value(
            "kube_pod_container_status_restarts_total{namespace=\"default\",pod=\"probed\",container=\"flaky\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(metrics.contains("tug_node_pressure{condition=\"MemoryPressure\"} 0"), "{metrics}");
    assert!(value("kubeproxy_sync_proxy_rules_duration_seconds_count") >= 1.0, "{metrics}");
    assert!(metrics.ends_with("# EOF\n"));
}

/// Runs `argv` in container `id` of the agent (through its supervisor): stdout and exit code.
fn exec_in(agent: &Agent, id: &str, argv: &[&str]) -> (String, i32) {
    use tug_shim::supervisor::protocol::Client;
    let socket = agent.supervisor_dir(id).join("control.sock");
    let c = Client::connect(&socket).expect("supervisor");
    let (_, mut stream) = c
        .exec(serde_json::json!({"args": argv, "cwd": "/", "env": ["PATH=/bin"], "terminal": false,
            "user": {"uid": 0, "gid": 0}}))
        .expect("exec");
    let out = stream.collect().expect("collect");
    (String::from_utf8_lossy(&out.stdout).into_owned(), out.exit.map_or(-1, |e| e.code))
}

#[test]
fn volumes_project_config_secrets_and_pod_fields_and_follow_updates() {
    let (_cluster, cp, agent) = setup();
    let host_dir = tempfile::Builder::new().prefix("tug-hostpath").tempdir().unwrap();
    std::fs::write(host_dir.path().join("from-host"), "host file\n").unwrap();
    apply(
        &cp,
        &format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{name: default, labels: {{pod-security.kubernetes.io/enforce: privileged}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{color: blue, size: large}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{token: s3cret}}
---
apiVersion: v1
kind: Pod
metadata: {{name: vols, labels: {{app: vols}}}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {{fsGroup: 2000}}
  volumes:
  - {{name: cfg, configMap: {{name: settings, items: [{{key: color, path: colour}}]}}}}
  - {{name: sec, secret: {{secretName: creds, defaultMode: 0o400}}}}
  - {{name: info, downwardAPI: {{items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}, {{path: name, fieldRef: {{fieldPath: metadata.name}}}}]}}}}
  - {{name: scratch, emptyDir: {{}}}}
  - {{name: mem, emptyDir: {{medium: Memory, sizeLimit: 8Mi}}}}
  - {{name: host, hostPath: {{path: "{host}", type: Directory}}}}
  containers:
  - name: a
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo from-a > /scratch/shared; exec sleep 600"]
    volumeMounts:
    - {{name: cfg, mountPath: /cfg}}
    - {{name: sec, mountPath: /sec, readOnly: true}}
    - {{name: info, mountPath: /info}}
    - {{name: scratch, mountPath: /scratch}}
    - {{name: mem, mountPath: /mem}}
    - {{name: host, mountPath: /host, readOnly: true}}
  - name: b
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sleep", "600"]
    securityContext: {{runAsUser: 1000}}
    volumeMounts:
    - {{name: scratch, mountPath: /data}}
    - {{name: sec, mountPath: /sec, readOnly: true}}
"#,
            host = host_dir.path().display()
        ),
    );
    let pod = wait_pod(&cp, &agent, "vols", 60, "Running", |p| {
        p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|c| c.len() == 2 && c.iter().all(|c| c["ready"] == true))
    });
    let id = |name: &str| {
        let s = pod["status"]["containerStatuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        s["containerID"].as_str().unwrap().trim_start_matches("tug://").to_string()
    };
    let (a, b) = (id("a"), id("b"));
    assert_eq!(exec_in(&agent, &a, &["cat", "/cfg/colour"]).0, "blue");
    assert_eq!(
        exec_in(&agent, &a, &["ls", "/cfg"]).0.split_whitespace().collect::<Vec<_>>(),
        ["colour"],
        "only the listed item"
    );
    assert_eq!(exec_in(&agent, &a, &["cat", "/sec/token"]).0, "s3cret");
    // fsGroup: the volumes belong to group 2000, which every container has; a secret of mode
    // 0400 is readable by the group, and so by b's non-root user.
    assert_eq!(exec_in(&agent, &a, &["stat", "-L", "-c", "%a %g", "/sec/token"]).0.trim(), "440 2000");
    // (tug exec runs as the container's own user: uid 1000 in b.)
    let in_b = |cmd: &str| text(&cp.tug(&["exec", "vols", "-c", "b", "--", "sh", "-c", cmd])).0;
    assert_eq!(in_b("id -u; id -G"), "1000\n0 2000\n");
    assert_eq!(in_b("cat /sec/token"), "s3cret");
    assert_eq!(
        in_b("touch /data/by-b && stat -c %u:%g /data/by-b"),
        "1000:2000\n",
        "setgid: new files take the group"
    );
    assert_eq!(exec_in(&agent, &a, &["cat", "/info/name"]).0, "vols");
    assert_eq!(exec_in(&agent, &a, &["cat", "/info/labels"]).0, "app=\"vols\"\n");
    assert_eq!(exec_in(&agent, &a, &["cat", "/host/from-host"]).0, "host file\n");
    assert_ne!(exec_in(&agent, &a, &["touch", "/host/nope"]).1, 0, "a readOnly mount refuses writes");
    let shared =
        wait_for(Duration::from_secs(10), || exec_in(&agent, &b, &["cat", "/data/shared"]).0 == "from-a\n");
    assert!(shared, "an emptyDir is shared between the pod's containers");
    let mounts = exec_in(&agent, &a, &["cat", "/proc/mounts"]).0;
    assert!(mounts.lines().any(|l| l.contains(" /mem tmpfs ") && l.contains("size=8192k")), "{mounts}");
    assert!(mounts.lines().any(|l| l.contains(" /sec tmpfs ")), "secrets live on a tmpfs: {mounts}");
    // On the node, the secret is in the run directory's tmpfs: the one tmpfs the pod added to
    // the node's mounts is its memory emptyDir.
    let node_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let state = agent.state_dir().display().to_string();
    let tmpfs: Vec<&str> = node_mounts
        .lines()
        .filter(|l| l.contains(&format!(" {state}/")) && l.contains(" - tmpfs "))
        .collect();
    assert!(tmpfs.len() == 1 && tmpfs[0].contains("/volumes/mem "), "{tmpfs:#?}");
    // An update of the ConfigMap reaches the running container.
    apply(
        &cp,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {color: green, size: large}\n",
    );
    let updated =
        wait_for(Duration::from_secs(30), || exec_in(&agent, &a, &["cat", "/cfg/colour"]).0 == "green");
    assert!(updated, "the configMap volume did not follow the update:\n{}", agent.log());
    assert!(cp.tug(&["delete", "pod", "vols"]).status.success());
    // Containers go first, then the network, then the volumes: wait for the whole tear-down.
    let state = agent.state_dir().display().to_string();
    let clean = wait_for(Duration::from_secs(30), || {
        agent.containers().is_empty()
            && !std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&state)
            && std::fs::read_dir(agent.state_dir().join("pods")).map(|d| d.count() == 0).unwrap_or(true)
    });
    assert!(clean, "a volume or the pod's directory stayed:\n{}", agent.log());
}

#[test]
fn an_agent_joins_a_remote_control_plane_with_the_token() {
    let port = tug_integration::images::free_port();
    let addr = format!("127.0.0.1:{port}");
    let cp = ControlPlane::start_with(&["--listen", &addr]);
    let token =
        cp.log().split_whitespace().find(|w| w.starts_with("tug::")).expect("the join token").to_string();
    let cluster = Cluster::new(1).expect("cluster");
    let bad = Agent::start_remote(
        &format!("https://{addr}"),
        &format!("{}::wrong", token.rsplit_once("::").unwrap().0),
        &cluster.nodes[0],
        "tug-it-bad",
        &[],
    );
    let refused = wait_for(Duration::from_secs(20), || bad.log().contains("the join token is not valid"));
    assert!(refused, "a wrong token must be refused: {}", bad.log());
    drop(bad);
    let agent =
        Agent::start_remote(&format!("https://{addr}"), &token, &cluster.nodes[0], "tug-it-remote", &[]);
    agent.import_example_image();
    let ok = wait_for(Duration::from_secs(30), || get(&cp, &["node", "tug-it-remote"]).is_some());
    assert!(ok, "the remote agent did not register:\n{}", agent.log());
    assert!(agent.state_dir().join("credentials/client.crt").exists());
    apply(&cp, WEB);
    wait_pod(&cp, &agent, "web", 60, "Running through a TLS-joined agent", |p| {
        p["status"]["phase"] == "Running"
    });
    // Logs and exec reach the remote node through its tunnel over TLS.
    let out = cp.tug(&["exec", "web", "--", "echo", "over TLS"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over TLS\n", "{out:?}\n{}", agent.log());
    let logged = wait_for(Duration::from_secs(10), || {
        String::from_utf8_lossy(&cp.tug(&["logs", "web"]).stdout).contains("hello from web")
    });
    assert!(logged, "{:?}", cp.tug(&["logs", "web"]));
    // The agent is `system:node:tug-it-remote`: the node authorizer let it do all its work.
    assert!(!agent.log().to_lowercase().contains("forbidden"), "{}", agent.log());
    let who = String::from_utf8_lossy(
        &cp.tug(&[
            "--server",
            &format!("https://{addr}"),
            "--tls-dir",
            agent.state_dir().join("credentials").to_str().unwrap(),
            "auth",
            "whoami",
        ])
        .stdout,
    )
    .to_string();
    assert!(who.contains("system:node:tug-it-remote"), "{who}");
}

/// Two replicas over one etcd, an agent joined to both (`--server A,B`): each replica holds
/// the node's tunnels, so logs and exec work through either, and go on through the survivor
/// when the other is killed.
#[test]
fn an_agent_with_two_replicas_is_reachable_through_each() {
    let etcd = tug_integration::etcd::EtcdProcess::start();
    let (_secrets, secret) = tug_integration::etcd::pki_secret();
    let listen: Vec<String> =
        (0..2).map(|_| format!("127.0.0.1:{}", tug_integration::images::free_port())).collect();
    let mut replicas: Vec<ControlPlane> = listen
        .iter()
        .map(|l| {
            ControlPlane::start_with(&[
                "--store",
                "etcd",
                "--etcd-endpoints",
                etcd.endpoint.as_str(),
                "--listen",
                l,
                "--pki-secret-file",
                &secret,
            ])
        })
        .collect();
    let token = replicas[0]
        .log()
        .split_whitespace()
        .find(|w| w.starts_with("tug::"))
        .expect("the join token")
        .to_string();
    let servers: Vec<String> = listen.iter().map(|l| format!("https://{l}")).collect();
    let cluster = Cluster::new(1).expect("cluster");
    let agent = Agent::start_remote(&servers.join(","), &token, &cluster.nodes[0], "tug-it-replicas", &[]);
    agent.import_example_image();
    apply(&replicas[0], WEB);
    wait_pod(&replicas[0], &agent, "web", 60, "Running with two replicas", |p| {
        p["status"]["phase"] == "Running"
    });
    for (i, r) in replicas.iter().enumerate() {
        let reached = wait_for(Duration::from_secs(15), || {
            String::from_utf8_lossy(&r.tug(&["exec", "web", "--", "echo", "via", &i.to_string()]).stdout)
                == format!("via {i}\n")
        });
        assert!(
            reached,
            "exec through replica {i}: {:?}\n{}",
            r.tug(&["exec", "web", "--", "true"]),
            agent.log()
        );
        let logged = wait_for(Duration::from_secs(10), || {
            String::from_utf8_lossy(&r.tug(&["logs", "web"]).stdout).contains("hello from web")
        });
        assert!(logged, "logs through replica {i}: {:?}", r.tug(&["logs", "web"]));
    }
    // The first replica gone, the second still reaches the node.
    replicas[0].kill9();
    let o = replicas[1].tug(&["exec", "web", "--", "echo", "still"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "still\n", "{o:?}\n{}", agent.log());
    drop(replicas.drain(..));
}

#[test]
fn a_claim_binds_a_local_volume_whose_data_outlives_its_pods() {
    let (_cluster, cp, agent) = setup();
    let dir = tempfile::Builder::new().prefix("tug-pv").tempdir().unwrap();
    apply(
        &cp,
        &format!(
            r#"
apiVersion: v1
kind: PersistentVolume
metadata: {{name: tug-it-local}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  local: {{path: "{path}"}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [tug-it-node0]}}]
---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: tug-it-too-small}}
spec:
  capacity: {{storage: 100Mi}}
  accessModes: [ReadWriteOnce]
  hostPath: {{path: /nonexistent/tug-it}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 500Mi}}}}
"#,
            path = dir.path().display()
        ),
    );
    let mut pvc = Value::Null;
    let bound = wait_for(Duration::from_secs(20), || {
        pvc = get(&cp, &["pvc", "data"]).unwrap_or(Value::Null);
        pvc["status"]["phase"] == "Bound"
    });
    assert!(bound, "the claim was not bound: {pvc:#}");
    assert_eq!(pvc["spec"]["volumeName"], "tug-it-local", "the smallest volume that fits");
    assert_eq!(pvc["status"]["capacity"]["storage"], "1Gi");
    let pv = get(&cp, &["pv", "tug-it-local"]).unwrap();
    assert_eq!(pv["status"]["phase"], "Bound");
    assert_eq!(pv["spec"]["claimRef"]["name"], "data");
    let table = text(&cp.tug(&["get", "pv"])).0;
    assert!(
        table.contains("ACCESS MODES")
            && table
                .lines()
                .any(|l| l.contains("tug-it-local") && l.contains("RWO") && l.contains("default/data")),
        "{table}"
    );

    let pod = |name: &str, cmd: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: data}}}}]
  containers:
  - name: c
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "{cmd}"]
    volumeMounts: [{{name: data, mountPath: /data}}]
"#
        )
    };
    apply(&cp, &pod("writer", "echo written by $(hostname) > /data/file"));
    wait_pod(&cp, &agent, "writer", 60, "Succeeded", |p| p["status"]["phase"] == "Succeeded");
    assert!(cp.tug(&["delete", "pod", "writer"]).status.success());
    apply(&cp, &pod("reader", "cat /data/file"));
    wait_pod(&cp, &agent, "reader", 60, "Succeeded", |p| p["status"]["phase"] == "Succeeded");
    assert_eq!(text(&cp.tug(&["logs", "reader"])).0, "written by writer\n", "the data outlived its pod");
    assert_eq!(std::fs::read_to_string(dir.path().join("file")).unwrap(), "written by writer\n");

    // A claim that does not exist holds its pod back, and says so.
    apply(&cp, &pod("waiting", "true").replace("claimName: data", "claimName: missing"));
    wait_pod(&cp, &agent, "waiting", 20, "unschedulable for its claim", |p| {
        p["status"]["conditions"].as_array().into_iter().flatten().any(|c| {
            c["type"] == "PodScheduled"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("persistentvolumeclaim \"missing\" not found"))
        })
    });
    // Made afterwards (and bound to nothing: no volume is left that fits), it still waits.
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: missing}\nspec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 5Gi}}}\n",
    );
    wait_pod(&cp, &agent, "waiting", 20, "waiting for the claim to be bound", |p| {
        p["status"]["conditions"].as_array().into_iter().flatten().any(|c| {
            c["type"] == "PodScheduled"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("unbound immediate PersistentVolumeClaims"))
        })
    });

    // The claim deleted: its volume is Released (Retain), its data kept.
    for p in ["reader", "waiting"] {
        assert!(cp.tug(&["delete", "pod", p]).status.success());
    }
    assert!(cp.tug(&["delete", "pvc", "data"]).status.success());
    let released = wait_for(Duration::from_secs(20), || {
        get(&cp, &["pv", "tug-it-local"]).is_some_and(|pv| pv["status"]["phase"] == "Released")
    });
    assert!(released, "{:?}", get(&cp, &["pv", "tug-it-local"]));
    assert!(dir.path().join("file").exists());
    for pv in ["tug-it-local", "tug-it-too-small"] {
        assert!(cp.tug(&["delete", "pv", pv]).status.success());
    }
    assert!(cp.tug(&["delete", "pvc", "missing"]).status.success());
}

/// The escapes of CVE-2017-1002101 and CVE-2017-1002102: a pod plants symlinks in its
/// emptyDir (to `/`, up through `..`, to a node directory) and asks for them as subPaths;
/// it tries to swap its configMap volume's `..data` for a link to a node path. None of it
/// reaches the node: the escaping subPaths are refused with a message naming them, a link
/// that stays inside the volume works, and the configMap volume is read-only.
#[test]
fn a_pod_cannot_reach_the_node_through_its_volumes() {
    let (_cluster, cp, agent) = setup();
    let node_dir = tempfile::Builder::new().prefix("tug-node-secret").tempdir().unwrap();
    std::fs::write(node_dir.path().join("secret"), "node only\n").unwrap();
    let node = node_dir.path().display();
    // One container per escape: each mounts its link as a subPath.
    let escaping: String = [("root", "root"), ("up", "up/etc"), ("node", "node")]
        .iter()
        .map(|(name, sub)| {
            format!(
                "  - name: {name}\n    image: tug.local/busybox-httpd:1\n    imagePullPolicy: Never\n    command: [\"/bin/sleep\", \"600\"]\n    volumeMounts: [{{name: scratch, mountPath: /host, subPath: {sub}}}]\n"
            )
        })
        .collect();
    apply(
        &cp,
        &format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: escape-cfg}}
data: {{color: blue}}
---
apiVersion: v1
kind: Pod
metadata: {{name: escape}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: scratch, emptyDir: {{}}}}
  - {{name: cfg, configMap: {{name: escape-cfg}}}}
  initContainers:
  - name: plant
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "mkdir /s/real && echo inside > /s/real/f && ln -s real /s/alias && ln -s / /s/root && ln -s ../../../../../../../.. /s/up && ln -s {node} /s/node"]
    volumeMounts: [{{name: scratch, mountPath: /s}}]
  containers:
  - name: good
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sleep", "600"]
    volumeMounts:
    - {{name: scratch, mountPath: /alias, subPath: alias}}
    - {{name: scratch, mountPath: /made, subPath: new/dir}}
    - {{name: cfg, mountPath: /cfg}}
{escaping}  - name: armored
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sleep", "600"]
    securityContext: {{appArmorProfile: {{type: Localhost, localhostProfile: tug-test}}}}
  - name: labelled
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sleep", "600"]
    securityContext: {{seLinuxOptions: {{level: "s0:c1,c2"}}}}
"#
        ),
    );
    let status = |p: &Value, name: &str| -> Value {
        p["status"]["containerStatuses"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or(Value::Null)
    };
    let escapes = ["root", "up", "node"];
    let pod = wait_pod(&cp, &agent, "escape", 60, "good Running, the escapes refused", |p| {
        status(p, "good")["ready"] == true
            && escapes
                .iter()
                .all(|n| status(p, n)["state"]["waiting"]["reason"] == "CreateContainerConfigError")
    });
    for n in escapes {
        let msg = status(&pod, n)["state"]["waiting"]["message"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains("subPath") && msg.contains("leads outside"), "{n}: {msg}");
    }
    // Confinement the node cannot give is refused, never run unconfined.
    let pod = wait_pod(&cp, &agent, "escape", 30, "AppArmor and SELinux refused", |p| {
        ["armored", "labelled"]
            .iter()
            .all(|n| status(p, n)["state"]["waiting"]["reason"] == "CreateContainerError")
    });
    for (n, field) in [("armored", "process.apparmorProfile"), ("labelled", "process.selinuxLabel")] {
        let msg = status(&pod, n)["state"]["waiting"]["message"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains(field) && msg.contains("refused rather than run unconfined"), "{n}: {msg}");
    }
    let good = status(&pod, "good")["containerID"].as_str().unwrap().trim_start_matches("tug://").to_string();
    assert_eq!(exec_in(&agent, &good, &["cat", "/alias/f"]).0, "inside\n", "a link inside the volume works");
    assert_eq!(exec_in(&agent, &good, &["stat", "-c", "%F", "/made"]).0, "directory\n");
    // The configMap volume is read-only: ..data cannot be swapped, nothing can be added.
    assert_ne!(exec_in(&agent, &good, &["busybox", "ln", "-sfn", "/", "/cfg/..data"]).1, 0);
    assert_ne!(exec_in(&agent, &good, &["touch", "/cfg/x"]).1, 0);
    assert_eq!(exec_in(&agent, &good, &["cat", "/cfg/color"]).0, "blue");
    apply(&cp, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: escape-cfg}\ndata: {color: red}\n");
    let updated =
        wait_for(Duration::from_secs(30), || exec_in(&agent, &good, &["cat", "/cfg/color"]).0 == "red");
    assert!(updated, "the configMap volume did not follow the update:\n{}", agent.log());
    // Nothing of the node was mounted for the pod.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let subpaths: Vec<&str> = mountinfo.lines().filter(|l| l.contains("volume-subpaths")).collect();
    assert!(
        subpaths.iter().all(|l| !l.contains(&node.to_string()) && l.split(' ').nth(3) != Some("/")),
        "{subpaths:#?}"
    );
    assert_eq!(std::fs::read_to_string(node_dir.path().join("secret")).unwrap(), "node only\n");
    assert!(cp.tug(&["delete", "pod", "escape"]).status.success());
    let state = agent.state_dir().display().to_string();
    let clean = wait_for(Duration::from_secs(30), || {
        agent.containers().is_empty()
            && !std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&state)
    });
    assert!(clean, "a subPath mount or a volume stayed:\n{}", agent.log());
    assert!(node_dir.path().join("secret").exists(), "the node's files stay");
}

/// Graceful deletion: a deleted pod stays (Terminating) while its node stops its containers
/// with the grace period, then the node's final delete removes it; its name cannot be taken
/// meanwhile; watches see the mark, then the deletion; `--force` removes at once.
#[test]
fn a_deleted_pod_terminates_with_its_grace_period_then_leaves_the_api() {
    let (_cluster, cp, agent) = setup();
    let stubborn = |name: &str, grace: u32| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: {grace}
  containers:
  - name: c
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "trap 'echo got TERM' TERM; while true; do sleep 0.2; done"]
"#
        )
    };
    for (name, grace) in [("slow", 4), ("forced", 600), ("waited", 1)] {
        apply(&cp, &stubborn(name, grace));
    }
    for name in ["slow", "forced", "waited"] {
        wait_pod(&cp, &agent, name, 60, "Running", |p| p["status"]["phase"] == "Running");
    }
    let rv = get(&cp, &["pod", "slow"]).unwrap()["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let watch = format!(
        "/api/v1/namespaces/default/pods?watch=true&fieldSelector=metadata.name%3Dslow&resourceVersion={rv}&timeoutSeconds=25"
    );
    std::thread::scope(|s| {
        let events = s.spawn(|| cp.raw("GET", &watch, "application/json", "").1);
        std::thread::sleep(Duration::from_millis(300));
        let t0 = std::time::Instant::now();
        let out = cp.tug(&["delete", "pod", "slow", "--wait=false"]);
        assert_eq!(text(&out).0, "pod \"slow\" deleted\n", "{out:?}");
        let p = get(&cp, &["pod", "slow"]).expect("a terminating pod stays in the API");
        assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 4, "{p:#}");
        assert!(p["metadata"]["deletionTimestamp"].is_string(), "{p:#}");
        let table = text(&cp.tug(&["get", "pods"])).0;
        assert!(table.lines().any(|l| l.starts_with("slow ") && l.contains("Terminating")), "{table}");
        // The name is taken until the pod is gone.
        let (code, body) =
            cp.raw("POST", "/api/v1/namespaces/default/pods", "application/yaml", &stubborn("slow", 4));
        assert_eq!(code, 409, "{body}");
        assert!(body.contains("AlreadyExists"), "{body}");
        // A delete naming another uid is refused.
        let (code, body) = cp.raw(
            "DELETE",
            "/api/v1/namespaces/default/pods/slow",
            "application/json",
            r#"{"gracePeriodSeconds": 0, "preconditions": {"uid": "not-this-one"}}"#,
        );
        assert_eq!(code, 409, "{body}");
        assert!(body.contains("Precondition failed: UID in precondition: not-this-one"), "{body}");
        // The container ignores SIGTERM: it is killed at the end of its 4 s, then the pod goes.
        assert!(
            wait_for(Duration::from_secs(30), || get(&cp, &["pod", "slow"]).is_none()),
            "{}",
            agent.log()
        );
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(3500),
            "gone after {took:?}, before its grace period\n{}",
            agent.log()
        );
        let events = events.join().unwrap();
        let modified = events.find("\"MODIFIED\"").unwrap_or(usize::MAX);
        let deleted = events.find("\"DELETED\"").expect("a DELETED event");
        assert!(modified < deleted && events.contains("deletionTimestamp"), "{events}");
    });
    // --force: gone from the API at once (the node stops its containers after).
    let out = cp.tug(&["delete", "pod", "forced", "--force"]);
    let (o, e) = text(&out);
    assert_eq!(o, "pod \"forced\" force deleted\n");
    assert!(e.contains("Immediate deletion does not wait"), "{e}");
    assert!(get(&cp, &["pod", "forced"]).is_none());
    // A pod the scheduler preempts carries DisruptionTarget (set here as the scheduler sets
    // it); its node says so while stopping it.
    let (code, body) = cp.raw(
        "PATCH",
        "/api/v1/namespaces/default/pods/waited/status",
        "application/strategic-merge-patch+json",
        r#"{"status": {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler", "message": "default-scheduler: preempting to accommodate a higher priority pod"}]}}"#,
    );
    assert_eq!(code, 200, "{body}");
    // The default waits until the pod is gone.
    let out = cp.tug(&["delete", "pod", "waited"]);
    assert!(out.status.success(), "{out:?}");
    assert!(get(&cp, &["pod", "waited"]).is_none(), "tug delete returned before the pod was gone");
    let preempting = || text(&cp.tug(&["get", "events", "--for", "pod/waited"])).0;
    assert!(
        wait_for(Duration::from_secs(10), || preempting()
            .contains("Preempting: default-scheduler: preempting to accommodate a higher priority pod")),
        "{}",
        preempting()
    );
    assert!(wait_for(Duration::from_secs(20), || agent.containers().is_empty()), "{}", agent.log());
}

#[test]
fn a_pods_service_account_token_reaches_the_api_and_dies_with_the_pod() {
    let (_cluster, cp, agent) = setup();
    apply(
        &cp,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: sa-web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: tug.local/busybox-httpd:1, imagePullPolicy: Never, command: ["sleep", "600"]}
"#,
    );
    wait_pod(&cp, &agent, "sa-web", 60, "Running", |p| p["status"]["phase"] == "Running");
    let pod = get(&cp, &["pod", "sa-web"]).unwrap();
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    let read = |file: &str| {
        let out = cp.tug(&[
            "exec",
            "sa-web",
            "--",
            "cat",
            &format!("/var/run/secrets/kubernetes.io/serviceaccount/{file}"),
        ]);
        assert!(out.status.success(), "{file}: {out:?}\n{}", agent.log());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(read("namespace"), "default");
    assert!(read("ca.crt").starts_with("-----BEGIN CERTIFICATE-----"));
    let token = read("token");
    // The token is the pod's service account to the API.
    let who = cp.tug(&["--token", &token, "auth", "whoami"]);
    let who = String::from_utf8_lossy(&who.stdout).to_string();
    assert!(
        who.contains("system:serviceaccount:default:default") && who.contains("system:serviceaccounts"),
        "{who}"
    );
    let listed = cp.tug(&["--token", &token, "get", "pods"]);
    assert!(
        String::from_utf8_lossy(&listed.stderr)
            .contains(r#"User "system:serviceaccount:default:default" cannot list resource "pods""#),
        "{listed:?}"
    );
    // Read-only in the container, and refreshed by the same token until it is due.
    let out = cp.tug(&[
        "exec",
        "sa-web",
        "--",
        "sh",
        "-c",
        "echo x > /var/run/secrets/kubernetes.io/serviceaccount/token",
    ]);
    assert!(!out.status.success(), "the token volume is writable: {out:?}");
    // Deleted, the pod takes its token with it.
    assert!(cp.tug(&["delete", "pod", "sa-web", "--now"]).status.success());
    let gone = tug_integration::wait_for(Duration::from_secs(30), || get(&cp, &["pod", "sa-web"]).is_none());
    assert!(gone, "{}", agent.log());
    let refused = cp.tug(&["--token", &token, "auth", "whoami"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Unauthorized"), "{refused:?}");
}

#[test]
fn a_horizontal_autoscaler_scales_out_under_load_and_back_in_after_its_window() {
    let (_cluster, cp, agent) = setup_both(&["--horizontal-pod-autoscaler-sync-period", "2s"], &[]);
    // Pods that burn CPU while the ConfigMap says so (read afresh each round).
    apply(
        &cp,
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: load}
data: {on: "1"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: burn}
spec:
  replicas: 1
  selector: {matchLabels: {app: burn}}
  template:
    metadata: {labels: {app: burn}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burn
        image: tug.local/busybox-httpd:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "while true; do if [ \"$(cat /load/on)\" = 1 ]; then i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; else sleep 1; fi; done"]
        resources: {requests: {cpu: 50m}, limits: {cpu: 200m}}
        volumeMounts: [{name: load, mountPath: /load}]
      volumes: [{name: load, configMap: {name: load}}]
"#,
    );
    let out = cp.tug(&["autoscale", "deploy/burn", "--min", "1", "--max", "3", "--cpu-percent", "50"]);
    assert_eq!(text(&out).0, "horizontalpodautoscaler.autoscaling/burn autoscaled\n", "{out:?}");
    let patch = r#"{"spec": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 4}}}}"#;
    assert!(cp.tug(&["patch", "hpa", "burn", "--type", "merge", "-p", patch]).status.success());
    let replicas =
        || get(&cp, &["deploy", "burn"]).map_or(0, |d| d["spec"]["replicas"].as_i64().unwrap_or(0));
    let hpa = || get(&cp, &["hpa", "burn"]).unwrap_or_default();
    // The controller scales the target, then writes its own status: wait for both.
    assert!(
        wait_for(Duration::from_secs(90), || replicas() == 3 && hpa()["status"]["desiredReplicas"] == 3),
        "no scale-out: {:#}\n{}",
        hpa(),
        agent.log()
    );
    let h = hpa();
    assert_eq!(h["status"]["desiredReplicas"], 3, "{h:#}");
    let active =
        h["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "ScalingActive").cloned();
    assert_eq!(active.as_ref().map(|c| c["reason"].clone()), Some("ValidMetricFound".into()), "{h:#}");
    let table = text(&cp.tug(&["get", "hpa", "burn"])).0;
    let row = table.lines().nth(1).unwrap_or_default().to_string();
    assert!(row.starts_with("burn   Deployment/burn   cpu: ") && row.contains("%/50%"), "{table}");
    let events = text(&cp.tug(&["get", "events", "--for", "hpa/burn"])).0;
    assert!(
        events.contains("SuccessfulRescale")
            && events.contains(
                "New size: 3; reason: cpu resource utilization (percentage of request) above target"
            ),
        "{events}"
    );
    let d = text(&cp.tug(&["describe", "hpa", "burn"])).0;
    assert!(
        d.contains("Reference:")
            && d.contains("Deployment/burn")
            && d.contains("(as a percentage of request):"),
        "{d}"
    );
    // Load off: back to the minimum once the (shortened) window has passed.
    let off = r#"{"data": {"on": "0"}}"#;
    assert!(cp.tug(&["patch", "configmap", "load", "--type", "merge", "-p", off]).status.success());
    assert!(
        wait_for(Duration::from_secs(90), || replicas() == 1),
        "no scale-in: {:#}\n{}",
        hpa(),
        agent.log()
    );
    // The event is written just after the scale.
    let said = || text(&cp.tug(&["get", "events", "--for", "hpa/burn"])).0;
    let ok = wait_for(Duration::from_secs(10), || {
        said().contains("New size: 1; reason: All metrics below target")
    });
    assert!(ok, "{}", said());
}

#[test]
fn a_running_pod_is_resized_in_place_without_a_restart() {
    let (_cluster, cp, agent) = setup();
    apply(
        &cp,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: rz}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "while true; do sleep 1; done"]
    resources: {requests: {cpu: 100m, memory: 32Mi}, limits: {cpu: 200m, memory: 64Mi}}
"#,
    );
    let before = wait_pod(&cp, &agent, "rz", 60, "Running", |p| p["status"]["phase"] == "Running");
    let status = |p: &Value| p["status"]["containerStatuses"][0].clone();
    assert_eq!(status(&before)["resources"]["limits"]["memory"], "64Mi", "{before:#}");
    // The memory limit in force: read on the host from the cgroup of a process of the pod
    // (the agent names pod cgroups `pod<first 12 alphanumerics of the uid>`).
    let uid: String = before["metadata"]["uid"]
        .as_str()
        .unwrap()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    // The container's first process on the host (its init: the lowest pid in the pod's cgroup).
    let init_pid = || -> Option<u32> {
        tug_integration::pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|g| g.contains(&format!("/pod{uid}")))
            })
            .min()
    };
    let limit = || -> String {
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(groups) = std::fs::read_to_string(entry.path().join("cgroup")) else { continue };
            for line in groups.lines().filter(|l| l.contains(&format!("/pod{uid}"))) {
                let mut parts = line.splitn(3, ':');
                let (_, controllers, path) =
                    (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let file = if controllers.split(',').any(|c| c == "memory") {
                    format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
                } else if controllers.is_empty() {
                    format!("/sys/fs/cgroup{path}/memory.max")
                } else {
                    continue;
                };
                if let Ok(v) = std::fs::read_to_string(&file) {
                    return v.trim().to_string();
                }
            }
        }
        String::new()
    };
    assert_eq!(limit(), (64u64 << 20).to_string(), "the container's cgroup has its limit");
    // And the container reads it from inside, as runtimes that size themselves do.
    let inside = || {
        let out = cp.tug(&[
            "exec",
            "rz",
            "--",
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
        ]);
        text(&out).0.trim().to_string()
    };
    assert_eq!(inside(), (64u64 << 20).to_string());
    let pid = init_pid().expect("the container's init on the host");
    let out = cp.tug(&["resize", "pod/rz", "--limits", "memory=128Mi,cpu=400m"]);
    assert_eq!(text(&out).0, "pod/rz resized\n", "{out:?}");
    let after =
        wait_pod(&cp, &agent, "rz", 30, "resized", |p| status(p)["resources"]["limits"]["memory"] == "128Mi");
    let (was, is) = (status(&before), status(&after));
    assert_eq!(is["restartCount"], 0, "{after:#}");
    assert_eq!(
        (was["containerID"].clone(), was["state"]["running"]["startedAt"].clone()),
        (is["containerID"].clone(), is["state"]["running"]["startedAt"].clone()),
        "the same container, not restarted"
    );
    assert_eq!(limit(), (128u64 << 20).to_string(), "the new limit is in force");
    assert_eq!(inside(), (128u64 << 20).to_string(), "and seen from inside");
    assert_eq!(init_pid(), Some(pid), "the same process");
    // Beyond the node: Infeasible, and nothing changes.
    let out = cp.tug(&["resize", "pod/rz", "--requests", "cpu=1000", "--limits", "cpu=1000"]);
    assert!(out.status.success(), "{out:?}");
    let pending = wait_pod(&cp, &agent, "rz", 30, "PodResizePending", |p| {
        p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "PodResizePending" && c["reason"] == "Infeasible")
    });
    assert_eq!(status(&pending)["resources"]["limits"]["cpu"], "400m", "{pending:#}");
    // Back within reach: applied, the condition gone.
    assert!(cp.tug(&["resize", "pod/rz", "--requests", "cpu=100m", "--limits", "cpu=400m"]).status.success());
    wait_pod(&cp, &agent, "rz", 30, "feasible again", |p| {
        status(p)["resources"]["requests"]["cpu"] == "100m"
            && !p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "PodResizePending")
    });
    // Beside another pod that holds the rest of the node: Deferred.
    let node = get(&cp, &["node", "tug-it-node0"]).unwrap();
    let alloc = node["status"]["allocatable"]["cpu"].as_str().unwrap().parse::<u64>().unwrap() * 1000;
    apply(
        &cp,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: hog}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: tug.local/busybox-httpd:1, imagePullPolicy: Never, command: [/bin/sleep, '3600'], resources: {{requests: {{cpu: {}m}}}}}}\n",
            alloc - 300
        ),
    );
    wait_pod(&cp, &agent, "hog", 60, "Running", |p| p["status"]["phase"] == "Running");
    assert!(cp.tug(&["resize", "pod/rz", "--requests", "cpu=400m"]).status.success());
    wait_pod(&cp, &agent, "rz", 30, "Deferred", |p| {
        p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "PodResizePending" && c["reason"] == "Deferred")
    });
    // Only cpu and memory of containers may change through resize.
    let (code, body) = cp.raw(
        "PATCH",
        "/api/v1/namespaces/default/pods/rz/resize",
        "application/strategic-merge-patch+json",
        r#"{"spec": {"containers": [{"name": "c", "image": "other:1"}]}}"#,
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("only cpu and memory resources of containers are mutable"), "{body}");
}

/// A Deployment whose one container burns a core (within its CPU limit), and a VPA of it
/// controlling CPU in `mode`.
fn burner_with_vpa(name: &str, replicas: u32, (request, limit): (&str, &str), mode: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burn
        image: tug.local/busybox-httpd:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "while true; do :; done"]
        resources: {{requests: {{cpu: {request}}}, limits: {{cpu: {limit}}}}}
---
apiVersion: autoscaling.k8s.io/v1
kind: VerticalPodAutoscaler
metadata: {{name: {name}}}
spec:
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: {name}}}
  updatePolicy: {{updateMode: {mode}}}
  resourcePolicy:
    containerPolicies: [{{containerName: "*", controlledResources: [cpu]}}]
"#
    )
}

#[test]
fn a_vertical_autoscaler_raises_a_starved_pods_request_in_place_and_defers_to_an_hpa() {
    let (_cluster, cp, agent) = setup_both(&["--horizontal-pod-autoscaler-sync-period", "2s"], &[]);
    apply(&cp, &burner_with_vpa("starved", 1, ("20m", "200m"), "InPlaceOrRecreate"));
    let pod = || {
        let pods = get(&cp, &["pods", "-l", "app=starved"]).unwrap_or_default();
        pods["items"][0].clone()
    };
    let request = |p: &Value| {
        p["spec"]["containers"][0]["resources"]["requests"]["cpu"]
            .as_str()
            .and_then(|q| q.strip_suffix('m'))
            .and_then(|m| m.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        wait_for(Duration::from_secs(90), || request(&pod()) > 100),
        "not raised: {:#}\n{:#}\n{}",
        get(&cp, &["vpa", "starved"]).unwrap_or_default(),
        pod(),
        agent.log()
    );
    let vpa = get(&cp, &["vpa", "starved"]).unwrap();
    let rec = &vpa["status"]["recommendation"]["containerRecommendations"][0];
    assert_eq!(rec["containerName"], "burn", "{vpa:#}");
    assert!(rec["target"]["cpu"].is_string() && rec["target"].get("memory").is_none(), "cpu only: {vpa:#}");
    let table = text(&cp.tug(&["get", "vpa", "starved"])).0;
    assert!(
        table.starts_with("NAME      MODE                CPU")
            && table.contains("starved   InPlaceOrRecreate   "),
        "{table}"
    );
    // Applied in place: the node runs it with the new request, without a restart.
    let resized = |p: &Value| {
        let s = &p["status"]["containerStatuses"][0];
        s["resources"]["requests"]["cpu"] == p["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    };
    assert!(wait_for(Duration::from_secs(30), || resized(&pod())), "{:#}", pod());
    assert_eq!(pod()["status"]["containerStatuses"][0]["restartCount"], 0, "{:#}", pod());
    // An HPA on the same resource: the VPA stands down, and says why.
    let out = cp.tug(&["autoscale", "deploy/starved", "--max", "2", "--cpu-percent", "90"]);
    assert!(out.status.success(), "{out:?}");
    let refused = || {
        get(&cp, &["vpa", "starved"]).unwrap_or_default()["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "ConfigUnsupported" && c["reason"] == "ConflictsWithHPA")
    };
    assert!(
        wait_for(Duration::from_secs(30), refused),
        "{:#}",
        get(&cp, &["vpa", "starved"]).unwrap_or_default()
    );
}

#[test]
fn a_vertical_autoscaler_in_recreate_mode_replaces_pods_with_the_recommendation() {
    let (_cluster, cp, agent) = setup_both(&["--horizontal-pod-autoscaler-sync-period", "2s"], &[]);
    apply(&cp, &burner_with_vpa("hungry", 2, ("10m", "100m"), "Recreate"));
    // A replacement is admitted with the recommendation, and says so.
    let admitted = || {
        let pods = get(&cp, &["pods", "-l", "app=hungry"]).unwrap_or_default();
        pods["items"].as_array().cloned().unwrap_or_default().into_iter().find(|p| {
            p["metadata"]["annotations"]["vpaUpdates"]
                .as_str()
                .is_some_and(|a| a.starts_with("Pod resources updated by hungry: container 0: cpu request"))
        })
    };
    assert!(
        wait_for(Duration::from_secs(120), || admitted().is_some()),
        "{:#}\n{:#}\n{}",
        get(&cp, &["vpa", "hungry"]).unwrap_or_default(),
        get(&cp, &["pods", "-l", "app=hungry"]).unwrap_or_default(),
        agent.log()
    );
    let p = admitted().unwrap();
    let request =
        p["spec"]["containers"][0]["resources"]["requests"]["cpu"].as_str().unwrap_or_default().to_string();
    assert!(request.trim_end_matches('m').parse::<u64>().unwrap_or(0) > 50, "{p:#}");
    let events = text(&cp.tug(&["get", "events"])).0;
    assert!(events.contains("EvictedByVPA"), "{events}");
}

#[test]
fn a_vertical_autoscaler_recreates_a_pod_its_node_cannot_resize() {
    let (_cluster, cp, agent) = setup_both(&["--horizontal-pod-autoscaler-sync-period", "2s"], &[]);
    // A floor of 100 cores: no node can take it in place.
    let yaml = burner_with_vpa("huge", 2, ("10m", "100m"), "InPlaceOrRecreate")
        .replace("controlledResources: [cpu]}", "controlledResources: [cpu], minAllowed: {cpu: \"100\"}}");
    apply(&cp, &yaml);
    let events = || text(&cp.tug(&["get", "events"])).0;
    assert!(
        wait_for(Duration::from_secs(120), || events().contains("EvictedByVPA")),
        "{}\n{:#}\n{}",
        events(),
        get(&cp, &["pods", "-l", "app=huge"]).unwrap_or_default(),
        agent.log()
    );
    let infeasible = events();
    assert!(
        infeasible.contains("Pod was evicted by VPA Updater to apply resource recommendation."),
        "{infeasible}"
    );
    // Its replacement asks for the recommendation (and waits for a node that has it).
    let admitted = || {
        get(&cp, &["pods", "-l", "app=huge"]).unwrap_or_default()["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| {
                p["metadata"]["annotations"]["vpaUpdates"].is_string()
                    && p["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "100000m"
            })
    };
    assert!(
        wait_for(Duration::from_secs(30), admitted),
        "{:#}",
        get(&cp, &["pods", "-l", "app=huge"]).unwrap_or_default()
    );
}

/// Native sidecars and lifecycle hooks: a Job's sidecar starts before the next init
/// container, runs beside the app, is stopped after it (the Job completes); `postStart` runs
/// before the app goes on and a failing one restarts its container with a
/// `FailedPostStartHook` event; `preStop` runs before the stop signal when a pod is deleted.
#[test]
fn sidecars_run_beside_the_app_and_hooks_run_around_it() {
    let (_cluster, cp, agent) = setup();
    apply(
        &cp,
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: with-sidecar}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 5
      volumes: [{name: shared, emptyDir: {}}]
      initContainers:
      - name: log
        image: tug.local/busybox-httpd:1
        imagePullPolicy: Never
        restartPolicy: Always
        command: ["/bin/sh", "-c", "trap 'echo sidecar stopped; exit 0' TERM; echo up > /shared/sidecar; echo sidecar up; while true; do sleep 0.2; done"]
        volumeMounts: [{name: shared, mountPath: /shared}]
      - name: check
        image: tug.local/busybox-httpd:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "test -f /shared/sidecar"]
        volumeMounts: [{name: shared, mountPath: /shared}]
      containers:
      - name: app
        image: tug.local/busybox-httpd:1
        imagePullPolicy: Never
        # The hook runs beside the entrypoint (no order between them, as in Kubernetes).
        command: ["/bin/sh", "-c", "until test -s /shared/hook; do sleep 0.1; done; cat /shared/hook; echo app done"]
        lifecycle:
          postStart: {exec: {command: ["/bin/sh", "-c", "echo post-start ran > /shared/hook"]}}
        volumeMounts: [{name: shared, mountPath: /shared}]
"#,
    );
    let done = wait_for(Duration::from_secs(90), || {
        get(&cp, &["job", "with-sidecar"]).is_some_and(|j| j["status"]["succeeded"] == 1)
    });
    assert!(done, "{:?}\n{:?}\n{}", get(&cp, &["job", "with-sidecar"]), get(&cp, &["pods"]), agent.log());
    let pods = get(&cp, &["pods", "-l", "job-name=with-sidecar"]).unwrap();
    let pod = pods["items"][0].clone();
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(pod["status"]["phase"], "Succeeded", "{pod:#}");
    assert_eq!(text(&cp.tug(&["logs", &name, "-c", "app"])).0, "post-start ran\napp done\n");
    // The sidecar is stopped once the app is done (not before: the check found its file).
    let stopped = wait_for(Duration::from_secs(30), || {
        text(&cp.tug(&["logs", &name, "-c", "log"])).0 == "sidecar up\nsidecar stopped\n"
    });
    assert!(stopped, "{}", text(&cp.tug(&["logs", &name, "-c", "log"])).0);
    let side = get(&cp, &["pod", &name]).unwrap()["status"]["initContainerStatuses"][0].clone();
    assert_eq!((side["name"].as_str(), side["restartCount"].as_i64()), (Some("log"), Some(0)), "{side:#}");
    assert!(side["state"]["terminated"].is_object(), "{side:#}");

    // preStop before the stop signal; a failing postStart restarts its container.
    let out = tempfile::Builder::new().prefix("tug-hooks").tempdir().unwrap();
    apply(
        &cp,
        &format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{name: hooks, labels: {{pod-security.kubernetes.io/enforce: privileged}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: hooked, namespace: hooks}}
spec:
  terminationGracePeriodSeconds: 10
  volumes: [{{name: out, hostPath: {{path: "{dir}"}}}}]
  containers:
  - name: web
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "trap 'echo term >> /out/order; exit 0' TERM; while true; do sleep 0.2; done"]
    volumeMounts: [{{name: out, mountPath: /out}}]
    lifecycle:
      preStop: {{exec: {{command: ["/bin/sh", "-c", "echo pre-stop >> /out/order"]}}}}
  - name: bad
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "while true; do sleep 1; done"]
    lifecycle:
      postStart: {{exec: {{command: ["/bin/sh", "-c", "exit 3"]}}}}
"#,
            dir = out.path().display()
        ),
    );
    let restarted = wait_for(Duration::from_secs(60), || {
        get(&cp, &["pod", "hooked", "-n", "hooks"]).is_some_and(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"] == "bad" && c["restartCount"].as_i64().unwrap_or(0) >= 1)
        })
    });
    assert!(restarted, "{:?}\n{}", get(&cp, &["pod", "hooked", "-n", "hooks"]), agent.log());
    let events = text(&cp.tug(&["get", "events", "-n", "hooks", "--for", "pod/hooked"])).0;
    assert!(
        events.contains("FailedPostStartHook")
            && events
                .contains("Exec lifecycle hook ([\"/bin/sh\", \"-c\", \"exit 3\"]) for Container \"bad\""),
        "{events}"
    );
    assert!(cp.tug(&["delete", "pod", "hooked", "-n", "hooks"]).status.success());
    let gone = wait_for(Duration::from_secs(30), || get(&cp, &["pod", "hooked", "-n", "hooks"]).is_none());
    assert!(gone, "{}", agent.log());
    let order = std::fs::read_to_string(out.path().join("order")).unwrap_or_default();
    assert_eq!(order, "pre-stop\nterm\n");
}

/// Pod fields: `hostNetwork` runs the pod in the node's network (its address, its hostname;
/// a second pod wanting the same port does not fit), `schedulingGates` hold a pod back until
/// removed (and may not be added), `os: windows` never fits a Tug node.
#[test]
fn host_network_scheduling_gates_and_os() {
    let (cluster, cp, agent) = setup();
    let node_ip = cluster.nodes[0].ip.to_string();
    let pod = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: hostnet}}\nspec:\n{extra}  containers:\n  - name: c\n    image: tug.local/busybox-httpd:1\n    imagePullPolicy: Never\n    command: [/bin/sh, -c, 'exec httpd -f -p 18089 -h /www']\n"
        )
    };
    apply(
        &cp,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: hostnet, labels: {pod-security.kubernetes.io/enforce: privileged}}\n",
    );
    apply(
        &cp,
        &pod("host", "  hostNetwork: true\n")
            .replace("command:", "ports: [{containerPort: 18089}]\n    command:"),
    );
    let running = wait_for(Duration::from_secs(60), || {
        get(&cp, &["pod", "host", "-n", "hostnet"]).is_some_and(|p| p["status"]["phase"] == "Running")
    });
    assert!(running, "{:?}\n{}", get(&cp, &["pod", "host", "-n", "hostnet"]), agent.log());
    let p = get(&cp, &["pod", "host", "-n", "hostnet"]).unwrap();
    assert_eq!(p["status"]["podIP"], node_ip.as_str(), "{p:#}");
    assert_eq!(p["spec"]["containers"][0]["ports"][0]["hostPort"], 18089, "defaulted to the container port");
    let exec = |args: &[&str]| {
        let mut a = vec!["exec", "host", "-n", "hostnet", "--"];
        a.extend_from_slice(args);
        text(&cp.tug(&a)).0
    };
    let host = nix::unistd::gethostname().unwrap().to_string_lossy().into_owned();
    assert_eq!(exec(&["hostname"]), format!("{host}\n"), "the node's hostname");
    // Listening on the node's own address.
    let page = exec(&["wget", "-q", "-O", "-", &format!("http://{node_ip}:18089/")]);
    assert!(
        page.contains("Hello from Tug"),
        "{page} {:?} {:?}",
        cp.tug(&[
            "exec",
            "host",
            "-n",
            "hostnet",
            "--",
            "wget",
            "-O",
            "-",
            &format!("http://{node_ip}:18089/")
        ]),
        cp.tug(&["exec", "host", "-n", "hostnet", "--", "ls", "-la", "/www", "/"]),
    );
    // The same port again does not fit.
    apply(
        &cp,
        &pod("host2", "  hostNetwork: true\n")
            .replace("command:", "ports: [{containerPort: 18089}]\n    command:"),
    );
    wait_pod_in(&cp, "host2", "hostnet", "free ports");

    // Held back by a gate, then scheduled once it is removed; a gate may not be added.
    apply(&cp, &pod("gated", "  schedulingGates: [{name: example.com/wait}]\n"));
    let gated = wait_for(Duration::from_secs(20), || {
        text(&cp.tug(&["get", "pods", "-n", "hostnet"]))
            .0
            .lines()
            .any(|l| l.starts_with("gated") && l.contains("SchedulingGated"))
    });
    assert!(gated, "{}", text(&cp.tug(&["get", "pods", "-n", "hostnet"])).0);
    let add = cp.tug(&[
        "patch",
        "pod",
        "gated",
        "-n",
        "hostnet",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"schedulingGates":[{"name":"example.com/wait"},{"name":"x"}]}}"#,
    ]);
    assert!(
        text(&add).1.contains("only deletion is allowed, but found new scheduling gate 'x'"),
        "{}",
        text(&add).1
    );
    let open = cp.tug(&[
        "patch",
        "pod",
        "gated",
        "-n",
        "hostnet",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"schedulingGates":null}}"#,
    ]);
    assert!(open.status.success(), "{}", text(&open).1);
    let bound = wait_for(Duration::from_secs(30), || {
        get(&cp, &["pod", "gated", "-n", "hostnet"]).is_some_and(|p| p["spec"]["nodeName"] == "tug-it-node0")
    });
    assert!(bound, "{:?}", get(&cp, &["pod", "gated", "-n", "hostnet"]));

    // A Windows pod fits no Tug node.
    apply(&cp, &pod("win", "  os: {name: windows}\n"));
    wait_pod_in(&cp, "win", "hostnet", "node affinity/selector");

    // subPathExpr from the downward API, and HostToContainer propagation.
    apply(
        &cp,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: sub-expr, namespace: hostnet}
spec:
  restartPolicy: Never
  volumes: [{name: data, emptyDir: {}}]
  containers:
  - name: c
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
    command: ["/bin/sh", "-c", "echo mine > /mine/file && cat /all/sub-expr/file && grep -c ' /all ' /proc/self/mountinfo"]
    volumeMounts:
    - {name: data, mountPath: /mine, subPathExpr: $(POD_NAME)}
    - {name: data, mountPath: /all, mountPropagation: HostToContainer}
"#,
    );
    let done = wait_for(Duration::from_secs(60), || {
        get(&cp, &["pod", "sub-expr", "-n", "hostnet"]).is_some_and(|p| p["status"]["phase"] == "Succeeded")
    });
    assert!(done, "{:?}\n{}", get(&cp, &["pod", "sub-expr", "-n", "hostnet"]), agent.log());
    assert_eq!(text(&cp.tug(&["logs", "sub-expr", "-n", "hostnet"])).0, "mine\n1\n");

    // hostPID and hostIPC: the node's namespaces.
    apply(
        &cp,
        &pod("hostns", "  hostPID: true\n  hostIPC: true\n")
            .replace("command: [/bin/sh, -c, 'exec httpd -f -p 18089 -h /www']", "command: [sleep, '3600']"),
    );
    let up = wait_for(Duration::from_secs(60), || {
        get(&cp, &["pod", "hostns", "-n", "hostnet"]).is_some_and(|p| p["status"]["phase"] == "Running")
    });
    assert!(up, "{:?}\n{}", get(&cp, &["pod", "hostns", "-n", "hostnet"]), agent.log());
    let ns =
        |which: &str| std::fs::read_link(format!("/proc/self/ns/{which}")).unwrap().display().to_string();
    let out = cp.tug(&[
        "exec",
        "hostns",
        "-n",
        "hostnet",
        "--",
        "ls",
        "-l",
        "/proc/self/ns/pid",
        "/proc/self/ns/ipc",
    ]);
    let seen = text(&out).0;
    assert!(seen.contains(&ns("pid")) && seen.contains(&ns("ipc")), "{out:?}");

    // shareProcessNamespace: one PID namespace for both containers, PID 1 the pod's pause;
    // one container sees and signals the other's processes; the pause goes with the pod.
    apply(
        &cp,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: shared, namespace: hostnet}
spec:
  shareProcessNamespace: true
  terminationGracePeriodSeconds: 1
  containers:
  - {name: app, image: tug.local/busybox-httpd:1, imagePullPolicy: Never, command: [sleep, "3601"]}
  - {name: side, image: tug.local/busybox-httpd:1, imagePullPolicy: Never, command: [sleep, "3602"]}
"#,
    );
    let up = wait_for(Duration::from_secs(60), || {
        get(&cp, &["pod", "shared", "-n", "hostnet"]).is_some_and(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|s| s.len() == 2 && s.iter().all(|c| c["ready"] == true))
        })
    });
    assert!(up, "{:?}\n{}", get(&cp, &["pod", "shared", "-n", "hostnet"]), agent.log());
    let in_side = |args: &[&str]| {
        let mut a = vec!["exec", "shared", "-n", "hostnet", "-c", "side", "--"];
        a.extend_from_slice(args);
        text(&cp.tug(&a))
    };
    let ps = in_side(&["ps", "-o", "pid,args"]).0;
    assert!(ps.contains("sleep 3601") && ps.contains("sleep 3602"), "{ps}");
    let init = in_side(&["cat", "/proc/1/cmdline"]).0;
    assert!(
        init.starts_with("/") && init.contains("tug-supervisor\0pause\0"),
        "PID 1 is the pause: {init:?}"
    );
    let pauses = agent.pauses();
    assert_eq!(pauses.len(), 1, "one pause on the node");
    let pause_pid = pauses[0];
    // The app's sleep, killed from the sidecar, restarts.
    let pid = ps
        .lines()
        .find(|l| l.contains("sleep 3601"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    assert_eq!(in_side(&["kill", &pid]).1, "");
    let restarted = wait_for(Duration::from_secs(30), || {
        get(&cp, &["pod", "shared", "-n", "hostnet"]).is_some_and(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"] == "app" && c["restartCount"] == 1 && c["ready"] == true)
        })
    });
    assert!(restarted, "{:?}", get(&cp, &["pod", "shared", "-n", "hostnet"]));
    assert!(in_side(&["ps", "-o", "args"]).0.contains("sleep 3601"), "the new app is in the namespace");
    // Without sharing, a container sees only its own.
    let alone = text(&cp.tug(&["exec", "hostns", "-n", "hostnet", "--", "cat", "/proc/1/cmdline"])).0;
    assert!(!alone.contains("pause"), "{alone:?}");
    assert!(cp.tug(&["delete", "pod", "shared", "-n", "hostnet"]).status.success());
    let gone = wait_for(Duration::from_secs(30), || agent.pauses().is_empty());
    assert!(gone, "the pause {pause_pid} outlived its pod");
    // Sharing with the node's namespace is refused.
    let both = cp.tug_with_input(
        &["apply", "-f", "-"],
        &pod("both", "  hostPID: true\n  shareProcessNamespace: true\n"),
    );
    assert!(
        text(&both).1.contains("spec.securityContext.shareProcessNamespace: Invalid value: true: ShareProcessNamespace and HostPID cannot both be enabled"),
        "{}", text(&both).1
    );
}

/// Waits for a pod in `ns` to be unschedulable with `why` in its message.
fn wait_pod_in(cp: &ControlPlane, name: &str, ns: &str, why: &str) {
    let held = wait_for(Duration::from_secs(20), || {
        get(cp, &["pod", name, "-n", ns]).is_some_and(|p| {
            p["status"]["conditions"].as_array().into_iter().flatten().any(|c| {
                c["type"] == "PodScheduled" && c["message"].as_str().is_some_and(|m| m.contains(why))
            })
        })
    });
    assert!(held, "{name}: {:?}", get(cp, &["pod", name, "-n", ns]));
}
