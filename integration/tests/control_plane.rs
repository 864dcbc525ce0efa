//! The control plane end to end: `tug` against a real `tug-scheduler` on a Unix socket.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use tug_integration::control_plane::ControlPlane;

const APP: &str = "apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: 'busybox:1.36', ports: [{name: http, containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
";

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

#[test]
fn apply_reports_created_configured_unchanged() {
    let cp = ControlPlane::start();
    let o = cp.tug_with_input(&["apply", "-f", "-"], APP);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "namespace/shop created\ndeployment.apps/web created\nservice/web created\n");
    let o = cp.tug_with_input(&["apply", "-f", "-"], APP);
    assert_eq!(out(&o), "namespace/shop unchanged\ndeployment.apps/web unchanged\nservice/web unchanged\n");
    let o = cp.tug_with_input(&["apply", "-f", "-"], &APP.replace("replicas: 2", "replicas: 3"));
    assert_eq!(out(&o), "namespace/shop unchanged\ndeployment.apps/web configured\nservice/web unchanged\n");
    let o = cp.tug(&["get", "deployment", "web", "-n", "shop", "-o", "json"]);
    let d: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["generation"], 2, "a spec change is a new generation");
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%", "defaults are applied");
}

#[test]
fn one_invalid_document_means_nothing_is_applied() {
    let cp = ControlPlane::start();
    let bad = format!("{APP}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: Bad_Name}}\n");
    let o = cp.tug_with_input(&["apply", "-f", "-"], &bad);
    assert!(!o.status.success());
    assert!(
        err(&o).starts_with("error: -: document 4: metadata.name: Invalid value: \"Bad_Name\""),
        "{}",
        err(&o)
    );
    let o = cp.tug(&["get", "ns"]);
    assert!(!out(&o).contains("shop"), "nothing was created: {}", out(&o));
}

#[test]
fn get_tables_selectors_and_errors_read_like_kubectl() {
    let cp = ControlPlane::start();
    assert!(cp.tug_with_input(&["apply", "-f", "-"], APP).status.success());
    let o = cp.tug(&["get", "svc", "-n", "shop"]);
    let lines: Vec<String> = out(&o).lines().map(str::to_string).collect();
    assert!(lines[0].starts_with("NAME   TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)   AGE"), "{lines:?}");
    assert!(lines[1].starts_with("web    ClusterIP"), "{lines:?}");
    let o = cp.tug(&["get", "deploy", "-A", "-l", "app!=db"]);
    assert!(out(&o).starts_with("NAMESPACE   NAME   READY"), "{}", out(&o));
    let o = cp.tug(&["get", "deploy", "-l", "app=web", "-n", "shop", "-o", "name"]);
    assert_eq!(out(&o), "deployment.apps/web\n");
    let o = cp.tug(&["get", "deploy", "nope", "-n", "shop"]);
    assert_eq!(err(&o), "Error from server (NotFound): deployments.apps \"nope\" not found");
    let o = cp.tug(&["get", "jobs", "-n", "shop"]);
    assert_eq!(err(&o), "No resources found in shop namespace.");
    let o = cp.tug(&["get", "gizmos"]);
    assert_eq!(err(&o), "error: the server doesn't have a resource type \"gizmos\"");
    let o = cp.tug(&["delete", "svc", "web", "-n", "shop"]);
    assert_eq!(out(&o), "service \"web\" deleted\n");
    // KIND/NAME, several kinds, label columns, no headers.
    let o = cp.tug(&["get", "deploy/web", "-n", "shop", "--no-headers"]);
    assert!(out(&o).starts_with("web "), "{}", out(&o));
    let o = cp.tug(&["get", "deploy,cm", "-n", "shop", "--no-headers", "-o", "wide"]);
    assert!(out(&o).contains("deployment.apps/web ") && out(&o).contains("configmap/"), "{}", out(&o));
    let o = cp.tug(&["get", "deploy", "web", "-n", "shop", "-L", "app", "--show-labels"]);
    assert!(out(&o).lines().next().unwrap_or("").ends_with("APP   LABELS"), "{}", out(&o));
    let o = cp.tug(&[
        "get",
        "deploy",
        "-n",
        "shop",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.replicas}{\"\\n\"}{end}",
    ]);
    assert!(out(&o).lines().any(|l| l.starts_with("web=")), "{}", out(&o));
    let o = cp.tug(&[
        "get",
        "deploy",
        "web",
        "-n",
        "shop",
        "-o",
        "custom-columns=N:.metadata.name,NS:.metadata.namespace",
    ]);
    assert_eq!(
        out(&o).lines().nth(1).map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["web", "shop"])
    );
    let o = cp.tug(&["get", "deploy", "-o", "jsonpath={.items[}"]);
    assert!(err(&o).contains("error parsing jsonpath"), "{}", err(&o));
    // Changing in place: label, annotate, the three patch types, set image, edit.
    assert_eq!(
        out(&cp.tug(&["label", "deploy/web", "tier=fe", "-n", "shop"])),
        "deployment.apps/web labeled\n"
    );
    let o = cp.tug(&["label", "deploy", "web", "tier=be", "-n", "shop"]);
    assert_eq!(err(&o), "error: 'tier' already has a value (fe), and --overwrite is false");
    cp.tug(&["label", "deploy", "web", "tier=be", "--overwrite", "-n", "shop"]);
    assert_eq!(
        out(&cp.tug(&["annotate", "deploy", "web", "note=hi", "-n", "shop"])),
        "deployment.apps/web annotated\n"
    );
    for (t, p) in [
        ("strategic", r#"{"spec":{"minReadySeconds":1}}"#),
        ("merge", r#"{"spec":{"minReadySeconds":2}}"#),
        ("json", r#"[{"op":"replace","path":"/spec/minReadySeconds","value":3}]"#),
    ] {
        let o = cp.tug(&["patch", "deploy", "web", "--type", t, "-p", p, "-n", "shop"]);
        assert_eq!(out(&o), "deployment.apps/web patched\n", "{}", err(&o));
    }
    let image = cp.tug(&[
        "get",
        "deploy",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].name}",
    ]);
    let c = out(&image);
    let o = cp.tug(&["set", "image", "deploy/web", &format!("{c}=example/web:2"), "-n", "shop"]);
    assert_eq!(out(&o), "deployment.apps/web image updated\n", "{}", err(&o));
    let editor = cp.dir().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/minReadySeconds: 3/minReadySeconds: 4/' \"$1\"\n").unwrap();
    std::process::Command::new("chmod").arg("755").arg(&editor).status().unwrap();
    let o = cp.tug_env(&["edit", "deploy", "web", "-n", "shop"], &[("EDITOR", editor.to_str().unwrap())]);
    assert_eq!(out(&o), "deployment.apps/web edited\n", "{}", err(&o));
    let d = cp.get_json(&["deploy", "web", "-n", "shop"]).unwrap();
    assert_eq!(d["metadata"]["labels"]["tier"], "be");
    assert_eq!(d["metadata"]["annotations"]["note"], "hi");
    assert_eq!(d["spec"]["minReadySeconds"], 4);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "example/web:2");
    // Discovery verbs: api-resources, explain, version -o json, completion, cluster-info.
    let o = cp.tug(&["api-resources"]);
    assert!(
        out(&o).lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["deployments", "deploy", "apps/v1", "true", "Deployment"]),
        "{}",
        out(&o)
    );
    let o = cp.tug(&["explain", "deployment.spec.strategy"]);
    assert!(out(&o).contains("FIELD: strategy <Object>") && out(&o).contains("rollingUpdate"), "{}", out(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&cp.tug(&["version", "-o", "json"]).stdout).expect("version json");
    assert!(v["serverVersion"]["gitVersion"].as_str().unwrap_or("").starts_with("v1.32.0-tug."), "{v}");
    assert!(out(&cp.tug(&["completion", "bash"])).contains("_tug()"));
    assert!(out(&cp.tug(&["cluster-info"])).contains("Tug control plane is running at"));
    let o = cp.tug(&["get", "events", "-n", "shop", "--for", "deploy/web"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = cp.tug(&["describe", "deploy", "web", "-n", "shop"]);
    let text = out(&o);
    assert!(text.starts_with("Name:                   web\nNamespace:              shop\n"), "{text}");
    assert!(text.contains("\nReplicas:"), "{text}");
    assert!(text.contains("StrategyType:           RollingUpdate"), "{text}");
    assert!(text.contains("\nEvents:"), "{text}");
}

#[test]
fn create_namespace_configmap_and_secret() {
    let cp = ControlPlane::start();
    assert_eq!(out(&cp.tug(&["create", "namespace", "team-a"])), "namespace/team-a created\n");
    let o =
        cp.tug(&["create", "configmap", "cfg", "-n", "team-a", "--from-literal=a=1", "--from-literal=b=two"]);
    assert_eq!(out(&o), "configmap/cfg created\n", "{}", err(&o));
    let o = cp.tug(&["create", "secret", "generic", "pw", "-n", "team-a", "--from-literal=password=s3cret"]);
    assert_eq!(out(&o), "secret/pw created\n", "{}", err(&o));
    let s: Value =
        serde_json::from_str(&out(&cp.tug(&["get", "secret", "pw", "-n", "team-a", "-o", "json"]))).unwrap();
    assert_eq!(s["data"]["password"], "czNjcmV0");
    let o = cp.tug(&["create", "namespace", "team-a"]);
    assert_eq!(err(&o), "Error from server (AlreadyExists): namespaces \"team-a\" already exists");
    let o = cp.tug(&["create", "configmap", "x", "-n", "missing"]);
    assert_eq!(err(&o), "Error from server (NotFound): namespaces \"missing\" not found");
}

#[test]
fn errors_come_as_kubernetes_status_objects() {
    let cp = ControlPlane::start();
    let (code, body) = cp.raw("GET", "/api/v1/namespaces/default/pods/nope", "", "");
    assert_eq!(code, 404);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (s["kind"].as_str(), s["reason"].as_str(), s["code"].as_u64()),
        (Some("Status"), Some("NotFound"), Some(404))
    );
    let bad = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d"},"spec":{"replicas":-1,"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"i"}]}}}}"#;
    let (code, body) =
        cp.raw("POST", "/apis/apps/v1/namespaces/default/deployments", "application/json", bad);
    assert_eq!(code, 422);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["reason"], "Invalid");
    assert_eq!(s["details"]["causes"][0]["field"], "spec.replicas");
    // Optimistic concurrency: a PUT with a stale resourceVersion is a Conflict.
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"k":"1"}}"#;
    let (code, body) = cp.raw("POST", "/api/v1/namespaces/default/configmaps", "application/json", cm);
    assert_eq!(code, 201, "{body}");
    let rv = serde_json::from_str::<Value>(&body).unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let update = |v: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"c","resourceVersion":"{rv}"}},"data":{{"k":"{v}"}}}}"#
        )
    };
    assert_eq!(
        cp.raw("PUT", "/api/v1/namespaces/default/configmaps/c", "application/json", &update("2")).0,
        200
    );
    let (code, body) =
        cp.raw("PUT", "/api/v1/namespaces/default/configmaps/c", "application/json", &update("3"));
    assert_eq!(code, 409);
    assert!(body.contains("\"reason\":\"Conflict\""), "{body}");
}

