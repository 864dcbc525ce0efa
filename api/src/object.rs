//! The kinds Tug serves: how each is named (kind, plural, short names, API group), and
//! [`Object`], one typed value of any of them.

use crate::kinds::apps::{Deployment, ReplicaSet};
use crate::kinds::batch::{CronJob, HorizontalPodAutoscaler, Job};
use crate::kinds::cluster::{Endpoints, Event, Lease, Node, PriorityClass};
use crate::kinds::core::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use crate::kinds::pod::Pod;
use crate::kinds::rbac::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use crate::kinds::storage::{PersistentVolume, PersistentVolumeClaim};
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

    /// Whether the kind has a status (and a `status` subresource); such objects answer with
    /// `status: {}` from their creation on, as Kubernetes' do.
    pub fn has_status(&self) -> bool {
        !matches!(
            self.plural,
            "configmaps"
                | "secrets"
                | "serviceaccounts"
                | "endpoints"
                | "endpointslices"
                | "events"
                | "leases"
                | "controllerrevisions"
                | "limitranges"
                | "priorityclasses"
                | "analysistemplates"
                | "clusteranalysistemplates"
                | "roles"
                | "clusterroles"
                | "rolebindings"
                | "clusterrolebindings"
                | "addresspools"
        )
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

const fn kind(
    kind: &'static str,
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    namespaced: bool,
) -> KindInfo {
    KindInfo { kind, group, version, plural, short, namespaced }
}

/// Every kind Tug serves.
pub const KINDS: &[KindInfo] = &[
    kind("Namespace", "", "v1", "namespaces", &["ns"], false),
    kind("Node", "", "v1", "nodes", &["no"], false),
    kind("Pod", "", "v1", "pods", &["po"], true),
    kind("ConfigMap", "", "v1", "configmaps", &["cm"], true),
    kind("Secret", "", "v1", "secrets", &[], true),
    kind("ServiceAccount", "", "v1", "serviceaccounts", &["sa"], true),
    kind("Service", "", "v1", "services", &["svc"], true),
    kind("Endpoints", "", "v1", "endpoints", &["ep"], true),
    kind("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", &[], true),
    kind("Event", "", "v1", "events", &["ev"], true),
    kind("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies", &["netpol"], true),
    kind("Ingress", "networking.k8s.io", "v1", "ingresses", &["ing"], true),
    kind("IngressClass", "networking.k8s.io", "v1", "ingressclasses", &[], false),
    kind("PersistentVolume", "", "v1", "persistentvolumes", &["pv"], false),
    kind("PersistentVolumeClaim", "", "v1", "persistentvolumeclaims", &["pvc"], true),
    kind("LimitRange", "", "v1", "limitranges", &["limits"], true),
    kind("ResourceQuota", "", "v1", "resourcequotas", &["quota"], true),
    kind("Deployment", "apps", "v1", "deployments", &["deploy"], true),
    kind("ReplicaSet", "apps", "v1", "replicasets", &["rs"], true),
    kind("DaemonSet", "apps", "v1", "daemonsets", &["ds"], true),
    kind("StatefulSet", "apps", "v1", "statefulsets", &["sts"], true),
    kind("ControllerRevision", "apps", "v1", "controllerrevisions", &[], true),
    kind("Job", "batch", "v1", "jobs", &[], true),
    kind("CronJob", "batch", "v1", "cronjobs", &["cj"], true),
    kind("HorizontalPodAutoscaler", "autoscaling", "v2", "horizontalpodautoscalers", &["hpa"], true),
    kind("VerticalPodAutoscaler", "autoscaling.k8s.io", "v1", "verticalpodautoscalers", &["vpa"], true),
    kind("Rollout", "argoproj.io", "v1alpha1", "rollouts", &["ro"], true),
    kind("AnalysisTemplate", "argoproj.io", "v1alpha1", "analysistemplates", &[], true),
    kind("ClusterAnalysisTemplate", "argoproj.io", "v1alpha1", "clusteranalysistemplates", &[], false),
    kind("AnalysisRun", "argoproj.io", "v1alpha1", "analysisruns", &[], true),
    kind("Lease", "coordination.k8s.io", "v1", "leases", &[], true),
    kind("PodDisruptionBudget", "policy", "v1", "poddisruptionbudgets", &["pdb"], true),
    kind("PriorityClass", "scheduling.k8s.io", "v1", "priorityclasses", &["pc"], false),
    kind("AddressPool", "tug.io", "v1", "addresspools", &[], false),
    kind("Role", "rbac.authorization.k8s.io", "v1", "roles", &[], true),
    kind("ClusterRole", "rbac.authorization.k8s.io", "v1", "clusterroles", &[], false),
    kind("RoleBinding", "rbac.authorization.k8s.io", "v1", "rolebindings", &[], true),
    kind("ClusterRoleBinding", "rbac.authorization.k8s.io", "v1", "clusterrolebindings", &[], false),
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

macro_rules! objects {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// One object of any served kind.
        // Objects are handled one at a time, never in bulk arrays: the size spread between
        // kinds costs nothing worth a Box per variant.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq)]
        pub enum Object {
            $($variant($ty)),*
        }

        impl Object {
            pub fn metadata(&self) -> &ObjectMeta {
                match self { $(Object::$variant(o) => &o.metadata),* }
            }

            pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
                match self { $(Object::$variant(o) => &mut o.metadata),* }
            }

            /// The `kind` of this object.
            pub fn kind_name(&self) -> &'static str {
                match self { $(Object::$variant(_) => stringify!($variant)),* }
            }

            fn raw_value(&self) -> serde_json::Value {
                match self { $(Object::$variant(o) => serde_json::to_value(o).unwrap_or_default()),* }
            }
        }

        /// The JSON schema of every kind, by kind name, their parts in `generator`'s
        /// definitions: the OpenAPI documents are made from the types that decode objects.
        pub fn schemas(generator: &mut schemars::SchemaGenerator) -> Vec<(&'static str, schemars::Schema)> {
            vec![$((stringify!($variant), generator.subschema_for::<$ty>())),*]
        }

        /// Decodes a document of `kind` strictly, with field paths in errors.
        pub(crate) fn decode_as(kind: &str, v: &serde_json::Value) -> Result<Object, Vec<crate::validation::FieldError>> {
            match kind {
                $(stringify!($variant) => crate::manifest::typed_decode::<$ty>(v).map(Object::$variant),)*
                other => Err(vec![crate::validation::FieldError { field: "kind".into(), message: format!("Unsupported value: {other:?}") }]),
            }
        }
    };
}

