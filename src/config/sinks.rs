//! `[delivery]` and `[[sinks]]`: where job transitions are forwarded, and how
//! hard to try.

use super::{ConfigError, Secret};
use crate::domain::{Status, event::EventType};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    /// Waits between attempts: one more attempt than waits, then `dead`.
    #[serde(with = "durations")]
    pub retry_schedule: Vec<Duration>,
    /// Per attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts in flight across all sinks; each sink gets an equal share.
    pub concurrency: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        let schedule = ["5s", "30s", "2m", "10m", "30m", "1h", "2h", "4h", "8h"];
        DeliverySettings {
            retry_schedule: schedule
                .iter()
                .filter_map(|s| humantime::parse_duration(s).ok())
                .collect(),
            timeout: Duration::from_secs(10),
            concurrency: 16,
        }
    }
}

/// The kinds of sink.
pub const SINK_KINDS: [&str; 5] = ["http", "slack", "discord", "file", "command"];

/// One `[[sinks]]` block as written. `validate` checks the keys its kind needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSettings {
    pub name: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<SinkUrl>,
    /// `whsec_<base64>`: sign per Standard Webhooks (http sinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// Extra request headers (http sinks); their values are treated as secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// Only these statuses are forwarded; unset forwards every status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statuses: Option<Vec<String>>,
    /// The event types forwarded: `finetune.status_changed` and/or
    /// `finetune.updated`; unset forwards both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// File to append to (file sinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Program to run (command sinks), with `args`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Overrides `delivery.timeout`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Overrides `delivery.retry_schedule`.
    #[serde(
        default,
        with = "optional_durations",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_schedule: Option<Vec<Duration>>,
}

/// A sink URL. Chat webhook URLs carry their secret in the path, so only the
/// scheme and host are ever shown.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SinkUrl(String);

impl SinkUrl {
    pub fn new(url: impl Into<String>) -> SinkUrl {
        SinkUrl(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `https://hooks.slack.com/…`: safe to print.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(url) => format!("{}://{}/…", url.scheme(), url.host_str().unwrap_or("?")),
            Err(_) => "[invalid url]".into(),
        }
    }
}

impl std::fmt::Debug for SinkUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SinkUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl SinkSettings {
    pub fn retry_schedule<'a>(&'a self, delivery: &'a DeliverySettings) -> &'a [Duration] {
        self.retry_schedule
            .as_deref()
            .unwrap_or(&delivery.retry_schedule)
    }

    pub fn timeout(&self, delivery: &DeliverySettings) -> Duration {
        self.timeout.unwrap_or(delivery.timeout)
    }

    /// The statuses this sink forwards, normalised; `None` for every status.
    pub fn status_filter(&self) -> Option<Vec<Status>> {
        self.statuses
            .as_ref()
            .map(|list| list.iter().filter_map(|s| Status::parse(s)).collect())
    }

    /// The event types this sink receives.
    pub fn event_filter(&self) -> Vec<EventType> {
        match &self.events {
            None => EventType::ALL.to_vec(),
            Some(list) => list.iter().filter_map(|e| EventType::parse(e)).collect(),
        }
    }

    /// The signing key: the bytes behind `whsec_`.
    pub fn signing_key(&self) -> Option<Vec<u8>> {
        let secret = self.secret.as_ref()?.expose();
        STANDARD
            .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
            .ok()
    }
}

/// Checks every sink, naming the sink and the key in each error.
pub fn validate(delivery: &DeliverySettings, sinks: &[SinkSettings]) -> Result<(), ConfigError> {
    if delivery.concurrency == 0 {
        return invalid("delivery.concurrency must be greater than 0".into());
    }
    if delivery.timeout.is_zero() {
        return invalid("delivery.timeout must be greater than 0".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, sink) in sinks.iter().enumerate() {
        let name = &sink.name;
        let label = if name.is_empty() {
            format!("sinks[{i}]")
        } else {
            format!("sink `{name}`")
        };
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid_name {
            return invalid(format!("{label}: name must match [a-z0-9_-]+"));
        }
        if !seen.insert(name.as_str()) {
            return invalid(format!("{label}: name is used by another sink"));
        }
        if !SINK_KINDS.contains(&sink.kind.as_str()) {
            return invalid(format!(
                "{label}: kind `{}` is not one of {}",
                sink.kind,
                SINK_KINDS.join(", ")
            ));
        }
        match sink.kind.as_str() {
            "http" | "slack" | "discord" => match &sink.url {
                None => {
                    return invalid(format!("{label}: url is required for kind `{}`", sink.kind));
                }
                Some(url) => {
                    let ok = url::Url::parse(url.expose()).is_ok_and(|u| {
                        matches!(u.scheme(), "http" | "https") && u.host().is_some()
                    });
                    if !ok {
                        return invalid(format!("{label}: url is not an http(s) URL"));
                    }
                }
            },
            "file" if sink.path.is_none() => {
                return invalid(format!("{label}: path is required for kind `file`"));
            }
            "command" if sink.program.as_deref().is_none_or(str::is_empty) => {
                return invalid(format!("{label}: program is required for kind `command`"));
            }
            _ => {}
        }
        if sink.secret.is_some() && sink.signing_key().is_none_or(|k| k.is_empty()) {
            return invalid(format!(
                "{label}: secret must be `whsec_` followed by base64 (Standard Webhooks)"
            ));
        }
        for (header, value) in &sink.headers {
            if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return invalid(format!("{label}: headers: `{header}` is not a header name"));
            }
            if axum::http::HeaderValue::from_str(value.expose()).is_err() {
                return invalid(format!(
                    "{label}: headers: the value of `{header}` is not a valid header value"
                ));
            }
        }
        if let Some(statuses) = &sink.statuses {
            if let Some(bad) = statuses.iter().find(|s| Status::parse(s).is_none()) {
                return invalid(format!("{label}: statuses: `{bad}` is not a status name"));
            }
        }
        if let Some(events) = &sink.events {
            if let Some(bad) = events.iter().find(|e| EventType::parse(e).is_none()) {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                return invalid(format!(
                    "{label}: events: `{bad}` is not an event type (one of {})",
                    known.join(", ")
                ));
            }
            if events.is_empty() {
                return invalid(format!(
                    "{label}: events: the list is empty, so the sink would receive nothing"
                ));
            }
        }
        if sink.timeout.is_some_and(|t| t.is_zero()) {
            return invalid(format!("{label}: timeout must be greater than 0"));
        }
    }
    Ok(())
}

fn invalid(message: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid(message))
}

/// `["5s", "2m"]` ⇄ a list of durations.
mod durations {
    use super::*;

    pub fn serialize<S: Serializer>(list: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
        let text: Vec<String> = list
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        text.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

mod optional_durations {
    use super::*;

    pub fn serialize<S: Serializer>(
        list: &Option<Vec<Duration>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match list {
            Some(list) => durations::serialize(list, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<Duration>>, D::Error> {
        durations::deserialize(deserializer).map(Some)
    }
}
