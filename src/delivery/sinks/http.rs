//! `http` sinks: POST the event, signed per Standard Webhooks when a secret
//! is set. Any 2xx is success.

use super::{Attempt, truncate};
use crate::{config::SinkSettings, delivery::signature, domain::retry, store::DueDelivery};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

pub struct HttpSink {
    client: reqwest::Client,
    url: String,
    key: Option<Vec<u8>>,
    headers: HeaderMap,
}

impl HttpSink {
    pub fn new(client: reqwest::Client, url: String, settings: &SinkSettings) -> HttpSink {
        let headers = settings
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_str(value.expose()).ok()?,
                ))
            })
            .collect();
        HttpSink {
            client,
            url,
            key: settings.signing_key(),
            headers,
        }
    }

    pub async fn deliver(&self, delivery: &DueDelivery) -> Attempt {
        let timestamp = chrono::Utc::now().timestamp();
        let body = delivery.event.as_bytes().to_vec();
        let mut request = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.event_id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(key) = &self.key {
            request = request.header(
                "webhook-signature",
                signature::sign(key, &delivery.event_id, timestamp, &body),
            );
        }
        send(request.body(body)).await
    }
}

/// Sends a request and reads what a delivery attempt records of the answer.
pub(super) async fn send(request: reqwest::RequestBuilder) -> Attempt {
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Attempt::failed(describe(&e)),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, chrono::Utc::now()));
    let mut body = Vec::new();
    while body.len() < super::RESPONSE_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let ok = status.is_success();
    Attempt {
        ok,
        status_code: Some(status.as_u16()),
        error: (!ok).then(|| format!("the sink answered {status}")),
        response: Some(truncate(String::from_utf8_lossy(&body).into_owned())),
        retry_after: if ok { None } else { retry_after },
        ..Attempt::default()
    }
}

/// A transport error, without the URL (chat webhook URLs are secrets).
fn describe(error: &reqwest::Error) -> String {
    let what = if error.is_connect() {
        "cannot connect"
    } else if error.is_timeout() {
        "timed out"
    } else if error.is_redirect() {
        "redirected"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        cause = e.to_string();
        source = e.source();
    }
    if cause.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {cause}")
    }
}
