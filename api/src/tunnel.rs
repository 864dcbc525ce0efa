//! The node tunnel: how the control plane reaches an agent for `tug logs` and `tug exec`
//! without dialling the node (which may sit behind NAT, and holds no server certificate).
//!
//! Each agent keeps a few idle connections open to its control plane, made with
//! `GET /api/v1/nodes/NAME/tunnel` and `Upgrade: tug-tunnel` (authenticated like every other
//! request of the agent). When a user asks for a pod's logs or an exec, the API server takes
//! one of the node's idle connections, writes one [`Request`] as a JSON line, and reads one
//! [`Reply`] line; the agent opens a fresh idle connection in its place. After an `ok` reply
//! the connection carries the answer: for logs, the log text until the end; for exec, the
//! supervisor's frames both ways (`tug_shim::supervisor::protocol::frame`: STDIN, CLOSE_STDIN
//! and RESIZE from the user; STDOUT, STDERR and EXIT to them), which the API server splices
//! onto the user's own upgraded connection (`Upgrade: tug-exec`).

use serde::{Deserialize, Serialize};

/// The `Upgrade` protocol of the agent's idle connections.
pub const TUNNEL_PROTOCOL: &str = "tug-tunnel";
/// The `Upgrade` protocol of `POST .../pods/NAME/exec`.
pub const EXEC_PROTOCOL: &str = "tug-exec";

/// Which container of which pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
}

/// What the API server asks of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// The container's log: `kubectl logs` options.
    #[serde(rename_all = "camelCase")]
    Logs {
        #[serde(flatten)]
        target: Target,
        follow: bool,
        /// Only the last this many lines.
        tail_lines: Option<u64>,
        /// The previous (terminated) instance of the container.
        previous: bool,
        timestamps: bool,
        /// Only what was written at or after this time (RFC 3339; `sinceSeconds` and
        /// `sinceTime` become it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
    },
    /// A process in the container.
    #[serde(rename_all = "camelCase")]
    Exec {
        #[serde(flatten)]
        target: Target,
        command: Vec<String>,
        stdin: bool,
        tty: bool,
    },
    /// The container's own stdio (`kubectl attach`): frames both ways, as after an exec.
    #[serde(rename_all = "camelCase")]
    Attach {
        #[serde(flatten)]
        target: Target,
        stdin: bool,
    },
    /// A TCP connection to `port` on the pod's loopback, made inside its network namespace
    /// (`kubectl port-forward`): after the reply, the connection's bytes both ways.
    #[serde(rename_all = "camelCase")]
    PortForward { namespace: String, pod: String, uid: String, port: u16 },
    /// The node's and its containers' resource usage: the answer is one [`Summary`] line.
    Stats,
}

/// Resource usage over the agent's last sampling window (kubelet's `/stats/summary`, cut
/// down to what `metrics.k8s.io` serves).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// CPU in billionths of a core, averaged over the window.
    pub cpu_nanocores: u64,
    pub memory_working_set_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerUsage {
    pub name: String,
    pub usage: Usage,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub containers: Vec<ContainerUsage>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// When the window ended (RFC 3339).
    pub timestamp: String,
    pub window_seconds: u64,
    pub node: Usage,
    pub pods: Vec<PodUsage>,
    /// The proxy's counts for weighted (canary) Service ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<ConnectionCounts>,
}

/// What the node's proxy saw of the connections it sent to one set of a weighted Service
/// port (a Rollout's stable Service), from the endpoints' replies: SYN-ACKs (`accepted`),
/// resets before the connection was established (`refused`) and after (`reset`). Counted
/// since the split began on this node; they only grow while it lasts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionCounts {
    pub namespace: String,
    pub service: String,
    /// The Service port's name.
    pub port: String,
    /// `canary` or `stable`.
    pub set: String,
    pub accepted: u64,
    pub refused: u64,
    pub reset: u64,
}

/// The agent's answer line: `{}` to go ahead, or the error to show the user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_flat_json_lines() {
        let r = Request::Logs {
            target: Target {
                namespace: "default".into(),
                pod: "web".into(),
                uid: "u".into(),
                container: "c".into(),
            },
            follow: true,
            tail_lines: Some(3),
            previous: false,
            timestamps: false,
            since: None,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.starts_with(r#"{"op":"logs","namespace":"default","pod":"web""#), "{text}");
        assert!(text.contains(r#""tailLines":3"#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert_eq!(serde_json::to_string(&Reply::default()).unwrap(), "{}");
    }
}
