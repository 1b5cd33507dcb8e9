//! The client for Segmind's fine-tune API: all five documented endpoints,
//! authenticated with `x-api-key`, with typed errors.
//!
//! The key goes to `segmind.base_url` and nowhere else. reqwest drops
//! `Authorization` on a redirect to another host but keeps every other
//! header, `x-api-key` included, and allows https → http; so this client
//! follows no redirect, and a 3xx is an error naming only the status and
//! the host it pointed to. Answers are read up to `segmind.max_response_bytes`,
//! so a misbehaving API or proxy cannot fill the memory. No error carries a
//! URL: a base URL may hold credentials of its own. Reads (details, list)
//! wait their turn in a [`limit::Limiter`] when one is set, shared by every
//! clone of the client; any 429 pauses them for the wait Segmind asked.

pub mod limit;
mod types;
pub mod upload;

pub use limit::RateLimit;
pub use types::{
    AdvanceParameters, DetailsResponse, PresignedUrl, RemoteJob, SubmitRequest, SubmitResponse,
};

use crate::{config::Secret, domain::retry::parse_retry_after};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// Most characters of an undecodable body quoted in an error.
const SNIPPET: usize = 200;

/// The largest answer read by default (`segmind.max_response_bytes`).
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

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
    /// The host tried, and why it could not be reached.
    #[error("cannot reach Segmind at {0}")]
    Unreachable(String),
    #[error("Segmind's answer could not be read: {snippet}")]
    Undecodable { snippet: String },
    #[error(
        "Segmind answered {status}, a redirect to {host}; redirects are not followed, so the API key is not sent there (check segmind.base_url)"
    )]
    Redirected { status: u16, host: String },
    #[error("Segmind's answer is larger than segmind.max_response_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
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
    max_response_bytes: u64,
    /// The pace of reads, shared by every clone; none: as fast as asked.
    limiter: Option<Arc<limit::Limiter>>,
}

impl SegmindClient {
    /// A client for the API at `base_url`. Fails only when the HTTP client
    /// cannot be built (its TLS backend), which is a startup error: a
    /// default client would follow redirects and have no timeouts.
    pub fn new(
        base_url: &str,
        api_key: Secret,
        timeout: Duration,
    ) -> Result<SegmindClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("tunehook/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .pool_max_idle_per_host(4)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(reqwest::Error::without_url)?;
        Ok(SegmindClient {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            limiter: None,
        })
    }

    /// Reads (details, list) at most at `limit`, counted together for this
    /// client and every clone of it; after a 429 they are refused, without
    /// a call, until Segmind's wait is over.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> SegmindClient {
        self.limiter = Some(Arc::new(limit::Limiter::new(limit, Instant::now())));
        self
    }

    /// Waits for this read's turn. While a 429's wait runs, fails at once
    /// with [`SegmindError::RateLimited`] and the time left: nothing is sent.
    async fn turn(&self) -> Result<(), SegmindError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .take()
            .await
            .map_err(|left| SegmindError::RateLimited {
                wait: Some(left),
                message: "waiting as Segmind asked after a 429; no call made".into(),
            })
    }

    /// Answers larger than `limit` bytes fail with [`SegmindError::TooLarge`].
    pub fn with_max_response_bytes(mut self, limit: u64) -> SegmindClient {
        self.max_response_bytes = limit;
        self
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base_url))
            .header("x-api-key", self.api_key.expose())
    }

    /// `POST /finetune/request/submit`.
    pub async fn submit(&self, request: &SubmitRequest) -> Result<SubmitResponse, SegmindError> {
        self.decode(
            self.request(Method::POST, "/finetune/request/submit")
                .json(request),
        )
        .await
    }

    /// `GET /finetune/request/details` with `{"request_id": ID}` as its body.
    pub async fn details(&self, finetune_id: &str) -> Result<Option<RemoteJob>, SegmindError> {
        self.turn().await?;
        let body = serde_json::json!({ "request_id": finetune_id });
        let answer: DetailsResponse = self
            .decode(
                self.request(Method::GET, "/finetune/request/details")
                    .json(&body),
            )
            .await?;
        Ok(answer.finetune)
    }

    /// `GET /finetune/request/list`.
    pub async fn list(&self) -> Result<Vec<RemoteJob>, SegmindError> {
        self.turn().await?;
        self.decode(self.request(Method::GET, "/finetune/request/list"))
            .await
    }

    /// `GET /finetune/request/upload/pre-signed-url` with `{"name": FILE}`.
    pub async fn presigned_url(&self, file_name: &str) -> Result<PresignedUrl, SegmindError> {
        let body = serde_json::json!({ "name": file_name });
        self.decode(
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
        self.check(response).await.map(drop)
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<T, SegmindError> {
        let body = self.check(send(request).await?).await?;
        serde_json::from_str(&body).map_err(|_| SegmindError::Undecodable {
            snippet: snippet(&body),
        })
    }

    /// The body of a 2xx answer, or the typed error for any other.
    async fn check(&self, response: Response) -> Result<String, SegmindError> {
        let status = response.status();
        if status.is_redirection() {
            return Err(SegmindError::Redirected {
                status: status.as_u16(),
                host: location_host(&response),
            });
        }
        let wait = retry_wait(&response);
        if let (StatusCode::TOO_MANY_REQUESTS, Some(limiter)) = (status, &self.limiter) {
            // The key is rate limited whichever endpoint said so.
            limiter.pause(Instant::now(), wait);
        }
        let body = read_capped(response, self.max_response_bytes).await?;
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
}

async fn send(request: RequestBuilder) -> Result<Response, SegmindError> {
    request.send().await.map_err(transport)
}

/// A transport error, naming the host it was for (never the path or
/// query: only the host and port of `segmind.base_url`).
fn transport(error: reqwest::Error) -> SegmindError {
    if error.is_timeout() {
        return SegmindError::Timeout;
    }
    let host = error.url().and_then(|url| {
        let host = url.host_str()?;
        Some(match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        })
    });
    let error = error.without_url();
    let mut cause = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    SegmindError::Unreachable(match host {
        Some(host) => format!("{host}: {cause}"),
        None => cause,
    })
}

/// The body, read in chunks and given up on as soon as it passes `limit`
/// (at once when its `Content-Length` already does).
async fn read_capped(mut response: Response, limit: u64) -> Result<String, SegmindError> {
    let too_large = || SegmindError::TooLarge { limit };
    if response
        .content_length()
        .is_some_and(|length| length > limit)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Where a redirect pointed: its host (and port when given), never its path
/// or query, which may carry secrets.
fn location_host(response: &Response) -> String {
    let Some(location) = response.headers().get("location") else {
        return "nowhere (no Location header)".into();
    };
    let target = location
        .to_str()
        .ok()
        .and_then(|text| response.url().join(text).ok());
    match target
        .as_ref()
        .and_then(|url| Some((url.host_str()?, url.port())))
    {
        Some((host, Some(port))) => format!("{host}:{port}"),
        Some((host, None)) => host.to_owned(),
        None => "an unreadable Location".into(),
    }
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