#[test]
fn bad_requests_get_400_and_the_server_stays_up() {
    let cp = ControlPlane::start();
    let bodies = [
        "",
        "{",
        "\u{0}\u{1}garbage",
        "[1,2,3]",
        "kind: [",
        r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":7}}"#,
        "---\n---\n",
    ];
    for b in bodies {
        let (code, body) = cp.raw("POST", "/api/v1/namespaces/default/pods", "application/json", b);
        assert!((400..500).contains(&code), "{b:?} → {code} {body}");
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        let len = usize::try_from(seed % 300).unwrap_or(0);
        let mut junk = Vec::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push(
                b"{}[]:,\"apiVersionkindmetadataspec v1 -\n0123456789"
                    [usize::try_from(seed % 48).unwrap_or(0)],
            );
        }
        let body = String::from_utf8_lossy(&junk).to_string();
        let (code, _) = cp.raw("POST", "/api/v1/namespaces/default/configmaps", "application/json", &body);
        assert!(code == 201 || (400..500).contains(&code), "{body:?} → {code}");
    }
    let huge = "x".repeat(4 << 20);
    assert_eq!(cp.raw("POST", "/api/v1/namespaces/default/configmaps", "application/json", &huge).0, 413);
    assert_eq!(cp.raw("GET", "/healthz", "", "").0, 200);
}

