//! Services end to end on the cluster in namespaces: ClusterIP, NodePort, UDP, ClientIP
//! affinity, readiness, no endpoints, from the node and from a pod.

use std::collections::BTreeMap;
use std::time::Duration;
use tug_integration::agent::Agent;
use tug_integration::cluster::Cluster;
use tug_integration::control_plane::ControlPlane;
use tug_integration::wait_for;

const APPS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: tug.local/probe:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "mkdir -p /tmp/w && hostname > /tmp/w/index.html && touch /tmp/w/ready && (/bin/tug-probe serve-udp 9999 &) && exec httpd -f -p 8080 -h /tmp/w"]
        ports:
        - {name: http, containerPort: 8080}
        - {name: echo, containerPort: 9999, protocol: UDP}
        readinessProbe:
          httpGet: {path: /ready, port: http}
          periodSeconds: 1
---
# Ready for six seconds, then not for six, and so on.
apiVersion: v1
kind: Pod
metadata: {name: flappy, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: tug.local/probe:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "mkdir -p /tmp/w && hostname > /tmp/w/index.html && (while true; do touch /tmp/w/ready; sleep 6; rm /tmp/w/ready; sleep 6; done &) && exec httpd -f -p 8080 -h /tmp/w"]
    ports:
    - {name: http, containerPort: 8080}
    readinessProbe:
      httpGet: {path: /ready, port: http}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: echo, port: 53, targetPort: echo, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports:
  - {port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: peers}
spec:
  clusterIP: None
  selector: {app: web}
  ports:
  - {name: http, port: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: nothing}
spec:
  selector: {app: nobody}
  ports:
  - {port: 80}
"#;

/// The addresses of an Endpoints object's subsets under `field` (`addresses`,
/// `notReadyAddresses`).
fn endpoint_ips(cp: &ControlPlane, name: &str, field: &str) -> Vec<String> {
    cp.get_json(&["endpoints", name])
        .and_then(|e| e["subsets"].as_array().cloned())
        .into_iter()
        .flatten()
        .flat_map(|s| s[field].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["ip"].as_str().map(str::to_string))
        .collect()
}

fn ready_ips(cp: &ControlPlane, name: &str) -> Vec<String> {
    endpoint_ips(cp, name, "addresses")
}

fn not_ready_ips(cp: &ControlPlane, name: &str) -> Vec<String> {
    endpoint_ips(cp, name, "notReadyAddresses")
}

/// An agent on each of the cluster's nodes, named `PREFIX0`, `PREFIX1`…, with the probe
/// image.
fn agents_on(cp: &ControlPlane, cluster: &Cluster, prefix: &str, flags: &[&str]) -> Vec<Agent> {
    (0..cluster.nodes.len())
        .map(|i| {
            let a = Agent::start(cp, &cluster.nodes[i], &format!("{prefix}{i}"), flags);
            a.import_probe_image("tug.local/probe:1");
            a
        })
        .collect()
}

/// The control plane's log and each agent's, for a failure's message.
fn all_logs(cp: &ControlPlane, agents: &[Agent]) -> String {
    let mut s = cp.log();
    for a in agents {
        s += &format!("\n--- {}:\n{}", a.name, a.log());
    }
    s
}

/// The proxy's rules in a node's namespace, as text, in either mode.
fn programmed(ns: &str, mode: &str) -> String {
    let argv: &[&str] = if mode == "iptables" {
        &["iptables-save", "-t", "nat"]
    } else {
        &["nft", "list", "table", "ip", "tug_proxy"]
    };
    let out = std::process::Command::new("ip").args(["netns", "exec", ns]).args(argv).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// `curl` from inside a namespace: the body, or the curl exit code.
fn curl(ns: &str, url: &str) -> Result<String, i32> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "-m", "3", url])
        .output()
        .map_err(|_| -1)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(out.status.code().unwrap_or(-1))
    }
}

#[test]
fn nftables_services_balance_over_ready_pods_by_cluster_ip_node_port_udp_and_name() {
    services_work("nftables");
}

#[test]
fn iptables_services_balance_over_ready_pods_by_cluster_ip_node_port_udp_and_name() {
    services_work("iptables");
}

