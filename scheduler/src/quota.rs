//! Namespace limits at admission, as Kubernetes' LimitRanger and ResourceQuota plugins do:
//!
//! - [`limit_pod`]: each `Container` LimitRange item gives containers without a request or
//!   limit its `defaultRequest` and `default` (with the `kubernetes.io/limit-ranger`
//!   annotation saying so), then `min`, `max` and `maxLimitRequestRatio` are checked per
//!   container and, for `Pod` items, over the pod; [`limit_claim`] checks a claim's storage.
//! - [`charge`]: every ResourceQuota of the namespace that covers a new object (by its
//!   scopes) must have room for what the object adds (`pods`, `requests.cpu`, `count/…`, …)
//!   over what the quota has charged (`status.used`); the charge is written to the quota
//!   (compare-and-swap, so two creates cannot both take the last room) before the object is
//!   stored. The quota controller ([`crate::controllers::quota`]) recounts `status.used`
//!   from what exists, so a charge whose object was never stored, or objects that went, are
//!   given back.
//!
//! [`usage`] (what one object counts for) and [`recount`] are pure.

use crate::store::{Store, StoreError};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tug_api::kinds::quota::{LimitRange, ResourceQuota, format_millis};
use tug_api::quantity::Quantity;

pub const LIMIT_RANGES: &str = "/limitranges/";
pub const QUOTAS: &str = "/resourcequotas/";

/// Amounts in thousandths, by resource name.
pub type Amounts = BTreeMap<String, u128>;

fn quantity(v: &Value) -> Option<u128> {
    match v {
        Value::String(s) => Quantity::parse(s).ok().map(|q| q.millis()),
        Value::Number(n) => Quantity::parse(&n.to_string()).ok().map(|q| q.millis()),
        _ => None,
    }
}

fn containers(spec: &Value) -> impl Iterator<Item = (&Value, bool)> {
    let list = |f: &'static str, init: bool| spec[f].as_array().into_iter().flatten().map(move |c| (c, init));
    list("initContainers", true).chain(list("containers", false))
}

/// A pod's effective `requests` or `limits` of `res` (Kubernetes' rule: the app containers
/// and sidecars together, or the largest init container if that is more, plus overhead);
/// None when some container does not say.
fn pod_amount(spec: &Value, kind: &str, res: &str) -> Option<u128> {
    let (mut sum, mut init_max, mut all) = (0u128, 0u128, true);
    for (c, init) in containers(spec) {
        let v = quantity(&c["resources"][kind][res]);
        all &= v.is_some();
        let v = v.unwrap_or(0);
        if init && c["restartPolicy"] != "Always" {
            init_max = init_max.max(v);
        } else {
            sum += v;
        }
    }
    let overhead = quantity(&spec["overhead"][res]).unwrap_or(0);
    all.then_some(sum.max(init_max) + overhead)
}

