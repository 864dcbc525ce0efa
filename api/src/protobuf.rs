//! Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`) of request bodies,
//! decoded into the JSON the rest of Tug speaks. client-go's typed clients (kubectl `create
//! namespace|configmap|secret|deployment|…`, `auth can-i`, `drain`) send protobuf and never fall
//! back to JSON (client-go only does that for CBOR), so the API server must read it.
//!
//! A body is the magic `k8s\0` and a `runtime.Unknown` whose `raw` is the object's message.
//! Protobuf carries field numbers, not names: [`SCHEMA`] maps each message's numbers to its JSON
//! names and types, as Kubernetes' `generated.proto` files number them (a wire contract, like an
//! HTTP status code). A message or field that is not in it is refused with its name, never
//! dropped: the client then knows to send JSON. Pure.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// The messages: `Name = number name type, …`. Types: `s` string, `i` integer (varint), `b`
/// bool, `y` bytes (base64 in JSON), `q` a Quantity, `t` a Time, `ios` an IntOrString,
/// `{T}` a map from string to T, `[T]` repeated T, `-` a field read and dropped (a status: the
/// server owns it), any other word a message of that name. gogo-protobuf writes every
/// non-pointer field, zero or not (`selfLink: ""`, `status: {}`): a zero scalar is dropped, as
/// Go's `omitempty` drops it from JSON, unless the type ends in `!` (a pointer field, where 0
/// and false are meant: `replicas: 0`, `automountServiceAccountToken: false`); a field this
/// table does not know is skipped when it is empty and refused when it holds something.
const SCHEMA: &str = "
Unknown = 1 typeMeta TypeMeta, 2 raw y, 3 contentEncoding s, 4 contentType s
TypeMeta = 1 apiVersion s, 2 kind s
ObjectMeta = 1 name s, 2 generateName s, 3 namespace s, 4 selfLink s, 5 uid s, 6 resourceVersion s, 7 generation i, 8 creationTimestamp t, 9 deletionTimestamp t, 10 deletionGracePeriodSeconds i, 11 labels {s}, 12 annotations {s}, 13 ownerReferences [OwnerReference], 14 finalizers [s]
OwnerReference = 1 kind s, 3 name s, 4 uid s, 5 apiVersion s, 6 controller b, 7 blockOwnerDeletion b
LabelSelector = 1 matchLabels {s}, 2 matchExpressions [LabelSelectorRequirement]
LabelSelectorRequirement = 1 key s, 2 operator s, 3 values [s]
Namespace = 1 metadata ObjectMeta, 2 spec NamespaceSpec, 3 status -
NamespaceSpec = 1 finalizers [s]
ConfigMap = 1 metadata ObjectMeta, 2 data {s}, 3 binaryData {y}, 4 immutable b!
Secret = 1 metadata ObjectMeta, 2 data {y}, 3 type s, 4 stringData {s}, 5 immutable b!
ServiceAccount = 1 metadata ObjectMeta, 2 secrets [ObjectReference], 3 imagePullSecrets [LocalObjectReference], 4 automountServiceAccountToken b!
ObjectReference = 1 kind s, 2 namespace s, 3 name s, 4 uid s, 5 apiVersion s, 6 resourceVersion s, 7 fieldPath s
LocalObjectReference = 1 name s
Service = 1 metadata ObjectMeta, 2 spec ServiceSpec, 3 status -
ServiceSpec = 1 ports [ServicePort], 2 selector {s}, 3 clusterIP s, 4 type s, 5 externalIPs [s], 7 sessionAffinity s, 8 loadBalancerIP s, 9 loadBalancerSourceRanges [s], 10 externalName s, 11 externalTrafficPolicy s, 12 healthCheckNodePort i, 13 publishNotReadyAddresses b, 17 ipFamilyPolicy s, 18 clusterIPs [s], 19 ipFamilies [s], 22 internalTrafficPolicy s
ServicePort = 1 name s, 2 protocol s, 3 port i, 4 targetPort ios, 5 nodePort i, 6 appProtocol s
Deployment = 1 metadata ObjectMeta, 2 spec DeploymentSpec, 3 status -
DeploymentSpec = 1 replicas i!, 2 selector LabelSelector, 3 template PodTemplateSpec, 4 strategy DeploymentStrategy, 5 minReadySeconds i, 6 revisionHistoryLimit i, 7 paused b, 9 progressDeadlineSeconds i
DeploymentStrategy = 1 type s, 2 rollingUpdate RollingUpdateDeployment
RollingUpdateDeployment = 1 maxUnavailable ios, 2 maxSurge ios
Job = 1 metadata ObjectMeta, 2 spec JobSpec, 3 status -
JobSpec = 1 parallelism i!, 2 completions i!, 3 activeDeadlineSeconds i!, 4 selector LabelSelector, 5 manualSelector b, 6 template PodTemplateSpec, 7 backoffLimit i!, 8 ttlSecondsAfterFinished i!, 9 completionMode s, 10 suspend b!
CronJob = 1 metadata ObjectMeta, 2 spec CronJobSpec, 3 status -
CronJobSpec = 1 schedule s, 2 startingDeadlineSeconds i, 3 concurrencyPolicy s, 4 suspend b, 5 jobTemplate JobTemplateSpec, 6 successfulJobsHistoryLimit i, 7 failedJobsHistoryLimit i, 8 timeZone s
JobTemplateSpec = 1 metadata ObjectMeta, 2 spec JobSpec
PodTemplateSpec = 1 metadata ObjectMeta, 2 spec PodSpec
Pod = 1 metadata ObjectMeta, 2 spec PodSpec, 3 status -
PodSpec = 1 volumes [Volume], 2 containers [Container], 3 restartPolicy s, 4 terminationGracePeriodSeconds i!, 5 activeDeadlineSeconds i!, 6 dnsPolicy s, 7 nodeSelector {s}, 8 serviceAccountName s, 9 serviceAccount s, 10 nodeName s, 11 hostNetwork b, 12 hostPID b, 13 hostIPC b, 14 securityContext PodSecurityContext, 15 imagePullSecrets [LocalObjectReference], 16 hostname s, 17 subdomain s, 19 schedulerName s, 20 initContainers [Container], 21 automountServiceAccountToken b!, 22 tolerations [Toleration], 24 priorityClassName s, 25 priority i!, 28 enableServiceLinks b, 29 shareProcessNamespace b, 30 preemptionPolicy s
PodSecurityContext = 1 seLinuxOptions SELinuxOptions, 2 runAsUser i!, 3 runAsNonRoot b!, 4 supplementalGroups [i], 5 fsGroup i!, 6 runAsGroup i!
SELinuxOptions = 1 user s, 2 role s, 3 type s, 4 level s
Toleration = 1 key s, 2 operator s, 3 value s, 4 effect s, 5 tolerationSeconds i!
Container = 1 name s, 2 image s, 3 command [s], 4 args [s], 5 workingDir s, 6 ports [ContainerPort], 7 env [EnvVar], 8 resources ResourceRequirements, 9 volumeMounts [VolumeMount], 10 livenessProbe Probe, 11 readinessProbe Probe, 13 terminationMessagePath s, 14 imagePullPolicy s, 15 securityContext SecurityContext, 16 stdin b, 17 stdinOnce b, 18 tty b, 19 envFrom [EnvFromSource], 20 terminationMessagePolicy s, 22 startupProbe Probe, 24 restartPolicy s
ContainerPort = 1 name s, 2 hostPort i, 3 containerPort i, 4 protocol s, 5 hostIP s
EnvVar = 1 name s, 2 value s, 3 valueFrom EnvVarSource
EnvVarSource = 1 fieldRef ObjectFieldSelector, 3 configMapKeyRef ConfigMapKeySelector, 4 secretKeyRef SecretKeySelector
ObjectFieldSelector = 1 apiVersion s, 2 fieldPath s
ConfigMapKeySelector = 1 localObjectReference LocalObjectReference, 2 key s, 3 optional b!
SecretKeySelector = 1 localObjectReference LocalObjectReference, 2 key s, 3 optional b!
EnvFromSource = 1 prefix s, 2 configMapRef LocalObjectReference, 3 secretRef LocalObjectReference
ResourceRequirements = 1 limits {q}, 2 requests {q}
VolumeMount = 1 name s, 2 readOnly b, 3 mountPath s, 4 subPath s
Probe = 1 handler ProbeHandler, 2 initialDelaySeconds i, 3 timeoutSeconds i, 4 periodSeconds i, 5 successThreshold i, 6 failureThreshold i, 7 terminationGracePeriodSeconds i
ProbeHandler = 1 exec ExecAction, 2 httpGet HTTPGetAction, 3 tcpSocket TCPSocketAction
ExecAction = 1 command [s]
HTTPGetAction = 1 path s, 2 port ios, 3 host s, 4 scheme s
TCPSocketAction = 1 port ios, 2 host s
SecurityContext = 2 privileged b!, 4 runAsUser i!, 5 runAsNonRoot b!, 6 readOnlyRootFilesystem b!, 7 allowPrivilegeEscalation b!, 8 runAsGroup i!
Volume = 1 name s, 2 volumeSource VolumeSource
VolumeSource = 1 hostPath HostPathVolumeSource, 2 emptyDir EmptyDirVolumeSource, 6 secret SecretVolumeSource, 10 persistentVolumeClaim PersistentVolumeClaimVolumeSource, 19 configMap ConfigMapVolumeSource
HostPathVolumeSource = 1 path s, 2 type s
EmptyDirVolumeSource = 1 medium s, 2 sizeLimit q
SecretVolumeSource = 1 secretName s, 3 defaultMode i, 4 optional b!
ConfigMapVolumeSource = 1 localObjectReference LocalObjectReference, 3 defaultMode i, 4 optional b!
PersistentVolumeClaimVolumeSource = 1 claimName s, 2 readOnly b
PolicyRule = 1 verbs [s], 2 apiGroups [s], 3 resources [s], 4 resourceNames [s], 5 nonResourceURLs [s]
Role = 1 metadata ObjectMeta, 2 rules [PolicyRule]
ClusterRole = 1 metadata ObjectMeta, 2 rules [PolicyRule]
RoleBinding = 1 metadata ObjectMeta, 2 subjects [Subject], 3 roleRef RoleRef
ClusterRoleBinding = 1 metadata ObjectMeta, 2 subjects [Subject], 3 roleRef RoleRef
Subject = 1 kind s, 2 apiGroup s, 3 name s, 4 namespace s
RoleRef = 1 apiGroup s, 2 kind s, 3 name s
PriorityClass = 1 metadata ObjectMeta, 2 value i!, 3 globalDefault b, 4 description s, 5 preemptionPolicy s
SelfSubjectAccessReview = 1 metadata ObjectMeta, 2 spec SelfSubjectAccessReviewSpec, 3 status -
SelfSubjectAccessReviewSpec = 1 resourceAttributes ResourceAttributes, 2 nonResourceAttributes NonResourceAttributes
ResourceAttributes = 1 namespace s, 2 verb s, 3 group s, 4 version s, 5 resource s, 6 subresource s, 7 name s
NonResourceAttributes = 1 path s, 2 verb s
SelfSubjectReview = 1 metadata ObjectMeta, 2 status -
TokenRequest = 1 metadata ObjectMeta, 2 spec TokenRequestSpec, 3 status -
TokenRequestSpec = 1 audiences [s], 3 boundObjectRef BoundObjectReference, 4 expirationSeconds i!
BoundObjectReference = 1 kind s, 2 apiVersion s, 3 name s, 4 uid s
Eviction = 1 metadata ObjectMeta, 2 deleteOptions DeleteOptions
HorizontalPodAutoscaler@autoscaling/v1 = 1 metadata ObjectMeta, 2 spec HorizontalPodAutoscalerSpecV1, 3 status -
HorizontalPodAutoscalerSpecV1 = 1 scaleTargetRef CrossVersionObjectReference, 2 minReplicas i!, 3 maxReplicas i, 4 targetCPUUtilizationPercentage i!
CrossVersionObjectReference = 1 kind s, 2 name s, 3 apiVersion s
PodDisruptionBudget = 1 metadata ObjectMeta, 2 spec PodDisruptionBudgetSpec, 3 status -
PodDisruptionBudgetSpec = 1 minAvailable ios, 2 selector LabelSelector, 3 maxUnavailable ios, 4 unhealthyPodEvictionPolicy s
DeleteOptions = 1 gracePeriodSeconds i!, 2 preconditions Preconditions, 3 orphanDependents b, 4 propagationPolicy s, 5 dryRun [s]
Preconditions = 1 uid s, 2 resourceVersion s
Scale = 1 metadata ObjectMeta, 2 spec ScaleSpec, 3 status -
ScaleSpec = 1 replicas i!
";

