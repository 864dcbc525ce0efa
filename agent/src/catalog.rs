//! The Services, Endpoints, Nodes, Pods, Namespaces, NetworkPolicies, Ingresses and
//! IngressClasses of the whole cluster, kept current by a list-and-watch of each kind: what
//! the service proxy programs, the DNS server answers from, the load balancer's announcer
//! elects from, the network policy enforcer compiles and the Ingress controller routes by.

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tug_client::Client;

/// Services and Endpoints by `namespace/name`, as the API serves them.
#[derive(Default)]
pub struct Objects {
    pub services: BTreeMap<String, Value>,
    pub endpoints: BTreeMap<String, Value>,
    /// By `default/name` (nodes have no namespace).
    pub nodes: BTreeMap<String, Value>,
    /// Every pod, cut to what NetworkPolicy needs ([`slim_pod`]).
    pub pods: BTreeMap<String, Value>,
    /// By `default/name`.
    pub namespaces: BTreeMap<String, Value>,
    pub network_policies: BTreeMap<String, Value>,
    pub ingresses: BTreeMap<String, Value>,
    /// By `default/name`.
    pub ingress_classes: BTreeMap<String, Value>,
}

/// A pod cut to what NetworkPolicy reads (name, labels, node, ports, address, phase): the
/// agent keeps every pod of the cluster, so it keeps little of each.
pub fn slim_pod(p: &Value) -> Value {
    let ports: Vec<Value> = p["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter(|cp| cp["name"].is_string())
        .map(|cp| serde_json::json!({"name": cp["name"], "containerPort": cp["containerPort"], "protocol": cp["protocol"]}))
        .collect();
    serde_json::json!({
        "metadata": {"name": p["metadata"]["name"], "namespace": p["metadata"]["namespace"], "labels": p["metadata"]["labels"]},
        "spec": {"nodeName": p["spec"]["nodeName"], "hostNetwork": p["spec"]["hostNetwork"], "containers": [{"ports": ports}]},
        "status": {"podIP": p["status"]["podIP"], "phase": p["status"]["phase"]},
    })
}

/// `namespace/name` of an object.
pub fn key_of(v: &Value) -> String {
    format!(
        "{}/{}",
        v["metadata"]["namespace"].as_str().unwrap_or("default"),
        v["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Who hears of changes, and of which kinds.
type Listener = (&'static [&'static str], Arc<Notify>);

/// The shared view, and who wants to hear of changes.
#[derive(Default)]
pub struct Catalog {
    objects: RwLock<Objects>,
    listeners: Mutex<Vec<Listener>>,
}

impl Catalog {
    /// Starts following the control plane.
    pub fn start(api: Client) -> Arc<Catalog> {
        let c = Arc::new(Catalog::default());
        for (kind, path) in [
            ("services", "/api/v1/services"),
            ("endpoints", "/api/v1/endpoints"),
            ("nodes", "/api/v1/nodes"),
            ("pods", "/api/v1/pods"),
            ("namespaces", "/api/v1/namespaces"),
            ("networkpolicies", "/apis/networking.k8s.io/v1/networkpolicies"),
            ("ingresses", "/apis/networking.k8s.io/v1/ingresses"),
            ("ingressclasses", "/apis/networking.k8s.io/v1/ingressclasses"),
        ] {
            let (api, c) = (api.clone(), Arc::clone(&c));
            tokio::spawn(async move { c.follow(api, kind, path).await });
        }
        c
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Objects> {
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A notification that fires after each change of a Service, Endpoints or Node (and
    /// once now).
    pub fn subscribe(&self) -> Arc<Notify> {
        self.subscribe_to(&["services", "endpoints", "nodes"])
    }

    /// A notification that fires after each change of one of `kinds` (and once now).
    pub fn subscribe_to(&self, kinds: &'static [&'static str]) -> Arc<Notify> {
        let n = Arc::new(Notify::new());
        n.notify_one();
        self.listeners.lock().unwrap_or_else(|e| e.into_inner()).push((kinds, Arc::clone(&n)));
        n
    }

    fn changed(&self, kind: &str) {
        for (kinds, l) in self.listeners.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if kinds.contains(&kind) {
                l.notify_one();
            }
        }
    }

    fn edit(&self, kind: &str, f: impl FnOnce(&mut BTreeMap<String, Value>)) {
        {
            let mut o = self.objects.write().unwrap_or_else(|e| e.into_inner());
            f(match kind {
                "services" => &mut o.services,
                "nodes" => &mut o.nodes,
                "pods" => &mut o.pods,
                "namespaces" => &mut o.namespaces,
                "networkpolicies" => &mut o.network_policies,
                "ingresses" => &mut o.ingresses,
                "ingressclasses" => &mut o.ingress_classes,
                _ => &mut o.endpoints,
            });
        }
        self.changed(kind);
    }

    /// Lists a collection, then watches it from the list's revision, again when it ends.
    async fn follow(self: Arc<Self>, api: Client, kind: &'static str, path: &'static str) {
        loop {
            let list = match api.get(path).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("tug-agent: listing {kind}: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            self.edit(kind, |map| {
                map.clear();
                for item in list["items"].as_array().into_iter().flatten() {
                    map.insert(key_of(item), if kind == "pods" { slim_pod(item) } else { item.clone() });
                }
            });
            let rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
            let me = Arc::clone(&self);
            // Resumed from its last revision through cut streams and failed-over servers;
            // listed again only when that revision is gone.
            api.watch_resuming(
                path,
                rv,
                move |ev| {
                    let obj = if kind == "pods" { slim_pod(&ev["object"]) } else { ev["object"].clone() };
                    let gone = ev["type"] == "DELETED";
                    me.edit(kind, |map| {
                        if gone {
                            map.remove(&key_of(&obj));
                        } else {
                            map.insert(key_of(&obj), obj);
                        }
                    });
                    true
                },
                |e| tracing::warn!("tug-agent: watching {kind}: {e}"),
            )
            .await;
        }
    }
}
