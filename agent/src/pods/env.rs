//! A container's `env` and `envFrom`, resolved against ConfigMaps, Secrets and the pod's own
//! fields (the downward API), as kubelet does before it starts the container.

use crate::api;
use base64::Engine;
use serde_json::Value;
use std::collections::BTreeMap;
use tug_api::kinds::pod::{Container, Pod};
use tug_client::Client;

/// The data of a ConfigMap or Secret (Secrets' values decoded), or None if it is absent.
pub async fn data(
    api: &Client,
    ns: &str,
    kind: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let plural = if kind == "Secret" { "secrets" } else { "configmaps" };
    let Some(obj) = api::get(api, &api::core_path(ns, plural, name)).await? else { return Ok(None) };
    let mut out = BTreeMap::new();
    for (k, v) in obj["data"].as_object().into_iter().flatten() {
        let s = v.as_str().unwrap_or_default();
        let value = if kind == "Secret" {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("secret {name}: data[{k}] is not base64: {e}"))?;
            String::from_utf8_lossy(&raw).into_owned()
        } else {
            s.to_string()
        };
        out.insert(k.clone(), value);
    }
    for (k, v) in obj["stringData"].as_object().into_iter().flatten() {
        out.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
    }
    Ok(Some(out))
}

/// `fieldRef`'s supported paths.
pub fn field(pod: &Pod, pod_ip: &str, host_ip: &str, path: &str) -> Result<String, String> {
    let m = &pod.metadata;
    Ok(match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod.spec.node_name.clone().unwrap_or_default(),
        "spec.serviceAccountName" => pod.spec.service_account_name.clone().unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        p => {
            let label = p.strip_prefix("metadata.labels['").and_then(|r| r.strip_suffix("']"));
            let ann = p.strip_prefix("metadata.annotations['").and_then(|r| r.strip_suffix("']"));
            match (label, ann) {
                (Some(k), _) => m.labels.get(k).cloned().unwrap_or_default(),
                (_, Some(k)) => m.annotations.get(k).cloned().unwrap_or_default(),
                _ => return Err(format!("fieldRef {p:?} is not supported")),
            }
        }
    })
}

/// `(name, value)` pairs: `envFrom` first (each source's keys, with its prefix), then `env`.
pub async fn resolve(
    api: &Client,
    pod: &Pod,
    c: &Container,
    pod_ip: &str,
    host_ip: &str,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut out: Vec<(String, String)> = Vec::new();
    if pod.spec.enable_service_links != Some(false) {
        let path = format!("/api/v1/namespaces/{ns}/services");
        let list = api.get(&path).await.map_err(|e| format!("listing services for their variables: {e}"))?;
        out.extend(service_env(list["items"].as_array().map(Vec::as_slice).unwrap_or_default()));
    }
    for src in &c.env_from {
        let (kind, r) = match (&src.config_map_ref, &src.secret_ref) {
            (Some(r), _) => ("ConfigMap", r),
            (_, Some(r)) => ("Secret", r),
            _ => continue,
        };
        match data(api, &ns, kind, &r.name).await? {
            Some(d) => {
                for (k, v) in d {
                    out.push((format!("{}{k}", src.prefix.clone().unwrap_or_default()), v));
                }
            }
            None if r.optional.unwrap_or(false) => {}
            None => return Err(format!("{} {:?} not found", kind.to_lowercase(), r.name)),
        }
    }
    for e in &c.env {
        if let Some(v) = &e.value {
            out.push((e.name.clone(), expand(v, &out)));
            continue;
        }
        let Some(from) = &e.value_from else {
            out.push((e.name.clone(), String::new()));
            continue;
        };
        let value = if let Some(k) = from
            .config_map_key_ref
            .as_ref()
            .map(|k| ("ConfigMap", k))
            .or(from.secret_key_ref.as_ref().map(|k| ("Secret", k)))
        {
            let (kind, sel) = k;
            match data(api, &ns, kind, &sel.name).await?.and_then(|d| d.get(&sel.key).cloned()) {
                Some(v) => v,
                None if sel.optional.unwrap_or(false) => continue,
                None => return Err(format!("couldn't find key {} in {} {}/{}", sel.key, kind, ns, sel.name)),
            }
        } else if let Some(f) = &from.field_ref {
            field(pod, pod_ip, host_ip, &f.field_path)?
        } else if let Some(r) = &from.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or(&c.name);
            let target = pod.spec.containers.iter().chain(&pod.spec.init_containers).find(|x| x.name == name);
            let res = target.and_then(|t| t.resources.as_ref());
            let (section, key) =
                r.resource.split_once('.').ok_or_else(|| format!("resourceFieldRef {:?}", r.resource))?;
            let q =
                res.and_then(
                    |res| if section == "limits" { res.limits.get(key) } else { res.requests.get(key) },
                );
            match (key, q) {
                ("cpu", Some(q)) => q.millis().div_ceil(1000).max(1).to_string(),
                (_, Some(q)) => q.value().to_string(),
                ("cpu", None) => {
                    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string()
                }
                _ => "0".into(),
            }
        } else {
            String::new()
        };
        out.push((e.name.clone(), value));
    }
    Ok(out)
}