/// Protobuf messages whose fields sit inline in their parent's JSON (Go's embedded structs).
const INLINE: &[&str] = &["handler", "volumeSource", "localObjectReference"];

#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Skip,
    Str,
    Int,
    Bool,
    Bytes,
    Quantity,
    Time,
    IntOrString,
    Msg(String),
    Map(Box<Ty>),
    List(Box<Ty>),
}

/// Per field number: the JSON name, the type, and whether a zero value is kept.
type Fields = HashMap<u64, (String, Ty, bool)>;

fn parse_ty(t: &str) -> Ty {
    if let Some(inner) = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return Ty::List(Box::new(parse_ty(inner)));
    }
    if let Some(inner) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        return Ty::Map(Box::new(parse_ty(inner)));
    }
    match t {
        "s" => Ty::Str,
        "i" => Ty::Int,
        "b" => Ty::Bool,
        "y" => Ty::Bytes,
        "q" => Ty::Quantity,
        "t" => Ty::Time,
        "ios" => Ty::IntOrString,
        "-" => Ty::Skip,
        m => Ty::Msg(m.to_string()),
    }
}

fn schema() -> &'static HashMap<String, Fields> {
    static S: OnceLock<HashMap<String, Fields>> = OnceLock::new();
    S.get_or_init(|| {
        let mut out = HashMap::new();
        for line in SCHEMA.lines().filter(|l| !l.trim().is_empty()) {
            let (name, fields) = line.split_once(" = ").unwrap_or((line, ""));
            let mut f = Fields::new();
            for field in fields.split(", ") {
                let parts: Vec<&str> = field.split_whitespace().collect();
                if let [n, json, ty] = parts[..]
                    && let Ok(n) = n.parse()
                {
                    let keep = ty.ends_with('!');
                    f.insert(n, (json.to_string(), parse_ty(ty.trim_end_matches('!')), keep));
                }
            }
            out.insert(name.trim().to_string(), f);
        }
        out
    })
}

