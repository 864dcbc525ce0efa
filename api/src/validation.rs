//! Kubernetes' naming rules and the error type that carries a field path.

use std::fmt;

/// One problem with one field: `spec.replicas: must be greater than or equal to 0`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Collects field errors under a path prefix.
#[derive(Debug, Default)]
pub struct Errors {
    pub list: Vec<FieldError>,
}

impl Errors {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(FieldError { field: field.into(), message: message.into() });
    }

    pub fn into_result(self) -> Result<(), Vec<FieldError>> {
        if self.list.is_empty() { Ok(()) } else { Err(self.list) }
    }
}

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

/// A DNS-1123 label (`my-name`, up to 63 characters): Kubernetes' message when it is not.
pub fn dns1123_label(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= DNS1123_LABEL_MAX
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        return Ok(());
    }
    if value.len() > DNS1123_LABEL_MAX {
        return Err(format!("must be no more than {DNS1123_LABEL_MAX} characters"));
    }
    Err(format!(
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?'), got {value:?}"
    ))
}

/// A DNS-1123 subdomain (`example.com`, up to 253 characters).
pub fn dns1123_subdomain(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= DNS1123_SUBDOMAIN_MAX
        && value.split('.').all(|part| dns1123_label(part).is_ok());
    if ok {
        return Ok(());
    }
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!("must be no more than {DNS1123_SUBDOMAIN_MAX} characters"));
    }
    Err(format!(
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*'), got {value:?}"
    ))
}

/// A label or annotation key: an optional DNS subdomain prefix and `/`, then a name of up to
/// 63 characters of alphanumerics, `-`, `_` and `.` that starts and ends alphanumeric.
pub fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        dns1123_subdomain(p).map_err(|e| format!("prefix part {e}"))?;
    }
    label_value_like(name, true).map_err(|e| format!("name part {e}"))
}

/// A label value: empty, or up to 63 characters of alphanumerics, `-`, `_` and `.` that start
/// and end alphanumeric.
pub fn label_value(value: &str) -> Result<(), String> {
    label_value_like(value, false)
}

fn label_value_like(v: &str, required: bool) -> Result<(), String> {
    if v.is_empty() {
        return if required { Err("must be non-empty".into()) } else { Ok(()) };
    }
    if v.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let ok = v.chars().all(|c| alnum(c) || "-_.".contains(c))
        && v.chars().next().is_some_and(alnum)
        && v.chars().last().is_some_and(alnum);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, got {v:?}"
        ))
    }
}

/// An IANA service name (a named port): up to 15 lowercase alphanumerics and `-`, at least one
/// letter, no leading, trailing or double `-`.
pub fn port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be no more than 15 lowercase alphanumeric characters or '-' with at least one letter, got {name:?}"
        ))
    }
}

/// A port number 1..=65535.
pub fn port_number(port: i64) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("must be between 1 and 65535, inclusive, got {port}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "web-1", "0abc", &"a".repeat(63)] {
            assert!(dns1123_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Web", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad}");
        }
        assert!(dns1123_subdomain("tug.io").is_ok());
        assert!(dns1123_subdomain("tug..io").is_err());
    }

    #[test]
    fn label_keys_and_values() {
        for ok in ["app", "app.kubernetes.io/name", "tug.io/gpu", "a_b.c-d"] {
            assert!(qualified_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/app", "-app", "Tug.IO/x", "a/b/c"] {
            assert!(qualified_name(bad).is_err(), "{bad}");
        }
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_3").is_ok());
        assert!(label_value("-x").is_err());
    }

    #[test]
    fn ports() {
        assert!(port_name("http").is_ok());
        assert!(port_name("8080").is_err());
        assert!(port_name("a--b").is_err());
        assert!(port_number(0).is_err());
        assert!(port_number(65535).is_ok());
    }
}
