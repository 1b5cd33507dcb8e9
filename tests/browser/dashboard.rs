//! The dashboard as a person uses it in a browser: signing in and out,
//! being sent to sign in and back, a jobs page that follows webhooks as they
//! arrive, a job's timeline, retrying a dead delivery with its button, job
//! names that look like markup, and a phone-sized screen.
//!
//! Only the element hooks of the dashboard's HTML contract are relied on
//! (ids, classes and `data-` attributes), never wording or layout.

use crate::{
    driver::Browser,
    fake_sink::{FAIL, FakeSink, OK},
    helpers::{TestApp, spawn_app, spawn_app_with},
};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use std::time::Duration;
use tunehook::config::SinkSettings;

/// Posts a webhook and insists it was taken.
pub async fn webhook(app: &TestApp, body: Value) {
    let (status, answer) = app.post(body.clone()).await;
    assert_eq!(status, StatusCode::OK, "the webhook {body} got {answer}");
}

/// An `http` sink named `name` posting to `url`.
pub fn http_sink(name: &str, url: &str) -> SinkSettings {
    toml::from_str(&format!(
        "name = \"{name}\"\nkind = \"http\"\nurl = \"{url}\""
    ))
    .expect("a valid sink")
}

/// A JavaScript string literal holding `text`.
fn js_string(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// A client that shows redirects instead of following them, and keeps no
/// cookies of its own.
fn bare_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// Posts a job's steps in order, each as a webhook naming the job.
pub async fn post_steps(app: &TestApp, id: &str, name: &str, steps: &[&str]) {
    for step in steps {
        webhook(
            app,
            json!({
                "event": step,
                "finetune_id": id,
                "name": name,
                "base_model": "stabilityai/stable-diffusion-xl-base-1.0",
            }),
        )
        .await;
    }
}

/// A tunehook whose one sink, `archive`, refuses everything: each event's
/// delivery goes dead after one retry.
async fn app_with_a_failing_sink() -> (TestApp, FakeSink) {
    let sink = FakeSink::answering(|_, _| FAIL).await;
    let app = spawn_app_with(|s| {
        s.delivery.retry_schedule = vec![Duration::from_millis(20)];
        s.sinks = vec![http_sink("archive", &sink.url())];
    })
    .await;
    (app, sink)
}

#[tokio::test]
async fn a_wrong_token_is_refused_with_a_message_and_the_right_one_signs_in() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    browser.goto(&app.url("/signin")).await;

    browser.submit_token("not-the-token").await;

    let message = browser
        .text("#signin-error", "the message refusing a wrong token")
        .await;
    assert!(!message.trim().is_empty(), "the refusal says why in words");
    assert!(
        browser.find_all("form#job-filter").await.is_empty(),
        "a wrong token shows no jobs"
    );
    assert_eq!(
        browser.find_all("button#signout").await.len(),
        0,
        "a wrong token does not sign in"
    );

    browser.submit_token(&app.api_token).await;

    browser
        .wait_for("form#job-filter", "the jobs page after the right token")
        .await;
    assert_eq!(browser.location().await, "/");
    assert!(
        browser.find_all("#signin-error").await.is_empty(),
        "the refusal is gone once signed in"
    );
    browser
        .wait_for("button#signout", "the sign-out button of a signed-in page")
        .await;
}