fn terminal(pod: &Value) -> bool {
    matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

fn best_effort(spec: &Value) -> bool {
    containers(spec).all(|(c, _)| {
        ["requests", "limits"].iter().all(|k| c["resources"][*k].as_object().is_none_or(|m| m.is_empty()))
    })
}

/// Whether a quota's scopes cover a pod.
fn covers_pod(q: &ResourceQuota, pod: &Value) -> bool {
    let spec = &pod["spec"];
    let scope = |s: &str| match s {
        "BestEffort" => best_effort(spec),
        "NotBestEffort" => !best_effort(spec),
        "Terminating" => spec["activeDeadlineSeconds"].as_i64().is_some(),
        "NotTerminating" => spec["activeDeadlineSeconds"].as_i64().is_none(),
        _ => true,
    };
    let class = spec["priorityClassName"].as_str().unwrap_or_default();
    q.spec.scopes.iter().all(|s| scope(s))
        && q.spec.scope_selector.iter().flat_map(|s| &s.match_expressions).all(|e| {
            match e.scope_name.as_str() {
                "PriorityClass" => match e.operator.as_str() {
                    "In" => e.values.iter().any(|v| v == class),
                    "NotIn" => !e.values.iter().any(|v| v == class),
                    "Exists" => !class.is_empty(),
                    "DoesNotExist" => class.is_empty(),
                    _ => false,
                },
                other => scope(other),
            }
        })
}

/// Whether a quota's scopes cover an object of `kind` (scoped quotas cover pods only).
pub fn covers(q: &ResourceQuota, kind: &str, obj: &Value) -> bool {
    let scoped = !q.spec.scopes.is_empty() || q.spec.scope_selector.is_some();
    if kind == "Pod" { covers_pod(q, obj) } else { !scoped }
}

/// What one object of `kind` (`plural`, `group`) counts for in a quota.
pub fn usage(kind: &str, plural: &str, group: &str, obj: &Value) -> Amounts {
    let mut out = Amounts::new();
    if kind == "Pod" && terminal(obj) {
        return out;
    }
    let count = if group.is_empty() { format!("count/{plural}") } else { format!("count/{plural}.{group}") };
    out.insert(count, 1000);
    match kind {
        "Pod" => {
            out.insert("pods".into(), 1000);
            for (kind, prefix) in [("requests", "requests."), ("limits", "limits.")] {
                for res in ["cpu", "memory", "ephemeral-storage"] {
                    let v = pod_amount(&obj["spec"], kind, res).unwrap_or_else(|| {
                        // Partly set: what is set counts.
                        containers(&obj["spec"])
                            .filter_map(|(c, _)| quantity(&c["resources"][kind][res]))
                            .sum()
                    });
                    out.insert(format!("{prefix}{res}"), v);
                    if kind == "requests" {
                        out.insert(res.to_string(), v);
                    }
                }
            }
        }
        "Service" => {
            out.insert("services".into(), 1000);
            match obj["spec"]["type"].as_str() {
                Some("LoadBalancer") => {
                    out.insert("services.loadbalancers".into(), 1000);
                    out.insert("services.nodeports".into(), 1000 * node_ports(obj));
                }
                Some("NodePort") => {
                    out.insert("services.nodeports".into(), 1000 * node_ports(obj));
                }
                _ => {}
            }
        }
        "PersistentVolumeClaim" => {
            out.insert("persistentvolumeclaims".into(), 1000);
            let storage = quantity(&obj["spec"]["resources"]["requests"]["storage"]).unwrap_or(0);
            out.insert("requests.storage".into(), storage);
            if let Some(class) = obj["spec"]["storageClassName"].as_str() {
                let base = format!("{class}.storageclass.storage.k8s.io/");
                out.insert(format!("{base}requests.storage"), storage);
                out.insert(format!("{base}persistentvolumeclaims"), 1000);
            }
        }
        "ConfigMap" => {
            out.insert("configmaps".into(), 1000);
        }
        "Secret" => {
            out.insert("secrets".into(), 1000);
        }
        "ResourceQuota" => {
            out.insert("resourcequotas".into(), 1000);
        }
        _ => {}
    }
    out
}

fn node_ports(svc: &Value) -> u128 {
    svc["spec"]["ports"].as_array().map_or(0, |p| p.len() as u128)
}

/// The kinds whose objects a quota with these `hard` names counts.
fn counted_kinds(hard: &BTreeMap<String, Quantity>) -> Vec<&'static tug_api::object::KindInfo> {
    tug_api::object::KINDS
        .iter()
        .filter(|k| k.namespaced)
        .filter(|k| {
            hard.keys().any(|name| {
                let by_usage = usage(k.kind, k.plural, k.group, &json!({"spec": {}})).contains_key(name);
                by_usage || (k.kind == "Service" && name.starts_with("services."))
            })
        })
        .collect()
}

