//! Signing in and out, the session every page but sign-in needs, and the
//! `Origin` check every form goes through.
//!
//! Signing in takes the API token (`tunehook tokens` prints it) and opens
//! a session: a random id in an `HttpOnly`, `SameSite=Strict` cookie
//! (`Secure` when the request came over https), of which only the digest
//! is stored, with an expiry of `ui.session_ttl`. `http/auth.rs` decides
//! whether a cookie still counts.

use super::{
    input::{PageForm, PageQuery},
    layout::{self, Nav},
};
use crate::http::{
    AppState,
    auth::{self, SESSION_COOKIE},
};
use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::Response,
};
use maud::html;
use rand::Rng;
use serde::Deserialize;
use std::time::Instant;

/// Sends a request without a session to sign-in (a `GET` comes back to
/// where it was going once signed in).
pub async fn require(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if auth::open_session(&state, request.headers())
        .await
        .is_some()
    {
        return next.run(request).await;
    }
    if request.method() != Method::GET {
        return super::see_other("/signin");
    }
    let wanted = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    super::see_other(&format!(
        "/signin{}",
        layout::query(&[("next", Some(wanted))])
    ))
}

/// Refuses a `POST` that did not come from this site's own pages: its
/// `Origin` must be this server's origin (or `server.public_url`'s); a
/// browser that sends none must say `Sec-Fetch-Site: same-origin`.
pub async fn same_origin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    if from_this_site(request.headers(), &state.public_url) {
        return next.run(request).await;
    }
    tracing::warn!("a dashboard form came from another site; refused");
    super::problem(
        StatusCode::FORBIDDEN,
        "Refused",
        "This form was sent from another site, so nothing was changed. Use the dashboard's own page.",
    )
}

fn from_this_site(headers: &HeaderMap, public_url: &str) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(origin) = text("origin") else {
        return text("sec-fetch-site") == Some("same-origin");
    };
    let scheme = text("x-forwarded-proto")
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .unwrap_or("http");
    let host = text("x-forwarded-host")
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .or_else(|| text("host"));
    let own = host.map(|host| format!("{scheme}://{host}"));
    let public = url::Url::parse(public_url)
        .ok()
        .map(|u| u.origin().ascii_serialization());
    [own, public]
        .into_iter()
        .flatten()
        .any(|o| o.eq_ignore_ascii_case(origin))
}

/// True when the request came over https (directly or through a proxy
/// that says so), so the cookie must be `Secure`.
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

#[derive(Debug, Deserialize)]
pub struct SignInQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    token: String,
    next: Option<String>,
}

/// `GET /signin`.
pub async fn sign_in_page(PageQuery(query): PageQuery<SignInQuery>) -> Response {
    super::html(StatusCode::OK, form(query.next.as_deref(), None))
}

/// Failed sign-ins each client address may make in [`SIGN_IN_WINDOW`]
/// before the next ones are refused until the window ends: a person who
/// mistypes the token gets through, a guesser gets ten tries a minute.
pub const SIGN_IN_FAILURES: u32 = 10;
const SIGN_IN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Addresses remembered at most; past it the oldest windows are forgotten.
const SIGN_IN_ADDRESSES: usize = 10_000;

/// Failed sign-ins per client address (the connection's peer: behind a
/// proxy that is the proxy, whose clients then share the allowance).
#[derive(Default)]
pub struct SignInLimit {
    failures: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (Instant, u32)>>,
}

