//! The dashboard over plain HTTP, without a browser: its security headers,
//! sign-in and sessions, the refusal of cross-origin form posts, escaping of
//! what webhooks carry, and what its pages list.
//!
//! Redirects are never followed, so each test sees the 303s a browser would.
//! Each page is parsed once, as a browser would build it, and read through
//! CSS selectors for the contract's element hooks (ids, classes, `data-`
//! attributes). Its raw text is kept too, for what a parser hides on
//! purpose: markup that must never reach the page unescaped.

use crate::{
    fake_sink::{FAIL, FakeSink, OK},
    helpers::{TestApp, spawn_app, spawn_app_with},
};
use reqwest::{
    StatusCode,
    header::{self, HeaderMap},
};
use scraper::{ElementRef, Html, Selector};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tunehook::config::SinkSettings;

const SESSION: &str = "tunehook_session";

// ---------------------------------------------------------------- requests

/// A client that does not follow redirects and keeps no cookies.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client")
}

/// This server's own origin, as a browser on it would send it.
fn origin(app: &TestApp) -> String {
    format!("http://{}", app.addr)
}

/// A page as the browser gets it, with the session cookie when there is one.
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    /// The body as sent.
    html: String,
    /// The body parsed, once.
    dom: Html,
}

impl Page {
    fn header(&self, name: impl header::AsHeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn location(&self) -> &str {
        self.header(header::LOCATION)
    }

    /// Every `Set-Cookie` header.
    fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The `Set-Cookie` header of the session cookie, if any.
    fn session_set_cookie(&self) -> Option<&str> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.trim_start().starts_with(&format!("{SESSION}=")))
    }
}

async fn read(response: reqwest::Response) -> Page {
    let status = response.status();
    let headers = response.headers().clone();
    let html = response.text().await.expect("a body");
    let dom = Html::parse_document(&html);
    Page {
        status,
        headers,
        html,
        dom,
    }
}

/// GETs a dashboard path, with `cookie` (a `name=value` pair) when given.
async fn get(app: &TestApp, path: &str, cookie: Option<&str>) -> Page {
    let mut request = browser().get(app.url(path));
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    read(request.send().await.expect("the page request completes")).await
}

/// POSTs a form to a dashboard path with the given cookie and `Origin`
/// (none when `None`) and any extra headers.
async fn post_form(
    app: &TestApp,
    path: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    extra: &[(&str, &str)],
    form: &[(&str, &str)],
) -> Page {
    let mut request = browser().post(app.url(path)).form(form);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    read(request.send().await.expect("the form post completes")).await
}

/// POSTs the sign-in form from this server's own origin.
async fn submit_sign_in(app: &TestApp, token: &str, next: &str) -> Page {
    post_form(
        app,
        "/signin",
        None,
        Some(&origin(app)),
        &[],
        &[("token", token), ("next", next)],
    )
    .await
}

/// The `name=value` pair to send back for a `Set-Cookie` header.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Signs in with `token` and answers the session cookie to send back.
async fn sign_in_with(app: &TestApp, token: &str) -> String {
    let page = submit_sign_in(app, token, "/").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    cookie_pair(page.session_set_cookie().expect("a session cookie"))
}

/// Signs in with the API token and answers the session cookie.
async fn sign_in(app: &TestApp) -> String {
    sign_in_with(app, &app.api_token).await
}

/// The attributes of a `Set-Cookie` header after its `name=value`, names
/// lower-cased.
fn cookie_attributes(set_cookie: &str) -> Vec<(String, String)> {
    set_cookie
        .split(';')
        .skip(1)
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect()
}

fn cookie_attribute(set_cookie: &str, name: &str) -> Option<String> {
    cookie_attributes(set_cookie)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

/// A `Location` a browser resolves to this same server: a path, not `//host`
/// or `/\host` (which browsers read as `//host`), and no scheme.
fn is_local(location: &str) -> bool {
    location.starts_with('/') && !location.starts_with("//") && !location.starts_with("/\\")
}

/// A query parameter of a local `Location`, decoded.
fn query_param(location: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(&format!("http://here{location}")).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

// ------------------------------------------------------------------- pages

/// A CSS selector the tests spell out themselves, so one that does not
/// parse is a mistake in the test.
fn selector(css: &str) -> Selector {
    Selector::parse(css).unwrap_or_else(|e| panic!("the selector `{css}`: {e}"))
}

impl Page {
    /// The elements `css` selects, in document order.
    fn select(&self, css: &str) -> Vec<ElementRef<'_>> {
        self.dom.select(&selector(css)).collect()
    }

    /// The first element `css` selects.
    fn find(&self, css: &str) -> Option<ElementRef<'_>> {
        self.dom.select(&selector(css)).next()
    }

    /// The attribute `name` of the first element `css` selects.
    fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.find(css)?.attr(name).map(str::to_owned)
    }

    /// The attribute `name` of each element `css` selects that has it, in
    /// order.
    fn attrs(&self, css: &str, name: &str) -> Vec<String> {
        self.select(css)
            .into_iter()
            .filter_map(|e| e.attr(name).map(str::to_owned))
            .collect()
    }

    /// The text of the first element `css` selects.
    fn text(&self, css: &str) -> Option<String> {
        self.find(css).map(text)
    }
}

