//! Endpoints: for every Service with a selector, the pods behind it — ready ones in
//! `addresses`, the others in `notReadyAddresses` (readiness probes decide; with
//! `publishNotReadyAddresses` all are ready) — with each service port resolved against the
//! pod (`targetPort` by number, or by the name of a container port). Pods whose ports resolve
//! the same way share a subset, as Kubernetes packs them. Services without a selector keep
//! the Endpoints their users write.
//!
//! The same endpoints go into `discovery.k8s.io/v1` EndpointSlices ([`slices`]: one port
//! set per slice, at most 100 endpoints each, labelled `kubernetes.io/service-name` and
//! managed by `endpointslice-controller.k8s.io`), as kube-proxy and clients read them.
//!
//! [`plan`] is pure; the Endpoints object and the slices are owned by their Service (so
//! they go with it).

use super::runtime::{Controller, Next};
use super::{controller_ref, decode};
use crate::store::{Event, Store, StoreError};
use std::collections::BTreeMap;
use tug_api::kinds::cluster::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference};
use tug_api::kinds::core::Service;
use tug_api::kinds::discovery::{
    CONTROLLER, Endpoint as SliceEndpoint, EndpointConditions, EndpointSlicePort, MANAGED_BY, SERVICE_NAME,
};
use tug_api::kinds::pod::Pod;
use tug_api::meta::IntOrString;

pub const PREFIX: &str = "/services/";
pub const ENDPOINTS: &str = "/endpoints/";
pub const SLICES: &str = "discovery.k8s.io/endpointslices/";
const PODS: &str = "/pods/";

/// The port a service port reaches on `pod`, if the pod has it.
fn target_port(sp: &tug_api::kinds::core::ServicePort, pod: &Pod) -> Option<i64> {
    match sp.target_port.as_ref() {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let proto = sp.protocol.as_deref().unwrap_or("TCP");
            pod.spec.containers.iter().flat_map(|c| c.ports.iter()).find_map(|p| {
                (p.name.as_deref() == Some(name.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == proto)
                    .then_some(p.container_port)
            })
        }
    }
}

/// A service port resolved on a pod: name, port, protocol.
type ResolvedPort = (Option<String>, i64, String);

/// The subsets for a Service with a selector; `None` for one without.
pub fn plan<P: std::borrow::Borrow<Pod>>(svc: &Service, pods: &[P]) -> Option<Vec<EndpointSubset>> {
    if svc.spec.selector.is_empty() {
        return None;
    }
    let all_ready = svc.spec.publish_not_ready_addresses == Some(true);
    let mut groups: BTreeMap<Vec<ResolvedPort>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for p in pods.iter().map(std::borrow::Borrow::borrow) {
        if !svc.spec.selector.iter().all(|(k, v)| p.metadata.labels.get(k) == Some(v))
            || !super::pod_active(p)
        {
            continue;
        }
        let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()).filter(|i| !i.is_empty()) else {
            continue;
        };
        let ports: Vec<ResolvedPort> = svc
            .spec
            .ports
            .iter()
            .filter_map(|sp| {
                let n = target_port(sp, p)?;
                Some((sp.name.clone(), n, sp.protocol.clone().unwrap_or_else(|| "TCP".into())))
            })
            .collect();
        if ports.is_empty() && !svc.spec.ports.is_empty() {
            continue;
        }
        let addr =
            EndpointAddress {
                ip,
                // A pod naming the Service as its subdomain is published by its hostname.
                hostname: p.spec.hostname.clone().filter(|h| {
                    !h.is_empty() && p.spec.subdomain.as_deref() == Some(svc.metadata.name.as_str())
                }),
                node_name: p.spec.node_name.clone(),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: p.metadata.namespace.clone(),
                    name: Some(p.metadata.name.clone()),
                    uid: p.metadata.uid.clone(),
                    ..Default::default()
                }),
            };
        let g = groups.entry(ports).or_default();
        if all_ready || super::ready_since(p).is_some() {
            g.0.push(addr);
        } else {
            g.1.push(addr);
        }
    }
    Some(
        groups
            .into_iter()
            .map(|(ports, (mut ready, mut not_ready))| {
                ready.sort_by(|a, b| a.ip.cmp(&b.ip));
                not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
                EndpointSubset {
                    addresses: ready,
                    not_ready_addresses: not_ready,
                    ports: ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort { name, port, protocol: Some(protocol) })
                        .collect(),
                }
            })
            .collect(),
    )
}

/// The most endpoints in one EndpointSlice (kube-controller-manager's default).
pub const SLICE_MAX: usize = 100;

