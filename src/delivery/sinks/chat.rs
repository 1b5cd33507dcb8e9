//! `slack` and `discord` sinks: a short message naming the job, its status
//! change and its URLs, posted to an incoming-webhook URL.
//!
//! Everything in the message except its frame came from a webhook or from
//! Segmind, so it is treated as hostile: Slack reads `<!channel>`, `<@U1>`
//! and `<url|label>` as commands, so `&`, `<` and `>` are escaped the way
//! Slack documents; Discord has no escape for mentions, so its messages say
//! `allowed_mentions: {parse: []}` and ping nobody. Each piece is cut to a
//! sane length, and the whole to what the service accepts.

use super::{Attempt, http::send};
use crate::store::DueDelivery;
use serde_json::{Value, json};

/// Longest job name shown, in characters.
const NAME_LIMIT: usize = 200;
/// Longest job id or status shown.
const ID_LIMIT: usize = 200;
/// Longest URL shown.
const URL_LIMIT: usize = 500;
/// Longest error message shown.
const ERROR_LIMIT: usize = 1000;
/// Discord refuses a `content` longer than 2000 characters.
const DISCORD_LIMIT: usize = 2000;
/// Slack cuts messages past 40,000 characters.
const SLACK_LIMIT: usize = 40_000;

/// The chat services, which differ in their body and their escaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Slack,
    Discord,
}

pub struct ChatSink {
    client: reqwest::Client,
    url: String,
    service: Service,
}

impl ChatSink {
    pub fn slack(client: reqwest::Client, url: String) -> ChatSink {
        ChatSink {
            client,
            url,
            service: Service::Slack,
        }
    }

    pub fn discord(client: reqwest::Client, url: String) -> ChatSink {
        ChatSink {
            client,
            url,
            service: Service::Discord,
        }
    }

    pub async fn deliver(&self, delivery: &DueDelivery) -> Attempt {
        let event: Value = match serde_json::from_str(&delivery.event) {
            Ok(event) => event,
            Err(e) => return Attempt::failed(format!("the stored event is not JSON: {e}")),
        };
        send(
            self.client
                .post(&self.url)
                .json(&body(&event, self.service)),
        )
        .await
    }
}

/// The JSON body the service takes.
pub fn body(event: &Value, service: Service) -> Value {
    let text = message(event, service);
    match service {
        Service::Slack => json!({ "text": text }),
        Service::Discord => json!({ "content": text, "allowed_mentions": { "parse": [] } }),
    }
}

/// "Fine-tune my-model (ft_1): INFERENCE_QUEUED → AVAILABLE", then the URLs.
pub fn message(event: &Value, service: Service) -> String {
    let data = &event["data"];
    let job = &data["job"];
    let piece = |value: &Value, limit: usize| {
        value
            .as_str()
            .map(|text| escape(&cut(text, limit), service))
    };
    let id = piece(&data["finetune_id"], ID_LIMIT).unwrap_or_else(|| "?".into());
    let status = piece(&data["status"], ID_LIMIT).unwrap_or_else(|| "?".into());
    let name = match piece(&data["name"], NAME_LIMIT) {
        Some(name) => format!("{name} ({id})"),
        None => id,
    };
    let change = match piece(&data["previous_status"], ID_LIMIT) {
        Some(previous) => format!("{previous} → {status}"),
        None => status,
    };
    let mut lines = vec![format!("Fine-tune {name}: {change}")];
    for (label, key, limit) in [
        ("Model", "trained_model_url", URL_LIMIT),
        ("Inference API", "inference_api_url", URL_LIMIT),
        ("Storage", "cloud_storage_url", URL_LIMIT),
        ("Error", "error_message", ERROR_LIMIT),
    ] {
        if let Some(value) = piece(&job[key], limit) {
            lines.push(format!("{label}: {value}"));
        }
    }
    let limit = match service {
        Service::Slack => SLACK_LIMIT,
        Service::Discord => DISCORD_LIMIT,
    };
    // Only Discord's limit is ever reached (its text is not escaped, so a
    // cut cannot split an entity); Slack's pieces add up to far less.
    cut(&lines.join("\n"), limit)
}

/// Slack's three escapes; Discord shows text as it is.
fn escape(text: &str, service: Service) -> String {
    match service {
        Service::Slack => text
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;"),
        Service::Discord => text.to_owned(),
    }
}

/// `text` cut to at most `limit` characters, the last being `…` when cut.
fn cut(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit.saturating_sub(1)) {
        Some((end, _)) if text[end..].chars().nth(1).is_some() => format!("{}…", &text[..end]),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, error: &str) -> Value {
        json!({"data": {
            "finetune_id": "ft<1>", "name": name, "status": "FAILED",
            "previous_status": "TRAINING",
            "job": {"error_message": error, "trained_model_url": "https://x/?a=1&b=<2>"}
        }})
    }

    #[test]
    fn slack_text_cannot_mention_or_link() {
        let text = message(&event("<!channel> & <@U1>", "<!here>"), Service::Slack);
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        assert!(
            text.contains("&lt;!channel&gt; &amp; &lt;@U1&gt;"),
            "{text}"
        );
        assert!(text.contains("(ft&lt;1&gt;)"), "{text}");
        assert!(text.contains("Error: &lt;!here&gt;"), "{text}");
        assert!(text.contains("https://x/?a=1&amp;b=&lt;2&gt;"), "{text}");
        assert!(text.contains("TRAINING → FAILED"), "{text}");
    }

    #[test]
    fn discord_bodies_allow_no_mentions_and_keep_the_text() {
        let body = body(&event("@everyone", "e"), Service::Discord);
        assert_eq!(body["allowed_mentions"], json!({"parse": []}));
        let text = body["content"].as_str().expect("content");
        assert!(text.contains("@everyone (ft<1>)"), "{text}");
        assert!(body.get("text").is_none());
    }

    #[test]
    fn long_names_and_errors_are_cut_on_a_character_boundary() {
        let name = "é".repeat(5000);
        let error = "ü".repeat(5000);
        let text = message(&event(&name, &error), Service::Slack);
        let first = text.lines().next().expect("a line");
        let shown = first.trim_start_matches("Fine-tune ");
        let shown_name = shown.split(" (").next().expect("name");
        assert_eq!(shown_name.chars().count(), NAME_LIMIT);
        assert!(shown_name.ends_with('…'));
        let error_line = text
            .lines()
            .find(|l| l.starts_with("Error: "))
            .expect("error");
        assert_eq!(
            error_line.trim_start_matches("Error: ").chars().count(),
            ERROR_LIMIT
        );
    }

    #[test]
    fn a_discord_message_fits_discords_limit_whatever_the_job_holds() {
        let long = "a".repeat(10_000);
        let event = json!({"data": {
            "finetune_id": long, "name": long, "status": long, "previous_status": long,
            "job": {"error_message": long, "trained_model_url": long,
                    "inference_api_url": long, "cloud_storage_url": long}
        }});
        let text = message(&event, Service::Discord);
        assert_eq!(text.chars().count(), DISCORD_LIMIT);
    }

    #[test]
    fn short_text_is_not_cut() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "ab…");
        assert_eq!(cut("", 3), "");
    }
}
