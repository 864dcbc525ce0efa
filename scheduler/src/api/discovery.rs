//! Discovery as Kubernetes serves it: `/api`, `/api/v1`, `/apis`, `/apis/GROUP`,
//! `/apis/GROUP/VERSION` (APIVersions, APIGroupList, APIGroup, APIResourceList), and the
//! aggregated document (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`) that kubectl asks
//! for first with `Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`.
//! Everything is derived from `tug_api::object::KINDS` and the extra groups listed here, so a
//! kind served is a kind discovered.

use super::handlers::{json_response, status_response};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};
use tug_api::object::{KINDS, KindInfo};
use tug_api::status::Status;

/// The verbs of a served kind's collection and objects.
const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// A resource a client can discover: a kind's, a subresource, or a resource outside `KINDS`
/// (reviews, metrics).
#[derive(Clone)]
struct Resource {
    group: &'static str,
    version: &'static str,
    /// `pods`, `pods/log`.
    name: String,
    singular: String,
    namespaced: bool,
    kind: &'static str,
    /// The kind a subresource answers with when it is another group's (`autoscaling/v1`
    /// Scale).
    response: Option<(&'static str, &'static str)>,
    verbs: Vec<&'static str>,
    short: Vec<&'static str>,
    categories: Vec<&'static str>,
}

/// The kinds `kubectl get all` lists: Kubernetes puts these in the `all` category.
fn categories(info: &KindInfo) -> Vec<&'static str> {
    match info.plural {
        "pods"
        | "services"
        | "daemonsets"
        | "statefulsets"
        | "deployments"
        | "replicasets"
        | "jobs"
        | "cronjobs"
        | "horizontalpodautoscalers" => {
            vec!["all"]
        }
        _ => vec![],
    }
}

/// The subresources served for a kind, with their verbs and (when it is not the kind itself)
/// the kind they answer with.
type Subresource = (&'static str, Vec<&'static str>, &'static str, Option<(&'static str, &'static str)>);

fn subresources(info: &KindInfo) -> Vec<Subresource> {
    let status = ("status", vec!["get", "patch", "update"], info.kind, None);
    match info.plural {
        "pods" => vec![
            status,
            ("log", vec!["get"], "Pod", None),
            ("exec", vec!["create", "get"], "PodExecOptions", None),
            ("attach", vec!["create", "get"], "PodAttachOptions", None),
            ("portforward", vec!["create", "get"], "PodPortForwardOptions", None),
            ("eviction", vec!["create"], "Eviction", Some(("policy", "v1"))),
            ("resize", vec!["get", "patch", "update"], "Pod", None),
        ],
        "deployments" | "replicasets" | "statefulsets" | "rollouts" => {
            vec![status, ("scale", vec!["get", "patch", "update"], "Scale", Some(("autoscaling", "v1")))]
        }
        _ if !info.has_status() => vec![],
        _ => vec![status],
    }
}

fn resources() -> Vec<Resource> {
    let mut out = Vec::new();
    for info in KINDS {
        let singular = info.kind.to_ascii_lowercase();
        out.push(Resource {
            group: info.group,
            version: info.version,
            name: info.plural.to_string(),
            singular: singular.clone(),
            namespaced: info.namespaced,
            kind: info.kind,
            response: None,
            verbs: VERBS.to_vec(),
            short: info.short.to_vec(),
            categories: categories(info),
        });
        for (sub, verbs, kind, response) in subresources(info) {
            out.push(Resource {
                group: info.group,
                version: info.version,
                name: format!("{}/{sub}", info.plural),
                singular: String::new(),
                namespaced: info.namespaced,
                kind,
                response,
                verbs,
                short: vec![],
                categories: vec![],
            });
        }
    }
    let extra = |group, version, name: &str, kind, namespaced, verbs: &[&'static str]| Resource {
        group,
        version,
        name: name.to_string(),
        singular: name.trim_end_matches('s').to_string(),
        namespaced,
        kind,
        response: None,
        verbs: verbs.to_vec(),
        short: vec![],
        categories: vec![],
    };
    out.push(extra(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
        &["create"],
    ));
    out.push(extra(
        "authentication.k8s.io",
        "v1",
        "selfsubjectreviews",
        "SelfSubjectReview",
        false,
        &["create"],
    ));
    // autoscaling/v1 beside v2, and the VPA's v1beta2 beside v1, converted by `versions`
    // (the newer is preferred).
    let older: Vec<Resource> = out
        .iter()
        .filter_map(|r| match r.group {
            "autoscaling" => Some(Resource { version: "v1", ..r.clone() }),
            "autoscaling.k8s.io" => Some(Resource { version: "v1beta2", ..r.clone() }),
            _ => None,
        })
        .collect();
    out.extend(older);
    // events.k8s.io/v1 Events: the core Events, converted by `versions`.
    let events: Vec<Resource> = out
        .iter()
        .filter(|r| r.group.is_empty() && r.name == "events")
        .map(|r| Resource { group: "events.k8s.io", ..r.clone() })
        .collect();
    out.extend(events);
    out.push(extra("metrics.k8s.io", "v1beta1", "nodes", "NodeMetrics", false, &["get", "list"]));
    out.push(extra("metrics.k8s.io", "v1beta1", "pods", "PodMetrics", true, &["get", "list"]));
    out
}

/// The groups besides the core one with their versions (the preferred first), in the order
/// served.
fn groups(all: &[Resource]) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in all.iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version),
            Some(_) => {}
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

