//! The kinds Tug serves: how each is named (kind, plural, short names, API group), and
//! [`Object`], one typed value of any of them.

use crate::kinds::apps::{Deployment, ReplicaSet};
use crate::kinds::core::{ConfigMap, Namespace, Secret, Service};
use crate::kinds::pod::Pod;
use crate::meta::ObjectMeta;

/// How a kind is named and served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: &'static str,
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub short: &'static [&'static str],
    pub namespaced: bool,
}

impl KindInfo {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The REST path prefix: `/api/v1` or `/apis/apps/v1`.
    pub fn api_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// `deployment.apps`, `pod` — as kubectl prints it before `/name`.
    pub fn qualified_singular(&self) -> String {
        let s = self.kind.to_ascii_lowercase();
        if self.group.is_empty() { s } else { format!("{s}.{}", self.group) }
    }

    /// The REST path of a collection (`ns` for namespaced kinds) or of one object.
    pub fn path(&self, ns: Option<&str>, name: Option<&str>) -> String {
        let mut p = self.api_prefix();
        if let (true, Some(ns)) = (self.namespaced, ns) {
            p += &format!("/namespaces/{ns}");
        }
        p += &format!("/{}", self.plural);
        if let Some(n) = name {
            p += &format!("/{n}");
        }
        p
    }
}

/// Every kind Tug serves.
pub const KINDS: &[KindInfo] = &[
    KindInfo {
        kind: "Namespace",
        group: "",
        version: "v1",
        plural: "namespaces",
        short: &["ns"],
        namespaced: false,
    },
    KindInfo { kind: "Pod", group: "", version: "v1", plural: "pods", short: &["po"], namespaced: true },
    KindInfo {
        kind: "ConfigMap",
        group: "",
        version: "v1",
        plural: "configmaps",
        short: &["cm"],
        namespaced: true,
    },
    KindInfo { kind: "Secret", group: "", version: "v1", plural: "secrets", short: &[], namespaced: true },
    KindInfo {
        kind: "Service",
        group: "",
        version: "v1",
        plural: "services",
        short: &["svc"],
        namespaced: true,
    },
    KindInfo {
        kind: "Deployment",
        group: "apps",
        version: "v1",
        plural: "deployments",
        short: &["deploy"],
        namespaced: true,
    },
    KindInfo {
        kind: "ReplicaSet",
        group: "apps",
        version: "v1",
        plural: "replicasets",
        short: &["rs"],
        namespaced: true,
    },
];

/// Finds a kind by its kind name, plural, singular or short name, case-insensitively
/// (`Deployment`, `deployments`, `deployment`, `deploy`, `deployment.apps`).
pub fn lookup(name: &str) -> Option<&'static KindInfo> {
    let n = name.to_ascii_lowercase();
    let n = n.split_once('.').map_or(n.as_str(), |(s, _)| s).to_string();
    KINDS.iter().find(|k| k.kind.eq_ignore_ascii_case(&n) || k.plural == n || k.short.contains(&n.as_str()))
}

/// Finds a kind by `kind` and `apiVersion` exactly, as a manifest names it.
pub fn lookup_exact(kind: &str, api_version: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind && k.api_version() == api_version)
}

/// One object of any served kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    ConfigMap(ConfigMap),
    Secret(Secret),
    Service(Service),
    Deployment(Deployment),
    ReplicaSet(ReplicaSet),
}

macro_rules! each {
    ($self:expr, $o:ident => $e:expr) => {
        match $self {
            Object::Namespace($o) => $e,
            Object::Pod($o) => $e,
            Object::ConfigMap($o) => $e,
            Object::Secret($o) => $e,
            Object::Service($o) => $e,
            Object::Deployment($o) => $e,
            Object::ReplicaSet($o) => $e,
        }
    };
}

impl Object {
    pub fn metadata(&self) -> &ObjectMeta {
        each!(self, o => &o.metadata)
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        each!(self, o => &mut o.metadata)
    }

    /// The kind's naming.
    pub fn info(&self) -> &'static KindInfo {
        let kind = match self {
            Object::Namespace(_) => "Namespace",
            Object::Pod(_) => "Pod",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::Service(_) => "Service",
            Object::Deployment(_) => "Deployment",
            Object::ReplicaSet(_) => "ReplicaSet",
        };
        // Every variant is listed in KINDS, so the lookup cannot fail.
        KINDS.iter().find(|k| k.kind == kind).unwrap_or(&KINDS[0])
    }

    /// The object as JSON, with `apiVersion` and `kind` filled in.
    pub fn to_value(&self) -> serde_json::Value {
        let mut v = each!(self, o => serde_json::to_value(o)).unwrap_or_default();
        v["apiVersion"] = self.info().api_version().into();
        v["kind"] = self.info().kind.into();
        v
    }

    /// `deployment.apps/web`.
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.info().qualified_singular(), self.metadata().name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_any_name() {
        for n in ["Deployment", "deployments", "deployment", "deploy", "deployment.apps", "DEPLOY"] {
            assert_eq!(lookup(n).unwrap().kind, "Deployment", "{n}");
        }
        assert_eq!(lookup("svc").unwrap().kind, "Service");
        assert!(lookup("widgets").is_none());
        assert_eq!(
            lookup("pods").unwrap().path(Some("default"), Some("a")),
            "/api/v1/namespaces/default/pods/a"
        );
        assert_eq!(lookup("ns").unwrap().path(Some("x"), Some("x")), "/api/v1/namespaces/x");
        assert_eq!(lookup("rs").unwrap().path(None, None), "/apis/apps/v1/replicasets");
    }
}