/// The EndpointSlices' contents for these subsets: one port set per slice, at most
/// [`SLICE_MAX`] endpoints each — ready ones first, then the others (`ready`/`serving`
/// false). Pure.
pub fn slices(subsets: &[EndpointSubset]) -> Vec<(Vec<EndpointSlicePort>, Vec<SliceEndpoint>)> {
    let mut out = Vec::new();
    for sub in subsets {
        let ports: Vec<EndpointSlicePort> = sub
            .ports
            .iter()
            .map(|p| EndpointSlicePort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: p.protocol.clone(),
                app_protocol: None,
            })
            .collect();
        let endpoint = |a: &EndpointAddress, ready: bool| SliceEndpoint {
            addresses: vec![a.ip.clone()],
            conditions: EndpointConditions {
                ready: Some(ready),
                serving: Some(ready),
                terminating: Some(false),
            },
            hostname: a.hostname.clone(),
            node_name: a.node_name.clone(),
            zone: None,
            target_ref: a.target_ref.clone(),
        };
        let all: Vec<SliceEndpoint> = sub
            .addresses
            .iter()
            .map(|a| endpoint(a, true))
            .chain(sub.not_ready_addresses.iter().map(|a| endpoint(a, false)))
            .collect();
        for chunk in all.chunks(SLICE_MAX) {
            out.push((ports.clone(), chunk.to_vec()));
        }
    }
    out
}