#[test]
fn a_slow_client_does_not_block_others() {
    let cp = ControlPlane::start();
    let mut stalled = std::os::unix::net::UnixStream::connect(cp.socket()).unwrap();
    stalled.write_all(b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: tug\r\nContent-Length: 100\r\n\r\n{").unwrap();
    let o = cp.tug(&["get", "ns"]);
    assert!(out(&o).contains("default"), "{}", err(&o));
    drop(stalled);
}

#[test]
fn watch_streams_changes_in_order() {
    let cp = ControlPlane::start();
    let mut watcher = std::process::Command::new(tug_integration::bins::path("tug-cli", "tug"))
        .env("TUG_SOCKET", cp.socket())
        .args(["get", "configmaps", "-w", "-o", "wide"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    assert!(cp.tug(&["create", "configmap", "w1", "--from-literal=a=1"]).status.success());
    // w1 comes from the watch — or, when the create beat the watcher's first list, from that
    // list, under its header.
    let mut first = lines.next().unwrap().unwrap();
    // The list's header and the namespace's kube-root-ca.crt come first.
    while first.starts_with("NAME ") || first.starts_with("kube-root-ca.crt ") {
        first = lines.next().unwrap().unwrap();
    }
    assert!(first.starts_with("w1 "), "{first}");
    assert!(
        cp.tug(&["create", "configmap", "w2", "--from-literal=a=1", "--from-literal=b=2"]).status.success()
    );
    let second = lines.next().unwrap().unwrap();
    assert!(second.starts_with("w2 ") && second.contains(" 2 "), "{second}");
    let _ = watcher.kill();
    let _ = watcher.wait();
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut cp = ControlPlane::start();
    assert!(cp.tug_with_input(&["apply", "-f", "-"], APP).status.success());
    cp.kill9();
    cp.restart();
    let o = cp.tug(&["get", "deploy", "web", "-n", "shop", "-o", "name"]);
    assert_eq!(out(&o), "deployment.apps/web\n", "{}", err(&o));
}

#[test]
fn a_live_socket_is_not_taken_over() {
    let cp = ControlPlane::start();
    let o = std::process::Command::new(tug_integration::bins::path("tug-scheduler", "tug-scheduler"))
        .arg("--socket")
        .arg(cp.socket())
        .arg("--data-dir")
        .arg(cp.dir().join("other"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(err(&o).contains("another tug-scheduler is already serving on this socket"), "{}", err(&o));
}

#[test]
fn two_replicas_share_one_etcd() {
    let etcd = tug_integration::etcd::EtcdProcess::start();
    let (pa, pb) = (tug_integration::etcd::free_port(), tug_integration::etcd::free_port());
    let (la, lb) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    // The replicas' shared secret, which seals the CA key in etcd.
    let (_secrets, secret) = pki_secret();
    let flags = |listen: &str| {
        [
            "--store",
            "etcd",
            "--etcd-endpoints",
            etcd.endpoint.as_str(),
            "--listen",
            listen,
            "--pki-secret-file",
            &secret,
        ]
        .map(str::to_string)
    };
    let a = ControlPlane::start_with(&flags(&la).each_ref().map(String::as_str));
    let b = ControlPlane::start_with(&flags(&lb).each_ref().map(String::as_str));
    let o = a.tug_with_input(&["apply", "-f", "-"], APP);
    assert!(o.status.success(), "{}", err(&o));
    let o = b.tug(&["get", "deploy", "web", "-n", "shop", "-o", "json"]);
    let d: Value = serde_json::from_str(&out(&o)).unwrap_or_else(|_| panic!("{}", err(&o)));
    assert_eq!(d["spec"]["replicas"], 2);
    // One replica runs the controllers (it holds the leader Lease): two pods, not four.
    let pods = || {
        let o = b.tug(&["get", "pods", "-n", "shop", "-o", "json"]);
        serde_json::from_str::<Value>(&out(&o))
            .map(|v| v["items"].as_array().map_or(0, Vec::len))
            .unwrap_or(0)
    };
    assert!(
        tug_integration::wait_for(std::time::Duration::from_secs(15), || pods() == 2),
        "pods: {}",
        pods()
    );
    // Settled: the Deployment's status counts the ReplicaSet's pods.
    let settled = tug_integration::wait_for(std::time::Duration::from_secs(15), || {
        let o = b.tug(&["get", "deploy", "web", "-n", "shop", "-o", "json"]);
        serde_json::from_str::<Value>(&out(&o)).is_ok_and(|d| d["status"]["replicas"] == 2)
    });
    assert!(settled);
    assert_eq!(pods(), 2);
    let leaders = [a.log(), b.log()].iter().filter(|l| l.contains("controllers: leading")).count();
    assert_eq!(leaders, 1, "a:\n{}\nb:\n{}", a.log(), b.log());
    // Optimistic concurrency holds across replicas: the second writer of a stale version
    // loses. (A ConfigMap: no controller writes it meanwhile.)
    let o = a.tug(&["create", "configmap", "cfg", "-n", "shop", "--from-literal=k=v"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = b.tug(&["get", "configmap", "cfg", "-n", "shop", "-o", "json"]);
    let c: Value = serde_json::from_str(&out(&o)).unwrap_or_else(|_| panic!("{}", err(&o)));
    let rv = c["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let put = |cp: &ControlPlane, v: &str| {
        let mut obj = c.clone();
        obj["data"]["k"] = v.into();
        obj["metadata"]["resourceVersion"] = rv.clone().into();
        cp.raw("PUT", "/api/v1/namespaces/shop/configmaps/cfg", "application/json", &obj.to_string()).0
    };
    assert_eq!(put(&a, "a"), 200);
    assert_eq!(put(&b, "b"), 409);
    // Watches through B (served from its copy of etcd) see what A writes, from a revision
    // already past: one open while A writes, one after.
    let watch = |rv: &str| {
        b.raw(
            "GET",
            &format!("/api/v1/namespaces/shop/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=3"),
            "",
            "",
        )
    };
    let (code, body) = std::thread::scope(|s| {
        let w = s.spawn(|| watch(&rv));
        let o = a.tug(&["create", "configmap", "later", "-n", "shop", "--from-literal=k=v"]);
        assert!(o.status.success(), "{}", err(&o));
        w.join().unwrap()
    });
    assert_eq!(code, 200);
    let names = |body: &str| -> Vec<String> {
        body.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|e| {
                Some(format!("{} {}", e["type"].as_str()?, e["object"]["metadata"]["name"].as_str()?))
            })
            .collect()
    };
    assert_eq!(names(&body), ["MODIFIED cfg", "ADDED later"], "{body}");
    assert_eq!(names(&watch(&rv).1), ["MODIFIED cfg", "ADDED later"]);
    let o = b.tug_with_input(&["apply", "-f", "-"], &APP.replace("replicas: 2", "replicas: 3"));
    assert_eq!(out(&o), "namespace/shop unchanged\ndeployment.apps/web configured\nservice/web unchanged\n");
    // One cluster CA for all replicas: credentials from A's join work against B.
    let token = a.log().split_whitespace().find(|w| w.starts_with("tug::")).expect("token").to_string();
    let creds = a.dir().join("creds").to_str().unwrap().to_string();
    let o = a.tug(&["join", &format!("https://{la}"), "--token", &token, "--tls-dir", &creds]);
    assert!(o.status.success(), "{}", err(&o));
    let o = b.tug(&[
        "--server",
        &format!("https://{lb}"),
        "--tls-dir",
        &creds,
        "get",
        "pods",
        "-n",
        "shop",
        "-o",
        "name",
    ]);
    // (A join's credentials are a node's, which may list pods.)
    assert!(out(&o).matches("pod/web-").count() >= 2, "{}{}", out(&o), err(&o));
    // What etcd holds (what any replica or backup reads) has no private key in clear.
    let key = base64_encode(b"/tug/_tug/pki//cluster");
    let raw = std::process::Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            &format!("{}/v3/kv/range", etcd.endpoint),
            "-d",
            &format!("{{\"key\": \"{key}\"}}"),
        ])
        .output()
        .unwrap();
    let range: Value = serde_json::from_slice(&raw.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&raw.stdout)));
    let value = range["kvs"][0]["value"].as_str().expect("the PKI record in etcd");
    let record = String::from_utf8(base64_decode(value)).unwrap();
    assert!(record.contains("\"sealed\"") && !record.contains("PRIVATE KEY"), "{record}");
    // A replica without the secret is refused, saying what it needs.
    let o = std::process::Command::new(tug_integration::bins::path("tug-scheduler", "tug-scheduler"))
        .args([
            "--store",
            "etcd",
            "--etcd-endpoints",
            etcd.endpoint.as_str(),
            "--socket",
            "/nonexistent/x.sock",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success() && err(&o).contains("--store etcd needs --pki-secret-file"), "{}", err(&o));
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

#[test]
fn the_etcd_backend_needs_its_endpoints() {
    let o = std::process::Command::new(tug_integration::bins::path("tug-scheduler", "tug-scheduler"))
        .args(["--store", "etcd", "--socket", "/nonexistent/x.sock"])
        .output()
        .unwrap();
    assert_eq!(err(&o), "Error: --store etcd needs --etcd-endpoints URL[,URL...]");
}

#[test]
fn remote_users_join_with_the_token_and_talk_tls() {
    let port = tug_integration::etcd::free_port();
    let addr = format!("127.0.0.1:{port}");
    let cp = ControlPlane::start_with(&["--listen", &addr]);
    let token = cp
        .log()
        .split_whitespace()
        .find(|w| w.starts_with("tug::"))
        .expect("the join token is printed")
        .to_string();
    let url = format!("https://{addr}");
    let creds = cp.dir().join("creds");
    let creds = creds.to_str().unwrap();
    let o = cp.tug(&["join", &url, "--token", &token, "--name", "laptop", "--tls-dir", creds]);
    assert!(o.status.success(), "{}", err(&o));
    let key_mode = std::fs::metadata(cp.dir().join("creds/client.key")).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o777, 0o600);
    // A join makes a node's credentials: not an admin's.
    let o = cp.tug(&["--server", &url, "--tls-dir", creds, "create", "namespace", "remote"]);
    assert!(
        err(&o).contains(r#"User "system:node:laptop" cannot create resource "namespaces""#),
        "{}",
        err(&o)
    );
    // An admin's come from `tug create user` (here in system:masters).
    let admin = cp.dir().join("admin");
    let admin = admin.to_str().unwrap();
    let o = cp.tug(&["create", "user", "remote-admin", "--group", "system:masters", "--dir", admin]);
    assert!(o.status.success(), "{}", err(&o));
    let o = cp.tug(&["--server", &url, "--tls-dir", admin, "create", "namespace", "remote"]);
    assert_eq!(out(&o), "namespace/remote created\n", "{}", err(&o));
    assert!(out(&cp.tug(&["get", "ns"])).contains("remote"), "the local socket sees the remote write");
    // Wrong secret, wrong CA hash, and no client certificate are all refused.
    let bad_secret = format!("{}::nope", token.rsplit_once("::").unwrap().0);
    let o = cp.tug(&["join", &url, "--token", &bad_secret, "--tls-dir", creds]);
    assert_eq!(
        err(&o),
        "Error from server (Unauthorized): Unauthorized: the join token is not valid for this cluster"
    );
    let bad_hash = format!("tug::{}::x", "0".repeat(64));
    let o = cp.tug(&["join", &url, "--token", &bad_hash, "--tls-dir", creds]);
    assert!(err(&o).contains("the server's CA does not match the join token's hash"), "{}", err(&o));
    let anon = std::process::Command::new("curl").args(["-sk", &format!("{url}/api/v1/namespaces")]).output();
    if let Ok(anon) = anon {
        assert!(out(&anon).contains("\"code\":401"), "{}", out(&anon));
    }
}

#[test]
fn directories_files_and_round_trips() {
    let cp = ControlPlane::start();
    let dir = cp.dir().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    let docs: Vec<&str> = APP.split("---\n").collect();
    for (i, d) in docs.iter().enumerate() {
        std::fs::write(dir.join(format!("{i}.yaml")), d).unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
    let o = cp.tug(&["apply", "-f", dir.to_str().unwrap()]);
    assert_eq!(
        out(&o),
        "namespace/shop created\ndeployment.apps/web created\nservice/web created\n",
        "{}",
        err(&o)
    );
    // What `get -o yaml` prints applies again unchanged, server-owned fields and all.
    let yaml = out(&cp.tug(&["get", "deploy", "web", "-n", "shop", "-o", "yaml"]));
    let o = cp.tug_with_input(&["apply", "-f", "-"], &yaml);
    assert_eq!(out(&o), "deployment.apps/web unchanged\n", "{}", err(&o));
    let o = cp.tug(&["delete", "-f", dir.join("2.yaml").to_str().unwrap()]);
    assert_eq!(out(&o), "service \"web\" deleted\n");
    let o = cp.tug(&["delete", "ns", "shop"]);
    assert_eq!(out(&o), "namespace \"shop\" deleted\n");
    let o = cp.tug(&["get", "deploy", "-A", "-o", "name"]);
    assert_eq!(out(&o), "", "a namespace's objects go with it");
    let o = cp.tug(&["delete", "ns", "default"]);
    assert_eq!(
        err(&o),
        "Error from server (Forbidden): namespaces \"default\" is forbidden: this namespace may not be deleted"
    );
}

#[test]
fn nodes_that_register_get_a_pod_cidr_each() {
    let cp = ControlPlane::start_with(&["--cluster-cidr", "10.244.0.0/22"]);
    let node = |name: &str, cidr: Option<&str>| {
        let spec = cidr.map(|c| format!(", \"spec\": {{\"podCIDR\": \"{c}\"}}")).unwrap_or_default();
        cp.raw(
            "POST",
            "/api/v1/nodes",
            "application/json",
            &format!(
                "{{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {{\"name\": \"{name}\"}}{spec}}}"
            ),
        )
    };
    let cidr_of = |(code, body): (u16, String)| {
        assert_eq!(code, 201, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["spec"]["podCIDR"].as_str().unwrap().to_string()
    };
    assert_eq!(cidr_of(node("n0", None)), "10.244.0.0/24");
    assert_eq!(cidr_of(node("n1", Some("10.244.2.0/24"))), "10.244.2.0/24", "a node may bring its own");
    assert_eq!(cidr_of(node("n2", None)), "10.244.1.0/24", "the lowest free block");
    assert_eq!(cidr_of(node("n3", None)), "10.244.3.0/24");
    let (code, body) = node("n4", None);
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("no pod CIDR for node n4: the cluster CIDR 10.244.0.0/22 has no free /24 left"),
        "{body}"
    );
    let (code, body) = node("n5", Some("10.244.1.0/25"));
    assert_eq!(code, 400);
    assert!(
        body.contains("spec.podCIDR: 10.244.1.0/25 overlaps 10.244.1.0/24, which another node holds"),
        "{body}"
    );
    let listed = cp.tug(&["get", "nodes", "-o", "json"]);
    assert!(out(&listed).contains("\"podCIDRs\""), "{}", out(&listed));
}

#[test]
fn pods_are_placed_on_nodes_that_fit_and_retried_when_a_node_joins() {
    let cp = ControlPlane::start();
    let node = |name: &str, cpu: &str| {
        let body = format!(
            "{{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {{\"name\": \"{name}\"}}, \"status\": {{\"allocatable\": {{\"cpu\": \"{cpu}\", \"memory\": \"8Gi\", \"pods\": \"110\"}}, \"conditions\": [{{\"type\": \"Ready\", \"status\": \"True\"}}]}}}}"
        );
        let (code, out) = cp.raw("POST", "/api/v1/nodes", "application/json", &body);
        assert_eq!(code, 201, "{out}");
        let (code, out) = cp.raw("PUT", &format!("/api/v1/nodes/{name}/status"), "application/json", &body);
        assert_eq!(code, 200, "{out}");
    };
    node("small-1", "1");
    node("small-2", "1");
    let pod = |name: &str, cpu: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  containers:\n  - name: c\n    image: busybox:1.36\n    resources: {{requests: {{cpu: '{cpu}'}}}}\n"
        )
    };
    let applied =
        cp.tug_with_input(&["apply", "-f", "-"], &(pod("fits", "500m") + "---\n" + &pod("huge", "3")));
    assert!(applied.status.success(), "{}", err(&applied));
    let get = |name: &str| -> Value {
        serde_json::from_str(&out(&cp.tug(&["get", "pod", name, "-o", "json"]))).unwrap_or(Value::Null)
    };
    let scheduled = |name: &str| get(name)["spec"]["nodeName"].as_str().map(str::to_string);
    assert!(tug_integration::wait_for(std::time::Duration::from_secs(20), || scheduled("fits").is_some()));
    assert!(scheduled("fits").unwrap().starts_with("small-"));
    let condition = |name: &str| {
        get(name)["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned())
            .unwrap_or(Value::Null)
    };
    assert!(tug_integration::wait_for(std::time::Duration::from_secs(20), || condition("huge")["status"]
        == "False"));
    let c = condition("huge");
    assert_eq!(c["reason"], "Unschedulable");
    assert_eq!(c["message"], "0/2 nodes are available: 2 Insufficient cpu.");
    let events = out(&cp.tug(&["get", "events", "-o", "json"]));
    assert!(events.contains("FailedScheduling") && events.contains("0/2 nodes are available"), "{events}");
    // Bindings are announced too, by the pod's scheduler.
    let announced = || out(&cp.tug(&["get", "events", "--for", "pod/fits"]));
    assert!(tug_integration::wait_for(std::time::Duration::from_secs(10), || announced()
        .contains("Successfully assigned default/fits to small-")));
    assert!(announced().contains("Normal   Scheduled"), "{}", announced());
    // A node that fits joins: the waiting pod is placed, without polling.
    node("big", "4");
    assert!(tug_integration::wait_for(std::time::Duration::from_secs(20), || scheduled("huge").is_some()));
    assert_eq!(scheduled("huge").as_deref(), Some("big"));
    assert_eq!(condition("huge")["status"], "True");
}

#[test]
fn priority_classes_give_pods_their_priority() {
    let cp = ControlPlane::start();
    let table = out(&cp.tug(&["get", "priorityclasses"]));
    assert!(table.contains("system-node-critical") && table.contains("system-cluster-critical"), "{table}");
    let apply = |yaml: &str| cp.tug_with_input(&["apply", "-f", "-"], yaml);
    let pod = |name: &str, class: Option<&str>| {
        let class = class.map(|c| format!("\n  priorityClassName: {c}")).unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:{class}\n  containers: [{{name: c, image: busybox}}]\n"
        )
    };
    let o = apply(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\npreemptionPolicy: Never\n",
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(apply(&pod("urgent", Some("high"))).status.success());
    let p = cp.get_json(&["pod", "urgent"]).unwrap();
    assert_eq!(
        (p["spec"]["priority"].clone(), p["spec"]["preemptionPolicy"].clone()),
        (1000.into(), "Never".into())
    );
    // Applied again, nothing changes: admission's fields are the server's.
    assert!(out(&apply(&pod("urgent", Some("high")))).contains("unchanged"));
    assert!(err(&apply(&pod("lost", Some("nope")))).contains("no PriorityClass with name nope was found"));
    let o = apply(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: system-mine}\nvalue: 2000000000\n",
    );
    let e = err(&o);
    assert!(
        !o.status.success()
            && e.contains("'system-' prefix are reserved")
            && e.contains("maximum allowed value"),
        "{e}"
    );
    // The global default class goes to pods that name none.
    assert!(apply("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: normal}\nvalue: 7\nglobalDefault: true\n").status.success());
    assert!(apply(&pod("plain", None)).status.success());
    let p = cp.get_json(&["pod", "plain"]).unwrap();
    assert_eq!(
        (p["spec"]["priority"].clone(), p["spec"]["priorityClassName"].clone()),
        (7.into(), "normal".into())
    );
}

/// SIGTERM with a watch held open (as agents hold theirs and their tunnels): the scheduler
/// closes it after its grace and exits, and a new one opens the same store at once (it
/// stayed up holding the store's lock, and a restart failed with "Database already open").
#[test]
fn sigterm_ends_the_scheduler_despite_open_watches() {
    use std::io::{Read, Write};
    let mut cp = ControlPlane::start();
    let mut watch = std::os::unix::net::UnixStream::connect(cp.socket()).unwrap();
    watch.write_all(b"GET /api/v1/pods?watch=true HTTP/1.1\r\nHost: tug\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    watch.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200", "the watch is open");
    assert!(
        cp.terminate(std::time::Duration::from_secs(30)),
        "still running 30 s after SIGTERM:\n{}",
        cp.log()
    );
    assert!(cp.log().contains("closing them"), "{}", cp.log());
    cp.start_again();
    let o = cp.tug(&["get", "ns", "default", "-o", "name"]);
    assert_eq!(out(&o), "namespace/default\n", "{}", err(&o));
}

/// `allowWatchBookmarks=true`: a filtered watch that sees nothing it wants is told how far it
/// got — a BOOKMARK at the revision of the last change it passed over — so it resumes from
/// there, not from a revision the history may have dropped; without the parameter, none.
#[test]
fn an_idle_filtered_watch_is_told_how_far_it_got() {
    let cp = ControlPlane::start();
    let (_, list) = cp.raw("GET", "/api/v1/namespaces/default/configmaps", "", "");
    let list: Value = serde_json::from_str(&list).unwrap_or_else(|_| panic!("{list}"));
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let mut last = String::new();
    for i in 0..3 {
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"other-{i}","namespace":"default"}}}}"#
        );
        let (code, made) = cp.raw("POST", "/api/v1/namespaces/default/configmaps", "application/json", &body);
        assert_eq!(code, 201, "{made}");
        let made: Value = serde_json::from_str(&made).unwrap();
        last = made["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    }
    let watch = |bookmarks: bool| {
        let path = format!(
            "/api/v1/namespaces/default/configmaps?watch=true&fieldSelector=metadata.name%3Dwanted&resourceVersion={rv}&timeoutSeconds=12{}",
            if bookmarks { "&allowWatchBookmarks=true" } else { "" }
        );
        let (code, body) = cp.raw("GET", &path, "", "");
        assert_eq!(code, 200, "{body}");
        body.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|_| panic!("{l}")))
            .collect::<Vec<_>>()
    };
    let (with, without) = std::thread::scope(|s| {
        let with = s.spawn(|| watch(true));
        let without = s.spawn(|| watch(false));
        (with.join().unwrap(), without.join().unwrap())
    });
    assert_eq!(with.len(), 1, "{with:?}");
    assert_eq!(with[0]["type"], "BOOKMARK");
    assert_eq!(with[0]["object"]["kind"], "ConfigMap");
    assert_eq!(with[0]["object"]["apiVersion"], "v1");
    assert_eq!(with[0]["object"]["metadata"]["resourceVersion"], last.as_str(), "{with:?}");
    assert!(without.is_empty(), "{without:?}");
}

