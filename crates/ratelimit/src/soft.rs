//! Soft limits: a warning once usage crosses a share of the limit, while the
//! request still passes.
//!
//! A [`SoftLimit`] is a validated percentage. The proxy asks it whether an
//! admitted [`Decision`](crate::Decision) used that share of the limit and, if
//! so, adds a warning header and counts a metric.

/// Why a [`SoftLimit`] could not be built: a configuration error, so retrying is
/// pointless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SoftLimitError {
    /// The percentage is zero (every request would warn) or above 100 (none
    /// could).
    #[error("a soft limit must be between 1 and 100 percent, not {0}")]
    OutOfRange(u8),
}

/// A threshold, in percent of a limit, from which admitted requests carry a
/// warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SoftLimit {
    percent: u8,
}

impl SoftLimit {
    /// Warns once `percent` of the limit is used.
    ///
    /// # Errors
    ///
    /// [`SoftLimitError::OutOfRange`] unless `1 <= percent <= 100`.
    pub fn percent(percent: u8) -> Result<Self, SoftLimitError> {
        if (1..=100).contains(&percent) {
            Ok(Self { percent })
        } else {
            Err(SoftLimitError::OutOfRange(percent))
        }
    }

    /// Returns the threshold in percent.
    #[must_use]
    pub fn get(&self) -> u8 {
        self.percent
    }

    /// Returns `true` if, with `remaining` of `limit` units left after this
    /// request, at least the threshold share of the limit is used.
    #[must_use]
    pub fn is_reached(&self, limit: u32, remaining: u32) -> bool {
        let used = u64::from(limit.saturating_sub(remaining));
        used * 100 >= u64::from(self.percent) * u64::from(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eighty_percent_of_fifty_warns_from_the_fortieth_request() {
        let soft = SoftLimit::percent(80).unwrap();
        // After the 39th request 11 remain; after the 40th, 10.
        assert!(!soft.is_reached(50, 11));
        assert!(soft.is_reached(50, 10));
        assert!(soft.is_reached(50, 0));
    }

    #[test]
    fn out_of_range_percentages_are_rejected() {
        assert_eq!(SoftLimit::percent(0), Err(SoftLimitError::OutOfRange(0)));
        assert_eq!(
            SoftLimit::percent(101),
            Err(SoftLimitError::OutOfRange(101))
        );
        assert_eq!(SoftLimit::percent(100).unwrap().get(), 100);
        assert!(SoftLimit::percent(100).unwrap().is_reached(1, 0));
        assert!(!SoftLimit::percent(100).unwrap().is_reached(2, 1));
    }
}
