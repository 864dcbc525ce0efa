//! `tug-client`: how `tug` and `tug-agent` talk to the control plane — HTTP/1.1 over its Unix
//! socket or over TCP with TLS ([`http`]), the TLS set-up from a credentials directory and the
//! CA pinning of a join ([`tls`]), the join itself ([`join`]), and the relay of exec and
//! attach sessions that the agent and the API server share ([`relay`]).

pub mod http;
pub mod join;
pub mod relay;
pub mod tls;

pub use http::{CallError, Client, WatchEnd};
pub use hyper::Method;
