//! VerticalPodAutoscalers, built in (Kubernetes needs the VPA add-on): a recommender after the
//! VPA's — every sample of each container's usage goes into a decaying histogram (24 h
//! half-life; exponential buckets 5% apart), the target is its 90th percentile (memory: of the
//! peaks), the lower and upper bounds the 50th and 95th, each with a 15% margin and the VPA's
//! floors (25m CPU, 250Mi memory), then capped by the container's `minAllowed`/`maxAllowed`
//! — and, in `InPlaceOrRecreate` mode, the pods resized in place (requests to the target, limits
//! kept in proportion) when their requests fall outside the bounds. A VPA and an HPA scaling
//! the same workload on the same resource would fight: the VPA refuses with the
//! `ConfigUnsupported` condition and changes nothing. [`Histogram`] and [`recommend`] are pure.

#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss, clippy::cast_sign_loss)]

use std::collections::{BTreeMap, HashMap};
use tug_api::quantity::Quantity;

/// The histograms' half-life.
pub const HALF_LIFE_SECS: f64 = 24.0 * 3600.0;
/// The VPA's margin over the percentile.
pub const SAFETY_MARGIN: f64 = 1.15;
/// The VPA's floors per container.
pub const MIN_CPU_MILLIS: f64 = 25.0;
pub const MIN_MEMORY_BYTES: f64 = 250.0 * 1024.0 * 1024.0;

/// A histogram whose samples' weights halve every [`HALF_LIFE_SECS`]; buckets grow by 5%.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    first: f64,
    weights: Vec<f64>,
    /// The time weights are relative to (seconds since the epoch).
    reference: f64,
}

impl Histogram {
    /// CPU in millicores (first bucket 10m), memory in bytes (first bucket 10 MB).
    pub fn new(cpu: bool) -> Histogram {
        Histogram { first: if cpu { 10.0 } else { 1e7 }, weights: Vec::new(), reference: 0.0 }
    }

    fn bucket(&self, v: f64) -> usize {
        if v < self.first {
            return 0;
        }
        ((v / self.first).ln() / 1.05f64.ln()).floor() as usize + 1
    }

    fn start_of(&self, b: usize) -> f64 {
        if b == 0 { 0.0 } else { self.first * 1.05f64.powi(b as i32 - 1) }
    }

    pub fn add(&mut self, value: f64, at: u64) {
        if self.weights.is_empty() && self.reference == 0.0 {
            self.reference = at as f64;
        }
        let w = 2f64.powf((at as f64 - self.reference) / HALF_LIFE_SECS);
        let b = self.bucket(value).min(2000);
        if self.weights.len() <= b {
            self.weights.resize(b + 1, 0.0);
        }
        self.weights[b] += w;
    }

