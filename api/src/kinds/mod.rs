//! The resource kinds, by API group.

pub mod apps;
pub mod core;
pub mod pod;
