//! Access control: who is asking ([`authn`]), what they ask ([`attributes`]), and whether they
//! may ([`Authorizer`]: `system:masters`, then the node authorizer ([`node`]), then RBAC
//! ([`rbac`])) — Kubernetes' model, its names and its refusal messages.

pub mod audit;
pub mod authn;
pub mod node;
pub mod podsecurity;
pub mod policy;
pub mod rbac;
pub mod serviceaccounts;
pub mod tokens;

use crate::store::Store;
use std::collections::HashMap;
use std::sync::Arc;
use tug_api::status::{Status, StatusDetails};

/// The group whose members may do anything.
pub const MASTERS: &str = "system:masters";
/// Every authenticated user is in it.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The anonymous user's group.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// Nodes' group; a node's user is `system:node:<name>`.
pub const NODES: &str = "system:nodes";
/// Who presents the join token.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
pub const NODE_PREFIX: &str = "system:node:";

/// An authenticated identity: Kubernetes' `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl User {
    /// A user with these groups, and `system:authenticated`.
    pub fn new(name: impl Into<String>, groups: impl IntoIterator<Item = String>) -> User {
        let mut groups: Vec<String> = groups.into_iter().collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.into());
        }
        User { name: name.into(), uid: String::new(), groups }
    }

    /// Root on the control plane's socket.
    pub fn admin() -> User {
        User::new("system:admin", [MASTERS.to_string()])
    }

    pub fn anonymous() -> User {
        User { name: "system:anonymous".into(), uid: String::new(), groups: vec![UNAUTHENTICATED.into()] }
    }

    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }

    /// The node this user is, when it is one (`system:node:NAME` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        self.name.strip_prefix(NODE_PREFIX).filter(|n| !n.is_empty() && self.in_group(NODES))
    }
}

/// What a request asks: Kubernetes' authorization attributes (`RequestInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection` for
    /// resources; the lowercase HTTP method for other paths.
    pub verb: String,
    pub resource_request: bool,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The request path (what non-resource rules match).
    pub path: String,
}

