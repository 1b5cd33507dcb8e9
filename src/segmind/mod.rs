//! The client for Segmind's fine-tune API: all five documented endpoints,
//! authenticated with `x-api-key`, with typed errors.

mod types;

pub use types::{
    AdvanceParameters, DetailsResponse, PresignedUrl, RemoteJob, SubmitRequest, SubmitResponse,
};

use crate::{config::Secret, domain::retry::parse_retry_after};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Most characters of an undecodable body quoted in an error.
const SNIPPET: usize = 200;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SegmindError {
    #[error("Segmind refused the API key ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    #[error("insufficient Segmind credits: {message}")]
    InsufficientCredits { message: String },
    #[error("rate limited by Segmind: {message}")]
    RateLimited {
        wait: Option<Duration>,
        message: String,
    },
    #[error("Segmind answered {status}: {message}")]
    Server { status: u16, message: String },
    #[error("Segmind answered {status}: {message}")]
    Rejected { status: u16, message: String },
    #[error("Segmind did not answer in time")]
    Timeout,
    #[error("cannot reach Segmind: {0}")]
    Unreachable(String),
    #[error("Segmind's answer could not be read: {snippet}")]
    Undecodable { snippet: String },
}

impl SegmindError {
    /// Worth trying again soon (with backoff).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SegmindError::RateLimited { .. }
                | SegmindError::Server { .. }
                | SegmindError::Timeout
                | SegmindError::Unreachable(_)
        )
    }

    /// The wait Segmind asked for, if any.
    pub fn wait(&self) -> Option<Duration> {
        match self {
            SegmindError::RateLimited { wait, .. } => *wait,
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct SegmindClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Secret,
}

impl SegmindClient {
    pub fn new(base_url: &str, api_key: Secret, timeout: Duration) -> SegmindClient {
        let http = reqwest::Client::builder()
            .user_agent(concat!("tunehook/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .pool_max_idle_per_host(4)
            .build()
            .unwrap_or_default();
        SegmindClient {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base_url))
            .header("x-api-key", self.api_key.expose())
    }

    /// `POST /finetune/request/submit`.
    pub async fn submit(&self, request: &SubmitRequest) -> Result<SubmitResponse, SegmindError> {
        decode(
            self.request(Method::POST, "/finetune/request/submit")
                .json(request),
        )
        .await
    }

    /// `GET /finetune/request/details` with `{"request_id": ID}` as its body.
    pub async fn details(&self, finetune_id: &str) -> Result<Option<RemoteJob>, SegmindError> {
        let body = serde_json::json!({ "request_id": finetune_id });
        let answer: DetailsResponse = decode(
            self.request(Method::GET, "/finetune/request/details")
                .json(&body),
        )
        .await?;
        Ok(answer.finetune)
    }

    /// `GET /finetune/request/list`.
    pub async fn list(&self) -> Result<Vec<RemoteJob>, SegmindError> {
        decode(self.request(Method::GET, "/finetune/request/list")).await
    }

    /// `GET /finetune/request/upload/pre-signed-url` with `{"name": FILE}`.
    pub async fn presigned_url(&self, file_name: &str) -> Result<PresignedUrl, SegmindError> {
        let body = serde_json::json!({ "name": file_name });
        decode(
            self.request(Method::GET, "/finetune/request/upload/pre-signed-url")
                .json(&body),
        )
        .await
    }

    /// `PUT /finetune/request/access-update` as a multipart form.
    pub async fn access_update(&self, finetune_id: &str, public: bool) -> Result<(), SegmindError> {
        let form = reqwest::multipart::Form::new()
            .text("request_id", finetune_id.to_owned())
            .text("segmind_public", if public { "True" } else { "False" });
        let response = send(
            self.request(Method::PUT, "/finetune/request/access-update")
                .multipart(form),
        )
        .await?;
        check(response).await.map(drop)
    }
}

async fn send(request: RequestBuilder) -> Result<Response, SegmindError> {
    request.send().await.map_err(|e| {
        if e.is_timeout() {
            SegmindError::Timeout
        } else {
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(inner) = source {
                cause = inner.to_string();
                source = inner.source();
            }
            SegmindError::Unreachable(cause)
        }
    })
}

/// The body of a 2xx answer, or the typed error for any other.
async fn check(response: Response) -> Result<String, SegmindError> {
    let status = response.status();
    let wait = retry_wait(&response);
    let body = response.text().await.map_err(|e| {
        if e.is_timeout() {
            SegmindError::Timeout
        } else {
            SegmindError::Unreachable(e.to_string())
        }
    })?;
    if status.is_success() {
        return Ok(body);
    }
    let message = error_message(&body, status);
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SegmindError::Unauthorized {
            status: status.as_u16(),
            message,
        },
        StatusCode::NOT_ACCEPTABLE => SegmindError::InsufficientCredits { message },
        StatusCode::TOO_MANY_REQUESTS => SegmindError::RateLimited { wait, message },
        s if s.is_server_error() => SegmindError::Server {
            status: s.as_u16(),
            message,
        },
        s => SegmindError::Rejected {
            status: s.as_u16(),
            message,
        },
    })
}

async fn decode<T: DeserializeOwned>(request: RequestBuilder) -> Result<T, SegmindError> {
    let body = check(send(request).await?).await?;
    serde_json::from_str(&body).map_err(|_| SegmindError::Undecodable {
        snippet: snippet(&body),
    })
}

/// Segmind's error bodies look like `{"error": "..."}`.
fn error_message(body: &str, status: StatusCode) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["error", "message", "detail"]
                .iter()
                .find_map(|k| v[*k].as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| {
            let text = snippet(body);
            if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_owned()
            } else {
                text
            }
        })
}

/// The wait from `Retry-After` or `x-rate-limit-reset-at-utc`.
fn retry_wait(response: &Response) -> Option<Duration> {
    let now = chrono::Utc::now();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(wait) = header("retry-after").and_then(|v| parse_retry_after(v, now)) {
        return Some(wait);
    }
    let reset = header("x-rate-limit-reset-at-utc")?;
    let at = chrono::DateTime::parse_from_rfc3339(reset)
        .map(|t| t.with_timezone(&chrono::Utc))
        .ok()
        .or_else(|| {
            reset
                .trim()
                .parse::<i64>()
                .ok()
                .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        })
        .or_else(|| {
            parse_retry_after(reset, now)
                .map(|d| now + chrono::Duration::from_std(d).unwrap_or_default())
        })?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

fn snippet(body: &str) -> String {
    let trimmed = body.trim();
    match trimmed.char_indices().nth(SNIPPET) {
        Some((end, _)) => format!("{}…", &trimmed[..end]),
        None => trimmed.to_owned(),
    }
}