/// Whether a body is in Kubernetes' protobuf envelope.
pub fn is_envelope(body: &[u8]) -> bool {
    body.starts_with(MAGIC)
}

/// Decodes a protobuf request body into the object's JSON, with `apiVersion` and `kind` from
/// the envelope.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest =
        body.strip_prefix(MAGIC).ok_or("the body does not start with Kubernetes' protobuf magic k8s\\0")?;
    let unknown = message(rest, "Unknown", "")?;
    let api_version = unknown["typeMeta"]["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = unknown["typeMeta"]["kind"].as_str().unwrap_or_default().to_string();
    if kind.is_empty() {
        return Err("the protobuf envelope names no kind".into());
    }
    // A message of one version of a kind is named `Kind@group/version`.
    let versioned = format!("{kind}@{api_version}");
    let name = if schema().contains_key(&versioned) { versioned } else { kind.clone() };
    if !schema().contains_key(&name) {
        return Err(format!(
            "{kind} ({api_version}) in protobuf is not supported by this server: send it as application/json"
        ));
    }
    let raw = unknown["raw"].as_str().unwrap_or_default();
    let raw =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, raw).map_err(|e| e.to_string())?;
    let mut obj = message(&raw, &name, "")?;
    if let Value::Object(m) = &mut obj {
        m.insert("apiVersion".into(), api_version.into());
        m.insert("kind".into(), kind.into());
    }
    Ok(obj)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("a truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    /// The next field: its number and value, `None` for a fixed-width one (read past: no
    /// Kubernetes type this server reads has one).
    fn field(&mut self, path: &str) -> Result<(u64, Option<Wire<'a>>), String> {
        let tag = self.varint()?;
        let number = tag >> 3;
        let wire = match tag & 7 {
            0 => Some(Wire::Varint(self.varint()?)),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "a length past the address space")?;
                Some(Wire::Bytes(self.take(n)?))
            }
            1 => {
                self.take(8)?;
                None
            }
            5 => {
                self.take(4)?;
                None
            }
            t => return Err(format!("{path}: wire type {t} of field {number} is not protobuf's")),
        };
        Ok((number, wire))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or("a truncated field")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