/// A watch from a revision the store has not reached is refused as Kubernetes refuses it
/// (504, ResourceVersionTooLarge), not a stream that silently shows nothing.
#[test]
fn a_watch_from_the_future_is_refused() {
    let cp = ControlPlane::start();
    let (code, body) = cp.raw("GET", "/api/v1/pods?watch=true&resourceVersion=999999999", "", "");
    assert_eq!(code, 504, "{body}");
    let s: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(s["reason"], "Timeout");
    assert!(
        s["message"].as_str().unwrap().starts_with("Too large resource version: 999999999, current: "),
        "{s}"
    );
    assert_eq!(s["details"]["causes"][0]["reason"], "ResourceVersionTooLarge");
}

/// `tug get -w` outlives a restart of the control plane: it takes the watch up again from
/// the last revision it saw and shows what happened after (it exited 1 before).
#[test]
fn get_watch_reconnects_across_a_restart() {
    let mut cp = ControlPlane::start();
    let out_file = cp.dir().join("watch.out");
    let mut watcher = std::process::Command::new(tug_integration::bins::path("tug-cli", "tug"))
        .env("TUG_SOCKET", cp.socket())
        .args(["get", "ns", "-w"])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let shown = |name: &str| std::fs::read_to_string(&out_file).unwrap_or_default().contains(name);
    assert!(tug_integration::wait_for(std::time::Duration::from_secs(10), || shown("default")));
    cp.restart();
    assert!(cp.tug(&["create", "namespace", "tug-after-restart"]).status.success());
    let seen = tug_integration::wait_for(std::time::Duration::from_secs(30), || shown("tug-after-restart"));
    let still = watcher.try_wait().unwrap().is_none();
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(
        seen && still,
        "watcher running: {still}; it printed:\n{}",
        std::fs::read_to_string(&out_file).unwrap_or_default()
    );
}

/// Updates follow Kubernetes' immutability rules through `tug apply` and a plain PUT: a
/// Deployment's selector and a bound pod's spec refuse changes with the field's path; the
/// allowed changes (replicas, a container's image) go through and keep the pod's binding.
#[test]
fn immutable_fields_refuse_updates_and_allowed_changes_pass() {
    let cp = ControlPlane::start();
    assert!(cp.tug_with_input(&["apply", "-f", "-"], APP).status.success());
    let o = cp.tug_with_input(
        &["apply", "-f", "-"],
        &APP.replace("selector: {matchLabels: {app: web}}", "selector: {matchLabels: {app: shop}}")
            .replace("labels: {app: web}}\n    spec", "labels: {app: shop}}\n    spec"),
    );
    assert!(!o.status.success());
    assert!(
        err(&o).contains(
            "spec.selector: Invalid value: {\"matchLabels\":{\"app\":\"shop\"}}: field is immutable"
        ),
        "{}",
        err(&o)
    );
    let o = cp.tug_with_input(&["apply", "-f", "-"], &APP.replace("replicas: 2", "replicas: 3"));
    assert!(o.status.success(), "{}", err(&o));
    // A pod bound to a node: its image may change (and it stays bound), its restart policy may not.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: one, namespace: shop}\nspec:\n  nodeName: n1\n  containers: [{name: c, image: 'busybox:1.36'}]\n";
    assert!(cp.tug_with_input(&["apply", "-f", "-"], pod).status.success());
    let o = cp
        .tug_with_input(&["apply", "-f", "-"], &pod.replace("  nodeName: n1\n", "").replace("1.36", "1.37"));
    assert!(o.status.success(), "{}", err(&o));
    let p: Value =
        serde_json::from_str(&out(&cp.tug(&["get", "pod", "one", "-n", "shop", "-o", "json"]))).unwrap();
    assert_eq!(
        (p["spec"]["nodeName"].as_str(), p["spec"]["containers"][0]["image"].as_str()),
        (Some("n1"), Some("busybox:1.37"))
    );
    let o = cp.tug_with_input(
        &["apply", "-f", "-"],
        &pod.replace("  nodeName: n1\n", "  nodeName: n1\n  restartPolicy: Never\n"),
    );
    assert!(!o.status.success());
    assert!(err(&o).contains("spec: Forbidden: pod updates may not change fields other than"), "{}", err(&o));
}

use tug_integration::etcd::pki_secret;

/// etcd gone: requests get 503 ServiceUnavailable with Retry-After (a client retries), not a
/// 500 that reads like a bug.
#[test]
fn an_unreachable_etcd_is_503_with_retry_after() {
    let etcd = tug_integration::etcd::EtcdProcess::start();
    let (cp, _secrets) = ControlPlane::start_on_etcd(&etcd.endpoint, &[]);
    drop(etcd);
    let (code, body) = cp.raw("GET", "/api/v1/namespaces/default/configmaps", "", "");
    assert_eq!(code, 503, "{body}");
    let s: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(s["reason"], "ServiceUnavailable");
    let head = std::process::Command::new("curl")
        .args([
            "-s",
            "-i",
            "--unix-socket",
            cp.socket().to_str().unwrap(),
            "http://tug/api/v1/namespaces/default/configmaps",
        ])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_lowercase();
    assert!(head.contains("retry-after: 1"), "{head}");
}

/// A body nested far deeper than any manifest is refused before the YAML parse (whose time
/// grows with the square of the depth), naming the line; the server keeps answering.
#[test]
fn a_deeply_nested_body_is_refused_before_the_parse() {
    let cp = ControlPlane::start();
    let mut deep = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: deep}\ndata:\n");
    for i in 0..300 {
        deep.push_str(&format!("{}k{i}:\n", " ".repeat(i + 2)));
    }
    let (code, body) = cp.raw("POST", "/api/v1/namespaces/default/configmaps", "application/yaml", &deep);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("nests deeper than 128 levels (line 132)"), "{body}");
    let flow = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: deep}}\ndata: {{k: {}{}}}\n",
        "[".repeat(20000),
        "]".repeat(20000)
    );
    let (code, body) = cp.raw("POST", "/api/v1/namespaces/default/configmaps", "application/yaml", &flow);
    assert_eq!(code, 400, "{body}");
    assert_eq!(cp.raw("GET", "/version", "", "").0, 200);
}

/// Finalizers hold any object until they are removed; a namespace is Terminating (and takes
/// no new objects) until what is in it is gone, a pod on a node included.
#[test]
fn finalizers_and_terminating_namespaces() {
    let cp = ControlPlane::start();
    let wait = |f: &dyn Fn() -> bool| tug_integration::wait_for(std::time::Duration::from_secs(20), f);
    let cm = |finalizers: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: held, finalizers: [{finalizers}]}}\ndata: {{k: v}}\n"
        )
    };
    cp.apply(&cm("example.com/hold"));
    let o = cp.tug(&["delete", "configmap", "held", "--wait=false"]);
    assert_eq!(out(&o), "configmap \"held\" deleted\n", "{}", err(&o));
    let held = cp.get_json(&["configmap", "held"]).expect("held by its finalizer");
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held:#}");
    // No new finalizer on an object on its way out.
    let o = cp.tug_with_input(&["apply", "-f", "-"], &cm("example.com/hold, example.com/more"));
    assert!(err(&o).contains("no new finalizers can be added if the object is being deleted"), "{}", err(&o));
    // The last finalizer removed: the object goes with that update.
    cp.apply(&cm(""));
    assert!(cp.get_json(&["configmap", "held"]).is_none());

    cp.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: tug-ending}\n");
    // A pod bound to a node (no agent runs it here): it will wait for its node.
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: tug-ending}}\nspec:\n  nodeName: tug-nowhere\n  containers: [{{name: c, image: busybox}}]\n"
        )
    };
    cp.apply(&pod("bound"));
    cp.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: tug-ending}\n");
    let o = cp.tug(&["delete", "namespace", "tug-ending", "--wait=false"]);
    assert!(o.status.success(), "{}", err(&o));
    let ns = cp.get_json(&["namespace", "tug-ending"]).expect("Terminating");
    assert_eq!(ns["status"]["phase"], "Terminating", "{ns:#}");
    assert!(out(&cp.tug(&["get", "namespaces"])).contains("Terminating"));
    let o = cp.tug_with_input(&["apply", "-f", "-"], &pod("late"));
    assert!(
        err(&o)
            .contains("unable to create new content in namespace tug-ending because it is being terminated"),
        "{}",
        err(&o)
    );
    assert!(wait(&|| cp.get_json(&["configmap", "c", "-n", "tug-ending"]).is_none()), "{}", cp.log());
    assert!(
        wait(&|| cp
            .get_json(&["pod", "bound", "-n", "tug-ending"])
            .is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string())),
        "{}",
        cp.log()
    );
    assert!(cp.get_json(&["namespace", "tug-ending"]).is_some(), "the namespace waits for its pod");
    // Its node never confirms: forced, the pod goes, and the namespace after it.
    let o = cp.tug(&["delete", "pod", "bound", "-n", "tug-ending", "--force"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(wait(&|| cp.get_json(&["namespace", "tug-ending"]).is_none()), "{}", cp.log());
}

/// Slow headers and idle connections are closed (here after 2 s and 4 s); a connection
/// between requests is idle, not slow; a watch is neither.
#[test]
fn slow_headers_and_idle_connections_time_out() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};
    let cp = ControlPlane::start_with(&["--request-header-timeout", "2s", "--idle-timeout", "4s"]);
    // Closed: a read returns end of file or an error within `limit`.
    let closed_within = |s: &mut UnixStream, limit: Duration| -> Option<Duration> {
        let t0 = Instant::now();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut buf = [0u8; 4096];
        while t0.elapsed() < limit {
            match s.read(&mut buf) {
                Ok(0) => return Some(t0.elapsed()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Some(t0.elapsed()),
            }
        }
        None
    };
    // A head trickled a byte every 300 ms: cut after 2 s, long before it is done.
    let mut slow = UnixStream::connect(cp.socket()).unwrap();
    let t0 = Instant::now();
    let head = b"GET /version HTTP/1.1\r\nHost: tug\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = None;
    for b in head {
        if slow.write_all(&[*b]).is_err() {
            cut = Some(t0.elapsed());
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(300)).is_some() {
            cut = Some(t0.elapsed());
            break;
        }
    }
    let cut = cut.expect("a trickled request head was never cut off");
    assert!(cut < Duration::from_secs(6), "cut after {cut:?}");
    // Nothing sent at all: closed as idle.
    let mut idle = UnixStream::connect(cp.socket()).unwrap();
    let after = closed_within(&mut idle, Duration::from_secs(10)).expect("an idle connection stayed open");
    assert!(after >= Duration::from_secs(3), "closed after {after:?}, before the idle timeout");
    // Keep-alive: a second request 3 s after the first answer (past the header timeout, within
    // the idle one) is served.
    let mut ka = UnixStream::connect(cp.socket()).unwrap();
    let req = b"GET /version HTTP/1.1\r\nHost: tug\r\n\r\n";
    let answer = |s: &mut UnixStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    ka.write_all(req).unwrap();
    assert!(answer(&mut ka).starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_secs(3));
    ka.write_all(req).unwrap();
    let second = answer(&mut ka);
    assert!(second.starts_with("HTTP/1.1 200"), "{second:?}");
    // A watch that sees nothing for longer than both timeouts stays open.
    let mut w = UnixStream::connect(cp.socket()).unwrap();
    w.write_all(b"GET /api/v1/namespaces/default/configmaps?watch=true HTTP/1.1\r\nHost: tug\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    cp.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late}\n");
    w.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    while !seen.contains("late") && t0.elapsed() < Duration::from_secs(5) {
        match w.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(seen.contains("\"ADDED\"") && seen.contains("late"), "{seen:?}");
}

/// Lists page with `limit` and `continue` (every page at the first page's revision), and
/// `tug get` pages by itself.
#[test]
fn lists_page_with_limit_and_continue() {
    let cp = ControlPlane::start();
    cp.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: tug-pages}\n");
    let mut docs = String::new();
    for i in 0..7 {
        docs.push_str(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}, namespace: tug-pages, labels: {{odd: '{}'}}}}\n---\n",
            i % 2 == 1
        ));
    }
    cp.apply(&docs);
    let page = |q: &str| -> Value {
        let (code, body) = cp.raw("GET", &format!("/api/v1/namespaces/tug-pages/configmaps?{q}"), "", "");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    let names = |l: &Value| -> Vec<String> {
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let first = page("limit=3");
    assert_eq!(names(&first), ["cm-0", "cm-1", "cm-2"]);
    assert_eq!(first["kind"], "ConfigMapList");
    let rv = first["metadata"]["resourceVersion"].clone();
    let token = first["metadata"]["continue"].as_str().expect("a continue token").to_string();
    // A change between pages: the pages still report the first page's revision.
    cp.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other, namespace: default}\n");
    let second = page(&format!("limit=3&continue={token}"));
    assert_eq!(names(&second), ["cm-3", "cm-4", "cm-5"]);
    assert_eq!(second["metadata"]["resourceVersion"], rv);
    let token = second["metadata"]["continue"].as_str().unwrap().to_string();
    let last = page(&format!("limit=3&continue={token}"));
    // (Every namespace has the cluster CA's ConfigMap, after ours in key order.)
    assert_eq!(names(&last), ["cm-6", "kube-root-ca.crt"]);
    assert!(last["metadata"]["continue"].is_null(), "{last:#}");
    // Selectors apply within pages; no limit is everything.
    assert_eq!(names(&page("labelSelector=odd%3Dtrue")), ["cm-1", "cm-3", "cm-5"]);
    assert_eq!(names(&page("")).len(), 8);
    // A token of another list, or none at all, is refused.
    let (code, body) = cp.raw("GET", &format!("/api/v1/namespaces/default/secrets?continue={token}"), "", "");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("continue key is not valid"), "{body}");
    let (code, _) = cp.raw("GET", "/api/v1/namespaces/tug-pages/configmaps?continue=garbage", "", "");
    assert_eq!(code, 400);
    let o = cp.tug(&["get", "configmaps", "-n", "tug-pages", "--chunk-size", "2", "-o", "name"]);
    assert_eq!(out(&o).lines().count(), 8, "{}", out(&o));
}