impl Attributes {
    /// A resource request's attributes.
    pub fn resource(verb: &str, group: &str, resource: &str, namespace: &str, name: &str) -> Attributes {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    /// `pods`, `pods/log`.
    pub fn combined_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// The attributes of a request: `/api/v1/...` and `/apis/GROUP/VERSION/...` are resource
/// requests (Kubernetes' `RequestInfoFactory`); anything else is a non-resource path.
pub fn attributes(method: &str, path: &str, query: &HashMap<String, String>) -> Attributes {
    let non_resource =
        || Attributes { verb: method.to_ascii_lowercase(), path: path.to_string(), ..Attributes::default() };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
        _ => return non_resource(),
    };
    let mut parts: Vec<&str> = rest.to_vec();
    let mut namespace = "";
    if parts[0] == "namespaces" && parts.len() > 1 {
        namespace = parts[1];
        // `namespaces/NAME` and `namespaces/NAME/status` address the namespace itself.
        if parts.len() > 2 && !["status", "finalize"].contains(&parts[2]) {
            parts.drain(..2);
        }
    }
    let resource = parts[0];
    let name = parts.get(1).copied().unwrap_or("");
    let subresource = parts.get(2).copied().unwrap_or("");
    let watch = query.get("watch").is_some_and(|v| tug_api::query_bool(v));
    let verb = match (method, name.is_empty()) {
        ("POST", _) => "create",
        ("GET" | "HEAD", true) if watch => "watch",
        ("GET" | "HEAD", true) => "list",
        ("GET" | "HEAD", false) if watch => "watch",
        ("GET" | "HEAD", false) => "get",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        _ => "",
    };
    // A websocket exec is a GET, but it runs a process: always `create`, as Kubernetes 1.30+.
    let verb = if resource == "pods" && ["exec", "attach", "portforward"].contains(&subresource) {
        "create"
    } else {
        verb
    };
    Attributes {
        subresource: subresource.into(),
        path: path.into(),
        ..Attributes::resource(verb, group, resource, namespace, name)
    }
}

/// Kubernetes' 403 for a refused request: `pods "web" is forbidden: User "alice" cannot get
/// resource "pods" in API group "" in the namespace "default"[: reason]`.
pub fn forbidden(user: &User, a: &Attributes, reason: &str) -> Status {
    let mut why = if !a.resource_request {
        format!("User {:?} cannot {} path {:?}", user.name, a.verb, a.path)
    } else if a.namespace.is_empty() {
        format!(
            "User {:?} cannot {} resource {:?} in API group {:?} at the cluster scope",
            user.name,
            a.verb,
            a.combined_resource(),
            a.api_group
        )
    } else {
        format!(
            "User {:?} cannot {} resource {:?} in API group {:?} in the namespace {:?}",
            user.name,
            a.verb,
            a.combined_resource(),
            a.api_group,
            a.namespace
        )
    };
    if !reason.is_empty() {
        why = format!("{why}: {reason}");
    }
    forbidden_because(a, &why)
}

/// A 403 about the request's resource (or path) with this explanation.
pub fn forbidden_because(a: &Attributes, why: &str) -> Status {
    if !a.resource_request {
        let mut s = Status::forbidden(format!("forbidden: {why}"));
        s.details = Some(StatusDetails { name: Some(a.path.clone()), ..StatusDetails::default() });
        return s;
    }
    let qualified =
        if a.api_group.is_empty() { a.resource.clone() } else { format!("{}.{}", a.resource, a.api_group) };
    let message = if a.name.is_empty() {
        format!("{qualified} is forbidden: {why}")
    } else {
        format!("{qualified} {:?} is forbidden: {why}", a.name)
    };
    let mut s = Status::forbidden(message);
    s.details = Some(StatusDetails {
        name: (!a.name.is_empty()).then(|| a.name.clone()),
        group: (!a.api_group.is_empty()).then(|| a.api_group.clone()),
        kind: Some(a.resource.clone()),
        ..StatusDetails::default()
    });
    s
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused, and no later authorizer is asked.
    Deny(String),
    /// Not this authorizer's to decide (with what it would say).
    NoOpinion(String),
    /// Undecided: what it needed to read could not be read (the store is unavailable). The
    /// request ends with a 503 the client retries, not with a 403 it would take as final.
    Unavailable(String),
}

/// The authorizer chain, with its caches.
pub struct Authorizer {
    store: Arc<dyn Store>,
    pub rbac: Arc<rbac::Cache>,
}

impl Authorizer {
    pub fn new(store: Arc<dyn Store>) -> Authorizer {
        Authorizer { rbac: Arc::new(rbac::Cache::new(store.clone())), store }
    }

    /// Allow, or the reason for a refusal. Blocking (it may read the store).
    pub fn decide(&self, user: &User, a: &Attributes) -> Decision {
        if user.in_group(MASTERS) {
            return Decision::Allow;
        }
        let mut reasons = Vec::new();
        if let Some(node) = user.node_name() {
            match node::authorize(self.store.as_ref(), node, a) {
                Decision::Allow => return Decision::Allow,
                d @ (Decision::Deny(_) | Decision::Unavailable(_)) => return d,
                Decision::NoOpinion(r) if !r.is_empty() => reasons.push(r),
                Decision::NoOpinion(_) => {}
            }
        }
        match self.rbac.index() {
            Ok(index) if index.allows(user, a) => Decision::Allow,
            Ok(_) => Decision::NoOpinion(reasons.join("; ")),
            Err(e) => Decision::Unavailable(format!("RBAC could not read its roles and bindings: {e}")),
        }
    }

    /// The answer when it needs no store read (`system:masters`, or RBAC with its index
    /// loaded, for a user who is not a node): the common case is decided on the async
    /// thread, without handing it to a blocking one.
    pub fn check_cached(&self, user: &User, a: &Attributes) -> Option<Result<(), Status>> {
        if user.in_group(MASTERS) {
            return Some(Ok(()));
        }
        if user.node_name().is_some() {
            return None;
        }
        let index = self.rbac.cached()?;
        Some(if index.allows(user, a) { Ok(()) } else { Err(forbidden(user, a, "")) })
    }

