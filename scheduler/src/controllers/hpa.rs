//! HorizontalPodAutoscalers: Kubernetes' arithmetic, from its controller
//! (`pkg/controller/podautoscaler`): per metric `desired = ceil(ratio × pods)` with the 10%
//! tolerance, pods that are missing metrics or not yet ready counted the way upstream counts
//! them (so they damp a change rather than cause one), the largest proposal over the metrics,
//! then `behavior`: the stabilization windows (a recommendation is the lowest of the window's
//! for scale-up — 0 s by default — and the highest for scale-down — 300 s), the rate policies
//! (by default up by 100% or 4 pods per 15 s, whichever is more; down by 100% per 15 s), and
//! min/max. [`plan`] is pure: the HPA, the target's replicas, per-pod samples and the history
//! of earlier recommendations and rescales in; the replica count, status and event reason out.

// Kubernetes' arithmetic here is floating point (ratios, ceilings); replica counts, millicores
// and bytes stay far inside the range where the casts are exact.
#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss, clippy::cast_sign_loss)]

use std::collections::BTreeMap;
use tug_api::kinds::batch::{HpaSpec, MetricSpec, MetricTarget, ScalingPolicy, ScalingRules};
use tug_api::meta::Condition;

/// Kubernetes' `--horizontal-pod-autoscaler-tolerance`.
pub const TOLERANCE: f64 = 0.1;
/// `--horizontal-pod-autoscaler-cpu-initialization-period`: a pod started this recently
/// counts for CPU only once ready and sampled after it became ready.
pub const CPU_INITIALIZATION_SECS: u64 = 300;
/// `--horizontal-pod-autoscaler-initial-readiness-delay`.
pub const INITIAL_READINESS_DELAY_SECS: u64 = 30;
/// `--horizontal-pod-autoscaler-downscale-stabilization`, the scale-down window's default.
pub const DOWNSCALE_STABILIZATION_SECS: i32 = 300;

/// One container of a pod: its name, usage (millicores or bytes) when sampled, and request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSample {
    pub name: String,
    pub cpu: Option<u64>,
    pub memory: Option<u64>,
    pub cpu_request: Option<u64>,
    pub memory_request: Option<u64>,
}

/// One pod of the target, as the controller sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodSample {
    pub name: String,
    /// Pending, Running, Succeeded, Failed.
    pub phase: String,
    pub deleting: bool,
    pub ready: bool,
    /// When its Ready condition last changed, and when it started (seconds since the epoch).
    pub ready_changed: Option<u64>,
    pub started: Option<u64>,
    /// When its usage was sampled (the end of the sample window) and the window's length.
    pub sampled_at: Option<u64>,
    pub window: u64,
    pub containers: Vec<ContainerSample>,
}

/// What the controller remembers of an HPA between syncs (upstream keeps it in memory too).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// (time, recommendation) of every sync in the longest window.
    pub recommendations: Vec<(u64, i32)>,
    /// (time, replicas added) and (time, replicas removed) of earlier rescales.
    pub scale_ups: Vec<(u64, i32)>,
    pub scale_downs: Vec<(u64, i32)>,
}

/// The controller's decision for one sync.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub desired: i32,
    /// `status.currentMetrics`.
    pub current_metrics: Vec<serde_json::Value>,
    pub conditions: Vec<Condition>,
    /// For the SuccessfulRescale event, when `desired` differs from the current count.
    pub reason: String,
}

fn cond(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        ..Default::default()
    }
}

/// What a metric measures, for messages (`cpu resource utilization (percentage of request)`).
fn describe(m: &MetricSpec) -> String {
    let (name, target, container) = match (&m.resource, &m.container_resource) {
        (Some(r), _) => (r.name.as_str(), &r.target, None),
        (None, Some(c)) => (c.name.as_str(), &c.target, Some(c.container.as_str())),
        _ => return format!("{} metric", m.type_.to_ascii_lowercase()),
    };
    let what = if target.type_ == "Utilization" {
        "resource utilization (percentage of request)"
    } else {
        "resource"
    };
    match container {
        Some(c) => format!("{name} container {what} of container {c}"),
        None => format!("{name} {what}"),
    }
}

/// A Quantity as millicores (cpu) or bytes.
fn amount(q: &tug_api::quantity::Quantity, cpu: bool) -> u64 {
    u64::try_from(if cpu { q.millis() } else { q.value() }).unwrap_or(u64::MAX)
}

/// A pod's usage and request of `resource`, for all its containers or one.
fn pod_values(p: &PodSample, resource: &str, container: Option<&str>) -> (Option<u64>, Option<u64>) {
    let cs: Vec<&ContainerSample> =
        p.containers.iter().filter(|c| container.is_none_or(|n| c.name == n)).collect();
    if cs.is_empty() {
        return (None, None);
    }
    let cpu = resource == "cpu";
    let usage: Option<u64> = cs.iter().map(|c| if cpu { c.cpu } else { c.memory }).sum();
    let request: Option<u64> = cs.iter().map(|c| if cpu { c.cpu_request } else { c.memory_request }).sum();
    (usage, request)
}

