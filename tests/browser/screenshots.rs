//! Screenshots of the dashboard for the documentation, taken only when
//! `TUNEHOOK_SCREENSHOTS=<dir>` is set (`scripts/screenshots.sh` sets it to
//! `docs/`): a few jobs with their transitions and a dead delivery, then
//! one PNG per page.

use crate::{
    dashboard::{http_sink, webhook},
    driver::Browser,
    fake_sink::{FAIL, FakeSink, OK},
    helpers::spawn_app_with,
};
use serde_json::json;
use std::{path::PathBuf, time::Duration};

#[tokio::test]
async fn of_every_page() {
    let Some(dir) = std::env::var_os("TUNEHOOK_SCREENSHOTS").map(PathBuf::from) else {
        eprintln!("no screenshots taken: TUNEHOOK_SCREENSHOTS names no folder");
        return;
    };
    let Some(browser) = Browser::start().await else {
        return;
    };
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("{} cannot be created: {e}", dir.display()));
    let archive = FakeSink::answering(|_, _| OK).await;
    let alerts = FakeSink::answering(|_, _| FAIL).await;
    let app = spawn_app_with(|s| {
        s.delivery.retry_schedule = vec![Duration::from_millis(20); 2];
        s.sinks = vec![
            http_sink("archive", &archive.url()),
            http_sink("alerts", &alerts.url()),
        ];
    })
    .await;
    let jobs: [(&str, &str, &[&str]); 4] = [
        (
            "9b1f3c2e-5d7a-4e8b-a1c0-2f4e6d8b0a13",
            "studio-headshots",
            &[
                "QUEUED",
                "TRAINING",
                "TRAINING_COMPLETED",
                "DEPLOYING",
                "AVAILABLE",
            ],
        ),
        (
            "4c8e2a6f-1b3d-4f5a-9e7c-0d2b4f6a8c21",
            "product-shots-v2",
            &["QUEUED", "TRAINING"],
        ),
        (
            "7d0a4e8c-2f6b-4a1d-8c3e-5b7f9a1c3e42",
            "watercolor-style",
            &["QUEUED", "TRAINING", "FAILED"],
        ),
        (
            "1e5b9d3f-7a2c-4e6b-b0d8-3f5a7c9e1b64",
            "pet-portraits",
            &["QUEUED", "TRAINING", "TRAINING_COMPLETED"],
        ),
    ];
    for (id, name, steps) in jobs {
        for step in steps {
            webhook(
                &app,
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
    app.wait_for(
        "/v1/deliveries?status=dead&sink=alerts",
        "the alerts sink's deliveries to die",
        |b| b["deliveries"].as_array().is_some_and(|d| d.len() >= 3),
    )
    .await;
    let shot = |name: &str| dir.join(name);

    browser.goto(&app.url("/signin")).await;
    browser.wait_for("#signin-form", "the sign-in page").await;
    browser.screenshot(&shot("signin.png")).await;

    browser.sign_in(&app).await;
    browser.wait_for("tr.job", "the jobs").await;
    browser.screenshot(&shot("jobs.png")).await;

    browser
        .goto(&app.url(&format!("/jobs/{}", jobs[0].0)))
        .await;
    browser
        .wait_for("#timeline li.transition", "a job's timeline")
        .await;
    browser.screenshot(&shot("job.png")).await;

    browser.goto(&app.url("/deliveries")).await;
    browser
        .wait_for("tr.delivery[data-status='dead']", "a dead delivery")
        .await;
    browser.screenshot(&shot("deliveries.png")).await;

    browser.goto(&app.url("/sinks")).await;
    browser.wait_for("tr.sink", "the sinks").await;
    browser.screenshot(&shot("sinks.png")).await;

    eprintln!("screenshots saved in {}", dir.display());
}