#[tokio::test]
async fn a_page_asked_for_without_a_session_sends_you_to_sign_in_and_then_back_to_it() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (app, _sink) = app_with_a_failing_sink().await;
    webhook(&app, json!({"event": "FAILED", "finetune_id": "ft-asked"})).await;
    app.wait_for("/v1/deliveries?status=dead", "a dead delivery", |b| {
        b["deliveries"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;

    browser.goto(&app.url("/deliveries?status=dead")).await;

    browser
        .wait_for("#signin-form", "the sign-in form instead of the page")
        .await;
    let location = browser.location().await;
    let asked = url::Url::parse(&app.url(&location)).expect("a URL");
    assert_eq!(asked.path(), "/signin", "sent to sign in: {location}");
    let next: Vec<(String, String)> = asked
        .query_pairs()
        .filter(|(k, _)| k == "next")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(
        next,
        [("next".to_owned(), "/deliveries?status=dead".to_owned())],
        "the sign-in page remembers the page asked for: {location}"
    );
    assert!(
        browser.find_all("#deliveries").await.is_empty(),
        "the page shows nothing of the deliveries before signing in"
    );

    browser.submit_token(&app.api_token).await;

    browser
        .wait_for(
            "table#deliveries tr.delivery[data-status='dead']",
            "the dead delivery on the page asked for",
        )
        .await;
    assert_eq!(browser.location().await, "/deliveries?status=dead");
}

#[tokio::test]
async fn a_webhook_that_arrives_while_the_jobs_page_is_open_appears_on_it_without_a_reload() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    webhook(
        &app,
        json!({"event": "TRAINING", "finetune_id": "ft-older", "name": "older"}),
    )
    .await;
    browser.sign_in(&app).await;
    browser
        .wait_for(
            "tr.job[data-finetune-id='ft-older']",
            "the job stored before",
        )
        .await;
    browser
        .wait_until(
            "document.body.dataset.liveState === 'open'",
            "the page's live stream to open",
        )
        .await;
    browser.js("window.__noReload = 1; return null;").await;

    webhook(
        &app,
        json!({"event": "TRAINING_COMPLETED", "finetune_id": "ft-live", "name": "portrait-v2"}),
    )
    .await;

    let row = "tr.job[data-finetune-id='ft-live']";
    browser
        .wait_for(row, "the new job's row, without a reload")
        .await;
    assert_eq!(
        browser.text(&format!("{row} td.name"), "its name").await,
        "portrait-v2"
    );
    assert!(
        browser
            .text(&format!("{row} td.status"), "its status")
            .await
            .contains("TRAINING_COMPLETED"),
        "the new job shows its status"
    );
    assert_eq!(
        browser.js("return window.__noReload === 1;").await,
        true,
        "the page was reloaded, not updated in place"
    );
    browser
        .wait_for(
            "tr.job[data-finetune-id='ft-older']",
            "the job stored before, still there",
        )
        .await;

    // A second event for the same job moves its row, still in place.
    webhook(
        &app,
        json!({"event": "AVAILABLE", "finetune_id": "ft-live"}),
    )
    .await;
    browser
        .wait_until(
            "(document.querySelector(\"tr.job[data-finetune-id='ft-live'] td.status\") || {}).textContent?.includes('AVAILABLE')",
            "the row to show AVAILABLE",
        )
        .await;
    assert_eq!(
        browser.js("return window.__noReload === 1;").await,
        true,
        "the page was reloaded by the second event"
    );
}

#[tokio::test]
async fn a_job_page_shows_its_timeline_oldest_first() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    let steps = [
        "QUEUED",
        "TRAINING",
        "TRAINING_COMPLETED",
        "DEPLOYING",
        "AVAILABLE",
    ];
    for step in steps {
        webhook(
            &app,
            json!({"event": step, "finetune_id": "ft-steps", "name": "headshots"}),
        )
        .await;
    }
    browser.sign_in(&app).await;

    browser.goto(&app.url("/jobs/ft-steps")).await;

    browser
        .wait_for("ol#timeline li.transition", "the job's timeline")
        .await;
    let heading = browser.text("h1", "the job's heading").await;
    assert!(
        heading.starts_with("headshots"),
        "the heading names the job: {heading:?}"
    );
    let shown = browser
        .js("return [...document.querySelectorAll('#timeline li.transition')].map(li => li.dataset.status);")
        .await;
    assert_eq!(shown, json!(steps), "the timeline, oldest first");
    let sources = browser
        .js("return [...document.querySelectorAll('#timeline li.transition')].map(li => li.dataset.source);")
        .await;
    assert_eq!(
        sources,
        json!(["webhook"; 5].to_vec()),
        "each step says it came from a webhook"
    );
    browser
        .wait_for("#fields", "the job's fields beside the timeline")
        .await;
}