    /// The request may go on, or the 403 that ends it.
    pub fn check(&self, user: &User, a: &Attributes) -> Result<(), Status> {
        match self.decide(user, a) {
            Decision::Allow => Ok(()),
            Decision::Deny(r) | Decision::NoOpinion(r) => Err(forbidden(user, a, &r)),
            Decision::Unavailable(r) => Err(Status::new(503, "ServiceUnavailable", r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: &str, path: &str, query: &str) -> String {
        let q: HashMap<String, String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        let a = attributes(method, path, &q);
        if a.resource_request {
            format!("{} {}|{}|{}|{}", a.verb, a.api_group, a.combined_resource(), a.namespace, a.name)
        } else {
            format!("{} {}", a.verb, a.path)
        }
    }

    #[test]
    fn request_attributes_as_kubernetes_derives_them() {
        assert_eq!(attrs("GET", "/api/v1/pods", ""), "list |pods||");
        assert_eq!(attrs("GET", "/api/v1/namespaces/a/pods", "watch=true"), "watch |pods|a|");
        assert_eq!(attrs("GET", "/api/v1/namespaces/a/pods/web", ""), "get |pods|a|web");
        assert_eq!(attrs("GET", "/api/v1/namespaces/a/pods/web/log", ""), "get |pods/log|a|web");
        assert_eq!(attrs("GET", "/api/v1/namespaces/a/pods/web/exec", ""), "create |pods/exec|a|web");
        assert_eq!(attrs("POST", "/api/v1/namespaces/a/pods/web/exec", ""), "create |pods/exec|a|web");
        assert_eq!(attrs("PUT", "/api/v1/namespaces/a/pods/web/status", ""), "update |pods/status|a|web");
        assert_eq!(attrs("DELETE", "/api/v1/namespaces/a/pods", ""), "deletecollection |pods|a|");
        assert_eq!(attrs("GET", "/api/v1/namespaces/a", ""), "get |namespaces|a|a");
        assert_eq!(attrs("PUT", "/api/v1/namespaces/a/status", ""), "update |namespaces/status|a|a");
        assert_eq!(attrs("GET", "/api/v1/nodes/n1/tunnel", ""), "get |nodes/tunnel||n1");
        assert_eq!(
            attrs("PATCH", "/apis/apps/v1/namespaces/a/deployments/web/scale", ""),
            "patch apps|deployments/scale|a|web"
        );
        assert_eq!(attrs("GET", "/apis/metrics.k8s.io/v1beta1/nodes", ""), "list metrics.k8s.io|nodes||");
        assert_eq!(attrs("POST", "/join", ""), "post /join");
        assert_eq!(attrs("GET", "/version", ""), "get /version");
        assert_eq!(attrs("GET", "/apis", ""), "get /apis");
        assert_eq!(attrs("GET", "/api/v1", ""), "get /api/v1");
    }

    #[test]
    fn refusals_in_kubernetes_words() {
        let alice = User::new("alice", Vec::new());
        let a = Attributes::resource("get", "", "pods", "default", "web");
        assert_eq!(
            forbidden(&alice, &a, "").message,
            r#"pods "web" is forbidden: User "alice" cannot get resource "pods" in API group "" in the namespace "default""#
        );
        let a = Attributes::resource("list", "apps", "deployments", "", "");
        assert_eq!(
            forbidden(&alice, &a, "").message,
            r#"deployments.apps is forbidden: User "alice" cannot list resource "deployments" in API group "apps" at the cluster scope"#
        );
        let a = Attributes::resource("create", "", "pods/exec", "dev", "web");
        let s = forbidden(&alice, &a, "");
        assert!(s.message.contains(r#"cannot create resource "pods/exec" in API group """#), "{}", s.message);
        assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
        let a = attributes("GET", "/metrics", &HashMap::new());
        assert_eq!(
            forbidden(&alice, &a, "").message,
            r#"forbidden: User "alice" cannot get path "/metrics""#
        );
    }

    #[test]
    fn node_identity() {
        let n = User::new("system:node:n1", [NODES.to_string()]);
        assert_eq!(n.node_name(), Some("n1"));
        assert_eq!(User::new("system:node:n1", Vec::new()).node_name(), None);
        assert!(User::admin().in_group(MASTERS) && User::admin().in_group(AUTHENTICATED));
    }
}
