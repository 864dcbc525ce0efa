//! The OpenAPI documents kubectl reads (`/openapi/v3` for `apply`'s validation check and
//! `explain`, `/openapi/v2` for other clients), made from the same Rust types that decode
//! objects (`schemars` derives the schemas, doc comments become descriptions), with
//! Kubernetes' extensions: `x-kubernetes-group-version-kind` on each kind and its operations,
//! and on list fields the patch strategy and merge key of `crate::patch::list_strategy` with
//! the matching `x-kubernetes-list-type`/`x-kubernetes-list-map-keys`. Pure.

use crate::object::{KINDS, KindInfo};
use crate::patch::{ListStrategy, list_strategy};
use serde_json::{Map, Value, json};
use std::collections::HashSet;

const REF_V3: &str = "#/components/schemas/";

/// The definitions of every kind and what they use, keyed by schema name, with Kubernetes'
/// extensions; and each kind's definition name.
pub fn definitions() -> (Map<String, Value>, Vec<(&'static KindInfo, String)>) {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let roots = crate::object::schemas(&mut generator);
    let mut defs = generator.take_definitions(true);
    let mut kinds = Vec::new();
    for (kind, schema) in roots {
        let Some(info) = KINDS.iter().find(|k| k.kind == kind) else { continue };
        let Some(name) = schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix(REF_V3))
        else {
            continue;
        };
        let name = name.to_string();
        if let Some(Value::Object(def)) = defs.get_mut(&name) {
            def.insert("x-kubernetes-group-version-kind".into(), json!([gvk(info)]));
            if let Some(Value::Object(props)) = def.get_mut("properties") {
                props.insert("apiVersion".into(), json!({"type": "string",
                    "description": "APIVersion defines the versioned schema of this representation of an object."}));
                props.insert("kind".into(), json!({"type": "string",
                    "description": "Kind is a string value representing the REST resource this object represents."}));
            }
        }
        kinds.push((info, name));
    }
    let mut seen = HashSet::new();
    for (info, name) in &kinds {
        annotate_lists(&mut defs, info.kind, name, "", &mut seen);
    }
    (defs, kinds)
}

fn gvk(info: &KindInfo) -> Value {
    json!({"group": info.group, "version": info.version, "kind": info.kind})
}

/// Walks a definition's properties (through `$ref`s, each definition once) and marks its list
/// fields with their patch strategy.
fn annotate_lists(
    defs: &mut Map<String, Value>,
    kind: &str,
    name: &str,
    path: &str,
    seen: &mut HashSet<String>,
) {
    if !seen.insert(name.to_string()) {
        return;
    }
    let Some(Value::Object(props)) = defs.get(name).and_then(|d| d.get("properties")).cloned() else {
        return;
    };
    for (field, prop) in props {
        let here = if path.is_empty() { field.clone() } else { format!("{path}.{field}") };
        let is_array = prop.get("type").and_then(Value::as_str) == Some("array");
        if is_array {
            let ext = match list_strategy(kind, &here) {
                ListStrategy::MergeKey(key) => Some(json!({"x-kubernetes-patch-strategy": "merge",
                    "x-kubernetes-patch-merge-key": key, "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": [key]})),
                ListStrategy::MergePrimitives => {
                    Some(json!({"x-kubernetes-patch-strategy": "merge", "x-kubernetes-list-type": "set"}))
                }
                ListStrategy::Replace => Some(json!({"x-kubernetes-list-type": "atomic"})),
            };
            if let (Some(Value::Object(ext)), Some(Value::Object(p))) = (
                ext,
                defs.get_mut(name).and_then(|d| d.get_mut("properties")).and_then(|p| p.get_mut(&field)),
            ) {
                p.extend(ext);
            }
        }
        let target = if is_array { prop.get("items").cloned().unwrap_or_default() } else { prop.clone() };
        for r in refs(&target) {
            annotate_lists(defs, kind, &r, &here, seen);
        }
    }
}

/// The definitions a schema refers to directly (`$ref`, or inside `anyOf`/`allOf`/maps).
fn refs(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(r) = schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix(REF_V3)) {
        out.push(r.to_string());
    }
    for key in ["anyOf", "allOf", "oneOf"] {
        for s in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            out.extend(refs(s));
        }
    }
    if let Some(a) = schema.get("additionalProperties") {
        out.extend(refs(a));
    }
    out
}

/// The group/versions served, as the OpenAPI v3 index names them: `api/v1`, `apis/apps/v1`.
pub fn group_versions() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in KINDS {
        let gv = k.api_prefix().trim_start_matches('/').to_string();
        if !out.contains(&gv) {
            out.push(gv);
        }
    }
    out.push("apis/autoscaling/v1".into());
    out.push("apis/events.k8s.io/v1".into());
    out.push("apis/autoscaling.k8s.io/v1beta2".into());
    out
}

