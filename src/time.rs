//! DTN time: milliseconds since 2000-01-01T00:00:00Z (RFC 9171 §4.2.6). The core never
//! reads a clock; drivers convert `SystemTime` here and pass the value in.

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds between the Unix epoch and the DTN epoch (2000-01-01T00:00:00Z).
pub const DTN_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// A DTN timestamp in milliseconds. Zero means "clock unknown" in a creation timestamp.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct DtnTime(pub u64);

impl DtnTime {
    /// Convert a wall-clock reading. Times before 2000 map to 0 (unknown).
    pub fn from_system(t: SystemTime) -> DtnTime {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        DtnTime(ms.saturating_sub(DTN_EPOCH_UNIX_SECS * 1000))
    }

    /// The current wall clock. Only drivers (CLI, transports) call this.
    pub fn now() -> DtnTime {
        DtnTime::from_system(SystemTime::now())
    }

    pub fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0 + DTN_EPOCH_UNIX_SECS * 1000)
    }

    pub fn saturating_add_ms(self, ms: u64) -> DtnTime {
        DtnTime(self.0.saturating_add(ms))
    }

    /// RFC 3339 text, or "unknown" for zero.
    pub fn to_rfc3339(self) -> String {
        if self.0 == 0 {
            "unknown".to_string()
        } else {
            humantime::format_rfc3339_millis(self.to_system()).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_conversion() {
        let t = UNIX_EPOCH + Duration::from_secs(DTN_EPOCH_UNIX_SECS + 1);
        assert_eq!(DtnTime::from_system(t), DtnTime(1000));
        assert_eq!(DtnTime(1000).to_system(), t);
        assert_eq!(DtnTime(1000).to_rfc3339(), "2000-01-01T00:00:01.000Z");
    }
}
