//! Uploading a dataset to the pre-signed URL Segmind hands out: one `PUT`
//! of the file, streamed from disk with its length announced (S3 refuses a
//! chunked upload to a pre-signed URL), reporting progress as it goes.
//!
//! The URL carries its own signature, so no API key is sent, and neither
//! it nor its query ever appears in an error. There is no overall timeout,
//! since 100 MB over a slow link takes a while; a connection that stops
//! moving for the read timeout fails instead.

use futures_util::StreamExt;
use std::{path::Path, time::Duration};
use tokio_util::io::ReaderStream;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("cannot read {path}: {error}")]
    File { path: String, error: String },
    #[error("the upload failed: {0}")]
    Network(String),
    #[error("the upload was refused ({status}): {message}")]
    Refused { status: u16, message: String },
}

pub struct Uploader {
    http: reqwest::Client,
}

impl Uploader {
    /// Fails only when the HTTP client cannot be built.
    pub fn new(stall_timeout: Duration) -> Result<Uploader, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("tunehook/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(stall_timeout.min(Duration::from_secs(10)))
            .read_timeout(stall_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(reqwest::Error::without_url)?;
        Ok(Uploader { http })
    }

    /// PUTs the file at `path` to `presigned_url`; `progress` is called
    /// with the bytes sent so far and the total. Returns the total.
    pub async fn put_file(
        &self,
        presigned_url: &str,
        path: &Path,
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> Result<u64, UploadError> {
        let file_error = |e: std::io::Error| UploadError::File {
            path: path.display().to_string(),
            error: e.to_string(),
        };
        let file = tokio::fs::File::open(path).await.map_err(file_error)?;
        let total = file.metadata().await.map_err(file_error)?.len();
        let mut sent = 0u64;
        let stream = ReaderStream::new(file).map(move |chunk| {
            if let Ok(bytes) = &chunk {
                sent += bytes.len() as u64;
                progress(sent, total);
            }
            chunk
        });
        let response = self
            .http
            .put(presigned_url)
            .header(reqwest::header::CONTENT_LENGTH, total)
            .header(reqwest::header::CONTENT_TYPE, "application/zip")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(|e| UploadError::Network(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(total);
        }
        let body = response.text().await.unwrap_or_default();
        Err(UploadError::Refused {
            status: status.as_u16(),
            message: s3_message(&body),
        })
    }
}

/// S3 explains a refusal in XML (`<Message>…</Message>`); the message, or
/// the start of whatever else came.
fn s3_message(body: &str) -> String {
    let inner = body
        .split_once("<Message>")
        .and_then(|(_, rest)| rest.split_once("</Message>"))
        .map(|(message, _)| message);
    let text = inner.unwrap_or(body).trim();
    if text.is_empty() {
        return "no message".into();
    }
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::s3_message;

    #[test]
    fn an_s3_refusal_is_shown_by_its_message() {
        assert_eq!(
            s3_message(
                "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            ),
            "Request has expired"
        );
        assert_eq!(s3_message(""), "no message");
        assert_eq!(s3_message("plain"), "plain");
    }
}
