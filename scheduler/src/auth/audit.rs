//! The audit log (`--audit-log PATH`): one JSON line per request in Kubernetes'
//! `audit.k8s.io/v1` `Event` shape — who (user, groups, the impersonated user), what (verb,
//! URI, object reference), the authorization decision, the response code, and at `Request`
//! level the request's body — at the level a policy (`--audit-policy-file`, Kubernetes'
//! `audit.k8s.io/v1` `Policy`: rules by users, userGroups, verbs, resources, namespaces,
//! nonResourceURLs; the first match wins) gives it; `Metadata` for everything without one.
//! The file is 0600 and rotated by size (`--audit-log-maxsize` MiB, `--audit-log-maxbackup`
//! files kept as PATH.1, PATH.2, …).

use super::{Attributes, User};
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

/// How much of a request is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    /// Recorded as `Request`: response bodies (lists, logs) are not kept.
    RequestResponse,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyShape {
    api_version: String,
    kind: String,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    omit_stages: Vec<String>,
}

/// An audit policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Default for Policy {
    /// `Metadata` for every request.
    fn default() -> Policy {
        Policy {
            rules: vec![Rule {
                level: Level::Metadata,
                users: Vec::new(),
                user_groups: Vec::new(),
                verbs: Vec::new(),
                resources: Vec::new(),
                namespaces: Vec::new(),
                non_resource_urls: Vec::new(),
                omit_stages: Vec::new(),
            }],
        }
    }
}

impl Policy {
    pub fn parse(text: &str) -> Result<Policy, String> {
        let p: PolicyShape = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if p.kind != "Policy" || p.api_version != "audit.k8s.io/v1" {
            return Err(format!(
                "expected kind Policy of apiVersion audit.k8s.io/v1, got {} {}",
                p.kind, p.api_version
            ));
        }
        // A policy-wide omitStages holds for every rule, as in Kubernetes.
        let rules = p
            .rules
            .into_iter()
            .map(|mut r| {
                r.omit_stages.extend(p.omit_stages.iter().cloned());
                r
            })
            .collect();
        Ok(Policy { rules })
    }

    /// The level of a request: the first rule that matches, else `None`.
    pub fn level(&self, user: &User, a: &Attributes) -> Level {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == "*" || x == v);
        self.rules
            .iter()
            .find(|r| {
                any(&r.users, &user.name)
                    && (r.user_groups.is_empty() || r.user_groups.iter().any(|g| user.in_group(g)))
                    && any(&r.verbs, &a.verb)
                    && if a.resource_request {
                        r.non_resource_urls.is_empty()
                            && any(&r.namespaces, &a.namespace)
                            && (r.resources.is_empty()
                                || r.resources.iter().any(|g| {
                                    g.group == a.api_group
                                        && (g.resources.is_empty()
                                            || g.resources.iter().any(|x| {
                                                x == "*" || *x == a.resource || *x == a.combined_resource()
                                            }))
                                }))
                    } else {
                        r.resources.is_empty()
                            && r.namespaces.is_empty()
                            && (r.non_resource_urls.is_empty()
                                || r.non_resource_urls.iter().any(|u| {
                                    u == "*"
                                        || *u == a.path
                                        || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
                                }))
                    }
            })
            .map_or(Level::None, |r| {
                if r.omit_stages.iter().any(|s| s == "ResponseComplete") { Level::None } else { r.level }
            })
    }
}

/// The log file, rotated by size.
pub struct Log {
    path: PathBuf,
    max_bytes: u64,
    backups: u32,
    pub policy: Policy,
    file: Mutex<Option<(std::fs::File, u64)>>,
}

/// One request, as the middleware saw it.
pub struct Record<'a> {
    pub user: &'a User,
    /// The user who asked, when `user` is one they impersonate.
    pub impersonator: Option<&'a User>,
    pub attrs: &'a Attributes,
    pub uri: &'a str,
    pub source: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub allowed: bool,
    pub reason: &'a str,
    pub code: u16,
    pub received: String,
    pub long_running: bool,
    pub body: Option<&'a [u8]>,
    /// Admission's notes (Pod Security's `audit` level).
    pub annotations: &'a [(String, String)],
}

impl Log {
    pub fn open(path: PathBuf, max_mib: u64, backups: u32, policy: Policy) -> Result<Log, String> {
        let log = Log { path, max_bytes: max_mib.max(1) << 20, backups, policy, file: Mutex::new(None) };
        let f = log.open_file()?;
        *log.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
        Ok(log)
    }

