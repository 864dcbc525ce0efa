//! Rollouts end to end on the cluster in namespaces: a canary's exact traffic weight through
//! the ClusterIP (not the replica ratio), promotion through the steps, a failing canary
//! aborted by its web analysis with the traffic back on stable, a canary refusing
//! connections aborted by the proxy's counts; blue-green with a preview Service and an
//! atomic switch seen by clients on every node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tug_integration::agent::Agent;
use tug_integration::cluster::Cluster;
use tug_integration::control_plane::ControlPlane;
use tug_integration::wait_for;

/// The app: `/` answers its VERSION, `/cgi-bin/health` answers `ok`, or 500 when BROKEN.
fn app(name: &str, version: &str, broken: bool, strategy: &str) -> String {
    app_on(name, version, broken, strategy, "8080")
}

/// [`app`] listening on `listen`: on any other than 8080 it is ready (its probe asks there)
/// but refuses every connection to its Service's target port.
fn app_on(name: &str, version: &str, broken: bool, strategy: &str, listen: &str) -> String {
    let probe_port = if listen == "8080" { "http" } else { listen };
    let health = if broken {
        r#"printf '#!/bin/sh\necho \"Status: 500 Internal Server Error\"\necho\necho broken\n'"#
    } else {
        r#"printf '#!/bin/sh\necho \"Content-Type: text/plain\"\necho\necho ok\n'"#
    };
    format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {{name: {name}}}
spec:
  replicas: 4
  progressDeadlineSeconds: 120
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: tug.local/probe:1
        imagePullPolicy: Never
        env: [{{name: VERSION, value: {version}}}]
        command: ["/bin/sh", "-c", "mkdir -p /tmp/w/cgi-bin && echo $VERSION > /tmp/w/index.html && {health} > /tmp/w/cgi-bin/health && chmod +x /tmp/w/cgi-bin/health && exec httpd -f -p {listen} -h /tmp/w"]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe:
          httpGet: {{path: /, port: {probe_port}}}
          periodSeconds: 1
  strategy:
{strategy}
"#
    )
}

const CANARY: &str = r#"
    canary:
      stableService: web
      canaryService: web-canary
      scaleDownDelaySeconds: 2
      abortScaleDownDelaySeconds: 0
      analysis:
        templates: [{templateName: health}]
        startingStep: 1
        args: [{name: service, value: web-canary}]
      steps:
      - setWeight: 10
      - pause: {}
      - setWeight: 50
      - pause: {}
"#;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-canary}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: health}
spec:
  args: [{name: service}]
  metrics:
  - name: health
    interval: 2s
    consecutiveErrorLimit: 0
    successCondition: result == 'ok'
    provider:
      web:
        url: "http://{{args.service}}.default.svc.cluster.local/cgi-bin/health"
        timeoutSeconds: 3
"#;

/// A canary analysed by the proxy's connection counts alone.
const COUNTED: &str = r#"
    canary:
      stableService: web
      canaryService: web-canary
      scaleDownDelaySeconds: 2
      abortScaleDownDelaySeconds: 0
      analysis:
        templates: [{templateName: connections}]
        startingStep: 1
      steps:
      - setWeight: 50
      - pause: {}
"#;

const CONNECTIONS: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: connections}
spec:
  metrics:
  - name: connections
    interval: 3s
    successCondition: result.connectionFailureRate < 0.2
    provider:
      pods: {}
"#;

struct Setup {
    cluster: Cluster,
    cp: ControlPlane,
    agents: Vec<Agent>,
}

impl Setup {
    fn new(nodes: usize, mode: &str) -> Setup {
        let cluster = Cluster::new(nodes).expect("cluster");
        let cp = ControlPlane::start();
        let agents = (0..nodes)
            .map(|i| {
                let a =
                    Agent::start(&cp, &cluster.nodes[i], &format!("tug-it-ro{i}"), &["--proxy-mode", mode]);
                a.import_probe_image("tug.local/probe:1");
                a
            })
            .collect();
        Setup { cluster, cp, agents }
    }

