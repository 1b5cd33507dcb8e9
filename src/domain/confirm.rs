//! Whether Segmind's API confirms what a webhook claimed. Segmind signs
//! nothing, so a webhook is a claim by whoever holds the URL; the API,
//! reached with the user's own key, is the source of truth. These are the
//! rules, pure, for the confirmer (`crate::confirm`) to apply.

use super::status::{Status, Terminal};
use std::time::Duration;

/// What one look at Segmind's details says about a claimed status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The API shows the claimed status, or a later one on the way to
    /// success: the claim was true.
    Confirmed,
    /// The API shows an earlier status: it may catch up; ask again.
    Behind,
    /// The API shows a final status other than the one claimed: it never
    /// will.
    Contradicted,
}

/// Judges a claimed status against the status Segmind's API reports.
pub fn judge(claimed: &Status, api: &Status) -> Verdict {
    if claimed == api {
        return Verdict::Confirmed;
    }
    if api.is_terminal() {
        // Past the claim, but a failure does not confirm that a job got
        // through an intermediate step it claims; nor does any other final
        // status confirm a final claim.
        return if api.terminal() == Some(Terminal::Success) && !claimed.is_terminal() {
            Verdict::Confirmed
        } else {
            Verdict::Contradicted
        };
    }
    if api.rank() > claimed.rank() {
        Verdict::Confirmed
    } else {
        Verdict::Behind
    }
}

/// The first wait before asking Segmind again; doubled after each check.
const FIRST_RECHECK: Duration = Duration::from_millis(500);
/// The longest wait between two checks.
const LONGEST_RECHECK: Duration = Duration::from_secs(15);

/// The wait after the `checks`-th check of a claim that is still open:
/// 0.5 s, 1 s, 2 s… up to 15 s. The caller keeps it within the deadline.
pub fn recheck_after(checks: u32) -> Duration {
    FIRST_RECHECK
        .saturating_mul(2u32.saturating_pow(checks.saturating_sub(1).min(8)))
        .min(LONGEST_RECHECK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str) -> Status {
        Status::parse(name).expect("valid")
    }

    #[test]
    fn the_same_status_or_a_later_one_on_the_way_confirms() {
        assert_eq!(judge(&s("AVAILABLE"), &s("AVAILABLE")), Verdict::Confirmed);
        assert_eq!(
            judge(&s("TRAINING_COMPLETED"), &s("INFERENCE_QUEUED")),
            Verdict::Confirmed
        );
        assert_eq!(
            judge(&s("TRAINING_COMPLETED"), &s("AVAILABLE")),
            Verdict::Confirmed
        );
    }

    #[test]
    fn an_earlier_status_is_behind_and_may_catch_up() {
        assert_eq!(judge(&s("AVAILABLE"), &s("TRAINING")), Verdict::Behind);
        assert_eq!(
            judge(&s("INFERENCE_QUEUED"), &s("DEPLOYING")),
            Verdict::Behind
        );
    }

    #[test]
    fn a_different_final_status_contradicts_at_once() {
        assert_eq!(judge(&s("AVAILABLE"), &s("FAILED")), Verdict::Contradicted);
        assert_eq!(judge(&s("FAILED"), &s("AVAILABLE")), Verdict::Contradicted);
        assert_eq!(
            judge(&s("TRAINING_COMPLETED"), &s("FAILED")),
            Verdict::Contradicted
        );
    }

    #[test]
    fn rechecks_back_off_to_a_ceiling() {
        assert_eq!(recheck_after(1), Duration::from_millis(500));
        assert_eq!(recheck_after(2), Duration::from_secs(1));
        assert_eq!(recheck_after(4), Duration::from_secs(4));
        assert_eq!(recheck_after(40), Duration::from_secs(15));
    }
}