    /// Takes back a sample added earlier (a window's peak replaced by a higher one).
    pub fn subtract(&mut self, value: f64, at: u64) {
        let w = 2f64.powf((at as f64 - self.reference) / HALF_LIFE_SECS);
        let b = self.bucket(value).min(2000);
        if let Some(x) = self.weights.get_mut(b) {
            *x = (*x - w).max(0.0);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.weights.iter().all(|w| *w == 0.0)
    }

    /// The value below which `p` of the weight lies (the end of that bucket).
    pub fn percentile(&self, p: f64) -> f64 {
        let total: f64 = self.weights.iter().sum();
        if total == 0.0 {
            return 0.0;
        }
        let mut seen = 0.0;
        for (b, w) in self.weights.iter().enumerate() {
            seen += w;
            if seen >= p * total {
                return self.start_of(b + 1);
            }
        }
        self.start_of(self.weights.len())
    }
}

/// One container's recommendation: target, lower and upper bounds, uncapped target, in
/// millicores and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Amounts {
    pub cpu: f64,
    pub memory: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Recommended {
    pub target: Amounts,
    pub lower: Amounts,
    pub upper: Amounts,
    pub uncapped: Amounts,
}

/// The recommendation from a container's histograms, capped by `min`/`max` (millicores, bytes).
pub fn recommend(cpu: &Histogram, memory: &Histogram, min: Amounts, max: Option<Amounts>) -> Recommended {
    let at = |p: f64| Amounts {
        cpu: (cpu.percentile(p) * SAFETY_MARGIN).max(MIN_CPU_MILLIS),
        memory: (memory.percentile(p) * SAFETY_MARGIN).max(MIN_MEMORY_BYTES),
    };
    let cap = |a: Amounts| {
        let mut a = Amounts { cpu: a.cpu.max(min.cpu), memory: a.memory.max(min.memory) };
        if let Some(m) = max {
            if m.cpu > 0.0 {
                a.cpu = a.cpu.min(m.cpu);
            }
            if m.memory > 0.0 {
                a.memory = a.memory.min(m.memory);
            }
        }
        a
    };
    let uncapped = at(0.9);
    Recommended { target: cap(uncapped), lower: cap(at(0.5)), upper: cap(at(0.95)), uncapped }
}

fn quantity(v: f64, cpu: bool) -> Quantity {
    let text =
        if cpu { format!("{}m", v.ceil() as u64) } else { ((v / 1024.0).ceil() as u64 * 1024).to_string() };
    Quantity::parse(&text).unwrap_or_else(|_| Quantity::parse("0").expect("zero"))
}

fn amounts_map(a: Amounts, controlled: &[String]) -> BTreeMap<String, Quantity> {
    let mut m = BTreeMap::new();
    if controlled.iter().any(|r| r == "cpu") {
        m.insert("cpu".into(), quantity(a.cpu, true));
    }
    if controlled.iter().any(|r| r == "memory") {
        m.insert("memory".into(), quantity(a.memory, false));
    }
    m
}

/// What the controller remembers: each container's histograms and the last sample it took.
#[derive(Debug, Clone)]
struct Samples {
    cpu: Histogram,
    memory: Histogram,
    last: u64,
    /// OOM kills already counted (`pod/restartCount`).
    ooms: std::collections::HashSet<String>,
    /// Memory counts by its peak per window: the window's start, its peak and when.
    peak: Option<(u64, f64, u64)>,
}

/// The VPA's memory aggregation window: one peak per day goes into the histogram.
pub const MEMORY_WINDOW_SECS: u64 = 24 * 3600;

impl Samples {
    fn new() -> Samples {
        Samples {
            cpu: Histogram::new(true),
            memory: Histogram::new(false),
            last: 0,
            ooms: Default::default(),
            peak: None,
        }
    }