/// A full disk: writes are refused (503) while it is full, nothing refused is ever visible,
/// and once space returns writes succeed again without a restart.
#[test]
fn a_full_disk_refuses_writes_shows_no_phantoms_and_recovers() {
    struct Mount(tempfile::TempDir);
    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }
    let dir = tempfile::Builder::new().prefix("tug-enospc").tempdir().unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m,mode=0700", "tug-enospc"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(ok.success(), "mounting a tmpfs");
    let mnt = Mount(dir);
    let data = mnt.0.path().join("data");
    let cp = ControlPlane::start_with(&["--data-dir", data.to_str().unwrap()]);
    let cm = |name: &str| {
        format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"{name}\"}},\"data\":{{\"k\":\"{}\"}}}}",
            "x".repeat(100_000)
        )
    };
    let create =
        |name: &str| cp.raw("POST", "/api/v1/namespaces/default/configmaps", "application/json", &cm(name));
    assert_eq!(create("before").0, 201);
    // Fill what is left of the tmpfs.
    let filler = mnt.0.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
    }
    let mut refused = None;
    for i in 0..200 {
        let name = format!("full-{i}");
        let (code, body) = create(&name);
        if code != 201 {
            assert_eq!(code, 503, "{body}");
            refused = Some(name);
            break;
        }
    }
    let refused = refused.expect("no write was refused on a full disk");
    // Nothing refused is visible, now or later; reads answer (or say unavailable), never
    // show it.
    for _ in 0..3 {
        let (code, body) = cp.raw("GET", &format!("/api/v1/namespaces/default/configmaps/{refused}"), "", "");
        assert!(code == 404 || code == 503, "{code} {body}");
    }
    std::fs::remove_file(&filler).unwrap();
    // Space again: writes succeed without a restart.
    let mut back = false;
    for i in 0..50 {
        if create(&format!("after-{i}")).0 == 201 {
            back = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(back, "writes did not come back once space was free\n{}", cp.log());
    let (code, _) = cp.raw("GET", &format!("/api/v1/namespaces/default/configmaps/{refused}"), "", "");
    assert_eq!(code, 404, "the refused write is there after all");
    let (code, _) = cp.raw("GET", "/api/v1/namespaces/default/configmaps/before", "", "");
    assert_eq!(code, 200);
    drop(cp);
}

#[test]
fn everyday_verbs_create_compare_and_wait() {
    let cp = ControlPlane::start();
    let ok = |args: &[&str]| {
        let o = cp.tug(args);
        assert!(o.status.success(), "tug {}: {}", args.join(" "), err(&o));
        out(&o)
    };
    assert_eq!(
        ok(&["create", "deployment", "d1", "--image=example/web:1.2", "--replicas=2", "--port=80"]),
        "deployment.apps/d1 created\n"
    );
    let d = cp.get_json(&["deploy", "d1"]).unwrap();
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "d1");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["name"], "web");
    assert_eq!(ok(&["create", "job", "j1", "--image=busybox", "--", "echo", "hi"]), "job.batch/j1 created\n");
    assert_eq!(
        ok(&["create", "cronjob", "c1", "--image=busybox", "--schedule=*/5 * * * *", "--", "echo", "hi"]),
        "cronjob.batch/c1 created\n"
    );
    assert_eq!(ok(&["create", "service", "nodeport", "s1", "--tcp=81:8080"]), "service/s1 created\n");
    assert_eq!(cp.get_json(&["svc", "s1"]).unwrap()["spec"]["type"], "NodePort");
    assert_eq!(ok(&["run", "r1", "--image=busybox", "--", "sleep", "10"]), "pod/r1 created\n");
    assert_eq!(cp.get_json(&["pod", "r1"]).unwrap()["spec"]["containers"][0]["command"][0], "sleep");
    assert_eq!(ok(&["get", "pods", "--field-selector", "metadata.name=r1", "-o", "name"]), "pod/r1\n");
    let others = ok(&["get", "pods", "--field-selector", "metadata.name!=r1", "-o", "name"]);
    assert!(!others.contains("pod/r1") && others.contains("pod/d1-"), "{others}");
    assert_eq!(ok(&["expose", "deploy/d1", "--port=80", "--target-port=8080"]), "service/d1 exposed\n");
    assert_eq!(cp.get_json(&["svc", "d1"]).unwrap()["spec"]["selector"]["app"], "d1");
    // wait: a jsonpath met at once; a condition never met times out as kubectl's does.
    assert_eq!(
        ok(&["wait", "--for=jsonpath={.spec.replicas}=2", "deploy/d1"]),
        "deployment.apps/d1 condition met\n"
    );
    let o = cp.tug(&["wait", "--for=condition=Available", "deploy/d1", "--timeout=1s"]);
    assert_eq!(err(&o), "error: timed out waiting for the condition on deployments/d1");
    // apply --dry-run, diff (exit 1 on a change), replace, wait --for=delete.
    let file = cp.dir().join("cm.yaml");
    std::fs::write(&file, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dd}\ndata: {a: \"1\"}\n")
        .unwrap();
    let f = file.to_str().unwrap();
    assert_eq!(ok(&["apply", "-f", f, "--dry-run=server"]), "configmap/dd created (server dry run)\n");
    assert!(cp.get_json(&["cm", "dd"]).is_none(), "a dry run stores nothing");
    ok(&["apply", "-f", f]);
    std::fs::write(&file, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dd}\ndata: {a: \"2\"}\n")
        .unwrap();
    let o = cp.tug(&["diff", "-f", f]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(out(&o).contains("-  a: '1'\n+  a: '2'\n"), "{}", out(&o));
    assert_eq!(ok(&["replace", "-f", f]), "configmap/dd replaced\n");
    assert_eq!(cp.get_json(&["cm", "dd"]).unwrap()["data"]["a"], "2");
    assert_eq!(cp.tug(&["diff", "-f", f]).status.code(), Some(0));
    ok(&["delete", "cm", "dd"]);
    assert_eq!(ok(&["wait", "--for=delete", "cm/dd", "--timeout=5s"]), "configmap/dd deleted\n");

    // set env and set resources on a template.
    assert_eq!(ok(&["set", "env", "deploy/d1", "A=1", "B=2"]), "deployment.apps/d1 env updated\n");
    assert_eq!(
        ok(&["set", "env", "deploy/d1", "B-", "A=3", "-c", "web"]),
        "deployment.apps/d1 env updated\n"
    );
    assert_eq!(ok(&["set", "env", "deploy/d1", "--list"]), "# deployments d1, container web\nA=3\n");
    ok(&["create", "configmap", "settings", "--from-literal=log-level=debug"]);
    ok(&["set", "env", "deploy/d1", "--from=configmap/settings", "--prefix=APP_"]);
    let env = &cp.get_json(&["deploy", "d1"]).unwrap()["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(env[1]["name"], "APP_LOG_LEVEL", "{env}");
    assert_eq!(env[1]["valueFrom"]["configMapKeyRef"]["key"], "log-level", "{env}");
    let o = cp.tug(&["set", "env", "deploy/d1", "X=1", "-c", "nope"]);
    assert_eq!(err(&o), "error: unable to find container named \"nope\"");
    assert_eq!(
        ok(&["set", "resources", "deploy/d1", "--limits=cpu=200m,memory=512Mi", "--requests=cpu=100m"]),
        "deployment.apps/d1 resource requirements updated\n"
    );
    let r =
        &cp.get_json(&["deploy", "d1"]).unwrap()["spec"]["template"]["spec"]["containers"][0]["resources"];
    assert_eq!(
        (r["limits"]["memory"].as_str(), r["requests"]["cpu"].as_str()),
        (Some("512Mi"), Some("100m")),
        "{r}"
    );
    let o = cp.tug(&["set", "resources", "deploy/d1", "--limits=cpu=lots"]);
    assert!(err(&o).starts_with("error: cpu=lots: "), "{}", err(&o));

    // apply -f URL, served here on loopback (one answer per connection).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut s = stream;
            let mut buf = [0u8; 4096];
            let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let (status, body) = if req.starts_with("GET /cm.yaml ") {
                ("200 OK", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: from-url}\ndata: {a: b}\n")
            } else if req.starts_with("GET /bad.yaml ") {
                ("200 OK", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad}\ndata: {a: b}\nextra: 1\n")
            } else {
                ("404 Not Found", "")
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let url = format!("http://127.0.0.1:{port}");
    assert_eq!(ok(&["apply", "-f", &format!("{url}/cm.yaml")]), "configmap/from-url created\n");
    let o = cp.tug(&["apply", "-f", &format!("{url}/missing.yaml")]);
    assert_eq!(
        err(&o),
        format!(
            "error: unable to read URL \"{url}/missing.yaml\", server reported 404 Not Found, status code=404"
        )
    );
    let o = cp.tug(&["apply", "-f", &format!("{url}/bad.yaml")]);
    assert!(
        !o.status.success()
            && err(&o).starts_with(&format!("error: {url}/bad.yaml: "))
            && err(&o).contains("extra"),
        "the same strict checks: {}",
        err(&o)
    );
    assert!(cp.get_json(&["cm", "bad"]).is_none());
}

#[test]
fn drain_evicts_within_disruption_budgets() {
    let cp = ControlPlane::start();
    let node = "tug-drain-n1";
    let body = format!(
        "{{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {{\"name\": \"{node}\"}}, \"status\": {{\"allocatable\": {{\"cpu\": \"4\", \"memory\": \"8Gi\", \"pods\": \"110\"}}, \"conditions\": [{{\"type\": \"Ready\", \"status\": \"True\"}}]}}}}"
    );
    assert_eq!(cp.raw("POST", "/api/v1/nodes", "application/json", &body).0, 201);
    assert_eq!(cp.raw("PUT", &format!("/api/v1/nodes/{node}/status"), "application/json", &body).0, 200);
    let apply = |yaml: &str| {
        let o = cp.tug_with_input(&["apply", "-f", "-"], yaml);
        assert!(o.status.success(), "{}", err(&o));
    };
    apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec: {containers: [{name: c, image: busybox:1.36, resources: {requests: {cpu: 100m, memory: 64Mi}}}]}\n",
    );
    apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: bare}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: busybox:1.36}}]\n"
    ));
    // No agent here: the pods are made Running and Ready by hand once placed.
    let on_node = || -> Vec<String> {
        let v = cp.get_json(&["pods", "-l", "app=d"]).unwrap_or(Value::Null);
        v["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|p| p["spec"]["nodeName"] == node)
            .map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert!(tug_integration::wait_for(std::time::Duration::from_secs(20), || on_node().len() == 3));
    let ready = "{\"status\": {\"phase\": \"Running\", \"conditions\": [{\"type\": \"Ready\", \"status\": \"True\", \"lastTransitionTime\": \"2026-01-01T00:00:00Z\"}]}}";
    for p in on_node().iter().chain(std::iter::once(&"bare".to_string())) {
        let path = format!("/api/v1/namespaces/default/pods/{p}/status");
        let (code, body) = cp.raw("PATCH", &path, "application/merge-patch+json", ready);
        assert_eq!(code, 200, "{body}");
    }
    // A kubelet's status, with Kubernetes' newer fields, is taken and kept; a field of the wrong
    // type or one Kubernetes does not have is refused by name.
    let path = "/api/v1/namespaces/default/pods/bare/status";
    let newer = r#"{"status": {"qosClass": "BestEffort", "resize": "InProgress", "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "image": "busybox:1.36", "imageID": "", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}, "allocatedResourcesStatus": [], "user": {"linux": {"uid": 0, "gid": 0}}}]}}"#;
    let (code, body) = cp.raw("PATCH", path, "application/merge-patch+json", newer);
    assert_eq!(code, 200, "{body}");
    let bare = cp.get_json(&["pod", "bare"]).unwrap();
    assert_eq!(bare["status"]["resize"], "InProgress");
    assert_eq!(bare["status"]["containerStatuses"][0]["user"]["linux"]["uid"], 0);
    for (wrong, field) in [
        (
            r#"{"status": {"containerStatuses": [{"name": "c", "restartCount": "three"}]}}"#,
            "status.containerStatuses[0].restartCount",
        ),
        (
            r#"{"status": {"containerStatuses": [{"name": "c", "state": {"sleeping": {}}}]}}"#,
            "status.containerStatuses[0].state.sleeping",
        ),
    ] {
        let (code, body) = cp.raw("PATCH", path, "application/merge-patch+json", wrong);
        assert_eq!(code, 422, "{body}");
        assert!(body.contains(field), "{field}: {body}");
    }
    apply(
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: d}\nspec:\n  minAvailable: 2\n  selector: {matchLabels: {app: d}}\n",
    );
    let allowed = || cp.get_json(&["pdb", "d"]).map(|v| v["status"]["disruptionsAllowed"].clone());
    assert!(
        tug_integration::wait_for(std::time::Duration::from_secs(20), || allowed() == Some(1.into())),
        "{:?}",
        cp.get_json(&["pdb", "d"])
    );
    // describe's layouts for the kinds here.
    let text = |args: &[&str]| {
        let o = cp.tug(args);
        assert!(o.status.success(), "{}", err(&o));
        out(&o)
    };
    let d = text(&["describe", "node", node]);
    assert!(d.contains("Non-terminated Pods:          (4 in total)"), "{d}");
    assert!(d.contains("Allocated resources:\n  (Total limits may be over 100 percent"), "{d}");
    assert!(d.contains("300m (7%)") && d.contains("192Mi (2%)"), "{d}");
    let d = text(&["describe", "pdb", "d"]);
    assert!(
        d.contains("Min available:  2\nSelector:       app=d\nStatus:\n    Allowed disruptions:  1\n"),
        "{d}"
    );
    let d = text(&["describe", "rs"]);
    assert!(d.contains("Controlled By:  Deployment/d\nReplicas:       3 current / 3 desired\n"), "{d}");
    assert!(d.contains("Pods Status:    3 Running / 0 Waiting / 0 Succeeded / 0 Failed\n"), "{d}");
    assert!(d.contains("      cpu:  100m\n"), "{d}");
    text(&["expose", "deploy/d", "--port=80", "--target-port=8080"]);
    let d = text(&["describe", "svc", "d"]);
    assert!(d.contains("Selector:                 app=d\nType:                     ClusterIP\n"), "{d}");
    assert!(
        d.contains("Port:                     <unset>  80/TCP\nTargetPort:               8080/TCP\n"),
        "{d}"
    );
    text(&["create", "job", "j", "--image=busybox:1.36", "--", "true"]);
    let d = text(&["describe", "job", "j"]);
    assert!(
        d.contains("Completion Mode:  NonIndexed\nSuspend:          false\nBackoff Limit:    6\n"),
        "{d}"
    );
    apply(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    let d = text(&["describe", "pvc", "data"]);
    assert!(
        d.contains("Status:        Pending\n")
            && d.contains("VolumeMode:    Filesystem\nUsed By:       <none>\n"),
        "{d}"
    );
    let table = out(&cp.tug(&["get", "pdb"]));
    assert!(table.starts_with("NAME   MIN AVAILABLE   MAX UNAVAILABLE   ALLOWED DISRUPTIONS   AGE\nd      2               N/A               1 "), "{table}");

    // A pod no controller would bring back stops the drain unless --force.
    let o = cp.tug(&["drain", node]);
    assert!(!o.status.success());
    assert_eq!(out(&o), format!("node/{node} cordoned\n"));
    assert!(
        err(&o).contains(&format!("error: unable to drain node \"{node}\" due to error: cannot delete Pods that declare no controller (use --force to override): default/bare, continuing command...")),
        "{}",
        err(&o)
    );
    // With --force: the bare pod and one of d's go; the budget keeps the other two, and the
    // drain gives up at its timeout.
    let o = cp.tug(&["drain", node, "--force", "--grace-period", "0", "--timeout", "7s"]);
    assert!(!o.status.success(), "{}", out(&o));
    let (stdout, stderr) = (out(&o), err(&o));
    assert!(stdout.starts_with(&format!("node/{node} already cordoned\n")), "{stdout}");
    assert!(
        stdout.contains("evicting pod default/bare\n") && stdout.contains("pod/bare evicted\n"),
        "{stdout}"
    );
    // The job's pod (from describe's checks) goes too: it has a controller and no budget.
    assert_eq!(stdout.matches("pod/d-").count(), 1, "one of the budget's three: {stdout}");
    assert!(
        stderr.starts_with("Warning: deleting Pods that declare no controller: default/bare\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "(will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget."
        ),
        "{stderr}"
    );
    assert!(stderr.contains("global timeout reached: 7s"), "{stderr}");
    let v = cp.get_json(&["pdb", "d"]).unwrap();
    assert_eq!(v["status"]["disruptionsAllowed"], 0, "{v}");
    // The raw refusal is Kubernetes' 429 with the budget's numbers.
    let left = on_node();
    let (code, body) = cp.raw(
        "POST",
        &format!("/api/v1/namespaces/default/pods/{}/eviction", left[0]),
        "application/json",
        &format!(
            "{{\"apiVersion\": \"policy/v1\", \"kind\": \"Eviction\", \"metadata\": {{\"name\": \"{}\"}}}}",
            left[0]
        ),
    );
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("The disruption budget d needs 2 healthy pods and has 2 currently"), "{body}");
    // Without the budget the drain completes.
    assert!(cp.tug(&["delete", "pdb", "d"]).status.success());
    let o = cp.tug(&["drain", node, "--grace-period", "0", "--timeout", "30s"]);
    assert!(o.status.success(), "{}\n{}", out(&o), err(&o));
    assert!(out(&o).ends_with(&format!("node/{node} drained\n")), "{}", out(&o));
    assert!(on_node().is_empty());
}

/// LimitRange and ResourceQuota admission: defaults written into new pods (and said in the
/// limit-ranger annotation), bounds refused in Kubernetes' words, quota usage counted in the
/// quota's status and shown by `get quota`, a pod over the quota refused with 403 and a
/// Deployment's ReplicaSet held at what the quota allows (FailedCreate), a deleted pod's
/// room given back.
#[test]
fn limit_ranges_default_and_bound_pods_and_quotas_cap_a_namespace() {
    let cp = ControlPlane::start();
    let setup = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: v1
kind: LimitRange
metadata: {name: limits, namespace: team}
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 128Mi}
    defaultRequest: {cpu: 100m}
    max: {cpu: "1"}
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: compute, namespace: team}
spec:
  hard: {pods: "2", requests.cpu: "1", limits.memory: 1Gi, count/configmaps: "5"}