/// `$(VAR)` references to earlier variables, as Kubernetes expands them; `$$` escapes.
/// Kubernetes' service environment variables for the Services of the pod's namespace that
/// have a ClusterIP: `WEB_SERVICE_HOST`, `WEB_SERVICE_PORT`, `WEB_SERVICE_PORT_HTTP`, and the
/// Docker-link style `WEB_PORT=tcp://10.96.0.10:80`, `WEB_PORT_80_TCP…`.
pub fn service_env(services: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut svcs: Vec<&serde_json::Value> = services
        .iter()
        .filter(|s| s["spec"]["clusterIP"].as_str().is_some_and(|ip| !ip.is_empty() && ip != "None"))
        .collect();
    svcs.sort_by_key(|s| s["metadata"]["name"].as_str().unwrap_or_default().to_string());
    let mut out = Vec::new();
    for s in svcs {
        let name = s["metadata"]["name"].as_str().unwrap_or_default().to_ascii_uppercase().replace('-', "_");
        let ip = s["spec"]["clusterIP"].as_str().unwrap_or_default();
        let ports = s["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{name}_SERVICE_PORT"), first["port"].to_string()));
        for p in &ports {
            if let Some(pn) = p["name"].as_str() {
                out.push((
                    format!("{name}_SERVICE_PORT_{}", pn.to_ascii_uppercase().replace('-', "_")),
                    p["port"].to_string(),
                ));
            }
        }
        let proto = |p: &serde_json::Value| p["protocol"].as_str().unwrap_or("TCP").to_string();
        out.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first["port"]),
        ));
        for p in &ports {
            let (pr, port) = (proto(p), p["port"].to_string());
            let base = format!("{name}_PORT_{port}_{pr}");
            out.push((base.clone(), format!("{}://{ip}:{port}", pr.to_lowercase())));
            out.push((format!("{base}_PROTO"), pr.to_lowercase()));
            out.push((format!("{base}_PORT"), port));
            out.push((format!("{base}_ADDR"), ip.to_string()));
        }
    }
    out
}

pub fn expand(v: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(')
            && let Some(end) = r.find(')')
        {
            let name = &r[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, val)) => out.push_str(val),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Registry credentials for `image` from the pod's `imagePullSecrets`.
pub async fn pull_credentials(
    api: &Client,
    pod: &Pod,
    image: &str,
) -> Result<Option<tug_images::auth::Credentials>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let registry = tug_images::ImageRef::parse(image)?.registry().to_string();
    for s in &pod.spec.image_pull_secrets {
        let Some(obj): Option<Value> = api::get(api, &api::core_path(&ns, "secrets", &s.name)).await? else {
            continue;
        };
        let Some(b64) = obj["data"][".dockerconfigjson"].as_str() else { continue };
        let json = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("secret {}: .dockerconfigjson is not base64: {e}", s.name))?;
        if let Some(c) = tug_images::auth::from_dockerconfigjson(&json, &registry, &s.name)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_variables_as_kubernetes_names_them() {
        let svcs = vec![
            serde_json::json!({"metadata": {"name": "web-api"}, "spec": {"clusterIP": "10.96.0.10",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
            serde_json::json!({"metadata": {"name": "headless"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
        ];
        let env: std::collections::BTreeMap<String, String> = service_env(&svcs).into_iter().collect();
        assert_eq!(env["WEB_API_SERVICE_HOST"], "10.96.0.10");
        assert_eq!(env["WEB_API_SERVICE_PORT"], "80");
        assert_eq!(env["WEB_API_SERVICE_PORT_DNS"], "53");
        assert_eq!(env["WEB_API_PORT"], "tcp://10.96.0.10:80");
        assert_eq!(env["WEB_API_PORT_53_UDP"], "udp://10.96.0.10:53");
        assert_eq!(env["WEB_API_PORT_53_UDP_ADDR"], "10.96.0.10");
        assert!(!env.keys().any(|k| k.starts_with("HEADLESS")));
    }

    #[test]
    fn expands_references() {
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$(B)", &env), "$(B)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }

    #[test]
    fn downward_fields() {
        let mut pod = Pod::default();
        pod.metadata.name = "web-1".into();
        pod.metadata.labels.insert("app".into(), "web".into());
        assert_eq!(field(&pod, "10.1.1.1", "h", "metadata.name").unwrap(), "web-1");
        assert_eq!(field(&pod, "10.1.1.1", "h", "status.podIP").unwrap(), "10.1.1.1");
        assert_eq!(field(&pod, "", "", "metadata.labels['app']").unwrap(), "web");
        assert!(field(&pod, "", "", "spec.nope").is_err());
    }
}
