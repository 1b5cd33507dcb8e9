//! Token checks. Both tokens are compared in constant time; comparing their
//! SHA-256 digests also hides the expected token's length.
//!
//! The tokens the service accepts live in [`Credentials`], replaceable while
//! it runs: `POST /v1/tokens/rotate` swaps a token at once, and a rotation
//! made by `tunehook tokens --rotate` in another process is picked up by
//! [`follow_stored_tokens`], which re-reads the stored tokens every second.
//! Failed checks are logged at most once a second, with a count, so a
//! client hammering wrong tokens cannot flood the log.
//!
//! A dashboard session (`ui/session.rs` opens and ends them) is the other
//! credential: its cookie counts while its stored digest has not expired
//! and the API token it was opened with is still the one in use. It lets
//! the dashboard's pages read `/v1` (their event stream) with `GET`, never
//! change anything there: those routes keep needing the bearer token.

use super::{AppState, error::ApiError};
use crate::{config::Secret, store::Store};
use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, header},
    middleware::Next,
    response::Response,
};
use sha2::{Digest, Sha256};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a running service re-reads the stored tokens, so that a
/// rotation made by another process takes effect within this.
pub const TOKEN_POLL: Duration = Duration::from_secs(1);

/// True when `given` equals `expected`, in time independent of both.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    given.ct_eq(&expected).into()
}

/// The token in `Authorization: Bearer <token>`, when there is one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// True when the request carries `Authorization: Bearer <expected>`.
pub fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    bearer(headers).is_some_and(|token| token_matches(token, expected))
}

/// One token the service accepts now.
pub struct LiveToken {
    current: watch::Sender<Secret>,
    /// Set in the configuration: it wins over the stored one and is never
    /// rotated or re-read.
    configured: bool,
}

impl LiveToken {
    pub fn new(token: Secret, configured: bool) -> LiveToken {
        LiveToken {
            current: watch::Sender::new(token),
            configured,
        }
    }

    pub fn is_configured(&self) -> bool {
        self.configured
    }

    /// The token as it is now.
    pub fn current(&self) -> Secret {
        self.current.borrow().clone()
    }

    /// True when `given` is the token as it is now.
    pub fn matches(&self, given: &str) -> bool {
        token_matches(given, self.current.borrow().expose())
    }

    /// True when the request carries this token as its bearer token.
    pub fn bearer_matches(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|given| self.matches(given))
    }

    /// From now on, only `token` is accepted.
    pub fn replace(&self, token: Secret) {
        self.current.send_replace(token);
    }

    /// Resolves once the token is no longer `opened_with` (rotated here or
    /// by another process); never while it still is.
    pub fn rotated_from(&self, opened_with: Secret) -> impl Future<Output = ()> + Send + 'static {
        let mut changes = self.current.subscribe();
        async move {
            if changes.wait_for(|now| *now != opened_with).await.is_err() {
                // The service is going away: the stream ends with it.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The ingest and API tokens, and the log of failed checks of each.
pub struct Credentials {
    pub ingest: LiveToken,
    pub api: LiveToken,
    pub ingest_failures: FailureLog,
    pub api_failures: FailureLog,
}

impl Credentials {
    pub fn new(ingest: LiveToken, api: LiveToken) -> Credentials {
        Credentials {
            ingest,
            api,
            ingest_failures: FailureLog::new("webhooks with a wrong token; nothing stored"),
            api_failures: FailureLog::new("API requests with a missing or wrong token"),
        }
    }

    pub fn get(&self, kind: crate::store::TokenKind) -> &LiveToken {
        match kind {
            crate::store::TokenKind::Ingest => &self.ingest,
            crate::store::TokenKind::Api => &self.api,
        }
    }
}

/// Keeps the generated tokens in step with the database until `shutdown`:
/// every [`TOKEN_POLL`], reads the stored tokens and takes a value that
/// changed since the last read. Comparing with the last read (not with the
/// token in use) keeps a read that began before a rotation through the API
/// from putting the old token back.
pub async fn follow_stored_tokens(
    credentials: Arc<Credentials>,
    store: Store,
    shutdown: CancellationToken,
) {
    let mut last = (
        Some(credentials.ingest.current().expose().to_owned()),
        Some(credentials.api.current().expose().to_owned()),
    );
    let mut ticks = tokio::time::interval(TOKEN_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let stored = match store.stored_tokens().await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::debug!(error = %e, "cannot re-read the stored tokens; trying again");
                continue;
            }
        };
        for (live, (old, new), name) in [
            (&credentials.ingest, (&last.0, &stored.0), "ingest"),
            (&credentials.api, (&last.1, &stored.1), "api"),
        ] {
            if let (false, Some(new)) = (live.is_configured(), new) {
                if old.as_ref() != Some(new) {
                    live.replace(Secret::new(new.clone()));
                    tracing::info!(
                        token = name,
                        "the stored token was rotated; the old one is refused from now on"
                    );
                }
            }
        }
        last = stored;
    }
}