/// One wire value: a varint or a length-delimited run (fixed-width fields are read and
/// refused: no Kubernetes type this server reads has one).
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn message(buf: &[u8], name: &str, path: &str) -> Result<Value, String> {
    let fields = schema().get(name).ok_or_else(|| format!("{path}: message {name} is not known"))?;
    let mut out = Map::new();
    let mut r = Reader { buf, pos: 0 };
    while r.pos < buf.len() {
        let (number, wire) = r.field(path)?;
        let Some(wire) = wire else { continue };
        let Some((json, ty, keep_zero)) = fields.get(&number) else {
            if matches!(wire, Wire::Varint(0)) || matches!(wire, Wire::Bytes(b) if b.is_empty()) {
                continue;
            }
            return Err(format!(
                "{}: field number {number} of {name} is not supported by this server's protobuf decoder: send application/json",
                if path.is_empty() { name } else { path }
            ));
        };
        let here = if path.is_empty() { json.clone() } else { format!("{path}.{json}") };
        match ty {
            Ty::List(inner) => {
                let v = value(&wire, inner, &here)?;
                let list = out.entry(json.clone()).or_insert_with(|| Value::Array(vec![]));
                if let Value::Array(a) = list {
                    // A packed run of varints (proto3 style) is several values at once.
                    match (&**inner, &wire) {
                        (Ty::Int, Wire::Bytes(b)) => {
                            let mut pr = Reader { buf: b, pos: 0 };
                            while pr.pos < b.len() {
                                a.push(Value::from(pr.varint()? as i64));
                            }
                        }
                        _ => a.push(v),
                    }
                }
            }
            Ty::Map(inner) => {
                let Wire::Bytes(b) = wire else {
                    return Err(format!("{here}: a map entry must be a message"));
                };
                let (k, v) = entry(b, inner, &here)?;
                let map = out.entry(json.clone()).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = map {
                    m.insert(k, v);
                }
            }
            Ty::Msg(_) if INLINE.contains(&json.as_str()) => {
                if let Value::Object(m) = value(&wire, ty, &here)? {
                    out.extend(m);
                }
            }
            Ty::Skip => {}
            _ => {
                let v = value(&wire, ty, &here)?;
                let zero = match &v {
                    Value::Null => true,
                    Value::String(s) => s.is_empty(),
                    Value::Bool(b) => !b,
                    Value::Number(n) => n.as_i64() == Some(0),
                    _ => false,
                };
                if !zero || (*keep_zero && !v.is_null()) {
                    out.insert(json.clone(), v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

fn entry(buf: &[u8], ty: &Ty, path: &str) -> Result<(String, Value), String> {
    let mut r = Reader { buf, pos: 0 };
    let (mut key, mut val) = (String::new(), default_of(ty));
    while r.pos < buf.len() {
        let (number, wire) = r.field(path)?;
        let wire = wire.ok_or_else(|| format!("{path}: a fixed-width field in a map entry"))?;
        match number {
            1 => key = value(&wire, &Ty::Str, path)?.as_str().unwrap_or_default().to_string(),
            2 => val = value(&wire, ty, &format!("{path}[{key}]"))?,
            n => return Err(format!("{path}: field {n} in a map entry")),
        }
    }
    Ok((key, val))
}

fn default_of(ty: &Ty) -> Value {
    match ty {
        Ty::Str | Ty::Bytes | Ty::Quantity => Value::String(String::new()),
        _ => Value::Null,
    }
}

fn value(wire: &Wire, ty: &Ty, path: &str) -> Result<Value, String> {
    let text = |b: &[u8]| {
        std::str::from_utf8(b).map(str::to_string).map_err(|_| format!("{path}: a string that is not UTF-8"))
    };
    Ok(match (ty, wire) {
        (Ty::Str, Wire::Bytes(b)) => Value::String(text(b)?),
        (Ty::Bytes, Wire::Bytes(b)) => {
            Value::String(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b))
        }
        (Ty::Int, Wire::Varint(v)) => Value::from(*v as i64),
        (Ty::Bool, Wire::Varint(v)) => Value::Bool(*v != 0),
        (Ty::Quantity, Wire::Bytes(b)) => {
            let q = message_with(b, path, &[(1, Ty::Str)])?;
            q.get(&1).cloned().unwrap_or_else(|| Value::String(String::new()))
        }
        (Ty::Time, Wire::Bytes(b)) => {
            let t = message_with(b, path, &[(1, Ty::Int), (2, Ty::Int)])?;
            let secs = t.get(&1).and_then(Value::as_i64).unwrap_or(0);
            match u64::try_from(secs) {
                Ok(s) if s > 0 => Value::String(
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
                    )
                    .to_string(),
                ),
                _ => Value::Null,
            }
        }
        (Ty::IntOrString, Wire::Bytes(b)) => {
            let f = message_with(b, path, &[(1, Ty::Int), (2, Ty::Int), (3, Ty::Str)])?;
            match f.get(&1).and_then(Value::as_i64) {
                Some(1) => f.get(&3).cloned().unwrap_or_else(|| Value::String(String::new())),
                _ => f.get(&2).cloned().unwrap_or_else(|| Value::from(0)),
            }
        }
        (Ty::Msg(m), Wire::Bytes(b)) => message(b, m, path)?,
        _ => return Err(format!("{path}: the wire type does not match the field's type")),
    })
}

/// A small fixed message (Quantity, Time, IntOrString): its fields by number.
fn message_with(buf: &[u8], path: &str, fields: &[(u64, Ty)]) -> Result<HashMap<u64, Value>, String> {
    let mut r = Reader { buf, pos: 0 };
    let mut out = HashMap::new();
    while r.pos < buf.len() {
        let (number, wire) = r.field(path)?;
        let wire = wire.ok_or_else(|| format!("{path}: a fixed-width field"))?;
        if let Some((n, ty)) = fields.iter().find(|(n, _)| *n == number) {
            out.insert(*n, value(&wire, ty, path)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(n: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = vec![];
        bytes_field(1, api_version.as_bytes(), &mut tm);
        bytes_field(2, kind.as_bytes(), &mut tm);
        let mut u = vec![];
        bytes_field(1, &tm, &mut u);
        bytes_field(2, raw, &mut u);
        let mut out = MAGIC.to_vec();
        out.extend(u);
        out
    }

    #[test]
    fn a_namespace_as_kubectl_sends_it() {
        let mut meta = vec![];
        bytes_field(1, b"foo", &mut meta);
        let mut label = vec![];
        bytes_field(1, b"team", &mut label);
        bytes_field(2, b"a", &mut label);
        bytes_field(11, &label, &mut meta);
        let mut ns = vec![];
        bytes_field(1, &meta, &mut ns);
        bytes_field(2, &[], &mut ns);
        let v = decode(&envelope("v1", "Namespace", &ns)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "foo", "labels": {"team": "a"}}, "spec": {}})
        );
    }

    #[test]
    fn a_deployment_with_ints_lists_and_quantities() {
        let mut c = vec![];
        bytes_field(1, b"web", &mut c);
        bytes_field(2, b"nginx", &mut c);
        let mut q = vec![];
        bytes_field(1, b"100m", &mut q);
        let mut e = vec![];
        bytes_field(1, b"cpu", &mut e);
        bytes_field(2, &q, &mut e);
        let mut res = vec![];
        bytes_field(2, &e, &mut res);
        bytes_field(8, &res, &mut c);
        let mut ps = vec![];
        bytes_field(2, &c, &mut ps);
        let mut tpl = vec![];
        bytes_field(2, &ps, &mut tpl);
        let mut spec = vec![];
        varint(1 << 3, &mut spec);
        varint(3, &mut spec);
        varint(5 << 3, &mut spec);
        varint(0, &mut spec);
        bytes_field(3, &tpl, &mut spec);
        let mut d = vec![];
        bytes_field(2, &spec, &mut d);
        let v = decode(&envelope("apps/v1", "Deployment", &d)).unwrap();
        assert_eq!(v["spec"]["replicas"], 3);
        assert!(v["spec"].get("minReadySeconds").is_none(), "a zero non-pointer field is dropped");
        assert_eq!(v["spec"]["template"]["spec"]["containers"][0]["image"], "nginx");
        assert_eq!(v["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"], "100m");
    }

    #[test]
    fn what_it_cannot_read_is_refused_by_name() {
        let mut ns = vec![];
        bytes_field(9, b"", &mut ns);
        assert!(decode(&envelope("v1", "Namespace", &ns)).is_ok(), "an empty unknown field is skipped");
        bytes_field(9, b"x", &mut ns);
        let e = decode(&envelope("v1", "Namespace", &ns)).unwrap_err();
        assert!(e.contains("field number 9 of Namespace"), "{e}");
        let e = decode(&envelope("v1", "Frobnicator", &[])).unwrap_err();
        assert!(e.contains("Frobnicator (v1) in protobuf is not supported"), "{e}");
        assert!(decode(b"k8s\0\x0a\xff").is_err());
        assert!(decode(b"{}").is_err());
    }

    #[test]
    fn every_message_named_in_the_schema_is_defined() {
        fn check(ty: &Ty) {
            match ty {
                Ty::Msg(m) => assert!(schema().contains_key(m), "{m}"),
                Ty::List(t) | Ty::Map(t) => check(t),
                _ => {}
            }
        }
        for fields in schema().values() {
            for (_, ty, _) in fields.values() {
                check(ty);
            }
        }
    }
}
