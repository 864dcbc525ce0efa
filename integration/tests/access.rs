//! Access control end to end: node certificates from `tug join` are only their node, users
//! from `tug create user` get exactly what RBAC binds to them, local users on the socket are
//! who their uid is, and nobody grants what they do not hold.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use tug_integration::control_plane::ControlPlane;

/// A control plane with its TLS listener; (the control plane, https URL, join token).
fn control_plane(extra: &[&str]) -> (ControlPlane, String, String) {
    let port = tug_integration::images::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", addr.as_str()];
    args.extend_from_slice(extra);
    let cp = ControlPlane::start_with(&args);
    let token =
        cp.log().split_whitespace().find(|w| w.starts_with("tug::")).expect("the join token").to_string();
    (cp, format!("https://{addr}"), token)
}

/// `tug ARGS` over TLS with the credentials in `dir`.
fn tug_as(url: &str, dir: &Path, args: &[&str], stdin: &str) -> Output {
    let dir = dir.to_str().expect("a UTF-8 path");
    let mut all = vec!["--server", url, "--tls-dir", dir];
    all.extend_from_slice(args);
    tug_integration::control_plane::run_tug(None, &all, stdin)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

fn refused(o: Output, expect: &str) {
    assert!(!o.status.success(), "expected a refusal containing {expect:?}: {}", text(&o));
    assert!(text(&o).contains(expect), "expected {expect:?} in: {}", text(&o));
}

/// A GET with a client of these credentials: the HTTP status code.
fn get_code(url: &str, dir: &Path, path: &str) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = tug_client::Client::new(Some(url), dir).expect("client");
        match client.get(path).await {
            Ok(_) => 200,
            Err(tug_client::CallError::Server(s)) => s.code,
            Err(e) => panic!("{path}: {e}"),
        }
    })
}

/// A POST with a client of these credentials: (status code, the Status message).
fn post(url: &str, dir: &Path, path: &str, body: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = tug_client::Client::new(Some(url), dir).expect("client");
        match client.call(tug_client::Method::POST, path, "application/json", body.as_bytes().to_vec()).await
        {
            Ok(_) => (201, String::new()),
            Err(tug_client::CallError::Server(s)) => (s.code, s.message),
            Err(e) => panic!("{path}: {e}"),
        }
    })
}

const PODS: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: s1}
stringData: {k: one}
---
apiVersion: v1
kind: Secret
metadata: {name: s2}
stringData: {k: two}
---
apiVersion: v1
kind: Pod
metadata: {name: on-n1}
spec:
  nodeName: tug-n1
  containers: [{name: c, image: x, env: [{name: A, valueFrom: {secretKeyRef: {name: s1, key: k}}}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: on-n2}
spec:
  nodeName: tug-n2
  containers: [{name: c, image: x, env: [{name: A, valueFrom: {secretKeyRef: {name: s2, key: k}}}]}]
"#;

#[test]
fn a_node_certificate_is_only_its_own_node() {
    let (cp, url, token) = control_plane(&[]);
    let creds = tempfile::Builder::new().prefix("tug-creds").tempdir().unwrap();
    let n1 = creds.path().join("n1");
    ok(tug_as(&url, &n1, &["join", &url, "--token", &token, "--name", "tug-n1"], ""));
    cp.apply(PODS);
    let who = ok(tug_as(&url, &n1, &["auth", "whoami"], ""));
    assert!(who.contains("system:node:tug-n1") && who.contains("system:nodes"), "{who}");
    // Its own pod's secret, yes; another node's pod's secret, no; the list, no.
    ok(tug_as(&url, &n1, &["get", "secret", "s1"], ""));
    refused(
        tug_as(&url, &n1, &["get", "secret", "s2"], ""),
        r#"secrets "s2" is forbidden: User "system:node:tug-n1" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node 'tug-n1' and this object"#,
    );
    refused(tug_as(&url, &n1, &["get", "secrets"], ""), "can only get individual resources of this type");
    // It cannot create pods (nor so bind them anywhere), nor touch another node's.
    refused(
        tug_as(
            &url,
            &n1,
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: Pod\nmetadata: {name: evil}\nspec:\n  nodeName: tug-n2\n  containers: [{name: c, image: x}]\n",
        ),
        "forbidden",
    );
    refused(
        tug_as(&url, &n1, &["delete", "pod", "on-n2", "--now"], ""),
        "can only delete pods with spec.nodeName set to itself",
    );
    // Nor rebind one: a pod's spec is not a node's to write.
    let mut pod = cp.get_json(&["pod", "on-n1"]).unwrap();
    pod["spec"]["nodeName"] = "tug-n2".into();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let put = rt.block_on(async {
        let client = tug_client::Client::new(Some(url.as_str()), &n1).unwrap();
        client
            .call(
                tug_client::Method::PUT,
                "/api/v1/namespaces/default/pods/on-n1",
                "application/json",
                pod.to_string().into_bytes(),
            )
            .await
    });
    assert!(matches!(&put, Err(tug_client::CallError::Server(s)) if s.code == 403), "{put:?}");
    // The tunnel: only under its own name.
    assert_eq!(get_code(&url, &n1, "/api/v1/nodes/tug-n2/tunnel"), 403);
    // Not an admin: no namespaces, no RBAC.
    refused(tug_as(&url, &n1, &["create", "namespace", "evil"], ""), "forbidden");
    refused(tug_as(&url, &n1, &["get", "clusterroles"], ""), "forbidden");
    // And it can register only itself.
    refused(
        tug_as(&url, &n1, &["apply", "-f", "-"], "apiVersion: v1\nkind: Node\nmetadata: {name: tug-n2}\n"),
        "node 'tug-n1' cannot modify node 'tug-n2'",
    );
    let (code, message) = post(
        &url,
        &n1,
        "/api/v1/nodes",
        r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "tug-n3"}}"#,
    );
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("node 'tug-n1' may only create its own Node object"), "{message}");
    ok(tug_as(&url, &n1, &["apply", "-f", "-"], "apiVersion: v1\nkind: Node\nmetadata: {name: tug-n1}\n"));
}

