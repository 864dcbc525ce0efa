//! `tug-agent`: the root daemon on each host.
//!
//! It will register the node, converge the pods bound to it (images, network namespaces,
//! volumes, one `tug-shim` supervisor per container), run probes, program the service proxy
//! and answer DNS. It is the only component besides the shim that talks to the host kernel.
//!
//! The agent issue builds it; until then this crate has no binary, and `make run` says so
//! instead of starting one.