    /// A memory sample: a new window's first, or a higher peak replacing the window's.
    fn memory(&mut self, value: f64, at: u64) {
        match self.peak {
            Some((start, peak, when)) if at < start + MEMORY_WINDOW_SECS => {
                if value > peak {
                    self.memory.subtract(peak, when);
                    self.memory.add(value, at);
                    self.peak = Some((start, value, at));
                }
            }
            _ => {
                self.memory.add(value, at);
                self.peak = Some((at, value, at));
            }
        }
    }
}

/// The VPA's answer to an OOM kill: a memory sample 20% (at least 100 MiB) above the level
/// the container was killed at.
pub fn oom_bump(killed_at: f64) -> f64 {
    (killed_at * 1.2).max(killed_at + 100.0 * 1024.0 * 1024.0)
}

const PREFIX: &str = "autoscaling.k8s.io/verticalpodautoscalers/";

pub struct VerticalAutoscalers {
    pub usage: super::hpa::UsageCache,
    pub interval: std::time::Duration,
    samples: std::sync::Mutex<HashMap<(String, String), Samples>>,
}

impl VerticalAutoscalers {
    pub fn new(usage: super::hpa::UsageCache, interval: std::time::Duration) -> VerticalAutoscalers {
        VerticalAutoscalers { usage, interval, samples: Default::default() }
    }
}

impl super::runtime::Controller for VerticalAutoscalers {
    fn name(&self) -> &'static str {
        "vertical-pod-autoscaler"
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
        use tug_api::kinds::vpa::{ContainerRecommendation, Recommendation, VerticalPodAutoscaler};
        let again = Next::After(self.interval);
        let Some(stored) = store.get(key)? else {
            self.samples.lock().unwrap_or_else(|e| e.into_inner()).retain(|(k, _), _| k != key);
            return Ok(Next::Done);
        };
        let vpa: VerticalPodAutoscaler = super::decode(&stored)?;
        let ns = vpa.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let now = super::unix_now();
        let stamp = super::timestamp(now);
        let r = &vpa.spec.target_ref;
        let mut status = vpa.status.clone().unwrap_or_default();
        let Some(info) = tug_api::object::KINDS.iter().find(|k| k.kind == r.kind && k.namespaced) else {
            return Ok(again);
        };
        let Some(target) = store.get(&crate::api::path::key(info, Some(&ns), &r.name))? else {
            super::set_condition(
                &mut status.conditions,
                super::condition(
                    "RecommendationProvided",
                    "False",
                    "TargetNotFound",
                    &format!("{} {:?} not found", r.kind, r.name),
                ),
                &stamp,
            );
            return write(store, key, &stored, &vpa, status).map(|()| again);
        };
        let Some(items) = super::workload_pods(store, &ns, &target.object)? else { return Ok(again) };
        let pods: Vec<crate::store::Stored> =
            items.into_iter().filter(|s| s.object["metadata"]["deletionTimestamp"].is_null()).collect();
        // Feed the histograms with samples not seen yet.
        let usage = std::sync::Arc::clone(&self.usage.lock().unwrap_or_else(|e| e.into_inner()));
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        for p in &pods {
            let name = p.object["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let Some(u) = usage.pods.get(&(ns.clone(), name)) else { continue };
            for c in &u.containers {
                let s = samples.entry((key.to_string(), c.name.clone())).or_insert_with(Samples::new);
                if u.at > s.last {
                    s.cpu.add(c.usage.cpu_nanocores as f64 / 1e6, u.at);
                    s.memory(c.usage.memory_working_set_bytes as f64, u.at);
                    s.last = u.at;
                }
            }
        }
        // OOM kills: the memory the container was killed at, bumped, counts as a sample.
        for p in &pods {
            let pod_name = p.object["metadata"]["name"].as_str().unwrap_or_default();
            for st in p.object["status"]["containerStatuses"].as_array().into_iter().flatten() {
                if st["lastState"]["terminated"]["reason"] != "OOMKilled" {
                    continue;
                }
                let cname = st["name"].as_str().unwrap_or_default().to_string();
                let spec = p.object["spec"]["containers"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["name"] == cname.as_str()).cloned());
                let limit = spec
                    .as_ref()
                    .and_then(|c| {
                        c["resources"]["limits"]["memory"]
                            .as_str()
                            .or(c["resources"]["requests"]["memory"].as_str())
                    })
                    .and_then(|q| Quantity::parse(q).ok())
                    .map(|q| q.value() as f64);
                let Some(limit) = limit else { continue };
                let s = samples.entry((key.to_string(), cname)).or_insert_with(Samples::new);
                if s.ooms.insert(format!("{pod_name}/{}", st["restartCount"])) {
                    s.memory.add(oom_bump(limit), now);
                }
            }
        }
        // The HPAs of the same workload: a resource both control is refused.
        let (hpas, _) = store.list(&format!("autoscaling/horizontalpodautoscalers/{ns}/"))?;
        let hpa_resources: Vec<String> = hpas
            .iter()
            .filter(|h| {
                h.object["spec"]["scaleTargetRef"]["kind"] == r.kind.as_str()
                    && h.object["spec"]["scaleTargetRef"]["name"] == r.name.as_str()
            })
            .flat_map(|h| {
                h.object["spec"]["metrics"].as_array().cloned().unwrap_or_else(|| {
                    vec![serde_json::json!({"type": "Resource", "resource": {"name": "cpu"}})]
                })
            })
            .filter_map(|m| m["resource"]["name"].as_str().map(str::to_string))
            .collect();
        let policies =
            vpa.spec.resource_policy.as_ref().map(|p| p.container_policies.clone()).unwrap_or_default();
        let containers: Vec<String> = target.object["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        let mut recs = Vec::new();
        let mut conflict = None;
        for c in &containers {
            let policy = policies
                .iter()
                .find(|p| p.container_name == *c)
                .or_else(|| policies.iter().find(|p| p.container_name == "*"));
            if policy.and_then(|p| p.mode.as_deref()) == Some("Off") {
                continue;
            }
            let controlled: Vec<String> = policy
                .map(|p| p.controlled_resources.clone())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| vec!["cpu".into(), "memory".into()]);
            if let Some(res) = controlled.iter().find(|r| hpa_resources.contains(r)) {
                conflict = Some(res.clone());
            }
            let Some(s) = samples.get(&(key.to_string(), c.clone())) else { continue };
            if s.cpu.is_empty() {
                continue;
            }
            let amount = |m: Option<&BTreeMap<String, Quantity>>, res: &str| {
                m.and_then(|m| m.get(res))
                    .map_or(0.0, |q| if res == "cpu" { q.millis() as f64 } else { q.value() as f64 })
            };
            let min = Amounts {
                cpu: amount(policy.map(|p| &p.min_allowed), "cpu"),
                memory: amount(policy.map(|p| &p.min_allowed), "memory"),
            };
            let max = policy.filter(|p| !p.max_allowed.is_empty()).map(|p| Amounts {
                cpu: amount(Some(&p.max_allowed), "cpu"),
                memory: amount(Some(&p.max_allowed), "memory"),
            });
            let rec = recommend(&s.cpu, &s.memory, min, max);
            recs.push((c.clone(), rec, controlled));
        }
        drop(samples);
        status.recommendation = (!recs.is_empty()).then(|| Recommendation {
            container_recommendations: recs
                .iter()
                .map(|(c, r, controlled)| ContainerRecommendation {
                    container_name: c.clone(),
                    target: amounts_map(r.target, controlled),
                    lower_bound: amounts_map(r.lower, controlled),
                    upper_bound: amounts_map(r.upper, controlled),
                    uncapped_target: amounts_map(r.uncapped, controlled),
                })
                .collect(),
        });
        let provided = if recs.is_empty() {
            super::condition(
                "RecommendationProvided",
                "False",
                "NoSamples",
                "no usage of the target's pods has been seen yet",
            )
        } else {
            super::condition("RecommendationProvided", "True", "", "")
        };
        super::set_condition(&mut status.conditions, provided, &stamp);
        match &conflict {
            Some(res) => super::set_condition(
                &mut status.conditions,
                super::condition(
                    "ConfigUnsupported",
                    "True",
                    "ConflictsWithHPA",
                    &format!(
                        "a HorizontalPodAutoscaler scales {} {} on {res}: this VPA would fight it, so it changes nothing (leave {res} out of controlledResources)",
                        r.kind, r.name
                    ),
                ),
                &stamp,
            ),
            None => status.conditions.retain(|c| c.type_ != "ConfigUnsupported"),
        }
        for c in &mut status.conditions {
            c.last_update_time = None;
        }
        let mode = vpa
            .spec
            .update_policy
            .as_ref()
            .and_then(|u| u.update_mode.clone())
            .unwrap_or_else(|| "Auto".into());
        if conflict.is_none() {
            match mode.as_str() {
                "InPlaceOrRecreate" => {
                    for p in &pods {
                        resize_pod(store, p, &recs)?;
                    }
                    // Where its node cannot take the resize, the pod is recreated instead
                    // (its replacement admitted with the recommendation, perhaps elsewhere).
                    let infeasible: Vec<crate::store::Stored> = pods
                        .iter()
                        .filter(|p| {
                            p.object["status"]["conditions"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .any(|c| c["type"] == "PodResizePending" && c["reason"] == "Infeasible")
                        })
                        .cloned()
                        .collect();
                    if !infeasible.is_empty() {
                        let min = vpa.spec.update_policy.as_ref().and_then(|u| u.min_replicas).unwrap_or(2);
                        let running =
                            pods.iter().filter(|p| p.object["status"]["phase"] == "Running").count();
                        if running >= usize::try_from(min).unwrap_or(2) {
                            recreate_one(store, &infeasible, &[], 0)?;
                        }
                    }
                }
                "Recreate" | "Auto" => {
                    let min = vpa.spec.update_policy.as_ref().and_then(|u| u.min_replicas).unwrap_or(2);
                    recreate_one(store, &pods, &recs, usize::try_from(min).unwrap_or(2))?;
                }
                // Initial: only new pods get the recommendation (`admit_pod`); Off: none.
                _ => {}
            }
        }
        write(store, key, &stored, &vpa, status)?;
        Ok(again)
    }
}

/// A running pod whose requests fall outside the recommended bounds gets the target in
/// place (the limits kept in the same proportion to the requests).
fn resize_pod(
    store: &dyn crate::store::Store,
    p: &crate::store::Stored,
    recs: &[(String, Recommended, Vec<String>)],
) -> Result<(), crate::store::StoreError> {
    if p.object["status"]["phase"] != "Running" {
        return Ok(());
    }
    let mut obj = p.object.clone();
    let mut changed = false;
    for c in obj["spec"]["containers"].as_array_mut().into_iter().flatten() {
        let Some((_, rec, controlled)) = recs.iter().find(|(n, _, _)| c["name"] == n.as_str()) else {
            continue;
        };
        for res in controlled {
            let cpu = res == "cpu";
            let read = |v: &serde_json::Value| {
                v.as_str()
                    .and_then(|q| Quantity::parse(q).ok())
                    .map(|q| if cpu { q.millis() as f64 } else { q.value() as f64 })
            };
            let request = read(&c["resources"]["requests"][res.as_str()]);
            let (lower, upper, target) = if cpu {
                (rec.lower.cpu, rec.upper.cpu, rec.target.cpu)
            } else {
                (rec.lower.memory, rec.upper.memory, rec.target.memory)
            };
            let Some(request) = request.filter(|r| *r < lower || *r > upper) else { continue };
            let limit = read(&c["resources"]["limits"][res.as_str()]);
            c["resources"]["requests"][res.as_str()] = quantity(target, cpu).as_str().into();
            if let Some(l) = limit {
                c["resources"]["limits"][res.as_str()] =
                    quantity(target * l / request.max(1.0), cpu).as_str().into();
            }
            changed = true;
        }
    }
    if !changed {
        return Ok(());
    }
    match store.update(&p.key, obj, Some(p.revision)) {
        Ok(_) | Err(crate::store::StoreError::Conflict { .. } | crate::store::StoreError::NotFound(_)) => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The VPA admission of a new pod: when a VerticalPodAutoscaler (in any mode but Off) targets
/// the workload that owns it — its ReplicaSet, or that ReplicaSet's Deployment — its
/// containers start with the recommended requests (limits in proportion), and the pod says
/// so in the `vpaUpdates` annotation, as the VPA's admission controller does.
pub fn admit_pod(
    store: &dyn crate::store::Store,
    pod: &mut serde_json::Value,
) -> Result<(), crate::store::StoreError> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
    let Some(owner) = pod["metadata"]["ownerReferences"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["controller"] == true).cloned())
    else {
        return Ok(());
    };
    let (vpas, _) = store.list(&format!("{PREFIX}{ns}/"))?;
    if vpas.is_empty() {
        return Ok(());
    }
    let mut owners = vec![(
        owner["kind"].as_str().unwrap_or_default().to_string(),
        owner["name"].as_str().unwrap_or_default().to_string(),
    )];
    if owner["kind"] == "ReplicaSet" {
        if let Some(rs) = store.get(&format!("apps/replicasets/{ns}/{}", owners[0].1))? {
            if let Some(d) = rs.object["metadata"]["ownerReferences"]
                .as_array()
                .and_then(|o| o.iter().find(|o| o["kind"] == "Deployment"))
            {
                owners.push(("Deployment".into(), d["name"].as_str().unwrap_or_default().to_string()));
            }
        }
    }
    for v in vpas {
        let Ok(vpa) = serde_json::from_value::<tug_api::kinds::vpa::VerticalPodAutoscaler>(v.object) else {
            continue;
        };
        let r = &vpa.spec.target_ref;
        if !owners.iter().any(|(k, n)| *k == r.kind && *n == r.name) {
            continue;
        }
        if vpa.spec.update_policy.as_ref().and_then(|u| u.update_mode.as_deref()) == Some("Off") {
            return Ok(());
        }
        let Some(rec) = vpa.status.and_then(|s| s.recommendation) else { return Ok(()) };
        let mut updated = Vec::new();
        for (i, c) in pod["spec"]["containers"].as_array_mut().into_iter().flatten().enumerate() {
            let Some(cr) =
                rec.container_recommendations.iter().find(|x| c["name"] == x.container_name.as_str())
            else {
                continue;
            };
            for (res, target) in &cr.target {
                let cpu = res == "cpu";
                let read = |v: &serde_json::Value| {
                    v.as_str()
                        .and_then(|q| Quantity::parse(q).ok())
                        .map(|q| if cpu { q.millis() as f64 } else { q.value() as f64 })
                };
                let want = if cpu { target.millis() as f64 } else { target.value() as f64 };
                let request = read(&c["resources"]["requests"][res.as_str()]);
                let limit = read(&c["resources"]["limits"][res.as_str()]);
                c["resources"]["requests"][res.as_str()] = target.as_str().into();
                if let (Some(l), Some(r)) = (limit, request) {
                    c["resources"]["limits"][res.as_str()] =
                        quantity(want * l / r.max(1.0), cpu).as_str().into();
                }
                updated.push(format!("container {i}: {res} request"));
            }
        }
        if !updated.is_empty() {
            pod["metadata"]["annotations"]["vpaUpdates"] =
                format!("Pod resources updated by {}: {}", vpa.metadata.name, updated.join(", ")).into();
        }
        return Ok(());
    }
    Ok(())
}

/// Recreate mode: one pod whose requests left the bounds is deleted (with its grace period),
/// if at least `minReplicas` (2) pods are running; its replacement is admitted with the
/// recommendation.
fn recreate_one(
    store: &dyn crate::store::Store,
    pods: &[crate::store::Stored],
    recs: &[(String, Recommended, Vec<String>)],
    min_replicas: usize,
) -> Result<(), crate::store::StoreError> {
    let running: Vec<&crate::store::Stored> =
        pods.iter().filter(|p| p.object["status"]["phase"] == "Running").collect();
    if running.len() < min_replicas {
        return Ok(());
    }
    let outside = |p: &crate::store::Stored| {
        p.object["spec"]["containers"].as_array().into_iter().flatten().any(|c| {
            recs.iter().filter(|(n, _, _)| c["name"] == n.as_str()).any(|(_, rec, controlled)| {
                controlled.iter().any(|res| {
                    let cpu = res == "cpu";
                    let request = c["resources"]["requests"][res.as_str()]
                        .as_str()
                        .and_then(|q| Quantity::parse(q).ok())
                        .map(|q| if cpu { q.millis() as f64 } else { q.value() as f64 });
                    let (lower, upper) = if cpu {
                        (rec.lower.cpu, rec.upper.cpu)
                    } else {
                        (rec.lower.memory, rec.upper.memory)
                    };
                    request.is_some_and(|r| r < lower || r > upper)
                })
            })
        })
    };
    // No recommendations given: every pod passed is to go (the in-place fallback).
    let chosen =
        if recs.is_empty() { running.into_iter().next() } else { running.into_iter().find(|p| outside(p)) };
    if let Some(p) = chosen {
        let pre = crate::deletion::Preconditions {
            uid: p.object["metadata"]["uid"].as_str().map(str::to_string),
            resource_version: None,
        };
        match crate::deletion::delete(store, &p.key, None, &pre) {
            Ok(_) => {
                let meta: tug_api::meta::ObjectMeta =
                    tug_api::from_value_ref(&p.object["metadata"]).unwrap_or_default();
                super::event(
                    store,
                    ("Pod", "v1", &meta),
                    "Normal",
                    "EvictedByVPA",
                    "Pod was evicted by VPA Updater to apply resource recommendation.",
                    "vpa-updater",
                )?;
            }
            Err(crate::deletion::Refused::Store(e))
                if !matches!(
                    e,
                    crate::store::StoreError::NotFound(_) | crate::store::StoreError::Conflict { .. }
                ) =>
            {
                return Err(e);
            }
            Err(_) => {}
        }
    }
    Ok(())
}

fn write(
    store: &dyn crate::store::Store,
    key: &str,
    stored: &crate::store::Stored,
    vpa: &tug_api::kinds::vpa::VerticalPodAutoscaler,
    status: tug_api::kinds::vpa::VpaStatus,
) -> Result<(), crate::store::StoreError> {
    if vpa.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let mut v = stored.object.clone();
    v["status"] = serde_json::to_value(&status).unwrap_or_default();
    match store.update(key, v, Some(stored.revision)) {
        Ok(_) | Err(crate::store::StoreError::Conflict { .. } | crate::store::StoreError::NotFound(_)) => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_the_90th_percentile_with_margin_floors_and_caps() {
        let (mut cpu, mut mem) = (Histogram::new(true), Histogram::new(false));
        // 100 samples: 92 at 100m, 8 at 1000m; memory at 300 MB.
        for i in 0..100u64 {
            cpu.add(if i < 92 { 100.0 } else { 1000.0 }, 1_000 + i);
            mem.add(300e6, 1_000 + i);
        }
        let r = recommend(&cpu, &mem, Amounts::default(), None);
        // p90 falls in 100m's bucket (its end is under 5% above): ×1.15.
        assert!(r.target.cpu > 115.0 && r.target.cpu < 125.0, "{r:?}");
        assert!(r.upper.cpu > 1000.0, "p95 reaches the spikes: {r:?}");
        assert!(r.target.memory > 300e6 * 1.15 && r.target.memory < 300e6 * 1.15 * 1.06, "{r:?}");
        // Floors and caps.
        let (mut small, mut small_mem) = (Histogram::new(true), Histogram::new(false));
        small.add(1.0, 1);
        small_mem.add(1e6, 1);
        let r = recommend(&small, &small_mem, Amounts::default(), None);
        assert_eq!((r.target.cpu, r.target.memory), (MIN_CPU_MILLIS, MIN_MEMORY_BYTES));
        let r = recommend(
            &cpu,
            &mem,
            Amounts { cpu: 500.0, memory: 0.0 },
            Some(Amounts { cpu: 800.0, memory: 1e8 }),
        );
        assert_eq!((r.target.cpu, r.target.memory), (500.0, 1e8), "min raises, max lowers");
        assert!(r.uncapped.cpu < 500.0);
        assert_eq!(oom_bump(1e9), 1.2e9);
        assert_eq!(oom_bump(100.0 * 1024.0 * 1024.0), 200.0 * 1024.0 * 1024.0, "at least 100 MiB more");
        // Memory: one peak per day.
        let mut m = Samples::new();
        m.memory(100e6, 0);
        m.memory(300e6, 3600);
        m.memory(200e6, 7200);
        assert!((m.memory.percentile(1.0) - 300e6).abs() < 300e6 * 0.06, "the day's peak, once");
        m.memory(150e6, MEMORY_WINDOW_SECS + 1);
        assert!(m.memory.percentile(0.4) < 160e6, "a new day, a new peak beside it");
        // Old samples count less: a day later, new ones outweigh them two to one.
        let mut decay = Histogram::new(true);
        decay.add(100.0, 0);
        decay.add(1000.0, 86_400);
        assert!(decay.percentile(0.5) > 900.0, "the recent sample weighs double");
    }
}