#[test]
fn roles_grant_exactly_their_verbs_and_cannot_escalate() {
    let (cp, url, _) = control_plane(&[]);
    let creds = tempfile::Builder::new().prefix("tug-creds").tempdir().unwrap();
    let alice = creds.path().join("alice");
    let out = ok(cp.tug(&["create", "user", "alice", "--group", "dev", "--dir", alice.to_str().unwrap()]));
    assert!(out.contains("user/alice created"), "{out}");
    let who = ok(tug_as(&url, &alice, &["auth", "whoami"], ""));
    assert!(who.contains("alice") && who.contains("[dev system:authenticated]"), "{who}");
    refused(
        tug_as(&url, &alice, &["get", "pods"], ""),
        r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "default""#,
    );
    cp.apply(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: default}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list]}
- {apiGroups: [rbac.authorization.k8s.io], resources: [roles, rolebindings], verbs: [create, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-reads, namespace: default}
subjects: [{kind: Group, name: dev}]
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec: {containers: [{name: c, image: x}]}
"#,
    );
    ok(tug_as(&url, &alice, &["get", "pods"], ""));
    refused(tug_as(&url, &alice, &["delete", "pod", "web"], ""), r#"cannot delete resource "pods""#);
    refused(tug_as(&url, &alice, &["get", "pods", "-n", "other"], ""), r#"in the namespace "other""#);
    refused(tug_as(&url, &alice, &["get", "secrets"], ""), "forbidden");
    assert_eq!(ok(tug_as(&url, &alice, &["auth", "can-i", "list", "pods"], "")).trim(), "yes");
    let no = tug_as(&url, &alice, &["auth", "can-i", "delete", "pods"], "");
    assert_eq!((no.status.code(), text(&no).trim()), (Some(1), "no"));
    // The admin asks on alice's behalf (impersonation); alice may not impersonate anyone.
    assert_eq!(
        ok(cp.tug(&["auth", "can-i", "get", "pods", "--as", "alice", "--as-group", "dev"])).trim(),
        "yes"
    );
    refused(tug_as(&url, &alice, &["auth", "can-i", "get", "pods", "--as", "bob"], ""), "cannot impersonate");
    // A Role granting what alice does not hold is refused; one within her rights is not.
    refused(
        tug_as(
            &url,
            &alice,
            &["apply", "-f", "-"],
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: more}\nrules: [{apiGroups: [''], resources: [secrets], verbs: [get]}]\n",
        ),
        "is attempting to grant RBAC permissions not currently held",
    );
    ok(tug_as(
        &url,
        &alice,
        &["apply", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: less}\nrules: [{apiGroups: [''], resources: [pods], verbs: [get]}]\n",
    ));
    // Nor may she bind herself to admin.
    refused(
        tug_as(
            &url,
            &alice,
            &["apply", "-f", "-"],
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: up}\nsubjects: [{kind: User, name: alice}]\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin}\n",
        ),
        "not currently held",
    );
    // A `view` user reads pods but cannot exec into them, nor read secrets.
    let bob = creds.path().join("bob");
    ok(cp.tug(&["create", "user", "bob", "--dir", bob.to_str().unwrap()]));
    cp.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: bob-views}\nsubjects: [{kind: User, name: bob}]\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n");
    ok(tug_as(&url, &bob, &["get", "pods", "web"], ""));
    refused(tug_as(&url, &bob, &["exec", "web", "--", "true"], ""), r#"cannot create resource "pods/exec""#);
    refused(tug_as(&url, &bob, &["get", "secrets"], ""), "forbidden");
    // Any number of groups, one O each, and the TLS listener takes the certificate.
    let dave = creds.path().join("dave");
    ok(cp.tug(&[
        "create",
        "user",
        "dave",
        "--group",
        "qa",
        "--group",
        "ops",
        "--group",
        "dev",
        "--dir",
        dave.to_str().unwrap(),
    ]));
    let who = ok(tug_as(&url, &dave, &["auth", "whoami"], ""));
    assert!(who.contains("[qa ops dev system:authenticated]"), "{who}");
    ok(tug_as(&url, &dave, &["get", "pods"], ""));
    // A kubeconfig for kubectl carries the same identity.
    let kc = ok(cp.tug(&["create", "user", "carol", "-o", "kubeconfig", "--cluster-url", &url]));
    assert!(kc.contains("client-certificate-data") && kc.contains(&url), "{kc}");
}