    fn logs(&self) -> String {
        let mut s = self.cp.log();
        for a in &self.agents {
            s += &format!("\n--- {}:\n{}", a.name, a.log());
        }
        s
    }

    fn rollout(&self, name: &str) -> serde_json::Value {
        self.cp.get_json(&["rollout", name]).unwrap_or_default()
    }

    fn cluster_ip(&self, svc: &str) -> String {
        self.cp.get_json(&["service", svc]).unwrap()["spec"]["clusterIP"].as_str().unwrap().to_string()
    }

    /// `count` requests to `ip:80` from node `i`, `pause_ms` apart: one line per answer.
    fn requests(&self, i: usize, ip: &str, count: usize, pause_ms: u64) -> Vec<String> {
        let probe = tug_integration::probe::path();
        let out = self.cluster.nodes[i]
            .command(&[
                probe.to_str().unwrap(),
                "get",
                &format!("{ip}:80"),
                &count.to_string(),
                &pause_ms.to_string(),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }

    fn wait_phase(&self, name: &str, phase: &str, step: Option<i64>, limit: Duration) {
        let ok = wait_for(limit, || {
            let r = self.rollout(name);
            r["status"]["phase"] == phase && step.is_none_or(|s| r["status"]["currentStepIndex"] == s)
        });
        assert!(
            ok,
            "rollout {name} never {phase} at step {step:?}: {:#}\n{}",
            self.rollout(name),
            self.logs()
        );
    }
}

/// Applies v2 and checks that one canary pod beside four stable ones takes 10% ± 3% of
/// 2,000 connections to the stable ClusterIP (the replica ratio would give 20%).
fn ten_percent(s: &Setup, ip: &str) {
    let cp = &s.cp;
    cp.apply(&app("web", "v2", false, CANARY));
    s.wait_phase("web", "Paused", Some(1), Duration::from_secs(90));
    let svc = cp.get_json(&["service", "web"]).unwrap();
    assert_eq!(svc["metadata"]["annotations"]["rollouts.tug.io/canary-weight"], "10", "{svc:#}");
    let st = cp.tug(&["rollout", "status", "rollout/web", "--watch=false"]);
    assert_eq!(String::from_utf8_lossy(&st.stdout), "Paused - CanaryPauseStep (step 2/4: pause)\n");
    // Both Endpoints ready before counting.
    let ready = |svc: &str, n: usize| {
        cp.get_json(&["endpoints", svc]).is_some_and(|e| {
            e["subsets"]
                .as_array()
                .map_or(0, |s| s.iter().map(|x| x["addresses"].as_array().map_or(0, Vec::len)).sum())
                == n
        })
    };
    assert!(wait_for(Duration::from_secs(30), || ready("web", 4) && ready("web-canary", 1)), "{}", s.logs());
    let answers = s.requests(0, ip, 2000, 0);
    let t = tally(&answers);
    let v2 = t.get("v2").copied().unwrap_or(0);
    assert_eq!(answers.len(), 2000, "{t:?}");
    assert!(
        (140..=260).contains(&v2),
        "10% ± 3% of 2000 to the canary, got {v2} (replica ratio would give 400): {t:?}"
    );
    assert_eq!(t.get("v1").copied().unwrap_or(0) + v2, 2000, "{t:?}");
}

#[test]
fn the_iptables_proxy_splits_by_the_same_exact_weight() {
    let s = Setup::new(1, "iptables");
    s.cp.apply(SERVICES);
    s.cp.apply(&app("web", "v1", false, CANARY));
    let out = s.cp.tug(&["rollout", "status", "rollout/web", "--timeout", "120s"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stderr), s.logs());
    ten_percent(&s, &s.cluster_ip("web"));
    let rules = s.cluster.nodes[0].command(&["iptables-save", "-t", "nat"]).output().unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.lines().any(|l| l.contains("--probability 0.1000") && l.ends_with("-j TUG-CNY-UARQTUAXJEB2")),
        "{rules}"
    );
}

/// A client process, the answers it printed so far, and the thread reading them.
type Client =
    (std::process::Child, std::sync::Arc<std::sync::Mutex<Vec<String>>>, std::thread::JoinHandle<()>);

fn tally(lines: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        let key = if l.starts_with("ERROR") { "ERROR".to_string() } else { l.clone() };
        *m.entry(key).or_default() += 1;
    }
    m
}

