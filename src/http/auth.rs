//! Token checks. Both tokens are compared in constant time; comparing their
//! SHA-256 digests also hides the expected token's length.

use super::{AppState, error::ApiError};
use axum::{
    extract::{Request, State},
    http::header,
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

/// Middleware for `/v1`: requires `Authorization: Bearer <api token>`.
pub async fn require_api_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        Some(token) if token_matches(token, state.api_token.expose()) => {
            Ok(next.run(request).await)
        }
        _ => {
            tracing::warn!(path = %request.uri().path(), "API request with a missing or wrong token");
            Err(ApiError::Unauthorized)
        }
    }
}