/// The same checks for either proxy mode.
fn services_work(mode: &str) {
    let cluster = Cluster::new(2).expect("cluster");
    let cp = ControlPlane::start();
    let agents = agents_on(&cp, &cluster, "tug-it-s", &["--proxy-mode", mode]);
    let logs = || all_logs(&cp, &agents);
    cp.apply(APPS);
    let web = cp.get_json(&["service", "web"]).expect("service web");
    let ip = web["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.96."), "{web:#}");
    let node_port = web["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&node_port));
    let up = wait_for(Duration::from_secs(60), || ready_ips(&cp, "web").len() >= 3);
    assert!(up, "endpoints: {:#}\n{}", cp.get_json(&["endpoints", "web"]).unwrap_or_default(), logs());
    let node0 = cluster.nodes[0].netns.clone();

    // 200 requests to the ClusterIP from a node reach every ready web pod.
    let web_pods: Vec<String> = {
        let ps = cp.get_json(&["pods", "-l", "app=web"]).unwrap();
        ps["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .filter(|n| n != "flappy")
            .collect()
    };
    let mut hits: BTreeMap<String, usize> = BTreeMap::new();
    let answered = wait_for(Duration::from_secs(20), || curl(&node0, &format!("http://{ip}/")).is_ok());
    if !answered {
        let table = cluster.nodes[0].command(&["nft", "list", "table", "ip", "tug_proxy"]).output().unwrap();
        panic!(
            "the ClusterIP {ip} does not answer: {:?}\n{}\nendpoints {:#}\n{}",
            curl(&node0, &format!("http://{ip}/")),
            String::from_utf8_lossy(&table.stdout),
            cp.get_json(&["endpoints", "web"]).unwrap_or_default(),
            logs()
        );
    }
    for _ in 0..200 {
        let body =
            curl(&node0, &format!("http://{ip}/")).unwrap_or_else(|e| panic!("curl exit {e}\n{}", logs()));
        *hits.entry(body).or_default() += 1;
    }
    for p in &web_pods {
        assert!(hits.get(p).is_some_and(|n| *n > 10), "{p} got too few of 200 requests: {hits:?}");
    }

    // Hairpin: a pod asking its own Service lands on itself now and then (and on pods of its
    // own bridge); those answers need the masquerade, or they would skip the DNAT's way back.
    for p in &web_pods {
        let script = format!("i=0; while [ $i -lt 40 ]; do /bin/tug-probe get {ip}:80; i=$((i+1)); done");
        let out = cp.tug(&["exec", p, "--", "/bin/sh", "-c", &script]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let answers: Vec<&str> = text.lines().collect();
        assert_eq!(
            answers.len(),
            40,
            "from {p}: {text}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            logs()
        );
        assert!(answers.contains(&p.as_str()), "{p} never reached itself through its Service: {answers:?}");
    }

    // The same through the NodePort, from outside the cluster (the hub) to either node.
    std::process::Command::new("ip")
        .args(["-n", &cluster.hub, "addr", "add", "10.250.0.1/24", "dev", "tugbr"])
        .status()
        .unwrap();
    for n in &cluster.nodes {
        let url = format!("http://{}:{node_port}/", n.ip);
        let ok = wait_for(Duration::from_secs(10), || {
            curl(&cluster.hub, &url).is_ok_and(|b| b.starts_with("web-") || b == "flappy")
        });
        assert!(ok, "NodePort {url} from outside: {:?}\n{}", curl(&cluster.hub, &url), logs());
    }

    // UDP.
    let probe = tug_integration::probe::path();
    let out =
        cluster.nodes[0].command(&[probe.to_str().unwrap(), "udp", &format!("{ip}:53")]).output().unwrap();
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && (web_pods.contains(&name) || name == "flappy"),
        "udp answer {name:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // ClientIP affinity pins one client to one pod.
    let sticky =
        cp.get_json(&["service", "sticky"]).unwrap()["spec"]["clusterIP"].as_str().unwrap().to_string();
    let first = curl(&node0, &format!("http://{sticky}/")).expect("sticky");
    for _ in 0..20 {
        assert_eq!(curl(&node0, &format!("http://{sticky}/")).expect("sticky"), first);
    }

    // No endpoints: refused at once (curl's exit code 7), not a timeout (28).
    let nothing =
        cp.get_json(&["service", "nothing"]).unwrap()["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert_eq!(curl(&node0, &format!("http://{nothing}/")), Err(7));

    // From a pod: by name (DNS, the search path), and the service environment variables.
    cp.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: tug.local/probe:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo host=$WEB_SERVICE_HOST port=$WEB_SERVICE_PORT; cat /etc/resolv.conf; nslookup web.default.svc.cluster.local; nslookup peers.default.svc.cluster.local; nslookup -type=srv _http._tcp.web.default.svc.cluster.local; for i in 1 2 3; do wget -q -O - http://web/ && exit 0; sleep 1; done; exit 1"]
"#,
    );
    let done = wait_for(Duration::from_secs(40), || {
        cp.get_json(&["pod", "client"])
            .is_some_and(|p| p["status"]["phase"] == "Succeeded" || p["status"]["phase"] == "Failed")
    });
    let pod = cp.get_json(&["pod", "client"]).unwrap_or_default();
    assert!(done && pod["status"]["phase"] == "Succeeded", "client pod: {pod:#}\n{}", logs());
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let agent = agents.iter().find(|a| pod["spec"]["nodeName"] == a.name.as_str()).unwrap();
    let log = std::fs::read_to_string(agent.state_dir().join(format!("logs/default_client_{uid}/c/1.log")))
        .unwrap_or_default();
    assert!(log.contains(&format!("host={ip} port=80")), "{log}");
    assert!(log.contains("search default.svc.cluster.local svc.cluster.local cluster.local"), "{log}");
    assert!(log.contains("options ndots:5"), "{log}");
    assert!(log.contains(&format!("Address: {ip}")), "web's A record: {log}");
    // The headless Service answers with its ready pods (flappy's readiness comes and goes).
    let web_ips: Vec<String> = web_pods
        .iter()
        .filter_map(|p| {
            cp.get_json(&["pod", p]).and_then(|p| p["status"]["podIP"].as_str().map(str::to_string))
        })
        .collect();
    assert_eq!(web_ips.len(), 3);
    assert!(
        web_ips.iter().all(|i| log.contains(&format!("Address: {i}"))),
        "peers' A records {web_ips:?}: {log}"
    );
    assert!(log.contains("web.default.svc.cluster.local") && log.contains(" 80 "), "SRV: {log}");
    assert!(
        web_pods.iter().chain(std::iter::once(&"flappy".to_string())).any(|p| log.contains(p.as_str())),
        "{log}"
    );

    // A pod that is not ready gets no traffic; ready again, it does.
    let flappy_ip = cp.get_json(&["pod", "flappy"]).unwrap()["status"]["podIP"].as_str().unwrap().to_string();
    let mut checked = false;
    for _ in 0..4 {
        let out = wait_for(Duration::from_secs(15), || not_ready_ips(&cp, "web").contains(&flappy_ip));
        assert!(out, "flappy never became not ready");
        // The node's proxy has dropped it (or flappy is back already: the burst won't count).
        let dropped = wait_for(Duration::from_secs(5), || {
            // iptables: `--to-destination IP:PORT`; nftables: `… : IP . PORT` in the endpoints map.
            let rules = programmed(&node0, mode);
            !(rules.contains(&format!("{flappy_ip}:")) || rules.contains(&format!(": {flappy_ip} . ")))
                || !not_ready_ips(&cp, "web").contains(&flappy_ip)
        });
        assert!(dropped, "the proxy kept a not-ready endpoint:\n{}", programmed(&node0, mode));
        let bodies: Vec<String> =
            (0..20).filter_map(|_| curl(&node0, &format!("http://{ip}/")).ok()).collect();
        // Only a burst that ended with flappy still not ready counts.
        if not_ready_ips(&cp, "web").contains(&flappy_ip) {
            assert!(!bodies.iter().any(|b| b == "flappy"), "a not-ready pod got traffic: {bodies:?}");
            assert_eq!(bodies.len(), 20);
            checked = true;
            break;
        }
    }
    assert!(checked, "never saw flappy not ready for a whole burst");
    let back = wait_for(Duration::from_secs(20), || {
        curl(&node0, &format!("http://{ip}/")).is_ok_and(|b| b == "flappy")
    });
    assert!(back, "flappy, ready again, got no traffic");
}

const LB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: lbweb}
spec:
  replicas: 2
  selector: {matchLabels: {app: lbweb}}
  template:
    metadata: {labels: {app: lbweb}}
    spec:
      terminationGracePeriodSeconds: 1
      # One on each node.
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: lbweb}}}
      containers:
      - name: web
        image: tug.local/probe:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "mkdir -p /tmp/w && hostname > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: lbweb}