/// One metric's proposal: (replicas, utilization % or average value, the status entry).
/// What a metrics adapter (custom.metrics.k8s.io, external.metrics.k8s.io) answers for a
/// Pods, Object or External metric.
#[derive(Debug, Clone, PartialEq)]
pub enum CustomValue {
    /// A Pods metric: each pod's value, by name.
    PerPod(Vec<(String, f64)>),
    /// An Object metric (the object's value) or an External one (the sum of its series).
    Total(f64),
}

/// The source of Pods, Object and External metrics: Kubernetes' metrics adapters' place. None
/// is built in yet; an implementation answers for one metric of one HPA's namespace.
pub trait MetricsAdapter: Send + Sync {
    fn value(&self, namespace: &str, metric: &MetricSpec, pods: &[PodSample]) -> Result<CustomValue, String>;
}

/// Where Pods, Object and External metrics come from in [`plan`].
pub type Custom<'a> = &'a dyn Fn(&MetricSpec) -> Result<CustomValue, String>;

/// No adapter: every custom metric fails with the reason upstream gives.
pub fn no_adapter(m: &MetricSpec) -> Result<CustomValue, String> {
    Err(format!(
        "unable to get {} metric: no custom or external metrics adapter is configured (Tug serves Resource and ContainerResource metrics)",
        m.type_
    ))
}

/// Upstream's arithmetic for Pods, Object and External metrics.
fn custom_replicas(
    m: &MetricSpec,
    current: i32,
    pods: &[PodSample],
    value: CustomValue,
) -> Result<(i32, serde_json::Value), String> {
    let source = match m.type_.as_str() {
        "Pods" => &m.pods,
        "Object" => &m.object,
        _ => &m.external,
    }
    .clone()
    .unwrap_or_default();
    let target = &source["target"];
    let parse = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|q| tug_api::quantity::Quantity::parse(q).ok())
            .map(|q| q.millis() as f64 / 1000.0)
    };
    let ready = pods.iter().filter(|p| p.phase == "Running" && p.ready && !p.deleting).count().max(1) as f64;
    let within = |ratio: f64, proposal: f64| {
        if (1.0 - ratio).abs() <= TOLERANCE { current } else { proposal.ceil() as i32 }
    };
    let key = m.type_.to_ascii_lowercase();
    let name = source["metric"]["name"].clone();
    match (value, parse(&target["averageValue"]), parse(&target["value"])) {
        (CustomValue::PerPod(values), Some(avg_target), _) => {
            let n = values.len().max(1) as f64;
            let average = values.iter().map(|(_, v)| v).sum::<f64>() / n;
            let ratio = average / avg_target.max(f64::MIN_POSITIVE);
            Ok((
                within(ratio, ratio * n),
                serde_json::json!({"type": m.type_, key: {"metric": {"name": name}, "current": {"averageValue": format!("{}m", (average * 1000.0) as u64)}}}),
            ))
        }
        (CustomValue::Total(total), Some(avg_target), _) => {
            let proposal = total / avg_target.max(f64::MIN_POSITIVE);
            let ratio = proposal / f64::from(current.max(1));
            Ok((
                within(ratio, proposal),
                serde_json::json!({"type": m.type_, key: {"metric": {"name": name}, "current": {"averageValue": format!("{}m", (total / f64::from(current.max(1)) * 1000.0) as u64)}}}),
            ))
        }
        (CustomValue::Total(total), None, Some(value_target)) => {
            let ratio = total / value_target.max(f64::MIN_POSITIVE);
            Ok((
                within(ratio, ratio * ready),
                serde_json::json!({"type": m.type_, key: {"metric": {"name": name}, "current": {"value": format!("{}m", (total * 1000.0) as u64)}}}),
            ))
        }
        _ => Err(format!(
            "{} metric {name}: the target needs averageValue (or value for Object and External)",
            m.type_
        )),
    }
}

