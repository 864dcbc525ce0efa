//! Registry credentials from `imagePullSecrets`: Secrets of type
//! `kubernetes.io/dockerconfigjson`, whose `.dockerconfigjson` is Docker's `config.json`.

use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<String>,
}

/// The registry host a `config.json` key names: keys may be bare hosts or URLs
/// (`https://index.docker.io/v1/`).
fn key_host(key: &str) -> &str {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io",
        h => h,
    }
}

/// Credentials for `registry` from one `.dockerconfigjson` document; `Ok(None)` when it has
/// none for that registry. `secret` names the Secret in errors.
pub fn from_dockerconfigjson(
    json: &[u8],
    registry: &str,
    secret: &str,
) -> Result<Option<Credentials>, String> {
    let cfg: DockerConfig = serde_json::from_slice(json)
        .map_err(|e| format!("secret {secret}: .dockerconfigjson is not Docker's config.json: {e}"))?;
    let want = key_host(registry);
    for (key, e) in &cfg.auths {
        if key_host(key) != want {
            continue;
        }
        if let (Some(u), Some(p)) = (&e.username, &e.password) {
            return Ok(Some(Credentials { username: u.clone(), password: p.clone() }));
        }
        if let Some(a) = &e.auth {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|e| format!("secret {secret}: auths[{key:?}].auth is not base64: {e}"))?;
            let text = String::from_utf8(raw)
                .map_err(|_| format!("secret {secret}: auths[{key:?}].auth is not UTF-8"))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| format!("secret {secret}: auths[{key:?}].auth is not \"user:password\""))?;
            return Ok(Some(Credentials { username: u.to_string(), password: p.to_string() }));
        }
        return Err(format!("secret {secret}: auths[{key:?}] has neither username/password nor auth"));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_credentials_by_host() {
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        let json = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"127.0.0.1:5000":{{"username":"al","password":"pw"}}}}}}"#
        );
        let hub = from_dockerconfigjson(json.as_bytes(), "docker.io", "s").unwrap().unwrap();
        assert_eq!((hub.username.as_str(), hub.password.as_str()), ("bob", "s3cret"));
        let local = from_dockerconfigjson(json.as_bytes(), "127.0.0.1:5000", "s").unwrap().unwrap();
        assert_eq!(local.username, "al");
        assert_eq!(from_dockerconfigjson(json.as_bytes(), "quay.io", "s").unwrap(), None);
        let bad = r#"{"auths":{"quay.io":{"auth":"!!"}}}"#;
        assert!(from_dockerconfigjson(bad.as_bytes(), "quay.io", "regcred").unwrap_err().contains("regcred"));
        assert!(format!("{local:?}").contains("redacted"));
    }
}
