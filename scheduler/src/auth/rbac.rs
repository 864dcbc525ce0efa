//! RBAC: Kubernetes' evaluation of Roles, ClusterRoles and their bindings, over an index of
//! the four kinds rebuilt when one of them changes; and the escalation check (you cannot
//! grant what you do not hold).

use super::{Attributes, User};
use crate::store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tug_api::kinds::rbac::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};

/// The store prefix of every RBAC object.
pub const PREFIX: &str = "rbac.authorization.k8s.io/";

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// Whether `rule` allows the request (Kubernetes' `RuleAllows`).
pub fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    if !has(&rule.verbs, &a.verb) {
        return false;
    }
    if !a.resource_request {
        return rule
            .non_resource_urls
            .iter()
            .any(|u| u == "*" || *u == a.path || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p)));
    }
    let combined = a.combined_resource();
    has(&rule.api_groups, &a.api_group)
        && rule.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
        })
        && (rule.resource_names.is_empty() || rule.resource_names.contains(&a.name))
}

/// Whether a binding's subject is this user (a service account by its user name,
/// `system:serviceaccount:NS:NAME`; `namespace` is the binding's, for subjects without one).
pub fn subject_matches(s: &Subject, user: &User, namespace: &str) -> bool {
    match s.kind.as_str() {
        "User" => s.name == user.name,
        "Group" => user.in_group(&s.name),
        "ServiceAccount" => {
            let ns = s.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(namespace);
            user.name == format!("system:serviceaccount:{ns}:{}", s.name)
        }
        _ => false,
    }
}

/// Every Role, ClusterRole and binding, ready to evaluate.
#[derive(Default, Debug)]
pub struct Index {
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_bindings: Vec<ClusterRoleBinding>,
    bindings: HashMap<String, Vec<RoleBinding>>,
}

impl Index {
    /// From the store's objects (undecodable ones are skipped: they grant nothing).
    pub fn load(store: &dyn Store) -> Result<Index, StoreError> {
        let (items, _) = store.list(PREFIX)?;
        let mut ix = Index::default();
        for s in items {
            match s.object["kind"].as_str().unwrap_or_default() {
                "ClusterRole" => {
                    if let Ok(r) = serde_json::from_value::<ClusterRole>(s.object) {
                        ix.cluster_roles.insert(r.metadata.name, r.rules);
                    }
                }
                "Role" => {
                    if let Ok(r) = serde_json::from_value::<Role>(s.object) {
                        ix.roles.insert((r.metadata.namespace.unwrap_or_default(), r.metadata.name), r.rules);
                    }
                }
                "ClusterRoleBinding" => {
                    if let Ok(b) = serde_json::from_value::<ClusterRoleBinding>(s.object) {
                        ix.cluster_bindings.push(b);
                    }
                }
                "RoleBinding" => {
                    if let Ok(b) = serde_json::from_value::<RoleBinding>(s.object) {
                        ix.bindings
                            .entry(b.metadata.namespace.clone().unwrap_or_default())
                            .or_default()
                            .push(b);
                    }
                }
                _ => {}
            }
        }
        Ok(ix)
    }

    /// The rules a role reference names, from a binding in `namespace` ("" for a
    /// ClusterRoleBinding).
    fn role_rules(&self, kind: &str, name: &str, namespace: &str) -> &[PolicyRule] {
        let found = match kind {
            "ClusterRole" => self.cluster_roles.get(name),
            "Role" => self.roles.get(&(namespace.to_string(), name.to_string())),
            _ => None,
        };
        found.map_or(&[], Vec::as_slice)
    }

    /// Every rule the user holds in `namespace` (cluster-wide ones included; "" for only those).
    pub fn rules_for(&self, user: &User, namespace: &str) -> Vec<&PolicyRule> {
        let mut out = Vec::new();
        for b in &self.cluster_bindings {
            if b.subjects.iter().any(|s| subject_matches(s, user, "")) {
                out.extend(self.role_rules("ClusterRole", &b.role_ref.name, ""));
            }
        }
        if !namespace.is_empty() {
            for b in self.bindings.get(namespace).into_iter().flatten() {
                if b.subjects.iter().any(|s| subject_matches(s, user, namespace)) {
                    out.extend(self.role_rules(&b.role_ref.kind, &b.role_ref.name, namespace));
                }
            }
        }
        out
    }