/// The text an element shows, inner elements' included, each run of white
/// space one space.
fn text(element: ElementRef<'_>) -> String {
    element
        .text()
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn has_class(element: ElementRef<'_>, class: &str) -> bool {
    element.value().classes().any(|c| c == class)
}

/// The markup of each element, for a failure's message.
fn markup(elements: &[ElementRef<'_>]) -> Vec<String> {
    elements.iter().map(ElementRef::html).collect()
}

/// The `data-finetune-id` of each `tr.job` on a jobs page, in order.
fn listed_jobs(page: &Page) -> Vec<String> {
    page.attrs("tr.job", "data-finetune-id")
}

/// What every dashboard answer carries, whatever its status: the contract's
/// security headers, and no markup the policy would block.
fn assert_guarded(page: &Page, what: &str) {
    let csp = page.header(header::CONTENT_SECURITY_POLICY);
    let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
    for directive in [
        "default-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "object-src 'none'",
    ] {
        assert!(
            directives.contains(&directive),
            "{what}: `{directive}` missing from the CSP `{csp}`"
        );
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{what}: {csp}"
    );
    assert_eq!(
        page.header(header::X_CONTENT_TYPE_OPTIONS),
        "nosniff",
        "{what}"
    );
    assert_eq!(page.header(header::X_FRAME_OPTIONS), "DENY", "{what}");
    assert_eq!(
        page.header(header::REFERRER_POLICY),
        "same-origin",
        "{what}"
    );
    let inline = page.select("script:not([src])");
    assert!(
        inline.is_empty(),
        "{what}: an inline script, which the CSP blocks: {:?}",
        markup(&inline)
    );
    assert!(
        page.find("style").is_none(),
        "{what}: a <style> element, which the CSP blocks"
    );
    let styled = page.select("[style]");
    assert!(
        styled.is_empty(),
        "{what}: a style attribute, which the CSP blocks: {:?}",
        markup(&styled)
    );
    let handlers: Vec<String> = page
        .dom
        .root_element()
        .descendent_elements()
        .filter(|e| e.value().attrs().any(|(name, _)| name.starts_with("on")))
        .map(|e| e.html())
        .collect();
    assert!(
        handlers.is_empty(),
        "{what}: an inline event handler, which the CSP blocks: {handlers:?}"
    );
}

/// An HTML page with status `status`, guarded.
fn assert_html(page: &Page, status: StatusCode, what: &str) {
    assert_eq!(page.status, status, "{what}: {}", page.html);
    assert!(
        page.header(header::CONTENT_TYPE).starts_with("text/html"),
        "{what}: {}",
        page.header(header::CONTENT_TYPE)
    );
    assert_guarded(page, what);
}

/// A redirect to the sign-in page.
fn assert_to_sign_in(page: &Page, what: &str) {
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{what}: {}", page.html);
    assert!(
        page.location().starts_with("/signin"),
        "{what}: to {}",
        page.location()
    );
}

// ------------------------------------------------------------ deliveries

/// An `http` sink named `name` posting to `url` that gives up after one
/// failed attempt.
fn one_shot_sink(name: &str, url: &str) -> SinkSettings {
    SinkSettings {
        retry_schedule: Some(vec![]),
        ..http_sink(name, url)
    }
}

fn http_sink(name: &str, url: &str) -> SinkSettings {
    toml::from_str(&format!(
        "name = \"{name}\"\nkind = \"http\"\nurl = \"{url}\""
    ))
    .expect("a valid sink")
}

async fn deliveries(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/v1/deliveries?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["deliveries"].as_array().cloned().unwrap_or_default()
}

/// An app with one sink, `broken`, whose only delivery (of job `ft-dead`)
/// is dead; the fake sink behind it answers 500 until told otherwise.
async fn app_with_a_dead_delivery() -> (TestApp, FakeSink, i64) {
    let fake = FakeSink::answering(|_, _| FAIL).await;
    let app = spawn_app_with(|s| {
        s.delivery.timeout = Duration::from_secs(5);
        s.sinks = vec![one_shot_sink("broken", &fake.url())];
    })
    .await;
    app.post(json!({"event": "FAILED", "finetune_id": "ft-dead", "name": "doomed"}))
        .await;
    let list = app
        .wait_for("/v1/deliveries?status=dead", "a dead delivery", |b| {
            b["deliveries"].as_array().is_some_and(|d| d.len() == 1)
        })
        .await;
    let id = list["deliveries"][0]["id"].as_i64().expect("an id");
    (app, fake, id)
}

async fn delivery(app: &TestApp, id: i64) -> Value {
    let (status, body) = app.get(&format!("/v1/deliveries/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

// ------------------------------------------------------------------- tests

#[tokio::test]
async fn every_dashboard_page_carries_the_security_headers_and_no_inline_code() {
    let (app, _fake, _) = app_with_a_dead_delivery().await;
    let signed_out = get(&app, "/", None).await;
    assert_to_sign_in(&signed_out, "GET / signed out");
    assert_guarded(&signed_out, "the signed-out redirect");

    let sign_in_page = get(&app, "/signin", None).await;
    assert_html(&sign_in_page, StatusCode::OK, "/signin");

    let cookie = sign_in(&app).await;
    for (path, status) in [
        ("/", StatusCode::OK),
        ("/jobs/ft-dead", StatusCode::OK),
        ("/jobs/no-such-job", StatusCode::NOT_FOUND),
        ("/deliveries", StatusCode::OK),
        ("/sinks", StatusCode::OK),
    ] {
        let page = get(&app, path, Some(&cookie)).await;
        assert_html(&page, status, path);
    }

    let refused = post_form(
        &app,
        "/signout",
        Some(&cookie),
        Some("http://evil.example"),
        &[],
        &[],
    )
    .await;
    assert_html(&refused, StatusCode::FORBIDDEN, "the cross-origin refusal");
}

#[tokio::test]
async fn the_sign_in_page_has_the_form_the_contract_names() {
    let app = spawn_app().await;
    let page = get(&app, "/signin?next=%2Fsinks", None).await;
    assert_html(&page, StatusCode::OK, "/signin");
    let form = page.find("form#signin-form").expect("form#signin-form");
    assert_eq!(form.attr("method"), Some("post"));
    assert_eq!(form.attr("action"), Some("/signin"));
    let token = page.find("input[name=token]").expect("input[name=token]");
    assert_eq!(token.attr("type"), Some("password"));
    let next = page.find("input[name=next]").expect("input[name=next]");
    assert_eq!(next.attr("value"), Some("/sinks"));
    assert!(page.find("button#signin").is_some(), "button#signin");
}

#[tokio::test]
async fn the_jobs_page_sends_a_signed_out_visitor_to_sign_in_and_shows_a_signed_in_one() {
    let app = spawn_app().await;
    let page = get(&app, "/", None).await;
    assert_to_sign_in(&page, "GET / signed out");
    assert!(
        ["/signin?next=%2F", "/signin?next=/"].contains(&page.location()),
        "{}",
        page.location()
    );

    let cookie = sign_in(&app).await;
    let page = get(&app, "/", Some(&cookie)).await;
    assert_html(&page, StatusCode::OK, "GET / signed in");
    assert!(page.find("button#signout").is_some(), "a sign-out button");
}

#[tokio::test]
async fn signing_in_from_a_redirect_returns_to_the_page_asked_for() {
    let app = spawn_app().await;
    let page = get(&app, "/deliveries?status=dead", None).await;
    assert_to_sign_in(&page, "GET /deliveries signed out");
    let sign_in_url = page.location().to_owned();
    let form = get(&app, &sign_in_url, None).await;
    assert_html(&form, StatusCode::OK, &sign_in_url);
    let next = form
        .attr("input[name=next]", "value")
        .expect("the hidden next field");
    assert_eq!(next, "/deliveries?status=dead");

    let page = submit_sign_in(&app, &app.api_token, &next).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert_eq!(page.location(), "/deliveries?status=dead");
}

#[tokio::test]
async fn a_wrong_token_is_a_401_with_the_error_shown_and_no_cookie() {
    let app = spawn_app().await;
    for token in ["wrong", "", &app.ingest_token] {
        let page = submit_sign_in(&app, token, "/").await;
        assert_html(&page, StatusCode::UNAUTHORIZED, "a wrong token");
        let error = page.find("#signin-error").expect("p#signin-error");
        assert_eq!(error.value().name(), "p");
        assert!(has_class(error, "error"), "{}", error.html());
        assert_eq!(error.attr("role"), Some("alert"));
        assert!(!text(error).is_empty(), "the error says something");
        assert!(
            page.set_cookies().is_empty(),
            "no cookie for a wrong token: {:?}",
            page.set_cookies()
        );
        assert!(
            !page.html.contains(&app.api_token),
            "the page does not show the API token"
        );
    }
}

#[tokio::test]
async fn the_right_token_sets_a_strict_http_only_session_cookie_and_redirects_home() {
    let app = spawn_app().await;
    let page = submit_sign_in(&app, &app.api_token, "").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert_eq!(page.location(), "/");
    assert_guarded(&page, "the sign-in redirect");
    let set_cookie = page.session_set_cookie().expect("a session cookie");
    let value = cookie_pair(set_cookie)[SESSION.len() + 1..].to_owned();
    assert!(value.len() >= 16, "a random session id: {set_cookie}");
    assert!(
        !value.contains(&app.api_token),
        "the cookie is not the token"
    );
    assert_eq!(cookie_attribute(set_cookie, "path").as_deref(), Some("/"));
    assert!(
        cookie_attribute(set_cookie, "httponly").is_some(),
        "{set_cookie}"
    );
    assert!(
        cookie_attribute(set_cookie, "samesite").is_some_and(|v| v.eq_ignore_ascii_case("strict")),
        "{set_cookie}"
    );
    assert!(
        cookie_attribute(set_cookie, "max-age")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|age| age > 0),
        "{set_cookie}"
    );
    assert!(
        cookie_attribute(set_cookie, "secure").is_none(),
        "plain http gets no Secure cookie, or the browser would drop it: {set_cookie}"
    );

    let other = sign_in(&app).await;
    assert_ne!(
        other,
        cookie_pair(set_cookie),
        "each sign-in is a new session"
    );
}

#[tokio::test]
async fn behind_a_tls_proxy_the_session_cookie_is_secure() {
    let app = spawn_app().await;
    let page = post_form(
        &app,
        "/signin",
        None,
        Some(&format!("https://{}", app.addr)),
        &[("x-forwarded-proto", "https")],
        &[("token", &app.api_token), ("next", "/")],
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    let set_cookie = page.session_set_cookie().expect("a session cookie");
    assert!(
        cookie_attribute(set_cookie, "secure").is_some(),
        "{set_cookie}"
    );
    assert!(
        cookie_attribute(set_cookie, "httponly").is_some(),
        "{set_cookie}"
    );
}

#[tokio::test]
async fn with_an_https_public_url_the_session_cookie_is_secure() {
    let app = spawn_app_with(|s| s.server.public_url = "https://hooks.example.com".into()).await;
    let page = submit_sign_in(&app, &app.api_token, "/").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    let set_cookie = page.session_set_cookie().expect("a session cookie");
    assert!(
        cookie_attribute(set_cookie, "secure").is_some(),
        "{set_cookie}"
    );
}

#[tokio::test]
async fn sign_in_returns_to_a_local_next_and_never_to_another_site() {
    let app = spawn_app().await;
    let page = submit_sign_in(&app, &app.api_token, "/sinks").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert_eq!(page.location(), "/sinks");

    for next in [
        "//evil.example",
        "//evil.example/",
        "https://evil.example",
        "https://evil.example/",
        "/\\evil.example",
        "http:evil.example",
        "javascript:alert(1)",
        " //evil.example",
    ] {
        let page = submit_sign_in(&app, &app.api_token, next).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{next}: {}", page.html);
        let location = page.location();
        assert!(
            is_local(location) && !location.contains("evil.example"),
            "next={next} sent the browser to {location}"
        );
        assert!(page.session_set_cookie().is_some(), "{next}");
    }

    // The sign-in page does not put another site into its form either.
    let form = get(&app, "/signin?next=%2F%2Fevil.example", None).await;
    assert_html(&form, StatusCode::OK, "/signin?next=//evil.example");
    let next = form.attr("input[name=next]", "value").unwrap_or_default();
    assert!(
        next.is_empty() || is_local(&next),
        "the form carries next={next}"
    );
}

#[tokio::test]
async fn a_retry_posted_from_another_origin_is_refused_and_changes_nothing() {
    let (app, fake, id) = app_with_a_dead_delivery().await;
    let cookie = sign_in(&app).await;
    let path = format!("/deliveries/{id}/retry");
    let evil = "http://evil.example".to_owned();
    let same_host_other_port = format!("http://{}:1", app.addr.ip());
    let other_scheme = format!("https://{}", app.addr);
    for bad in [
        evil.as_str(),
        "null",
        same_host_other_port.as_str(),
        other_scheme.as_str(),
    ] {
        let page = post_form(
            &app,
            &path,
            Some(&cookie),
            Some(bad),
            &[],
            &[("back", "/deliveries")],
        )
        .await;
        assert_html(&page, StatusCode::FORBIDDEN, &format!("Origin: {bad}"));
    }
    // Sec-Fetch-Site does not rescue a foreign Origin.
    let page = post_form(
        &app,
        &path,
        Some(&cookie),
        Some(&evil),
        &[("sec-fetch-site", "same-origin")],
        &[("back", "/deliveries")],
    )
    .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);

    let still = delivery(&app, id).await;
    assert_eq!(still["status"], "dead", "{still}");
    assert_eq!(still["attempts"], 1, "{still}");
    assert_eq!(fake.received().len(), 1, "no new attempt reached the sink");
}

#[tokio::test]
async fn a_retry_posted_from_the_dashboard_itself_puts_the_delivery_back_in_the_queue() {
    let (app, fake, id) = app_with_a_dead_delivery().await;
    fake.answer(|_, _| OK);
    let cookie = sign_in(&app).await;
    let page = post_form(
        &app,
        &format!("/deliveries/{id}/retry"),
        Some(&cookie),
        Some(&origin(&app)),
        &[],
        &[("back", "/jobs/ft-dead")],
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert_guarded(&page, "the retry redirect");
    let location = page.location();
    assert!(location.starts_with("/jobs/ft-dead"), "{location}");
    assert_eq!(
        query_param(location, "retried"),
        Some(id.to_string()),
        "{location}"
    );
    let retried = delivery(&app, id).await;
    assert!(
        retried["status"] == "pending" || retried["status"] == "delivered",
        "{retried}"
    );
    app.wait_for(
        &format!("/v1/deliveries/{id}"),
        "the retried delivery",
        |d| d["status"] == "delivered",
    )
    .await;
    assert_eq!(fake.received().len(), 2);
}

#[tokio::test]
async fn a_retry_never_sends_the_browser_back_to_another_site() {
    let (app, _fake, id) = app_with_a_dead_delivery().await;
    let cookie = sign_in(&app).await;
    let page = post_form(
        &app,
        &format!("/deliveries/{id}/retry"),
        Some(&cookie),
        Some(&origin(&app)),
        &[],
        &[("back", "//evil.example/deliveries")],
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert!(
        is_local(page.location()) && !page.location().contains("evil.example"),
        "{}",
        page.location()
    );
}

#[tokio::test]
async fn a_post_without_origin_is_refused_unless_the_browser_says_same_origin() {
    let (app, _fake, id) = app_with_a_dead_delivery().await;
    let cookie = sign_in(&app).await;
    let path = format!("/deliveries/{id}/retry");
    for extra in [
        &[][..],
        &[("sec-fetch-site", "cross-site")][..],
        &[("sec-fetch-site", "same-site")][..],
        &[("sec-fetch-site", "none")][..],
    ] {
        let page = post_form(&app, &path, Some(&cookie), None, extra, &[]).await;
        assert_html(
            &page,
            StatusCode::FORBIDDEN,
            &format!("no Origin, {extra:?}"),
        );
    }
    assert_eq!(delivery(&app, id).await["status"], "dead");

    let page = post_form(
        &app,
        &path,
        Some(&cookie),
        None,
        &[("sec-fetch-site", "same-origin")],
        &[],
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert_ne!(delivery(&app, id).await["status"], "dead");
}

#[tokio::test]
async fn a_sign_out_posted_from_another_origin_leaves_the_session_working() {
    let app = spawn_app().await;
    let cookie = sign_in(&app).await;
    let page = post_form(
        &app,
        "/signout",
        Some(&cookie),
        Some("http://evil.example"),
        &[],
        &[],
    )
    .await;
    assert_html(&page, StatusCode::FORBIDDEN, "a cross-origin sign-out");
    assert!(
        page.session_set_cookie().is_none(),
        "the cookie is not cleared: {:?}",
        page.set_cookies()
    );
    let page = get(&app, "/", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "the session still works");
}

#[tokio::test]
async fn a_replay_posted_from_another_origin_is_refused_and_one_from_the_dashboard_runs() {
    let fake = FakeSink::start().await;
    let app = spawn_app_with(|s| s.sinks = vec![http_sink("backend", &fake.url())]).await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "ft-replay"}))
        .await;
    app.wait_for("/v1/deliveries", "the first delivery", |b| {
        b["deliveries"][0]["status"] == "delivered"
    })
    .await;
    let cookie = sign_in(&app).await;
    let form = [("since", "2000-01-01T00:00"), ("finetune_id", "")];

    let page = post_form(
        &app,
        "/sinks/backend/replay",
        Some(&cookie),
        Some("http://evil.example"),
        &[],
        &form,
    )
    .await;
    assert_html(&page, StatusCode::FORBIDDEN, "a cross-origin replay");
    assert_eq!(deliveries(&app, "sink=backend").await.len(), 1, "no replay");

    let page = post_form(
        &app,
        "/sinks/backend/replay",
        Some(&cookie),
        Some(&origin(&app)),
        &[],
        &form,
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    let location = page.location();
    assert!(location.starts_with("/deliveries?"), "{location}");
    assert_eq!(
        query_param(location, "sink").as_deref(),
        Some("backend"),
        "{location}"
    );
    assert_eq!(
        query_param(location, "replayed").as_deref(),
        Some("1"),
        "{location}"
    );
    assert_eq!(deliveries(&app, "sink=backend").await.len(), 2, "replayed");
    fake.wait_for(2).await;
}

#[tokio::test]
async fn a_session_may_read_the_api_but_not_change_anything_through_it() {
    let (app, fake, id) = app_with_a_dead_delivery().await;
    let cookie = sign_in(&app).await;
    let response = browser()
        .get(app.url("/v1/jobs"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["jobs"][0]["finetune_id"], "ft-dead");
    // The page's live updates: an event stream opened with the cookie alone.
    for stream in ["/v1/events", "/v1/jobs/ft-dead/events"] {
        let response = browser()
            .get(app.url(stream))
            .header(header::COOKIE, &cookie)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "{stream}");
        assert!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("text/event-stream")),
            "{stream}"
        );
    }

    let retry = format!("/v1/deliveries/{id}/retry");
    for (path, body) in [
        ("/v1/reconcile", json!({})),
        (retry.as_str(), json!({})),
        ("/v1/tokens/rotate", json!({"token": "api"})),
        (
            "/v1/sinks/broken/replay",
            json!({"since": "2000-01-01T00:00:00Z"}),
        ),
    ] {
        let response = browser()
            .post(app.url(path))
            .header(header::COOKIE, &cookie)
            .header(header::ORIGIN, origin(&app))
            .json(&body)
            .send()
            .await
            .expect("sent");
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{path} with only the cookie"
        );
    }
    assert_eq!(delivery(&app, id).await["status"], "dead");
    assert_eq!(deliveries(&app, "").await.len(), 1, "no replay");
    assert_eq!(fake.received().len(), 1);
    let (status, _) = app.get("/v1/jobs").await;
    assert_eq!(status, StatusCode::OK, "the API token was not rotated");
}

#[tokio::test]
async fn signing_out_ends_the_session_on_the_server() {
    let app = spawn_app().await;
    let cookie = sign_in(&app).await;
    let other = sign_in(&app).await;
    let page = post_form(
        &app,
        "/signout",
        Some(&cookie),
        Some(&origin(&app)),
        &[],
        &[],
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert!(
        page.location().starts_with("/signin"),
        "{}",
        page.location()
    );
    assert_guarded(&page, "the sign-out redirect");
    let cleared = page.session_set_cookie().expect("the cookie is cleared");
    assert!(
        cookie_pair(cleared) == format!("{SESSION}=")
            || cookie_attribute(cleared, "max-age").as_deref() == Some("0")
            || cookie_attribute(cleared, "expires").is_some_and(|e| e.contains("1970")),
        "{cleared}"
    );

    // A browser that kept the old cookie is signed out all the same.
    assert_to_sign_in(&get(&app, "/", Some(&cookie)).await, "the old cookie");
    let response = browser()
        .get(app.url("/v1/jobs"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Another session is its own.
    assert_eq!(get(&app, "/", Some(&other)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_made_up_or_missing_session_cookie_is_signed_out() {
    let app = spawn_app().await;
    for cookie in [
        format!("{SESSION}=made-up"),
        format!("{SESSION}="),
        format!("{SESSION}={}", app.api_token),
        "other=1".to_owned(),
    ] {
        assert_to_sign_in(&get(&app, "/sinks", Some(&cookie)).await, &cookie);
        let page = post_form(
            &app,
            "/signout",
            Some(&cookie),
            Some(&origin(&app)),
            &[],
            &[],
        )
        .await;
        assert_to_sign_in(&page, &cookie);
    }
}

#[tokio::test]
async fn rotating_the_api_token_ends_the_sessions_signed_in_with_the_old_one() {
    let app = spawn_app().await;
    let old = app.api_token.clone();
    let cookie = sign_in(&app).await;
    assert_eq!(get(&app, "/", Some(&cookie)).await.status, StatusCode::OK);

    let (status, answer) = app
        .post_api("/v1/tokens/rotate", json!({"token": "api"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let new = answer["value"].as_str().expect("the new token").to_owned();

    assert_to_sign_in(
        &get(&app, "/", Some(&cookie)).await,
        "a session of the old token",
    );
    let response = browser()
        .get(app.url("/v1/jobs"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let page = submit_sign_in(&app, &old, "/").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "the old token");
    let cookie = sign_in_with(&app, &new).await;
    assert_eq!(get(&app, "/", Some(&cookie)).await.status, StatusCode::OK);
}

const HOSTILE_NAME: &str = "<img src=x onerror=alert(1)>";
const HOSTILE_NOTE: &str = "</pre><script>alert(1)</script>";

#[tokio::test]
async fn what_a_webhook_carries_is_shown_escaped() {
    let app = spawn_app().await;
    let (status, _) = app
        .post(json!({
            "event": "TRAINING_COMPLETED",
            "finetune_id": "ft-hostile",
            "name": HOSTILE_NAME,
            "note": HOSTILE_NOTE,
        }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let cookie = sign_in(&app).await;

    for path in ["/", "/jobs/ft-hostile", "/?q=%3Cimg"] {
        let page = get(&app, path, Some(&cookie)).await;
        assert_html(&page, StatusCode::OK, path);
        // The markup as sent: the name is there, escaped, and never raw.
        assert!(page.html.contains("&lt;img"), "{path}: the name is shown");
        assert!(!page.html.contains("<img src=x"), "{path}: a raw <img>");
        assert!(
            !page.html.contains("<script>alert"),
            "{path}: a raw <script>"
        );
        // The page as a browser builds it: no element came from the name.
        let images = page.select(r#"img[src="x"]"#);
        assert!(images.is_empty(), "{path}: {:?}", markup(&images));
    }
    for path in ["/", "/?q=%3Cimg"] {
        let page = get(&app, path, Some(&cookie)).await;
        let name = page
            .find(r#"tr.job[data-finetune-id="ft-hostile"] td.name"#)
            .unwrap_or_else(|| panic!("{path}: the job's name cell"));
        assert_eq!(text(name), HOSTILE_NAME, "{path}: the name, as text");
        assert_eq!(name.child_elements().count(), 0, "{path}: {}", name.html());
    }
    let search = get(&app, "/?q=%3Cimg", Some(&cookie)).await;
    assert_eq!(
        search.attr("input[name=q]", "value").as_deref(),
        Some("<img"),
        "the search box keeps what was typed, as text"
    );

    let job = get(&app, "/jobs/ft-hostile", Some(&cookie)).await;
    // The heading is the name, followed by the status badge.
    let heading = job.text("h1").unwrap_or_default();
    assert!(
        heading.starts_with(HOSTILE_NAME),
        "the name is the heading, as text: {heading}"
    );
    assert!(
        job.select("#fields dd")
            .into_iter()
            .any(|dd| text(dd) == HOSTILE_NAME),
        "the name is among the job's fields, as text"
    );
    assert!(
        !job.html.contains("</pre><script>"),
        "the receipt body breaks out of its <pre>"
    );
    assert!(
        job.text("pre.body")
            .is_some_and(|body| body.contains(HOSTILE_NOTE)),
        "the receipt body is shown as text"
    );
    let scripts = job.select("pre.body *");
    assert!(scripts.is_empty(), "{:?}", markup(&scripts));
}

#[tokio::test]
async fn what_a_visitor_puts_in_a_link_is_shown_escaped() {
    let app = spawn_app().await;
    let cookie = sign_in(&app).await;
    let script = "%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    for (path, cookie, status) in [
        (format!("/?q={script}"), Some(&cookie), StatusCode::OK),
        (format!("/?status={script}"), Some(&cookie), StatusCode::OK),
        (
            format!("/deliveries?sink={script}"),
            Some(&cookie),
            StatusCode::OK,
        ),
        (
            format!("/jobs/{script}"),
            Some(&cookie),
            StatusCode::NOT_FOUND,
        ),
        (format!("/signin?next=%2F{script}"), None, StatusCode::OK),
    ] {
        let page = get(&app, &path, cookie.map(String::as_str)).await;
        assert!(
            page.status == status || page.status == StatusCode::BAD_REQUEST,
            "{path}: {}",
            page.status
        );
        assert_guarded(&page, &path);
        assert!(
            !page.html.contains("<script>alert"),
            "{path}: the link's script is in the page"
        );
    }
}

#[tokio::test]
async fn a_job_page_shows_its_transitions_oldest_first() {
    let app = spawn_app().await;
    for status in ["QUEUED", "TRAINING", "AVAILABLE"] {
        app.post(json!({"event": status, "finetune_id": "ft-story", "name": "story"}))
            .await;
    }
    let cookie = sign_in(&app).await;
    let page = get(&app, "/jobs/ft-story", Some(&cookie)).await;
    assert_html(&page, StatusCode::OK, "/jobs/ft-story");
    let heading = page.text("h1").unwrap_or_default();
    assert!(heading.starts_with("story "), "{heading}");
    let timeline: Vec<(String, String)> = page
        .select("li.transition")
        .into_iter()
        .map(|li| {
            (
                li.attr("data-status").unwrap_or_default().to_owned(),
                li.attr("data-source").unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        timeline,
        [
            ("QUEUED".to_owned(), "webhook".to_owned()),
            ("TRAINING".to_owned(), "webhook".to_owned()),
            ("AVAILABLE".to_owned(), "webhook".to_owned()),
        ]
    );
    assert_eq!(
        page.attr("body", "data-live").as_deref(),
        Some("/v1/jobs/ft-story/events"),
        "the page follows the job's own stream"
    );
}

#[tokio::test]
async fn a_status_filter_lists_only_jobs_in_that_status() {
    let app = app_with_named_jobs().await;
    let cookie = sign_in(&app).await;
    let page = get(&app, "/?status=AVAILABLE", Some(&cookie)).await;
    assert_html(&page, StatusCode::OK, "?status=AVAILABLE");
    let mut listed = listed_jobs(&page);
    listed.sort();
    assert_eq!(listed, ["ft-alpha-1", "ft-gamma-3"]);
    assert_eq!(page.text("td.status").as_deref(), Some("AVAILABLE"));

    let all = get(&app, "/", Some(&cookie)).await;
    assert_eq!(listed_jobs(&all).len(), 4, "no filter lists them all");
}

#[tokio::test]
async fn a_search_finds_jobs_by_part_of_their_name_or_their_id() {
    let app = app_with_named_jobs().await;
    let cookie = sign_in(&app).await;
    for (q, expected) in [
        ("portrait", vec!["ft-alpha-1", "ft-beta-2"]),
        ("PORTRAIT", vec!["ft-alpha-1", "ft-beta-2"]),
        ("gamma", vec!["ft-gamma-3"]),
        ("delta-4", vec!["ft-delta-4"]),
        ("nothing-like-it", vec![]),
    ] {
        let page = get(&app, &format!("/?q={q}"), Some(&cookie)).await;
        assert_html(&page, StatusCode::OK, &format!("?q={q}"));
        let mut listed = listed_jobs(&page);
        listed.sort();
        assert_eq!(listed, expected, "?q={q}");
    }
    let page = get(&app, "/?status=AVAILABLE&q=portrait", Some(&cookie)).await;
    assert_eq!(listed_jobs(&page), ["ft-alpha-1"], "both filters apply");
}

#[tokio::test]
async fn the_jobs_page_counts_each_status() {
    let app = app_with_named_jobs().await;
    let cookie = sign_in(&app).await;
    let page = get(&app, "/?status=FAILED", Some(&cookie)).await;
    assert_html(&page, StatusCode::OK, "/");
    for (status, count) in [("AVAILABLE", 2), ("QUEUED", 1), ("FAILED", 1)] {
        let text = page
            .text(&format!(r#"#counts li[data-status="{status}"]"#))
            .unwrap_or_else(|| panic!("li[data-status={status}] in #counts"));
        assert!(text.contains(status), "{status}: {text}");
        let numbers: Vec<&str> = text
            .split(|c: char| !c.is_ascii_digit())
            .filter(|n| !n.is_empty())
            .collect();
        assert_eq!(numbers, [count.to_string()], "{status}: {text}");
    }
    assert!(
        page.text(r#"#counts li[data-status="TRAINING"]"#)
            .is_none_or(|text| text.contains('0')),
        "a status no job is in counts none"
    );
    assert!(page.find("ul#counts").is_some(), "ul#counts");
}

/// Four jobs: two AVAILABLE (one a portrait), one QUEUED portrait, one FAILED.
async fn app_with_named_jobs() -> TestApp {
    let app = spawn_app().await;
    for (id, name, status) in [
        ("ft-alpha-1", "Portrait of Ada", "AVAILABLE"),
        ("ft-beta-2", "portrait sketches", "QUEUED"),
        ("ft-gamma-3", "landscapes", "AVAILABLE"),
        ("ft-delta-4", "cats", "FAILED"),
    ] {
        let (code, body) = app
            .post(json!({"event": status, "finetune_id": id, "name": name}))
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    app
}

#[tokio::test]
async fn the_deliveries_page_lists_dead_letters_first() {
    let good = FakeSink::start().await;
    let bad = FakeSink::answering(|_, _| FAIL).await;
    let app = spawn_app_with(|s| {
        s.delivery.timeout = Duration::from_secs(5);
        // The dead sink sits between the others, so neither oldest-first
        // nor newest-first order would put its deliveries first by chance.
        s.sinks = vec![
            http_sink("fine", &good.url()),
            one_shot_sink("broken", &bad.url()),
            SinkSettings {
                retry_schedule: Some(vec![Duration::from_secs(3600)]),
                ..http_sink("flaky", &bad.url())
            },
        ];
    })
    .await;
    for id in ["ft-one", "ft-two"] {
        app.post(json!({"event": "AVAILABLE", "finetune_id": id}))
            .await;
    }
    app.wait_for("/v1/deliveries", "each sink's two outcomes", |b| {
        let list = b["deliveries"].as_array().cloned().unwrap_or_default();
        let count = |sink: &str, status: &str| {
            list.iter()
                .filter(|d| d["sink"] == sink && d["status"] == status)
                .count()
        };
        count("fine", "delivered") == 2
            && count("broken", "dead") == 2
            && list
                .iter()
                .filter(|d| d["sink"] == "flaky" && d["attempts"] == 1)
                .count()
                == 2
    })
    .await;

    let cookie = sign_in(&app).await;
    let page = get(&app, "/deliveries", Some(&cookie)).await;
    assert_html(&page, StatusCode::OK, "/deliveries");
    let rows = page.select("tr.delivery");
    let statuses: Vec<&str> = rows.iter().filter_map(|r| r.attr("data-status")).collect();
    assert_eq!(statuses.len(), 6, "{statuses:?}");
    assert_eq!(&statuses[..2], ["dead", "dead"], "{statuses:?}");
    assert!(
        statuses[2..]
            .iter()
            .all(|&s| s == "pending" || s == "delivered"),
        "{statuses:?}"
    );
    for row in &rows {
        if row.attr("data-status") == Some("dead") {
            assert_eq!(row.attr("data-sink"), Some("broken"), "{}", row.html());
        }
    }
    // Each dead one has its retry button.
    let dead_ids: Vec<&str> = rows
        .iter()
        .filter(|r| r.attr("data-status") == Some("dead"))
        .filter_map(|r| r.attr("data-delivery-id"))
        .collect();
    for id in dead_ids {
        let forms = page.select(&format!(r#"form[action="/deliveries/{id}/retry"]"#));
        assert!(
            forms.iter().any(|f| f
                .attr("method")
                .is_some_and(|m| m.eq_ignore_ascii_case("post"))),
            "a retry form for {id}"
        );
    }
}

#[tokio::test]
async fn the_sinks_page_lists_each_configured_sink() {
    let fake = FakeSink::start().await;
    let app = spawn_app_with(|s| {
        s.sinks = vec![
            http_sink("backend", &fake.url()),
            http_sink("audit", &fake.url()),
        ]
    })
    .await;
    let cookie = sign_in(&app).await;
    let page = get(&app, "/sinks", Some(&cookie)).await;
    assert_html(&page, StatusCode::OK, "/sinks");
    let mut sinks = page.attrs("tr.sink", "data-sink");
    sinks.sort();
    assert_eq!(sinks, ["audit", "backend"]);
}

#[test]
fn a_local_return_path_is_a_path_on_this_server_and_nothing_browsers_read_as_another() {
    assert!(is_local("/x") && !is_local("//x") && !is_local("/\\x") && !is_local("https://x"));
}

#[tokio::test]
async fn a_session_stops_working_once_its_time_is_up() {
    let app = spawn_app_with(|s| s.ui.session_ttl = Duration::from_secs(1)).await;
    let signed_in_at = Instant::now();
    let page = submit_sign_in(&app, &app.api_token, "/").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    let set_cookie = page.session_set_cookie().expect("a session cookie");
    assert_eq!(
        cookie_attribute(set_cookie, "max-age").as_deref(),
        Some("1"),
        "the browser is told the same lifetime: {set_cookie}"
    );
    let cookie = cookie_pair(set_cookie);
    assert_eq!(get(&app, "/", Some(&cookie)).await.status, StatusCode::OK);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = get(&app, "/", Some(&cookie)).await;
        if page.status == StatusCode::SEE_OTHER {
            assert_to_sign_in(&page, "an expired session");
            break;
        }
        assert_eq!(page.status, StatusCode::OK, "{}", page.html);
        assert!(Instant::now() < deadline, "the session never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        signed_in_at.elapsed() >= Duration::from_millis(900),
        "expired after {:?}, before its second was up",
        signed_in_at.elapsed()
    );
    let response = browser()
        .get(app.url("/v1/jobs"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn with_the_dashboard_turned_off_its_pages_are_the_apis_404() {
    let app = spawn_app_with(|s| s.ui.enabled = false).await;
    for path in ["/", "/signin", "/sinks", "/jobs/x", "/assets/app.css"] {
        let response = browser().get(app.url(path)).send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = response.json().await.expect("the API's JSON error");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    let page = submit_sign_in(&app, &app.api_token, "/").await;
    assert_eq!(page.status, StatusCode::NOT_FOUND, "POST /signin");
    assert!(page.session_set_cookie().is_none());
    // The API is unaffected.
    let (status, _) = app.get("/v1/jobs").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_return_path_with_a_tab_cannot_leave_the_site() {
    // Browsers drop tabs from a URL before reading it, so `/\t/evil.example`
    // is `//evil.example`: another site.
    let (app, _fake, id) = app_with_a_dead_delivery().await;
    let sneaky = "/\t/evil.example";
    let page = submit_sign_in(&app, &app.api_token, sneaky).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    let location = page.location().replace(['\t', '\n', '\r'], "");
    assert!(
        is_local(&location),
        "sign-in sent the browser to {location}"
    );

    let cookie = sign_in(&app).await;
    let page = post_form(
        &app,
        &format!("/deliveries/{id}/retry"),
        Some(&cookie),
        Some(&origin(&app)),
        &[],
        &[("back", sneaky)],
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    let location = page.location().replace(['\t', '\n', '\r'], "");
    assert!(
        is_local(&location),
        "a retry sent the browser to {location}"
    );
}

#[tokio::test]
async fn a_query_or_form_that_cannot_be_read_gets_a_page_saying_so_and_changes_nothing() {
    let (app, fake, id) = app_with_a_dead_delivery().await;
    let cookie = sign_in(&app).await;

    let page = get(&app, "/deliveries?retried=abc", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.html);
    assert_guarded(&page, "a query that cannot be read");
    assert!(
        page.text("p.error")
            .is_some_and(|t| t.contains("could not be read")),
        "the page says what is wrong: {}",
        page.html
    );

    let before = fake.received().len();
    let page = post_form(
        &app,
        "/sinks/broken/replay",
        Some(&cookie),
        Some(&origin(&app)),
        &[],
        &[("finetune_id", "ft-dead")],
    )
    .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.html);
    assert_guarded(&page, "a form without its time");
    let (_, deliveries) = app.get("/v1/deliveries?sink=broken").await;
    assert_eq!(
        deliveries["deliveries"].as_array().map(Vec::len),
        Some(1),
        "nothing was replayed: {deliveries}"
    );
    assert_eq!(delivery(&app, id).await["status"], "dead");
    assert_eq!(fake.received().len(), before, "the sink got nothing new");
}

#[tokio::test]
async fn an_event_stream_opened_by_a_session_ends_when_the_session_does() {
    let app = spawn_app().await;
    let cookie = sign_in(&app).await;
    let client = reqwest::Client::new();
    let mut stream = client
        .get(app.url("/v1/events"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(stream.status(), StatusCode::OK);
    app.post(json!({"event": "TRAINING_INITIATED", "finetune_id": "ft-live"}))
        .await;
    let first = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
        .await
        .expect("an event within 10 s")
        .expect("the stream reads");
    assert!(
        first.is_some_and(|c| String::from_utf8_lossy(&c).contains("ft-live")),
        "the signed-in stream carries the webhook's event"
    );

    let page = post_form(
        &app,
        "/signout",
        Some(&cookie),
        Some(&origin(&app)),
        &[],
        &[],
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ended within 10 s of signing out");
}

#[tokio::test]
async fn the_dashboard_never_claims_an_agreement_with_segmind_it_did_not_observe() {
    // No Segmind key: the reconciler is off, Segmind's API is never asked.
    let app = spawn_app().await;
    app.post(json!({"event": "TRAINING", "finetune_id": "unasked"}))
        .await;
    let cookie = sign_in(&app).await;

    let sinks = get(&app, "/sinks", Some(&cookie)).await;
    let drift = sinks.text("#drift").unwrap_or_default();
    assert!(
        drift.contains("Not checked: the reconciler is off"),
        "{drift}"
    );
    assert!(!drift.contains("agree"), "{drift}");

    let job = get(&app, "/jobs/unasked", Some(&cookie)).await;
    let check = job.text("#segmind-check").unwrap_or_default();
    assert!(check.contains("not asked"), "{check}");
    assert!(job.find(".notice.drift").is_none(), "{}", job.html);
    assert!(
        job.find("span.badge.drift").is_none(),
        "a job never checked is not drift"
    );
}

#[tokio::test]
async fn sign_in_guesses_are_limited_per_client_address() {
    let app = spawn_app().await;
    for _ in 0..tunehook::ui::SIGN_IN_FAILURES {
        let page = submit_sign_in(&app, "a-wrong-guess-0123456789", "/").await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.html);
    }
    // Past the allowance even the right token waits out the minute.
    let refused = submit_sign_in(&app, &app.api_token, "/").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.html);
    assert!(refused.html.contains("wait a minute"), "{}", refused.html);
    assert!(refused.session_set_cookie().is_none());

    // Another client address is not held back by this one's guesses.
    let elsewhere = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let response = elsewhere
        .post(app.url("/signin"))
        .header(header::ORIGIN, origin(&app))
        .form(&[("token", app.api_token.as_str()), ("next", "/")])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn an_unknown_dashboard_url_is_a_page_and_the_api_keeps_json() {
    let app = spawn_app().await;
    let page = read(
        browser()
            .get(app.url("/no-such-page"))
            .header(header::ACCEPT, "text/html,application/xhtml+xml")
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_html(&page, StatusCode::NOT_FOUND, "an unknown page");
    assert!(page.html.contains("No such page"), "{}", page.html);
    assert_guarded(&page, "an unknown page");

    for (path, accept) in [
        ("/no-such-page", "application/json"),
        ("/v1/no-such-route", "text/html"),
    ] {
        let response = browser()
            .get(app.url(path))
            .header(header::ACCEPT, accept)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
}
