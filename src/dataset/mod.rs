//! Checks of a training dataset before a fine-tune is paid for: a ZIP on
//! this machine (`local`) or a public URL Segmind will fetch (`remote`).
//!
//! Segmind fails a job an hour in for what can be seen in seconds here: a
//! ZIP over 100 MB, images in a sub-folder (macOS's "Compress" adds
//! `__MACOSX/`), files that only look like images, a URL that does not
//! answer `HEAD` with a `Content-Length`. Each check returns a [`Report`]
//! that lists every problem (each naming its ZIP entry where there is one)
//! and the notes worth showing, rather than stopping at the first.

pub mod local;
pub mod remote;

use serde::Serialize;
use std::fmt;

/// Segmind's limit for a dataset: "under 100 MB". Counted in decimal
/// megabytes, the stricter reading, so that a file passing here is not
/// refused there.
pub const MAX_DATASET_BYTES: u64 = 100 * 1000 * 1000;

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Reasons Segmind would refuse or fail the dataset.
    pub problems: Vec<Problem>,
    /// Worth showing, not a reason to stop: ignored entries, redirects.
    pub notes: Vec<String>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub(crate) fn problem(&mut self, entry: Option<&str>, message: impl Into<String>) {
        self.problems.push(Problem {
            entry: entry.map(str::to_owned),
            message: message.into(),
        });
    }
}

/// One reason the dataset would fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The ZIP entry at fault, when it is one entry.
    pub entry: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entry {
            Some(entry) => write!(f, "{entry}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A size for people: `104.9 MB`.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}
