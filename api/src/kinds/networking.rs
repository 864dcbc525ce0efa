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
