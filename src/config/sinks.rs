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
    /// Extra environment variables (command sinks), which otherwise get
    /// only a few of tunehook's own; their values are treated as secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Secret>,
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

    /// `https://hooks.slack.com/…`, `http://127.0.0.1:9001/…`: scheme,
    /// host and an explicit port (so that two sinks on one host can be
    /// told apart), never the user, password, path or query, which may
    /// hold a secret. Safe to print.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(url) => {
                let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                let host = match url.host() {
                    Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
                    Some(host) => host.to_string(),
                    None => "?".to_owned(),
                };
                format!("{}://{host}{port}/…", url.scheme())
            }
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
        validate_env(&label, sink)?;
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

/// The names tunehook sets for a command itself.
const RESERVED_ENV_PREFIX: &str = "TUNEHOOK_";

/// `env` is for command sinks; its names are portable shell names that do
/// not shadow the event's variables, and its values can be passed on.
fn validate_env(label: &str, sink: &SinkSettings) -> Result<(), ConfigError> {
    if sink.env.is_empty() {
        return Ok(());
    }
    if sink.kind != "command" {
        return invalid(format!(
            "{label}: env is only for kind `command`, not `{}`",
            sink.kind
        ));
    }
    for (name, value) in &sink.env {
        let portable = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !portable {
            return invalid(format!(
                "{label}: env: `{name}` is not a variable name (letters, digits and `_`, not starting with a digit)"
            ));
        }
        if name.to_ascii_uppercase().starts_with(RESERVED_ENV_PREFIX) {
            return invalid(format!(
                "{label}: env: `{name}` is reserved: tunehook sets the {RESERVED_ENV_PREFIX}* variables itself"
            ));
        }
        if value.expose().contains('\0') {
            return invalid(format!(
                "{label}: env: the value of `{name}` contains a NUL character"
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_url_shows_its_host_and_port_and_hides_credentials_path_and_query() {
        for (raw, shown) in [
            (
                "https://user:pw@hooks.example.com:8443/path/secret?key=abc",
                "https://hooks.example.com:8443/…",
            ),
            ("http://127.0.0.1:9001/a", "http://127.0.0.1:9001/…"),
            ("http://127.0.0.1:9002/a", "http://127.0.0.1:9002/…"),
            (
                "https://hooks.slack.com/services/T/B/X",
                "https://hooks.slack.com/…",
            ),
            ("http://[::1]:8080/x", "http://[::1]:8080/…"),
        ] {
            assert_eq!(SinkUrl::new(raw).redacted(), shown);
        }
    }

    fn check(toml_text: &str) -> Result<(), String> {
        let sink: SinkSettings = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        validate(&DeliverySettings::default(), &[sink]).map_err(|e| e.to_string())
    }

    const COMMAND: &str = "name = \"c\"\nkind = \"command\"\nprogram = \"sh\"\n";

    #[test]
    fn a_command_sink_takes_an_env_table() {
        check(&format!(
            "{COMMAND}env = {{ API_URL = \"x\", _low = \"y\" }}"
        ))
        .expect("valid");
    }

    #[test]
    fn env_is_refused_on_other_kinds() {
        let error = check("name = \"h\"\nkind = \"http\"\nurl = \"http://x\"\nenv = { A = \"1\" }")
            .expect_err("refused");
        assert!(
            error.contains("sink `h`") && error.contains("env"),
            "{error}"
        );
    }

    #[test]
    fn env_names_must_be_variable_names_outside_tunehooks_own() {
        for (name, why) in [
            ("\"1A\"", "not a variable name"),
            ("\"A-B\"", "not a variable name"),
            ("\"A=B\"", "not a variable name"),
            ("\"\"", "not a variable name"),
            ("TUNEHOOK_STATUS", "reserved"),
            ("tunehook_event_id", "reserved"),
        ] {
            let error = check(&format!("{COMMAND}env = {{ {name} = \"v\" }}")).expect_err(name);
            assert!(
                error.contains("env") && error.contains(why),
                "{name}: {error}"
            );
        }
        let error = check(&format!("{COMMAND}env = {{ A = \"a\\u0000b\" }}")).expect_err("NUL");
        assert!(error.contains("NUL"), "{error}");
    }

    #[test]
    fn env_values_are_never_shown() {
        let sink: SinkSettings =
            toml::from_str(&format!("{COMMAND}env = {{ TOKEN = \"s3cr3t-value\" }}"))
                .expect("toml");
        let shown = toml::to_string(&sink).expect("toml");
        assert!(
            !shown.contains("s3cr3t-value") && shown.contains("TOKEN"),
            "{shown}"
        );
        assert!(!format!("{sink:?}").contains("s3cr3t-value"));
    }
}