#[tokio::test]
async fn a_dead_delivery_retried_with_its_button_after_the_sink_recovers_ends_delivered() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let sink = FakeSink::answering(|_, _| FAIL).await;
    let app = spawn_app_with(|s| {
        s.delivery.retry_schedule = vec![Duration::from_millis(20)];
        s.delivery.timeout = Duration::from_secs(5);
        s.sinks = vec![http_sink("archive", &sink.url())];
    })
    .await;
    webhook(
        &app,
        json!({"event": "FAILED", "finetune_id": "ft-dead", "name": "broken"}),
    )
    .await;
    let dead = app
        .wait_for("/v1/deliveries?status=dead", "the delivery to die", |b| {
            b["deliveries"].as_array().is_some_and(|d| d.len() == 1)
        })
        .await;
    let id = dead["deliveries"][0]["id"].as_i64().expect("a delivery id");
    let tries_while_down = sink.received().len();
    sink.answer(|_, _| OK);
    browser.sign_in(&app).await;
    browser.goto(&app.url("/deliveries")).await;
    let row = format!("#deliveries tr.delivery[data-delivery-id='{id}']");
    let shown = browser
        .wait_for(&row, "the dead delivery's row")
        .await
        .attr("data-status")
        .await
        .expect("the row's status");
    assert_eq!(shown.as_deref(), Some("dead"));
    assert_eq!(
        browser
            .wait_for(&row, "the row")
            .await
            .attr("data-sink")
            .await
            .expect("the row's sink")
            .as_deref(),
        Some("archive")
    );

    browser
        .click(&format!("{row} button.retry"), "the row's Retry button")
        .await;

    browser
        .wait_until(
            &format!("new URLSearchParams(location.search).get('retried') === '{id}'"),
            "the page to come back saying which delivery was retried",
        )
        .await;
    browser
        .wait_until_reloading(
            &format!(
                "(document.querySelector({}) || {{dataset: {{}}}}).dataset.status === 'delivered'",
                js_string(&row)
            ),
            "the retried delivery to show delivered",
        )
        .await;
    assert!(
        sink.received().len() > tries_while_down,
        "the sink got the retried event"
    );
    let (_, api) = app.get(&format!("/v1/deliveries/{id}")).await;
    assert_eq!(api["status"], "delivered", "the API agrees: {api}");
}

#[tokio::test]
async fn a_job_named_like_markup_shows_the_name_as_text_and_runs_nothing() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    let name = "<img src=x onerror=alert(1)>";
    webhook(
        &app,
        json!({"event": "TRAINING", "finetune_id": "ft-markup", "name": name}),
    )
    .await;
    browser.sign_in(&app).await;
    browser
        .wait_until(
            "document.body.dataset.liveState === 'open'",
            "the page's live stream to open",
        )
        .await;

    // The same name again, this time through the live update.
    webhook(
        &app,
        json!({"event": "TRAINING", "finetune_id": "ft-markup-live", "name": name}),
    )
    .await;

    for id in ["ft-markup", "ft-markup-live"] {
        let cell = format!("tr.job[data-finetune-id='{id}'] td.name");
        assert_eq!(
            browser.text(&cell, "the job's name").await,
            name,
            "{id}'s name is shown as the text it is"
        );
    }
    assert!(
        browser.find_all("#jobs img").await.is_empty(),
        "the name became an element: {}",
        browser
            .js("return document.getElementById('jobs').innerHTML;")
            .await
    );
    assert_eq!(browser.alert().await, None, "the name ran a script");

    browser.goto(&app.url("/jobs/ft-markup")).await;
    let heading = browser.text("h1", "the job's heading").await;
    assert!(
        heading.starts_with(name),
        "the heading shows the name as text: {heading:?}"
    );
    assert!(
        browser.find_all("main img, h1 img").await.is_empty(),
        "the job page made the name an element"
    );
    assert_eq!(browser.alert().await, None, "the job page ran a script");
}

