//! The controllers end to end: Deployments rolling over real agents on the cluster in
//! namespaces (and back by themselves), pods moving off a dead node, Jobs and CronJobs, and
//! cascading deletion.

use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tug_integration::agent::Agent;
use tug_integration::cluster::Cluster;
use tug_integration::control_plane::ControlPlane;
use tug_integration::wait_for;

fn items(v: Option<Value>) -> Vec<Value> {
    v.and_then(|v| v["items"].as_array().cloned()).unwrap_or_default()
}

fn ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn logs(cp: &ControlPlane, agents: &[Agent]) -> String {
    let mut s = format!("scheduler log:\n{}\n", cp.log());
    for a in agents {
        s += &format!(
            "--- agent {}:\n{}\n",
            a.name,
            a.log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    s
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  progressDeadlineSeconds: 60
  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: IMAGE
        imagePullPolicy: Never
        env: [{name: VERSION, value: "VER"}]
        # Keep serving for two seconds after SIGTERM, as a preStop sleep would: a client that
        # picked this pod just before it was deleted still gets its answer.
        command: ["/bin/sh", "-c", "trap 'sleep 2; kill $P; exit 0' TERM; httpd -f -p 8080 -h /www & P=$!; wait $P"]
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
"#;

fn web(image: &str, version: &str) -> String {
    WEB.replace("IMAGE", image).replace("VER", version)
}

#[test]
fn a_deployment_rolls_over_three_nodes_rolls_back_by_itself_and_leaves_a_dead_node() {
    let cluster = Cluster::new(3).expect("cluster");
    let cp = ControlPlane::start_with(&[
        "--node-monitor-grace-period",
        "8s",
        "--default-unreachable-toleration-seconds",
        "6",
    ]);
    let agents: Vec<Agent> = (0..3)
        .map(|i| {
            let a = Agent::start(&cp, &cluster.nodes[i], &format!("tug-it-c{i}"), &[]);
            a.import_example_image();
            a.import_example_image_as(Some("tug.local/busybox-httpd:2"));
            a
        })
        .collect();
    let all_ready = wait_for(Duration::from_secs(40), || {
        items(cp.get_json(&["nodes"]))
            .iter()
            .filter(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count()
            == 3
    });
    assert!(all_ready, "nodes not ready\n{}", logs(&cp, &agents));

    // Three replicas, one per node.
    cp.apply(&web("tug.local/busybox-httpd:1", "1"));
    let out = cp.tug(&["rollout", "status", "deployment/web", "--timeout", "120s"]);
    assert!(
        out.status.success(),
        "first rollout: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        logs(&cp, &agents)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployment \"web\" successfully rolled out"));
    let pods = items(cp.get_json(&["pods", "-l", "app=web"]));
    let mut nodes: Vec<String> =
        pods.iter().map(|p| p["spec"]["nodeName"].as_str().unwrap_or("").to_string()).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "replicas spread over every node: {nodes:?}");

    // A client that keeps asking ready pods (picked from a fresh list each time) while the
    // Deployment rolls over: no request may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        let socket = cp.socket();
        let netns = cluster.nodes[0].netns.clone();
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new(tug_integration::bins::path("tug-cli", "tug"))
                    .env("TUG_SOCKET", &socket)
                    .args(["get", "pods", "-l", "app=web", "-o", "json"])
                    .output();
                let list: Vec<Value> = out
                    .ok()
                    .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
                    .map(|v| items(Some(v)))
                    .unwrap_or_default();
                let ips: Vec<String> = list
                    .iter()
                    .filter(|p| ready(p))
                    .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
                    .collect();
                if ips.is_empty() {
                    continue;
                }
                n += 1;
                let ip = &ips[n % ips.len()];
                sent.fetch_add(1, Ordering::Relaxed);
                let r = std::process::Command::new("ip")
                    .args(["netns", "exec", &netns, "curl", "-sf", "-m", "3", &format!("http://{ip}:8080/")])
                    .output();
                if !r.is_ok_and(|o| o.status.success()) {
                    failed.fetch_add(1, Ordering::Relaxed);
                    errors.push(ip.clone());
                }
            }
            errors
        })
    };
    cp.apply(&web("tug.local/busybox-httpd:2", "2"));
    let out = cp.tug(&["rollout", "status", "deployment/web", "--timeout", "180s"]);
    stop.store(true, Ordering::Relaxed);
    let errors = client.join().unwrap();
    assert!(
        out.status.success(),
        "rolling update: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        logs(&cp, &agents)
    );
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent >= 10, "the client sent only {sent} requests");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed during the rollout: {errors:?}");
    // The old pods leave once their nodes have stopped them (Terminating until then).
    assert!(wait_for(Duration::from_secs(20), || items(cp.get_json(&["pods", "-l", "app=web"])).len() == 3));
    let pods = items(cp.get_json(&["pods", "-l", "app=web"]));
    assert_eq!(pods.len(), 3);
    assert!(
        pods.iter().all(|p| p["spec"]["containers"][0]["image"] == "tug.local/busybox-httpd:2"),
        "{pods:#?}"
    );

    // A broken image: the Deployment goes back to revision 2 by itself.
    cp.apply(&web("tug.local/no-such-image:1", "3"));
    let out = cp.tug(&["rollout", "status", "deployment/web", "--timeout", "120s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a broken rollout must fail: {}", String::from_utf8_lossy(&out.stdout));
    assert!(
        stderr.contains("was rolled back") && stderr.contains("to revision 2"),
        "{stderr}\n{}",
        logs(&cp, &agents)
    );
    let back = wait_for(Duration::from_secs(60), || {
        cp.get_json(&["deployment", "web"]).is_some_and(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["image"] == "tug.local/busybox-httpd:2"
                && d["status"]["availableReplicas"] == 3
                && d["status"]["updatedReplicas"] == 3
                && d["status"]["replicas"] == 3
        })
    });
    assert!(
        back,
        "not back on revision 2: {:#}\n{}",
        cp.get_json(&["deployment", "web"]).unwrap_or_default(),
        logs(&cp, &agents)
    );
    let d = cp.get_json(&["deployment", "web"]).unwrap();
    let rb =
        d["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "RolledBack").cloned();
    assert!(rb.is_some_and(|c| c["message"].as_str().unwrap().contains("ErrImageNeverPull")), "{d:#}");
    let events = String::from_utf8_lossy(&cp.tug(&["get", "events"]).stdout).into_owned();
    assert!(events.contains("RolledBack"), "{events}");
    let history =
        String::from_utf8_lossy(&cp.tug(&["rollout", "history", "deployment/web"]).stdout).into_owned();
    assert!(
        history.contains("REVISION") && history.contains("\n3 ") && history.contains("\n4 "),
        "{history}"
    );

    // One node's agent dies: its pods come back on the others within grace + toleration.
    let victim = 2;
    let victim_name = format!("tug-it-c{victim}");
    let on_victim =
        |pods: &[Value]| pods.iter().filter(|p| p["spec"]["nodeName"] == victim_name.as_str()).count();
    assert!(on_victim(&items(cp.get_json(&["pods", "-l", "app=web"]))) > 0);
    let mut agents = agents;
    let t0 = Instant::now();
    agents[victim].kill9();
    // The bound: grace + toleration, and room for a loaded machine to reschedule and start.
    // The evicted pods are Terminating at once and their replacements made; no agent will
    // confirm their end, so they leave the API once their grace period (5 s) is over.
    let live = || -> Vec<Value> {
        items(cp.get_json(&["pods", "-l", "app=web"]))
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect()
    };
    let moved = wait_for(Duration::from_secs(8 + 6 + 30), || {
        let pods = live();
        pods.len() == 3 && on_victim(&pods) == 0 && pods.iter().all(ready)
    });
    let took = t0.elapsed();
    assert!(moved, "pods did not leave the dead node in {took:?}\n{}", logs(&cp, &agents));
    eprintln!("pods moved off a dead node in {took:?} (grace 8 s + toleration 6 s)");
    assert!(
        wait_for(Duration::from_secs(30), || on_victim(&items(cp.get_json(&["pods", "-l", "app=web"]))) == 0),
        "the dead node's Terminating pods were not removed after their grace period\n{}",
        logs(&cp, &agents)
    );
    let node = cp.get_json(&["node", &victim_name]).unwrap();
    let taints = node["spec"]["taints"].to_string();
    assert!(taints.contains("node.kubernetes.io/unreachable"), "{node:#}");
    let events = String::from_utf8_lossy(&cp.tug(&["get", "events"]).stdout).into_owned();
    assert!(events.contains("TaintManagerEviction") && events.contains("NodeNotReady"), "{events}");
}

