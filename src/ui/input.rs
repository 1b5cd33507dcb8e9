//! The dashboard's extractors: axum's `Query`, `Form` and `Path`, with what
//! cannot be read answered as a page that says so (400, or 404 for a path),
//! under the dashboard's headers, instead of axum's plain-text rejection.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{StatusCode, request::Parts},
    response::Response,
};

/// A query string the page reads.
pub struct PageQuery<T>(pub T);

/// A submitted form.
pub struct PageForm<T>(pub T);

/// A path parameter.
pub struct PagePath<T>(pub T);

fn not_understood(what: &str, detail: &str) -> Response {
    super::problem(
        StatusCode::BAD_REQUEST,
        "Not understood",
        &format!("The {what} could not be read: {detail}"),
    )
}

impl<T, S> FromRequestParts<S> for PageQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| PageQuery(value))
            .map_err(|e| not_understood("address's query", &e.body_text()))
    }
}

impl<T, S> FromRequest<S> for PageForm<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        axum::extract::Form::<T>::from_request(request, state)
            .await
            .map(|axum::extract::Form(value)| PageForm(value))
            .map_err(|e| not_understood("form", &e.body_text()))
    }
}

impl<T, S> FromRequestParts<S> for PagePath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PagePath(value))
            .map_err(|_| {
                super::problem(StatusCode::NOT_FOUND, "Not found", "There is no such page.")
            })
    }
}
