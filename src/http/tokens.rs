//! `POST /v1/tokens/rotate`: replaces a generated token (after a leak) and
//! answers the new one. The running service refuses the old one from the
//! moment of the answer. A token set in the configuration is not the
//! service's to change: 409, naming where it is set.

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    json::ApiJson,
};
use crate::{config::Secret, store::TokenKind};
use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};

/// Which token.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenName {
    /// The secret in the webhook URL.
    Ingest,
    /// The API's bearer token.
    Api,
}

impl From<TokenName> for TokenKind {
    fn from(name: TokenName) -> TokenKind {
        match name {
            TokenName::Ingest => TokenKind::Ingest,
            TokenName::Api => TokenKind::Api,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    token: TokenName,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rotated {
    token: TokenName,
    /// The new token; the old one is refused from now on.
    value: String,
    /// For `ingest`: the webhook path to register in Segmind's console.
    webhook_path: Option<String>,
    /// For `ingest`, when `server.public_url` is set: the full webhook URL.
    webhook_url: Option<String>,
}

/// Replaces a generated token and answers the new one.
#[utoipa::path(post, path = "/v1/tokens/rotate", tag = "tokens", request_body = RotateBody, security(("bearer" = [])),
    responses((status = 200, description = "The new token (rotating `api` answers with the new API token; the one this request used is refused from now on)", body = Rotated),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "The token is set in the configuration; change it there", body = ErrorBody),
        (status = 503, description = "The database cannot take the write; retry", body = ErrorBody)))]
pub async fn rotate(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RotateBody>,
) -> Result<Json<Rotated>, ApiError> {
    let kind = TokenKind::from(body.token);
    let live = state.credentials.get(kind);
    if live.is_configured() {
        return Err(ApiError::Conflict(kind.configured_message()));
    }
    let value = state.store.rotate_token(kind).await?;
    live.replace(Secret::new(value.clone()));
    tracing::info!(
        token = kind.as_str(),
        "token rotated through the API; the old one is refused from now on"
    );
    let webhook_path = (kind == TokenKind::Ingest).then(|| format!("/webhooks/segmind/{value}"));
    let webhook_url = webhook_path
        .as_ref()
        .filter(|_| !state.public_url.is_empty())
        .map(|path| format!("{}{path}", state.public_url.trim_end_matches('/')));
    Ok(Json(Rotated {
        token: body.token,
        value,
        webhook_path,
        webhook_url,
    }))
}