#[test]
fn a_job_runs_to_completion_and_a_cronjob_fires() {
    let cluster = Cluster::new(1).expect("cluster");
    let cp = ControlPlane::start();
    let agent = Agent::start(&cp, &cluster.nodes[0], "tug-it-batch0", &[]);
    agent.import_example_image();
    cp.apply(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: count}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: c, image: tug.local/busybox-httpd:1, imagePullPolicy: Never, command: ["/bin/sh", "-c", "echo counted"]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: doomed}
spec:
  backoffLimit: 0
  podFailurePolicy:
    rules: [{action: FailJob, onExitCodes: {operator: In, values: [42]}}]
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: c, image: tug.local/busybox-httpd:1, imagePullPolicy: Never, command: ["/bin/sh", "-c", "exit 42"]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  timeZone: Europe/Berlin
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - {name: c, image: tug.local/busybox-httpd:1, imagePullPolicy: Never, command: ["/bin/sh", "-c", "date"]}
"#,
    );
    let cond = |j: &Value, t: &str| {
        j["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == t && c["status"] == "True")
    };
    let done = wait_for(Duration::from_secs(90), || {
        cp.get_json(&["job", "count"]).is_some_and(|j| cond(&j, "Complete"))
    });
    let job = cp.get_json(&["job", "count"]).unwrap_or_default();
    assert!(done, "job: {job:#}\n{}", logs(&cp, std::slice::from_ref(&agent)));
    assert_eq!(job["status"]["succeeded"], 3);
    assert!(job["status"]["completionTime"].is_string());
    let pods = items(cp.get_json(&["pods", "-l", "job-name=count"]));
    assert_eq!(pods.iter().filter(|p| p["status"]["phase"] == "Succeeded").count(), 3, "{pods:#?}");

    let failed = wait_for(Duration::from_secs(60), || {
        cp.get_json(&["job", "doomed"]).is_some_and(|j| cond(&j, "Failed"))
    });
    let doomed = cp.get_json(&["job", "doomed"]).unwrap_or_default();
    assert!(failed, "{doomed:#}");
    let c = doomed["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap()
        .clone();
    assert_eq!(c["reason"], "PodFailurePolicy", "{c:#}");

    // The CronJob's first minute comes within 60 s; its Job runs to completion.
    let fired = wait_for(Duration::from_secs(130), || {
        items(cp.get_json(&["jobs"])).iter().any(|j| {
            j["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("tick-")) && cond(j, "Complete")
        })
    });
    assert!(
        fired,
        "jobs: {:#}\n{}",
        cp.get_json(&["jobs"]).unwrap_or_default(),
        logs(&cp, std::slice::from_ref(&agent))
    );
    let cj = cp.get_json(&["cronjob", "tick"]).unwrap();
    assert!(cj["status"]["lastScheduleTime"].is_string(), "{cj:#}");
    let events = String::from_utf8_lossy(&cp.tug(&["get", "events"]).stdout).into_owned();
    assert!(events.contains("Created job tick-"), "{events}");
}

#[test]
fn deleting_owners_cascades_in_background_foreground_or_not_at_all() {
    let cp = ControlPlane::start();
    let dep = |name: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: c, image: busybox}}]}}\n"
        )
    };
    let count = |kind: &str, sel: &str| items(cp.get_json(&[kind, "-l", sel])).len();
    for name in ["bg", "fg", "keep"] {
        cp.apply(&dep(name));
        assert!(
            wait_for(Duration::from_secs(10), || count("pods", &format!("app={name}")) == 2),
            "{}",
            cp.log()
        );
        assert_eq!(count("replicasets", &format!("app={name}")), 1);
    }
    // Background: the Deployment goes at once, its ReplicaSet and pods after it.
    assert!(cp.tug(&["delete", "deployment", "bg"]).status.success());
    assert!(wait_for(Duration::from_secs(10), || count("replicasets", "app=bg") == 0
        && count("pods", "app=bg") == 0));
    // Foreground: the Deployment stays (marked) until its dependents are gone.
    assert!(cp.tug(&["delete", "deployment", "fg", "--cascade=foreground"]).status.success());
    assert!(
        wait_for(Duration::from_secs(10), || cp.get_json(&["deployment", "fg"]).is_none()),
        "{}",
        cp.log()
    );
    assert_eq!(count("replicasets", "app=fg") + count("pods", "app=fg"), 0);
    // Orphan: the ReplicaSet and pods stay, without their owner.
    assert!(cp.tug(&["delete", "deployment", "keep", "--cascade=orphan"]).status.success());
    // The collector drops the references before it deletes the owner.
    assert!(wait_for(Duration::from_secs(10), || cp.get_json(&["deployment", "keep"]).is_none()));
    let rs = items(cp.get_json(&["replicasets", "-l", "app=keep"]));
    assert_eq!(rs.len(), 1);
    assert!(rs[0]["metadata"]["ownerReferences"].is_null(), "{:#}", rs[0]);
    assert_eq!(count("pods", "app=keep"), 2);
    // The orphaned ReplicaSet still keeps its pods: scale it.
    assert!(
        cp.tug(&[
            "scale",
            &format!("replicaset/{}", rs[0]["metadata"]["name"].as_str().unwrap()),
            "--replicas",
            "3"
        ])
        .status
        .success()
    );
    assert!(wait_for(Duration::from_secs(10), || count("pods", "app=keep") == 3));
    // Namespaces take everything with them.
    assert!(cp.tug(&["create", "namespace", "tug-gone"]).status.success());
    let out = cp.tug_with_input(&["apply", "-n", "tug-gone", "-f", "-"], &dep("inner"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_for(Duration::from_secs(10), || items(cp.get_json(&["pods", "-n", "tug-gone"])).len() == 2));
    assert!(cp.tug(&["delete", "namespace", "tug-gone"]).status.success());
    for kind in ["pods", "replicasets", "deployments"] {
        assert!(
            wait_for(Duration::from_secs(10), || items(cp.get_json(&[kind, "-n", "tug-gone"])).is_empty()),
            "{kind} left in a deleted namespace"
        );
    }
}

