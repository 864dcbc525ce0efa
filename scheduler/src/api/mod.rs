//! The API server: Kubernetes-shaped REST over HTTP/1.1 with JSON bodies (YAML accepted on
//! writes), served on a Unix socket.
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | collection | list (`labelSelector`, `fieldSelector`, `limit`/`continue`; streamed), or watch with `watch=true` (`resourceVersion`, `timeoutSeconds`) as a stream of JSON lines |
//! | POST | collection | create |
//! | GET, PUT, DELETE | object | read, replace (optimistic with `metadata.resourceVersion`), delete |
//! | PUT | object`/status` | replace the status only |
//! | PATCH | object, `Content-Type: application/apply-patch+yaml` | server-side apply: create or update; `X-Tug-Apply: created\|configured\|unchanged` |
//!
//! | GET | `/api/v1/namespaces/NS/pods/NAME/log` | the container's log (`container`, `follow`, `tailLines`, `previous`, `timestamps`), through the node's agent |
//! | POST | `/api/v1/namespaces/NS/pods/NAME/exec`, `Upgrade: tug-exec` | a process in the container (`container`, `command`…, `stdin`, `tty`); frames both ways after 101 |
//! | GET | `/apis/metrics.k8s.io/v1beta1/nodes[/NAME]`, `…/pods`, `…/namespaces/NS/pods[/NAME]` | NodeMetrics and PodMetrics from the agents' usage samples (`tug top`) |
//! | GET | `/api/v1/nodes/NAME/tunnel`, `Upgrade: tug-tunnel` | an agent's idle connection (`tug_api::tunnel`) |
//!
//! Every error is a `Status` object with Kubernetes' reason and code. Handlers never panic on
//! input; a body over 3 MiB is refused.

// Handlers return `Result<_, Status>`: the error is the response body Kubernetes clients
// expect, built once per failed request, so its size does not matter.
mod channels;
mod discovery;
#[allow(clippy::result_large_err)]
mod eviction;
pub mod flow;
#[allow(clippy::result_large_err)]
pub(crate) mod handlers;
#[allow(clippy::result_large_err)]
mod list;
#[allow(clippy::result_large_err)]
mod managed;
#[allow(clippy::result_large_err)]
pub mod metrics;
#[allow(clippy::result_large_err)]
pub mod objects;
#[allow(clippy::result_large_err)]
pub mod path;
mod portforward;
#[allow(clippy::result_large_err)]
mod review;
#[allow(clippy::result_large_err)]
pub mod services;
mod spdy;
#[allow(clippy::result_large_err)]
mod table;
#[allow(clippy::result_large_err)]
pub mod tunnel;
mod versions;
#[allow(clippy::result_large_err)]
mod watch;

use crate::store::Store;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get};
use std::sync::Arc;

/// What every handler shares.
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Where watches are served from when not the store itself: the in-memory copy the
    /// controllers read (`store::cache`), as the apiserver's watch cache does, on etcd —
    /// where every watch of the store's own is a stream etcd sends and this server decodes.
    pub watches: Option<Arc<dyn Store>>,
    /// The same in-memory copy, for lists that pick objects by a selector or show them as a
    /// table: it holds them decoded (`Cached::scan_fresh`).
    pub copy: Option<crate::store::cache::Cached>,
    /// The cluster CA and join token, for `POST /join`.
    pub pki: Option<Arc<crate::pki::Pki>>,
    /// Pod CIDRs handed to nodes as they register.
    pub node_cidrs: NodeCidrs,
    /// ClusterIPs and NodePorts handed to Services.
    pub services: services::ServiceRanges,
    /// Agents' idle connections, for `pods/NAME/log` and `pods/NAME/exec`.
    pub tunnels: tunnel::Tunnels,
    /// The authorizers (`None`: `--authorization-mode AlwaysAllow`, every authenticated
    /// request is allowed).
    pub auth: Option<Arc<crate::auth::Authorizer>>,
    /// What is encrypted at rest (`--encryption-config`), for `tug admin reencrypt`.
    pub encryption: Option<Arc<crate::store::encrypted::Config>>,
    /// The audit log (`--audit-log`).
    pub audit: Option<Arc<crate::auth::audit::Log>>,
    /// Service account tokens' signer (with a cluster CA).
    pub tokens: Option<Arc<crate::auth::tokens::Signer>>,
    /// The audiences a token must name one of (`--api-audiences`).
    pub audiences: Vec<String>,
    /// Requests' priority levels and their seats (`--max-requests-inflight`).
    pub flow: flow::Flow,
}

/// The cluster's pod range and the block size per node. A node created without
/// `spec.podCIDR` gets the lowest block no other node holds; the lock makes "look at the other
/// nodes, then create" one step for this server (several control-plane replicas over etcd
/// would need a reconciler to resolve a clash; there is one server today).
pub struct NodeCidrs {
    pub cluster: tug_api::cidr::Cidr4,
    pub mask: u8,
    pub lock: std::sync::Mutex<()>,
}

impl NodeCidrs {
    pub fn new(cluster: tug_api::cidr::Cidr4, mask: u8) -> NodeCidrs {
        NodeCidrs { cluster, mask, lock: std::sync::Mutex::new(()) }
    }
}

