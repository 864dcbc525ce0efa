//! The three PATCH bodies Kubernetes accepts, applied to an object's JSON: JSON merge patch
//! (RFC 7386), JSON patch (RFC 6902) and strategic merge patch, whose lists merge by a key
//! (`containers` by `name`, a container's `ports` by `containerPort`) as the core types'
//! `patchStrategy`/`patchMergeKey` tags say. [`list_strategy`] is that table; the OpenAPI
//! document publishes the same one. Pure.

use serde_json::{Map, Value};

/// How a list field merges in a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the object's (the default).
    Replace,
    /// Elements merge by this key.
    MergeKey(&'static str),
    /// A set of primitives: the patch's values are added.
    MergePrimitives,
}

/// The patch strategy of the list at `path` (field names from the object's root, list indices
/// left out: `spec.template.spec.containers.ports`) in an object of `kind`.
pub fn list_strategy(kind: &str, path: &str) -> ListStrategy {
    use ListStrategy::*;
    let last = path.rsplit('.').next().unwrap_or(path);
    let parent = path.rsplit('.').nth(1).unwrap_or("");
    match (last, parent) {
        ("finalizers", "metadata") => MergePrimitives,
        ("ownerReferences", _) => MergeKey("uid"),
        ("containers" | "initContainers" | "ephemeralContainers", _) => MergeKey("name"),
        ("ports", "containers" | "initContainers") => MergeKey("containerPort"),
        ("ports", "spec") if kind == "Service" => MergeKey("port"),
        ("env", _) => MergeKey("name"),
        ("volumeMounts", _) => MergeKey("mountPath"),
        ("volumeDevices", _) => MergeKey("devicePath"),
        ("volumes", _) => MergeKey("name"),
        ("imagePullSecrets", _) => MergeKey("name"),
        ("hostAliases", _) => MergeKey("ip"),
        ("topologySpreadConstraints", _) => MergeKey("topologyKey"),
        ("conditions", _) => MergeKey("type"),
        ("podCIDRs", _) => MergePrimitives,
        _ => Replace,
    }
}

/// RFC 7386: objects merge, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// RFC 6902: the operations in order; any failure leaves `target` untouched.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch must be an array of operations")?;
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let name = op["op"].as_str().ok_or_else(|| format!("operation {i}: missing \"op\""))?;
        let path = op["path"].as_str().ok_or_else(|| format!("operation {i}: missing \"path\""))?;
        let value =
            || op.get("value").cloned().ok_or_else(|| format!("operation {i} ({name}): missing \"value\""));
        let from = || op["from"].as_str().ok_or_else(|| format!("operation {i} ({name}): missing \"from\""));
        let r = match name {
            "add" => add(&mut doc, path, value()?),
            "remove" => remove(&mut doc, path).map(drop),
            "replace" => remove(&mut doc, path).and_then(|_| add(&mut doc, path, value()?)),
            "move" => {
                let f = from()?;
                remove(&mut doc, f).and_then(|v| add(&mut doc, path, v))
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| format!("{}: no such path", from().unwrap_or("")));
                v.and_then(|v| add(&mut doc, path, v))
            }
            "test" => {
                let want = value()?;
                match doc.pointer(path) {
                    Some(got) if *got == want => Ok(()),
                    _ => Err(format!("test failed: {path} is not {want}")),
                }
            }
            other => Err(format!("unknown op {other:?}")),
        };
        r.map_err(|e| format!("operation {i} ({name} {path}): {e}"))?;
    }
    *target = doc;
    Ok(())
}

fn split(path: &str) -> Result<(String, String), String> {
    if path.is_empty() {
        return Err("the whole document cannot be patched".into());
    }
    let (parent, last) = path.rsplit_once('/').ok_or("a JSON pointer starts with /")?;
    Ok((parent.to_string(), last.replace("~1", "/").replace("~0", "~")))
}

fn add(doc: &mut Value, path: &str, v: Value) -> Result<(), String> {
    let (parent, last) = split(path)?;
    match doc.pointer_mut(&parent).ok_or("the parent path does not exist")? {
        Value::Object(m) => {
            m.insert(last, v);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" { a.len() } else { last.parse().map_err(|_| "not an array index")? };
            if i > a.len() {
                return Err("the index is past the end of the array".into());
            }
            a.insert(i, v);
            Ok(())
        }
        _ => Err("the parent is neither an object nor an array".into()),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split(path)?;
    match doc.pointer_mut(&parent).ok_or("the path does not exist")? {
        Value::Object(m) => m.remove(&last).ok_or_else(|| "the path does not exist".into()),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| "not an array index")?;
            if i >= a.len() {
                return Err("the index is past the end of the array".into());
            }
            Ok(a.remove(i))
        }
        _ => Err("the parent is neither an object nor an array".into()),
    }
}

/// A strategic merge patch on an object of `kind`: maps merge (`null` removes a key), lists
/// merge as [`list_strategy`] says, and the directives `$patch` (`replace`, `delete`, `merge`),
/// `$retainKeys`, `$deleteFromPrimitiveList/FIELD` and `$setElementOrder/FIELD` are honoured.
pub fn strategic(kind: &str, target: &mut Value, patch: &Value) -> Result<(), String> {
    let mut out = target.clone();
    merge_map(kind, "", &mut out, patch)?;
    *target = out;
    Ok(())
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() { k.to_string() } else { format!("{path}.{k}") }
}

