//! Manifests in: YAML (several documents) or JSON text → typed, defaulted, validated objects.
//!
//! Pure: no IO. Every error names the document (when there are several) and the field path:
//! `document 2: spec.template.spec.containers[0].lifecycle: field not supported`.

use crate::object::{KINDS, Object, lookup_exact};
use crate::validation::FieldError;
use serde_json::Value;
use std::fmt;

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based index of the document in the input, when it has several.
    pub document: Option<usize>,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.errors.iter().map(|e| e.to_string()).collect();
        match self.document {
            Some(d) => write!(f, "document {d}: {}", lines.join(&format!("\ndocument {d}: "))),
            None => f.write_str(&lines.join("\n")),
        }
    }
}

impl std::error::Error for ManifestError {}

fn one(field: &str, message: impl Into<String>) -> Vec<FieldError> {
    vec![FieldError { field: field.into(), message: message.into() }]
}

/// The deepest nesting a manifest may have (the YAML and JSON parsers' own limit).
pub const MAX_DEPTH: usize = 128;

/// Splits text into documents (YAML with `---`, or JSON), skipping empty ones and expanding
/// `kind: List`. Each document becomes generic JSON.
pub fn documents(text: &str) -> Result<Vec<Value>, ManifestError> {
    let mut out = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ManifestError { document: None, errors: one("", format!("invalid JSON: {e}")) })?;
        push_expanded(v, &mut out);
        return Ok(out);
    }
    // Refused before the parse, whose time grows with the square of the depth.
    if let Some(line) = crate::depth::deeper_than(text, MAX_DEPTH) {
        return Err(ManifestError {
            document: None,
            errors: one("", format!("invalid YAML: it nests deeper than {MAX_DEPTH} levels (line {line})")),
        });
    }
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| ManifestError {
            document: Some(i + 1),
            errors: one("", format!("invalid YAML: {e}")),
        })?;
        if !v.is_null() {
            push_expanded(v, &mut out);
        }
    }
    Ok(out)
}

fn push_expanded(v: Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(items) => out.extend(items),
        Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
            out.extend(m.get("items").and_then(Value::as_array).cloned().unwrap_or_default());
        }
        other => out.push(other),
    }
}

/// The VerticalPodAutoscaler's older version, still served (as v1: the schemas are the same).
pub const VPA_V1BETA2: &str = "autoscaling.k8s.io/v1beta2";

/// Decodes one document strictly into its kind's type. An unknown field is
/// `PATH: field not supported`.
pub fn decode(v: &Value) -> Result<Object, Vec<FieldError>> {
    if v.get("apiVersion").and_then(Value::as_str) == Some(crate::hpa_v1::API_VERSION)
        && v.get("kind").and_then(Value::as_str) == Some("HorizontalPodAutoscaler")
    {
        // autoscaling/v1 is served by conversion to the v2 that is stored.
        let mut v2 = v.clone();
        crate::hpa_v1::to_v2(&mut v2);
        return decode(&v2);
    }
    if v.get("apiVersion").and_then(Value::as_str) == Some(crate::event_v1::API_VERSION)
        && v.get("kind").and_then(Value::as_str) == Some("Event")
    {
        // events.k8s.io/v1 is served by conversion to the core Event that is stored.
        let mut core = v.clone();
        crate::event_v1::to_core(&mut core);
        return decode(&core);
    }
    if v.get("apiVersion").and_then(Value::as_str) == Some(VPA_V1BETA2)
        && v.get("kind").and_then(Value::as_str) == Some("VerticalPodAutoscaler")
    {
        // The VPA's v1beta2 is v1 under another name, as its CRD serves both.
        let mut v1 = v.clone();
        v1["apiVersion"] = "autoscaling.k8s.io/v1".into();
        return decode(&v1);
    }
    let kind = v.get("kind").and_then(Value::as_str).ok_or_else(|| one("kind", "Required value"))?;
    let api_version =
        v.get("apiVersion").and_then(Value::as_str).ok_or_else(|| one("apiVersion", "Required value"))?;
    let Some(info) = lookup_exact(kind, api_version) else {
        if let Some(msg) = removed(kind, api_version) {
            return Err(one("apiVersion", msg));
        }
        return Err(match KINDS.iter().find(|k| k.kind == kind) {
            Some(k) => one(
                "apiVersion",
                format!(
                    "Unsupported value: {api_version:?} for kind {kind}: supported values: {:?}",
                    k.api_version()
                ),
            ),
            None => {
                let known: Vec<&str> = KINDS.iter().map(|k| k.kind).collect();
                one("kind", format!("Unsupported value: {kind:?}: supported kinds: {}", known.join(", ")))
            }
        });
    };
    crate::object::decode_as(info.kind, v)
}

/// API versions Kubernetes once served and has removed: `(group/version, release, kinds)`.
const REMOVED: &[(&str, &str, &[&str])] = &[
    (
        "extensions/v1beta1",
        "1.16",
        &["Deployment", "DaemonSet", "ReplicaSet", "NetworkPolicy", "PodSecurityPolicy"],
    ),
    ("extensions/v1beta1", "1.22", &["Ingress"]),
    ("apps/v1beta1", "1.16", &["Deployment", "StatefulSet", "ControllerRevision"]),
    ("apps/v1beta2", "1.16", &["Deployment", "DaemonSet", "ReplicaSet", "StatefulSet", "ControllerRevision"]),
    ("batch/v1beta1", "1.25", &["CronJob"]),
    ("batch/v2alpha1", "1.21", &["CronJob"]),
    ("policy/v1beta1", "1.25", &["PodDisruptionBudget", "PodSecurityPolicy"]),
    ("autoscaling/v2beta1", "1.25", &["HorizontalPodAutoscaler"]),
    ("autoscaling/v2beta2", "1.26", &["HorizontalPodAutoscaler"]),
    ("networking.k8s.io/v1beta1", "1.22", &["Ingress", "IngressClass"]),
    (
        "rbac.authorization.k8s.io/v1beta1",
        "1.22",
        &["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"],
    ),
    (
        "rbac.authorization.k8s.io/v1alpha1",
        "1.22",
        &["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"],
    ),
    ("scheduling.k8s.io/v1beta1", "1.22", &["PriorityClass"]),
    ("scheduling.k8s.io/v1alpha1", "1.22", &["PriorityClass"]),
    ("coordination.k8s.io/v1beta1", "1.22", &["Lease"]),
    ("events.k8s.io/v1beta1", "1.25", &["Event"]),
];

