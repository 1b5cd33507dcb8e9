//! Query parameters shared by the list endpoints: `limit` and cursors. A bad
//! value is a 400 that names the parameter.

use super::error::ApiError;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

pub fn limit(raw: Option<&str>) -> Result<u32, ApiError> {
    match raw.filter(|s| !s.is_empty()) {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_parameter",
                    format!("`limit` must be an integer from 1 to {MAX_LIMIT}"),
                )
            }),
    }
}

/// A cursor that is the id of the last row of the previous page.
pub fn id_cursor(raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    match raw.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(raw) => raw.parse::<i64>().map(Some).map_err(|_| {
            ApiError::bad_request(
                "invalid_parameter",
                "`cursor` is not a cursor this API returned",
            )
        }),
    }
}

/// A jobs cursor is the last job's `(updated_at, finetune_id)`, opaque to
/// clients.
pub fn encode_job_cursor(updated_at: &str, finetune_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{updated_at}\n{finetune_id}"))
}

pub fn decode_job_cursor(raw: &str) -> Result<(String, String), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_parameter",
            "`cursor` is not a cursor this API returned",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (at, id) = text.split_once('\n').ok_or_else(bad)?;
    Ok((at.to_owned(), id.to_owned()))
}

/// `Query`, with malformed query strings answered in the API's error shape.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))
    }
}

/// `Path`, with path parameters that cannot be read (such as bytes that are
/// not UTF-8) answered in the API's error shape.
pub struct ApiPath<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))
    }
}
