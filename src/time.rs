//! Timestamps: RFC 3339 UTC with a fixed width, so that stored values sort
//! as text in the order they happened.

use chrono::{SecondsFormat, Utc};

/// Now, as `2026-01-02T03:04:05.123456Z`.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}