impl SignInLimit {
    /// Whether `addr` may try now.
    fn allows(&self, addr: std::net::IpAddr, now: Instant) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match failures.get(&addr) {
            Some((since, count)) if now.duration_since(*since) < SIGN_IN_WINDOW => {
                *count < SIGN_IN_FAILURES
            }
            _ => true,
        }
    }

    fn failed(&self, addr: std::net::IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= SIGN_IN_ADDRESSES {
            failures.retain(|_, (since, _)| now.duration_since(*since) < SIGN_IN_WINDOW);
        }
        let entry = failures.entry(addr).or_insert((now, 0));
        if now.duration_since(entry.0) >= SIGN_IN_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

/// `POST /signin`: the API token opens a session.
pub async fn sign_in(
    State(state): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    PageForm(form_data): PageForm<SignInForm>,
) -> Response {
    let next = layout::local_path(form_data.next.as_deref()).unwrap_or("/");
    let token = form_data.token.trim();
    let addr = peer.map(|axum::Extension(axum::extract::ConnectInfo(addr))| addr.ip());
    let now = Instant::now();
    if let Some(addr) = addr {
        if !state.sign_in_limit.allows(addr, now) {
            return super::html(
                StatusCode::TOO_MANY_REQUESTS,
                form(
                    Some(next),
                    Some("Too many wrong tokens from your address: wait a minute, then try again."),
                ),
            );
        }
    }
    if token.is_empty() || !state.credentials.api.matches(token) {
        state.credentials.api_failures.failed();
        if let (Some(addr), false) = (addr, token.is_empty()) {
            state.sign_in_limit.failed(addr, now);
        }
        let message = if token.is_empty() {
            "Enter the API token."
        } else {
            "That is not the API token. `tunehook tokens` prints it."
        };
        return super::html(StatusCode::UNAUTHORIZED, form(Some(next), Some(message)));
    }
    let id = hex::encode(rand::rng().random::<[u8; 32]>());
    let now = chrono::Utc::now();
    let ttl = state.session_ttl;
    let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(12));
    let session = crate::store::NewSession {
        id_sha256: auth::digest_hex(&id),
        token_sha256: auth::digest_hex(state.credentials.api.current().expose()),
        created_at: crate::time::rfc3339(now),
        expires_at: crate::time::rfc3339(expires),
    };
    if let Err(e) = state.store.open_session(session).await {
        return super::unavailable(e);
    }
    let secure = if over_https(&headers) || state.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        ttl.as_secs()
    );
    let mut response = super::see_other(next);
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /signout`: ends the session here and in the browser.
pub async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = auth::session_cookie(&headers) {
        if let Err(e) = state.store.end_session(auth::digest_hex(id)).await {
            return super::unavailable(e);
        }
    }
    let mut response = super::see_other("/signin");
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn form(next: Option<&str>, error: Option<&str>) -> maud::Markup {
    let next = layout::local_path(next).unwrap_or("/");
    let body = html! {
        section.signin {
            h1 { "Sign in" }
            p { "Enter the API token. " code { "tunehook tokens" } " prints it." }
            @if let Some(error) = error {
                p.error #signin-error role="alert" { (error) }
            }
            form #signin-form method="post" action="/signin" {
                input type="hidden" name="next" value=(next);
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button #signin type="submit" { "Sign in" }
            }
        }
    };
    layout::page("Sign in", Nav::None, None, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn a_form_from_this_host_passes_and_one_from_elsewhere_does_not() {
        let own = headers(&[
            ("host", "tunehook.local:8080"),
            ("origin", "http://tunehook.local:8080"),
        ]);
        assert!(from_this_site(&own, ""));
        let other = headers(&[
            ("host", "tunehook.local:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert!(!from_this_site(&other, ""));
        let wrong_scheme = headers(&[
            ("host", "tunehook.local"),
            ("origin", "https://tunehook.local"),
        ]);
        assert!(!from_this_site(&wrong_scheme, ""));
    }

    #[test]
    fn behind_a_proxy_the_forwarded_scheme_and_host_or_the_public_url_count() {
        let proxied = headers(&[
            ("host", "10.0.0.5:8080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "hooks.example.com"),
            ("origin", "https://hooks.example.com"),
        ]);
        assert!(from_this_site(&proxied, ""));
        let public = headers(&[
            ("host", "10.0.0.5:8080"),
            ("origin", "https://hooks.example.com"),
        ]);
        assert!(from_this_site(&public, "https://hooks.example.com/"));
        assert!(!from_this_site(&public, ""));
    }

    #[test]
    fn without_an_origin_only_a_same_origin_fetch_passes() {
        assert!(!from_this_site(&headers(&[("host", "a")]), ""));
        assert!(!from_this_site(
            &headers(&[("host", "a"), ("sec-fetch-site", "cross-site")]),
            ""
        ));
        assert!(from_this_site(
            &headers(&[("host", "a"), ("sec-fetch-site", "same-origin")]),
            ""
        ));
    }

    #[test]
    fn the_cookie_is_secure_only_over_https() {
        assert!(over_https(&headers(&[("x-forwarded-proto", "https")])));
        assert!(!over_https(&headers(&[("x-forwarded-proto", "http")])));
        assert!(!over_https(&headers(&[])));
    }
}