/// Brings the Service's managed EndpointSlices to `want`: the existing ones (by name) take
/// the wanted contents in order, more are made, the rest deleted. A Service with no
/// endpoints keeps one empty slice, as Kubernetes does.
fn write_slices(
    store: &dyn Store,
    svc: &Service,
    ns: &str,
    mut want: Vec<(Vec<EndpointSlicePort>, Vec<SliceEndpoint>)>,
) -> Result<(), StoreError> {
    if want.is_empty() {
        want.push((Vec::new(), Vec::new()));
    }
    let wanted = want.len();
    let (items, _) = store.list(&format!("{SLICES}{ns}/"))?;
    let mut have: Vec<&crate::store::Stored> = items
        .iter()
        .filter(|s| {
            let l = &s.object["metadata"]["labels"];
            l[SERVICE_NAME] == svc.metadata.name.as_str() && l[MANAGED_BY] == CONTROLLER
        })
        .collect();
    have.sort_by(|a, b| a.key.cmp(&b.key));
    let mut labels = svc.metadata.labels.clone();
    labels.insert(SERVICE_NAME.into(), svc.metadata.name.clone());
    labels.insert(MANAGED_BY.into(), CONTROLLER.into());
    let owner = controller_ref("v1", "Service", &svc.metadata);
    for (i, (ports, endpoints)) in want.into_iter().enumerate() {
        let body = |mut v: serde_json::Value| {
            v["addressType"] = "IPv4".into();
            v["endpoints"] = serde_json::to_value(&endpoints).unwrap_or_default();
            v["ports"] = serde_json::to_value(&ports).unwrap_or_default();
            v["metadata"]["labels"] = serde_json::to_value(&labels).unwrap_or_default();
            v["metadata"]["ownerReferences"] = serde_json::json!([owner]);
            v
        };
        match have.get(i) {
            Some(cur) => {
                let v = body(cur.object.clone());
                if v != cur.object {
                    store.update(&cur.key, v, Some(cur.revision))?;
                }
            }
            None => {
                let v = body(serde_json::json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"generateName": format!("{}-", svc.metadata.name), "namespace": ns},
                }));
                super::create_generated(store, SLICES.trim_end_matches('/'), v)?;
            }
        }
    }
    for cur in have.iter().skip(wanted) {
        match store.delete(&cur.key, Some(cur.revision)) {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The reconciler.
pub struct EndpointsController;

impl Controller for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn secondary(&self) -> Vec<&'static str> {
        vec![PODS, ENDPOINTS, SLICES]
    }

    fn keys_for(&self, store: &dyn Store, e: &Event) -> Vec<String> {
        let ns = e.object["metadata"]["namespace"].as_str().unwrap_or("default");
        if e.key.starts_with(ENDPOINTS) {
            let name = e.object["metadata"]["name"].as_str().unwrap_or_default();
            return vec![format!("{PREFIX}{ns}/{name}")];
        }
        if e.key.starts_with(SLICES) {
            // One of ours changed or went (by a user's hand): its Service puts it right.
            let l = &e.object["metadata"]["labels"];
            return match l[SERVICE_NAME].as_str() {
                Some(svc) if l[MANAGED_BY] == CONTROLLER => vec![format!("{PREFIX}{ns}/{svc}")],
                _ => Vec::new(),
            };
        }
        // A pod: every Service of its namespace with a selector (it may have matched before a
        // relabel, so matching now is not enough).
        let Ok((svcs, _)) = store.list(&format!("{PREFIX}{ns}/")) else { return Vec::new() };
        svcs.into_iter()
            .filter(|s| s.object["spec"]["selector"].as_object().is_some_and(|m| !m.is_empty()))
            .map(|s| s.key)
            .collect()
    }

    fn reconcile(&self, store: &dyn Store, key: &str) -> Result<Next, StoreError> {
        let Some(stored) = store.get(key)? else { return Ok(Next::Done) };
        let svc: Service = decode(&stored)?;
        let ns = svc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let pods = super::pods_in(store, &ns)?;
        let Some(subsets) = plan(&svc, &pods) else { return Ok(Next::Done) };
        write_slices(store, &svc, &ns, slices(&subsets))?;
        let ep_key = format!("{ENDPOINTS}{ns}/{}", svc.metadata.name);
        let mut ep =
            Endpoints { api_version: "v1".into(), kind: "Endpoints".into(), subsets, ..Default::default() };
        ep.metadata.name = svc.metadata.name.clone();
        ep.metadata.namespace = Some(ns.clone());
        ep.metadata.labels = svc.metadata.labels.clone();
        ep.metadata.owner_references = vec![controller_ref("v1", "Service", &svc.metadata)];
        match store.get(&ep_key)? {
            None => {
                let mut v = serde_json::to_value(&ep).unwrap_or_default();
                crate::api::objects::on_create(&mut v, &uuid::Uuid::new_v4().to_string(), &crate::api::now());
                match store.create(&ep_key, v) {
                    Ok(_) => {}
                    Err(StoreError::AlreadyExists(k)) => {
                        return Err(StoreError::Conflict { key: k, expected: 0, current: 0 });
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(cur) => {
                let current: Endpoints = decode(&cur)?;
                if current.subsets != ep.subsets
                    || current.metadata.owner_references != ep.metadata.owner_references
                    || current.metadata.labels != ep.metadata.labels
                {
                    let mut v = cur.object.clone();
                    v["subsets"] = serde_json::to_value(&ep.subsets).unwrap_or_default();
                    if ep.subsets.is_empty() {
                        if let Some(m) = v.as_object_mut() {
                            m.remove("subsets");
                        }
                    }
                    v["metadata"]["ownerReferences"] =
                        serde_json::to_value(&ep.metadata.owner_references).unwrap_or_default();
                    v["metadata"]["labels"] = serde_json::to_value(&ep.metadata.labels).unwrap_or_default();
                    store.update(&ep_key, v, Some(cur.revision))?;
                }
            }
        }
        Ok(Next::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_api::kinds::core::ServicePort;
    use tug_api::kinds::pod::{Container, ContainerPort};

    fn pod(name: &str, ip: &str, ready: bool, port_name: Option<(&str, i32)>) -> Pod {
        let mut p = crate::controllers::replicaset::tests::pod(name, None, 1, true, ready.then_some(1));
        p.status.as_mut().unwrap().pod_ip = Some(ip.into());
        let mut c = Container { name: "c".into(), ..Default::default() };
        if let Some((n, port)) = port_name {
            c.ports.push(ContainerPort {
                name: Some(n.into()),
                container_port: i64::from(port),
                ..Default::default()
            });
        }
        p.spec.containers.push(c);
        p
    }

    fn svc(target: IntOrString) -> Service {
        let mut s = Service::default();
        s.metadata.name = "web".into();
        s.spec.selector.insert("app".into(), "web".into());
        s.spec.ports.push(ServicePort {
            name: Some("http".into()),
            protocol: Some("TCP".into()),
            port: 80,
            target_port: Some(target),
            node_port: None,
        });
        s
    }

    #[test]
    fn ready_and_not_ready_pods_and_named_ports() {
        let pods = vec![
            pod("a", "10.244.0.3", true, Some(("http", 8080))),
            pod("b", "10.244.0.2", true, Some(("http", 9090))),
            pod("c", "10.244.0.4", false, Some(("http", 8080))),
            pod("d", "10.244.0.5", true, None),
        ];
        let s = plan(&svc(IntOrString::String("http".into())), &pods).unwrap();
        // Two port sets: 8080 (a ready, c not) and 9090 (b); d has no such port.
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].ports[0].port, 8080);
        assert_eq!(s[0].addresses.iter().map(|a| a.ip.as_str()).collect::<Vec<_>>(), vec!["10.244.0.3"]);
        assert_eq!(s[0].not_ready_addresses[0].ip, "10.244.0.4");
        assert_eq!(s[1].ports[0].port, 9090);
        let by_number = plan(&svc(IntOrString::Int(8080)), &pods).unwrap();
        assert_eq!(by_number.len(), 1);
        assert_eq!(by_number[0].addresses.len(), 3);
        let mut manual = svc(IntOrString::Int(1));
        manual.spec.selector.clear();
        assert_eq!(plan(&manual, &pods), None);
        // The slices: one per port set, ready endpoints first.
        let sl = slices(&s);
        assert_eq!(sl.len(), 2);
        assert_eq!(sl[0].0[0].port, Some(8080));
        let conds: Vec<(String, Option<bool>)> =
            sl[0].1.iter().map(|e| (e.addresses[0].clone(), e.conditions.ready)).collect();
        assert_eq!(conds, [("10.244.0.3".to_string(), Some(true)), ("10.244.0.4".to_string(), Some(false))]);
    }

    #[test]
    fn slices_hold_at_most_a_hundred_endpoints() {
        let addresses: Vec<EndpointAddress> = (0..250)
            .map(|i| EndpointAddress {
                ip: format!("10.244.{}.{}", i / 200, i % 200 + 1),
                ..Default::default()
            })
            .collect();
        let sub = EndpointSubset {
            addresses,
            not_ready_addresses: vec![],
            ports: vec![EndpointPort { name: None, port: 80, protocol: Some("TCP".into()) }],
        };
        let sizes: Vec<usize> = slices(&[sub]).iter().map(|(_, e)| e.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }
}