/// What exists in `ns` that `q` counts, for each of its `hard` names.
pub fn recount(store: &dyn Store, ns: &str, q: &ResourceQuota) -> Result<Amounts, StoreError> {
    let mut used: Amounts = q.spec.hard.keys().map(|k| (k.clone(), 0)).collect();
    for k in counted_kinds(&q.spec.hard) {
        let (items, _) = store.list(&crate::api::path::prefix(k, Some(ns)))?;
        for s in items.iter().filter(|s| covers(q, k.kind, &s.object)) {
            for (name, v) in usage(k.kind, k.plural, k.group, &s.object) {
                if let Some(u) = used.get_mut(&name) {
                    *u += v;
                }
            }
        }
    }
    Ok(used)
}

/// `requests.cpu=500m,pods=1`: Kubernetes' way of printing a resource list.
fn listed(a: &Amounts) -> String {
    a.iter().map(|(k, v)| format!("{k}={}", format_millis(k, *v))).collect::<Vec<_>>().join(",")
}

/// The decision for one quota: None when the object fits, else Kubernetes' message.
pub fn check(
    q: &ResourceQuota,
    used: &Amounts,
    delta: &Amounts,
    obj_kind: &str,
    obj: &Value,
) -> Option<String> {
    let name = &q.metadata.name;
    // A quota on compute resources needs every container to say what it wants.
    if obj_kind == "Pod" {
        let mut missing: Vec<String> = Vec::new();
        for hard in q.spec.hard.keys() {
            let (kind, res) = match hard.split_once('.') {
                Some(("requests" | "limits", r)) if r == "cpu" || r == "memory" => {
                    (if hard.starts_with("limits") { "limits" } else { "requests" }, r)
                }
                None if hard == "cpu" || hard == "memory" => ("requests", hard.as_str()),
                _ => continue,
            };
            let lacking: Vec<String> = containers(&obj["spec"])
                .filter(|(c, _)| quantity(&c["resources"][kind][res]).is_none())
                .map(|(c, _)| c["name"].as_str().unwrap_or_default().to_string())
                .collect();
            if !lacking.is_empty() {
                missing.push(format!("{hard} for: {}", lacking.join(",")));
            }
        }
        if !missing.is_empty() {
            return Some(format!("failed quota: {name}: must specify {}", missing.join("; ")));
        }
    }
    let (mut requested, mut current, mut limited) = (Amounts::new(), Amounts::new(), Amounts::new());
    for (res, hard) in &q.spec.hard {
        let want = delta.get(res).copied().unwrap_or(0);
        let have = used.get(res).copied().unwrap_or(0);
        if want > 0 && have + want > hard.millis() {
            requested.insert(res.clone(), want);
            current.insert(res.clone(), have);
            limited.insert(res.clone(), hard.millis());
        }
    }
    (!requested.is_empty()).then(|| {
        format!(
            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
            listed(&requested),
            listed(&current),
            listed(&limited)
        )
    })
}

