//! The state rules: given a job's current status and a new observation of it,
//! decide whether the observation moves the job.
//!
//! Jobs only move forward in rank. Segmind's own list/details API (source
//! `reconcile`) is trusted over webhooks when two statuses share a rank, such
//! as two different terminal statuses. A job tunehook submitted itself
//! (source `api`: `POST /v1/finetunes` or `tunehook segmind submit`) starts
//! as `REQUESTED`; that observation ranks like a webhook's: it creates a new
//! job, and never moves one that Segmind already reported further (a webhook
//! can arrive before the submission is recorded), nor wins a tie. Whether a status was already recorded
//! once for the job is the database's concern (a uniqueness constraint), not
//! this module's.

use super::status::Status;
use std::fmt;

/// Where an observation of a job's status came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Webhook,
    Reconcile,
    /// tunehook submitted the job to Segmind and recorded Segmind's answer.
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::Reconcile => "reconcile",
            Source::Api => "api",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an observation does to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The job moves to the observed status; a transition is recorded.
    Apply,
    /// The job already has this status.
    Duplicate,
    /// The job is already past this status (or a webhook disagrees with a
    /// status of the same rank).
    Stale,
}

/// Decides what observing `incoming` from `source` does to a job whose
/// current status is `current` (`None` for a job not seen before).
pub fn decide(current: Option<&Status>, incoming: &Status, source: Source) -> Decision {
    let Some(current) = current else {
        return Decision::Apply;
    };
    if current == incoming {
        return Decision::Duplicate;
    }
    match incoming.rank().cmp(&current.rank()) {
        std::cmp::Ordering::Greater => Decision::Apply,
        std::cmp::Ordering::Less => Decision::Stale,
        std::cmp::Ordering::Equal => match source {
            Source::Reconcile => Decision::Apply,
            Source::Webhook | Source::Api => Decision::Stale,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use Source::*;

    fn s(name: &str) -> Status {
        Status::parse(name).expect("valid status")
    }

    /// One representative of each rank, lowest first.
    const LADDER: [&str; 6] = [
        "REQUESTED",
        "QUEUED",
        "TRAINING",
        "TRAINING_COMPLETED",
        "DEPLOYING",
        "AVAILABLE",
    ];

    #[test]
    fn a_job_seen_for_the_first_time_takes_any_status() {
        for name in LADDER.iter().chain(&["FAILED", "SOMETHING_NEW"]) {
            for source in [Webhook, Reconcile] {
                assert_eq!(decide(None, &s(name), source), Apply, "{name}");
            }
        }
    }

    #[test]
    fn the_same_status_again_is_a_duplicate_from_either_source() {
        for name in LADDER.iter().chain(&["FAILED", "SOMETHING_NEW"]) {
            for source in [Webhook, Reconcile] {
                assert_eq!(decide(Some(&s(name)), &s(name), source), Duplicate);
            }
        }
    }

    #[test]
    fn every_pair_of_ranks_moves_only_forward() {
        for (i, from) in LADDER.iter().enumerate() {
            for (j, to) in LADDER.iter().enumerate() {
                if i == j {
                    continue;
                }
                let expected = if j > i { Apply } else { Stale };
                for source in [Webhook, Reconcile] {
                    assert_eq!(
                        decide(Some(&s(from)), &s(to), source),
                        expected,
                        "{from} -> {to} by {source}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_late_training_completed_does_not_move_an_available_job_back() {
        assert_eq!(
            decide(Some(&s("AVAILABLE")), &s("TRAINING_COMPLETED"), Webhook),
            Stale
        );
    }

    #[test]
    fn any_failure_status_ends_an_in_progress_job() {
        for failure in ["FAILED", "ERROR", "CANCELLED", "CANCELED"] {
            for from in &LADDER[..5] {
                assert_eq!(decide(Some(&s(from)), &s(failure), Webhook), Apply);
            }
        }
    }

    #[test]
    fn between_terminal_statuses_only_the_segmind_api_wins() {
        let terminals = ["AVAILABLE", "FAILED", "ERROR", "CANCELLED", "CANCELED"];
        for from in terminals {
            for to in terminals {
                if from == to {
                    continue;
                }
                assert_eq!(decide(Some(&s(from)), &s(to), Webhook), Stale);
                assert_eq!(decide(Some(&s(from)), &s(to), Reconcile), Apply);
            }
        }
    }

    #[test]
    fn between_different_statuses_of_one_rank_only_the_segmind_api_wins() {
        let same_rank = [
            ("QUEUED", "PENDING"),
            ("DATA_PROCESSING", "RETRIED"),
            ("TRAINING", "RUNNING"),
            ("TRAINING_INITIATED", "SOMETHING_NEW"),
            ("INFERENCE_QUEUED", "DEPLOYING"),
        ];
        for (a, b) in same_rank {
            for (from, to) in [(a, b), (b, a)] {
                assert_eq!(decide(Some(&s(from)), &s(to), Webhook), Stale);
                assert_eq!(decide(Some(&s(from)), &s(to), Reconcile), Apply);
            }
        }
    }

    #[test]
    fn a_submission_creates_a_job_and_never_moves_one_segmind_reported_further() {
        assert_eq!(decide(None, &s("REQUESTED"), Api), Apply);
        for further in &LADDER[1..] {
            assert_eq!(decide(Some(&s(further)), &s("REQUESTED"), Api), Stale);
        }
        assert_eq!(
            decide(Some(&s("REQUESTED")), &s("REQUESTED"), Api),
            Duplicate
        );
        assert_eq!(decide(Some(&s("QUEUED")), &s("PENDING"), Api), Stale);
    }

    #[test]
    fn an_unknown_status_ranks_with_training() {
        assert_eq!(decide(Some(&s("QUEUED")), &s("WARMING_UP"), Webhook), Apply);
        assert_eq!(
            decide(Some(&s("TRAINING_COMPLETED")), &s("WARMING_UP"), Webhook),
            Stale
        );
    }
}
