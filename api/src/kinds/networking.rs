//! `networking.k8s.io/v1` NetworkPolicy: which pods may talk to which. The agent on each
//! node enforces the policies that select its pods in nftables (`agent/src/policy`).

use crate::labels::LabelSelector;
use crate::meta::{IntOrString, ObjectMeta};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicy {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NetworkPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// The pods of the policy's namespace it applies to; empty selects them all.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// `Ingress`, `Egress`; defaulted from which rule lists are present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// Empty or absent: from anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Peer>,
    /// Empty or absent: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// Who: pods (by label, in this or selected namespaces) or addresses.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPort {
    /// `TCP` (the default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// A number or a container port's name; absent: every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// With a numeric `port`: the range `port..=endPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

impl NetworkPolicySpec {
    /// Kubernetes' default: `Ingress` always, `Egress` when egress rules are given.
    pub fn default_types(&self) -> Vec<String> {
        let mut t = vec!["Ingress".to_string()];
        if self.egress.is_some() {
            t.push("Egress".into());
        }
        t
    }
}

/// The problems of a policy, as `(field, message)`.
pub fn validate(spec: &NetworkPolicySpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |f: String, m: String| out.push((f, m));
    if let Err(fe) = spec.pod_selector.to_selector("spec.podSelector") {
        add(fe.field, fe.message);
    }
    for (i, t) in spec.policy_types.iter().enumerate() {
        if !["Ingress", "Egress"].contains(&t.as_str()) {
            add(
                format!("spec.policyTypes[{i}]"),
                format!("Unsupported value: {t:?}: supported values: \"Ingress\", \"Egress\""),
            );
        }
    }
    let rules = spec.ingress.iter().flatten().map(|r| ("ingress", "from", &r.from, &r.ports));
    let rules = rules
        .enumerate()
        .chain(spec.egress.iter().flatten().map(|r| ("egress", "to", &r.to, &r.ports)).enumerate());
    for (i, (dir, peers_name, peers, ports)) in rules {
        for (j, p) in peers.iter().enumerate() {
            let at = format!("spec.{dir}[{i}].{peers_name}[{j}]");
            let selectors = p.pod_selector.is_some() || p.namespace_selector.is_some();
            match (&p.ip_block, selectors) {
                (None, false) => add(at.clone(), "Required value: must specify a peer".into()),
                (Some(_), true) => {
                    add(at.clone(), "Forbidden: may not specify both ipBlock and another peer".into())
                }
                _ => {}
            }
            for (s, name) in [(&p.pod_selector, "podSelector"), (&p.namespace_selector, "namespaceSelector")]
            {
                if let Some(Err(fe)) = s.as_ref().map(|s| s.to_selector(&format!("{at}.{name}"))) {
                    add(fe.field, fe.message);
                }
            }
            if let Some(b) = &p.ip_block {
                match b.cidr.parse::<crate::cidr::Cidr4>() {
                    Err(e) => add(format!("{at}.ipBlock.cidr"), format!("Invalid value: {e}")),
                    Ok(c) => {
                        for (k, x) in b.except.iter().enumerate() {
                            let f = format!("{at}.ipBlock.except[{k}]");
                            match x.parse::<crate::cidr::Cidr4>() {
                                Err(e) => add(f, format!("Invalid value: {e}")),
                                Ok(xc) if !(xc.prefix > c.prefix && c.contains(xc.network)) => {
                                    add(f, format!("Invalid value: {x:?}: must be a strict subset of `cidr`"))
                                }
                                Ok(_) => {}
                            }
                        }
                    }
                }
            }
        }
        for (j, p) in ports.iter().enumerate() {
            let at = format!("spec.{dir}[{i}].ports[{j}]");
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            if !["TCP", "UDP", "SCTP"].contains(&proto) {
                add(
                    format!("{at}.protocol"),
                    format!("Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
                );
            }
            match &p.port {
                Some(IntOrString::Int(n)) if !(1..=65535).contains(n) => add(
                    format!("{at}.port"),
                    format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                ),
                Some(IntOrString::String(s)) => {
                    if let Err(m) = crate::validation::port_name(s) {
                        add(format!("{at}.port"), format!("Invalid value: {m}"));
                    }
                }
                _ => {}
            }
            if let Some(end) = p.end_port {
                match &p.port {
                    Some(IntOrString::Int(n)) if end >= *n && end <= 65535 => {}
                    Some(IntOrString::Int(_)) => add(
                        format!("{at}.endPort"),
                        format!(
                            "Invalid value: {end}: must be greater than or equal to `port` and at most 65535"
                        ),
                    ),
                    _ => add(
                        format!("{at}.endPort"),
                        "Invalid value: may not be specified when `port` is absent or a name".into(),
                    ),
                }
            }
        }
    }
    out
}

/// The controller name of Tug's built-in Ingress controller, in an IngressClass.
pub const INGRESS_CONTROLLER: &str = "tug.io/ingress-controller";
/// The class the control plane makes at start: Tug's controller, the default class.
pub const INGRESS_CLASS: &str = "tug";
/// The annotation that makes an IngressClass the default one.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Whether Tug's controller serves the Ingress `ing` (as served by the API), given the
/// IngressClasses: its class is one whose controller is Tug's (or the legacy annotation
/// names `tug`), or it names none and the default class is Tug's.
pub fn served_by_tug<'a>(
    ing: &serde_json::Value,
    mut classes: impl Iterator<Item = &'a serde_json::Value>,
) -> bool {
    match ing["spec"]["ingressClassName"].as_str() {
        Some(name) => {
            classes.any(|c| c["metadata"]["name"] == name && c["spec"]["controller"] == INGRESS_CONTROLLER)
        }
        None => match ing["metadata"]["annotations"]["kubernetes.io/ingress.class"].as_str() {
            Some(a) => a == INGRESS_CLASS,
            None => classes.any(|c| {
                c["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION] == "true"
                    && c["spec"]["controller"] == INGRESS_CONTROLLER
            }),
        },
    }
}

/// `networking.k8s.io/v1` Ingress: HTTP routes by host and path to Services.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ingress {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: IngressSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<IngressBackend>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<IngressTls>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<IngressRuleSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressTls {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRuleSpec {
    /// A DNS name, or `*.` and one: absent matches every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpIngressRuleValue>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpIngressRuleValue {
    pub paths: Vec<HttpIngressPath>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpIngressPath {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `Exact`, `Prefix` or `ImplementationSpecific` (Tug: as `Prefix`).
    #[serde(default)]
    pub path_type: String,
    pub backend: IngressBackend,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressBackend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<IngressServiceBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressServiceBackend {
    pub name: String,
    #[serde(default)]
    pub port: ServiceBackendPort,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceBackendPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
}

/// `networking.k8s.io/v1` IngressClass: which controller serves an Ingress.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressClass {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: IngressClassSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressClassSpec {
    #[serde(default)]
    pub controller: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
}

fn backend_problems(b: &IngressBackend, at: &str, out: &mut Vec<(String, String)>) {
    match (&b.service, &b.resource) {
        (None, None) => out.push((at.into(), "Required value: service or resource".into())),
        (Some(_), Some(_)) => out.push((at.into(), "Forbidden: cannot set both service and resource".into())),
        (None, Some(_)) => out.push((
            format!("{at}.resource"),
            "Unsupported value: Tug's Ingress controller routes to Services only".into(),
        )),
        (Some(s), None) => {
            if s.name.is_empty() {
                out.push((format!("{at}.service.name"), "Required value".into()));
            }
            match (&s.port.name, s.port.number) {
                (Some(_), Some(_)) => out.push((
                    format!("{at}.service.port"),
                    "Invalid value: cannot set both port name & port number".into(),
                )),
                (None, None) => {
                    out.push((format!("{at}.service.port"), "Required value: port name or number".into()))
                }
                (None, Some(n)) if !(1..=65535).contains(&n) => out.push((
                    format!("{at}.service.port.number"),
                    format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                )),
                _ => {}
            }
        }
    }
}

/// A rule's host: a DNS name, or `*.` followed by one; no port, no IP address.
fn host_problem(h: &str) -> Option<String> {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return Some(format!("Invalid value: {h:?}: must be a DNS name, not an IP address"));
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    crate::validation::dns1123_subdomain(name).err().map(|m| format!("Invalid value: {h:?}: {m}"))
}

/// The problems of an Ingress, as `(field, message)`.
pub fn validate_ingress(spec: &IngressSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(b) = &spec.default_backend {
        backend_problems(b, "spec.defaultBackend", &mut out);
    }
    if spec.rules.is_empty() && spec.default_backend.is_none() {
        out.push((
            "spec.rules".into(),
            "Required value: either `defaultBackend` or `rules` must be specified".into(),
        ));
    }
    for (i, r) in spec.rules.iter().enumerate() {
        if let Some(m) = r.host.as_deref().and_then(host_problem) {
            out.push((format!("spec.rules[{i}].host"), m));
        }
        for (j, p) in r.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            let at = format!("spec.rules[{i}].http.paths[{j}]");
            let path = p.path.as_deref().unwrap_or("");
            match p.path_type.as_str() {
                "Exact" | "Prefix" => {
                    if !path.starts_with('/') {
                        out.push((format!("{at}.path"), format!("Invalid value: {path:?}: must be an absolute path")));
                    }
                }
                "ImplementationSpecific" => {
                    if !path.is_empty() && !path.starts_with('/') {
                        out.push((format!("{at}.path"), format!("Invalid value: {path:?}: must be an absolute path")));
                    }
                }
                "" => out.push((format!("{at}.pathType"), "Required value: pathType must be specified".into())),
                t => out.push((
                    format!("{at}.pathType"),
                    format!("Unsupported value: {t:?}: supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\""),
                )),
            }
            backend_problems(&p.backend, &format!("{at}.backend"), &mut out);
        }
    }
    for (i, t) in spec.tls.iter().enumerate() {
        for (j, h) in t.hosts.iter().enumerate() {
            if let Some(m) = host_problem(h) {
                out.push((format!("spec.tls[{i}].hosts[{j}]"), m));
            }
        }
    }
    out
}
