//! The sink kinds. Each takes one event and reports one attempt.

mod chat;
mod command;
mod file;
mod http;

use crate::{config::SinkSettings, store::DueDelivery};
use std::time::Duration;

/// What one attempt found.
#[derive(Debug, Default)]
pub struct Attempt {
    pub ok: bool,
    pub status_code: Option<u16>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// At most 1 KiB of what the sink answered.
    pub response: Option<String>,
    /// The wait the sink asked for (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Attempt {
    fn failed(error: impl Into<String>) -> Attempt {
        Attempt {
            error: Some(error.into()),
            ..Attempt::default()
        }
    }
}

/// The most of a response kept with an attempt.
pub const RESPONSE_LIMIT: usize = 1024;

/// Cuts `text` to at most `RESPONSE_LIMIT` bytes, on a character boundary.
fn truncate(mut text: String) -> String {
    if text.len() > RESPONSE_LIMIT {
        let mut end = RESPONSE_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// A configured sink, ready to deliver.
pub enum Target {
    Http(http::HttpSink),
    Slack(chat::ChatSink),
    Discord(chat::ChatSink),
    File(file::FileSink),
    Command(command::CommandSink),
}

impl Target {
    /// Builds the sink from its (validated) settings.
    pub fn new(settings: &SinkSettings, client: reqwest::Client) -> Target {
        let url = settings
            .url
            .as_ref()
            .map(|u| u.expose().to_owned())
            .unwrap_or_default();
        match settings.kind.as_str() {
            "slack" => Target::Slack(chat::ChatSink::slack(client, url)),
            "discord" => Target::Discord(chat::ChatSink::discord(client, url)),
            "file" => Target::File(file::FileSink::new(
                settings.path.clone().unwrap_or_default(),
            )),
            "command" => Target::Command(command::CommandSink::new(
                settings.program.clone().unwrap_or_default(),
                settings.args.clone(),
                settings
                    .env
                    .iter()
                    .map(|(key, value)| (key.clone(), value.expose().to_owned()))
                    .collect(),
            )),
            _ => Target::Http(http::HttpSink::new(client, url, settings)),
        }
    }

    /// One attempt to deliver `delivery`'s event, within `timeout`.
    pub async fn deliver(&self, delivery: &DueDelivery, timeout: Duration) -> Attempt {
        let attempt = async {
            match self {
                Target::Http(sink) => sink.deliver(delivery).await,
                Target::Slack(sink) | Target::Discord(sink) => sink.deliver(delivery).await,
                Target::File(sink) => sink.deliver(delivery).await,
                Target::Command(sink) => sink.deliver(delivery).await,
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(attempt) => attempt,
            Err(_) => Attempt::failed(format!(
                "timed out after {}",
                humantime::format_duration(timeout)
            )),
        }
    }
}
