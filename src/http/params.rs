//! Query parameters shared by the list endpoints: `limit`, cursors and
//! status names. A bad value is a 400 that names the parameter.
//!
//! What each accepts is exactly what the OpenAPI document declares (the
//! `*_PATTERN` constants are used in both places), so a client generated
//! from the document never sends a value the server refuses, nor the other
//! way round.

use super::error::ApiError;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// A job cursor: hex digits, two per byte.
pub const JOB_CURSOR_PATTERN: &str = "^([0-9a-fA-F]{2})*$";

/// A status name as a filter: letters, digits, `_`, `-` and `.` (the last
/// two read as `_`), at most 64.
pub const STATUS_PATTERN: &str = "^[A-Za-z0-9_.-]{1,64}$";

/// Plain decimal digits, optionally negative: what the document's
/// `integer` means, without `+` or spaces.
fn is_integer(raw: &str) -> bool {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

pub fn limit(raw: Option<&str>) -> Result<u32, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => Some(raw)
            .filter(|raw| is_integer(raw))
            .and_then(|raw| raw.parse::<u32>().ok())
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
    match raw {
        None => Ok(None),
        Some(raw) => Some(raw)
            .filter(|raw| is_integer(raw))
            .and_then(|raw| raw.parse::<i64>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_parameter",
                    "`cursor` must be an integer, the `next_cursor` of the previous page",
                )
            }),
    }
}

/// A jobs cursor is the last job's `(updated_at, finetune_id)` in hex,
/// opaque to clients.
pub fn encode_job_cursor(updated_at: &str, finetune_id: &str) -> String {
    hex::encode(format!("{updated_at}\n{finetune_id}"))
}

/// Any hex string is a cursor: it names a position in the order of
/// `(updated_at, finetune_id)`, and every such pair is a position (one that
/// no job has simply starts the page after where it would be). So the
/// server takes every value the document's pattern allows.
pub fn decode_job_cursor(raw: &str) -> Result<(String, String), ApiError> {
    let bytes = hex::decode(raw).map_err(|_| {
        ApiError::bad_request(
            "invalid_parameter",
            "`cursor` must be hex digits, the `next_cursor` of the previous page",
        )
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let (at, id) = text.split_once('\n').unwrap_or((&text, ""));
    Ok((at.to_owned(), id.to_owned()))
}

/// A status name to filter on, in the document's [`STATUS_PATTERN`].
pub fn status(raw: Option<&str>) -> Result<Option<crate::domain::Status>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let fits = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    fits.then(|| crate::domain::Status::parse(raw))
        .flatten()
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_parameter",
                "`status` is not a status name (letters, digits, `_`, `-`, `.`; at most 64)",
            )
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_cursor_reads_back_as_the_position_it_was_made_from() {
        let cursor = encode_job_cursor("2026-01-01T00:00:00.000000Z", "ft/1 & more");
        assert_eq!(
            decode_job_cursor(&cursor).ok(),
            Some(("2026-01-01T00:00:00.000000Z".into(), "ft/1 & more".into()))
        );
    }

    #[test]
    fn every_hex_string_is_a_cursor_and_nothing_else_is() {
        for good in ["", "00", "ffFF", "0a0a0a"] {
            assert!(decode_job_cursor(good).is_ok(), "{good}");
        }
        for bad in ["0", "xyz", "0g", "bm90LWEtY3Vyc29y", " 00"] {
            assert!(decode_job_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_and_id_cursors_are_plain_integers() {
        assert_eq!(limit(Some("500")).ok(), Some(500));
        for bad in ["", "0", "501", "+5", " 5", "5.0", "-1"] {
            assert!(limit(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(id_cursor(Some("-3")).ok(), Some(Some(-3)));
        for bad in ["", "+3", "1 OR 1=1", "99999999999999999999"] {
            assert!(id_cursor(Some(bad)).is_err(), "{bad}");
        }
    }
}