/// events.k8s.io/v1's Event, served by conversion (`crate::event_v1`).
const EVENT_V1: KindInfo = KindInfo {
    kind: "Event",
    group: "events.k8s.io",
    version: "v1",
    plural: "events",
    short: &["ev"],
    namespaced: true,
};

/// autoscaling/v1's HorizontalPodAutoscaler, served by conversion (`crate::hpa_v1`).
const HPA_V1: KindInfo = KindInfo {
    kind: "HorizontalPodAutoscaler",
    group: "autoscaling",
    version: "v1",
    plural: "horizontalpodautoscalers",
    short: &["hpa"],
    namespaced: true,
};

/// The v1 HPA's schema, written out (there is no Rust type: v1 objects are converted).
fn hpa_v1_schema(defs: &Map<String, Value>) -> (String, Value) {
    let meta = defs
        .keys()
        .find(|k| k.ends_with("ObjectMeta"))
        .map_or_else(|| json!({"type": "object"}), |k| json!({"$ref": format!("{REF_V3}{k}")}));
    let int = |d: &str| json!({"type": "integer", "format": "int32", "description": d});
    let schema = json!({
        "description": "configuration of a horizontal pod autoscaler (autoscaling/v1).",
        "type": "object",
        "x-kubernetes-group-version-kind": [gvk(&HPA_V1)],
        "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": meta,
            "spec": {"type": "object", "required": ["scaleTargetRef", "maxReplicas"], "properties": {
                "scaleTargetRef": {"type": "object", "required": ["kind", "name"], "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"}}},
                "minReplicas": int("the lower limit for the number of pods"),
                "maxReplicas": int("the upper limit for the number of pods"),
                "targetCPUUtilizationPercentage": int("the target average CPU utilization over all the pods, in percent of their requests"),
            }},
            "status": {"type": "object", "properties": {
                "observedGeneration": {"type": "integer", "format": "int64"},
                "lastScaleTime": {"type": "string", "format": "date-time"},
                "currentReplicas": int("current number of replicas"),
                "desiredReplicas": int("desired number of replicas"),
                "currentCPUUtilizationPercentage": int("current average CPU utilization, in percent of request"),
            }},
        },
    });
    ("io.k8s.api.autoscaling.v1.HorizontalPodAutoscaler".into(), schema)
}

fn param(name: &str, location: &str, description: &str) -> Value {
    json!({"name": name, "in": location, "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

/// The paths of one kind: the collection (and, namespaced, across namespaces) and one object,
/// with the operations served and the query parameters they take.
fn paths(info: &KindInfo, def: &str, out: &mut Map<String, Value>) {
    let schema = json!({"$ref": format!("{REF_V3}{def}")});
    let body = |types: &[&str]| {
        let content: Map<String, Value> =
            types.iter().map(|t| (t.to_string(), json!({"schema": schema}))).collect();
        json!({"required": true, "content": content})
    };
    let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}});
    let g = gvk(info);
    let op = |id: &str, action: &str, params: Vec<Value>, request: Option<Value>| {
        let mut o = json!({"operationId": format!("{id}{}", info.kind), "responses": ok,
            "x-kubernetes-action": action, "x-kubernetes-group-version-kind": g, "parameters": params});
        if let Some(r) = request {
            o["requestBody"] = r;
        }
        o
    };
    let write_params = || {
        vec![
            param("dryRun", "query", "When present, the write is checked and not persisted: All."),
            param("fieldManager", "query", "The name of the actor making the change."),
            param(
                "fieldValidation",
                "query",
                "How unknown or duplicate fields are treated: Strict (always, on this server).",
            ),
        ]
    };
    let ns_param = json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}});
    let name_param = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    let list_params = || {
        vec![
            param("labelSelector", "query", "A selector on the objects' labels."),
            param("fieldSelector", "query", "A selector on the objects' fields."),
            param("limit", "query", "The most objects in one answer."),
            param("continue", "query", "Where the previous page left off."),
            param("watch", "query", "Stream the changes."),
            param("resourceVersion", "query", "The revision to list or watch from."),
        ]
    };
    let prefix = info.api_prefix();
    let (collection, object) = if info.namespaced {
        (
            format!("{prefix}/namespaces/{{namespace}}/{}", info.plural),
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", info.plural),
        )
    } else {
        (format!("{prefix}/{}", info.plural), format!("{prefix}/{}/{{name}}", info.plural))
    };
    let mut top = vec![];
    if info.namespaced {
        top.push(ns_param.clone());
        out.insert(
            format!("{prefix}/{}", info.plural),
            json!({"get": op("list", "list", list_params(), None)}),
        );
    }
    out.insert(
        collection,
        json!({"parameters": top.clone(),
            "get": op("list", "list", list_params(), None),
            "post": op("create", "post", write_params(), Some(body(&["application/json", "application/yaml"]))),
            "delete": op("deleteCollection", "deletecollection", list_params(), None)}),
    );
    let mut obj_params = top;
    obj_params.push(name_param);
    let mut patch_params = write_params();
    patch_params.push(param("force", "query", "Take the fields of other managers (server-side apply)."));
    out.insert(
        object,
        json!({"parameters": obj_params,
            "get": op("read", "get", vec![], None),
            "put": op("replace", "put", write_params(), Some(body(&["application/json", "application/yaml"]))),
            "patch": op("patch", "patch", patch_params, Some(body(&["application/apply-patch+yaml",
                "application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json"]))),
            "delete": op("delete", "delete", vec![param("gracePeriodSeconds", "query", "Seconds before the object is deleted."),
                param("propagationPolicy", "query", "Orphan, Background or Foreground.")], None)}),
    );
}

