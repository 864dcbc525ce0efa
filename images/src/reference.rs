//! Image names as users write them, normalised the way Docker and Kubernetes do:
//! `busybox` → `docker.io/library/busybox:latest`.

use oci_client::Reference;
use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageRef(pub Reference);

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let s = s.trim();
        // The grammar forbids upper case in names; say so rather than "invalid format".
        let name = s.split('@').next().unwrap_or(s);
        let name = match name.rsplit_once(':') {
            Some((n, tag)) if !tag.contains('/') => n,
            _ => name,
        };
        if name.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!("image {s:?}: repository names must be lower case"));
        }
        s.parse::<Reference>().map(ImageRef).map_err(|e| format!("image {s:?}: {e}"))
    }

    /// The registry's host (and port), `docker.io` for Docker Hub.
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// The normalised name the store keys images by.
    pub fn name(&self) -> String {
        self.0.whole()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.whole())
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.whole())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("team/web:1", "docker.io/team/web:1"),
            ("registry.example.com/team/web:1.4", "registry.example.com/team/web:1.4"),
            ("127.0.0.1:5000/x/y", "127.0.0.1:5000/x/y:latest"),
            ("localhost/x", "localhost/x:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(ImageRef::parse(input).unwrap().name(), want, "{input}");
        }
        let d = format!("reg:5000/web@sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&d).unwrap();
        assert_eq!(r.digest(), Some(format!("sha256:{}", "a".repeat(64)).as_str()));
        assert_eq!(r.registry(), "reg:5000");
        assert!(ImageRef::parse("Busybox:1").unwrap_err().contains("lower case"));
        assert!(ImageRef::parse("web@sha256:abc").is_err());
        assert!(ImageRef::parse("").is_err());
    }
}
