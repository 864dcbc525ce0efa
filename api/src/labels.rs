//! Label selectors: the string form (`app=web,tier!=db,env in (a,b),!canary`) users pass with
//! `-l`, and the structured `LabelSelector` of manifests; both compile to [`Selector`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// One requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// All requirements must hold; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

impl Selector {
    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Parses the string form.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(Selector { requirements })
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let key_ok =
        |k: &str| crate::validation::qualified_name(k).map_err(|e| format!("invalid label key {k:?}: {e}"));
    let val_ok =
        |v: &str| crate::validation::label_value(v).map_err(|e| format!("invalid label value {v:?}: {e}"));
    if let Some(k) = part.strip_prefix('!') {
        key_ok(k.trim())?;
        return Ok(Requirement::DoesNotExist(k.trim().to_string()));
    }
    for (op, notin) in [(" notin ", true), (" in ", false)] {
        if let Some((k, rest)) = part.split_once(op) {
            let k = k.trim();
            key_ok(k)?;
            let inner = rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')'));
            let inner = inner.ok_or_else(|| format!("{part:?}: values must be in parentheses"))?;
            let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
            values.iter().try_for_each(|v| val_ok(v))?;
            return Ok(if notin {
                Requirement::NotIn(k.into(), values)
            } else {
                Requirement::In(k.into(), values)
            });
        }
    }
    for (op, not) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = part.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            key_ok(k)?;
            val_ok(v)?;
            return Ok(if not {
                Requirement::NotEquals(k.into(), v.into())
            } else {
                Requirement::Equals(k.into(), v.into())
            });
        }
    }
    key_ok(part)?;
    Ok(Requirement::Exists(part.to_string()))
}

/// The structured selector of manifests (`spec.selector` of a Deployment).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Compiles to a [`Selector`]; errors name the field under `path`.
    pub fn to_selector(&self, path: &str) -> Result<Selector, crate::validation::FieldError> {
        let fe = |field: String, message: String| crate::validation::FieldError { field, message };
        let mut requirements: Vec<Requirement> =
            self.match_labels.iter().map(|(k, v)| Requirement::Equals(k.clone(), v.clone())).collect();
        for (i, e) in self.match_expressions.iter().enumerate() {
            let field = format!("{path}.matchExpressions[{i}]");
            let needs_values = matches!(e.operator.as_str(), "In" | "NotIn");
            if needs_values == e.values.is_empty() {
                let msg = if needs_values {
                    "must be specified when `operator` is 'In' or 'NotIn'"
                } else {
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                };
                return Err(fe(format!("{field}.values"), msg.into()));
            }
            requirements.push(match e.operator.as_str() {
                "In" => Requirement::In(e.key.clone(), e.values.clone()),
                "NotIn" => Requirement::NotIn(e.key.clone(), e.values.clone()),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                other => {
                    return Err(fe(
                        format!("{field}.operator"),
                        format!("Unsupported value: {other:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""),
                    ));
                }
            });
        }
        Ok(Selector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn string_selectors() {
        let l = labels(&[("app", "web"), ("env", "prod")]);
        for (sel, want) in [
            ("app=web", true),
            ("app==web,env=prod", true),
            ("app!=web", false),
            ("env in (prod, staging)", true),
            ("env notin (prod)", false),
            ("app", true),
            ("!canary", true),
            ("!app", false),
            ("", true),
        ] {
            assert_eq!(Selector::parse(sel).unwrap().matches(&l), want, "{sel}");
        }
        assert!(Selector::parse("a in b").is_err());
        assert!(Selector::parse("-bad=x").is_err());
    }

    #[test]
    fn structured_selectors() {
        let s: LabelSelector = serde_json::from_str(
            r#"{"matchLabels":{"app":"web"},"matchExpressions":[{"key":"tier","operator":"NotIn","values":["db"]}]}"#,
        )
        .unwrap();
        let sel = s.to_selector("spec.selector").unwrap();
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "db")])));
        let bad: LabelSelector =
            serde_json::from_str(r#"{"matchExpressions":[{"key":"a","operator":"Maybe"}]}"#).unwrap();
        assert_eq!(
            bad.to_selector("spec.selector").unwrap_err().field,
            "spec.selector.matchExpressions[0].operator"
        );
    }
}
