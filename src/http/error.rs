//! The API's one error type. Every error answers with the same JSON shape,
//! `{"error": {"code": "...", "message": "..."}}`; 5xx bodies say nothing
//! internal while the log gets the cause.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// Every error's body.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `unauthorized`, `not_found`, `invalid_parameter`...
    pub code: String,
    /// For people.
    pub message: String,
    /// `invalid_request`: each field at fault (`advance_parameters.lora_rank`)
    /// and the rule it breaks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The token in a webhook URL is not the ingest token (webhooks use no
    /// bearer token).
    #[error(
        "unknown webhook token in the URL; `tunehook tokens` prints the webhook URL to register in Segmind's console"
    )]
    UnknownWebhookToken,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The request breaks rules checked before anything is sent: 422 with
    /// every field at fault.
    #[error("{message}")]
    Invalid {
        message: String,
        fields: Vec<FieldError>,
    },
    /// A well-formed request that cannot be taken as it is (422).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// The service lacks the configuration the request needs (409).
    #[error("{message}")]
    NotConfigured { code: &'static str, message: String },
    /// Segmind failed; the message is Segmind's, never ours.
    #[error("{message}")]
    Upstream { code: &'static str, message: String },
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("the body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the service cannot store this right now; retry later")]
    Unavailable(String),
    /// Every event stream `server.max_streams` allows is open.
    #[error("too many event streams are open (server.max_streams); close one, or retry later")]
    TooManyStreams,
    #[error("an internal error occurred")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized | ApiError::UnknownWebhookToken => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::NotConfigured { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::Upstream { code, .. } => (StatusCode::BAD_GATEWAY, code),
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::Unavailable(_) | ApiError::TooManyStreams => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        match e {
            crate::store::StoreError::Unavailable(cause) => ApiError::Unavailable(cause),
            other => ApiError::Internal(other.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            ApiError::Internal(cause) => tracing::error!(error = ?cause, "request failed"),
            ApiError::Unavailable(cause) => tracing::warn!(cause = %cause, "answering 503"),
            _ => {}
        }
        let body = Json(ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
                fields: match &self {
                    ApiError::Invalid { fields, .. } => fields.clone(),
                    _ => Vec::new(),
                },
            },
        });
        let mut response = (status, body).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