/// ResourceQuota admission of a new object of `info` in `ns`: refused with the quota's
/// message, or charged to every quota that covers it (not when `dry`).
pub fn charge(
    store: &dyn Store,
    info: &tug_api::object::KindInfo,
    ns: &str,
    obj: &Value,
    dry: bool,
) -> Result<(), String> {
    if !info.namespaced {
        return Ok(());
    }
    let delta = usage(info.kind, info.plural, info.group, obj);
    for _ in 0..8 {
        let (items, _) = store.list(&format!("{QUOTAS}{ns}/")).map_err(|e| e.to_string())?;
        let mut writes = Vec::new();
        for s in &items {
            let Ok(q) = tug_api::from_value_ref::<ResourceQuota>(&s.object) else { continue };
            if !covers(&q, info.kind, obj) || !q.spec.hard.keys().any(|k| delta.contains_key(k)) {
                continue;
            }
            // What exists, or what has been charged if more (a charge whose object another
            // replica has not stored yet): the controller's recount may have written a lower
            // `used` over such a charge, so `status.used` alone is not enough.
            let mut used = recount(store, ns, &q).map_err(|e| e.to_string())?;
            for (k, v) in q.status.iter().flat_map(|st| &st.used) {
                let u = used.entry(k.clone()).or_default();
                *u = (*u).max(v.millis());
            }
            if let Some(msg) = check(&q, &used, &delta, info.kind, obj) {
                return Err(msg);
            }
            let mut after = used.clone();
            for k in q.spec.hard.keys() {
                *after.entry(k.clone()).or_default() += delta.get(k).copied().unwrap_or(0);
            }
            writes.push((s.clone(), after));
        }
        if dry {
            return Ok(());
        }
        let mut conflict = false;
        for (s, after) in writes {
            let mut o = s.object.clone();
            o["status"] = status_json(&o["spec"]["hard"], &after);
            match store.update(&s.key, o, Some(s.revision)) {
                Ok(_) => {}
                Err(StoreError::Conflict { .. }) => {
                    conflict = true;
                    break;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        if !conflict {
            return Ok(());
        }
    }
    Err("the namespace's quotas are changing too fast to charge; try again".into())
}

/// A quota's `status` for `hard` with `used`.
pub fn status_json(hard: &Value, used: &Amounts) -> Value {
    let used: serde_json::Map<String, Value> = used
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(format_millis(k, *v).as_str().to_string())))
        .collect();
    json!({"hard": hard, "used": used})
}

/// The LimitRanges of `ns`.
fn ranges(store: &dyn Store, ns: &str) -> Result<Vec<LimitRange>, String> {
    let (items, _) = store.list(&format!("{LIMIT_RANGES}{ns}/")).map_err(|e| e.to_string())?;
    Ok(items.iter().filter_map(|s| tug_api::from_value_ref(&s.object).ok()).collect())
}

fn q(resource: &str, millis: u128) -> String {
    format_millis(resource, millis).as_str().to_string()
}

/// LimitRanger for a new pod: defaults written into `pod`, bounds checked. Err is the list
/// of violations, Kubernetes' way.
pub fn limit_pod(store: &dyn Store, ns: &str, pod: &mut Value) -> Result<(), String> {
    let ranges = ranges(store, ns)?;
    if ranges.is_empty() {
        return Ok(());
    }
    let items: Vec<_> = ranges.iter().flat_map(|r| &r.spec.limits).collect();
    // Defaults, container by container: a missing request is its own limit when the user
    // set one (Kubernetes' pod defaulting), else the default request; a missing limit is the
    // default limit.
    let mut notes: Vec<String> = Vec::new();
    for field in ["initContainers", "containers"] {
        for c in pod["spec"][field].as_array_mut().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let own_limits = c["resources"]["limits"].clone();
            let (mut reqs, mut lims): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
            for item in items.iter().filter(|i| i.type_ == "Container") {
                for (res, v) in &item.default_request {
                    if c["resources"]["requests"][res].is_null() {
                        let own = &own_limits[res];
                        c["resources"]["requests"][res] =
                            if own.is_null() { Value::String(v.as_str().to_string()) } else { own.clone() };
                        if !reqs.contains(res) {
                            reqs.push(res.clone());
                        }
                    }
                }
                for (res, v) in &item.default {
                    if c["resources"]["limits"][res].is_null() {
                        c["resources"]["limits"][res] = Value::String(v.as_str().to_string());
                        if !lims.contains(res) {
                            lims.push(res.clone());
                        }
                    }
                }
            }
            if !reqs.is_empty() {
                notes.push(format!("{} request for container {name}", reqs.join(", ")));
            }
            if !lims.is_empty() {
                notes.push(format!("{} limit for container {name}", lims.join(", ")));
            }
        }
    }
    if !notes.is_empty() {
        if !pod["metadata"]["annotations"].is_object() {
            pod["metadata"]["annotations"] = json!({});
        }
        let note = format!("LimitRanger plugin set: {}", notes.join("; "));
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"] = note.into();
    }
    // Bounds.
    let mut errs: Vec<String> = Vec::new();
    for item in &items {
        let per = item.type_.as_str();
        if per != "Container" && per != "Pod" {
            continue;
        }
        let mut check = |res: &str, req: Option<u128>, lim: Option<u128>| {
            if let Some(min) = item.min.get(res) {
                match req {
                    Some(r) if r < min.millis() => errs.push(format!(
                        "minimum {res} usage per {per} is {}, but request is {}",
                        min.as_str(),
                        q(res, r)
                    )),
                    None => errs.push(format!(
                        "minimum {res} usage per {per} is {}.  No request is specified",
                        min.as_str()
                    )),
                    _ => {}
                }
            }
            if let Some(max) = item.max.get(res) {
                match lim {
                    Some(l) if l > max.millis() => errs.push(format!(
                        "maximum {res} usage per {per} is {}, but limit is {}",
                        max.as_str(),
                        q(res, l)
                    )),
                    None => errs.push(format!(
                        "maximum {res} usage per {per} is {}.  No limit is specified",
                        max.as_str()
                    )),
                    _ => {}
                }
            }
            if let (Some(ratio), Some(r), Some(l)) = (item.max_limit_request_ratio.get(res), req, lim) {
                if r > 0 && l * 1000 > ratio.millis() * r {
                    errs.push(format!(
                        "{res} max limit to request ratio per {per} is {}, but provided ratio is {:.6}",
                        ratio.as_str(),
                        l as f64 / r as f64
                    ));
                }
            }
        };
        let resources: Vec<&String> =
            item.min.keys().chain(item.max.keys()).chain(item.max_limit_request_ratio.keys()).collect();
        if per == "Container" {
            for (c, _) in containers(&pod["spec"]) {
                for res in &resources {
                    check(
                        res,
                        quantity(&c["resources"]["requests"][res.as_str()]),
                        quantity(&c["resources"]["limits"][res.as_str()]),
                    );
                }
            }
        } else {
            for res in &resources {
                check(
                    res,
                    pod_amount(&pod["spec"], "requests", res),
                    pod_amount(&pod["spec"], "limits", res),
                );
            }
        }
    }
    errs.dedup();
    if errs.is_empty() { Ok(()) } else { Err(format!("[{}]", errs.join(", "))) }
}

