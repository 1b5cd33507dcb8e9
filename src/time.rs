//! Timestamps: RFC 3339 UTC with a fixed width, so that stored values sort
//! as text in the order they happened.

use chrono::{SecondsFormat, Utc};

/// Now, as `2026-01-02T03:04:05.123456Z`.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `at` in the same fixed-width form as [`now_rfc3339`].
pub fn rfc3339(at: chrono::DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The time `wait` from now, in the same form.
pub fn rfc3339_after(wait: std::time::Duration) -> String {
    let wait = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
    rfc3339(
        Utc::now()
            .checked_add_signed(wait)
            .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC),
    )
}

/// How long until `at` (an RFC 3339 time); zero when it has passed or
/// cannot be read.
pub fn until(at: &str) -> std::time::Duration {
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .and_then(|at| (at.with_timezone(&Utc) - Utc::now()).to_std().ok())
        .unwrap_or(std::time::Duration::ZERO)
}
