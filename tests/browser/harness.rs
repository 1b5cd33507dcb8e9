//! The harness itself, on pages the server has always had: if these fail,
//! the browser or its driver is at fault, not the dashboard.

use crate::{driver::Browser, helpers::spawn_app};

#[tokio::test]
async fn the_browser_opens_a_page_the_server_serves() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;

    browser.goto(&app.url("/healthz")).await;

    assert_eq!(browser.location().await, "/healthz");
    let text = browser.text("body", "the health answer").await;
    assert!(text.contains("ok"), "the health page says {text:?}");
}

#[tokio::test]
async fn the_browser_can_be_made_phone_sized() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    browser.goto(&app.url("/healthz")).await;

    browser.set_viewport_width(375).await;

    let width = browser
        .js("return document.documentElement.clientWidth;")
        .await;
    assert_eq!(width, 375, "the viewport after resizing");
}

#[tokio::test]
async fn the_browser_reports_what_a_content_security_policy_refused() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let page = "data:text/html,<meta http-equiv='Content-Security-Policy' content=\"default-src 'self'\"><script>document.title='ran'</script>";

    browser.goto(page).await;

    let errors = browser.console_errors().await;
    assert!(
        errors.iter().any(|e| e.contains("Content Security Policy")),
        "the console log: {errors:?}"
    );
    assert_eq!(
        browser.js("return document.title;").await,
        "",
        "the inline script ran"
    );
    assert!(
        browser.console_errors().await.is_empty(),
        "each error is reported once"
    );
}
