//! `slack` and `discord` sinks: a short message naming the job, its status
//! change and its URLs, posted to an incoming-webhook URL.

use super::{Attempt, http::send};
use crate::store::DueDelivery;
use serde_json::{Value, json};

pub struct ChatSink {
    client: reqwest::Client,
    url: String,
    /// The JSON key the chat service reads: `text` (Slack), `content` (Discord).
    field: &'static str,
}

impl ChatSink {
    pub fn slack(client: reqwest::Client, url: String) -> ChatSink {
        ChatSink {
            client,
            url,
            field: "text",
        }
    }

    pub fn discord(client: reqwest::Client, url: String) -> ChatSink {
        ChatSink {
            client,
            url,
            field: "content",
        }
    }

    pub async fn deliver(&self, delivery: &DueDelivery) -> Attempt {
        let event: Value = serde_json::from_str(&delivery.event).unwrap_or(Value::Null);
        let body = json!({ self.field: message(&event) });
        send(self.client.post(&self.url).json(&body)).await
    }
}

/// "Fine-tune my-model (ft_1): INFERENCE_QUEUED → AVAILABLE", then the URLs.
pub fn message(event: &Value) -> String {
    let data = &event["data"];
    let job = &data["job"];
    let id = data["finetune_id"].as_str().unwrap_or("?");
    let status = data["status"].as_str().unwrap_or("?");
    let name = data["name"]
        .as_str()
        .map(|n| format!("{n} ({id})"))
        .unwrap_or_else(|| id.to_owned());
    let change = match data["previous_status"].as_str() {
        Some(previous) => format!("{previous} → {status}"),
        None => status.to_owned(),
    };
    let mut lines = vec![format!("Fine-tune {name}: {change}")];
    for (label, key) in [
        ("Model", "trained_model_url"),
        ("Inference API", "inference_api_url"),
        ("Storage", "cloud_storage_url"),
        ("Error", "error_message"),
    ] {
        if let Some(value) = job[key].as_str() {
            lines.push(format!("{label}: {value}"));
        }
    }
    lines.join("\n")
}
