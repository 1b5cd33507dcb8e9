//! When to try a delivery again: the schedule's next wait with ±20% jitter,
//! or longer when the receiver asked for more with `Retry-After`, within
//! bounds. A receiver can slow the schedule down but never speed it up, so a
//! `Retry-After: 0` does not spend every attempt within a second.

use std::time::Duration;

/// The longest wait a `Retry-After` can ask for; longer requests wait this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

/// The wait before the next attempt after `failed_attempts` failures (since
/// the schedule began), or `None` when the schedule is exhausted and the
/// delivery is dead. `jitter` is a number in [-1, 1] scaling ±20%. The wait
/// is the larger of the planned one (with jitter) and `retry_after`, which is
/// capped at [`MAX_RETRY_AFTER`]; a planned wait longer than the cap stands.
pub fn next_wait(
    schedule: &[Duration],
    failed_attempts: usize,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    let planned = *schedule.get(failed_attempts.checked_sub(1)?)?;
    let factor = 1.0 + 0.2 * jitter.clamp(-1.0, 1.0);
    let planned = planned.mul_f64(factor);
    let asked = retry_after.unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER);
    Some(planned.max(asked))
}

/// Reads a `Retry-After` value: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: [Duration; 3] = [
        Duration::from_secs(5),
        Duration::from_secs(30),
        Duration::from_secs(120),
    ];

    #[test]
    fn each_failure_takes_the_next_wait_of_the_schedule() {
        assert_eq!(next_wait(&S, 1, None, 0.0), Some(Duration::from_secs(5)));
        assert_eq!(next_wait(&S, 2, None, 0.0), Some(Duration::from_secs(30)));
        assert_eq!(next_wait(&S, 3, None, 0.0), Some(Duration::from_secs(120)));
    }

    #[test]
    fn after_the_last_wait_the_delivery_is_dead() {
        assert_eq!(next_wait(&S, 4, None, 0.0), None);
        assert_eq!(next_wait(&[], 1, None, 0.0), None);
        assert_eq!(next_wait(&S, 4, Some(Duration::from_secs(1)), 0.0), None);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        assert_eq!(next_wait(&S, 1, None, 1.0), Some(Duration::from_secs(6)));
        assert_eq!(next_wait(&S, 1, None, -1.0), Some(Duration::from_secs(4)));
        assert_eq!(next_wait(&S, 1, None, 7.0), Some(Duration::from_secs(6)));
    }

    #[test]
    fn a_longer_retry_after_lengthens_the_planned_wait_within_bounds() {
        assert_eq!(
            next_wait(&S, 1, Some(Duration::from_secs(60)), 0.5),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            next_wait(&S, 1, Some(Duration::from_secs(10 * 86400)), 0.0),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn a_shorter_retry_after_never_shortens_the_planned_wait() {
        assert_eq!(
            next_wait(&S, 1, Some(Duration::ZERO), 0.0),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            next_wait(&S, 2, Some(Duration::from_secs(1)), 1.0),
            Some(Duration::from_secs(36))
        );
    }

    #[test]
    fn a_planned_wait_beyond_the_cap_is_kept() {
        let long = [Duration::from_secs(8 * 3600)];
        assert_eq!(
            next_wait(&long, 1, Some(Duration::from_secs(10 * 86400)), 0.0),
            Some(Duration::from_secs(8 * 3600))
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("date")
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