#[tokio::test]
async fn signing_out_ends_the_session_so_its_cookie_no_longer_opens_a_page() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    browser.sign_in(&app).await;
    let cookie = format!(
        "tunehook_session={}",
        browser.cookie("tunehook_session").await
    );
    let outside = bare_client();
    let before = outside
        .get(app.url("/"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .expect("a request with the session's cookie");
    assert_eq!(
        before.status(),
        StatusCode::OK,
        "the cookie opens / while signed in"
    );

    browser.click("button#signout", "the sign-out button").await;

    browser
        .wait_for("#signin-form", "the sign-in page after signing out")
        .await;
    assert!(
        browser.location().await.starts_with("/signin"),
        "signing out ends on the sign-in page"
    );
    let after = outside
        .get(app.url("/"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .expect("a request with the old cookie");
    assert_eq!(
        after.status(),
        StatusCode::SEE_OTHER,
        "the old cookie still opens / after signing out"
    );
    let location = after
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        location.starts_with("/signin"),
        "the old cookie is sent to sign in, not to {location:?}"
    );
    browser.goto(&app.url("/")).await;
    browser
        .wait_for(
            "#signin-form",
            "the sign-in page for the signed-out browser",
        )
        .await;
}

#[tokio::test]
async fn every_page_fits_a_phone_screen_without_scrolling_sideways() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (app, _sink) = app_with_a_failing_sink().await;
    // Long words are what push a narrow page wide.
    let long_id = "3f6c2a9e-8d41-4b7a-9c55-0e1d2f3a4b50";
    for (id, name, steps) in [
        (
            long_id,
            "portrait-style-with-a-rather-long-descriptive-name",
            &["QUEUED", "TRAINING", "FAILED"][..],
        ),
        ("ft-short", "headshots", &["QUEUED", "AVAILABLE"][..]),
    ] {
        post_steps(&app, id, name, steps).await;
    }
    app.wait_for("/v1/deliveries?status=dead", "a dead delivery", |b| {
        b["deliveries"].as_array().is_some_and(|d| !d.is_empty())
    })
    .await;
    browser.goto(&app.url("/signin")).await;
    browser.set_viewport_width(375).await;
    let pages = [
        ("/signin", "#signin-form"),
        ("/", "tr.job"),
        (
            &format!("/jobs/{long_id}") as &str,
            "#timeline li.transition",
        ),
        ("/deliveries", "tr.delivery[data-status='dead']"),
        ("/sinks", "tr.sink"),
    ];

    for (path, hook) in pages {
        if path != "/signin" && browser.find_all("button#signout").await.is_empty() {
            browser.submit_token(&app.api_token).await;
            browser.wait_for("button#signout", "signed in").await;
        }
        browser.goto(&app.url(path)).await;
        browser
            .wait_for(hook, &format!("{path} at phone width"))
            .await;

        let widths = browser
            .js("const d = document.documentElement; return [d.scrollWidth, d.clientWidth];")
            .await;
        let (scroll, client) = (widths[0].as_u64(), widths[1].as_u64());
        let wide = browser
            .js("return [...document.querySelectorAll('body *')]\
                   .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)\
                   .slice(0, 8)\
                   .map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (typeof e.className === 'string' && e.className ? '.' + e.className.trim().split(/\\s+/).join('.') : ''));")
            .await;
        assert!(
            scroll.is_some_and(|w| w <= 375) && scroll <= client,
            "at 375 px {path} is {scroll:?} px wide in a {client:?} px window, so it scrolls \
             sideways; reaching past the edge (those inside a scrolling box are fine): {wide}"
        );
    }
}

#[tokio::test]
async fn every_page_works_under_its_content_security_policy_without_a_console_error() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (app, _sink) = app_with_a_failing_sink().await;
    for step in ["QUEUED", "TRAINING", "FAILED"] {
        webhook(
            &app,
            json!({"event": step, "finetune_id": "ft-csp", "name": "watercolor"}),
        )
        .await;
    }
    app.wait_for("/v1/deliveries?status=dead", "a dead delivery", |b| {
        b["deliveries"].as_array().is_some_and(|d| !d.is_empty())
    })
    .await;
    // The browser asks for a favicon the dashboard need not have.
    let errors = async || -> Vec<String> {
        let mut errors = browser.console_errors().await;
        errors.retain(|e| !e.contains("favicon.ico"));
        errors
    };

    browser.goto(&app.url("/signin")).await;
    browser.wait_for("#signin-form", "the sign-in page").await;
    assert_eq!(errors().await, Vec::<String>::new(), "on /signin");
    browser.submit_token(&app.api_token).await;
    let pages = [
        ("/", "table#jobs", true),
        ("/jobs/ft-csp", "ol#timeline", true),
        ("/deliveries", "table#deliveries", false),
        ("/sinks", "table#sinks", false),
    ];
    for (path, hook, live) in pages {
        browser.goto(&app.url(path)).await;
        browser.wait_for(hook, &format!("{path}'s content")).await;
        if live {
            // Its script ran: the live stream opened under the policy.
            browser
                .wait_until(
                    "document.body.dataset.liveState === 'open'",
                    &format!("{path}'s live stream to open"),
                )
                .await;
        }
        assert_eq!(errors().await, Vec::<String>::new(), "on {path}");
    }
}