"#;
    let o = cp.tug_with_input(&["apply", "-f", "-"], setup);
    assert!(o.status.success(), "{}", err(&o));
    let pod = |name: &str, cpu_limit: &str| {
        let limits = if cpu_limit.is_empty() {
            String::new()
        } else {
            format!(", resources: {{limits: {{cpu: '{cpu_limit}'}}}}")
        };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: team}}\nspec:\n  containers: [{{name: c, image: busybox{limits}}}]\n"
        )
    };
    let o = cp.tug_with_input(&["apply", "-f", "-"], &pod("a", ""));
    assert!(o.status.success(), "{}", err(&o));
    let a: Value =
        serde_json::from_str(&out(&cp.tug(&["get", "pod", "a", "-n", "team", "-o", "json"]))).unwrap();
    let r = &a["spec"]["containers"][0]["resources"];
    assert_eq!(
        (r["requests"]["cpu"].as_str(), r["limits"]["cpu"].as_str()),
        (Some("100m"), Some("500m")),
        "{a:#}"
    );
    assert_eq!(r["limits"]["memory"], "128Mi");
    assert_eq!(
        a["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c"
    );
    // Over the LimitRange's max.
    let o = cp.tug_with_input(&["apply", "-f", "-"], &pod("big", "2"));
    assert!(!o.status.success());
    assert!(
        err(&o).contains("pods \"big\" is forbidden: [maximum cpu usage per Container is 1, but limit is 2]"),
        "{}",
        err(&o)
    );
    // The quota's status counts what the namespace holds.
    let counted = tug_integration::wait_for(std::time::Duration::from_secs(10), || {
        out(&cp.tug(&["get", "quota", "-n", "team"])).contains("pods: 1/2, requests.cpu: 100m/1")
    });
    assert!(counted, "{}", out(&cp.tug(&["get", "quota", "-n", "team"])));
    let table = out(&cp.tug(&["get", "quota", "-n", "team"]));
    assert!(table.starts_with("NAME      AGE   REQUEST"), "{table}");
    assert!(
        table.contains("count/configmaps: 1/5, pods: 1/2, requests.cpu: 100m/1   limits.memory: 128Mi/1Gi"),
        "{table}"
    );
    // The second pod fits; a third is refused, 403 with the quota's words.
    assert!(cp.tug_with_input(&["apply", "-f", "-"], &pod("b", "")).status.success());
    let o = cp.tug_with_input(&["apply", "-f", "-"], &pod("c", ""));
    assert!(!o.status.success());
    assert!(
        err(&o).contains("pods \"c\" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"),
        "{}",
        err(&o)
    );
    // A Deployment gets no more than the quota allows: its ReplicaSet says why.
    assert!(cp.tug(&["delete", "pod", "b", "-n", "team"]).status.success());
    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: team}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: busybox}]}\n";
    assert!(cp.tug_with_input(&["apply", "-f", "-"], deploy).status.success());
    let refused = tug_integration::wait_for(std::time::Duration::from_secs(20), || {
        out(&cp.tug(&["get", "events", "-n", "team"])).contains("exceeded quota: compute")
    });
    assert!(refused, "{}", out(&cp.tug(&["get", "events", "-n", "team"])));
    // The room pod b left comes back once the quota controller recounts (the charge held it
    // until then): the Deployment gets one pod.
    let count = || {
        let pods: Value =
            serde_json::from_str(&out(&cp.tug(&["get", "pods", "-n", "team", "-o", "json"]))).unwrap();
        pods["items"].as_array().map_or(0, Vec::len)
    };
    let one = tug_integration::wait_for(std::time::Duration::from_secs(20), || count() == 2);
    assert!(one, "a and one of the Deployment's: {}", out(&cp.tug(&["get", "pods", "-n", "team"])));
    // Removed API versions are refused with the version to use.
    let o = cp.tug_with_input(
        &["apply", "-f", "-"],
        "apiVersion: batch/v1beta1\nkind: CronJob\nmetadata: {name: c, namespace: team}\nspec: {}\n",
    );
    assert!(err(&o).contains("no matches for kind \"CronJob\" in version \"batch/v1beta1\": batch/v1beta1 CronJob was removed in Kubernetes v1.25; use batch/v1"), "{}", err(&o));
}