fn replicas_for(
    m: &MetricSpec,
    current: i32,
    pods: &[PodSample],
    now: u64,
    custom: Custom<'_>,
) -> Result<(i32, serde_json::Value), (String, String)> {
    let (resource, target, container): (&str, &MetricTarget, Option<&str>) =
        match (&m.resource, &m.container_resource) {
            (Some(r), _) if m.type_ == "Resource" => (&r.name, &r.target, None),
            (_, Some(c)) if m.type_ == "ContainerResource" => {
                (&c.name, &c.target, Some(c.container.as_str()))
            }
            _ => {
                let failed = |e: String| (format!("FailedGet{}Metric", m.type_), e);
                let value = custom(m).map_err(failed)?;
                return custom_replicas(m, current, pods, value).map_err(failed);
            }
        };
    let cpu = resource == "cpu";
    let failed = |msg: String| {
        let reason =
            if container.is_some() { "FailedGetContainerResourceMetric" } else { "FailedGetResourceMetric" };
        (reason.to_string(), msg)
    };
    // Upstream's groupPods: ignored (deleting, failed), unready (pending; for CPU not yet ready
    // or sampled before it was), missing (no sample), and the ready ones with samples.
    let mut samples: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut unready: Vec<&PodSample> = Vec::new();
    let mut missing: Vec<&PodSample> = Vec::new();
    for p in pods {
        if p.deleting || p.phase == "Failed" || p.phase == "Succeeded" {
            continue;
        }
        if p.phase == "Pending" {
            unready.push(p);
            continue;
        }
        let (usage, request) = pod_values(p, resource, container);
        let Some(usage) = usage.filter(|_| p.sampled_at.is_some()) else {
            missing.push(p);
            continue;
        };
        if cpu {
            let sampled = p.sampled_at.unwrap_or(0);
            let not_ready = match (p.started, p.ready_changed) {
                (Some(start), changed) if start + CPU_INITIALIZATION_SECS > now => {
                    !p.ready || changed.is_none_or(|c| sampled.saturating_sub(p.window) < c)
                }
                (start, Some(changed)) => {
                    !p.ready && start.unwrap_or(0) + INITIAL_READINESS_DELAY_SECS > changed
                }
                (_, None) => true,
            };
            if not_ready {
                unready.push(p);
                continue;
            }
        }
        let request = request.unwrap_or(0);
        if target.type_ == "Utilization" && request == 0 {
            let which = container.map(|c| format!(" of container {c}")).unwrap_or_default();
            return Err(failed(format!(
                "failed to get {resource} utilization: missing request for {resource}{which} in pod {}",
                p.name
            )));
        }
        samples.insert(&p.name, (usage, request));
    }
    if samples.is_empty() {
        return Err(failed(format!(
            "failed to get {resource} utilization: did not receive metrics for targeted pods (pods might be unready)"
        )));
    }
    // The ratio of usage to target, and the value status reports.
    let utilization_target = target.average_utilization.map(f64::from);
    let value_target = target.average_value.as_ref().map(|q| amount(q, cpu) as f64);
    let ratio_of = |s: &BTreeMap<&str, (u64, u64)>| -> (f64, f64, u64) {
        let usage: u64 = s.values().map(|v| v.0).sum();
        let requests: u64 = s.values().map(|v| v.1).sum();
        let average = usage / s.len().max(1) as u64;
        match (utilization_target, value_target) {
            (Some(t), _) => {
                let util = if requests == 0 { 0.0 } else { usage as f64 * 100.0 / requests as f64 };
                (util / t, util, average)
            }
            (None, Some(t)) => (average as f64 / t.max(1.0), 0.0, average),
            (None, None) => (1.0, 0.0, average),
        }
    };
    let (ratio, utilization, average) = ratio_of(&samples);
    let status_value = {
        let avg = if cpu { format!("{average}m") } else { average.to_string() };
        let mut current = serde_json::json!({"averageValue": avg});
        if utilization_target.is_some() {
            current["averageUtilization"] = (utilization.round() as i64).into();
        }
        let key = if container.is_some() { "containerResource" } else { "resource" };
        let mut entry = serde_json::json!({"type": m.type_, key: {"name": resource, "current": current}});
        if let Some(c) = container {
            entry[key]["container"] = c.into();
        }
        entry
    };
    let ready_count = samples.len() as f64;
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok((current, status_value));
        }
        return Ok(((ratio * ready_count).ceil() as i32, status_value));
    }
    // Missing pods: assumed at 100% of their target when scaling down, 0 when scaling up;
    // unready pods at 0 when scaling up. Then the direction may not flip.
    let mut filled = samples.clone();
    for p in &missing {
        let (_, request) = pod_values(p, resource, container);
        let request = request.unwrap_or(0);
        let usage = if ratio < 1.0 {
            match (utilization_target, value_target) {
                (Some(t), _) => (request as f64 * t / 100.0) as u64,
                (None, Some(t)) => t as u64,
                _ => 0,
            }
        } else {
            0
        };
        filled.insert(&p.name, (usage, request));
    }
    if scale_up_with_unready {
        for p in &unready {
            let (_, request) = pod_values(p, resource, container);
            filled.insert(&p.name, (0, request.unwrap_or(0)));
        }
    }
    let (new_ratio, _, _) = ratio_of(&filled);
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok((current, status_value));
    }
    let proposal = (new_ratio * filled.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && proposal > current) || (new_ratio > 1.0 && proposal < current) {
        return Ok((current, status_value));
    }
    Ok((proposal, status_value))
}

fn default_rules(up: bool) -> ScalingRules {
    let policy = |t: &str, v: i32| ScalingPolicy { type_: t.into(), value: v, period_seconds: 15 };
    if up {
        ScalingRules {
            stabilization_window_seconds: Some(0),
            select_policy: Some("Max".into()),
            policies: vec![policy("Pods", 4), policy("Percent", 100)],
            tolerance: None,
        }
    } else {
        ScalingRules {
            stabilization_window_seconds: Some(DOWNSCALE_STABILIZATION_SECS),
            select_policy: Some("Max".into()),
            policies: vec![policy("Percent", 100)],
            tolerance: None,
        }
    }
}

/// The rules for one direction: the HPA's, each unset part from the default.
pub fn rules(spec: &HpaSpec, up: bool) -> ScalingRules {
    let d = default_rules(up);
    let given =
        spec.behavior.as_ref().and_then(|b| if up { b.scale_up.clone() } else { b.scale_down.clone() });
    match given {
        None => d,
        Some(g) => ScalingRules {
            stabilization_window_seconds: g.stabilization_window_seconds.or(d.stabilization_window_seconds),
            select_policy: g.select_policy.or(d.select_policy),
            policies: if g.policies.is_empty() { d.policies } else { g.policies },
            tolerance: g.tolerance,
        },
    }
}

