//! CIDR blocks: the API crate's, shared with the control plane that hands out pod CIDRs.

pub use tug_api::cidr::*;
