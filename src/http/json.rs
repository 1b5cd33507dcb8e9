//! `Json`, with bodies that cannot be read answered in the API's error shape.

use super::error::ApiError;
use axum::extract::{FromRequest, Request};

pub struct ApiJson<T>(pub T);

/// The most a JSON body of the API may hold: axum's default limit.
pub const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(request, state)
            .await
            .map(|axum::Json(value)| ApiJson(value))
            .map_err(|e| match e.status() {
                axum::http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge {
                    limit: DEFAULT_BODY_LIMIT,
                },
                _ => ApiError::bad_request("invalid_body", e.body_text()),
            })
    }
}

/// Reads an optional integer the way JSON Schema's `integer` means it: a
/// number with no fractional part, so `291.0` is 291 (serde alone refuses
/// it, though the document allows it).
pub fn optional_integer<'de, D>(deserializer: D) -> Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::{Deserialize, de::Error};
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(n) = number.as_i64() {
        return Ok(Some(n));
    }
    match number.as_f64() {
        // Beyond ±2^53 a double no longer holds every integer; the bounds
        // checks that follow refuse such values anyway.
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        _ => Err(D::Error::custom(format!("`{number}` is not an integer"))),
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "super::optional_integer")]
        n: Option<i64>,
    }

    fn read(text: &str) -> Option<Option<i64>> {
        serde_json::from_str::<Body>(text).ok().map(|b| b.n)
    }

    #[test]
    fn an_integer_may_be_written_with_a_zero_fraction_but_not_with_another() {
        assert_eq!(read(r#"{"n": 291}"#), Some(Some(291)));
        assert_eq!(read(r#"{"n": 291.0}"#), Some(Some(291)));
        assert_eq!(read(r#"{"n": null}"#), Some(None));
        assert_eq!(read("{}"), Some(None));
        assert_eq!(read(r#"{"n": 2.5}"#), None);
        assert_eq!(read(r#"{"n": "3"}"#), None);
    }
}