spec:
  type: LoadBalancer
  selector: {app: lbweb}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: tug.io/v1
kind: AddressPool
metadata: {name: reserved}
spec:
  addresses: [10.250.0.250-10.250.0.251]
  autoAssign: false
---
apiVersion: v1
kind: Service
metadata: {name: asks}
spec:
  type: LoadBalancer
  loadBalancerIP: 10.250.0.250
  allocateLoadBalancerNodePorts: false
  selector: {app: lbweb}
  ports: [{name: http, port: 8081, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: outside-pools}
spec:
  type: LoadBalancer
  loadBalancerIP: 10.250.0.99
  selector: {app: lbweb}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: close}
spec:
  trafficDistribution: PreferClose
  selector: {app: lbweb}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: extip}
spec:
  externalIPs: [10.250.0.230]
  selector: {app: lbweb}
  ports: [{name: http, port: 8082, targetPort: http}]
---
# One pod, on node 0, that says who called it (busybox httpd's CGI).
apiVersion: apps/v1
kind: Deployment
metadata: {name: solo}
spec:
  replicas: 1
  selector: {matchLabels: {app: solo}}
  template:
    metadata: {labels: {app: solo}}
    spec:
      nodeName: tug-it-lb0
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: tug.local/probe:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "mkdir -p /tmp/w/cgi-bin && echo '#!/bin/sh' > /tmp/w/cgi-bin/ip && echo 'echo Content-Type: text/plain; echo; echo $REMOTE_ADDR' >> /tmp/w/cgi-bin/ip && chmod +x /tmp/w/cgi-bin/ip && exec httpd -f -p 8080 -h /tmp/w"]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: keep}
spec:
  type: LoadBalancer
  loadBalancerIP: 10.250.0.246
  externalTrafficPolicy: Local
  selector: {app: solo}
  ports: [{name: http, port: 8084, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: inner}
spec:
  internalTrafficPolicy: Local
  selector: {app: solo}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// The MAC of a namespace's `eth0`, or what `ip neigh` in the hub says an address is at.
fn mac_of(ns: &str, ip: Option<&str>) -> String {
    let args: Vec<&str> = match ip {
        Some(ip) => vec!["-n", ns, "neigh", "show", ip],
        None => vec!["-n", ns, "link", "show", "eth0"],
    };
    let out = std::process::Command::new("ip").args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    let key = if ip.is_some() { "lladdr" } else { "link/ether" };
    words.find(|w| *w == key).and_then(|_| words.next()).unwrap_or_default().to_string()
}

/// LoadBalancer Services on a bare cluster: an address from `--load-balancer-pool` answers
/// from outside (the hub) through the node that announces it, and moves to the other node
/// when that one dies; an AddressPool's address asked for by `loadBalancerIP` is given
/// without NodePorts; one outside every pool waits with an event; `externalIPs` answer on the
/// node they are routed to.
#[test]
fn a_load_balancer_address_answers_from_outside_and_moves_when_its_node_dies() {
    let cluster = Cluster::new(2).expect("cluster");
    let cp = ControlPlane::start_with(&[
        "--load-balancer-pool",
        "10.250.0.240/29",
        "--node-monitor-grace-period",
        "6s",
    ]);
    let mut agents = agents_on(&cp, &cluster, "tug-it-lb", &[]);
    let logs = |agents: &[Agent]| all_logs(&cp, agents);
    cp.apply(LB);
    let lb_ip = |name: &str| {
        cp.get_json(&["service", name])
            .and_then(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"].as_str().map(str::to_string))
    };
    let given = wait_for(Duration::from_secs(30), || lb_ip("lbweb").is_some() && lb_ip("asks").is_some());
    assert!(given, "{:?}\n{}", cp.get_json(&["services"]), logs(&agents));
    assert_eq!(lb_ip("lbweb").as_deref(), Some("10.250.0.241"), "the pool's first address");
    assert_eq!(lb_ip("asks").as_deref(), Some("10.250.0.250"), "the address asked for, from the AddressPool");
    let asks = cp.get_json(&["service", "asks"]).unwrap();
    assert!(asks["spec"]["ports"][0].get("nodePort").is_none(), "{asks:#}");
    let table = String::from_utf8_lossy(&cp.tug(&["get", "services"]).stdout).into_owned();
    let row = |name: &str| {
        table.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default().to_string()
    };
    assert!(row("lbweb").contains("LoadBalancer") && row("lbweb").contains("10.250.0.241"), "{table}");
    assert!(row("outside-pools").contains("<pending>"), "{table}");
    assert!(row("extip").contains("10.250.0.230"), "{table}");
    let waiting = wait_for(Duration::from_secs(20), || {
        String::from_utf8_lossy(&cp.tug(&["get", "events"]).stdout)
            .contains("Failed to allocate IP for \"default/outside-pools\": the address 10.250.0.99 is not in any address pool")
    });
    assert!(waiting, "{}", String::from_utf8_lossy(&cp.tug(&["get", "events"]).stdout));

    // From outside: the hub on the nodes' link.
    let hub = cluster.hub.clone();
    tug_integration::cluster::ip(&["-n", &hub, "addr", "add", "10.250.0.1/24", "dev", "tugbr"]).unwrap();
    let pods = wait_for(Duration::from_secs(60), || ready_ips(&cp, "lbweb").len() == 2);
    assert!(pods, "{}", logs(&agents));
    // The same endpoints in an EndpointSlice, made again when deleted.
    let slice = || {
        cp.get_json(&["endpointslices", "-l", "kubernetes.io/service-name=lbweb"])
            .and_then(|l| l["items"].as_array().and_then(|i| i.first().cloned()))
    };
    let sliced = wait_for(Duration::from_secs(20), || {
        slice().is_some_and(|s| {
            s["endpoints"].as_array().is_some_and(|e| e.len() == 2) && s["ports"][0]["port"] == 8080
        })
    });
    assert!(sliced, "{:?}", slice());
    let first_slice = slice().unwrap()["metadata"]["name"].as_str().unwrap().to_string();
    assert!(first_slice.starts_with("lbweb-"), "{first_slice}");
    let table = String::from_utf8_lossy(&cp.tug(&["get", "endpointslices"]).stdout).into_owned();
    assert!(
        table.contains("ADDRESSTYPE")
            && table.lines().any(|l| l.starts_with(&first_slice) && l.contains("IPv4") && l.contains("8080")),
        "{table}"
    );
    assert!(cp.tug(&["delete", "endpointslice", &first_slice]).status.success());
    let again = wait_for(Duration::from_secs(20), || {
        slice().is_some_and(|s| {
            s["metadata"]["name"] != first_slice.as_str()
                && s["endpoints"].as_array().is_some_and(|e| e.len() == 2)
        })
    });
    assert!(again, "{:?}", slice());
    for url in ["http://10.250.0.241/", "http://10.250.0.250:8081/"] {
        let ok = wait_for(Duration::from_secs(20), || curl(&hub, url).is_ok_and(|b| b.starts_with("lbweb-")));
        assert!(ok, "{url}: {:?}\n{}", curl(&hub, url), logs(&agents));
    }
    tug_integration::cluster::ip(&["-n", &hub, "route", "add", "10.250.0.230/32", "via", "10.250.0.11"])
        .unwrap();
    let ext = wait_for(Duration::from_secs(20), || {
        curl(&hub, "http://10.250.0.230:8082/").is_ok_and(|b| b.starts_with("lbweb-"))
    });
    assert!(ext, "externalIPs: {:?}", curl(&hub, "http://10.250.0.230:8082/"));

    // loadBalancerSourceRanges: the hub (10.250.0.1) is outside the first range, inside the
    // second.
    let ranges = |r: &str| {
        let p = format!(r#"{{"spec":{{"loadBalancerSourceRanges":{r}}}}}"#);
        let out = cp.tug(&["patch", "service", "asks", "--type", "merge", "-p", &p]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    ranges(r#"["192.0.2.0/24"]"#);
    let shut = wait_for(Duration::from_secs(20), || curl(&hub, "http://10.250.0.250:8081/").is_err());
    assert!(shut, "a source outside loadBalancerSourceRanges still gets in");
    ranges(r#"["192.0.2.0/24", "10.250.0.0/24"]"#);
    let open = wait_for(Duration::from_secs(20), || {
        curl(&hub, "http://10.250.0.250:8081/").is_ok_and(|b| b.starts_with("lbweb-"))
    });
    assert!(open, "{:?}", curl(&hub, "http://10.250.0.250:8081/"));

    // externalTrafficPolicy: Local — the one node with the pod announces the address and
    // answers on its NodePort with the client's own address; the other drops it and says
    // 503 on the health check port. internalTrafficPolicy: Local — a node without the pod
    // does not reach it through the ClusterIP.
    let keep =
        wait_for(Duration::from_secs(30), || lb_ip("keep").is_some() && ready_ips(&cp, "keep").len() == 1);
    assert!(keep, "{:?}\n{}", cp.get_json(&["service", "keep"]), logs(&agents));
    let keep_svc = cp.get_json(&["service", "keep"]).unwrap();
    let (keep_ip, node_port, check_port) = (
        lb_ip("keep").unwrap(),
        keep_svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap(),
        keep_svc["spec"]["healthCheckNodePort"].as_u64().expect("a healthCheckNodePort"),
    );
    // busybox httpd listens on IPv6 too: the caller as an IPv4-mapped address.
    let caller = |b: String| b.trim_start_matches("[::ffff:").trim_end_matches(']').to_string();
    let kept_source = wait_for(Duration::from_secs(20), || {
        curl(&hub, &format!("http://{keep_ip}:8084/cgi-bin/ip")).is_ok_and(|b| caller(b) == "10.250.0.1")
    });
    assert!(kept_source, "{:?}", curl(&hub, &format!("http://{keep_ip}:8084/cgi-bin/ip")));
    assert_eq!(
        mac_of(&hub, Some(&keep_ip)),
        mac_of(&cluster.nodes[0].netns, None),
        "announced by the pod's node"
    );
    assert_eq!(
        curl(&hub, &format!("http://10.250.0.10:{node_port}/cgi-bin/ip")).map(caller),
        Ok("10.250.0.1".to_string())
    );
    assert!(
        curl(&hub, &format!("http://10.250.0.11:{node_port}/cgi-bin/ip")).is_err(),
        "no endpoint on node 1"
    );
    let health = |node: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &hub, "curl", "-s", "-m", "3", "-w", " %{http_code}"])
            .arg(format!("http://{node}:{check_port}/healthz"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let h0 = health("10.250.0.10");
    assert!(h0.contains("\"localEndpoints\":1") && h0.ends_with(" 200"), "{h0}");
    let h1 = health("10.250.0.11");
    assert!(h1.contains("\"localEndpoints\":0") && h1.ends_with(" 503"), "{h1}");
    let inner =
        cp.get_json(&["service", "inner"]).unwrap()["spec"]["clusterIP"].as_str().unwrap().to_string();
    let url = format!("http://{inner}/cgi-bin/ip");
    assert!(curl(&cluster.nodes[0].netns, &url).is_ok(), "the pod's own node reaches it");
    assert!(
        curl(&cluster.nodes[1].netns, &url).is_err(),
        "internalTrafficPolicy Local: node 1 has no endpoint"
    );
    let out = cp.tug(&[
        "patch",
        "service",
        "asks",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"loadBalancerSourceRanges":["10.250.0.1/8"]}}"#,
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.loadBalancerSourceRanges[0]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // trafficDistribution: PreferClose — each node keeps to the endpoint in its zone.
    for (i, zone) in ["z0", "z1"].iter().enumerate() {
        let out = cp.tug(&[
            "label",
            "node",
            &format!("tug-it-lb{i}"),
            &format!("topology.kubernetes.io/zone={zone}"),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let close_ip =
        cp.get_json(&["service", "close"]).unwrap()["spec"]["clusterIP"].as_str().unwrap().to_string();
    let pod_on = |node: &str| {
        cp.get_json(&["pods", "-l", "app=lbweb"]).and_then(|l| {
            l["items"].as_array()?.iter().find(|p| p["spec"]["nodeName"] == node)?["metadata"]["name"]
                .as_str()
                .map(str::to_string)
        })
    };
    let local = pod_on("tug-it-lb0").expect("a pod on node 0");
    let kept = wait_for(Duration::from_secs(20), || {
        (0..10)
            .all(|_| curl(&cluster.nodes[0].netns, &format!("http://{close_ip}/")).is_ok_and(|b| b == local))
    });
    assert!(
        kept,
        "{local}: {:?}",
        (0..6).map(|_| curl(&cluster.nodes[0].netns, &format!("http://{close_ip}/"))).collect::<Vec<_>>()
    );

    // Which node answers for the address; it dies (its agent and its link), the other one
    // takes the address over and the hub's neighbour entry follows.
    let macs: Vec<String> = cluster.nodes.iter().map(|n| mac_of(&n.netns, None)).collect();
    let at = mac_of(&hub, Some("10.250.0.241"));
    let first = macs.iter().position(|m| *m == at).unwrap_or_else(|| panic!("{at} is no node's ({macs:?})"));
    let other = 1 - first;
    agents[first].kill9();
    tug_integration::cluster::ip(&["-n", &cluster.nodes[first].netns, "link", "set", "eth0", "down"])
        .unwrap();
    let moved = wait_for(Duration::from_secs(60), || {
        mac_of(&hub, Some("10.250.0.241")) == macs[other]
            && curl(&hub, "http://10.250.0.241/").is_ok_and(|b| b.starts_with("lbweb-"))
    });
    assert!(
        moved,
        "still at {} ({macs:?}): {:?}\n{}",
        mac_of(&hub, Some("10.250.0.241")),
        curl(&hub, "http://10.250.0.241/"),
        logs(&agents)
    );
    // The Service changing type gives its address back.
    let back = cp.tug(&["patch", "service", "lbweb", "--type", "merge", "-p", r#"{"spec":{"type":"ClusterIP","allocateLoadBalancerNodePorts":null,"externalTrafficPolicy":null,"ports":[{"name":"http","port":80,"targetPort":"http","nodePort":null}]}}"#]);
    assert!(back.status.success(), "{}", String::from_utf8_lossy(&back.stderr));
    let freed = wait_for(Duration::from_secs(20), || lb_ip("lbweb").is_none());
    assert!(freed, "{:?}", cp.get_json(&["service", "lbweb"]));
}

const POLICY_PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: tug-np-other, labels: {team: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  nodeName: tug-it-np0
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: tug.local/probe:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "mkdir -p /tmp/w && hostname > /tmp/w/index.html && (/bin/tug-probe serve-udp 9999 &) && exec httpd -f -p 8080 -h /tmp/w"]
    ports:
    - {name: http, containerPort: 8080}
    - {name: echo, containerPort: 9999, protocol: UDP}
---
# Across nodes, in a namespace the allow rule picks.
apiVersion: v1
kind: Pod
metadata: {name: friend, namespace: tug-np-other, labels: {role: client}}
spec:
  nodeName: tug-it-np1
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: tug.local/probe:1, imagePullPolicy: Never, command: ["/bin/tug-probe", "sleep", "3600"]}
---
# The server's own node and the same labels, but the policy's namespace: not picked.
apiVersion: v1
kind: Pod
metadata: {name: stranger, labels: {role: client}}
spec:
  nodeName: tug-it-np0
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: tug.local/probe:1, imagePullPolicy: Never, command: ["/bin/tug-probe", "sleep", "3600"]}
"#;

const DENY_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

const ALLOW_FRIENDS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-friends}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: x}}
      podSelector: {matchLabels: {role: client}}
    ports:
    - {port: http}
    - {protocol: UDP, port: 9990, endPort: 9999}
"#;

const FRIEND_EGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-http-out, namespace: tug-np-other}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {}
      podSelector: {matchLabels: {app: server}}
    ports:
    - {protocol: TCP, port: 8080}
"#;

#[test]
fn network_policies_deny_by_default_and_let_exactly_the_allowed_traffic_through() {
    let cluster = Cluster::new(2).expect("cluster");
    let cp = ControlPlane::start();
    let agents = agents_on(&cp, &cluster, "tug-it-np", &[]);
    let logs = || all_logs(&cp, &agents);
    cp.apply(POLICY_PODS);
    let ip =
        || cp.get_json(&["pod", "server"]).and_then(|p| p["status"]["podIP"].as_str().map(str::to_string));
    let running = |ns: &str, name: &str| {
        cp.get_json(&["pod", name, "-n", ns]).is_some_and(|p| p["status"]["phase"] == "Running")
    };
    let up = wait_for(Duration::from_secs(60), || {
        ip().is_some()
            && running("default", "server")
            && running("tug-np-other", "friend")
            && running("default", "stranger")
    });
    assert!(up, "{}", logs());
    let server = ip().unwrap();
    // Whether `pod` (in `ns`) gets an answer over TCP or UDP.
    let tcp = |ns: &str, pod: &str| {
        cp.tug(&["exec", "-n", ns, pod, "--", "/bin/tug-probe", "get", &format!("{server}:8080")])
            .status
            .success()
    };
    let udp = |ns: &str, pod: &str| {
        cp.tug(&["exec", "-n", ns, pod, "--", "/bin/tug-probe", "udp", &format!("{server}:9999")])
            .status
            .success()
    };
    let expect = |what: &str, f: &dyn Fn() -> bool| {
        assert!(wait_for(Duration::from_secs(20), f), "{what}\n{}\n{}", policy_rules(&cluster, 0), logs());
    };
    let (friend, stranger) = (("tug-np-other", "friend"), ("default", "stranger"));
    expect("no policy: everyone reaches the server", &|| {
        tcp(friend.0, friend.1) && udp(friend.0, friend.1) && tcp(stranger.0, stranger.1)
    });

    // A pod cannot take another address as its source (the bridge drops it): the stranger's
    // namespace gets a second address from the node's block, and curl from it goes nowhere.
    let stranger_ip =
        cp.get_json(&["pod", "stranger"]).unwrap()["status"]["podIP"].as_str().unwrap().to_string();
    let netns_file = std::fs::read_dir(agents[0].netns_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::process::Command::new("nsenter")
                .arg(format!("--net={}", p.display()))
                .args(["ip", "-4", "-o", "addr", "show", "eth0"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {stranger_ip}/")))
        })
        .expect("the stranger's network namespace");
    let forged = format!("{}.250", stranger_ip.rsplit_once('.').unwrap().0);
    let in_pod = |args: &[&str]| {
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", netns_file.display()))
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    assert!(in_pod(&["ip", "addr", "add", &format!("{forged}/24"), "dev", "eth0"]));
    let url = format!("http://{server}:8080/");
    assert!(in_pod(&["curl", "-s", "-m", "3", &url]), "from its own address");
    assert!(!in_pod(&["curl", "-s", "-m", "3", "--interface", &forged, &url]), "from a forged address");

    cp.apply(DENY_INGRESS);
    expect("default deny: nobody does (TCP, UDP, same node, across nodes)", &|| {
        !tcp(friend.0, friend.1) && !udp(friend.0, friend.1) && !tcp(stranger.0, stranger.1)
    });
    let table = String::from_utf8_lossy(&cp.tug(&["get", "networkpolicies"]).stdout).into_owned();
    assert!(table.contains("POD-SELECTOR") && table.contains("deny-ingress   <none>"), "{table}");

    cp.apply(ALLOW_FRIENDS);
    expect("allowed by namespace and pod labels, on the named TCP port and the UDP range", &|| {
        tcp(friend.0, friend.1) && udp(friend.0, friend.1)
    });
    assert!(
        !tcp(stranger.0, stranger.1) && !udp(stranger.0, stranger.1),
        "the same labels in another namespace"
    );
    let table = String::from_utf8_lossy(&cp.tug(&["get", "netpol"]).stdout).into_owned();
    assert!(table.contains("allow-friends   app=server"), "{table}");

    // Egress: the friend may only open TCP 8080 to the server now; the answers of what it
    // may open still come back.
    cp.apply(FRIEND_EGRESS);
    expect("egress: UDP out is refused", &|| !udp(friend.0, friend.1));
    assert!(tcp(friend.0, friend.1), "TCP 8080 out is allowed, and its answers come back");

    for (ns, name) in
        [("default", "deny-ingress"), ("default", "allow-friends"), ("tug-np-other", "only-http-out")]
    {
        assert!(cp.tug(&["delete", "networkpolicy", name, "-n", ns]).status.success());
    }
    expect("no policy again: everyone reaches the server", &|| {
        tcp(stranger.0, stranger.1) && udp(friend.0, friend.1)
    });
    let left = policy_rules(&cluster, 0);
    assert!(!left.contains("chain in-") && !left.contains("set peers-"), "{left}");
}

/// The policy table in node `i`'s namespace.
fn policy_rules(cluster: &Cluster, i: usize) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &cluster.nodes[i].netns, "nft", "list", "table", "ip", "tug_policy"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
        .unwrap_or_default()
}

const INGRESS_APPS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: ing-a}
spec:
  replicas: 2
  selector: {matchLabels: {app: ing-a}}
  template:
    metadata: {labels: {app: ing-a}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: tug.local/probe:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "mkdir -p /tmp/w/b && hostname > /tmp/w/index.html && hostname > /tmp/w/b/index.html && exec httpd -f -p 8080 -h /tmp/w"]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ing-b}
spec:
  replicas: 1
  selector: {matchLabels: {app: ing-b}}
  template:
    metadata: {labels: {app: ing-b}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: tug.local/probe:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "mkdir -p /tmp/w/b && hostname > /tmp/w/index.html && hostname > /tmp/w/b/index.html && exec httpd -f -p 8080 -h /tmp/w"]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: ing-a}
spec:
  selector: {app: ing-a}
  ports: [{name: web, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: ing-b}
spec:
  selector: {app: ing-b}
  ports: [{name: web, port: 8000, targetPort: http}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: two-hosts}
spec:
  tls:
  - hosts: [a.example, b.example]
    secretName: tug-it-tls
  rules:
  - host: a.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: ing-a, port: {number: 80}}}}
      - {path: /b, pathType: Prefix, backend: {service: {name: ing-b, port: {name: web}}}}
  - host: b.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: ing-b, port: {number: 8000}}}}