#[test]
fn rollout_pause_resume_undo_restart_and_scale_from_the_cli() {
    let cp = ControlPlane::start();
    let dep = |image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: c, image: {image}}}]}}\n"
        )
    };
    let rs_count = || items(cp.get_json(&["replicasets", "-l", "app=web"])).len();
    let ok = |args: &[&str]| {
        let out = cp.tug(args);
        assert!(out.status.success(), "tug {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let image = || {
        cp.get_json(&["deployment", "web"]).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"]
            .clone()
    };
    cp.apply(&dep("web:1"));
    assert!(wait_for(Duration::from_secs(10), || rs_count() == 1));
    // Paused: a new template makes no ReplicaSet; resumed, it does.
    assert_eq!(ok(&["rollout", "pause", "deployment/web"]), "deployment.apps/web paused");
    let again = cp.tug(&["rollout", "pause", "deployment/web"]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("is already paused"));
    cp.apply(&dep("web:2").replace("  replicas: 2\n", "  replicas: 2\n  paused: true\n"));
    let observed = wait_for(Duration::from_secs(10), || {
        cp.get_json(&["deployment", "web"])
            .is_some_and(|d| d["status"]["observedGeneration"] == d["metadata"]["generation"])
    });
    assert!(observed, "the controller never saw the paused template");
    assert_eq!(rs_count(), 1, "no rollout while paused");
    assert_eq!(ok(&["rollout", "resume", "deployment/web"]), "deployment.apps/web resumed");
    assert!(wait_for(Duration::from_secs(10), || rs_count() == 2), "{}", cp.log());
    // The Deployment's own revision follows its new ReplicaSet's a moment later; undo reads
    // it (as kubectl's does) to tell the current revision from the previous one.
    assert!(wait_for(Duration::from_secs(10), || {
        cp.get_json(&["deployment", "web"])
            .is_some_and(|d| d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2")
    }));
    let history = ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("REVISION  CHANGE-CAUSE")
            && history.contains("1         <none>")
            && history.contains("2         <none>"),
        "{history}"
    );
    let rev1 = ok(&["rollout", "history", "deployment/web", "--revision", "1"]);
    assert!(rev1.contains("with revision #1") && rev1.contains("image: web:1"), "{rev1}");
    // Undo goes back to revision 1 (which becomes revision 3); a missing revision is an error.
    assert_eq!(ok(&["rollout", "undo", "deployment/web"]), "deployment.apps/web rolled back");
    assert_eq!(image(), "web:1");
    let missing = cp.tug(&["rollout", "undo", "deployment/web", "--to-revision", "99"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("unable to find specified revision 99"));
    assert!(wait_for(Duration::from_secs(10), || {
        cp.get_json(&["deployment", "web"])
            .is_some_and(|d| d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3")
    }));
    assert_eq!(
        ok(&["rollout", "undo", "deployment/web", "--to-revision", "2"]),
        "deployment.apps/web rolled back"
    );
    assert_eq!(image(), "web:2");
    // Restart: a new template annotation, so a new ReplicaSet.
    assert_eq!(ok(&["rollout", "restart", "deployment/web"]), "deployment.apps/web restarted");
    assert!(wait_for(Duration::from_secs(10), || rs_count() == 3), "{}", cp.log());
    assert_eq!(ok(&["scale", "deployment/web", "--replicas", "5"]), "deployment.apps/web scaled");
    assert_eq!(cp.get_json(&["deployment", "web"]).unwrap()["spec"]["replicas"], 5);
    let bad = cp.tug(&["scale", "deployment/nope", "--replicas", "1"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not found"));
    // `rollout status --watch=false` reports where the rollout is and returns.
    let st = cp.tug(&["rollout", "status", "deployment/web", "--watch=false"]);
    assert!(
        String::from_utf8_lossy(&st.stdout).starts_with("Waiting for deployment"),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
}

const DAEMON: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent}
spec:
  selector: {matchLabels: {app: node-agent}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}
  template:
    metadata: {labels: {app: node-agent}}
    spec:
      terminationGracePeriodSeconds: 1
      TOLERATIONS
      containers:
      - name: web
        image: IMAGE
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "exec httpd -f -p 8080 -h /www"]
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
"#;

fn daemon(image: &str, tolerate: bool) -> String {
    let t =
        if tolerate { "tolerations: [{key: dedicated, operator: Exists, effect: NoSchedule}]" } else { "" };
    DAEMON.replace("IMAGE", image).replace("TOLERATIONS", t)
}

/// `node → images` of the DaemonSet's live pods.
fn daemon_pods(cp: &ControlPlane) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for p in items(cp.get_json(&["pods", "-l", "app=node-agent"])) {
        if p["metadata"]["deletionTimestamp"].is_null() {
            let node = p["spec"]["nodeName"].as_str().unwrap_or("-").to_string();
            m.entry(node)
                .or_default()
                .push(p["spec"]["containers"][0]["image"].as_str().unwrap_or("").into());
        }
    }
    m
}

/// A DaemonSet: one pod per eligible node (a cordoned node included, a tainted one only
/// once tolerated), a node that registers later gets its pod, a new template rolls node by
/// node, history and undo go through ControllerRevisions, and deleting it takes its pods.
#[test]
fn a_daemonset_runs_on_every_eligible_node_follows_new_nodes_and_rolls() {
    let cluster = Cluster::new(3).expect("cluster");
    let cp = ControlPlane::start();
    let start = |i: usize| {
        let a = Agent::start(&cp, &cluster.nodes[i], &format!("tug-it-ds{i}"), &[]);
        a.import_example_image();
        a.import_example_image_as(Some("tug.local/busybox-httpd:2"));
        a
    };
    let agents = std::cell::RefCell::new((0..2).map(start).collect::<Vec<Agent>>());
    let all_logs = || logs(&cp, &agents.borrow());
    let registered = wait_for(Duration::from_secs(40), || items(cp.get_json(&["nodes"])).len() == 2);
    assert!(registered, "{}", all_logs());
    let ok = |args: &[&str]| {
        let out = cp.tug(args);
        assert!(
            out.status.success(),
            "tug {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            all_logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&["taint", "nodes", "tug-it-ds1", "dedicated=infra:NoSchedule"]);
    ok(&["cordon", "tug-it-ds0"]);

    cp.apply(&daemon("tug.local/busybox-httpd:1", false));
    let out = ok(&["rollout", "status", "daemonset/node-agent", "--timeout", "90s"]);
    assert!(out.ends_with("daemon set \"node-agent\" successfully rolled out\n"), "{out}");
    let pods = daemon_pods(&cp);
    assert_eq!(
        pods.keys().collect::<Vec<_>>(),
        ["tug-it-ds0"],
        "cordoned runs it, tainted does not: {pods:?}"
    );
    let table = ok(&["get", "ds"]);
    assert!(
        table.starts_with("NAME         DESIRED   CURRENT   READY   UP-TO-DATE   AVAILABLE   NODE SELECTOR   AGE\nnode-agent   1         1         1       1            1           <none>"),
        "{table}"
    );

    // Tolerated: the tainted node gets one too (the template changed: node 0's pod is new).
    cp.apply(&daemon("tug.local/busybox-httpd:1", true));
    ok(&["rollout", "status", "ds/node-agent", "--timeout", "90s"]);
    assert_eq!(daemon_pods(&cp).len(), 2, "{:?}", daemon_pods(&cp));

    // A node registering later gets its pod.
    agents.borrow_mut().push(start(2));
    let third = wait_for(Duration::from_secs(60), || {
        let pods = items(cp.get_json(&["pods", "-l", "app=node-agent"]));
        pods.len() == 3 && pods.iter().all(ready)
    });
    assert!(third, "{:?}\n{}", daemon_pods(&cp), all_logs());

    // A new image rolls node by node.
    cp.apply(&daemon("tug.local/busybox-httpd:2", true));
    ok(&["rollout", "status", "ds/node-agent", "--timeout", "120s"]);
    let pods = daemon_pods(&cp);
    assert_eq!(pods.len(), 3, "{pods:?}");
    assert!(pods.values().all(|i| i == &["tug.local/busybox-httpd:2"]), "{pods:?}");
    let history = ok(&["rollout", "history", "daemonset/node-agent"]);
    assert!(history.starts_with("daemonset.apps/node-agent \nREVISION  CHANGE-CAUSE\n1 "), "{history}");
    assert!(history.contains("\n3 "), "{history}");
    let revs = ok(&["get", "controllerrevisions"]);
    assert!(revs.contains("daemonset.apps/node-agent   3"), "{revs}");
    // Back to revision 2's template (image 1, tolerated).
    let undo = ok(&["rollout", "undo", "daemonset/node-agent"]);
    assert_eq!(undo, "daemonset.apps/node-agent rolled back\n");
    ok(&["rollout", "status", "ds/node-agent", "--timeout", "120s"]);
    let back = wait_for(Duration::from_secs(30), || {
        let pods = daemon_pods(&cp);
        pods.len() == 3 && pods.values().all(|i| i == &["tug.local/busybox-httpd:1"])
    });
    assert!(back, "{:?}", daemon_pods(&cp));
    let paused = cp.tug(&["rollout", "pause", "ds/node-agent"]);
    assert!(String::from_utf8_lossy(&paused.stderr).contains("pausing is not supported"));

    ok(&["delete", "daemonset", "node-agent"]);
    let gone = wait_for(Duration::from_secs(60), || daemon_pods(&cp).is_empty());
    assert!(gone, "{:?}", daemon_pods(&cp));
}

const STATEFUL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: nginx}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: nginx
  replicas: 3
  updateStrategy: {type: RollingUpdate, rollingUpdate: {partition: PARTITION}}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: IMAGE
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "hostname >> /data/names; exec httpd -f -p 8080 -h /www"]
        volumeMounts: [{name: www, mountPath: /data}]
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
  volumeClaimTemplates:
  - metadata: {name: www}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 100Mi}}
