//! The web dashboard at `/`: server-rendered pages (maud) over the same
//! store the API reads, a stylesheet and a small script embedded in the
//! binary. Pages work without JavaScript; the script only localises times
//! and keeps a page current from the event stream.
//!
//! - `GET /signin`, `POST /signin`, `POST /signout`: `session`
//! - `GET /`: `jobs`; `GET /jobs/{finetune_id}`: `job`
//! - `GET /deliveries`, `POST /deliveries/{id}/retry`, `POST /sinks/{name}/replay`: `deliveries`
//! - `GET /sinks`: `sinks`
//! - `GET /assets/{file}`: `assets`
//!
//! Every page but sign-in needs a session (`session::require`); every
//! `POST` must come from this site's own pages (`session::same_origin`);
//! every answer carries a `Content-Security-Policy` that allows nothing
//! but this origin and no inline script or style (`security_headers`).

mod assets;
mod deliveries;
mod input;
mod job;
mod jobs;
mod layout;
mod session;

pub use session::{SIGN_IN_FAILURES, SignInLimit};
mod sinks;

use crate::http::AppState;
use axum::{
    Router,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use maud::{Markup, html};

/// The policy every dashboard answer carries: only this origin, no inline
/// script or style, never inside a frame, forms only to this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

/// The dashboard's routes, when `ui.enabled`.
pub fn router(state: AppState) -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(jobs::page))
        .route("/jobs/{finetune_id}", get(job::page))
        .route("/deliveries", get(deliveries::page))
        .route("/deliveries/{id}/retry", post(deliveries::retry))
        .route("/sinks", get(sinks::page))
        .route("/sinks/{name}/replay", post(deliveries::replay))
        .route("/signout", post(session::sign_out))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            session::require,
        ));
    Router::new()
        .route("/signin", get(session::sign_in_page).post(session::sign_in))
        .merge(pages)
        .route_layer(middleware::from_fn_with_state(state, session::same_origin))
        .route("/assets/{file}", get(assets::serve))
        .layer(middleware::from_fn(security_headers))
}

/// Adds the security headers to every dashboard answer.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    guard(&mut response);
    response
}

/// The dashboard's security headers, on `response`.
fn guard(response: &mut Response) {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// A rendered page with its status.
pub(crate) fn html(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// A page that says what went wrong, in words.
pub(crate) fn problem(status: StatusCode, title: &str, message: &str) -> Response {
    let body = html! {
        h1 { (title) }
        p.error role="alert" { (message) }
        p { a href="/" { "Back to the jobs" } }
    };
    html(status, layout::page(title, layout::Nav::Jobs, None, body))
}

/// The page for a dashboard path that does not exist, with the
/// dashboard's headers.
pub fn not_found_page() -> Response {
    let mut response = problem(
        StatusCode::NOT_FOUND,
        "No such page",
        "There is no dashboard page at this address.",
    );
    guard(&mut response);
    response
}

/// The page for a store error: the database could not answer.
pub(crate) fn unavailable(error: crate::store::StoreError) -> Response {
    tracing::warn!(error = %error, "a dashboard page could not read the database");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        "The database could not answer just now. Reload the page in a moment.",
    )
}

/// A redirect after a form (303: the browser follows with `GET`).
pub(crate) fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}
