//! Defaulting, as Kubernetes' API server does it before validation.

use crate::kinds::pod::{Container, PodSpec, Probe};
use crate::meta::IntOrString;
use crate::object::Object;
use base64::Engine;

/// Fills in every default the object's kind has.
pub fn apply(obj: &mut Object) {
    match obj {
        Object::Pod(p) => pod_spec(&mut p.spec),
        Object::Deployment(d) => {
            let s = &mut d.spec;
            s.replicas.get_or_insert(1);
            s.revision_history_limit.get_or_insert(10);
            s.progress_deadline_seconds.get_or_insert(600);
            let strategy = s.strategy.get_or_insert_with(Default::default);
            let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
            if kind == "RollingUpdate" {
                let ru = strategy.rolling_update.get_or_insert_with(Default::default);
                ru.max_surge.get_or_insert_with(|| IntOrString::String("25%".into()));
                ru.max_unavailable.get_or_insert_with(|| IntOrString::String("25%".into()));
            }
            pod_spec(&mut s.template.spec);
        }
        Object::ReplicaSet(r) => {
            r.spec.replicas.get_or_insert(1);
            pod_spec(&mut r.spec.template.spec);
        }
        Object::DaemonSet(d) => {
            let s = &mut d.spec;
            s.revision_history_limit.get_or_insert(10);
            let strategy = s.update_strategy.get_or_insert_with(Default::default);
            let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
            if kind == "RollingUpdate" {
                let ru = strategy.rolling_update.get_or_insert_with(Default::default);
                ru.max_unavailable.get_or_insert(IntOrString::Int(1));
                ru.max_surge.get_or_insert(IntOrString::Int(0));
            }
            pod_spec(&mut s.template.spec);
        }
        Object::LimitRange(l) => {
            // Kubernetes' defaulting of a Container item: the default limit from `max`, the
            // default request from the default limit, else from `min`.
            for item in l.spec.limits.iter_mut().filter(|i| i.type_ == "Container") {
                for (k, v) in &item.max {
                    item.default.entry(k.clone()).or_insert_with(|| v.clone());
                }
                for (k, v) in &item.default {
                    item.default_request.entry(k.clone()).or_insert_with(|| v.clone());
                }
                for (k, v) in &item.min {
                    item.default_request.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        Object::StatefulSet(d) => {
            let s = &mut d.spec;
            s.replicas.get_or_insert(1);
            s.revision_history_limit.get_or_insert(10);
            s.pod_management_policy.get_or_insert_with(|| "OrderedReady".into());
            let strategy = s.update_strategy.get_or_insert_with(Default::default);
            let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
            if kind == "RollingUpdate" {
                let ru = strategy.rolling_update.get_or_insert_with(Default::default);
                ru.partition.get_or_insert(0);
                ru.max_unavailable.get_or_insert(IntOrString::Int(1));
            }
            let retention = s.persistent_volume_claim_retention_policy.get_or_insert_with(Default::default);
            retention.when_deleted.get_or_insert_with(|| "Retain".into());
            retention.when_scaled.get_or_insert_with(|| "Retain".into());
            for c in &mut s.volume_claim_templates {
                c.spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
            }
            pod_spec(&mut s.template.spec);
        }
        Object::Rollout(r) => {
            let s = &mut r.spec;
            s.replicas.get_or_insert(1);
            s.revision_history_limit.get_or_insert(10);
            s.progress_deadline_seconds.get_or_insert(600);
            pod_spec(&mut s.template.spec);
        }
        Object::Service(s) => {
            let spec = &mut s.spec;
            let kind = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
            spec.session_affinity.get_or_insert_with(|| "None".into());
            if kind != "ExternalName" {
                spec.internal_traffic_policy.get_or_insert_with(|| "Cluster".into());
                if spec.ip_families.is_empty() {
                    spec.ip_families.push("IPv4".into());
                }
                spec.ip_family_policy.get_or_insert_with(|| "SingleStack".into());
            }
            if kind == "NodePort" || kind == "LoadBalancer" {
                spec.external_traffic_policy.get_or_insert_with(|| "Cluster".into());
            }
            if kind == "LoadBalancer" {
                spec.allocate_load_balancer_node_ports.get_or_insert(true);
            }
            for p in &mut spec.ports {
                p.protocol.get_or_insert_with(|| "TCP".into());
                p.target_port.get_or_insert(IntOrString::Int(p.port));
            }
        }
        Object::Secret(s) => {
            s.type_.get_or_insert_with(|| "Opaque".into());
            for (k, v) in std::mem::take(&mut s.string_data) {
                s.data.insert(k, base64::engine::general_purpose::STANDARD.encode(v));
            }
        }
        Object::Job(j) => job_spec(&mut j.spec),
        Object::CronJob(c) => {
            let s = &mut c.spec;
            s.concurrency_policy.get_or_insert_with(|| "Allow".into());
            s.suspend.get_or_insert(false);
            s.successful_jobs_history_limit.get_or_insert(3);
            s.failed_jobs_history_limit.get_or_insert(1);
            job_spec(&mut s.job_template.spec);
        }
        Object::HorizontalPodAutoscaler(h) => {
            h.spec.min_replicas.get_or_insert(1);
            if h.spec.metrics.is_empty() {
                h.spec.metrics.push(crate::kinds::batch::MetricSpec {
                    type_: "Resource".into(),
                    resource: Some(crate::kinds::batch::ResourceMetricSource {
                        name: "cpu".into(),
                        target: crate::kinds::batch::MetricTarget {
                            type_: "Utilization".into(),
                            average_utilization: Some(80),
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                });
            }
        }
        Object::Endpoints(e) => {
            for p in e.subsets.iter_mut().flat_map(|s| s.ports.iter_mut()) {
                p.protocol.get_or_insert_with(|| "TCP".into());
            }
        }
        Object::PersistentVolume(pv) => {
            pv.spec.persistent_volume_reclaim_policy.get_or_insert_with(|| "Retain".into());
            pv.spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
        }
        Object::PriorityClass(pc) => {
            pc.preemption_policy.get_or_insert_with(|| "PreemptLowerPriority".into());
        }
        Object::EndpointSlice(s) => {
            for p in &mut s.ports {
                p.protocol.get_or_insert_with(|| "TCP".into());
            }
        }
        Object::Ingress(_) | Object::IngressClass(_) => {}
        Object::NetworkPolicy(p) => {
            if p.spec.policy_types.is_empty() {
                p.spec.policy_types = p.spec.default_types();
            }
            for port in p.spec.ingress.iter_mut().flatten().flat_map(|r| r.ports.iter_mut()) {
                port.protocol.get_or_insert_with(|| "TCP".into());
            }
            for port in p.spec.egress.iter_mut().flatten().flat_map(|r| r.ports.iter_mut()) {
                port.protocol.get_or_insert_with(|| "TCP".into());
            }
        }
        Object::AddressPool(p) => {
            p.spec.auto_assign.get_or_insert(true);
        }
        Object::PersistentVolumeClaim(c) => {
            c.spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
        }
        // Kubernetes' immutable label naming the namespace, what namespaceSelectors pick by.
        Object::Namespace(n) => {
            let name = n.metadata.name.clone();
            n.metadata.labels.insert("kubernetes.io/metadata.name".into(), name);
        }
        Object::ConfigMap(_)
        | Object::Node(_)
        | Object::Event(_)
        | Object::Lease(_)
        | Object::ControllerRevision(_)
        | Object::ResourceQuota(_)
        | Object::PodDisruptionBudget(_)
        | Object::VerticalPodAutoscaler(_)
        | Object::AnalysisTemplate(_)
        | Object::ClusterAnalysisTemplate(_)
        | Object::AnalysisRun(_)
        | Object::ServiceAccount(_)
        | Object::Role(_)
        | Object::ClusterRole(_) => {}
        Object::RoleBinding(b) => rbac_subjects(&mut b.subjects),
        Object::ClusterRoleBinding(b) => rbac_subjects(&mut b.subjects),
    }
}

/// A subject's `apiGroup`: RBAC's for users and groups, the core group for service accounts.
fn rbac_subjects(subjects: &mut [crate::kinds::rbac::Subject]) {
    for s in subjects {
        if s.api_group.is_none() {
            s.api_group = match s.kind.as_str() {
                "User" | "Group" => Some(crate::kinds::rbac::GROUP.into()),
                "ServiceAccount" => Some(String::new()),
                _ => None,
            };
        }
    }
}

/// A Job's pods run to completion: no restartPolicy default (Kubernetes requires it).
fn job_spec(s: &mut crate::kinds::batch::JobSpec) {
    s.parallelism.get_or_insert(1);
    if s.completions.is_none() && s.parallelism == Some(1) {
        s.completions = Some(1);
    }
    s.backoff_limit.get_or_insert(6);
    s.completion_mode.get_or_insert_with(|| "NonIndexed".into());
    s.suspend.get_or_insert(false);
    pod_spec_with(&mut s.template.spec, None);
}

fn pod_spec(s: &mut PodSpec) {
    pod_spec_with(s, Some("Always"));
}

fn pod_spec_with(s: &mut PodSpec, restart: Option<&str>) {
    if let Some(r) = restart {
        s.restart_policy.get_or_insert_with(|| r.into());
    }
    s.termination_grace_period_seconds.get_or_insert(30);
    s.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    s.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
    for c in s.containers.iter_mut().chain(s.init_containers.iter_mut()) {
        container(c);
        // A host-network pod's ports are the node's: each container port is its host port.
        if s.host_network == Some(true) {
            for p in &mut c.ports {
                p.host_port.get_or_insert(p.container_port);
            }
        }
    }
}

fn container(c: &mut Container) {
    // `latest`, or no tag at all, means Always — unless the image is pinned by digest.
    let policy = if image_tag(&c.image).is_none_or(|t| t == "latest") && !c.image.contains('@') {
        "Always"
    } else {
        "IfNotPresent"
    };
    c.image_pull_policy.get_or_insert_with(|| policy.into());
    c.termination_message_path.get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy.get_or_insert_with(|| "File".into());
    for p in &mut c.ports {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    for probe in [&mut c.liveness_probe, &mut c.readiness_probe, &mut c.startup_probe].into_iter().flatten() {
        self::probe(probe);
    }
}

fn probe(p: &mut Probe) {
    p.timeout_seconds.get_or_insert(1);
    p.period_seconds.get_or_insert(10);
    p.success_threshold.get_or_insert(1);
    p.failure_threshold.get_or_insert(3);
    if let Some(h) = &mut p.http_get {
        h.path.get_or_insert_with(|| "/".into());
        h.scheme.get_or_insert_with(|| "HTTP".into());
    }
}

/// The tag of an image reference, if it has one (`busybox:1.36` → `1.36`; a registry port is
/// not a tag).
pub fn image_tag(image: &str) -> Option<&str> {
    let name = image.split('@').next().unwrap_or(image);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split_once(':').map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags() {
        assert_eq!(image_tag("busybox:1.36"), Some("1.36"));
        assert_eq!(image_tag("localhost:5000/web"), None);
        assert_eq!(image_tag("localhost:5000/web:v2"), Some("v2"));
        assert_eq!(image_tag("busybox"), None);
    }
}