    /// Whether some binding grants the request.
    pub fn allows(&self, user: &User, a: &Attributes) -> bool {
        self.rules_for(user, &a.namespace).into_iter().any(|r| rule_allows(r, a))
    }

    /// The rules of a role a binding would grant, when the role exists.
    pub fn referenced(&self, kind: &str, name: &str, namespace: &str) -> Option<Vec<PolicyRule>> {
        match kind {
            "ClusterRole" => self.cluster_roles.get(name).cloned(),
            "Role" => self.roles.get(&(namespace.to_string(), name.to_string())).cloned(),
            _ => None,
        }
    }
}

/// The index, rebuilt on first use after an RBAC object changed (a store watch, and this
/// server's own writes, mark it stale).
pub struct Cache {
    store: Arc<dyn Store>,
    current: RwLock<Option<Arc<Index>>>,
}

impl Cache {
    pub fn new(store: Arc<dyn Store>) -> Cache {
        Cache { store, current: RwLock::new(None) }
    }

    pub fn index(&self) -> Result<Arc<Index>, StoreError> {
        if let Some(ix) = self.current.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(ix.clone());
        }
        let ix = Arc::new(Index::load(self.store.as_ref())?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(ix.clone());
        Ok(ix)
    }

    /// The index when it is loaded (no store read).
    pub fn cached(&self) -> Option<Arc<Index>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets the index: the next request loads the store's.
    pub fn invalidate(&self) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Follows the store's RBAC objects, marking the index stale on each change (another
    /// replica's writes, the aggregation controller's). Runs until the store closes.
    pub async fn follow(self: Arc<Self>) {
        loop {
            let rev = {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.revision()).await.ok().and_then(Result::ok)
            };
            self.invalidate();
            if let Some(w) = rev.and_then(|rev| self.store.watch(PREFIX, rev).ok()) {
                let mut w = w;
                while let Some(Ok(_)) = w.next().await {
                    self.invalidate();
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

/// One verb on one resource of one group (or one name of it), or one verb on one URL: the
/// atoms a rule is made of, for the escalation check.
fn atoms(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for url in &rule.non_resource_urls {
            out.push(PolicyRule {
                verbs: vec![verb.clone()],
                non_resource_urls: vec![url.clone()],
                ..PolicyRule::default()
            });
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                let one = |names: Vec<String>| PolicyRule {
                    verbs: vec![verb.clone()],
                    api_groups: vec![group.clone()],
                    resources: vec![resource.clone()],
                    resource_names: names,
                    ..PolicyRule::default()
                };
                if rule.resource_names.is_empty() {
                    out.push(one(Vec::new()));
                } else {
                    out.extend(rule.resource_names.iter().map(|n| one(vec![n.clone()])));
                }
            }
        }
    }
    out
}

/// Whether `owner` covers the atom `a` (Kubernetes' `ruleCovers`).
fn covers_atom(owner: &PolicyRule, a: &PolicyRule) -> bool {
    let verb = &a.verbs[0];
    if !has(&owner.verbs, verb) {
        return false;
    }
    if let Some(url) = a.non_resource_urls.first() {
        return owner
            .non_resource_urls
            .iter()
            .any(|o| o == "*" || o == url || o.strip_suffix('*').is_some_and(|p| url.starts_with(p)));
    }
    let resource = &a.resources[0];
    let resource_ok = owner.resources.iter().any(|o| {
        o == "*"
            || o == resource
            || resource.split_once('/').is_some_and(|(_, sub)| o.strip_prefix("*/") == Some(sub))
            || resource.split_once('/').is_some_and(|(r, _)| o.strip_suffix("/*") == Some(r))
    });
    let names_ok = owner.resource_names.is_empty()
        || (!a.resource_names.is_empty()
            && a.resource_names.iter().all(|n| owner.resource_names.contains(n)));
    has(&owner.api_groups, &a.api_groups[0]) && resource_ok && names_ok
}

/// The parts of `wanted` that `held` does not cover (empty when the grant is no escalation).
pub fn uncovered(held: &[&PolicyRule], wanted: &[PolicyRule]) -> Vec<PolicyRule> {
    wanted.iter().flat_map(atoms).filter(|a| !held.iter().any(|h| covers_atom(h, a))).collect()
}

/// An uncovered rule as Kubernetes prints it in the escalation refusal.
pub fn describe(r: &PolicyRule) -> String {
    let q = |l: &[String]| l.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" ");
    if !r.non_resource_urls.is_empty() {
        return format!("{{NonResourceURLs:[{}], Verbs:[{}]}}", q(&r.non_resource_urls), q(&r.verbs));
    }
    let names = if r.resource_names.is_empty() {
        String::new()
    } else {
        format!(", ResourceNames:[{}]", q(&r.resource_names))
    };
    format!(
        "{{APIGroups:[{}], Resources:[{}]{names}, Verbs:[{}]}}",
        q(&r.api_groups),
        q(&r.resources),
        q(&r.verbs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        PolicyRule {
            verbs: v(verbs),
            api_groups: v(groups),
            resources: v(resources),
            resource_names: v(names),
            non_resource_urls: Vec::new(),
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let a = |verb: &str, group: &str, res: &str, name: &str| {
            Attributes::resource(verb, group, res, "ns", name)
        };
        let r = rule(&["get", "list"], &[""], &["pods"], &[]);
        assert!(rule_allows(&r, &a("get", "", "pods", "web")));
        assert!(!rule_allows(&r, &a("delete", "", "pods", "web")));
        assert!(!rule_allows(&r, &a("get", "apps", "pods", "web")));
        assert!(!rule_allows(&r, &a("get", "", "pods/log", "web")), "a subresource is its own resource");
        assert!(rule_allows(&rule(&["get"], &[""], &["pods/log"], &[]), &a("get", "", "pods/log", "w")));
        assert!(rule_allows(&rule(&["get"], &[""], &["*/log"], &[]), &a("get", "", "pods/log", "w")));
        assert!(rule_allows(
            &rule(&["*"], &["*"], &["*"], &[]),
            &a("create", "apps", "deployments/scale", "")
        ));
        let named = rule(&["get"], &[""], &["secrets"], &["a"]);
        assert!(rule_allows(&named, &a("get", "", "secrets", "a")));
        assert!(!rule_allows(&named, &a("get", "", "secrets", "b")));
        assert!(!rule_allows(&named, &a("list", "", "secrets", "")));
        let urls = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/healthz".into(), "/apis/*".into()],
            ..PolicyRule::default()
        };
        let path = |p: &str| Attributes { verb: "get".into(), path: p.into(), ..Attributes::default() };
        assert!(rule_allows(&urls, &path("/healthz")));
        assert!(rule_allows(&urls, &path("/apis/apps")));
        assert!(!rule_allows(&urls, &path("/metrics")));
    }

    #[test]
    fn escalation_finds_what_is_not_held() {
        let held =
            [rule(&["get", "list"], &[""], &["pods", "secrets"], &[]), rule(&["*"], &["apps"], &["*"], &[])];
        let held: Vec<&PolicyRule> = held.iter().collect();
        assert!(uncovered(&held, &[rule(&["get"], &[""], &["pods"], &[])]).is_empty());
        assert!(uncovered(&held, &[rule(&["get"], &[""], &["secrets"], &["one"])]).is_empty());
        assert!(uncovered(&held, &[rule(&["delete"], &["apps"], &["deployments/scale"], &[])]).is_empty());
        let missing = uncovered(&held, &[rule(&["get", "delete"], &[""], &["pods"], &[])]);
        assert_eq!(missing.len(), 1);
        assert_eq!(describe(&missing[0]), r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#);
        assert_eq!(
            uncovered(&held, &[rule(&["get"], &["*"], &["pods"], &[])]).len(),
            1,
            "a wildcard is not held"
        );
    }

    fn group_subject(name: &str) -> Subject {
        Subject {
            kind: "Group".into(),
            api_group: Some(tug_api::kinds::rbac::GROUP.into()),
            name: name.into(),
            namespace: None,
        }
    }

    #[test]
    fn subjects() {
        let sa =
            Subject { kind: "ServiceAccount".into(), api_group: None, name: "bot".into(), namespace: None };
        let u = User::new("system:serviceaccount:dev:bot", Vec::new());
        assert!(subject_matches(&sa, &u, "dev"));
        assert!(!subject_matches(&sa, &u, "prod"));
        assert!(subject_matches(&group_subject(super::super::AUTHENTICATED), &u, ""));
    }
}