"#;

#[test]
fn an_ingress_routes_two_hosts_and_two_paths_over_tls_and_http2() {
    use base64::Engine;
    let cluster = Cluster::new(2).expect("cluster");
    let cp = ControlPlane::start();
    let agents = agents_on(&cp, &cluster, "tug-it-ing", &[]);
    let logs = || all_logs(&cp, &agents);
    // The certificate for both hosts, in a kubernetes.io/tls Secret.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let params = rcgen::CertificateParams::new(vec!["a.example".to_string(), "b.example".to_string()])
        .expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let dir = tempfile::Builder::new().prefix("tug-it-ing-").tempdir().expect("dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.pem()).expect("ca");
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    cp.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: tug-it-tls}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(cert.pem()),
        b64(key.serialize_pem())
    ));
    cp.apply(INGRESS_APPS);
    let hub = cluster.hub.clone();
    tug_integration::cluster::ip(&["-n", &hub, "addr", "add", "10.250.0.1/24", "dev", "tugbr"]).unwrap();
    let up = wait_for(Duration::from_secs(60), || {
        ready_ips(&cp, "ing-a").len() == 2 && ready_ips(&cp, "ing-b").len() == 1
    });
    assert!(up, "{}", logs());

    // curl from outside (the hub) to a node, the host named by --resolve (SNI and Host).
    let node = &cluster.nodes[1].ip.to_string();
    let curl_to = |host: &str, scheme: &str, path: &str, extra: &[&str]| -> Result<String, String> {
        let port = if scheme == "https" { "443" } else { "80" };
        let resolve = format!("{host}:{port}:{node}");
        let url = format!("{scheme}://{host}{path}");
        let mut args = vec!["netns", "exec", &hub, "curl", "-sS", "-m", "5", "--cacert"];
        let ca = ca.to_string_lossy().into_owned();
        args.push(&ca);
        args.extend_from_slice(&["--resolve", &resolve]);
        args.extend_from_slice(extra);
        args.push(&url);
        let out = std::process::Command::new("ip").args(&args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let routed = wait_for(Duration::from_secs(30), || {
        curl_to("a.example", "https", "/", &[]).is_ok_and(|b| b.starts_with("ing-a-"))
    });
    assert!(routed, "{:?}\n{}", curl_to("a.example", "https", "/", &[]), logs());
    for (host, scheme, path, want) in [
        ("a.example", "https", "/b/", "ing-b-"),
        ("b.example", "https", "/", "ing-b-"),
        ("a.example", "http", "/", "ing-a-"),
        ("a.example", "http", "/b/", "ing-b-"),
        ("b.example", "http", "/b/", "ing-b-"),
    ] {
        let got = curl_to(host, scheme, path, &[]);
        assert!(got.as_ref().is_ok_and(|b| b.starts_with(want)), "{scheme}://{host}{path}: {got:?}");
    }
    // HTTP/2 over TLS (ALPN) and HTTP/1.1; both of ing-a's pods answer.
    let v = curl_to("a.example", "https", "/", &["--http2", "-o", "/dev/null", "-w", "%{http_version}"]);
    assert_eq!(v.as_deref(), Ok("2"), "HTTP/2 over TLS");
    let v = curl_to("a.example", "https", "/", &["--http1.1", "-o", "/dev/null", "-w", "%{http_version}"]);
    assert_eq!(v.as_deref(), Ok("1.1"));
    let seen: std::collections::BTreeSet<String> =
        (0..12).filter_map(|_| curl_to("a.example", "http", "/", &[]).ok()).collect();
    assert_eq!(seen.len(), 2, "spread over both endpoints: {seen:?}");
    // No rule for the host, no default backend: 404.
    let code = curl_to("c.example", "http", "/", &["-o", "/dev/null", "-w", "%{http_code}"]);
    assert_eq!(code.as_deref(), Ok("404"));
    // The nodes' addresses as the Ingress' address; the class kubectl lists.
    let addressed = wait_for(Duration::from_secs(20), || {
        let t = String::from_utf8_lossy(&cp.tug(&["get", "ingress"]).stdout).into_owned();
        t.contains("two-hosts")
            && t.contains("a.example,b.example")
            && t.contains("10.250.0.10,10.250.0.11")
            && t.contains("80, 443")
    });
    assert!(addressed, "{}", String::from_utf8_lossy(&cp.tug(&["get", "ingress"]).stdout));
    let classes = String::from_utf8_lossy(&cp.tug(&["get", "ingressclass"]).stdout).into_owned();
    assert!(classes.contains("tug") && classes.contains("tug.io/ingress-controller"), "{classes}");
    let log = agents[1].log();
    assert!(
        log.contains("tug-agent: ingress: 10.250.0.1:") && log.contains("\"GET a.example/b/"),
        "access log:\n{log}"
    );
}
