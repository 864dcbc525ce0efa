//! `autoscaling/v1` HorizontalPodAutoscalers, converted to and from the `autoscaling/v2`
//! objects Tug stores, as Kubernetes converts them: v1's `targetCPUUtilizationPercentage` is
//! v2's CPU Utilization metric; what v1 cannot say (other metrics, behavior, conditions, the
//! other current metrics) travels in Kubernetes' `autoscaling.alpha.kubernetes.io/*`
//! annotations so that a v1 client's read-modify-write loses nothing. Pure.

use serde_json::{Map, Value, json};

pub const API_VERSION: &str = "autoscaling/v1";
const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["type"] == "Utilization"
}

fn annotations(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    obj["metadata"]["annotations"].as_object_mut().expect("an object")
}

/// A v2 object (or a fragment of one: a patch) as v1 shows it.
pub fn to_v1(obj: &mut Value) {
    if obj.get("apiVersion").is_some() {
        obj["apiVersion"] = API_VERSION.into();
    }
    let spec = obj["spec"].take();
    if spec.is_object() {
        let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
        let (cpu, others): (Vec<Value>, Vec<Value>) = metrics.into_iter().partition(is_cpu_utilization);
        let mut v1 = json!({});
        for k in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
            if !spec[k].is_null() {
                v1[k] = spec[k].clone();
            }
        }
        if let Some(c) = cpu.first() {
            v1["targetCPUUtilizationPercentage"] = c["resource"]["target"]["averageUtilization"].clone();
        }
        if !others.is_empty() {
            annotations(obj).insert(METRICS.into(), Value::String(Value::Array(others).to_string()));
        }
        if !spec["behavior"].is_null() {
            annotations(obj).insert(BEHAVIOR.into(), Value::String(spec["behavior"].to_string()));
        }
        obj["spec"] = v1;
    }
    let status = obj["status"].take();
    if status.is_object() {
        let mut v1 = json!({});
        for k in ["observedGeneration", "lastScaleTime", "currentReplicas", "desiredReplicas"] {
            if !status[k].is_null() {
                v1[k] = status[k].clone();
            }
        }
        let current = status["currentMetrics"].as_array().cloned().unwrap_or_default();
        let (cpu, others): (Vec<Value>, Vec<Value>) =
            current.into_iter().partition(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu");
        if let Some(u) = cpu
            .first()
            .map(|c| c["resource"]["current"]["averageUtilization"].clone())
            .filter(|u| !u.is_null())
        {
            v1["currentCPUUtilizationPercentage"] = u;
        }
        if !others.is_empty() {
            annotations(obj).insert(CURRENT_METRICS.into(), Value::String(Value::Array(others).to_string()));
        }
        if let Some(c) = status["conditions"].as_array().filter(|c| !c.is_empty()) {
            annotations(obj).insert(CONDITIONS.into(), Value::String(Value::Array(c.clone()).to_string()));
        }
        obj["status"] = v1;
    } else if let Some(m) = obj.as_object_mut() {
        m.remove("status");
    }
}

/// A v1 object (or patch) as the v2 object it stands for; the carrying annotations go.
pub fn to_v2(obj: &mut Value) {
    if obj.get("apiVersion").is_some() {
        obj["apiVersion"] = "autoscaling/v2".into();
    }
    let mut carried = Map::new();
    if let Some(a) = obj.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        for k in [METRICS, BEHAVIOR, CONDITIONS, CURRENT_METRICS] {
            if let Some(v) = a.remove(k) {
                carried.insert(k.into(), v);
            }
        }
    }
    let parsed =
        |k: &str| carried.get(k).and_then(Value::as_str).and_then(|t| serde_json::from_str::<Value>(t).ok());
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        let mut metrics: Vec<Value> = parsed(METRICS).and_then(|m| m.as_array().cloned()).unwrap_or_default();
        if let Some(t) = spec.remove("targetCPUUtilizationPercentage") {
            if !t.is_null() {
                metrics.insert(0, json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": t}}}));
            }
        }
        if !metrics.is_empty() {
            spec.insert("metrics".into(), Value::Array(metrics));
        }
        if let Some(b) = parsed(BEHAVIOR) {
            spec.insert("behavior".into(), b);
        }
    }
    // Status is the server's: a v1 writer's is dropped (the status subresource converts it).
    if let Some(st) = obj.get_mut("status").and_then(Value::as_object_mut) {
        let cpu = st.remove("currentCPUUtilizationPercentage");
        let mut current: Vec<Value> =
            parsed(CURRENT_METRICS).and_then(|m| m.as_array().cloned()).unwrap_or_default();
        if let Some(u) = cpu.filter(|u| !u.is_null()) {
            current.insert(0, json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": u}}}));
        }
        if !current.is_empty() {
            st.insert("currentMetrics".into(), Value::Array(current));
        }
        if let Some(c) = parsed(CONDITIONS) {
            st.insert("conditions".into(), c);
        }
    }
    if obj.pointer("/metadata/annotations").and_then(Value::as_object).is_some_and(Map::is_empty) {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("annotations");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_round_trip_without_loss() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60}});
        let mut v2 = v1.clone();
        to_v2(&mut v2);
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60);
        assert!(v2["spec"].get("targetCPUUtilizationPercentage").is_none());
        assert!(v2["metadata"].get("annotations").is_none());
        // A v2 object with more than v1 can say: the rest rides in annotations and comes back.
        let mut full = v2.clone();
        full["spec"]["metrics"].as_array_mut().unwrap().push(json!({"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}));
        full["spec"]["behavior"] = json!({"scaleDown": {"stabilizationWindowSeconds": 60}});
        full["status"] = json!({"currentReplicas": 2, "desiredReplicas": 3, "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 90, "averageValue": "90m"}}}],
            "conditions": [{"type": "AbleToScale", "status": "True"}]});
        let mut shown = full.clone();
        to_v1(&mut shown);
        assert_eq!(shown["spec"]["targetCPUUtilizationPercentage"], 60);
        assert_eq!(shown["status"]["currentCPUUtilizationPercentage"], 90);
        assert!(shown["metadata"]["annotations"][METRICS].as_str().unwrap().contains("memory"));
        let mut back = shown.clone();
        to_v2(&mut back);
        assert_eq!(back["spec"], full["spec"]);
        assert_eq!(back["status"]["conditions"], full["status"]["conditions"]);
    }
}