/// The most (up) or least (down) replicas the policies allow from `current` at `now`.
fn rate_limit(r: &ScalingRules, current: i32, events: &[(u64, i32)], now: u64, up: bool) -> i32 {
    let select = r.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let limits = r.policies.iter().map(|p| {
        let period = u64::try_from(p.period_seconds).unwrap_or(15);
        let changed: i32 = events.iter().filter(|(t, _)| *t + period > now).map(|(_, n)| n).sum();
        // Where the period began: what it has already added (or removed) taken back.
        let start = if up { current - changed } else { current + changed };
        match (p.type_.as_str(), up) {
            ("Pods", true) => start + p.value,
            ("Pods", false) => start - p.value,
            (_, true) => (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32,
            (_, false) => (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)).ceil() as i32,
        }
    });
    // Max means the policy allowing the biggest change.
    let pick_most_change = select == "Max";
    if up == pick_most_change { limits.max().unwrap_or(current) } else { limits.min().unwrap_or(current) }
}

/// One sync. `current` is the target's `spec.replicas`; `history` is read and updated.
pub fn plan(spec: &HpaSpec, current: i32, pods: &[PodSample], now: u64, history: &mut History) -> Plan {
    plan_with(spec, current, pods, now, history, &no_adapter)
}

/// [`plan`] with a source of Pods, Object and External metrics.
pub fn plan_with(
    spec: &HpaSpec,
    current: i32,
    pods: &[PodSample],
    now: u64,
    history: &mut History,
    custom: Custom<'_>,
) -> Plan {
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let mut conditions = vec![cond(
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
    )];
    if current == 0 && min != 0 {
        conditions.push(cond(
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
        ));
        return Plan { desired: 0, current_metrics: Vec::new(), conditions, reason: String::new() };
    }
    // Every metric's proposal; the largest wins. A metric that fails blocks scaling down.
    let mut proposal: Option<(i32, String)> = None;
    let mut metrics = Vec::new();
    let mut failure: Option<(String, String)> = None;
    for m in &spec.metrics {
        match replicas_for(m, current, pods, now, custom) {
            Ok((n, status)) => {
                metrics.push(status);
                if proposal.as_ref().is_none_or(|(p, _)| n > *p) {
                    proposal = Some((n, describe(m)));
                }
            }
            Err(e) => {
                if failure.is_none() {
                    failure = Some(e);
                }
            }
        }
    }
    // Upstream: every metric failing, or one failing while the others would scale down, is
    // no decision (a scale-down on partial data could be wrong).
    let blocked = match (&proposal, &failure) {
        (None, Some(f)) => Some(f.clone()),
        (Some((n, _)), Some(f)) if *n < current => Some(f.clone()),
        _ => None,
    };
    if let Some((reason, message)) = blocked {
        conditions.push(cond(
            "ScalingActive",
            false,
            &reason,
            &format!("the HPA was unable to compute the replica count: {message}"),
        ));
        return Plan { desired: current, current_metrics: metrics, conditions, reason: String::new() };
    }
    let (mut desired, metric_name) = proposal.unwrap_or((current, String::new()));
    conditions.push(cond(
        "ScalingActive",
        true,
        "ValidMetricFound",
        &format!("the HPA was able to successfully calculate a replica count from {metric_name}"),
    ));
    let mut reason = if desired > current {
        format!("{metric_name} above target")
    } else {
        "All metrics below target".to_string()
    };

    // Stabilization: the window's lowest recommendation bounds a scale-up, its highest a
    // scale-down.
    let (up, down) = (rules(spec, true), rules(spec, false));
    let up_window = u64::try_from(up.stabilization_window_seconds.unwrap_or(0)).unwrap_or(0);
    let down_window =
        u64::try_from(down.stabilization_window_seconds.unwrap_or(DOWNSCALE_STABILIZATION_SECS))
            .unwrap_or(300);
    let prenormalized = desired;
    let (mut up_rec, mut down_rec) = (desired, desired);
    for (t, r) in &history.recommendations {
        if *t + up_window > now {
            up_rec = up_rec.min(*r);
        }
        if *t + down_window > now {
            down_rec = down_rec.max(*r);
        }
    }
    let keep = up_window.max(down_window);
    history.recommendations.retain(|(t, _)| *t + keep > now);
    history.recommendations.push((now, prenormalized));
    let mut stabilized = current.max(up_rec).min(down_rec);
    if stabilized != desired && stabilized == down_rec && desired < current {
        conditions.push(cond(
            "AbleToScale",
            true,
            "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation",
        ));
        conditions.remove(0);
    }
    // Rates, then min/max.
    let mut limited: Option<(&str, String)> = None;
    if stabilized > current {
        let limit = rate_limit(&up, current, &history.scale_ups, now, true);
        if stabilized > limit {
            stabilized = limit;
            limited = Some((
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate".into(),
            ));
        }
    } else if stabilized < current {
        let limit = rate_limit(&down, current, &history.scale_downs, now, false);
        if stabilized < limit {
            stabilized = limit;
            limited = Some((
                "ScaleDownLimit",
                "the desired replica count is decreasing faster than the maximum scale rate".into(),
            ));
        }
    }
    if stabilized > max {
        stabilized = max;
        limited = Some((
            "TooManyReplicas",
            "the desired replica count is more than the maximum replica count".into(),
        ));
    } else if stabilized < min {
        stabilized = min;
        limited = Some((
            "TooFewReplicas",
            "the desired replica count is less than the minimum replica count".into(),
        ));
    }
    if current > max {
        reason = "Current number of replicas above Spec.MaxReplicas".into();
    } else if current < min {
        reason = "Current number of replicas below Spec.MinReplicas".into();
    }
    desired = stabilized;
    conditions.push(match limited {
        Some((r, m)) => cond("ScalingLimited", true, r, &m),
        None => cond(
            "ScalingLimited",
            false,
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
        ),
    });
    if desired > current {
        history.scale_ups.retain(|(t, _)| *t + 1800 > now);
        history.scale_ups.push((now, desired - current));
    } else if desired < current {
        history.scale_downs.retain(|(t, _)| *t + 1800 > now);
        history.scale_downs.push((now, current - desired));
    }
    Plan { desired, current_metrics: metrics, conditions, reason }
}