fn merge_map(kind: &str, path: &str, target: &mut Value, patch: &Value) -> Result<(), String> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            *target = Value::Object(m);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("{path}: unknown $patch {other:?}")),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return Ok(()) };
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let drop: Vec<&Value> = v.as_array().map(|a| a.iter().collect()).unwrap_or_default();
            if let Some(Value::Array(a)) = t.get_mut(field) {
                a.retain(|x| !drop.contains(&x));
            }
            continue;
        }
        if k.starts_with("$setElementOrder/") {
            continue;
        }
        if k.starts_with('$') {
            return Err(format!("{}: unknown directive {k:?}", join(path, k)));
        }
        let here = join(path, k);
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match v {
            Value::Array(items) => {
                let merged = merge_list(kind, &here, t.get(k), items)?;
                t.insert(k.clone(), merged);
            }
            Value::Object(_) => {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                merge_map(kind, &here, slot, v)?;
                if slot.is_null() {
                    t.remove(k);
                }
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    // `$setElementOrder/FIELD`: the merged list in the patch's order (the elements it names
    // first, in that order; the others after, as they were).
    for (k, v) in p {
        let Some(field) = k.strip_prefix("$setElementOrder/") else { continue };
        let (Some(order), Some(Value::Array(list))) = (v.as_array(), t.get_mut(field)) else { continue };
        let key = match list_strategy(kind, &join(path, field)) {
            ListStrategy::MergeKey(key) => Some(key),
            _ => None,
        };
        let ident = |x: &Value| match key {
            Some(key) => x[key].clone(),
            None => x.clone(),
        };
        let mut sorted: Vec<Value> = Vec::with_capacity(list.len());
        for o in order {
            let want = ident(o);
            if let Some(i) = list.iter().position(|x| ident(x) == want) {
                sorted.push(list.remove(i));
            }
        }
        sorted.append(list);
        *list = sorted;
    }
    if let Some(retain) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_list(kind: &str, path: &str, current: Option<&Value>, items: &[Value]) -> Result<Value, String> {
    // `[{"$patch": "replace"}, …]`: the rest replaces the list.
    if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        let rest: Vec<Value> = items
            .iter()
            .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("replace"))
            .cloned()
            .collect();
        return Ok(Value::Array(rest));
    }
    let cur: Vec<Value> = current.and_then(Value::as_array).cloned().unwrap_or_default();
    match list_strategy(kind, path) {
        ListStrategy::Replace => Ok(Value::Array(items.to_vec())),
        ListStrategy::MergePrimitives => {
            let mut out = cur;
            for i in items {
                if !out.contains(i) {
                    out.push(i.clone());
                }
            }
            Ok(Value::Array(out))
        }
        ListStrategy::MergeKey(key) => {
            let mut out = cur;
            for item in items {
                let Some(id) = item.get(key) else {
                    return Err(format!("{path}: an element has no merge key {key:?}"));
                };
                let at = out.iter().position(|x| x.get(key) == Some(id));
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = at {
                        out.remove(i);
                    }
                    continue;
                }
                match at {
                    Some(i) => merge_map(kind, path, &mut out[i], item)?,
                    None => {
                        let mut fresh = Value::Null;
                        merge_map(kind, path, &mut fresh, item)?;
                        out.push(fresh);
                    }
                }
            }
            Ok(Value::Array(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_merges_objects_and_null_removes() {
        let mut d = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 1}});
        merge_patch(&mut d, &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"replicas": 3}}));
        assert_eq!(d, json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"replicas": 3}}));
    }

    #[test]
    fn json_patch_is_all_or_nothing() {
        let mut d = json!({"spec": {"replicas": 1, "xs": [1, 2]}});
        json_patch(
            &mut d,
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 5},
            {"op": "add", "path": "/spec/xs/-", "value": 3}, {"op": "remove", "path": "/spec/xs/0"},
            {"op": "test", "path": "/spec/replicas", "value": 5}]),
        )
        .unwrap();
        assert_eq!(d, json!({"spec": {"replicas": 5, "xs": [2, 3]}}));
        let e = json_patch(
            &mut d,
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 9},
            {"op": "remove", "path": "/spec/nope"}]),
        )
        .unwrap_err();
        assert!(e.contains("operation 1 (remove /spec/nope)"), "{e}");
        assert_eq!(d["spec"]["replicas"], 5);
    }

    #[test]
    fn strategic_merges_containers_by_name_and_ports_by_container_port() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}]},
            {"name": "side", "image": "busybox"}]}}}});
        strategic(
            "Deployment",
            &mut d,
            &json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:2", "ports": [{"containerPort": 443}]},
            {"name": "side", "$patch": "delete"}]}}}}),
        )
        .unwrap();
        let cs = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 1);
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(cs[0]["ports"], json!([{"containerPort": 80}, {"containerPort": 443}]));
    }

    #[test]
    fn strategic_directives() {
        let mut d = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1"}},
            "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                "template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}], "tolerations": [{"key": "k"}]}}}});
        strategic("Deployment", &mut d, &json!({
            "metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"], "labels": {"$patch": "replace", "y": "2"}},
            "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"},
                "template": {"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                    "containers": [{"name": "a", "image": "i"}], "tolerations": [{"key": "other"}]}}}}))
        .unwrap();
        assert_eq!(d["metadata"]["finalizers"], json!(["b", "c"]));
        assert_eq!(d["metadata"]["labels"], json!({"y": "2"}));
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"],
            json!([{"name": "b"}, {"name": "a", "image": "i"}])
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "other"}]),
            "no merge key: replaced"
        );
        assert!(strategic("Pod", &mut d, &json!({"$bogus": 1})).is_err());
    }
}