/// Counts failed checks and says when a log line is due: at most one a
/// second, carrying how many failures happened since the previous line.
pub struct FailureLog {
    message: &'static str,
    state: Mutex<FailureState>,
}

#[derive(Default)]
struct FailureState {
    last_line: Option<Instant>,
    unlogged: u64,
}

/// The shortest time between two lines of one [`FailureLog`].
const FAILURE_LINE_EVERY: Duration = Duration::from_secs(1);

impl FailureLog {
    pub fn new(message: &'static str) -> FailureLog {
        FailureLog {
            message,
            state: Mutex::new(FailureState::default()),
        }
    }

    /// Counts one failure at `now`; answers the count to log when a line is
    /// due, and starts counting again.
    pub fn record(&self, now: Instant) -> Option<u64> {
        // A panic elsewhere while holding the lock leaves a count that is
        // still good to use.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.unlogged += 1;
        let due = state
            .last_line
            .is_none_or(|at| now.saturating_duration_since(at) >= FAILURE_LINE_EVERY);
        if !due {
            return None;
        }
        state.last_line = Some(now);
        Some(std::mem::take(&mut state.unlogged))
    }

    /// Counts one failure now, logging it when a line is due.
    pub fn failed(&self) {
        if let Some(failures) = self.record(Instant::now()) {
            tracing::warn!(failures, "{}", self.message);
        }
    }
}

/// The name of the dashboard's session cookie.
pub const SESSION_COOKIE: &str = "tunehook_session";

/// The SHA-256 of `text`, in hex: what is stored of session ids and tokens.
pub fn digest_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The value of the session cookie, when the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// The stored digest of the request's session when it is open now and was
/// opened with the API token in use; `None` otherwise (or when the
/// database cannot say, which signs nobody in).
pub async fn open_session(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let id = digest_hex(session_cookie(headers)?);
    let token = digest_hex(state.credentials.api.current().expose());
    let now = crate::time::now_rfc3339();
    match state.store.session_valid(&id, &token, &now).await {
        Ok(true) => Some(id),
        Ok(false) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read dashboard sessions; treating as signed out");
            None
        }
    }
}

/// Marks a `/v1` request let in by a dashboard session (not the bearer
/// token), with the session's stored digest: an event stream it opens ends
/// when the session does.
#[derive(Debug, Clone)]
pub struct SessionAuth {
    pub id_sha256: String,
}

/// True while the session with this digest is open and was opened with
/// the API token in use (false when the database cannot say).
pub async fn session_still_open(state: &AppState, id_sha256: &str) -> bool {
    let token = digest_hex(state.credentials.api.current().expose());
    let now = crate::time::now_rfc3339();
    matches!(
        state.store.session_valid(id_sha256, &token, &now).await,
        Ok(true)
    )
}

/// Middleware for `/v1`: requires `Authorization: Bearer <api token>`, or
/// for `GET` a dashboard session.
pub async fn require_api_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.credentials.api.bearer_matches(request.headers()) {
        return Ok(next.run(request).await);
    }
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if reads {
        if let Some(id_sha256) = open_session(&state, request.headers()).await {
            let mut request = request;
            request.extensions_mut().insert(SessionAuth { id_sha256 });
            return Ok(next.run(request).await);
        }
    }
    state.credentials.api_failures.failed();
    Err(ApiError::Unauthorized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_logged_then_at_most_one_line_a_second_with_the_count() {
        let log = FailureLog::new("test");
        let start = Instant::now();
        assert_eq!(log.record(start), Some(1));
        for ms in [1, 100, 500, 999] {
            assert_eq!(log.record(start + Duration::from_millis(ms)), None);
        }
        // Four failures after the first line, and this one.
        assert_eq!(log.record(start + Duration::from_millis(1000)), Some(5));
        assert_eq!(log.record(start + Duration::from_millis(1500)), None);
        assert_eq!(log.record(start + Duration::from_millis(2100)), Some(2));
    }

    #[test]
    fn a_replaced_token_is_refused_and_the_new_one_accepted() {
        let token = LiveToken::new(Secret::new("old-token"), false);
        assert!(token.matches("old-token"));
        token.replace(Secret::new("new-token"));
        assert!(!token.matches("old-token"));
        assert!(token.matches("new-token"));
    }
}
