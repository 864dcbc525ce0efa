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
