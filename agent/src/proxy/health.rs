//! `healthCheckNodePort`s: a LoadBalancer Service with `externalTrafficPolicy: Local` gets
//! one, and every node answers `GET /healthz` (any path) on it — 200 when the node has a
//! ready endpoint of the Service, 503 when not — so an outside load balancer sends traffic
//! only to nodes that will not drop it. kube-proxy's answer, in its words:
//! `{"service":{"namespace":"ns","name":"web"},"localEndpoints":1,"serviceProxyHealthy":true}`.
//!
//! [`wanted`] is pure (the catalog → port → Service and its local endpoint count); the
//! listeners live on one thread inside the node's network namespace, opened and closed as
//! the ports come and go.

use bytes::Bytes;
use http_body_util::Full;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// By port: the Service (`namespace`, `name`) and how many ready endpoints it has on `me`.
pub type Wanted = BTreeMap<u16, (String, String, usize)>;

/// The health check ports this node serves, from the catalog's Services and Endpoints.
pub fn wanted(o: &crate::catalog::Objects, me: &str) -> Wanted {
    let mut out = Wanted::new();
    for s in o.services.values() {
        let spec = &s["spec"];
        if spec["type"] != "LoadBalancer" || spec["externalTrafficPolicy"] != "Local" {
            continue;
        }
        let Some(port) = spec["healthCheckNodePort"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        let key = crate::catalog::key_of(s);
        let local = o
            .endpoints
            .get(&key)
            .and_then(|e| e["subsets"].as_array())
            .into_iter()
            .flatten()
            .flat_map(|sub| sub["addresses"].as_array().into_iter().flatten())
            .filter(|a| a["nodeName"] == me)
            .filter_map(|a| a["ip"].as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let (ns, name) = key.split_once('/').unwrap_or(("default", &key));
        out.insert(port, (ns.to_string(), name.to_string(), local));
    }
    out
}

/// The answer for one port.
pub fn answer(w: Option<&(String, String, usize)>) -> (u16, String) {
    match w {
        Some((ns, name, n)) => (
            if *n > 0 { 200 } else { 503 },
            serde_json::json!({"service": {"namespace": ns, "name": name}, "localEndpoints": n,
                               "serviceProxyHealthy": true})
            .to_string(),
        ),
        None => (404, "{}".into()),
    }
}

async fn serve_port(port: u16, state: Arc<RwLock<Wanted>>) {
    let l = crate::network::netns::listen("proxy: health check", port).await;
    loop {
        let Ok((s, _)) = l.accept().await else { continue };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                let (status, body) = answer(state.read().unwrap_or_else(|e| e.into_inner()).get(&port));
                let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        });
    }
}

/// Serves the health check ports for ever, following the catalog.
pub fn start(
    catalog: Arc<crate::catalog::Catalog>,
    me: String,
    netns: Option<PathBuf>,
) -> Result<(), String> {
    let state: Arc<RwLock<Wanted>> = Arc::default();
    let (tx, mut rx) = tokio::sync::watch::channel(Wanted::new());
    let shared = Arc::clone(&state);
    crate::network::netns::spawn_runtime("tug-healthz", netns.as_deref(), move || async move {
        let mut open: BTreeMap<u16, tokio::task::JoinHandle<()>> = BTreeMap::new();
        loop {
            let w = rx.borrow_and_update().clone();
            open.retain(|port, task| {
                let keep = w.contains_key(port);
                if !keep {
                    task.abort();
                }
                keep
            });
            for port in w.keys() {
                open.entry(*port).or_insert_with(|| tokio::spawn(serve_port(*port, Arc::clone(&shared))));
            }
            *shared.write().unwrap_or_else(|e| e.into_inner()) = w;
            if rx.changed().await.is_err() {
                return;
            }
        }
    })?;
    tokio::spawn(async move {
        let changed = catalog.subscribe();
        loop {
            changed.notified().await;
            let w = wanted(&catalog.read(), &me);
            tx.send_if_modified(|cur| {
                let differs = *cur != w;
                if differs {
                    *cur = w;
                }
                differs
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn a_node_is_healthy_for_a_service_while_it_has_an_endpoint() {
        let mut o = crate::catalog::Objects::default();
        o.services.insert(
            "default/web".into(),
            json!({"metadata": {"name": "web", "namespace": "default"},
                   "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000}}),
        );
        o.endpoints.insert(
            "default/web".into(),
            json!({"subsets": [{"addresses": [{"ip": "10.244.1.5", "nodeName": "b"}]}]}),
        );
        let a = wanted(&o, "a");
        assert_eq!(answer(a.get(&32000)).0, 503);
        let b = wanted(&o, "b");
        let (code, body) = answer(b.get(&32000));
        assert_eq!(code, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["localEndpoints"], 1);
        assert_eq!(v["service"]["name"], "web");
    }
}