fn group_json(group: &str, versions: &[&str]) -> Value {
    let gv = |v: &str| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    let list: Vec<Value> = versions.iter().map(|v| gv(v)).collect();
    json!({"name": group, "versions": list, "preferredVersion": gv(versions.first().copied().unwrap_or("v1"))})
}

fn resource_json(r: &Resource) -> Value {
    let mut v = json!({
        "name": r.name,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": r.verbs,
    });
    if let Some((g, ver)) = r.response {
        v["group"] = g.into();
        v["version"] = ver.into();
    }
    if !r.short.is_empty() {
        v["shortNames"] = json!(r.short);
    }
    if !r.categories.is_empty() {
        v["categories"] = json!(r.categories);
    }
    v
}

/// The aggregated entry of one group: each version's resources with their subresources nested.
fn aggregated_group(all: &[Resource], group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"version": v, "resources": aggregated_resources(all, group, v), "freshness": "Current"}))
        .collect();
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
}

fn aggregated_resources(all: &[Resource], group: &str, version: &str) -> Vec<Value> {
    let mut resources = Vec::new();
    for r in all.iter().filter(|r| r.group == group && r.version == version && !r.name.contains('/')) {
        let subs: Vec<Value> = all
            .iter()
            .filter(|s| s.group == group && s.version == version)
            .filter_map(|s| {
                let sub = s.name.strip_prefix(&format!("{}/", r.name))?;
                let (g, v) = s.response.unwrap_or((group, version));
                Some(json!({"subresource": sub, "responseKind": {"group": g, "version": v, "kind": s.kind}, "verbs": s.verbs}))
            })
            .collect();
        let mut v = json!({
            "resource": r.name,
            "responseKind": {"group": group, "version": version, "kind": r.kind},
            "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": r.singular,
            "verbs": r.verbs,
        });
        if !r.short.is_empty() {
            v["shortNames"] = json!(r.short);
        }
        if !r.categories.is_empty() {
            v["categories"] = json!(r.categories);
        }
        if !subs.is_empty() {
            v["subresources"] = Value::Array(subs);
        }
        resources.push(v);
    }
    resources
}

/// The aggregated media type, when the client's Accept names it.
fn wants_aggregated(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    accept.split(',').find_map(|m| {
        let params: Vec<&str> = m.split(';').map(str::trim).collect();
        let has = |p: &str| params.contains(&p);
        if has("g=apidiscovery.k8s.io") && has("as=APIGroupDiscoveryList") && params[0] == "application/json"
        {
            if has("v=v2") {
                return Some("v2");
            }
            if has("v=v2beta1") {
                return Some("v2beta1");
            }
        }
        None
    })
}

fn aggregated(version: &str, items: Vec<Value>) -> Response {
    let mut resp = json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"),
            "metadata": {}, "items": items}),
    );
    let ct = format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    if let Ok(v) = header::HeaderValue::from_str(&ct) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp.headers_mut().insert("vary", header::HeaderValue::from_static("Accept"));
    resp
}

/// `GET /api`.
pub async fn core(headers: HeaderMap) -> Response {
    let all = resources();
    if let Some(v) = wants_aggregated(&headers) {
        return aggregated(v, vec![aggregated_group(&all, "", &["v1"])]);
    }
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
    )
}

/// `GET /apis`.
pub async fn apis(headers: HeaderMap) -> Response {
    let all = resources();
    let gs = groups(&all);
    if let Some(v) = wants_aggregated(&headers) {
        return aggregated(v, gs.iter().map(|(g, vs)| aggregated_group(&all, g, vs)).collect());
    }
    let list: Vec<Value> = gs.iter().map(|(g, vs)| group_json(g, vs)).collect();
    json_response(StatusCode::OK, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list}))
}

/// `GET /api/v1`, `/apis/GROUP`, `/apis/GROUP/VERSION`; `None` when the path is no discovery
/// document (the caller goes on to the resources).
pub fn document(uri: &Uri) -> Option<Response> {
    let segs: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let all = resources();
    let list = |group: &str, version: &str| {
        let resources: Vec<Value> =
            all.iter().filter(|r| r.group == group && r.version == version).map(resource_json).collect();
        let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        json_response(
            StatusCode::OK,
            &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        )
    };
    match segs.as_slice() {
        ["api", "v1"] => Some(list("", "v1")),
        ["api", v] => Some(not_found(&format!("/api/{v}"))),
        ["apis", g] => Some(match groups(&all).into_iter().find(|(name, _)| name == g) {
            Some((g, vs)) => {
                let mut doc = group_json(g, &vs);
                doc["kind"] = "APIGroup".into();
                doc["apiVersion"] = "v1".into();
                json_response(StatusCode::OK, &doc)
            }
            None => not_found(uri.path()),
        }),
        ["apis", g, v] => {
            let served = groups(&all).iter().any(|(name, vs)| name == g && vs.contains(v));
            Some(if served { list(g, v) } else { not_found(uri.path()) })
        }
        _ => None,
    }
}

