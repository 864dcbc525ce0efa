//! The resource kinds, by API group.

pub mod apps;
pub mod batch;
pub mod cluster;
pub mod core;
pub mod discovery;
pub mod lb;
pub mod networking;
pub mod pod;
pub mod policy;
pub mod quota;
pub mod rbac;
pub mod rollouts;
pub mod storage;
pub mod vpa;