/// Kubernetes' words for a kind under a version it no longer serves (kubectl's "no matches
/// for kind"), with the release that removed it and the version to use instead.
pub fn removed(kind: &str, api_version: &str) -> Option<String> {
    let (_, release, _) = REMOVED.iter().find(|(v, _, kinds)| *v == api_version && kinds.contains(&kind))?;
    let instead = match KINDS.iter().find(|k| k.kind == kind) {
        Some(k) => format!("use {}", k.api_version()),
        None if kind == "PodSecurityPolicy" => "use Pod Security admission (namespace labels) instead".into(),
        None => "Tug does not serve this kind".into(),
    };
    Some(format!(
        "no matches for kind {kind:?} in version {api_version:?}: {api_version} {kind} was removed in Kubernetes v{release}; {instead}"
    ))
}

/// Decodes JSON into a type strictly; the error names the field path.
pub(crate) fn typed_decode<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner().to_string();
        if let Some(rest) = inner.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or_default();
            let field = if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
            // serde_path_to_error already appends the unknown field to the path.
            let field = if path.ends_with(name) { path } else { field };
            return one(&field, "field not supported");
        }
        one(&path, inner)
    })
}

/// Parses, decodes, defaults and validates every document. The whole input is checked before
/// anything is returned: one bad document means no object.
pub fn load(text: &str) -> Result<Vec<Object>, ManifestError> {
    let docs = documents(text)?;
    let many = docs.len() > 1;
    let mut out = Vec::with_capacity(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        let at = |errors| ManifestError { document: many.then_some(i + 1), errors };
        let mut obj = decode(doc).map_err(at)?;
        crate::defaults::apply(&mut obj);
        crate::validate::object(&obj).map_err(at)?;
        out.push(obj);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        ports:
        - containerPort: 8080
";

    #[test]
    fn a_kubernetes_deployment_loads_with_defaults() {
        let objs = load(DEPLOY).unwrap();
        let Object::Deployment(d) = &objs[0] else { panic!("deployment") };
        assert_eq!(d.spec.replicas, Some(2));
        let strategy = d.spec.strategy.as_ref().unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        let c = &d.spec.template.spec.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(c.ports[0].protocol.as_deref(), Some("TCP"));
        assert_eq!(d.spec.template.spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(d.spec.template.spec.termination_grace_period_seconds, Some(30));
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let text = DEPLOY.replace("        ports:", "        lifecycles: {}\n        ports:");
        assert_eq!(err(&text), "spec.template.spec.containers[0].lifecycles: field not supported");
        let text = DEPLOY.replace("  replicas: 2", "  replicas: 2\n  bogus: 1");
        assert_eq!(err(&text), "spec.bogus: field not supported");
    }

    #[test]
    fn removed_versions_say_so_and_name_the_one_to_use() {
        let cj = "apiVersion: batch/v1beta1\nkind: CronJob\nmetadata: {name: c}\nspec: {}\n";
        assert_eq!(
            err(cj),
            "apiVersion: no matches for kind \"CronJob\" in version \"batch/v1beta1\": batch/v1beta1 CronJob was removed in Kubernetes v1.25; use batch/v1"
        );
        let d = DEPLOY.replace("apiVersion: apps/v1", "apiVersion: extensions/v1beta1");
        assert!(err(&d).ends_with("was removed in Kubernetes v1.16; use apps/v1"), "{}", err(&d));
        let hpa = "apiVersion: autoscaling/v2beta2\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\n";
        assert!(err(hpa).ends_with("removed in Kubernetes v1.26; use autoscaling/v2"), "{}", err(hpa));
        // A version that never existed keeps the plain refusal.
        let odd = DEPLOY.replace("apiVersion: apps/v1", "apiVersion: apps/v9");
        assert!(err(&odd).contains("Unsupported value: \"apps/v9\""), "{}", err(&odd));
    }

    #[test]
    fn multi_document_errors_carry_the_index() {
        let text = format!("{DEPLOY}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: Bad_Name}}\n");
        assert!(
            err(&text).starts_with("document 2: metadata.name: Invalid value: \"Bad_Name\""),
            "{}",
            err(&text)
        );
        assert_eq!(load(&format!("---\n{DEPLOY}---\n")).unwrap().len(), 1, "empty documents are skipped");
    }

    #[test]
    fn kinds_and_versions_are_checked() {
        assert_eq!(
            err("apiVersion: apps/v2\nkind: Deployment\nmetadata: {name: a}\n"),
            "apiVersion: Unsupported value: \"apps/v2\" for kind Deployment: supported values: \"apps/v1\""
        );
        assert!(err("apiVersion: v1\nkind: Widget\n").starts_with("kind: Unsupported value: \"Widget\""));
        assert_eq!(err("kind: Pod\n"), "apiVersion: Required value");
    }

    #[test]
    fn json_and_lists_load_too() {
        let json = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team-a"}}]}"#;
        assert_eq!(load(json).unwrap()[0].display_name(), "namespace/team-a");
    }
}