#[test]
fn a_local_user_on_the_socket_is_refused_until_bound() {
    let cp = ControlPlane::start_with(&["--socket-group", "nogroup"]);
    // nobody must reach the socket: the test's directory is the only one in the way.
    std::fs::set_permissions(cp.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new(tug_integration::bins::path("tug-cli", "tug"))
            .env("TUG_SOCKET", cp.socket())
            .env("HOME", "/nonexistent")
            .args(args)
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .output()
            .expect("run tug")
    };
    let who = ok(as_nobody(&["auth", "whoami"]));
    assert!(who.contains("nobody") && !who.contains("system:masters"), "{who}");
    refused(as_nobody(&["get", "pods"]), r#"User "nobody" cannot list resource "pods""#);
    cp.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: nobody-views}\nsubjects: [{kind: User, name: nobody}]\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n");
    ok(as_nobody(&["get", "pods"]));
    refused(as_nobody(&["create", "namespace", "x"]), "forbidden");
    // Root on the socket is the cluster's admin.
    let root = ok(cp.tug(&["auth", "whoami"]));
    assert!(root.contains("system:admin") && root.contains("system:masters"), "{root}");
}

#[test]
fn pod_security_levels_refuse_warn_and_hold_for_controllers() {
    let cp = ControlPlane::start();
    // The cluster default is baseline: no host access in `default`.
    let out = cp.tug_with_input(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: root}\nspec:\n  hostNetwork: true\n  containers: [{name: c, image: x, securityContext: {privileged: true}}]\n  volumes: [{name: all, hostPath: {path: /}}]\n",
    );
    refused(
        out,
        r#"pods "root" is forbidden: violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true), hostPath volumes (volume "all"), privileged (container "c" must not set securityContext.privileged=true)"#,
    );
    // restricted refuses a pod running as root, in Kubernetes' words.
    cp.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: tug-strict, labels: {pod-security.kubernetes.io/enforce: restricted}}\n");
    refused(
        cp.tug_with_input(
            &["apply", "-n", "tug-strict", "-f", "-"],
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: c, image: x}]}\n",
        ),
        r#"pods "web" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#,
    );
    ok(cp.tug_with_input(
        &["apply", "-n", "tug-strict", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  securityContext: {runAsNonRoot: true, runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}\n  containers: [{name: c, image: x, securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}}]\n",
    ));
    // warn: admitted, with the warning printed.
    cp.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: tug-warned, labels: {pod-security.kubernetes.io/warn: restricted}}\n");
    let out = ok(cp.tug_with_input(
        &["apply", "-n", "tug-warned", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: c, image: x}]}\n",
    ));
    assert!(
        out.contains(
            r#"Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#
        ),
        "{out}"
    );
    // A bad level is refused.
    refused(
        cp.tug_with_input(&["apply", "-f", "-"], "apiVersion: v1\nkind: Namespace\nmetadata: {name: tug-bad, labels: {pod-security.kubernetes.io/enforce: strict}}\n"),
        r#"Invalid value: "strict": must be one of privileged, baseline, restricted"#,
    );
    // Controllers' pods are held to it too: the ReplicaSet says why it has none.
    cp.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: hosty}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: hosty}}\n  template:\n    metadata: {labels: {app: hosty}}\n    spec: {hostNetwork: true, containers: [{name: c, image: x}]}\n",
    );
    let said = tug_integration::wait_for(std::time::Duration::from_secs(20), || {
        cp.get_json(&["events"]).is_some_and(|e| {
            e["items"].as_array().into_iter().flatten().any(|ev| {
                ev["reason"] == "FailedCreate"
                    && ev["message"].as_str().is_some_and(|m| {
                        m.contains(
                            r#"violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)"#,
                        )
                    })
            })
        })
    });
    assert!(said, "{:?}", cp.get_json(&["events"]));
    assert_eq!(cp.get_json(&["pods"]).map(|p| p["items"].as_array().map_or(0, Vec::len)), Some(0));
}

