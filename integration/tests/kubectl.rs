//! The stock kubectl (`/usr/bin/kubectl`, 1.32) against a Tug cluster over TLS, unchanged: a
//! control plane with its TLS listener, one node in namespaces with a real agent, and a
//! kubeconfig from `tug config kubeconfig`. Each step runs kubectl as a user would and checks
//! what it printed. Skipped, saying so, only when the machine has no kubectl.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tug_integration::agent::Agent;
use tug_integration::cluster::Cluster;
use tug_integration::control_plane::ControlPlane;
use tug_integration::wait_for;

const KUBECTL: &str = "/usr/bin/kubectl";
const NS: &str = "tug-kc";
const NODE: &str = "tug-kc-node0";

struct Kubectl {
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KUBECTL);
        c.env("KUBECONFIG", &self.config)
            .env("HOME", self._dir.path())
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run_with(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("run kubectl");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin.as_bytes());
        }
        child.wait_with_output().expect("kubectl output")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, "", &[])
    }

    /// kubectl's stdout; panics with everything it printed when it fails.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, "", &[])
    }

    fn ok_with(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> String {
        let out = self.run_with(args, stdin, env);
        assert!(out.status.success(), "kubectl {}: {}", args.join(" "), text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl -o json")
    }
}

/// A child's output lines as they come, read on a thread of their own.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let (lines, seen) = std::sync::mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    seen
}

/// `GET /` on a local port: the whole answer, headers and body.
fn http_get(port: u16) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn has(out: &str, want: &str) {
    assert!(out.contains(want), "expected {want:?} in:\n{out}");
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: tug-kc}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: tug.local/busybox-httpd:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "echo started $(hostname); exec httpd -f -p 8080 -h /www"]
        ports: [{containerPort: 8080}]
"#;

const SETTINGS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: tug-kc, labels: {tier: a}}
data: {mode: fast}
"#;

fn setup() -> Option<(Cluster, ControlPlane, Agent, Kubectl)> {
    if !Path::new(KUBECTL).exists() {
        eprintln!("SKIPPED: {KUBECTL} is not on this machine (these tests drive the stock kubectl)");
        return None;
    }
    let cluster = Cluster::new(1).expect("cluster");
    let port = tug_integration::images::free_port();
    let url = format!("https://127.0.0.1:{port}");
    let cp = ControlPlane::start_with(&["--listen", &format!("127.0.0.1:{port}")]);
    let agent = Agent::start(&cp, &cluster.nodes[0], NODE, &[]);
    agent.import_example_image();
    agent.import_example_image_as(Some("tug.local/busybox-httpd:2"));
    let dir = tempfile::Builder::new().prefix("tug-kubectl-").tempdir().expect("dir");
    let out = cp.tug(&["config", "kubeconfig", "--cluster-url", &url]);
    assert!(out.status.success(), "tug config kubeconfig: {}", text(&out));
    let config = dir.path().join("config");
    std::fs::write(&config, &out.stdout).expect("write the kubeconfig");
    let k = Kubectl { config, _dir: dir };
    let ready = wait_for(Duration::from_secs(30), || {
        k.run(&["get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"])
            .stdout
            .starts_with(b"True")
    });
    assert!(ready, "the node did not become Ready:\n{}", agent.log());
    Some((cluster, cp, agent, k))
}

/// The Deployment's running pods that are not on their way out, once there are `n`.
fn web_pods(k: &Kubectl, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    let settled = wait_for(Duration::from_secs(60), || {
        let list =
            k.json(&["-n", NS, "get", "pods", "-l", "app=web", "--field-selector=status.phase=Running"]);
        names = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        names.len() == n
    });
    assert!(settled, "expected {n} running web pods, have {names:?}");
    names
}