/// Three replicas over a three-member etcd, each replica and member a simulated host (its
/// own network namespace on one bridge): the replicas start together on the fresh etcd; a
/// killed leader is replaced within 5 s with no acknowledged write lost and no pod made
/// twice; a leader frozen past its lease (SIGSTOP) and resumed does nothing twice; one cut
/// from etcd (its link down) stops leading within its renew deadline; `tug` with every
/// replica in `--server` goes on through all of it.
#[test]
fn three_replicas_fail_over_fast_and_a_replaced_leader_is_fenced() {
    use std::time::{Duration, Instant};
    use tug_integration::cluster::{Cluster, ip};
    let cluster = Cluster::new(6).expect("cluster");
    let members: Vec<&tug_integration::cluster::Node> = cluster.nodes[..3].iter().collect();
    let etcd = tug_integration::etcd::EtcdCluster::start_in(&members);
    let (_secrets, secret) = pki_secret();
    let endpoints = etcd.endpoints_flag();
    let flags =
        ["--store", "etcd", "--etcd-endpoints", endpoints.as_str(), "--pki-secret-file", secret.as_str()];
    // Started together: bootstrap races on the fresh store.
    let mut replicas: Vec<ControlPlane> = std::thread::scope(|s| {
        let started: Vec<_> =
            cluster.nodes[3..].iter().map(|n| s.spawn(|| ControlPlane::start_in(&n.netns, &flags))).collect();
        started.into_iter().map(|h| h.join().expect("a replica started")).collect()
    });
    let replicas_sockets: Vec<String> = replicas.iter().map(|r| r.socket().display().to_string()).collect();
    // The replicas `tug` is given: all but a frozen one (which takes connections and never
    // answers; no client fails over from that).
    let frozen = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let servers = || {
        let skip = frozen.load(std::sync::atomic::Ordering::Relaxed);
        let list: Vec<String> =
            replicas_sockets.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, s)| s.clone()).collect();
        list.join(",")
    };
    let tug = |args: &[&str]| {
        let servers = servers();
        let mut a = vec!["--server", servers.as_str()];
        a.extend_from_slice(args);
        replicas_tug(&a)
    };
    let apply = |yaml: &str| {
        let o = replicas_tug_input(&["--server", &servers(), "apply", "-f", "-"], yaml);
        assert!(o.status.success(), "{}", err(&o));
    };
    // Which replica holds the controllers' Lease (by its socket, in the holder's identity).
    let holder = |replicas: &[ControlPlane], alive: &[bool]| -> Option<usize> {
        let reader = replicas.iter().zip(alive).find(|(_, a)| **a)?.0;
        let (code, body) = reader.raw(
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/tug-system/leases/tug-controllers",
            "",
            "",
        );
        let id = serde_json::from_str::<Value>(&body).ok()?["spec"]["holderIdentity"].as_str()?.to_string();
        (code == 200).then_some(())?;
        replicas.iter().position(|r| id.ends_with(&format!(":{}", r.socket().display())))
    };
    let mut alive = [true, true, true];
    assert!(tug_integration::wait_for(Duration::from_secs(20), || holder(&replicas, &alive).is_some()));
    let pods = || -> Vec<String> {
        let o = tug(&["get", "pods", "-n", "default", "-l", "app=ha", "-o", "name"]);
        let mut names: Vec<String> = out(&o).lines().map(str::to_string).collect();
        names.sort();
        names
    };
    let deployment = |n: u32| HA_APP.replace("REPLICAS", &n.to_string());
    apply(&deployment(3));
    assert!(tug_integration::wait_for(Duration::from_secs(30), || pods().len() == 3), "{:?}", pods());

    // 1. kill -9 of the leader while a client writes through `--server` with every replica.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let writes = std::sync::atomic::AtomicUsize::new(0);
    let written = || writes.load(std::sync::atomic::Ordering::Relaxed);
    let (acked, failover) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("ack-{i}");
                if tug(&["create", "configmap", &name, "-n", "default", "--from-literal=k=v"])
                    .status
                    .success()
                {
                    acked.push(name);
                    writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                i += 1;
            }
            acked
        });
        assert!(
            tug_integration::wait_for(Duration::from_secs(10), || written() >= 10),
            "no writes before the kill"
        );
        let first = holder(&replicas, &alive).expect("a leader");
        let killed = Instant::now();
        replicas[first].kill9();
        alive[first] = false;
        let moved = tug_integration::wait_for(Duration::from_secs(20), || {
            holder(&replicas, &alive).is_some_and(|h| h != first)
        });
        let failover = killed.elapsed();
        assert!(moved, "no new leader");
        // The client goes on through the survivors.
        let after = written();
        assert!(tug_integration::wait_for(Duration::from_secs(10), || written() >= after + 10));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (writer.join().unwrap(), failover)
    });
    eprintln!("BENCH-FIGURE ha failover_ms={} acked_writes={}", failover.as_millis(), acked.len());
    assert!(failover < Duration::from_secs(5), "a new leader {failover:?} after the kill");
    let stored = out(&tug(&["get", "configmaps", "-n", "default", "-o", "name"]));
    let lost: Vec<&String> = acked.iter().filter(|n| !stored.contains(&format!("configmap/{n}\n"))).collect();
    assert!(lost.is_empty() && !acked.is_empty(), "acknowledged writes lost: {lost:?} of {}", acked.len());
    // The new leader scales once: exactly 6 pods, and they stay 6.
    apply(&deployment(6));
    assert!(tug_integration::wait_for(Duration::from_secs(30), || pods().len() == 6), "{:?}", pods());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pods().len(), 6);

    // 2. The leader frozen past its lease, then resumed: its term is over, and whatever it
    // still tries is fenced off — no pod made or removed by it.
    let second = holder(&replicas, &alive).expect("a leader");
    replicas[second].signal(nix::sys::signal::Signal::SIGSTOP);
    frozen.store(second, std::sync::atomic::Ordering::Relaxed);
    let awake: Vec<bool> = (0..3).map(|i| alive[i] && i != second).collect();
    let moved = tug_integration::wait_for(Duration::from_secs(20), || {
        holder(&replicas, &awake).is_some_and(|h| h != second)
    });
    assert!(moved, "no takeover from a frozen leader");
    apply(&deployment(9));
    assert!(tug_integration::wait_for(Duration::from_secs(30), || pods().len() == 9), "{:?}", pods());
    let before = pods();
    replicas[second].signal(nix::sys::signal::Signal::SIGCONT);
    frozen.store(usize::MAX, std::sync::atomic::Ordering::Relaxed);
    let stepped_down = tug_integration::wait_for(Duration::from_secs(10), || {
        replicas[second].log().contains("controllers: no longer leading")
    });
    assert!(stepped_down, "{}", replicas[second].log());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pods(), before, "the resumed leader changed the pods");

    // 3. The leader cut from etcd (its link down) stops within its renew deadline (2 s).
    let third = holder(&replicas, &alive).expect("a leader");
    let port = format!("v{}", third + 3);
    let stops_before = replicas[third].log().matches("controllers: no longer leading").count();
    let cut = Instant::now();
    ip(&["-n", &cluster.hub, "link", "set", &port, "down"]).expect("cut the link");
    let stopped = tug_integration::wait_for(Duration::from_secs(10), || {
        replicas[third].log().matches("controllers: no longer leading").count() > stops_before
    });
    let stopped_after = cut.elapsed();
    eprintln!("BENCH-FIGURE ha partitioned_leader_stopped_ms={}", stopped_after.as_millis());
    assert!(stopped && stopped_after < Duration::from_secs(4), "stopped {stopped} after {stopped_after:?}");
    // Another takes over meanwhile; the mended replica follows it.
    let others: Vec<bool> = (0..3).map(|i| alive[i] && i != third).collect();
    let moved = tug_integration::wait_for(Duration::from_secs(20), || {
        holder(&replicas, &others).is_some_and(|h| h != third)
    });
    ip(&["-n", &cluster.hub, "link", "set", &port, "up"]).expect("mend the link");
    assert!(moved, "no takeover from the cut-off leader");
    assert_eq!(pods(), before, "nothing done twice across three leaders");

    // 4. Pods created through every replica at once are bound by the leader alone (the
    // scheduler runs with the controllers): no node overcommitted, no pod bound twice.
    let node = |name: &str| {
        let body = format!(
            "{{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {{\"name\": \"{name}\"}}, \"status\": {{\"allocatable\": {{\"cpu\": \"1\", \"memory\": \"8Gi\", \"pods\": \"110\"}}, \"conditions\": [{{\"type\": \"Ready\", \"status\": \"True\"}}]}}}}"
        );
        let r = &replicas[(0..3).find(|i| alive[*i]).unwrap()];
        assert_eq!(r.raw("POST", "/api/v1/nodes", "application/json", &body).0, 201);
        assert_eq!(r.raw("PUT", &format!("/api/v1/nodes/{name}/status"), "application/json", &body).0, 200);
    };
    node("tug-fit-a");
    node("tug-fit-b");
    let o = tug(&["create", "namespace", "binds"]);
    assert!(o.status.success(), "{}", err(&o));
    std::thread::scope(|s| {
        for (t, r) in replicas.iter().enumerate().filter(|(i, _)| alive[*i]) {
            s.spawn(move || {
                let docs: Vec<String> = (0..15)
                    .map(|i| format!(
                        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{t}-{i}, namespace: binds}}\nspec:\n  containers:\n  - name: c\n    image: busybox:1.36\n    resources: {{requests: {{cpu: 100m}}}}\n"
                    ))
                    .collect();
                let o = r.tug_with_input(&["apply", "-f", "-"], &docs.join("---\n"));
                assert!(o.status.success(), "{}", err(&o));
            });
        }
    });
    let placed = || -> Vec<(String, String)> {
        let o = tug(&["get", "pods", "-n", "binds", "-o", "json"]);
        serde_json::from_str::<Value>(&out(&o))
            .ok()
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                Some((
                    p["metadata"]["name"].as_str()?.to_string(),
                    p["spec"]["nodeName"].as_str()?.to_string(),
                ))
            })
            .collect()
    };
    // 30 pods of 100m on two nodes of one CPU: exactly 20 fit.
    if !tug_integration::wait_for(Duration::from_secs(30), || placed().len() == 20) {
        for r in &replicas {
            let l = r.log();
            eprintln!("=== LOG\n{}", &l[l.len().saturating_sub(6000)..]);
        }
        panic!("{:?}", placed());
    }
    std::thread::sleep(Duration::from_secs(2));
    let placed = placed();
    assert_eq!(placed.len(), 20);
    for n in ["tug-fit-a", "tug-fit-b"] {
        assert!(placed.iter().filter(|(_, node)| node == n).count() <= 10, "{n} overcommitted: {placed:?}");
    }
    let events = tug(&["get", "events", "-n", "binds", "-o", "json"]);
    let events: Value = serde_json::from_str(&out(&events)).unwrap_or(Value::Null);
    for (pod, _) in &placed {
        let scheduled = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["reason"] == "Scheduled" && e["involvedObject"]["name"] == pod.as_str())
            .map(|e| e["count"].as_u64().unwrap_or(1))
            .sum::<u64>();
        assert_eq!(scheduled, 1, "{pod} bound {scheduled} times");
    }
    let binder = holder(&replicas, &alive).expect("a leader");
    for (i, r) in replicas.iter().enumerate().filter(|(i, _)| alive[*i]) {
        let text = out(&r.tug(&["get", "--raw", "/metrics"]));
        let bound: f64 = text
            .lines()
            .filter(|l| l.starts_with("scheduler_schedule_attempts_total{result=\"scheduled\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(bound > 0.0, i == binder, "replica {i} bound {bound} pods; the leader is {binder}");
    }
    drop(replicas.drain(..));
}

const HA_APP: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: ha, namespace: default}
spec:
  replicas: REPLICAS
  selector: {matchLabels: {app: ha}}
  template:
    metadata: {labels: {app: ha}}
    spec:
      containers:
      - {name: c, image: 'busybox:1.36'}
