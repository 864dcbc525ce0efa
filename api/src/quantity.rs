//! Resource quantities as Kubernetes writes them: `500m`, `1.5`, `2`, `128Mi`, `1G`, `1e3`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A quantity, kept as the user wrote it, with its value in thousandths (milli-units), which
/// is exact for every suffix Kubernetes accepts down to `m`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity {
    text: String,
    millis: u128,
}

/// A string that is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$', got {0:?}"
)]
pub struct QuantityError(pub String);

impl Quantity {
    /// Parses a quantity. Negative quantities are refused (no resource is negative).
    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        let err = || QuantityError(text.to_string());
        let t = text.trim();
        let t = t.strip_prefix('+').unwrap_or(t);
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, suffix) = t.split_at(split);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(err());
        }
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        // The number as an integer count of 10^-frac.len() units.
        let digits = format!("{int}{frac}");
        let mantissa: u128 = digits.parse().map_err(|_| err())?;
        let scale_down = u32::try_from(frac.len()).map_err(|_| err())?;
        let (num_mul, den_pow10): (u128, u32) = match suffix {
            "" => (1000, 0),
            "m" => (1, 0),
            "k" => (1_000_000, 0),
            "M" => (1_000_000_000, 0),
            "G" => (1_000_000_000_000, 0),
            "T" => (1_000_000_000_000_000, 0),
            "P" => (1_000_000_000_000_000_000, 0),
            "Ki" => (1024 * 1000, 0),
            "Mi" => (1024u128.pow(2) * 1000, 0),
            "Gi" => (1024u128.pow(3) * 1000, 0),
            "Ti" => (1024u128.pow(4) * 1000, 0),
            "Pi" => (1024u128.pow(5) * 1000, 0),
            "Ei" => (1024u128.pow(6) * 1000, 0),
            "u" => (1, 3),
            "n" => (1, 6),
            s if s.starts_with(['e', 'E']) => {
                let exp: i32 = s[1..].parse().map_err(|_| err())?;
                if exp >= 0 {
                    (1000 * 10u128.checked_pow(u32::try_from(exp).map_err(|_| err())?).ok_or_else(err)?, 0)
                } else {
                    let e = u32::try_from(-exp).map_err(|_| err())?;
                    if e <= 3 { (10u128.pow(3 - e), 0) } else { (1, e - 3) }
                }
            }
            _ => return Err(err()),
        };
        let value = mantissa.checked_mul(num_mul).ok_or_else(err)?;
        let millis = value / 10u128.pow(scale_down + den_pow10).max(1);
        // Round up a fraction of a milli-unit, as Kubernetes does for requests.
        let rem = value % 10u128.pow(scale_down + den_pow10).max(1);
        Ok(Quantity { text: text.to_string(), millis: millis + u128::from(rem != 0) })
    }

    /// The value in thousandths: `500m` → 500, `1` → 1000, `1Ki` → 1 024 000.
    pub fn millis(&self) -> u128 {
        self.millis
    }

    /// The value rounded up to a whole unit (bytes for memory).
    pub fn value(&self) -> u128 {
        self.millis.div_ceil(1000)
    }

    /// As the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// Kubernetes' schema of a Quantity: a string such as `100m` or `1Gi`, or a plain number.
impl schemars::JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "io.k8s.apimachinery.pkg.api.resource.Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A fixed-point number: a plain number, or with a suffix (100m, 1Gi, 2k).",
            "oneOf": [{"type": "string"}, {"type": "number"}]
        })
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(u64),
            F(f64),
        }
        let text = match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::I(i) => i.to_string(),
            Raw::F(f) => f.to_string(),
        };
        Quantity::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, millis: u128) {
        assert_eq!(Quantity::parse(text).unwrap().millis(), millis, "{text}");
    }

    #[test]
    fn the_usual_forms() {
        check("500m", 500);
        check("1.5", 1500);
        check("2", 2000);
        check("0.1", 100);
        check("128Mi", 128 * 1024 * 1024 * 1000);
        check("1G", 1_000_000_000_000);
        check("1e3", 1_000_000);
        check("100u", 1);
        check("1Ki", 1_024_000);
        assert_eq!(Quantity::parse("128Mi").unwrap().value(), 134_217_728);
    }

    #[test]
    fn bad_forms_are_refused() {
        for bad in ["", "abc", "1.2.3", "5Xi", "-1", "1 Gi", "."] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_in_yaml_are_quantities_too() {
        let q: Quantity = serde_json::from_str("2").unwrap();
        assert_eq!(q.millis(), 2000);
        let q: Quantity = serde_json::from_str("0.5").unwrap();
        assert_eq!(q.millis(), 500);
    }
}