#[test]
fn kubectl_drives_a_tug_cluster() {
    let Some((_cluster, control, agent, k)) = setup() else { return };

    // Discovery, version, OpenAPI.
    has(&k.ok(&["version"]), "Server Version: v1.32.0-tug.");
    let resources = k.ok(&["api-resources"]);
    for line in ["deployments", "deploy", "apps/v1", "Deployment"] {
        has(&resources, line);
    }
    has(
        &k.ok(&["api-resources", "--namespaced=false", "-o", "name"]),
        "clusterroles.rbac.authorization.k8s.io",
    );
    has(&k.ok(&["explain", "deployment.spec.strategy"]), "KIND:       Deployment");
    has(&k.ok(&["auth", "whoami"]), "system:admin");
    assert_eq!(k.ok(&["auth", "can-i", "create", "deployments"]).trim(), "yes");

    // The typed clients' protobuf bodies: create namespace, configmap, secret, deployment.
    has(&k.ok(&["create", "namespace", NS]), "namespace/tug-kc created");
    has(&k.ok(&["-n", NS, "create", "configmap", "plain", "--from-literal=a=b"]), "configmap/plain created");
    has(&k.ok(&["-n", NS, "create", "secret", "generic", "pw", "--from-literal=p=q"]), "secret/pw created");
    assert_eq!(k.ok(&["-n", NS, "get", "secret", "pw", "-o", "jsonpath={.data.p}"]), "cQ==");
    has(
        &k.ok(&[
            "-n",
            NS,
            "create",
            "deployment",
            "made",
            "--image=tug.local/busybox-httpd:1",
            "--replicas=0",
        ]),
        "created",
    );
    assert_eq!(k.ok(&["-n", NS, "get", "deploy", "made", "-o", "jsonpath={.spec.replicas}"]), "0");
    // HorizontalPodAutoscalers in both versions: v1 is served by conversion from the v2 stored.
    let v1 = "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: old}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: made}\n  minReplicas: 1\n  maxReplicas: 4\n  targetCPUUtilizationPercentage: 70\n";
    has(
        &k.ok_with(&["-n", NS, "apply", "-f", "-"], v1, &[]),
        "horizontalpodautoscaler.autoscaling/old created",
    );
    let as_v2 = k.json(&["-n", NS, "get", "hpa", "old", "-o", "json"]);
    assert_eq!(as_v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 70, "{as_v2}");
    let as_v1 = k.json(&["-n", NS, "get", "horizontalpodautoscalers.v1.autoscaling", "old", "-o", "json"]);
    assert_eq!(
        (as_v1["apiVersion"].as_str(), as_v1["spec"]["targetCPUUtilizationPercentage"].as_i64()),
        (Some("autoscaling/v1"), Some(70)),
        "{as_v1}"
    );
    has(&k.ok_with(&["-n", NS, "apply", "-f", "-"], &v1.replace("70", "60"), &[]), "configured");
    assert_eq!(
        k.ok(&[
            "-n",
            NS,
            "get",
            "hpa",
            "old",
            "-o",
            "jsonpath={.spec.metrics[0].resource.target.averageUtilization}"
        ]),
        "60"
    );
    has(
        &k.ok(&["-n", NS, "autoscale", "deploy/made", "--min=1", "--max=3", "--cpu-percent=50"]),
        "horizontalpodautoscaler.autoscaling/made autoscaled",
    );
    has(&k.ok(&["-n", NS, "create", "serviceaccount", "bot"]), "serviceaccount/bot created");
    assert!(k.ok(&["-n", NS, "create", "token", "bot"]).starts_with("eyJ"));

    // events.k8s.io/v1 Events: the core Events under the new names, with the new rules.
    let ev = "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: made.1}\neventTime: \"2026-12-06T10:00:00.000000Z\"\nreportingController: example.com/checker\nreportingInstance: checker-1\naction: Check\nreason: Checked\nnote: all good\ntype: Normal\nregarding: {apiVersion: apps/v1, kind: Deployment, name: made}\n";
    has(&k.ok_with(&["-n", NS, "create", "-f", "-"], ev, &[]), "event.events.k8s.io/made.1 created");
    let core = k.json(&["-n", NS, "get", "events", "made.1", "-o", "json"]);
    assert_eq!(
        (core["apiVersion"].as_str(), core["message"].as_str(), core["involvedObject"]["name"].as_str()),
        (Some("v1"), Some("all good"), Some("made")),
        "{core}"
    );
    let new = k.json(&[
        "-n",
        NS,
        "get",
        "events.v1.events.k8s.io",
        "--field-selector=regarding.name=made,reportingController=example.com/checker",
        "-o",
        "json",
    ]);
    let items = new["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{new}");
    assert_eq!(
        (items[0]["note"].as_str(), items[0]["reportingController"].as_str(), items[0]["action"].as_str()),
        (Some("all good"), Some("example.com/checker"), Some("Check")),
        "{new}"
    );
    let bad = k.run_with(
        &["-n", NS, "create", "-f", "-"],
        &ev.replace("name: made.1", "name: made.2").replace("action: Check\n", "deprecatedCount: 2\n"),
        &[],
    );
    assert!(!bad.status.success());
    let bad = text(&bad);
    has(&bad, "Event.events.k8s.io \"made.2\" is invalid");
    has(&bad, "* action: Required value");
    has(&bad, "* deprecatedCount: Invalid value: \"\": needs to be unset");

    // The VerticalPodAutoscaler's v1beta2, served beside v1.
    let vpa = "apiVersion: autoscaling.k8s.io/v1beta2\nkind: VerticalPodAutoscaler\nmetadata: {name: made}\nspec:\n  targetRef: {apiVersion: apps/v1, kind: Deployment, name: made}\n  updatePolicy: {updateMode: \"Off\"}\n";
    has(
        &k.ok_with(&["-n", NS, "apply", "-f", "-"], vpa, &[]),
        "verticalpodautoscaler.autoscaling.k8s.io/made created",
    );
    let old =
        k.json(&["-n", NS, "get", "verticalpodautoscalers.v1beta2.autoscaling.k8s.io", "made", "-o", "json"]);
    assert_eq!(
        (old["apiVersion"].as_str(), old["spec"]["updatePolicy"]["updateMode"].as_str()),
        (Some("autoscaling.k8s.io/v1beta2"), Some("Off")),
        "{old}"
    );
    assert_eq!(
        k.ok(&["-n", NS, "get", "vpa", "made", "-o", "jsonpath={.apiVersion}"]),
        "autoscaling.k8s.io/v1"
    );

    // create -f, and a list of every kind that lists.
    has(
        &k.ok_with(&["create", "-f", "-"], &SETTINGS.replace("name: settings", "name: created"), &[]),
        "configmap/created created",
    );
    for resource in k.ok(&["api-resources", "--verbs=list", "-o", "name"]).lines() {
        let out = k.run(&["get", resource, "-A"]);
        assert!(out.status.success(), "kubectl get {resource} -A: {}", text(&out));
    }

    // apply: client-side, then again unchanged, then server-side; dry runs write nothing.
    has(&k.ok_with(&["apply", "-f", "-"], SETTINGS, &[]), "configmap/settings created");
    has(&k.ok_with(&["apply", "-f", "-"], SETTINGS, &[]), "configmap/settings unchanged");
    let changed = SETTINGS.replace("mode: fast", "mode: slow");
    has(&k.ok_with(&["apply", "-f", "-", "--dry-run=server"], &changed, &[]), "configured (server dry run)");
    assert_eq!(k.ok(&["-n", NS, "get", "cm", "settings", "-o", "jsonpath={.data.mode}"]), "fast");
    has(&k.ok_with(&["apply", "-f", "-"], &changed, &[]), "configmap/settings configured");
    has(
        &k.ok_with(&["apply", "--server-side", "-f", "-"], WEB, &[]),
        "deployment.apps/web serverside-applied",
    );
    let diff = k.run_with(&["diff", "-f", "-"], &WEB.replace("replicas: 2", "replicas: 4"), &[]);
    assert_eq!(diff.status.code(), Some(1), "kubectl diff shows a change: {}", text(&diff));
    has(&String::from_utf8_lossy(&diff.stdout), "+  replicas: 4");
    has(
        &k.ok(&["-n", NS, "wait", "--for=condition=Available", "deploy/web", "--timeout=90s"]),
        "condition met",
    );
    let pods = web_pods(&k, 2);

    // get: every output kubectl has.
    let wide = k.ok(&["-n", NS, "get", "pods", "-o", "wide"]);
    has(&wide, "NAME");
    has(&wide, "READY");
    has(&wide, NODE);
    has(&wide, "NOMINATED NODE");
    has(&k.ok(&["-n", NS, "get", "deploy", "web"]), "2/2");
    has(&k.ok(&["-n", NS, "get", "deploy", "web", "-o", "yaml"]), "kind: Deployment");
    assert_eq!(k.json(&["-n", NS, "get", "deploy", "web"])["spec"]["replicas"], 2);
    let columns = k.ok(&["-n", NS, "get", "cm", "-o", "custom-columns=N:.metadata.name,M:.data.mode"]);
    assert!(
        columns.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["settings", "slow"]),
        "{columns}"
    );
    let sorted = k.ok(&["-n", NS, "get", "cm", "--sort-by=.metadata.name", "-o", "name"]);
    let names: Vec<&str> = sorted.lines().collect();
    let mut want = names.clone();
    want.sort();
    assert_eq!(names, want);
    has(&k.ok(&["get", "pods", "-A"]), NS);
    has(&k.ok(&["-n", NS, "get", "cm", "-l", "tier=a", "-o", "name"]), "configmap/settings");
    let all = k.ok(&["-n", NS, "get", "all"]);
    has(&all, "deployment.apps/web");
    has(&all, "replicaset.apps/web-");
    has(&all, &format!("pod/{}", pods[0]));

    // Changing objects: label, annotate, the three patch types, edit, scale, rollout.
    has(&k.ok(&["-n", NS, "label", "cm", "settings", "team=blue"]), "labeled");
    has(&k.ok(&["-n", NS, "annotate", "cm", "settings", "note=hi"]), "annotated");
    k.ok(&["-n", NS, "patch", "cm", "settings", "-p", r#"{"data":{"strategic":"1"}}"#]);
    k.ok(&["-n", NS, "patch", "cm", "settings", "--type=merge", "-p", r#"{"data":{"merge":"1"}}"#]);
    k.ok(&[
        "-n",
        NS,
        "patch",
        "cm",
        "settings",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/json","value":"1"}]"#,
    ]);
    let editor = k._dir.path().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/mode: slow/mode: edited/' \"$1\"\n").unwrap();
    Command::new("chmod").arg("755").arg(&editor).status().unwrap();
    has(
        &k.ok_with(&["-n", NS, "edit", "cm", "settings"], "", &[("EDITOR", editor.to_str().unwrap())]),
        "edited",
    );
    let cm = k.json(&["-n", NS, "get", "cm", "settings"]);
    assert_eq!(cm["metadata"]["labels"]["team"], "blue");
    assert_eq!(cm["metadata"]["annotations"]["note"], "hi");
    for key in ["strategic", "merge", "json"] {
        assert_eq!(cm["data"][key], "1", "{cm:#}");
    }
    assert_eq!(cm["data"]["mode"], "edited");

    has(&k.ok(&["-n", NS, "scale", "deploy", "web", "--replicas=3"]), "scaled");
    // Server-side apply keeps field managers: the scale owns replicas now, so applying the
    // manifest's 2 conflicts until forced.
    has(
        &k.ok(&["-n", NS, "get", "deploy", "web", "--show-managed-fields", "-o", "yaml"]),
        "subresource: scale",
    );
    let conflict = k.run_with(&["apply", "--server-side", "-f", "-"], WEB, &[]);
    assert!(!conflict.status.success(), "{}", text(&conflict));
    has(&text(&conflict), "conflict with \"kubectl\" with subresource \"scale\"");
    has(&text(&conflict), ".spec.replicas");
    k.ok_with(&["apply", "--server-side", "--force-conflicts", "-f", "-"], WEB, &[]);
    assert_eq!(k.ok(&["-n", NS, "get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]), "2");
    has(&k.ok(&["-n", NS, "scale", "deploy", "web", "--replicas=3"]), "scaled");
    has(&k.ok(&["-n", NS, "rollout", "status", "deploy/web", "--timeout=90s"]), "successfully rolled out");
    has(&k.ok(&["-n", NS, "rollout", "restart", "deploy/web"]), "restarted");
    has(&k.ok(&["-n", NS, "rollout", "status", "deploy/web", "--timeout=90s"]), "successfully rolled out");
    has(&k.ok(&["-n", NS, "rollout", "history", "deploy/web"]), "REVISION");
    has(&k.ok(&["-n", NS, "set", "image", "deploy/web", "web=tug.local/busybox-httpd:2"]), "image updated");
    has(&k.ok(&["-n", NS, "rollout", "pause", "deploy/web"]), "paused");
    has(&k.ok(&["-n", NS, "rollout", "resume", "deploy/web"]), "resumed");
    has(&k.ok(&["-n", NS, "rollout", "status", "deploy/web", "--timeout=90s"]), "successfully rolled out");
    has(&k.ok(&["-n", NS, "rollout", "undo", "deploy/web"]), "rolled back");
    has(&k.ok(&["-n", NS, "rollout", "status", "deploy/web", "--timeout=90s"]), "successfully rolled out");
    assert_eq!(
        k.ok(&["-n", NS, "get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]),
        "tug.local/busybox-httpd:1"
    );
    has(&k.ok(&["-n", NS, "describe", "deploy", "web"]), "Replicas:");
    let crb = k.ok(&["get", "clusterrolebinding", "cluster-admin", "-o", "wide"]);
    has(&crb, "ClusterRole/cluster-admin");
    has(&crb, "system:masters");

    // Logs and exec through the node's agent.
    let pods = web_pods(&k, 3);
    let pod = pods[0].as_str();
    let described = k.ok(&["-n", NS, "describe", "pod", pod]);
    has(&described, "Node:");
    has(&described, "Events:");
    has(&k.ok(&["-n", NS, "logs", pod]), "started");
    has(&k.ok(&["-n", NS, "logs", pod, "--tail=1", "--timestamps"]), "Z started");
    has(&k.ok(&["-n", NS, "logs", pod, "--since=1h"]), "started");
    // logs -f: what the container writes while followed.
    let mut follow = k.command(&["-n", NS, "logs", "-f", pod]).spawn().expect("kubectl logs -f");
    k.ok(&["-n", NS, "exec", pod, "--", "sh", "-c", "echo followed-line > /proc/1/fd/1"]);
    let seen = lines_of(&mut follow);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut followed = String::new();
    while !followed.contains("followed-line") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) => followed += &(line + "\n"),
            Err(_) => break,
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    has(&followed, "followed-line");
    assert_eq!(k.ok(&["-n", NS, "logs", pod, "--since-time=2100-01-01T00:00:00Z"]), "");
    assert_eq!(k.ok(&["-n", NS, "exec", pod, "--", "echo", "hi"]), "hi\n");
    let failed = k.run(&["-n", NS, "exec", pod, "--", "sh", "-c", "exit 3"]);
    assert_eq!(failed.status.code(), Some(3), "{}", text(&failed));
    assert_eq!(k.ok_with(&["-n", NS, "exec", "-i", pod, "--", "cat"], "from stdin\n", &[]), "from stdin\n");
    // The same over SPDY, kubectl's older transport and its fallback.
    let spdy = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")];
    assert_eq!(k.ok_with(&["-n", NS, "exec", pod, "--", "echo", "hi"], "", &spdy), "hi\n");
    let failed = k.run_with(&["-n", NS, "exec", pod, "--", "sh", "-c", "echo oops >&2; exit 4"], "", &spdy);
    assert_eq!(failed.status.code(), Some(4), "{}", text(&failed));
    has(&String::from_utf8_lossy(&failed.stderr), "oops");
    assert_eq!(k.ok_with(&["-n", NS, "exec", "-i", pod, "--", "cat"], "over spdy\n", &spdy), "over spdy\n");
    let tty = Command::new("script")
        .args(["-qec", &format!("{KUBECTL} -n {NS} exec -it {pod} -- sh -c 'tty; stty size'"), "/dev/null"])
        .env("KUBECONFIG", &k.config)
        .output()
        .expect("script");
    has(&String::from_utf8_lossy(&tty.stdout), "/dev/pts/");
    let local = k._dir.path().join("copied.txt");
    std::fs::write(&local, "copy me\n").unwrap();
    let cp = k.run(&["-n", NS, "cp", local.to_str().unwrap(), &format!("{pod}:/tmp/copied.txt")]);
    assert!(cp.status.success(), "{}", text(&cp));
    assert_eq!(k.ok(&["-n", NS, "exec", pod, "--", "cat", "/tmp/copied.txt"]), "copy me\n");

    // run, expose, top, watch.
    has(
        &k.ok(&[
            "-n",
            NS,
            "run",
            "once",
            "--image=tug.local/busybox-httpd:1",
            "--image-pull-policy=Never",
            "--restart=Never",
            "--",
            "echo",
            "ran",
        ]),
        "pod/once created",
    );
    // port-forward: kubectl's local port to the pod's 8080 (its httpd), through the agent.
    let local = tug_integration::images::free_port();
    let mut forward = k
        .command(&["-n", NS, "port-forward", &format!("pod/{pod}"), &format!("{local}:8080")])
        .spawn()
        .expect("kubectl port-forward");
    let mut page = String::new();
    let served = wait_for(Duration::from_secs(20), || {
        page = http_get(local).unwrap_or_default();
        page.contains("Hello from Tug")
    });
    // A second connection through the same forward.
    let again = http_get(local).unwrap_or_default();
    let _ = forward.kill();
    let printed = forward.wait_with_output().expect("port-forward output");
    assert!(served, "port-forward: {page:?}\n{}\n{}\n{}", text(&printed), control.log(), agent.log());
    has(&again, "Hello from Tug");
    has(&String::from_utf8_lossy(&printed.stdout), &format!("Forwarding from 127.0.0.1:{local} -> 8080"));
    // The same over a plain SPDY upgrade, kubectl's older way (and its fallback).
    let local = tug_integration::images::free_port();
    let mut forward = k
        .command(&["-n", NS, "port-forward", &format!("pod/{pod}"), &format!("{local}:8080")])
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")
        .spawn()
        .expect("kubectl port-forward");
    let served = wait_for(Duration::from_secs(20), || {
        page = http_get(local).unwrap_or_default();
        page.contains("Hello from Tug")
    });
    let _ = forward.kill();
    let printed = forward.wait_with_output().expect("port-forward output");
    assert!(served, "port-forward over SPDY: {page:?}\n{}", text(&printed));

    // run -i: a pod with stdin, attached to (kubectl attach's WebSocket), removed after.
    let attached = k.ok_with(
        &[
            "-n",
            NS,
            "run",
            "-i",
            "--rm",
            "att",
            "--image=tug.local/busybox-httpd:1",
            "--image-pull-policy=Never",
            "--restart=Never",
            "--",
            "sh",
            "-c",
            "read x; echo got $x",
        ],
        "hello\n",
        &[],
    );
    has(&attached, "got hello");
    has(
        &k.ok(&["-n", NS, "expose", "deploy", "web", "--port=80", "--target-port=8080"]),
        "service/web exposed",
    );
    has(&k.ok(&["-n", NS, "get", "svc", "web"]), "80/TCP");
    let top = wait_for(Duration::from_secs(30), || k.run(&["top", "node"]).status.success());
    assert!(top, "kubectl top node: {}", text(&k.run(&["top", "node"])));
    has(&k.ok(&["top", "node"]), NODE);
    let top_pods = wait_for(Duration::from_secs(30), || {
        String::from_utf8_lossy(&k.run(&["-n", NS, "top", "pod"]).stdout).contains("web-")
    });
    assert!(top_pods, "kubectl top pod: {}", text(&k.run(&["-n", NS, "top", "pod"])));
    // get -w: the watch's first table, then the new object's row.
    let mut watch = k.command(&["-n", NS, "get", "cm", "-w"]).spawn().expect("kubectl get -w");
    let seen = lines_of(&mut watch);
    let listed = seen.recv_timeout(Duration::from_secs(20)).is_ok();
    k.ok(&["-n", NS, "create", "configmap", "watched"]);
    let mut shown = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while listed && !shown.contains("watched") {
        match seen.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(line) => shown += &(line + "\n"),
            Err(_) => break,
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(listed, "kubectl get -w printed nothing");
    has(&shown, "watched");

    // The official Python client (PyPI `kubernetes`, in the venv `make deps` makes).
    let root = tug_integration::probe::workspace_root();
    let python = root.join("target/kubernetes-venv/bin/python");
    if python.exists() {
        let out = Command::new(&python)
            .arg(root.join("integration/tests/python/client.py"))
            .args([k.config.to_str().unwrap(), NS, "tug.local/busybox-httpd:1"])
            .output()
            .expect("python");
        assert!(out.status.success(), "the Python client: {}\nagent log:\n{}", text(&out), agent.log());
        has(&String::from_utf8_lossy(&out.stdout), "python client: ok");
    } else {
        eprintln!("SKIPPED the Python client: {} is missing (make deps installs it)", python.display());
    }

    // The node: cordon, taint, drain (evictions), uncordon.
    has(&k.ok(&["cordon", NODE]), "cordoned");
    has(&k.ok(&["get", "node", NODE]), "SchedulingDisabled");
    has(&k.ok(&["taint", "nodes", NODE, "tug=kc:NoSchedule"]), "tainted");
    has(&k.ok(&["taint", "nodes", NODE, "tug=kc:NoSchedule-"]), "untainted");
    let drained = k.ok(&["drain", NODE, "--ignore-daemonsets", "--force", "--timeout=90s"]);
    has(&drained, "evicting pod");
    has(&drained, "drained");
    has(&k.ok(&["uncordon", NODE]), "uncordoned");

    // delete, waiting for the object to go.
    has(&k.ok(&["-n", NS, "delete", "deploy", "web"]), "deployment.apps \"web\" deleted");
    has(&k.ok(&["-n", NS, "delete", "cm", "settings", "plain"]), "deleted");
    has(&k.ok(&["delete", "namespace", NS, "--timeout=120s"]), "namespace \"tug-kc\" deleted");
    let gone = k.run(&["get", "namespace", NS]);
    assert!(!gone.status.success(), "the namespace is gone: {}\n{}", text(&gone), agent.log());
}