fn not_found(path: &str) -> Response {
    status_response(&Status::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    ))
}

/// `GET /version` in Kubernetes' shape: kubectl's version-skew check reads `gitVersion`.
pub async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": KUBERNETES_MINOR,
            "gitVersion": git_version(),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "",
            "goVersion": "",
            "compiler": "rustc",
            "platform": "linux/amd64",
            "tugVersion": tug_api::VERSION,
        }),
    )
}

/// The Kubernetes API minor version Tug implements.
pub const KUBERNETES_MINOR: &str = "32";

/// `v1.32.0-tug.0.1.0`: the Kubernetes API version, then Tug's own.
pub fn git_version() -> String {
    format!("v1.{KUBERNETES_MINOR}.0-tug.{}", tug_api::VERSION)
}

/// The OpenAPI documents, made once: the v3 index's hashes name their contents, so a client's
/// cache holds until the server changes.
struct OpenApi {
    v2: axum::body::Bytes,
    v3: std::collections::HashMap<String, (axum::body::Bytes, String)>,
}

fn openapi() -> &'static OpenApi {
    static DOCS: std::sync::OnceLock<OpenApi> = std::sync::OnceLock::new();
    DOCS.get_or_init(|| {
        let v3 = tug_api::openapi::group_versions()
            .into_iter()
            .filter_map(|gv| {
                let doc = tug_api::openapi::v3(&gv)?.to_string();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&doc, &mut h);
                let hash = format!("{:016X}", std::hash::Hasher::finish(&h));
                Some((gv, (axum::body::Bytes::from(doc), hash)))
            })
            .collect();
        OpenApi { v2: axum::body::Bytes::from(tug_api::openapi::v2().to_string()), v3 }
    })
}

fn json_bytes(b: &axum::body::Bytes) -> Response {
    axum::response::IntoResponse::into_response((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        b.clone(),
    ))
}

/// `GET /openapi/v2`, in JSON. client-go's discovery asks for it only in protobuf, which is not
/// served: 406, as Kubernetes answers a type it cannot give.
pub async fn openapi_v2(headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("*/*");
    if !(accept.contains("json") || accept.contains("*/*")) {
        return status_response(&Status::new(
            406,
            "NotAcceptable",
            format!("only application/json is served for /openapi/v2, not {accept:?}"),
        ));
    }
    json_bytes(&openapi().v2)
}

/// `GET /openapi/v3`: the index of the group/version documents.
pub async fn openapi_v3_index() -> Response {
    let paths: serde_json::Map<String, Value> = openapi()
        .v3
        .iter()
        .map(|(gv, (_, hash))| {
            (gv.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={hash}")}))
        })
        .collect();
    json_response(StatusCode::OK, &json!({"paths": paths}))
}

/// `GET /openapi/v3/api/v1`, `/openapi/v3/apis/GROUP/VERSION`.
pub async fn openapi_v3(axum::extract::Path(gv): axum::extract::Path<String>) -> Response {
    match openapi().v3.get(gv.trim_matches('/')) {
        Some((doc, _)) => json_bytes(doc),
        None => not_found(&format!("/openapi/v3/{gv}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_and_its_subresources_are_discovered() {
        let all = resources();
        let pods = all.iter().find(|r| r.name == "pods").unwrap();
        assert_eq!(pods.categories, ["all"]);
        assert_eq!(pods.short, ["po"]);
        assert!(all.iter().any(|r| r.name == "pods/log"));
        let agg = aggregated_group(&all, "apps", &["v1"]);
        let deploy = &agg["versions"][0]["resources"][0];
        assert_eq!(deploy["resource"], "deployments");
        assert_eq!(deploy["scope"], "Namespaced");
        let scale =
            deploy["subresources"].as_array().unwrap().iter().find(|s| s["subresource"] == "scale").unwrap();
        assert_eq!(scale["responseKind"]["group"], "autoscaling");
        assert!(groups(&all).contains(&("rbac.authorization.k8s.io", vec!["v1"])));
        assert!(groups(&all).contains(&("metrics.k8s.io", vec!["v1beta1"])));
        assert!(groups(&all).contains(&("autoscaling", vec!["v2", "v1"])), "v2 preferred, v1 converted");
    }

    #[test]
    fn the_aggregated_type_is_chosen_from_accept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
                .parse()
                .unwrap(),
        );
        assert_eq!(wants_aggregated(&h), Some("v2"));
        h.insert(header::ACCEPT, "application/json".parse().unwrap());
        assert_eq!(wants_aggregated(&h), None);
    }

    #[test]
    fn the_version_passes_kubectls_skew_check() {
        assert!(git_version().starts_with("v1.32.0-tug."));
    }
}
