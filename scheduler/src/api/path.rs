//! REST paths in Kubernetes' shapes → what they address. Pure.

use tug_api::object::{KINDS, KindInfo};
use tug_api::status::Status;

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A collection: every object of a kind, in one namespace or (`None`) in all.
    Collection { info: &'static KindInfo, namespace: Option<String> },
    /// One object, or its `status` subresource.
    Object { info: &'static KindInfo, namespace: Option<String>, name: String, status: bool },
}

impl Target {
    pub fn info(&self) -> &'static KindInfo {
        match self {
            Target::Collection { info, .. } | Target::Object { info, .. } => info,
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        match self {
            Target::Collection { namespace, .. } | Target::Object { namespace, .. } => namespace.as_deref(),
        }
    }
}

/// The store key of an object: `group/plural/namespace/name`.
pub fn key(info: &KindInfo, namespace: Option<&str>, name: &str) -> String {
    format!("{}/{}/{}/{}", info.group, info.plural, namespace.unwrap_or(""), name)
}

/// The store prefix of a collection.
pub fn prefix(info: &KindInfo, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{}/{}/{}/", info.group, info.plural, ns),
        None => format!("{}/{}/", info.group, info.plural),
    }
}

fn not_found(path: &str) -> Status {
    Status::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
}

/// Parses `/api/v1/...` or `/apis/GROUP/VERSION/...`.
pub fn parse(path: &str) -> Result<Target, Status> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found(path)),
    };
    let find = |plural: &str| {
        KINDS
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
            .ok_or_else(|| not_found(path))
    };
    let cluster = |info: &'static KindInfo| if info.namespaced { Err(not_found(path)) } else { Ok(info) };
    let namespaced = |info: &'static KindInfo| if info.namespaced { Ok(info) } else { Err(not_found(path)) };
    let s = |x: &str| x.to_string();
    match rest {
        [plural] => Ok(Target::Collection { info: find(plural)?, namespace: None }),
        ["namespaces", name, "status"] => {
            Ok(Target::Object { info: find("namespaces")?, namespace: None, name: s(name), status: true })
        }
        ["namespaces", ns, plural] => {
            Ok(Target::Collection { info: namespaced(find(plural)?)?, namespace: Some(s(ns)) })
        }
        [plural, name] => Ok(Target::Object {
            info: cluster(find(plural)?)?,
            namespace: None,
            name: s(name),
            status: false,
        }),
        [plural, name, "status"] => {
            Ok(Target::Object { info: cluster(find(plural)?)?, namespace: None, name: s(name), status: true })
        }
        ["namespaces", ns, plural, name] => Ok(Target::Object {
            info: namespaced(find(plural)?)?,
            namespace: Some(s(ns)),
            name: s(name),
            status: false,
        }),
        ["namespaces", ns, plural, name, "status"] => Ok(Target::Object {
            info: namespaced(find(plural)?)?,
            namespace: Some(s(ns)),
            name: s(name),
            status: true,
        }),
        _ => Err(not_found(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, expect: &str) {
        let got = match parse(path) {
            Ok(Target::Collection { info, namespace }) => format!("list {} {:?}", info.kind, namespace),
            Ok(Target::Object { info, namespace, name, status }) => {
                format!("get {} {:?} {name}{}", info.kind, namespace, if status { " status" } else { "" })
            }
            Err(s) => format!("{} {}", s.code, s.reason),
        };
        assert_eq!(got, expect, "{path}");
    }

    #[test]
    fn paths() {
        check("/api/v1/pods", "list Pod None");
        check("/api/v1/namespaces", "list Namespace None");
        check("/api/v1/namespaces/default", "get Namespace None default");
        check("/api/v1/namespaces/default/status", "get Namespace None default status");
        check("/api/v1/namespaces/default/pods", "list Pod Some(\"default\")");
        check("/api/v1/namespaces/default/pods/web", "get Pod Some(\"default\") web");
        check("/apis/apps/v1/namespaces/a/deployments/web/status", "get Deployment Some(\"a\") web status");
        check("/apis/apps/v1/deployments", "list Deployment None");
        check("/api/v1/pods/web", "404 NotFound");
        check("/apis/apps/v2/deployments", "404 NotFound");
        check("/api/v1/namespaces/default/widgets", "404 NotFound");
        check("/healthz/x", "404 NotFound");
    }
}
