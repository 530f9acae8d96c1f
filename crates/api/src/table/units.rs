//! The typed values a table carries: a field that parses is a field the proxy can use
//! as it is, so nothing is coerced or dropped on the way in.
//!
//! Each type keeps the wire form of the plain number or string it replaces (a
//! duration is whole milliseconds, a header name a lower-case string), so tables
//! written before these types existed read the same, and a value out of range fails
//! the table's deserialisation with the field's path.

use std::fmt;
use std::num::{NonZeroU8, NonZeroU64};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration greater than zero, carried as whole milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(NonZeroU64);

impl Millis {
    /// One millisecond, the shortest.
    pub const MIN: Self = Self(NonZeroU64::MIN);

    /// `ms` milliseconds; `None` for zero.
    pub const fn new(ms: u64) -> Option<Self> {
        match NonZeroU64::new(ms) {
            Some(n) => Some(Self(n)),
            None => None,
        }
    }

    /// `ms` milliseconds, raised to one when zero (for defaults written as constants).
    pub const fn at_least_one(ms: u64) -> Self {
        match NonZeroU64::new(ms) {
            Some(n) => Self(n),
            None => Self::MIN,
        }
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        Duration::from_millis(self.0.get())
    }

    /// The duration in milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms", self.0)
    }
}

/// A share from 0 to 100 percent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u8")]
pub struct Percent(u8);

impl Percent {
    /// `p` percent; `None` above 100.
    pub const fn new(p: u64) -> Option<Self> {
        if p <= 100 { Some(Self(p as u8)) } else { None }
    }

    /// `p` percent, lowered to 100 (for defaults written as constants).
    pub const fn saturating(p: u64) -> Self {
        if p <= 100 { Self(p as u8) } else { Self(100) }
    }

    /// The share in percent.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u64> for Percent {
    type Error = String;
    fn try_from(p: u64) -> Result<Self, String> {
        Self::new(p).ok_or_else(|| format!("{p} is more than 100 percent"))
    }
}

impl From<Percent> for u8 {
    fn from(p: Percent) -> u8 {
        p.0
    }
}

/// A threshold from 1 to 100 percent (a soft limit: 0 would warn on every request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u8")]
pub struct Threshold(NonZeroU8);

impl Threshold {
    /// `p` percent; `None` for 0 or above 100.
    pub const fn new(p: u64) -> Option<Self> {
        if p > 100 {
            return None;
        }
        match NonZeroU8::new(p as u8) {
            Some(n) => Some(Self(n)),
            None => None,
        }
    }

    /// The threshold in percent.
    pub const fn get(self) -> u8 {
        self.0.get()
    }
}

impl TryFrom<u64> for Threshold {
    type Error = String;
    fn try_from(p: u64) -> Result<Self, String> {
        Self::new(p).ok_or_else(|| format!("{p} is not between 1 and 100 percent"))
    }
}

impl From<Threshold> for u8 {
    fn from(p: Threshold) -> u8 {
        p.0.get()
    }
}

/// The SHA-256 of an API key; lower-case hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Parses 64 hex digits (either case).
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            *o = u8::try_from(hi * 16 + lo).ok()?;
        }
        Some(Self(out))
    }

    /// The digest.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest's bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        out
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not a secret, but long: the first bytes identify it in logs and test output.
        write!(f, "KeyHash({}…)", &self.to_hex()[..12])
    }
}

impl Serialize for KeyHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(d)?;
        Self::from_hex(&hex).ok_or_else(|| {
            serde::de::Error::custom("a key hash is 64 hex digits (SHA-256 of the key)")
        })
    }
}

/// Serde for [`http::HeaderName`] as its lower-case string.
pub mod header_name {
    use http::HeaderName;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the name.
    pub fn serialize<S: Serializer>(name: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(name.as_str())
    }

    /// Reads a valid header name (lower-cased).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
        let s = String::deserialize(d)?;
        HeaderName::from_bytes(s.as_bytes())
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a valid header name")))
    }

    /// The same for an optional name.
    pub mod option {
        use http::HeaderName;
        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes the name, if any.
        pub fn serialize<S: Serializer>(
            name: &Option<HeaderName>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match name {
                Some(n) => super::serialize(n, s),
                None => s.serialize_none(),
            }
        }

        /// Reads a valid header name, if any.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<HeaderName>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] HeaderName);
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// Serde for a [`Duration`] that may be zero, as whole milliseconds.
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes whole milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads whole milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_do_not_parse() {
        assert!(serde_json::from_str::<Millis>("0").is_err());
        assert_eq!(serde_json::from_str::<Millis>("250").ok(), Millis::new(250));
        assert!(serde_json::from_str::<Percent>("101").is_err());
        assert_eq!(serde_json::from_str::<Percent>("0").ok(), Percent::new(0));
        assert!(serde_json::from_str::<Threshold>("0").is_err());
        assert!(serde_json::from_str::<Threshold>("101").is_err());
        assert_eq!(
            serde_json::to_string(&Threshold::new(80)).ok().as_deref(),
            Some("80")
        );
        assert!(serde_json::from_str::<KeyHash>("\"abc\"").is_err());
    }

    #[test]
    fn key_hashes_round_trip_as_lower_case_hex() {
        let hex = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        let hash = KeyHash::from_hex(hex).expect("64 hex digits");
        let json = serde_json::to_string(&hash).expect("serialise");
        assert_eq!(json, format!("\"{}\"", hex.to_ascii_lowercase()));
        assert_eq!(serde_json::from_str::<KeyHash>(&json).ok(), Some(hash));
    }
}
