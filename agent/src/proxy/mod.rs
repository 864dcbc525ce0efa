//! The service proxy: Services and Endpoints from the control plane → nftables rules in the
//! node's namespace.
//!
//! [`rules`] is the pure part (rules from Services, the batch that changes one ruleset into
//! another); [`services_from`] turns the API objects into what it needs. The executor here
//! lists and watches both kinds, and after each burst of changes applies the difference to
//! what it last applied as one `nft -j -f -` transaction — the whole table on start, after a
//! failure and every `resync`, so drift made by hand is undone.

pub mod rules;

use crate::catalog::{Catalog, key_of};
use rules::{NodeInfo, PortInfo, Proto, Ruleset, ServiceInfo};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The proxy's view of the Services: ports with their ready endpoints.
pub fn services_from<'a>(
    services: impl Iterator<Item = &'a Value>,
    endpoints: &BTreeMap<String, Value>,
) -> Vec<ServiceInfo> {
    let mut out = Vec::new();
    for s in services {
        let key = key_of(s);
        let ns = s["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = s["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let cluster_ip = s["spec"]["clusterIP"].as_str().and_then(|i| i.parse().ok());
        let affinity = (s["spec"]["sessionAffinity"] == "ClientIP").then(|| {
            s["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
                .as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(10800)
        });
        let ep = endpoints.get(&key);
        let mut ports = Vec::new();
        for p in s["spec"]["ports"].as_array().into_iter().flatten() {
            let Some(proto) = Proto::parse(p["protocol"].as_str()) else { continue };
            let Some(port) = p["port"].as_u64().and_then(|v| u16::try_from(v).ok()) else { continue };
            let pname = p["name"].as_str().unwrap_or_default().to_string();
            let mut eps = Vec::new();
            for sub in ep.and_then(|e| e["subsets"].as_array()).into_iter().flatten() {
                let target = sub["ports"].as_array().into_iter().flatten().find(|ep| {
                    ep["name"].as_str().unwrap_or_default() == pname
                        && Proto::parse(ep["protocol"].as_str()) == Some(proto)
                });
                let Some(tp) = target.and_then(|t| t["port"].as_u64()).and_then(|v| u16::try_from(v).ok())
                else {
                    continue;
                };
                for a in sub["addresses"].as_array().into_iter().flatten() {
                    if let Some(ip) = a["ip"].as_str().and_then(|i| i.parse().ok()) {
                        eps.push((ip, tp));
                    }
                }
            }
            ports.push(PortInfo {
                name: pname,
                proto,
                port,
                node_port: p["nodePort"].as_u64().and_then(|v| u16::try_from(v).ok()),
                endpoints: eps,
            });
        }
        out.push(ServiceInfo { namespace: ns, name, cluster_ip, ports, affinity });
    }
    out
}

/// Runs the proxy for ever.
pub async fn run(catalog: Arc<Catalog>, netns: Option<PathBuf>, node: NodeInfo, resync: Duration) {
    let changed = catalog.subscribe();
    let mut applied: Option<Ruleset> = None;
    let mut full_at = Instant::now() + resync;
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep_until(full_at.into()) => applied = None,
        }
        // A burst of changes is one transaction.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let desired = {
            let o = catalog.read();
            rules::build(&services_from(o.services.values(), &o.endpoints), &node)
        };
        if applied.as_ref() == Some(&desired) {
            continue;
        }
        let (cmds, whole) = match &applied {
            Some(old) => (rules::diff(old, &desired), false),
            None => (rules::full(&desired), true),
        };
        let text = rules::batch(cmds);
        let ns = netns.clone();
        let started = Instant::now();
        let r = tokio::task::spawn_blocking(move || {
            crate::network::node::run_nft(ns.as_deref(), &["-j", "-f", "-"], &text)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match r {
            Ok(()) => {
                if whole {
                    full_at = Instant::now() + resync;
                    eprintln!(
                        "tug-agent: proxy: programmed {} service ports in {:?}",
                        desired.service_ips.len() + desired.no_endpoints.len(),
                        started.elapsed()
                    );
                }
                applied = Some(desired);
            }
            Err(e) => {
                eprintln!("tug-agent: proxy: {e}");
                applied = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
                changed.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn services_and_endpoints_become_ports_with_endpoints() {
        let svc = json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "sessionAffinity": "ClientIP",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]}});
        let ep = json!({"metadata": {"name": "web", "namespace": "default"}, "subsets": [
            {"addresses": [{"ip": "10.244.1.5"}], "notReadyAddresses": [{"ip": "10.244.1.6"}],
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]}]});
        let eps: BTreeMap<String, Value> = [("default/web".to_string(), ep)].into();
        let s = services_from([&svc].into_iter(), &eps);
        assert_eq!(s[0].affinity, Some(10800));
        assert_eq!(s[0].ports[0].endpoints, vec![("10.244.1.5".parse().unwrap(), 8080)]);
        assert_eq!(s[0].ports[0].node_port, Some(30080));
        assert_eq!((s[0].ports[1].proto, s[0].ports[1].endpoints[0].1), (Proto::Udp, 5353));
        let headless =
            json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}});
        assert_eq!(services_from([&headless].into_iter(), &eps)[0].cluster_ip, None);
    }
}