objects! {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    ConfigMap(ConfigMap),
    Secret(Secret),
    ServiceAccount(ServiceAccount),
    Service(Service),
    Endpoints(Endpoints),
    EndpointSlice(crate::kinds::discovery::EndpointSlice),
    Event(Event),
    NetworkPolicy(crate::kinds::networking::NetworkPolicy),
    Ingress(crate::kinds::networking::Ingress),
    IngressClass(crate::kinds::networking::IngressClass),
    PersistentVolume(PersistentVolume),
    PersistentVolumeClaim(PersistentVolumeClaim),
    LimitRange(crate::kinds::quota::LimitRange),
    ResourceQuota(crate::kinds::quota::ResourceQuota),
    Deployment(Deployment),
    ReplicaSet(ReplicaSet),
    DaemonSet(crate::kinds::apps::DaemonSet),
    StatefulSet(crate::kinds::apps::StatefulSet),
    ControllerRevision(crate::kinds::apps::ControllerRevision),
    Job(Job),
    CronJob(CronJob),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    VerticalPodAutoscaler(crate::kinds::vpa::VerticalPodAutoscaler),
    Rollout(crate::kinds::rollouts::Rollout),
    AnalysisTemplate(crate::kinds::rollouts::AnalysisTemplate),
    ClusterAnalysisTemplate(crate::kinds::rollouts::ClusterAnalysisTemplate),
    AnalysisRun(crate::kinds::rollouts::AnalysisRun),
    Lease(Lease),
    PodDisruptionBudget(crate::kinds::policy::PodDisruptionBudget),
    PriorityClass(PriorityClass),
    AddressPool(crate::kinds::lb::AddressPool),
    Role(Role),
    ClusterRole(ClusterRole),
    RoleBinding(RoleBinding),
    ClusterRoleBinding(ClusterRoleBinding),
}

impl Object {
    /// The kind's naming.
    pub fn info(&self) -> &'static KindInfo {
        let kind = self.kind_name();
        // Every variant is listed in KINDS (a unit test checks), so the lookup cannot fail.
        KINDS.iter().find(|k| k.kind == kind).unwrap_or(&KINDS[0])
    }

    /// The object as JSON, with `apiVersion` and `kind` filled in.
    pub fn to_value(&self) -> serde_json::Value {
        let mut v = self.raw_value();
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
    fn every_variant_has_a_kind_entry() {
        for k in KINDS {
            let v =
                serde_json::json!({"apiVersion": k.api_version(), "kind": k.kind, "metadata": {"name": "x"}});
            let o = crate::manifest::decode(&v).unwrap_or_else(|e| panic!("{}: {e:?}", k.kind));
            assert_eq!(o.info().kind, k.kind);
        }
    }

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