/// The OpenAPI v3 document of one group/version (`api/v1`, `apis/apps/v1`), or `None` when
/// nothing is served there.
pub fn v3(group_version: &str) -> Option<Value> {
    let (mut defs, kinds) = definitions();
    let mut p = Map::new();
    let mut wanted: Vec<String> = Vec::new();
    if group_version == "apis/autoscaling/v1" {
        let (name, schema) = hpa_v1_schema(&defs);
        paths(&HPA_V1, &name, &mut p);
        defs.insert(name.clone(), schema);
        wanted.push(name);
    }
    if group_version == "apis/events.k8s.io/v1"
        && let Some((_, core)) = kinds.iter().find(|(k, _)| k.kind == "Event")
        && let Some(schema) = defs.get(core).map(crate::event_v1::schema)
    {
        let name = "io.k8s.api.events.v1.Event".to_string();
        paths(&EVENT_V1, &name, &mut p);
        defs.insert(name.clone(), schema);
        wanted.push(name);
    }
    if group_version == "apis/autoscaling.k8s.io/v1beta2"
        && let Some((info, v1)) = kinds.iter().find(|(k, _)| k.kind == "VerticalPodAutoscaler")
        && let Some(mut schema) = defs.get(v1).cloned()
    {
        let info = KindInfo { version: "v1beta2", ..**info };
        schema["x-kubernetes-group-version-kind"] = json!([gvk(&info)]);
        let name = "io.k8s.autoscaler.v1beta2.VerticalPodAutoscaler".to_string();
        paths(&info, &name, &mut p);
        defs.insert(name.clone(), schema);
        wanted.push(name);
    }
    for (info, def) in &kinds {
        if info.api_prefix().trim_start_matches('/') == group_version {
            paths(info, def, &mut p);
            wanted.push(def.clone());
        }
    }
    if wanted.is_empty() {
        return None;
    }
    // Only the definitions this group/version's kinds reach.
    let mut reach: HashSet<String> = HashSet::new();
    while let Some(d) = wanted.pop() {
        if reach.insert(d.clone())
            && let Some(s) = defs.get(&d)
        {
            collect_refs(s, &mut wanted);
        }
    }
    let schemas: Map<String, Value> = defs.into_iter().filter(|(k, _)| reach.contains(k)).collect();
    Some(json!({"openapi": "3.0.0", "info": {"title": "Tug", "version": crate::VERSION},
        "paths": p, "components": {"schemas": schemas}}))
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix(REF_V3)) {
                out.push(r.to_string());
            }
            for x in m.values() {
                collect_refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// The OpenAPI v2 (Swagger) document of everything served.
pub fn v2() -> Value {
    let (defs, kinds) = definitions();
    let mut p = Map::new();
    for (info, def) in &kinds {
        paths(info, def, &mut p);
    }
    let text = json!({"swagger": "2.0", "info": {"title": "Tug", "version": crate::VERSION},
        "paths": p, "definitions": defs})
    .to_string()
    .replace(REF_V3, "#/definitions/");
    serde_json::from_str(&text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_carry_their_gvk_and_lists_their_strategy() {
        let (defs, kinds) = definitions();
        let (_, pod) = kinds.iter().find(|(i, _)| i.kind == "Pod").unwrap();
        assert_eq!(defs[pod]["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        let spec = defs.values().find(|d| d["properties"].get("initContainers").is_some()).unwrap();
        assert_eq!(spec["properties"]["containers"]["x-kubernetes-patch-merge-key"], "name");
        let container = defs.values().find(|d| d["properties"].get("volumeMounts").is_some()).unwrap();
        assert_eq!(container["properties"]["ports"]["x-kubernetes-patch-merge-key"], "containerPort");
    }

    #[test]
    fn every_group_version_has_a_document_with_patch_operations() {
        for gv in group_versions() {
            let doc = v3(&gv).unwrap_or_else(|| panic!("{gv}"));
            let patched =
                doc["paths"].as_object().unwrap().values().filter(|p| p.get("patch").is_some()).count();
            assert!(patched > 0, "{gv}");
            let mut refs = Vec::new();
            collect_refs(&doc, &mut refs);
            for r in refs {
                assert!(doc["components"]["schemas"].get(&r).is_some(), "{gv}: {r} is not defined");
            }
        }
        assert!(v3("apis/nope/v1").is_none());
        assert!(v2()["definitions"].as_object().unwrap().len() > 20);
    }
}