const KEY1: &str = "c2VjcmV0IGlzIHNlY3VyZSwgaSB0aGluayBzbyE/Pz8=";
const KEY2: &str = "dGhpcyBpcyBhIHNlY29uZCBrZXkgb2YgMzIgYnl0ZXM=";

fn encryption_config(keys: &[(&str, &str)]) -> String {
    let keys: Vec<String> = keys.iter().map(|(n, k)| format!("{{name: {n}, secret: \"{k}\"}}")).collect();
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm: {{keys: [{}]}}\n  - identity: {{}}\n",
        keys.join(", ")
    )
}

/// Whether any file under `dir` holds `needle`.
fn found_under(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            found_under(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        }
    })
}

#[test]
fn secrets_are_encrypted_at_rest_and_keys_rotate() {
    let keys = tempfile::Builder::new().prefix("tug-enc").tempdir().unwrap();
    let config = keys.path().join("encryption.yaml");
    std::fs::write(&config, encryption_config(&[("k1", KEY1)])).unwrap();
    let mut cp = ControlPlane::start_with(&["--encryption-config", config.to_str().unwrap()]);
    ok(cp.tug(&["create", "secret", "generic", "db", "--from-literal=password=tug-very-secret-value"]));
    let out = ok(cp.tug(&["get", "secret", "db", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
    assert_eq!(v["data"]["password"], "dHVnLXZlcnktc2VjcmV0LXZhbHVl", "read back in clear");
    // Neither the value nor its base64 is anywhere in the data directory.
    cp.terminate(std::time::Duration::from_secs(10));
    assert!(!found_under(&cp.data_dir(), b"tug-very-secret-value"));
    assert!(!found_under(&cp.data_dir(), b"dHVnLXZlcnktc2VjcmV0LXZhbHVl"));
    assert!(found_under(&cp.data_dir(), b"k8s:enc:aesgcm:v1:k1:"));
    // The CA's key is in its 0600 file, not in the store in clear.
    let store = std::fs::read(cp.data_dir().join("store.redb")).unwrap();
    assert!(!store.windows(11).any(|w| w == b"PRIVATE KEY"), "the CA key in clear in the store");
    // Rotation: the new key first, the old one still read; then everything is rewritten.
    std::fs::write(&config, encryption_config(&[("k2", KEY2), ("k1", KEY1)])).unwrap();
    cp.start_again();
    let out = ok(cp.tug(&["admin", "reencrypt"]));
    assert!(out.contains("re-encrypted 2 objects (secrets, the cluster CA)"), "{out}");
    let out = ok(cp.tug(&["get", "secret", "db", "-o", "json"]));
    assert!(out.contains("dHVnLXZlcnktc2VjcmV0LXZhbHVl"), "{out}");
    cp.terminate(std::time::Duration::from_secs(10));
    assert!(found_under(&cp.data_dir(), b"k8s:enc:aesgcm:v1:k2:"));
    // A bad configuration stops the server with the field named.
    std::fs::write(&config, "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers: [{aesgcm: {keys: [{name: k, secret: c2hvcnQ=}]}}]\n").unwrap();
    let out = Command::new(tug_integration::bins::path("tug-scheduler", "tug-scheduler"))
        .args(["--socket", cp.dir().join("other.sock").to_str().unwrap(), "--data-dir"])
        .arg(cp.data_dir())
        .args(["--encryption-config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("resources[0].providers[0].aesgcm.keys[0].secret"), "{}", text(&out));
}

#[test]
fn the_audit_log_records_who_did_what_allowed_or_denied() {
    let dir = tempfile::Builder::new().prefix("tug-audit").tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  nonResourceURLs: [/healthz]\n- level: Metadata\n  resources: [{group: '', resources: [secrets]}]\n- level: Request\n  verbs: [create]\n- level: Metadata\n",
    )
    .unwrap();
    let (cp, url, _) = control_plane(&[
        "--audit-log",
        log.to_str().unwrap(),
        "--audit-policy-file",
        policy.to_str().unwrap(),
    ]);
    let alice = dir.path().join("alice");
    ok(cp.tug(&["create", "user", "alice", "--dir", alice.to_str().unwrap()]));
    refused(tug_as(&url, &alice, &["get", "pods"], ""), "forbidden");
    ok(cp.tug(&["create", "configmap", "audited", "--from-literal=k=v"]));
    ok(cp.tug(&["create", "secret", "generic", "hidden", "--from-literal=k=do-not-log-me"]));
    // Pod Security's audit level notes what it would refuse.
    cp.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: tug-audited, labels: {pod-security.kubernetes.io/audit: restricted}}\n");
    ok(cp.tug_with_input(
        &["apply", "-n", "tug-audited", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: root}\nspec: {containers: [{name: c, image: x}]}\n",
    ));
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let denied = events
        .iter()
        .find(|e| e["user"]["username"] == "alice" && e["verb"] == "list")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(denied["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(denied["annotations"]["authorization.k8s.io/decision"], "forbid");
    assert_eq!(denied["responseStatus"]["code"], 403);
    assert_eq!(denied["objectRef"]["resource"], "pods");
    assert_eq!(denied["sourceIPs"][0], "127.0.0.1", "a TLS client's address");
    let created = events
        .iter()
        .find(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "configmaps")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        (created["level"].as_str(), created["user"]["username"].as_str()),
        (Some("Request"), Some("system:admin"))
    );
    assert_eq!(created["requestObject"]["data"]["k"], "v");
    assert_eq!(created["responseStatus"]["code"], 201);
    assert!(
        !text.contains("do-not-log-me") && !text.contains("ZG8tbm90LWxvZy1tZQ"),
        "a secret's value in the audit log"
    );
    assert!(!text.contains("\"/healthz\""), "the policy's None");
    let audited = events
        .iter()
        .find(|e| e["objectRef"]["namespace"] == "tug-audited" && e["objectRef"]["resource"] == "pods")
        .unwrap_or_else(|| panic!("{text}"));
    let note =
        audited["annotations"]["pod-security.kubernetes.io/audit-violations"].as_str().unwrap_or_default();
    assert!(
        note.starts_with(
            r#"would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#
        ),
        "{audited}"
    );
    let mode = std::fs::metadata(&log).unwrap().permissions();
    assert_eq!(mode.mode() & 0o777, 0o600);
}

#[test]
fn service_accounts_get_tokens_and_rbac_binds_them() {
    let cp = ControlPlane::start();
    // Every namespace has its default account and the cluster CA.
    cp.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: tug-team}\n");
    assert!(cp.get_json(&["serviceaccount", "default", "-n", "tug-team"]).is_some());
    let ca = cp.get_json(&["configmap", "kube-root-ca.crt", "-n", "tug-team"]).unwrap();
    assert!(ca["data"]["ca.crt"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    // Deleted, the default account comes back.
    ok(cp.tug(&["delete", "serviceaccount", "default", "-n", "tug-team"]));
    let back = tug_integration::wait_for(std::time::Duration::from_secs(10), || {
        cp.get_json(&["serviceaccount", "default", "-n", "tug-team"]).is_some()
    });
    assert!(back, "the default service account was not made again");
    ok(cp.tug(&["create", "serviceaccount", "bot", "-n", "tug-team"]));
    let token =
        ok(cp.tug(&["create", "token", "bot", "-n", "tug-team", "--duration", "15m"])).trim().to_string();
    let who = ok(cp.tug(&["--token", &token, "auth", "whoami"]));
    assert!(
        who.contains("system:serviceaccount:tug-team:bot") && who.contains("system:serviceaccounts:tug-team"),
        "{who}"
    );
    refused(cp.tug(&["--token", &token, "get", "pods", "-n", "tug-team"]), "cannot list resource");
    cp.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: bot-views, namespace: tug-team}\nsubjects: [{kind: ServiceAccount, name: bot}]\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n");
    ok(cp.tug(&["--token", &token, "get", "pods", "-n", "tug-team"]));
    // Too short a token, an unknown account, a pod naming an account that does not exist.
    refused(
        cp.tug(&["create", "token", "bot", "-n", "tug-team", "--duration", "5m"]),
        "may not specify a duration less than 10 minutes",
    );
    refused(
        cp.tug(&["create", "token", "nobody", "-n", "tug-team"]),
        r#"serviceaccounts "nobody" not found"#,
    );
    refused(
        cp.tug_with_input(&["apply", "-n", "tug-team", "-f", "-"], "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {serviceAccountName: ghost, containers: [{name: c, image: x}]}\n"),
        r#"error looking up service account tug-team/ghost: serviceaccount "ghost" not found"#,
    );
    // A deleted account's tokens stop working.
    ok(cp.tug(&["delete", "serviceaccount", "bot", "-n", "tug-team"]));
    refused(cp.tug(&["--token", &token, "auth", "whoami"]), "Unauthorized");
}

#[test]
fn the_kubernetes_service_points_pods_at_the_api() {
    let (cp, _, _) = control_plane(&["--advertise-address", "192.0.2.10"]);
    let svc = cp.get_json(&["service", "kubernetes"]).expect("the kubernetes Service");
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    let ep = cp.get_json(&["endpoints", "kubernetes"]).expect("its Endpoints");
    assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "192.0.2.10");
    let port = cp
        .log()
        .split("serving TLS on 127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    assert_eq!(ep["subsets"][0]["ports"][0]["port"].to_string(), port);
    assert!(cp.log().contains("kubernetes.default.svc"), "the serving certificate names it: {}", cp.log());
}

#[test]
fn secrets_in_etcd_are_encrypted_too() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let etcd = tug_integration::etcd::EtcdProcess::start();
    let dir = tempfile::Builder::new().prefix("tug-enc").tempdir().unwrap();
    let (config, seal) = (dir.path().join("encryption.yaml"), dir.path().join("pki-secret"));
    std::fs::write(&config, encryption_config(&[("k1", KEY1)])).unwrap();
    std::fs::write(&seal, "a-test-secret-of-the-replicas\n").unwrap();
    std::fs::set_permissions(&seal, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cp = ControlPlane::start_with(&[
        "--store",
        "etcd",
        "--etcd-endpoints",
        &etcd.endpoint,
        "--pki-secret-file",
        seal.to_str().unwrap(),
        "--encryption-config",
        config.to_str().unwrap(),
    ]);
    ok(cp.tug(&["create", "secret", "generic", "db", "--from-literal=password=tug-etcd-secret-value"]));
    assert!(ok(cp.tug(&["get", "secret", "db", "-o", "json"])).contains("dHVnLWV0Y2Qtc2VjcmV0LXZhbHVl"));
    // Everything under the prefix, as etcd (or a backup of it) holds it.
    let all = Command::new("curl")
        .args(["-s", "-X", "POST", &format!("{}/v3/kv/range", etcd.endpoint), "-d"])
        .arg(format!(r#"{{"key": "{}", "range_end": "{}"}}"#, b64.encode("/tug/"), b64.encode("/tug0")))
        .output()
        .unwrap();
    let range: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    let values: Vec<String> = range["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| String::from_utf8_lossy(&b64.decode(kv["value"].as_str().unwrap()).unwrap()).to_string())
        .collect();
    assert!(values.iter().any(|v| v.contains("k8s:enc:aesgcm:v1:k1:")), "the secret is not there sealed");
    for v in &values {
        assert!(!v.contains("tug-etcd-secret-value") && !v.contains("dHVnLWV0Y2Qtc2VjcmV0LXZhbHVl"), "{v}");
    }
}
