//! Image names as users write them, normalised the way Docker and Kubernetes do:
//! `busybox` → `docker.io/library/busybox:latest`.
//!
//! The grammar is the distribution reference's (`[domain[:port]/]path[:tag][@digest]`),
//! checked by hand: oci-spec's parser is one regular expression whose compiled form held
//! 4 MiB of the agent's memory and took 26 ms to build at the first pod.

use oci_client::Reference;
use std::fmt;

const DOCKER_HUB: &str = "docker.io";
/// The longest repository name.
const NAME_MAX: usize = 255;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let s = s.trim();
        let err = |why: &str| format!("image {s:?}: {why}");
        if s.is_empty() {
            return Err(err("repository name must have at least one component"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (s, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t)),
            _ => (rest, None),
        };
        // Upper case is only for a registry's host: say so rather than "invalid format".
        let lower_case = |e: &str| err(&format!("repository names must be lower case ({e})"));
        if !valid_name(name) {
            if name.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(lower_case(name));
            }
            return Err(err("invalid reference format"));
        }
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(err("invalid reference format"));
        }
        if let Some(d) = digest {
            check_digest(d).map_err(&err)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (if first == "index.docker.io" { DOCKER_HUB } else { first }.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(lower_case(&repository));
        }
        if repository.len() > NAME_MAX {
            return Err(err(&format!("repository name must not be more than {NAME_MAX} characters")));
        }
        let tag = match (tag, digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(ImageRef { registry, repository, tag, digest: digest.map(str::to_string) })
    }

    /// The registry's host (and port), `docker.io` for Docker Hub.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The normalised name the store keys images by.
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// The registry client's form of it.
    pub fn oci(&self) -> Reference {
        let (r, p) = (self.registry.clone(), self.repository.clone());
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => Reference::with_tag_and_digest(r, p, t.clone(), d.clone()),
            (None, Some(d)) => Reference::with_digest(r, p, d.clone()),
            (t, None) => Reference::with_tag(r, p, t.clone().unwrap_or_else(|| "latest".into())),
        }
    }
}

/// `[domain/]component(/component)*`: the first part may be a domain (`host[:port]`) when
/// others follow; every other part is a path component.
fn valid_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    let path_ok = |ps: &[&str]| !ps.is_empty() && ps.iter().all(|p| valid_component(p));
    path_ok(&parts) || (parts.len() > 1 && valid_domain(parts[0]) && path_ok(&parts[1..]))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_component(p: &str) -> bool {
    let lower = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !p.starts_with(lower) || !p.ends_with(lower) {
        return false;
    }
    p.split(lower)
        .filter(|sep| !sep.is_empty())
        .all(|sep| matches!(sep, "." | "_" | "__") || sep.chars().all(|c| c == '-'))
}

/// `label(.label)*[:port]`, a label being letters, digits and inner `-`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    host.split('.').all(label) && port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// `[\w][\w.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    t.len() <= 128 && t.starts_with(word) && t.chars().all(|c| word(c) || c == '.' || c == '-')
}

/// `algorithm:hex` with a known algorithm and its length.
fn check_digest(d: &str) -> Result<(), &'static str> {
    let Some((alg, hex)) = d.split_once(':') else { return Err("invalid checksum digest format") };
    let alg_ok = alg.split(['-', '_', '+', '.']).all(|part| {
        part.starts_with(|c: char| c.is_ascii_alphabetic()) && part.chars().all(|c| c.is_ascii_alphanumeric())
    });
    if !alg_ok || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("invalid reference format");
    }
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != want {
        return Err("invalid checksum digest length");
    }
    Ok(())
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
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

    /// The same answers as the registry client's own (regex) parser, on names that pass and
    /// names that fail in every part of the grammar.
    #[test]
    fn agrees_with_the_distribution_grammar() {
        let hex = "0123456789abcdef".repeat(4);
        let long = "a".repeat(256);
        let long_tag = format!("x:{}", "t".repeat(129));
        let cases: Vec<String> = [
            "busybox",
            "busybox:1",
            "a/b/c:v1.2-rc_3",
            "a.b/c",
            "a_b/c",
            "a__b",
            "a___b",
            "a-b",
            "a--b",
            "a.-b",
            "a..b",
            "-a",
            "a-",
            "_a",
            "a.",
            "registry.example.com:5000/team/web:1.4",
            "127.0.0.1:5000/x/y",
            "localhost/x",
            "localhost:5000/x:y",
            "Localhost/x",
            "Reg.io/x",
            "reg-.io/x",
            "reg.io:/x",
            "reg.io:50a/x",
            "reg.io/X",
            "reg.io//x",
            "reg.io/x/",
            "/x",
            "x:",
            "x:-t",
            "x:.t",
            "x:_t",
            "x:t/y",
            "index.docker.io/x",
            "index.docker.io/a/b",
            "docker.io/x",
            "x@sha256:abc",
            "x@md5:0123456789abcdef0123456789abcdef",
            "x@sha256",
            "x@Sha256:00",
            "x:t@",
            "x@",
            "a:b:c",
            "a b",
            "a/b c",
            "é",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("x@sha256:{hex}"),
            format!("x:t@sha256:{hex}"),
            format!("x@sha512:{hex}"),
            format!("x@sha256:{hex}0"),
            format!("x@sha256:{}", hex.to_uppercase()),
            format!("x@sha256:{}g", &hex[1..]),
            format!("x@sha384:{hex}{}", &hex[..32]),
            long.clone(),
            format!("reg.io/{long}"),
            long_tag,
            format!("x:{}", "t".repeat(128)),
        ])
        .collect();
        for c in &cases {
            let ours = ImageRef::parse(c);
            let theirs = c.parse::<Reference>();
            // Docker refuses what the regex lets through as a repository in upper case.
            if theirs.as_ref().is_ok_and(|t| t.repository().chars().any(|ch| ch.is_ascii_uppercase())) {
                assert!(ours.unwrap_err().contains("lower case"), "{c:?}");
                continue;
            }
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{c:?}: ours {ours:?}, theirs {theirs:?}");
            if let (Ok(o), Ok(t)) = (ours, theirs) {
                assert_eq!(o.name(), t.whole(), "{c:?}");
                assert_eq!(o.oci(), t, "{c:?}");
            }
        }
    }
}