#[tokio::test]
async fn a_job_page_left_open_shows_each_new_step_without_a_reload() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    webhook(
        &app,
        json!({"event": "QUEUED", "finetune_id": "ft-open", "name": "open-page"}),
    )
    .await;
    browser.sign_in(&app).await;
    browser.goto(&app.url("/jobs/ft-open")).await;
    browser
        .wait_until(
            "document.body.dataset.liveState === 'open'",
            "the job page's live stream to open",
        )
        .await;
    browser.js("window.__noReload = 1; return null;").await;

    webhook(&app, json!({"event": "TRAINING", "finetune_id": "ft-open"})).await;

    browser
        .wait_for(
            "#timeline li.transition[data-status='TRAINING']",
            "the new step on the open job page",
        )
        .await;
    let shown = browser
        .js("return [...document.querySelectorAll('#timeline li.transition')].map(li => li.dataset.status);")
        .await;
    assert_eq!(shown, json!(["QUEUED", "TRAINING"]));
    assert_eq!(
        browser.js("return window.__noReload === 1;").await,
        true,
        "the job page was reloaded, not updated in place"
    );
}

/// WebDriver's keys: Tab and Enter.
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

/// The focused element's id, else its class, else its tag.
async fn focused(browser: &Browser) -> Value {
    browser
        .js("const e = document.activeElement; return e.id || e.className || e.tagName")
        .await
}

/// Types `keys` into whatever has the focus.
async fn press(browser: &Browser, keys: &str) {
    browser
        .client
        .active_element()
        .await
        .expect("an element has the focus")
        .send_keys(keys)
        .await
        .expect("the keys are sent");
}

#[tokio::test]
async fn the_dashboard_can_be_used_with_the_keyboard_alone() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    webhook(
        &app,
        json!({"event": "TRAINING_INITIATED", "finetune_id": "ft-keys", "name": "keyboard-job"}),
    )
    .await;

    browser.goto(&app.url("/signin")).await;
    browser.wait_for("#signin-form", "the sign-in page").await;
    assert_eq!(
        focused(&browser).await,
        "token",
        "the token field has the focus"
    );
    press(&browser, &format!("{}{ENTER}", app.api_token)).await;
    browser.wait_for("form#job-filter", "the jobs page").await;

    press(&browser, TAB).await;
    assert_eq!(
        focused(&browser).await,
        "skip",
        "the first Tab reaches the link that skips to the page"
    );
    let mut tabs = 0;
    while browser
        .js("return document.activeElement.closest('td.id') !== null")
        .await
        != Value::Bool(true)
    {
        tabs += 1;
        assert!(tabs <= 40, "Tab never reached the job's link");
        press(&browser, TAB).await;
    }
    press(&browser, ENTER).await;
    browser
        .wait_for(
            "#timeline li.transition",
            "the job's page, opened with Enter",
        )
        .await;
    assert!(browser.location().await.ends_with("/jobs/ft-keys"));
}
