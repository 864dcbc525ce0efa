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
        Object::Service(s) => {
            let spec = &mut s.spec;
            spec.type_.get_or_insert_with(|| "ClusterIP".into());
            spec.session_affinity.get_or_insert_with(|| "None".into());
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
        Object::Namespace(_) | Object::ConfigMap(_) => {}
    }
}

fn pod_spec(s: &mut PodSpec) {
    s.restart_policy.get_or_insert_with(|| "Always".into());
    s.termination_grace_period_seconds.get_or_insert(30);
    s.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    s.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
    for c in s.containers.iter_mut().chain(s.init_containers.iter_mut()) {
        container(c);
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
