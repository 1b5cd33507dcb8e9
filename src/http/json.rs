//! `Json`, with bodies that cannot be read answered in the API's error shape.

use super::error::ApiError;
use axum::extract::{FromRequest, Request};

pub struct ApiJson<T>(pub T);

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
            .map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))
    }
}