"#;

fn stateful(image: &str, partition: u32) -> String {
    STATEFUL.replace("IMAGE", image).replace("PARTITION", &partition.to_string())
}

/// `name → (image, uid)` of the StatefulSet's live pods.
fn stateful_pods(cp: &ControlPlane) -> std::collections::BTreeMap<String, (String, String)> {
    items(cp.get_json(&["pods", "-l", "app=web"]))
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (s(&p["metadata"]["name"]), (s(&p["spec"]["containers"][0]["image"]), s(&p["metadata"]["uid"])))
        })
        .collect()
}

/// A StatefulSet: pods made one at a time in order with stable names, each with its own
/// claim bound to a local volume whose data outlives the pod, stable DNS through the
/// headless Service, a partitioned rolling update from the top, history and undo, scaling
/// down from the top with `whenScaled: Delete` taking the claims, and claims retained when
/// the set is deleted.
#[test]
fn a_statefulset_makes_ordered_pods_with_stable_names_storage_and_dns() {
    let cluster = Cluster::new(1).expect("cluster");
    let cp = ControlPlane::start();
    let agent = Agent::start(&cp, &cluster.nodes[0], "tug-it-sts0", &[]);
    agent.import_example_image();
    agent.import_example_image_as(Some("tug.local/busybox-httpd:2"));
    let all_logs = || logs(&cp, std::slice::from_ref(&agent));
    let ok = |args: &[&str]| {
        let out = cp.tug(args);
        assert!(
            out.status.success(),
            "tug {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            all_logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dirs: Vec<tempfile::TempDir> =
        (0..3).map(|_| tempfile::Builder::new().prefix("tug-pv").tempdir().unwrap()).collect();
    for (i, d) in dirs.iter().enumerate() {
        cp.apply(&format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: tug-it-sts-{i}}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  local: {{path: \"{}\"}}\n  nodeAffinity: {{required: {{nodeSelectorTerms: [{{matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [tug-it-sts0]}}]}}]}}}}\n",
            d.path().display()
        ));
    }
    cp.apply(&stateful("tug.local/busybox-httpd:1", 0));
    let out = ok(&["rollout", "status", "statefulset/web", "--timeout", "120s"]);
    assert!(out.ends_with("partitioned roll out complete: 3 new pods have been updated...\n"), "{out}");
    let table = ok(&["get", "sts"]);
    assert!(table.starts_with("NAME   READY   AGE\nweb    3/3   "), "{table}");
    // In order: each pod was made once the one before it was ready.
    let pods = items(cp.get_json(&["pods", "-l", "app=web"]));
    let by_name = |n: &str| pods.iter().find(|p| p["metadata"]["name"] == n).cloned().unwrap_or(Value::Null);
    for i in 1..3 {
        let made =
            by_name(&format!("web-{i}"))["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string();
        let before = by_name(&format!("web-{}", i - 1));
        let ready_at = before["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or("")
            .to_string();
        assert!(
            !made.is_empty() && made >= ready_at,
            "web-{i} made at {made}, web-{} ready at {ready_at}",
            i - 1
        );
    }
    // One claim per ordinal, each bound to its own volume.
    for i in 0..3 {
        let pvc = cp.get_json(&["pvc", &format!("www-web-{i}")]).unwrap_or(Value::Null);
        assert_eq!(pvc["status"]["phase"], "Bound", "{pvc:#}");
    }
    // Stable names: the hostname, /etc/hosts and DNS through the headless Service.
    let exec = |pod: &str, cmd: &str| ok(&["exec", pod, "--", "sh", "-c", cmd]);
    assert_eq!(exec("web-0", "hostname"), "web-0\n");
    assert!(exec("web-0", "cat /etc/hosts").contains("\tweb-0.nginx.default.svc.cluster.local\tweb-0\n"));
    let ip1 = by_name("web-1")["status"]["podIP"].as_str().unwrap_or("?").to_string();
    let found = exec("web-0", "nslookup web-1.nginx.default.svc.cluster.local");
    assert!(found.contains(&ip1), "web-1 is {ip1}: {found}");

    // A pod deleted comes back under its name with its data.
    let before = stateful_pods(&cp);
    ok(&["delete", "pod", "web-1"]);
    let back = wait_for(Duration::from_secs(60), || {
        let now = stateful_pods(&cp);
        now.get("web-1").is_some_and(|(_, uid)| *uid != before["web-1"].1)
            && items(cp.get_json(&["pods", "-l", "app=web"])).iter().filter(|p| ready(p)).count() == 3
    });
    assert!(back, "{:?}\n{}", stateful_pods(&cp), all_logs());
    assert_eq!(exec("web-1", "cat /data/names"), "web-1\nweb-1\n", "the claim followed the ordinal");

    // A partitioned update: only ordinals at or above the partition move.
    cp.apply(&stateful("tug.local/busybox-httpd:2", 2));
    let out = ok(&["rollout", "status", "sts/web", "--timeout", "120s"]);
    assert!(out.ends_with("partitioned roll out complete: 1 new pods have been updated...\n"), "{out}");
    let images: Vec<String> = stateful_pods(&cp).values().map(|(i, _)| i.clone()).collect();
    assert_eq!(
        images,
        ["tug.local/busybox-httpd:1", "tug.local/busybox-httpd:1", "tug.local/busybox-httpd:2"]
    );
    cp.apply(&stateful("tug.local/busybox-httpd:2", 0));
    ok(&["rollout", "status", "sts/web", "--timeout", "120s"]);
    let sts = cp.get_json(&["sts", "web"]).unwrap();
    assert_eq!(sts["status"]["currentRevision"], sts["status"]["updateRevision"], "{sts:#}");
    assert!(stateful_pods(&cp).values().all(|(i, _)| i == "tug.local/busybox-httpd:2"));
    let history = ok(&["rollout", "history", "statefulset/web"]);
    assert!(history.starts_with("statefulset.apps/web \nREVISION  CHANGE-CAUSE\n1 "), "{history}");
    assert_eq!(ok(&["rollout", "undo", "sts/web"]), "statefulset.apps/web rolled back\n");
    ok(&["rollout", "status", "sts/web", "--timeout", "120s"]);
    let undone = wait_for(Duration::from_secs(30), || {
        let pods = stateful_pods(&cp);
        pods.len() == 3 && pods.values().all(|(i, _)| i == "tug.local/busybox-httpd:1")
    });
    assert!(undone, "{:?}", stateful_pods(&cp));

    // Scaled down from the top; whenScaled: Delete takes the claims of the ordinals that go.
    let retention = r#"{"spec":{"persistentVolumeClaimRetentionPolicy":{"whenScaled":"Delete"}}}"#;
    ok(&["patch", "sts", "web", "--type", "merge", "-p", retention]);
    assert_eq!(ok(&["scale", "sts/web", "--replicas", "1"]), "statefulset.apps/web scaled\n");
    let scaled = wait_for(Duration::from_secs(60), || {
        stateful_pods(&cp).keys().collect::<Vec<_>>() == ["web-0"]
            && cp.get_json(&["pvc", "www-web-2"]).is_none()
            && cp.get_json(&["pvc", "www-web-1"]).is_none()
    });
    assert!(scaled, "{:?} {:?}\n{}", stateful_pods(&cp), cp.get_json(&["pvc"]), all_logs());

    // Deleted: the pods go, the claim stays (whenDeleted: Retain) with its data.
    ok(&["delete", "sts", "web"]);
    let gone = wait_for(Duration::from_secs(60), || stateful_pods(&cp).is_empty());
    assert!(gone, "{:?}", stateful_pods(&cp));
    assert!(cp.get_json(&["pvc", "www-web-0"]).is_some());

    // A generic ephemeral volume: the pod's own claim, bound, used, and gone with the pod.
    let scratch = tempfile::Builder::new().prefix("tug-pv").tempdir().unwrap();
    cp.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: tug-it-sts-eph}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  local: {{path: \"{}\"}}\n  nodeAffinity: {{required: {{nodeSelectorTerms: [{{matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [tug-it-sts0]}}]}}]}}}}\n",
        scratch.path().display()
    ));
    cp.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: eph}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: tug.local/busybox-httpd:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo kept for the pod > /scratch/file"]
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes:
  - name: scratch
    ephemeral:
      volumeClaimTemplate:
        spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 100Mi}}}
"#,
    );
    let ran = wait_for(Duration::from_secs(60), || {
        cp.get_json(&["pod", "eph"]).is_some_and(|p| p["status"]["phase"] == "Succeeded")
    });
    assert!(
        ran,
        "{:?} {:?}\n{}",
        cp.get_json(&["pod", "eph"]),
        cp.get_json(&["pvc", "eph-scratch"]),
        all_logs()
    );
    let claim = cp.get_json(&["pvc", "eph-scratch"]).unwrap();
    assert_eq!(claim["metadata"]["ownerReferences"][0]["kind"], "Pod");
    assert_eq!(claim["spec"]["volumeName"], "tug-it-sts-eph");
    assert_eq!(std::fs::read_to_string(scratch.path().join("file")).unwrap(), "kept for the pod\n");
    ok(&["delete", "pod", "eph"]);
    let claim_gone = wait_for(Duration::from_secs(60), || cp.get_json(&["pvc", "eph-scratch"]).is_none());
    assert!(claim_gone, "{:?}", cp.get_json(&["pvc", "eph-scratch"]));
}
