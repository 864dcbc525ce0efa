//! `tug-images`: where containers' root filesystems come from.
//!
//! - [`reference`]: image names as users write them (`busybox:1.36`, `reg:5000/team/web@sha256:…`).
//! - [`digest`]: content digests and hashing while reading or writing.
//! - [`manifest`]: the OCI and Docker manifest, index and config documents Tug reads.
//! - [`unpack`]: one layer tar → one directory in overlayfs' format (whiteouts as 0:0
//!   character devices, opaque directories as `trusted.overlay.opaque`), refusing entries that
//!   would escape it.
//! - [`store`]: the content-addressed store under `/var/lib/tug/images`: blobs by digest,
//!   layers unpacked once each, the image index, container snapshots, garbage collection.
//! - [`pull`]: registries through `oci-client`, verified blobs, one pull per image at a time.
//! - [`import`]: OCI image layouts (dir or tar) and `docker save` archives.
//! - [`auth`]: `kubernetes.io/dockerconfigjson` secrets → registry credentials.
//! - [`overlay`]: a container's rootfs: the image's layers under a fresh upper dir.

pub mod auth;
pub mod digest;
pub mod import;
pub mod manifest;
pub mod overlay;
pub mod pull;
pub mod reference;
pub mod store;
pub mod unpack;

pub use pull::{PullPolicy, Puller};
pub use reference::ImageRef;
pub use store::{ImageRecord, Store};

/// Where the image store lives unless told otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/tug/images";
