//! The documents Tug reads from registries and archives: OCI and Docker v2 schema 2 image
//! manifests, OCI indexes and Docker manifest lists, and the image config. Only the fields
//! Tug uses; unknown fields are ignored (registries add their own).

use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

/// Every manifest media type Tug asks registries for.
pub const ACCEPTED: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A manifest or an index: which one is told by `mediaType` or, failing that, by which list
/// the document has.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image manifest: a config and layers, bottom first.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug)]
pub enum Parsed {
    Manifest(Manifest),
    Index(Vec<Descriptor>),
}

/// Parses a manifest or index, with an error naming what is wrong.
pub fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let doc: Document = serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
    if doc.schema_version != 2 {
        return Err(format!("schemaVersion {} is not supported (only 2)", doc.schema_version));
    }
    let is_index = match doc.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => return Err(format!("media type {other:?} is not an image manifest or index")),
        None => doc.manifests.is_some(),
    };
    if is_index {
        return Ok(Parsed::Index(doc.manifests.unwrap_or_default()));
    }
    let config = doc.config.ok_or("manifest has no config")?;
    let layers = doc.layers.unwrap_or_default();
    for d in std::iter::once(&config).chain(&layers) {
        Digest::parse(&d.digest)?;
    }
    for l in &layers {
        compression(&l.media_type)?;
    }
    Ok(Parsed::Manifest(Manifest { config, layers }))
}

/// How a layer is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub fn compression(media_type: &str) -> Result<Compression, String> {
    match media_type {
        OCI_LAYER | DOCKER_LAYER => Ok(Compression::None),
        OCI_LAYER_GZIP
        | DOCKER_LAYER_GZIP
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
        OCI_LAYER_ZSTD | DOCKER_LAYER_ZSTD => Ok(Compression::Zstd),
        other => Err(format!("layer media type {other:?} is not a tar, tar+gzip or tar+zstd layer")),
    }
}

/// The node's platform in OCI's words.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform { architecture: architecture.to_string(), os: "linux".to_string(), variant: None }
}

/// The index entry for `platform`: os and architecture must match; a variant, when both
/// name one, too.
pub fn select<'a>(entries: &'a [Descriptor], platform: &Platform) -> Option<&'a Descriptor> {
    entries.iter().find(|e| {
        e.platform.as_ref().is_some_and(|p| {
            p.os == platform.os
                && p.architecture == platform.architecture
                && (platform.variant.is_none() || p.variant.is_none() || p.variant == platform.variant)
        })
    })
}

/// The image config: how to run it and the uncompressed digests of its layers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, String> {
        let c: ImageConfig =
            serde_json::from_slice(bytes).map_err(|e| format!("not an image config: {e}"))?;
        for d in &c.rootfs.diff_ids {
            Digest::parse(d)?;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
            }),
            annotations: None,
        }
    }

    #[test]
    fn selects_the_platform() {
        let e = [entry("arm64", Some("v8"), "a"), entry("amd64", None, "b")];
        let amd = Platform { architecture: "amd64".into(), os: "linux".into(), variant: None };
        assert_eq!(select(&e, &amd).unwrap().digest, "b");
        let s390 = Platform { architecture: "s390x".into(), os: "linux".into(), variant: None };
        assert!(select(&e, &s390).is_none());
    }

    #[test]
    fn parses_manifests_and_indexes() {
        let d = Digest::of(b"x");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"x","digest":"{d}","size":1}},
            "layers":[{{"mediaType":"{OCI_LAYER_ZSTD}","digest":"{d}","size":1}}]}}"#
        );
        let Parsed::Manifest(m) = parse(m.as_bytes()).unwrap() else { panic!() };
        assert_eq!(compression(&m.layers[0].media_type), Ok(Compression::Zstd));
        let i = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse(i.as_bytes()).unwrap(), Parsed::Index(_)));
        assert!(parse(br#"{"schemaVersion":1}"#).unwrap_err().contains("schemaVersion 1"));
        let bad = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{d}","size":1}},"layers":[{{"mediaType":"text/plain","digest":"{d}","size":1}}]}}"#
        );
        assert!(parse(bad.as_bytes()).unwrap_err().contains("text/plain"));
    }
}