    fn open_file(&self) -> Result<(std::fs::File, u64), String> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        Ok((f, len))
    }

    /// The event of one request, as it is written.
    pub fn event(&self, level: Level, r: &Record) -> Value {
        let user = |u: &User| {
            let mut v = json!({"username": u.name, "groups": u.groups});
            if !u.uid.is_empty() {
                v["uid"] = u.uid.clone().into();
            }
            v
        };
        let (real, impersonated) = match r.impersonator {
            Some(i) => (i, Some(r.user)),
            None => (r.user, None),
        };
        let a = r.attrs;
        let mut e = json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": level.name(),
            "auditID": uuid::Uuid::new_v4().to_string(),
            "stage": if r.long_running { "ResponseStarted" } else { "ResponseComplete" },
            "requestURI": r.uri, "verb": a.verb, "user": user(real),
            "sourceIPs": r.source.map(|s| vec![s.to_string()]).unwrap_or_default(),
            "responseStatus": {"metadata": {}, "code": r.code},
            "requestReceivedTimestamp": r.received,
            "stageTimestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "annotations": {
                "authorization.k8s.io/decision": if r.allowed { "allow" } else { "forbid" },
                "authorization.k8s.io/reason": r.reason,
            },
        });
        for (k, v) in r.annotations {
            e["annotations"][k] = v.clone().into();
        }
        if let Some(u) = impersonated {
            e["impersonatedUser"] = user(u);
        }
        if let Some(ua) = r.user_agent {
            e["userAgent"] = ua.into();
        }
        if a.resource_request {
            let mut o = json!({"resource": a.resource, "apiGroup": a.api_group});
            for (k, v) in [("namespace", &a.namespace), ("name", &a.name), ("subresource", &a.subresource)] {
                if !v.is_empty() {
                    o[k] = v.clone().into();
                }
            }
            e["objectRef"] = o;
        }
        if level >= Level::Request {
            if let Some(b) = r.body.filter(|b| !b.is_empty()) {
                let text = String::from_utf8_lossy(b);
                if let Ok(v) = serde_yaml_ng::from_str::<Value>(&text) {
                    e["requestObject"] = v;
                }
            }
        }
        e
    }

    /// Writes one request's event, if the policy records it.
    pub fn record(&self, r: &Record) {
        let level = self.policy.level(r.user, r.attrs);
        if level == Level::None {
            return;
        }
        let mut line = self.event(level, r).to_string();
        line.push('\n');
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|(_, len)| len + line.len() as u64 > self.max_bytes) {
            *guard = None;
            self.rotate();
        }
        if guard.is_none() {
            match self.open_file() {
                Ok(f) => *guard = Some(f),
                Err(e) => {
                    tracing::warn!("tug-scheduler: audit log: {e}");
                    return;
                }
            }
        }
        if let Some((f, len)) = guard.as_mut() {
            match f.write_all(line.as_bytes()) {
                Ok(()) => *len += line.len() as u64,
                Err(e) => tracing::warn!("tug-scheduler: audit log {}: {e}", self.path.display()),
            }
        }
    }

    /// PATH → PATH.1 → … → PATH.N (the oldest dropped).
    fn rotate(&self) {
        let name = |i: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if self.backups == 0 {
            let _ = std::fs::remove_file(&self.path);
            return;
        }
        let _ = std::fs::remove_file(name(self.backups));
        for i in (1..self.backups).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        let _ = std::fs::rename(&self.path, name(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_picks_levels_by_first_match() {
        let p = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  nonResourceURLs: [/healthz, /version]\n- level: Metadata\n  resources: [{group: '', resources: [secrets, configmaps]}]\n- level: Request\n  verbs: [create, update, patch, delete]\n- level: Metadata\n",
        )
        .unwrap();
        let alice = User::new("alice", Vec::new());
        let r = |verb: &str, res: &str| Attributes::resource(verb, "", res, "default", "x");
        assert_eq!(
            p.level(&alice, &r("create", "secrets")),
            Level::Metadata,
            "secrets' bodies are never kept"
        );
        assert_eq!(p.level(&alice, &r("create", "pods")), Level::Request);
        assert_eq!(p.level(&alice, &r("get", "pods")), Level::Metadata);
        let health = Attributes { verb: "get".into(), path: "/healthz".into(), ..Attributes::default() };
        assert_eq!(p.level(&alice, &health), Level::None);
        assert!(Policy::parse("apiVersion: v1\nkind: Policy\n").is_err());
    }

    #[test]
    fn events_in_kubernetes_shape_and_rotation_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = Log::open(path.clone(), 1, 2, Policy::default()).unwrap();
        let alice = User::new("alice", ["dev".to_string()]);
        let a = Attributes::resource("create", "", "pods/exec", "default", "web");
        let rec = Record {
            user: &alice,
            impersonator: None,
            attrs: &a,
            uri: "/api/v1/namespaces/default/pods/web/exec",
            source: Some("127.0.0.1"),
            user_agent: None,
            allowed: false,
            reason: "",
            code: 403,
            received: "2026-12-05T00:00:00Z".into(),
            long_running: false,
            body: None,
            annotations: &[],
        };
        log.record(&rec);
        let line = std::fs::read_to_string(&path).unwrap();
        let e: Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(e["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(e["user"]["username"], "alice");
        assert_eq!(e["objectRef"]["subresource"], "exec");
        assert_eq!(e["responseStatus"]["code"], 403);
        assert_eq!(e["annotations"]["authorization.k8s.io/decision"], "forbid");
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        for _ in 0..5000 {
            log.record(&rec);
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 1 << 20);
        assert!(dir.path().join("audit.log.1").exists() && !dir.path().join("audit.log.3").exists());
    }
}