/// The agents' latest usage by pod, refreshed by the API server (which holds the node
/// tunnels) once per sync and read by this controller: no round trip to every node per HPA,
/// and one index for all of them.
pub type UsageCache = std::sync::Arc<std::sync::Mutex<std::sync::Arc<UsageIndex>>>;

/// One pod's usage: when sampled (seconds since the epoch), over how long, per container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodUsage {
    pub at: u64,
    pub window: u64,
    pub containers: Vec<tug_api::tunnel::ContainerUsage>,
}

/// Usage by (namespace, pod name), and the proxies' connection counts for weighted
/// Service ports by (namespace, Service), summed over the nodes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageIndex {
    pub pods: std::collections::HashMap<(String, String), PodUsage>,
    pub connections: std::collections::HashMap<(String, String), Vec<tug_api::tunnel::ConnectionCounts>>,
}

impl UsageIndex {
    /// The index of the nodes' summaries.
    pub fn of(summaries: &[(String, tug_api::tunnel::Summary)]) -> UsageIndex {
        let mut pods = std::collections::HashMap::new();
        let mut connections: std::collections::HashMap<_, Vec<tug_api::tunnel::ConnectionCounts>> =
            std::collections::HashMap::new();
        for (_, s) in summaries {
            for c in &s.connections {
                let sets = connections.entry((c.namespace.clone(), c.service.clone())).or_default();
                match sets.iter_mut().find(|x| x.port == c.port && x.set == c.set) {
                    Some(x) => {
                        x.accepted += c.accepted;
                        x.refused += c.refused;
                        x.reset += c.reset;
                    }
                    None => sets.push(c.clone()),
                }
            }
            let at = super::parse_time(&s.timestamp).unwrap_or(0);
            for p in &s.pods {
                pods.insert(
                    (p.namespace.clone(), p.name.clone()),
                    PodUsage { at, window: s.window_seconds, containers: p.containers.clone() },
                );
            }
        }
        UsageIndex { pods, connections }
    }
}

const PREFIX: &str = "autoscaling/horizontalpodautoscalers/";

/// The reconciler: every HPA once per sync period.
pub struct Autoscalers {
    pub usage: UsageCache,
    /// Pods, Object and External metrics (none built in).
    pub adapter: Option<std::sync::Arc<dyn MetricsAdapter>>,
    pub sync_period: std::time::Duration,
    histories: std::sync::Mutex<std::collections::HashMap<String, History>>,
}

impl Autoscalers {
    pub fn new(usage: UsageCache, sync_period: std::time::Duration) -> Autoscalers {
        Autoscalers { usage, adapter: None, sync_period, histories: Default::default() }
    }

    /// The target's pods as the planner sees them, with their latest usage.
    fn samples(&self, pods: &[tug_api::kinds::pod::Pod]) -> Vec<PodSample> {
        let usage = std::sync::Arc::clone(&self.usage.lock().unwrap_or_else(|e| e.into_inner()));
        let secs = |t: Option<&str>| t.and_then(super::parse_time);
        pods.iter()
            .map(|p| {
                let ns = p.metadata.namespace.as_deref().unwrap_or("default");
                let st = p.status.clone().unwrap_or_default();
                let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
                let sampled = usage.pods.get(&(ns.to_string(), p.metadata.name.clone()));
                let containers = p
                    .spec
                    .containers
                    .iter()
                    .map(|c| {
                        let used = sampled.and_then(|u| u.containers.iter().find(|x| x.name == c.name));
                        let req = |r: &str| c.resources.as_ref().and_then(|res| res.requests.get(r));
                        ContainerSample {
                            name: c.name.clone(),
                            cpu: used.map(|u| u.usage.cpu_nanocores / 1_000_000),
                            memory: used.map(|u| u.usage.memory_working_set_bytes),
                            cpu_request: req("cpu").map(|q| amount(q, true)),
                            memory_request: req("memory").map(|q| amount(q, false)),
                        }
                    })
                    .collect();
                PodSample {
                    name: p.metadata.name.clone(),
                    phase: st.phase.clone().unwrap_or_else(|| "Pending".into()),
                    deleting: p.metadata.deletion_timestamp.is_some(),
                    ready: ready.is_some_and(|c| c.status == "True"),
                    ready_changed: secs(ready.and_then(|c| c.last_transition_time.as_deref())),
                    started: secs(st.start_time.as_deref()),
                    sampled_at: sampled.map(|u| u.at),
                    window: sampled.map_or(0, |u| u.window),
                    containers,
                }
            })
            .collect()
    }
}