#[test]
fn a_canary_gets_its_exact_weight_promotes_and_a_failing_one_is_aborted_by_analysis() {
    let s = Setup::new(1, "nftables");
    let cp = &s.cp;
    cp.apply(SERVICES);
    cp.apply(&app("web", "v1", false, CANARY));
    let out = cp.tug(&["rollout", "status", "rollout/web", "--timeout", "120s"]);
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.logs()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("Healthy\n"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ip = s.cluster_ip("web");
    let table = String::from_utf8_lossy(&cp.tug(&["get", "rollouts"]).stdout).into_owned();
    assert!(table.starts_with("NAME   DESIRED   CURRENT   UP-TO-DATE   AVAILABLE   AGE\nweb    4         4         4            4"), "{table}");

    // v2: one canary pod beside four stable ones, 10% of the traffic.
    ten_percent(&s, &ip);
    // promote: 50%, then promote again: everything on v2, the old ReplicaSet scaled down.
    assert!(cp.tug(&["rollout", "promote", "web"]).status.success());
    s.wait_phase("web", "Paused", Some(3), Duration::from_secs(60));
    let svc = cp.get_json(&["service", "web"]).unwrap();
    assert_eq!(svc["metadata"]["annotations"]["rollouts.tug.io/canary-weight"], "50", "{svc:#}");
    assert!(cp.tug(&["rollout", "promote", "web"]).status.success());
    let out = cp.tug(&["rollout", "status", "rollout/web", "--timeout", "90s"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stderr), s.logs());
    let t = tally(&s.requests(0, &ip, 200, 0));
    assert_eq!(t.get("v2"), Some(&200), "{t:?}");
    let r = s.rollout("web");
    let v2_hash = r["status"]["currentPodHash"].as_str().unwrap().to_string();
    assert_eq!(r["status"]["stableRS"], v2_hash.as_str());
    let svc = cp.get_json(&["service", "web"]).unwrap();
    assert_eq!(svc["spec"]["selector"]["rollouts-pod-template-hash"], v2_hash.as_str());
    assert!(svc["metadata"]["annotations"]["rollouts.tug.io/canary-weight"].is_null(), "{svc:#}");
    let old_gone = wait_for(Duration::from_secs(30), || {
        cp.get_json(&["rs", "-l", "app=web"]).is_some_and(|l| {
            l["items"].as_array().unwrap().iter().all(|rs| {
                rs["metadata"]["labels"]["rollouts-pod-template-hash"] == v2_hash.as_str()
                    || rs["spec"]["replicas"] == 0
            })
        })
    });
    assert!(old_gone, "the old ReplicaSet keeps pods: {:#}", cp.get_json(&["rs"]).unwrap_or_default());
    let history =
        String::from_utf8_lossy(&cp.tug(&["rollout", "history", "rollout/web"]).stdout).into_owned();
    assert!(
        history.contains("REVISION") && history.contains("\n1 ") && history.contains("\n2 "),
        "{history}"
    );

    // v3 answers its health check with 500: the background analysis fails at its first
    // measurement, the update aborts, the canary's share goes back to stable at once.
    cp.apply(&app("web", "v3", true, CANARY));
    let degraded = wait_for(Duration::from_secs(90), || s.rollout("web")["status"]["phase"] == "Degraded");
    assert!(degraded, "{:#}\n{}", s.rollout("web"), s.logs());
    let r = s.rollout("web");
    let msg = r["status"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.starts_with("RolloutAborted: ") && msg.contains("500"), "{msg}");
    let svc = cp.get_json(&["service", "web"]).unwrap();
    assert!(svc["metadata"]["annotations"]["rollouts.tug.io/canary-weight"].is_null(), "{svc:#}");
    let t = tally(&s.requests(0, &ip, 200, 0));
    assert_eq!(t.get("v2"), Some(&200), "traffic is all on stable: {t:?}");
    let run = cp.get_json(&["analysisrun", "-l", "rollout-type=Background"]).unwrap();
    let failed = run["items"].as_array().unwrap().iter().any(|x| x["status"]["phase"] == "Error");
    assert!(failed, "{run:#}");
    let st = cp.tug(&["rollout", "status", "rollout/web", "--timeout", "10s"]);
    assert_eq!(st.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&st.stderr).contains("is Degraded: RolloutAborted"),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let events =
        String::from_utf8_lossy(&cp.tug(&["get", "events", "--for", "rollout/web"]).stdout).into_owned();
    assert!(events.contains("Warning") && events.contains("RolloutAborted"), "{events}");
    // Back to v2 (undo): the stable template, nothing to roll.
    assert!(cp.tug(&["rollout", "undo", "rollout/web"]).status.success());
    let out = cp.tug(&["rollout", "status", "rollout/web", "--timeout", "60s"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stderr), s.logs());
}

/// v2 is ready but refuses connections on its Service's port: the nodes' proxies count the
/// refusals of its set, the `pods` metric's failure rate passes 0.2, the update aborts, and
/// every connection goes to v1 again.
#[test]
fn a_canary_refusing_connections_is_aborted_by_the_proxys_counts() {
    let s = Setup::new(1, "nftables");
    let cp = &s.cp;
    cp.apply(SERVICES);
    cp.apply(CONNECTIONS);
    cp.apply(&app("web", "v1", false, COUNTED));
    let out = cp.tug(&["rollout", "status", "rollout/web", "--timeout", "120s"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stderr), s.logs());
    let ip = s.cluster_ip("web");
    cp.apply(&app_on("web", "v2", false, COUNTED, "8081"));
    s.wait_phase("web", "Paused", Some(1), Duration::from_secs(90));
    // Traffic until the abort: about half of it refused by the canary.
    let mut answers = Vec::new();
    let aborted = wait_for(Duration::from_secs(60), || {
        answers.extend(s.requests(0, &ip, 20, 50));
        s.rollout("web")["status"]["phase"] == "Degraded"
    });
    assert!(aborted, "{:#}\n{:?}\n{}", s.rollout("web"), tally(&answers), s.logs());
    let refused = answers.iter().filter(|a| a.starts_with("ERROR")).count();
    assert!(refused > 0 && answers.iter().any(|a| a == "v1"), "{:?}", tally(&answers));
    let msg = s.rollout("web")["status"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.starts_with("RolloutAborted: ") && msg.contains("connections"), "{msg}");
    let runs = cp.get_json(&["analysisrun", "-l", "rollout-type=Background"]).unwrap();
    let failed = runs["items"].as_array().unwrap().iter().find(|x| x["status"]["phase"] == "Failed");
    let failed = failed.unwrap_or_else(|| panic!("{runs:#}"));
    let last =
        failed["status"]["metricResults"][0]["measurements"].as_array().unwrap().last().unwrap().clone();
    let value: serde_json::Value = serde_json::from_str(last["value"].as_str().unwrap()).unwrap();
    assert!(value["connectionFailureRate"].as_f64().unwrap() >= 0.2, "{last:#}");
    assert!(value["connections"]["refused"].as_u64().unwrap() > 0, "{last:#}");
    // Back on stable: no refusals.
    let t = tally(&s.requests(0, &ip, 100, 0));
    assert_eq!(t.get("v1"), Some(&100), "{t:?}");
}

#[test]
fn blue_green_previews_then_switches_every_node_at_once() {
    let s = Setup::new(2, "nftables");
    let cp = &s.cp;
    let bg = r#"
    blueGreen:
      activeService: shop
      previewService: shop-preview
      autoPromotionEnabled: false
      scaleDownDelaySeconds: 3
      prePromotionAnalysis:
        templates: [{templateName: smoke, clusterScope: true}]
"#;
    cp.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: shop}
spec:
  selector: {app: shop}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: shop-preview}
