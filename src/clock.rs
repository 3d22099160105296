//! The one wall clock of the crate: time since the Unix epoch, for token times (`exp`, `nbf`,
//! `iat`), audit timestamps and rate-limit arithmetic shared through Redis. Intervals and
//! deadlines use `std::time::Instant` instead; this clock is only for times that leave the
//! process or come into it. A clock before 1970 reads as the epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Whole seconds since the Unix epoch (token times).
pub fn unix_now() -> u64 {
    since_epoch().as_secs()
}

/// Seconds since the Unix epoch with their fraction (audit timestamps).
pub fn unix_seconds_f64() -> f64 {
    since_epoch().as_secs_f64()
}

/// Microseconds since the Unix epoch (rate-limit state shared by replicas).
pub fn unix_micros() -> i64 {
    i64::try_from(since_epoch().as_micros()).unwrap_or(i64::MAX)
}
