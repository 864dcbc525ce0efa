//! `tug-shim`: Tug's OCI runtime and per-container supervisor.
