//! core/v1 LimitRange and ResourceQuota: per-namespace defaults and bounds for containers,
//! pods and claims, and caps on what a namespace may hold.

use crate::meta::ObjectMeta;
use crate::quantity::Quantity;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type ResourceList = BTreeMap<String, Quantity>;

/// A LimitRange: defaults and bounds the API server applies to new pods and claims.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitRange {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: LimitRangeSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitRangeSpec {
    #[serde(default)]
    pub limits: Vec<LimitRangeItem>,
}

/// The limits of one type: `Container`, `Pod` or `PersistentVolumeClaim`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitRangeItem {
    #[serde(default, rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max: ResourceList,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub min: ResourceList,
    /// The limit a container gets when it names none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default: ResourceList,
    /// The request a container gets when it names none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default_request: ResourceList,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_limit_request_ratio: ResourceList,
}

/// A ResourceQuota: the most a namespace may hold, and what it holds now.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceQuota {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ResourceQuotaSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResourceQuotaStatus>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceQuotaSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hard: ResourceList,
    /// `Terminating`, `NotTerminating`, `BestEffort`, `NotBestEffort`, `PriorityClass`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_selector: Option<ScopeSelector>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeSelector {
    #[serde(default)]
    pub match_expressions: Vec<ScopedResourceSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopedResourceSelectorRequirement {
    #[serde(default)]
    pub scope_name: String,
    #[serde(default)]
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceQuotaStatus {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hard: ResourceList,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub used: ResourceList,
}

/// A quantity from thousandths, in the shape Kubernetes prints: `cpu` in cores or `m`,
/// bytes in binary suffixes when exact, counts as plain numbers.
pub fn format_millis(resource: &str, millis: u128) -> Quantity {
    let text = if millis % 1000 != 0 {
        format!("{millis}m")
    } else {
        let v = millis / 1000;
        let bytes = resource.contains("memory") || resource.contains("storage");
        let suffixes = [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
        match suffixes.iter().find(|(_, p)| bytes && v > 0 && v % (1u128 << p) == 0) {
            Some((s, p)) => format!("{}{s}", v >> p),
            None => v.to_string(),
        }
    };
    Quantity::parse(&text).unwrap_or_else(|_| Quantity::parse("0").expect("zero parses"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_print_as_kubernetes_does() {
        let f = |r: &str, m: u128| format_millis(r, m).as_str().to_string();
        assert_eq!(f("requests.cpu", 1500), "1500m");
        assert_eq!(f("limits.cpu", 2000), "2");
        assert_eq!(f("requests.memory", 128 * 1024 * 1024 * 1000), "128Mi");
        assert_eq!(f("requests.memory", 1000 * 1000), "1000");
        assert_eq!(f("pods", 3000), "3");
        assert_eq!(f("pods", 0), "0");
    }
}