";

/// `tug ARGS` with no socket of its own (the args name the servers).
fn replicas_tug(args: &[&str]) -> std::process::Output {
    replicas_tug_input(args, "")
}

fn replicas_tug_input(args: &[&str], stdin: &str) -> std::process::Output {
    tug_integration::control_plane::run_tug(None, args, stdin)
}

/// `/metrics`: the API's requests by verb, resource and code, open watches, the store's calls
/// and fsyncs, scheduling attempts, the controllers' queues and the leader's status, in
/// Kubernetes' names; read by `tug get --raw` as an admin, refused to others but the
/// `system:monitoring` group.
#[test]
fn metrics_count_requests_watches_store_calls_scheduling_and_controllers() {
    use std::time::Duration;
    let cp = ControlPlane::start();
    cp.apply(&HA_APP.replace("REPLICAS", "2"));
    assert!(tug_integration::wait_for(Duration::from_secs(20), || {
        out(&cp.tug(&["get", "pods", "-l", "app=ha", "-o", "name"])).lines().count() == 2
    }));
    let o = cp.tug(&["get", "pods", "nope"]);
    assert!(!o.status.success());
    // A watch held open while the metrics are read.
    let mut watch = std::process::Command::new(tug_integration::bins::path("tug-cli", "tug"))
        .env("TUG_SOCKET", cp.socket())
        .args(["get", "configmaps", "-w"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics = || out(&cp.tug(&["get", "--raw", "/metrics"]));
    let value = |text: &str, series: &str| -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    let watching = "apiserver_longrunning_requests{verb=\"WATCH\",group=\"\",resource=\"configmaps\"}";
    assert!(
        tug_integration::wait_for(Duration::from_secs(10), || value(&metrics(), watching) == Some(1.0)),
        "{}",
        metrics()
    );
    let text = metrics();
    let has = |series: &str| value(&text, series).is_some_and(|v| v > 0.0);
    for series in [
        "apiserver_request_total{verb=\"LIST\",group=\"\",resource=\"pods\",subresource=\"\",code=\"200\"}",
        "apiserver_request_total{verb=\"GET\",group=\"\",resource=\"pods\",subresource=\"\",code=\"404\"}",
        "apiserver_request_total{verb=\"APPLY\",group=\"apps\",resource=\"deployments\",subresource=\"\",code=\"201\"}",
        "apiserver_request_duration_seconds_count{verb=\"LIST\",group=\"\",resource=\"pods\",subresource=\"\"}",
        "tug_store_request_duration_seconds_count{operation=\"create\"}",
        "tug_store_fsync_duration_seconds_count",
        "workqueue_work_duration_seconds_count{name=\"replicaset\"}",
        "leader_election_master_status{name=\"tug-controllers\"}",
    ] {
        assert!(has(series), "{series} missing or zero in:\n{text}");
    }
    assert!(text.contains("# TYPE scheduler_schedule_attempts counter"), "{text}");
    assert!(text.contains("workqueue_depth{name=\"deployment\"}"), "{text}");
    let _ = watch.kill();
    let _ = watch.wait();
    // The server sees a watcher gone at its next write to it.
    let o = cp.tug(&["create", "configmap", "wake", "--from-literal=k=v"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(tug_integration::wait_for(Duration::from_secs(10), || value(&metrics(), watching) == Some(0.0)));
    // Behind authorization: the monitoring group may read it, an ordinary user not.
    let can = |groups: &[&str]| {
        let mut a = vec!["auth", "can-i", "get", "/metrics", "--as", "alice"];
        for g in groups {
            a.extend(["--as-group", g]);
        }
        out(&cp.tug(&a)).trim().to_string()
    };
    assert_eq!(can(&["system:authenticated"]), "no");
    assert_eq!(can(&["system:authenticated", "system:monitoring"]), "yes");
}

/// Hollow nodes (`tug-hollow`): they register and keep their Leases, their pods are bound
/// and reported Running and Ready, and a deleted pod's graceful deletion is confirmed — the
/// agent's API traffic without a kernel, which `make bench AREA=scale` multiplies.
#[test]
fn hollow_nodes_register_heartbeat_and_run_their_pods() {
    use std::time::Duration;
    let cp = ControlPlane::start();
    let mut hollow = std::process::Command::new(tug_integration::bins::path("tug-agent", "tug-hollow"))
        .arg("--socket")
        .arg(cp.socket())
        .args(["--nodes", "3", "--name-prefix", "tug-hollow", "--lease-renew", "1s", "--report", "1s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its reports, as they come (one a second).
    let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let (stdout, reports) = (hollow.stdout.take().unwrap(), std::sync::Arc::clone(&reports));
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                reports.lock().unwrap().push(line);
            }
        });
    }
    let ready = |n: &Value| {
        n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    };
    let nodes_ready = tug_integration::wait_for(Duration::from_secs(20), || {
        cp.get_json(&["nodes"])
            .and_then(|l| l["items"].as_array().cloned())
            .is_some_and(|items| items.len() == 3 && items.iter().all(ready))
    });
    assert!(nodes_ready, "{:?}", cp.get_json(&["nodes"]));
    cp.apply(&HA_APP.replace("REPLICAS", "6"));
    let running = || -> Vec<Value> {
        cp.get_json(&["pods", "-l", "app=ha"])
            .and_then(|l| l["items"].as_array().cloned())
            .unwrap_or_default()
    };
    let all_running = tug_integration::wait_for(Duration::from_secs(30), || {
        let pods = running();
        pods.len() == 6
            && pods.iter().all(|p| {
                p["status"]["phase"] == "Running"
                    && p["spec"]["nodeName"].as_str().is_some_and(|n| n.starts_with("tug-hollow-"))
                    && p["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    });
    assert!(all_running, "{:#?}", running());
    // The Deployment sees them available; a scale-down's deletions are confirmed by the nodes.
    let o = cp.tug(&["scale", "deployment/ha", "--replicas", "2"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(tug_integration::wait_for(Duration::from_secs(30), || running().len() == 2), "{:#?}", running());
    // Heartbeats: every node's Lease is renewed.
    let lease = |n: &str| {
        let (_, body) = cp.raw(
            "GET",
            &format!("/apis/coordination.k8s.io/v1/namespaces/tug-node-lease/leases/{n}"),
            "",
            "",
        );
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|l| l["spec"]["renewTime"].as_str().map(str::to_string))
    };
    let first = lease("tug-hollow-0").expect("a lease");
    assert!(tug_integration::wait_for(Duration::from_secs(10), || lease("tug-hollow-0")
        .is_some_and(|t| t != first)));
    // They act as their nodes (impersonated, as an agent's certificate names it): their
    // requests took seats of the nodes' priority levels — heartbeats `node-high`, their pods'
    // status `system` — and an operator's (`system:masters`) none.
    let text = out(&cp.tug(&["get", "--raw", "/metrics"]));
    let count = |level: &str| -> f64 {
        let series = format!(
            "apiserver_flowcontrol_request_wait_duration_seconds_count{{priority_level=\"{level}\"}}"
        );
        text.lines().find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok()).unwrap_or(0.0)
    };
    assert!(count("node-high") >= 6.0 && count("system") >= 6.0, "{text}");
    assert!(!text.contains("priority_level=\"exempt\""), "{text}");
    assert!(
        text.contains("apiserver_flowcontrol_nominal_limit_seats{priority_level=\"node-high\"} 28"),
        "{text}"
    );
    // A report after all the above (the whole test may take less than its first second).
    let last =
        || reports.lock().unwrap().iter().rfind(|l| l.starts_with("HOLLOW ")).cloned().unwrap_or_default();
    let reported = tug_integration::wait_for(Duration::from_secs(10), || last().contains("started=6"));
    let _ = hollow.kill();
    let out = hollow.wait_with_output().unwrap();
    assert!(
        reported && last().contains("registered=3") && last().contains("errors=0"),
        "{}\n{}",
        last(),
        String::from_utf8_lossy(&out.stderr)
    );
}