/// Both admissions of a new object of `info` in `ns`: LimitRanger (pods and claims), then
/// ResourceQuota.
pub fn admit(
    store: &dyn Store,
    info: &tug_api::object::KindInfo,
    ns: &str,
    obj: &mut Value,
    dry: bool,
) -> Result<(), String> {
    match info.kind {
        "Pod" => limit_pod(store, ns, obj)?,
        "PersistentVolumeClaim" => limit_claim(store, ns, obj)?,
        _ => {}
    }
    charge(store, info, ns, obj, dry)
}

/// Held from admission until the object is stored: within this server, the next create's
/// recount sees the object the last one admitted.
static ADMISSION: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The admission lock (see [`ADMISSION`]); hold it across [`admit`] and the store's create.
pub fn admission_lock() -> std::sync::MutexGuard<'static, ()> {
    ADMISSION.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The admission lock where it is needed: in a namespace with a ResourceQuota (the next
/// create's recount must see the object the last one admitted). Elsewhere — cluster-scoped
/// objects, namespaces without quotas — creates do not wait for each other (an API write
/// behind a controller's batch of pods, or behind another create's fsync). A quota made
/// meanwhile is set right by the quota controller's recount.
pub fn admission_lock_in(store: &dyn Store, ns: Option<&str>) -> Option<std::sync::MutexGuard<'static, ()>> {
    let ns = ns?;
    let quotas = store.keys(&format!("{QUOTAS}{ns}/")).map_or(true, |(keys, _)| !keys.is_empty());
    quotas.then(admission_lock)
}