impl Default for NodeCidrs {
    fn default() -> NodeCidrs {
        NodeCidrs::new(
            tug_api::cidr::Cidr4 { network: std::net::Ipv4Addr::new(10, 244, 0, 0), prefix: 16 },
            24,
        )
    }
}

/// The largest request body accepted.
pub const MAX_BODY: usize = 3 << 20;

/// The HTTP routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/version", get(discovery::version))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(crate::metrics::serve))
        .route("/openapi/v2", get(discovery::openapi_v2))
        .route("/openapi/v3", get(discovery::openapi_v3_index))
        .route("/openapi/v3/{*gv}", get(discovery::openapi_v3))
        .route("/api", get(discovery::core))
        .route("/apis", get(discovery::apis))
        .route("/join", axum::routing::post(handlers::join))
        .route("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", axum::routing::post(review::access))
        .route("/apis/authentication.k8s.io/v1/selfsubjectreviews", axum::routing::post(review::whoami))
        .route("/apis/tug.io/v1/usercredentials", axum::routing::post(review::user_credentials))
        .route("/apis/tug.io/v1/reencryptions", axum::routing::post(review::reencrypt))
        .route(
            "/api/v1/namespaces/{ns}/serviceaccounts/{name}/token",
            axum::routing::post(review::token_request),
        )
        .route("/api/v1/nodes/{name}/tunnel", get(tunnel::accept))
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(tunnel::logs))
        .route("/api/v1/namespaces/{ns}/pods/{name}/exec", any(tunnel::exec))
        .route("/api/v1/namespaces/{ns}/pods/{name}/attach", any(tunnel::attach))
        .route("/api/v1/namespaces/{ns}/pods/{name}/portforward", any(portforward::serve))
        .route("/api/v1/namespaces/{ns}/pods/{name}/eviction", axum::routing::post(handlers::eviction))
        .route("/api/v1/namespaces/{ns}/pods/{name}/resize", any(handlers::resize))
        .route("/apis/apps/v1/namespaces/{ns}/{plural}/{name}/scale", any(handlers::scale))
        .route("/apis/argoproj.io/v1alpha1/namespaces/{ns}/{plural}/{name}/scale", any(handlers::scale))
        .route("/apis/metrics.k8s.io/v1beta1/nodes", get(metrics::nodes_all))
        .route("/apis/metrics.k8s.io/v1beta1/nodes/{name}", get(metrics::node_one))
        .route("/apis/metrics.k8s.io/v1beta1/pods", get(metrics::pods_all))
        .route("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods", get(metrics::pods_in))
        .route("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}", get(metrics::pod_one))
        .route("/api/{*rest}", any(handlers::dispatch))
        .route("/apis/{*rest}", any(handlers::dispatch))
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn(versions::converted))
        .layer(axum::middleware::from_fn(handlers::protobuf_bodies))
        .layer(axum::middleware::from_fn_with_state(state.clone(), handlers::authorize))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(crate::metrics::measure))
        .with_state(state)
}

/// Makes the namespaces every cluster has (`default`, `tug-system`, `tug-node-lease`), the
/// system PriorityClasses, the IngressClass `tug` and the default RBAC policy if they are
/// missing.
pub fn bootstrap(store: &dyn Store) -> Result<(), crate::store::StoreError> {
    // Replicas starting together on a fresh store race to make these: whoever loses finds
    // the object there, which is what it wanted.
    let create = |key: &str, obj: serde_json::Value| match store.create(key, obj) {
        Ok(_) | Err(crate::store::StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    };
    if let Some(info) = tug_api::object::lookup("priorityclasses") {
        for (name, value) in tug_api::kinds::cluster::SYSTEM_PRIORITY_CLASSES {
            let key = path::key(info, None, name);
            if store.get(&key)?.is_none() {
                let mut obj = serde_json::json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                    "metadata": {"name": name}, "value": value, "preemptionPolicy": "PreemptLowerPriority",
                    "description": "Used for system critical pods that must not be moved from their current node."});
                objects::on_create(&mut obj, &uuid::Uuid::new_v4().to_string(), &now());
                create(&key, obj)?;
            }
        }
    }
    for ns in ["default", "tug-system", crate::auth::node::LEASE_NAMESPACE] {
        let info = tug_api::object::lookup("namespaces").unwrap_or(&tug_api::object::KINDS[0]);
        let key = path::key(info, None, ns);
        if store.get(&key)?.is_none() {
            let mut obj = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}, "status": {"phase": "Active"}});
            objects::on_create(&mut obj, &uuid::Uuid::new_v4().to_string(), &now());
            obj["status"] = serde_json::json!({"phase": "Active"});
            create(&key, obj)?;
        }
    }
    // The built-in Ingress controller's class, the default one (k3s makes Traefik's).
    if let Some(info) = tug_api::object::lookup("ingressclasses") {
        use tug_api::kinds::networking::{DEFAULT_CLASS_ANNOTATION, INGRESS_CLASS, INGRESS_CONTROLLER};
        let key = path::key(info, None, INGRESS_CLASS);
        if store.get(&key)?.is_none() {
            let mut obj = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                "metadata": {"name": INGRESS_CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
                "spec": {"controller": INGRESS_CONTROLLER}});
            objects::on_create(&mut obj, &uuid::Uuid::new_v4().to_string(), &now());
            create(&key, obj)?;
        }
    }
    crate::auth::policy::bootstrap(store)
}

/// The current time as Kubernetes writes timestamps.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
