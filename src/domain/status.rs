//! Job statuses and their ranks.
//!
//! Segmind documents different status names on different pages and publishes
//! no schema, so a status is an open string: known names get a rank, unknown
//! ones are kept and ranked with the "in progress" group rather than rejected.

use std::fmt;

/// The longest status name accepted; anything longer is not a status.
pub const MAX_STATUS_LEN: usize = 64;

/// Rank given to every terminal status. Terminal statuses share one rank, so
/// moving between two of them is a same-rank change (see `rules`).
pub const TERMINAL_RANK: u8 = 100;

/// Every status name the rank table knows.
pub const KNOWN_STATUSES: [&str; 17] = [
    "REQUESTED",
    "DATA_PROCESSING",
    "QUEUED",
    "PENDING",
    "RETRIED",
    "TRAINING_INITIATED",
    "TRAINING",
    "PROCESSING",
    "RUNNING",
    "TRAINING_COMPLETED",
    "INFERENCE_QUEUED",
    "DEPLOYING",
    "AVAILABLE",
    "FAILED",
    "ERROR",
    "CANCELLED",
    "CANCELED",
];

/// A normalised status name: trimmed, upper-case, with spaces, dots and
/// hyphens turned into underscores (`"training-completed"` → `TRAINING_COMPLETED`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Status(String);

/// How a terminal status ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    Success,
    Failure,
}

impl Status {
    /// Normalises `raw`; `None` when it is empty, too long, or holds
    /// characters no status name has.
    pub fn parse(raw: &str) -> Option<Status> {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.len() > MAX_STATUS_LEN {
            return None;
        }
        let mut name = String::with_capacity(trimmed.len());
        for c in trimmed.chars() {
            match c {
                'a'..='z' => name.push(c.to_ascii_uppercase()),
                'A'..='Z' | '0'..='9' | '_' => name.push(c),
                ' ' | '-' | '.' => name.push('_'),
                _ => return None,
            }
        }
        Some(Status(name))
    }

    /// A status read back from storage, where it was normalised on the way
    /// in; a value that somehow is not a valid name is kept as it is.
    pub fn from_stored(raw: &str) -> Status {
        Status::parse(raw).unwrap_or_else(|| Status(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The status's rank: a job only moves to a higher rank (see `rules`).
    pub fn rank(&self) -> u8 {
        match self.0.as_str() {
            "REQUESTED" => 0,
            "DATA_PROCESSING" | "QUEUED" | "PENDING" | "RETRIED" => 10,
            "TRAINING_COMPLETED" => 30,
            "INFERENCE_QUEUED" | "DEPLOYING" => 40,
            _ if self.terminal().is_some() => TERMINAL_RANK,
            // TRAINING_INITIATED, TRAINING, PROCESSING, RUNNING and every
            // status this table does not know.
            _ => 20,
        }
    }

    pub fn terminal(&self) -> Option<Terminal> {
        match self.0.as_str() {
            "AVAILABLE" => Some(Terminal::Success),
            "FAILED" | "ERROR" | "CANCELLED" | "CANCELED" => Some(Terminal::Failure),
            _ => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.terminal().is_some()
    }

    /// Whether the rank table names this status.
    pub fn is_known(&self) -> bool {
        KNOWN_STATUSES.contains(&self.0.as_str())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(s: &str) -> u8 {
        Status::parse(s).expect("a valid status").rank()
    }

    #[test]
    fn every_row_of_the_rank_table_has_its_rank() {
        assert_eq!(rank("REQUESTED"), 0);
        for s in ["DATA_PROCESSING", "QUEUED", "PENDING", "RETRIED"] {
            assert_eq!(rank(s), 10, "{s}");
        }
        for s in ["TRAINING_INITIATED", "TRAINING", "PROCESSING", "RUNNING"] {
            assert_eq!(rank(s), 20, "{s}");
        }
        assert_eq!(rank("TRAINING_COMPLETED"), 30);
        for s in ["INFERENCE_QUEUED", "DEPLOYING"] {
            assert_eq!(rank(s), 40, "{s}");
        }
        for s in ["AVAILABLE", "FAILED", "ERROR", "CANCELLED", "CANCELED"] {
            assert_eq!(rank(s), TERMINAL_RANK, "{s}");
        }
    }

    #[test]
    fn unknown_statuses_are_kept_and_ranked_as_in_progress() {
        let s = Status::parse("warming_up").expect("kept");
        assert_eq!(s.as_str(), "WARMING_UP");
        assert_eq!(s.rank(), 20);
        assert!(!s.is_terminal());
    }

    #[test]
    fn available_is_success_and_the_failures_are_failures() {
        assert_eq!(
            Status::parse("available").and_then(|s| s.terminal()),
            Some(Terminal::Success)
        );
        for s in ["FAILED", "ERROR", "CANCELLED", "CANCELED"] {
            assert_eq!(
                Status::parse(s).and_then(|s| s.terminal()),
                Some(Terminal::Failure)
            );
        }
    }

    #[test]
    fn names_are_normalised_to_upper_case_with_underscores() {
        let s = Status::parse("  training-completed ").expect("valid");
        assert_eq!(s.as_str(), "TRAINING_COMPLETED");
        assert_eq!(
            Status::parse("Inference Queued").expect("valid").as_str(),
            "INFERENCE_QUEUED"
        );
    }

    #[test]
    fn empty_overlong_or_strange_names_are_not_statuses() {
        assert_eq!(Status::parse(""), None);
        assert_eq!(Status::parse("   "), None);
        assert_eq!(Status::parse(&"A".repeat(MAX_STATUS_LEN + 1)), None);
        assert_eq!(Status::parse("DROP TABLE jobs;"), None);
        assert_eq!(Status::parse("../../etc"), None);
        assert!(Status::parse(&"A".repeat(MAX_STATUS_LEN)).is_some());
    }
}
