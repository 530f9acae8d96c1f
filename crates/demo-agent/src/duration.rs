//! Parsing of human-written durations for command-line flags: `20ms`, `1s`, `1.5s`.
//!
//! A duration is a non-negative decimal number followed by one unit: `ns`, `us`
//! (or `µs`), `ms`, `s`, `m` or `h`. The single value `0` may be written without a
//! unit. Anything else (a bare number, an unknown unit, a sign, an exponent,
//! whitespace) is rejected.

use std::fmt;
use std::time::Duration;

/// Why a duration string was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid duration {:?}: {} (write it like 20ms, 1s or 1.5s)",
            self.input, self.reason
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration such as `20ms`, `1s` or `1.5s`.
///
/// # Errors
///
/// Returns a [`DurationError`] when the text is not a non-negative decimal number
/// followed by a known unit, or when the value does not fit a [`Duration`].
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    if input.is_empty() {
        return Err(err("it is empty"));
    }
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    let split = input
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| err("a unit is required (ns, us, ms, s, m or h)"))?;
    let (number, unit) = input.split_at(split);
    if number.is_empty() {
        return Err(err("expected a number"));
    }
    if number.starts_with('.') || number.ends_with('.') || number.matches('.').count() > 1 {
        return Err(err("malformed number"));
    }
    let value: f64 = number.parse().map_err(|_| err("malformed number"))?;
    let seconds_per_unit = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(err("unknown unit (use ns, us, ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| err("it is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_forms() {
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0.5ms"), Ok(Duration::from_micros(500)));
    }

    #[test]
    fn rejects_junk() {
        for junk in [
            "",
            "ms",
            "abc",
            "20",
            "1.5",
            "-5ms",
            "+5ms",
            "1.5.2s",
            ".5s",
            "5.s",
            "1e3ms",
            "20 ms",
            " 20ms",
            "20msx",
            "20sec",
            "1m30s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(junk).is_err(), "{junk:?} should be rejected");
        }
    }

    #[test]
    fn error_names_the_input() {
        let message = parse_duration("soon").unwrap_err().to_string();
        assert!(message.contains("\"soon\""), "{message}");
    }
}
