//! Validation of the `argoproj.io` kinds, with Argo Rollouts' rules and field paths.

use crate::kinds::rollouts::{AnalysisTemplateSpec, Metric, Rollout, RolloutAnalysis};
use crate::meta::IntOrString;
use crate::validation::Errors;
use std::time::Duration;

/// A Go duration (`300ms`, `30s`, `5m`, `1h30m`, `1.5h`).
pub fn go_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("missing unit in duration {s:?}")),
            other => return Err(format!("unknown unit {other:?} in duration {s:?}")),
        };
        total += value * scale;
        rest = &rest[u..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// A pause's duration: seconds as a number, or a Go duration.
pub fn pause_duration(d: &IntOrString) -> Result<Duration, String> {
    match d {
        IntOrString::Int(n) if *n >= 0 => Ok(Duration::from_secs(n.unsigned_abs())),
        IntOrString::Int(n) => Err(format!("{n}: must be non-negative")),
        IntOrString::String(s) => match s.parse::<u64>() {
            Ok(n) => Ok(Duration::from_secs(n)),
            Err(_) => go_duration(s),
        },
    }
}

/// A count or limit: a number, or a string of one (after argument substitution).
pub fn int_value(v: &IntOrString) -> Option<i64> {
    match v {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(s) => s.trim().parse().ok(),
    }
}

fn analysis(a: &RolloutAnalysis, at: &str, e: &mut Errors) {
    if a.templates.is_empty() {
        e.add(format!("{at}.templates"), "Required value: must have at least one template");
    }
    for (i, t) in a.templates.iter().enumerate() {
        if t.template_name.is_empty() {
            e.add(format!("{at}.templates[{i}].templateName"), "Required value");
        }
    }
    for (i, arg) in a.args.iter().enumerate() {
        if arg.name.is_empty() {
            e.add(format!("{at}.args[{i}].name"), "Required value");
        }
        if let Some(h) = arg
            .value_from
            .as_ref()
            .and_then(|v| v.pod_template_hash_value.as_deref())
            .filter(|h| !["Stable", "Latest"].contains(h))
        {
            e.add(
                format!("{at}.args[{i}].valueFrom.podTemplateHashValue"),
                format!("Unsupported value: {h:?}: supported values: \"Latest\", \"Stable\""),
            );
        }
    }
}

fn non_negative(v: Option<i32>, at: &str, e: &mut Errors) {
    if let Some(n) = v.filter(|n| *n < 0) {
        e.add(at, format!("Invalid value: {n}: must be greater than or equal to 0"));
    }
}

pub(crate) fn rollout(r: &Rollout, e: &mut Errors) {
    let s = &r.spec;
    crate::validate::replicas(s.replicas, "spec.replicas", e);
    crate::validate::template(&s.selector, &s.template.metadata, &s.template.spec, e);
    crate::validate::non_negative(s.min_ready_seconds.map(i64::from), "spec.minReadySeconds", e);
    crate::validate::non_negative(s.revision_history_limit.map(i64::from), "spec.revisionHistoryLimit", e);
    if let (Some(p), Some(m)) = (s.progress_deadline_seconds, s.min_ready_seconds) {
        if p <= m {
            e.add(
                "spec.progressDeadlineSeconds",
                format!("Invalid value: {p}: must be greater than minReadySeconds"),
            );
        }
    }
    match (&s.strategy.canary, &s.strategy.blue_green) {
        (None, None) => e.add(
            "spec.strategy",
            "Required value: Rollout has missing field '.spec.strategy.canary or .spec.strategy.blueGreen'",
        ),
        (Some(_), Some(_)) => e.add("spec.strategy", "Invalid value: Multiple Strategies can not be listed"),
        (Some(c), None) => {
            let at = "spec.strategy.canary";
            crate::validate::rolling_update(
                at,
                (c.max_surge.as_ref(), c.max_unavailable.as_ref()),
                (1, 1),
                e,
            );
            if let (Some(a), Some(b)) = (&c.canary_service, &c.stable_service) {
                if a == b {
                    e.add(
                        format!("{at}.stableService"),
                        format!("Invalid value: {b:?}: This rollout uses the same service for the stable and canary services, but two different services are required."),
                    );
                }
            }
            for (i, step) in c.steps.iter().enumerate() {
                let at = format!("{at}.steps[{i}]");
                let set = [
                    step.set_weight.is_some(),
                    step.pause.is_some(),
                    step.set_canary_scale.is_some(),
                    step.analysis.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if set != 1 {
                    e.add(
                        &at,
                        "Invalid value: Step must have one of the following set: setWeight, setCanaryScale, pause or analysis",
                    );
                }
                if let Some(w) = step.set_weight.filter(|w| !(0..=100).contains(w)) {
                    e.add(
                        format!("{at}.setWeight"),
                        format!("Invalid value: {w}: must be between 0 and 100"),
                    );
                }
                if let Some(Err(m)) =
                    step.pause.as_ref().and_then(|p| p.duration.as_ref()).map(pause_duration)
                {
                    e.add(format!("{at}.pause.duration"), format!("Invalid value: {m}"));
                }
                if let Some(sc) = &step.set_canary_scale {
                    let n =
                        [sc.replicas.is_some(), sc.weight.is_some(), sc.match_traffic_weight == Some(true)]
                            .iter()
                            .filter(|b| **b)
                            .count();
                    if n != 1 {
                        e.add(
                            format!("{at}.setCanaryScale"),
                            "Invalid value: SetCanaryScale must have one of the following set: replicas, weight or matchTrafficWeight",
                        );
                    }
                    non_negative(sc.replicas, &format!("{at}.setCanaryScale.replicas"), e);
                    if let Some(w) = sc.weight.filter(|w| !(0..=100).contains(w)) {
                        e.add(
                            format!("{at}.setCanaryScale.weight"),
                            format!("Invalid value: {w}: must be between 0 and 100"),
                        );
                    }
                }
                if let Some(a) = &step.analysis {
                    analysis(a, &format!("{at}.analysis"), e);
                }
            }
            if let Some(b) = &c.analysis {
                let a = RolloutAnalysis { templates: b.templates.clone(), args: b.args.clone() };
                analysis(&a, &format!("{at}.analysis"), e);
                if let Some(n) = b.starting_step.filter(|n| *n < 0 || *n as usize > c.steps.len()) {
                    e.add(
                        format!("{at}.analysis.startingStep"),
                        format!("Invalid value: {n}: must be between 0 and the number of steps"),
                    );
                }
            }
            non_negative(c.scale_down_delay_seconds, &format!("{at}.scaleDownDelaySeconds"), e);
            non_negative(c.abort_scale_down_delay_seconds, &format!("{at}.abortScaleDownDelaySeconds"), e);
        }
        (None, Some(b)) => {
            let at = "spec.strategy.blueGreen";
            if b.active_service.is_empty() {
                e.add(format!("{at}.activeService"), "Required value");
            }
            if b.preview_service.as_deref() == Some(b.active_service.as_str()) {
                e.add(
                    format!("{at}.previewService"),
                    format!("Invalid value: {:?}: must not be the same as activeService", b.active_service),
                );
            }
            non_negative(b.auto_promotion_seconds, &format!("{at}.autoPromotionSeconds"), e);
            non_negative(b.scale_down_delay_seconds, &format!("{at}.scaleDownDelaySeconds"), e);
            non_negative(b.preview_replica_count, &format!("{at}.previewReplicaCount"), e);
            non_negative(b.abort_scale_down_delay_seconds, &format!("{at}.abortScaleDownDelaySeconds"), e);
            if b.auto_promotion_enabled == Some(false) && b.auto_promotion_seconds.is_some() {
                e.add(
                    format!("{at}.autoPromotionSeconds"),
                    "Invalid value: autoPromotionSeconds cannot be used when autoPromotionEnabled is false",
                );
            }
            if let Some(a) = &b.pre_promotion_analysis {
                analysis(a, &format!("{at}.prePromotionAnalysis"), e);
            }
            if let Some(a) = &b.post_promotion_analysis {
                analysis(a, &format!("{at}.postPromotionAnalysis"), e);
            }
        }
    }
}

pub(crate) fn template(s: &AnalysisTemplateSpec, e: &mut Errors) {
    metrics(&s.metrics, "spec.metrics", e);
    let mut seen = std::collections::BTreeSet::new();
    for (i, a) in s.args.iter().enumerate() {
        if a.name.is_empty() {
            e.add(format!("spec.args[{i}].name"), "Required value");
        } else if !seen.insert(a.name.as_str()) {
            e.add(format!("spec.args[{i}].name"), format!("Duplicate value: {:?}", a.name));
        }
    }
}

/// Text with `{{args.NAME}}` still in it cannot be checked until the run substitutes it.
fn templated(s: &str) -> bool {
    s.contains("{{")
}

pub(crate) fn metrics(ms: &[Metric], at: &str, e: &mut Errors) {
    if ms.is_empty() {
        e.add(at, "Required value: at least one metric is required");
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, m) in ms.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if m.name.is_empty() {
            e.add(format!("{at}.name"), "Required value");
        } else if !seen.insert(m.name.as_str()) {
            e.add(format!("{at}.name"), format!("Duplicate value: {:?}", m.name));
        }
        for (field, v) in [("interval", &m.interval), ("initialDelay", &m.initial_delay)] {
            if let Some(Err(msg)) = v.as_deref().filter(|s| !templated(s)).map(go_duration) {
                e.add(format!("{at}.{field}"), format!("Invalid value: {msg}"));
            }
        }
        for (field, v) in [
            ("count", &m.count),
            ("failureLimit", &m.failure_limit),
            ("inconclusiveLimit", &m.inconclusive_limit),
            ("consecutiveErrorLimit", &m.consecutive_error_limit),
        ] {
            if let Some(v) = v {
                let bad = match v {
                    IntOrString::String(s) => !templated(s) && int_value(v).is_none_or(|n| n < 0),
                    IntOrString::Int(n) => *n < 0,
                };
                if bad {
                    e.add(format!("{at}.{field}"), "Invalid value: must be a non-negative integer");
                }
            }
        }
        for (field, v) in
            [("successCondition", &m.success_condition), ("failureCondition", &m.failure_condition)]
        {
            if let Some(Err(msg)) = v.as_deref().filter(|s| !templated(s)).map(crate::expr::parse) {
                e.add(
                    format!("{at}.{field}"),
                    format!("Invalid value: {:?}: {msg}", v.as_deref().unwrap_or_default()),
                );
            }
        }
        let p = &m.provider;
        let n = [p.web.is_some(), p.job.is_some(), p.pods.is_some()].iter().filter(|b| **b).count();
        if n != 1 {
            e.add(
                format!("{at}.provider"),
                "Invalid value: exactly one provider is required: web, job or pods",
            );
        }
        if let Some(w) = &p.web {
            if w.url.is_empty() {
                e.add(format!("{at}.provider.web.url"), "Required value");
            }
            if let Some(m) = w.method.as_deref().filter(|m| !["GET", "POST", "PUT"].contains(m)) {
                e.add(
                    format!("{at}.provider.web.method"),
                    format!("Unsupported value: {m:?}: supported values: \"GET\", \"POST\", \"PUT\""),
                );
            }
        }
        if let Some(j) = &p.job {
            if j.spec.template.spec.containers.is_empty() {
                e.add(format!("{at}.provider.job.spec.template.spec.containers"), "Required value");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(go_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(go_duration("10").unwrap_err().contains("missing unit"));
        assert!(go_duration("3d").unwrap_err().contains("unknown unit"));
        assert_eq!(pause_duration(&IntOrString::Int(20)), Ok(Duration::from_secs(20)));
        assert_eq!(pause_duration(&IntOrString::String("1m".into())), Ok(Duration::from_secs(60)));
    }
}
