//! Token checks. Both tokens are compared in constant time; comparing their
//! SHA-256 digests also hides the expected token's length.

use super::{AppState, error::ApiError};
use axum::{
    extract::{Request, State},
    http::{HeaderMap, header},
    middleware::Next,
    response::Response,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// True when `given` equals `expected`, in time independent of both.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    given.ct_eq(&expected).into()
}

/// True when the request carries `Authorization: Bearer <expected>`.
pub fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .is_some_and(|token| token_matches(token, expected))
}

/// Middleware for `/v1`: requires `Authorization: Bearer <api token>`.
pub async fn require_api_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if bearer_matches(request.headers(), state.api_token.expose()) {
        return Ok(next.run(request).await);
    }
    tracing::warn!(path = %request.uri().path(), "API request with a missing or wrong token");
    Err(ApiError::Unauthorized)
}