impl super::runtime::Controller for Autoscalers {
    fn name(&self) -> &'static str {
        "horizontal-pod-autoscaler"
    }

    fn primary(&self) -> &'static str {
        PREFIX
    }

    fn reconcile(
        &self,
        store: &dyn crate::store::Store,
        key: &str,
    ) -> Result<super::runtime::Next, crate::store::StoreError> {
        use super::runtime::Next;
        use tug_api::kinds::batch::HorizontalPodAutoscaler;
        let Some(stored) = store.get(key)? else {
            self.histories.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
            return Ok(Next::Done);
        };
        let hpa: HorizontalPodAutoscaler = super::decode(&stored)?;
        let ns = hpa.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let now = super::unix_now();
        let stamp = super::timestamp(now);
        let again = Next::After(self.sync_period);
        let r = &hpa.spec.scale_target_ref;
        let mut status = hpa.status.clone().unwrap_or_default();
        let write_status = |store: &dyn crate::store::Store, status: &tug_api::kinds::batch::HpaStatus| {
            if hpa.status.as_ref() == Some(status) {
                return Ok(());
            }
            let mut v = stored.object.clone();
            v["status"] = serde_json::to_value(status).unwrap_or_default();
            match store.update(key, v, Some(stored.revision)) {
                Ok(_)
                | Err(crate::store::StoreError::Conflict { .. } | crate::store::StoreError::NotFound(_)) => {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        let fail = |status: &mut tug_api::kinds::batch::HpaStatus, reason: &str, message: String| {
            super::set_condition(
                &mut status.conditions,
                super::condition("AbleToScale", "False", reason, &message),
                &stamp,
            );
            for c in &mut status.conditions {
                c.last_update_time = None;
            }
        };
        let target = tug_api::object::KINDS
            .iter()
            .find(|k| k.kind == r.kind && ["Deployment", "ReplicaSet", "StatefulSet"].contains(&k.kind));
        let Some(info) = target else {
            fail(
                &mut status,
                "FailedGetScale",
                format!(
                    "the HPA controller was unable to get the target's current scale: no scale subresource for kind {:?}",
                    r.kind
                ),
            );
            write_status(store, &status)?;
            return Ok(again);
        };
        let target_key = crate::api::path::key(info, Some(&ns), &r.name);
        let Some(target) = store.get(&target_key)? else {
            fail(
                &mut status,
                "FailedGetScale",
                format!(
                    "the HPA controller was unable to get the target's current scale: {}.{} {:?} not found",
                    info.plural, info.group, r.name
                ),
            );
            write_status(store, &status)?;
            return Ok(again);
        };
        let current = i32::try_from(target.object["spec"]["replicas"].as_i64().unwrap_or(1)).unwrap_or(0);
        let Some(items) = super::workload_pods(store, &ns, &target.object)? else {
            fail(&mut status, "InvalidSelector", "the target's selector does not parse".into());
            write_status(store, &status)?;
            return Ok(again);
        };
        let pods: Vec<tug_api::kinds::pod::Pod> =
            items.iter().filter_map(|s| super::decode::<tug_api::kinds::pod::Pod>(s).ok()).collect();
        let samples = self.samples(&pods);
        let plan = {
            let mut histories = self.histories.lock().unwrap_or_else(|e| e.into_inner());
            let history = histories.entry(key.to_string()).or_default();
            let adapter = self.adapter.clone();
            let custom = |m: &MetricSpec| match &adapter {
                Some(a) => a.value(&ns, m, &samples),
                None => no_adapter(m),
            };
            plan_with(&hpa.spec, current, &samples, now, history, &custom)
        };
        let mut conditions = plan.conditions.clone();
        if plan.desired != current {
            let mut t = target.object.clone();
            t["spec"]["replicas"] = plan.desired.into();
            match store.update(&target_key, t, Some(target.revision)) {
                Ok(_) => {
                    status.last_scale_time = Some(stamp.clone());
                    let message = format!("New size: {}; reason: {}", plan.desired, plan.reason);
                    super::event(
                        store,
                        ("HorizontalPodAutoscaler", "autoscaling/v2", &hpa.metadata),
                        "Normal",
                        "SuccessfulRescale",
                        &message,
                        "horizontal-pod-autoscaler",
                    )?;
                    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == "AbleToScale") {
                        *c = cond(
                            "AbleToScale",
                            true,
                            "SucceededRescale",
                            &format!(
                                "the HPA controller was able to update the target scale to {}",
                                plan.desired
                            ),
                        );
                    }
                }
                Err(crate::store::StoreError::Conflict { .. }) => {
                    return Ok(Next::After(std::time::Duration::from_secs(1)));
                }
                Err(e) => return Err(e),
            }
        } else if let Some(c) = conditions
            .iter_mut()
            .find(|c| c.type_ == "AbleToScale" && c.reason.as_deref() == Some("SucceededGetScale"))
        {
            *c = cond("AbleToScale", true, "ReadyForNewScale", "recommended size matches current size");
        }
        status.current_replicas = Some(
            i32::try_from(target.object["status"]["replicas"].as_i64().unwrap_or(i64::from(current)))
                .unwrap_or(0),
        );
        status.desired_replicas = Some(plan.desired);
        status.current_metrics = plan.current_metrics;
        status.observed_generation = hpa.metadata.generation;
        for c in conditions {
            super::set_condition(&mut status.conditions, c, &stamp);
        }
        // The conditions' own update times would make every sync a write.
        for c in &mut status.conditions {
            c.last_update_time = None;
        }
        write_status(store, &status)?;
        Ok(again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_api::kinds::batch::ResourceMetricSource;

    fn cpu_hpa(target: i32, min: i32, max: i32) -> HpaSpec {
        HpaSpec {
            min_replicas: Some(min),
            max_replicas: max,
            metrics: vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(target),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// A ready pod started long ago, sampled now, using `cpu` millicores of `request`.
    fn pod(name: &str, cpu: u64, request: u64) -> PodSample {
        PodSample {
            name: name.into(),
            phase: "Running".into(),
            ready: true,
            ready_changed: Some(1_000),
            started: Some(1_000),
            sampled_at: Some(10_000),
            window: 10,
            containers: vec![ContainerSample {
                name: "c".into(),
                cpu: Some(cpu),
                cpu_request: Some(request),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_documented_example_and_the_tolerance() {
        // Kubernetes' docs: current 200m against a 100m target doubles the replicas;
        // 50m halves them (after the window).
        let hpa = cpu_hpa(50, 1, 10);
        let mut h = History::default();
        let p = plan(&hpa, 2, &[pod("a", 200, 200), pod("b", 200, 200)], 10_000, &mut h);
        assert_eq!(p.desired, 4, "100% of request against a 50% target: twice the pods");
        assert_eq!(p.reason, "cpu resource utilization (percentage of request) above target");
        assert_eq!(p.current_metrics[0]["resource"]["current"]["averageUtilization"], 100);
        // Within 10% of the target: no change.
        let mut h = History::default();
        assert_eq!(plan(&hpa, 2, &[pod("a", 108, 200), pod("b", 100, 200)], 10_000, &mut h).desired, 2);
        // Down: 25% of request → half, but only after the 300 s window.
        let mut h = History::default();
        h.recommendations.push((9_900, 2));
        let p = plan(&hpa, 2, &[pod("a", 50, 200), pod("b", 50, 200)], 10_000, &mut h);
        assert_eq!(p.desired, 2, "held by the window");
        assert!(p.conditions.iter().any(|c| c.reason.as_deref() == Some("ScaleDownStabilized")));
        let p = plan(&hpa, 2, &[pod("a", 50, 200), pod("b", 50, 200)], 10_301, &mut h);
        assert_eq!(p.desired, 1);
    }

    #[test]
    fn rates_limits_and_missing_or_unready_pods() {
        let hpa = cpu_hpa(50, 1, 100);
        // 10 pods at 1000%: wants 200, capped at max 100, and by the default rate (double, or
        // +4) at 20.
        let pods: Vec<PodSample> = (0..10).map(|i| pod(&format!("p{i}"), 1000, 100)).collect();
        let mut h = History::default();
        let p = plan(&hpa, 10, &pods, 10_000, &mut h);
        assert_eq!(p.desired, 20);
        assert!(p.conditions.iter().any(|c| c.reason.as_deref() == Some("ScaleUpLimit")));
        // The same period has already added 10: no more now.
        assert_eq!(plan(&hpa, 20, &pods, 10_005, &mut h).desired, 20);
        // max.
        let small = cpu_hpa(50, 1, 3);
        let mut h = History::default();
        let p = plan(&small, 2, &[pod("a", 1000, 100), pod("b", 1000, 100)], 10_000, &mut h);
        assert_eq!(p.desired, 3);
        assert!(p.conditions.iter().any(|c| c.reason.as_deref() == Some("TooManyReplicas")));
        // A pod without a sample damps a scale-up: it counts as using nothing.
        let mut missing = pod("m", 0, 100);
        missing.sampled_at = None;
        for c in &mut missing.containers {
            c.cpu = None;
        }
        let mut h = History::default();
        // Ready pods at 80% against 50%: 1.6 × 2 → 4; with the missing one at 0: 160/3 = 53% →
        // within tolerance of 50%: no change.
        assert_eq!(
            plan(&hpa, 3, &[pod("a", 80, 100), pod("b", 80, 100), missing.clone()], 10_000, &mut h).desired,
            3
        );
        // A pod that is not ready counts as using nothing in a scale-up: 400m over three 100m
        // requests is 133% → 2.67 × 3 = 8, then the rate's +4 from 3 gives 7.
        let mut unready = pod("u", 0, 100);
        unready.ready = false;
        unready.started = Some(9_990);
        let mut h = History::default();
        assert_eq!(
            plan(&hpa, 3, &[pod("a", 200, 100), pod("b", 200, 100), unready.clone()], 10_000, &mut h).desired,
            7
        );
        // A small excess that only the ready pods show is no reason to scale up: 60% with the
        // unready one at 0 is 40% — the direction would flip, so nothing changes.
        let mut h = History::default();
        assert_eq!(
            plan(&hpa, 3, &[pod("a", 60, 100), pod("b", 60, 100), unready], 10_000, &mut h).desired,
            3
        );
        // A request missing: no scaling, the condition says why.
        let mut h = History::default();
        let p = plan(&hpa, 2, &[pod("a", 100, 0)], 10_000, &mut h);
        assert_eq!(p.desired, 2);
        let active = p.conditions.iter().find(|c| c.type_ == "ScalingActive").unwrap();
        assert_eq!(active.reason.as_deref(), Some("FailedGetResourceMetric"));
        assert!(active.message.as_deref().unwrap().contains("missing request for cpu in pod a"));
    }

    #[test]
    fn pods_object_and_external_metrics_through_an_adapter() {
        let metric = |t: &str, target: serde_json::Value| MetricSpec {
            type_: t.into(),
            pods: (t == "Pods")
                .then(|| serde_json::json!({"metric": {"name": "rps"}, "target": target.clone()})),
            external: (t == "External")
                .then(|| serde_json::json!({"metric": {"name": "queue"}, "target": target.clone()})),
            ..Default::default()
        };
        let spec = |m: MetricSpec| HpaSpec {
            min_replicas: Some(1),
            max_replicas: 20,
            metrics: vec![m],
            ..Default::default()
        };
        let pods = [pod("a", 10, 100), pod("b", 10, 100)];
        // Pods: 30 and 50 per pod against an average of 10 → 4 × 2 = 8.
        let per_pod = |_: &MetricSpec| Ok(CustomValue::PerPod(vec![("a".into(), 30.0), ("b".into(), 50.0)]));
        let p = plan_with(
            &spec(metric("Pods", serde_json::json!({"type": "AverageValue", "averageValue": "10"}))),
            2,
            &pods,
            10_000,
            &mut History::default(),
            &per_pod,
        );
        assert_eq!(p.desired, 6, "8 wanted, the default rate allows +4");
        // External: a queue of 100 at 20 per pod → 5.
        let total = |_: &MetricSpec| Ok(CustomValue::Total(100.0));
        let p = plan_with(
            &spec(metric("External", serde_json::json!({"type": "AverageValue", "averageValue": "20"}))),
            2,
            &pods,
            10_000,
            &mut History::default(),
            &total,
        );
        assert_eq!(p.desired, 5);
        // Without an adapter: the condition says so and nothing moves.
        let p = plan(
            &spec(metric("External", serde_json::json!({"type": "AverageValue", "averageValue": "20"}))),
            2,
            &pods,
            10_000,
            &mut History::default(),
        );
        assert_eq!(p.desired, 2);
        let c = p.conditions.iter().find(|c| c.type_ == "ScalingActive").unwrap();
        assert_eq!(c.reason.as_deref(), Some("FailedGetExternalMetric"));
    }

    #[test]
    fn the_documented_scale_down_policies() {
        // Kubernetes' docs: scaleDown policies of 4 pods and 10% per 60 s, the larger change
        // chosen: from 80 replicas the first step removes 8 (10%), then nothing more until
        // the minute has passed, then 10% of 72 rounded as upstream rounds (ceil of what
        // stays: 65).
        let mut hpa = cpu_hpa(50, 1, 100);
        hpa.behavior = Some(tug_api::kinds::batch::HpaBehavior {
            scale_up: None,
            scale_down: Some(ScalingRules {
                stabilization_window_seconds: Some(0),
                policies: vec![
                    ScalingPolicy { type_: "Pods".into(), value: 4, period_seconds: 60 },
                    ScalingPolicy { type_: "Percent".into(), value: 10, period_seconds: 60 },
                ],
                ..Default::default()
            }),
        });
        let idle: Vec<PodSample> = (0..80).map(|i| pod(&format!("p{i}"), 1, 100)).collect();
        let mut h = History::default();
        assert_eq!(plan(&hpa, 80, &idle, 10_000, &mut h).desired, 72);
        assert_eq!(plan(&hpa, 72, &idle[..72], 10_030, &mut h).desired, 72, "the minute is not over");
        assert_eq!(plan(&hpa, 72, &idle[..72], 10_061, &mut h).desired, 65);
    }

    #[test]
    fn behavior_policies_and_windows() {
        let mut hpa = cpu_hpa(50, 1, 100);
        hpa.behavior = Some(tug_api::kinds::batch::HpaBehavior {
            scale_up: Some(ScalingRules {
                policies: vec![ScalingPolicy { type_: "Pods".into(), value: 1, period_seconds: 60 }],
                ..Default::default()
            }),
            scale_down: Some(ScalingRules { stabilization_window_seconds: Some(0), ..Default::default() }),
        });
        let mut h = History::default();
        assert_eq!(
            plan(&hpa, 2, &[pod("a", 1000, 100), pod("b", 1000, 100)], 10_000, &mut h).desired,
            3,
            "one pod per minute"
        );
        assert_eq!(plan(&hpa, 3, &[pod("a", 1000, 100), pod("b", 1000, 100)], 10_030, &mut h).desired, 3);
        // A 0 s down window: straight down (100% per 15 s allows it).
        let mut h = History::default();
        assert_eq!(
            plan(
                &hpa,
                4,
                &[pod("a", 10, 100), pod("b", 10, 100), pod("c", 10, 100), pod("d", 10, 100)],
                10_000,
                &mut h
            )
            .desired,
            1
        );
        // Disabled: never down.
        hpa.behavior.as_mut().unwrap().scale_down.as_mut().unwrap().select_policy = Some("Disabled".into());
        let mut h = History::default();
        assert_eq!(
            plan(
                &hpa,
                4,
                &[pod("a", 10, 100), pod("b", 10, 100), pod("c", 10, 100), pod("d", 10, 100)],
                10_000,
                &mut h
            )
            .desired,
            4
        );
    }
}