/// LimitRanger for a new claim: its storage request within each `PersistentVolumeClaim`
/// item's `min` and `max`.
pub fn limit_claim(store: &dyn Store, ns: &str, claim: &Value) -> Result<(), String> {
    let want = quantity(&claim["spec"]["resources"]["requests"]["storage"]).unwrap_or(0);
    let mut errs = Vec::new();
    for r in ranges(store, ns)? {
        for item in r.spec.limits.iter().filter(|i| i.type_ == "PersistentVolumeClaim") {
            if let Some(min) = item.min.get("storage").filter(|m| want < m.millis()) {
                errs.push(format!(
                    "minimum storage usage per PersistentVolumeClaim is {}, but request is {}",
                    min.as_str(),
                    q("storage", want)
                ));
            }
            if let Some(max) = item.max.get("storage").filter(|m| want > m.millis()) {
                errs.push(format!(
                    "maximum storage usage per PersistentVolumeClaim is {}, but request is {}",
                    max.as_str(),
                    q("storage", want)
                ));
            }
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(format!("[{}]", errs.join(", "))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(hard: Value) -> ResourceQuota {
        serde_json::from_value(
            json!({"metadata": {"name": "compute", "namespace": "team"}, "spec": {"hard": hard}}),
        )
        .unwrap()
    }

    fn pod(req_cpu: Option<&str>, lim_cpu: Option<&str>) -> Value {
        let mut res = json!({});
        if let Some(r) = req_cpu {
            res["requests"] = json!({"cpu": r});
        }
        if let Some(l) = lim_cpu {
            res["limits"] = json!({"cpu": l});
        }
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "resources": res}]}})
    }

    #[test]
    fn a_pod_counts_its_effective_requests_and_limits() {
        let mut p = pod(Some("500m"), Some("1"));
        p["spec"]["initContainers"] =
            json!([{"name": "big", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "2"}}}]);
        let u = usage("Pod", "pods", "", &p);
        assert_eq!((u["pods"], u["requests.cpu"], u["cpu"], u["limits.cpu"]), (1000, 2000, 2000, 2000));
        assert_eq!(u["count/pods"], 1000);
        let mut done = p.clone();
        done["status"]["phase"] = "Succeeded".into();
        assert!(usage("Pod", "pods", "", &done).is_empty(), "a finished pod holds nothing");
        let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
        let u = usage("Service", "services", "", &svc);
        assert_eq!((u["services"], u["services.nodeports"]), (1000, 2000));
    }

    #[test]
    fn a_quota_refuses_what_would_exceed_it_in_kubernetes_words() {
        let q = quota(json!({"pods": "2", "requests.cpu": "1"}));
        let used: Amounts = [("pods".to_string(), 2000), ("requests.cpu".to_string(), 500)].into();
        let p = pod(Some("600m"), None);
        let delta = usage("Pod", "pods", "", &p);
        assert_eq!(
            check(&q, &used, &delta, "Pod", &p).unwrap(),
            "exceeded quota: compute, requested: pods=1,requests.cpu=600m, used: pods=2,requests.cpu=500m, limited: pods=2,requests.cpu=1"
        );
        let room: Amounts = [("pods".to_string(), 1000), ("requests.cpu".to_string(), 400)].into();
        assert_eq!(check(&q, &room, &delta, "Pod", &p), None);
        assert_eq!(
            check(&q, &room, &delta, "Pod", &pod(None, None)).unwrap(),
            "failed quota: compute: must specify requests.cpu for: c"
        );
    }

    #[test]
    fn scopes_choose_the_pods_a_quota_covers() {
        let mut q = quota(json!({"pods": "1"}));
        q.spec.scopes = vec!["BestEffort".into()];
        assert!(covers(&q, "Pod", &pod(None, None)));
        assert!(!covers(&q, "Pod", &pod(Some("1"), None)));
        assert!(!covers(&q, "Service", &json!({})), "scoped quotas are for pods");
        let mut pc = quota(json!({"pods": "1"}));
        pc.spec.scope_selector = serde_json::from_value(
            json!({"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}),
        )
        .unwrap();
        let mut high = pod(None, None);
        high["spec"]["priorityClassName"] = "high".into();
        assert!(covers(&pc, "Pod", &high) && !covers(&pc, "Pod", &pod(None, None)));
    }
}
