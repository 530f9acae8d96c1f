//! Durations as users write them in manifests: `500ms`, `2s`, `1m30s`, `1h`.
//!
//! The accepted form is the one the CRD schema's pattern allows (Gateway API style):
//! one or more `<integer><unit>` groups with units `h`, `m`, `s` and `ms`.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The regular expression the CRD schema uses for duration fields.
pub const PATTERN: &str = "^([0-9]{1,9}(h|m|s|ms)){1,4}$";

/// The longest duration text [`PATTERN`] allows: four groups of nine digits and a
/// two-letter unit.
pub const MAX_LENGTH: usize = 44;

/// A non-negative duration written as `1m30s`, `250ms` and so on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (write it like 500ms, 2s, 1m30s or 1h)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    /// Builds a duration from whole milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// Returns the standard library duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError {
            input: input.to_owned(),
            reason,
        };
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        let bytes = input.as_bytes();
        let mut total = std::time::Duration::ZERO;
        let mut i = 0;
        let mut groups = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i == start {
                return Err(err("expected a number"));
            }
            if i - start > 9 {
                return Err(err("a number has more than 9 digits"));
            }
            let n: u64 = input[start..i].parse().map_err(|_| err("bad number"))?;
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let part = match &input[unit_start..i] {
                "h" => std::time::Duration::from_secs(n * 3600),
                "m" => std::time::Duration::from_secs(n * 60),
                "s" => std::time::Duration::from_secs(n),
                "ms" => std::time::Duration::from_millis(n),
                "" => return Err(err("a number has no unit")),
                _ => return Err(err("unknown unit")),
            };
            total += part;
            groups += 1;
        }
        if groups > 4 {
            return Err(err("too many parts"));
        }
        Ok(Self(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
        let (m, rest) = (rest / 60_000, rest % 60_000);
        let (s, ms) = (rest / 1000, rest % 1000);
        for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": MAX_LENGTH,
            "pattern": PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_forms() {
        let ms = |s: &str| s.parse::<Duration>().map(|d| d.0.as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("2s"), Ok(2000));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("0s"), Ok(0));
    }

    #[test]
    fn rejects_junk_with_a_reason() {
        for bad in [
            "",
            "5",
            "s",
            "1.5s",
            "-1s",
            "1d",
            "2 s",
            "1s1s1s1s1s",
            "1234567890s",
        ] {
            let err = bad.parse::<Duration>().expect_err(bad);
            assert!(err.to_string().contains("invalid duration"), "{err}");
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(ms in 0u64..(100 * 3_600_000)) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(d.to_string().parse::<Duration>(), Ok(d));
        }
    }
}
