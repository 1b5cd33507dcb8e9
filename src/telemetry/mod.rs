//! Logging: `tracing` to stdout, human-readable or JSON (for containers),
//! filtered by `log.filter` (`TUNEHOOK_LOG`). Metrics: see `metrics`.

pub mod metrics;

use crate::config::{LogFormat, LogSettings};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. Calling it twice is harmless: the second
/// call keeps the first subscriber (tests start many apps in one process).
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match settings.format {
        // Colours only on a terminal: a file or a pipe gets plain text.
        LogFormat::Pretty => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
    };
    // Already installed: keep the existing one.
    drop(result);
}