spec:
  selector: {app: shop}
  ports: [{name: http, port: 80, targetPort: http}]
---
# A smoke test before promotion: a Job that must succeed.
apiVersion: argoproj.io/v1alpha1
kind: ClusterAnalysisTemplate
metadata: {name: smoke}
spec:
  metrics:
  - name: smoke
    provider:
      job:
        spec:
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              containers:
              - {name: smoke, image: "tug.local/probe:1", imagePullPolicy: Never, command: [/bin/tug-probe, exit, "0"]}
"#,
    );
    cp.apply(&app("shop", "blue", false, bg));
    let out = cp.tug(&["rollout", "status", "rollout/shop", "--timeout", "120s"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stderr), s.logs());
    let (active, preview) = (s.cluster_ip("shop"), s.cluster_ip("shop-preview"));
    cp.apply(&app("shop", "green", false, bg));
    s.wait_phase("shop", "Paused", None, Duration::from_secs(90));
    // Paused only once the pre-promotion analysis (a Job) succeeded.
    let runs = cp.get_json(&["analysisruns", "-l", "rollout-type=PrePromotion"]).unwrap();
    let run = &runs["items"].as_array().unwrap()[0];
    assert_eq!(run["status"]["phase"], "Successful", "{run:#}");
    let job = run["status"]["metricResults"][0]["measurements"][0]["metadata"]["job-name"]
        .as_str()
        .unwrap()
        .to_string();
    let j = cp.get_json(&["job", &job]).unwrap();
    assert!(j["status"]["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "Complete"), "{j:#}");
    let only = |lines: Vec<String>, want: &str| {
        let t = tally(&lines);
        assert_eq!(t.get(want), Some(&lines.len()), "{t:?}");
    };
    assert!(wait_for(Duration::from_secs(20), || tally(&s.requests(0, &preview, 10, 0)).get("green")
        == Some(&10)));
    only(s.requests(0, &active, 50, 0), "blue");
    only(s.requests(1, &active, 50, 0), "blue");

    // Clients on both nodes, then promote: each sees blue, then only green, never an error.
    let started = Instant::now();
    // Each client's answers as they come, so the promotion waits for both to be answering.
    let clients: Vec<Client> = (0..2)
        .map(|i| {
            let probe = tug_integration::probe::path();
            let mut child = s.cluster.nodes[i]
                .command(&[probe.to_str().unwrap(), "get", &format!("{active}:80"), "800", "10"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let (out, seen) = (child.stdout.take().unwrap(), lines.clone());
            let reader = std::thread::spawn(move || {
                use std::io::BufRead;
                for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    seen.lock().unwrap().push(l);
                }
            });
            (child, lines, reader)
        })
        .collect();
    let answering =
        wait_for(Duration::from_secs(20), || clients.iter().all(|(_, l, _)| !l.lock().unwrap().is_empty()));
    assert!(answering, "the clients never answered");
    assert!(cp.tug(&["rollout", "promote", "shop"]).status.success());
    for (i, (mut c, lines, reader)) in clients.into_iter().enumerate() {
        c.wait().unwrap();
        reader.join().unwrap();
        let lines = lines.lock().unwrap().clone();
        let t = tally(&lines);
        assert_eq!(t.get("ERROR"), None, "node {i}: failed requests across the switch: {t:?}");
        let first_green = lines
            .iter()
            .position(|l| l == "green")
            .unwrap_or_else(|| panic!("node {i} never saw green: {t:?}"));
        assert!(first_green > 0, "node {i} saw green before the promotion: {t:?}");
        assert!(lines[first_green..].iter().all(|l| l == "green"), "node {i}: blue after green: {lines:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    let out = cp.tug(&["rollout", "status", "rollout/shop", "--timeout", "60s"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stderr), s.logs());
    let events =
        String::from_utf8_lossy(&cp.tug(&["get", "events", "--for", "rollout/shop"]).stdout).into_owned();
    assert!(events.contains("SwitchService"), "{events}");
    // The blue side goes after its delay.
    let gone = wait_for(Duration::from_secs(30), || {
        cp.get_json(&["rs", "-l", "app=shop"]).is_some_and(|l| {
            l["items"].as_array().unwrap().iter().filter(|rs| rs["spec"]["replicas"] != 0).count() == 1
        })
    });
    assert!(gone, "{:#}", cp.get_json(&["rs"]).unwrap_or_default());
}
