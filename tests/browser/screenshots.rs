//! Screenshots of the dashboard for the documentation, taken only when
//! `TUNEHOOK_SCREENSHOTS=<dir>` is set (`scripts/screenshots.sh` sets it to
//! `docs/`): a few jobs with their transitions and a dead delivery, then
//! one PNG per page.

use crate::{
    dashboard::{http_sink, post_steps},
    driver::Browser,
    fake_sink::{FAIL, FakeSink, OK},
    helpers::spawn_app_with,
};
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
    // Each step, and how many minutes ago it happened: the webhooks arrive
    // within a second, so their times are moved back afterwards for the
    // pictures to show what a real history looks like.
    let jobs: [(&str, &str, &[&str], &[i64]); 4] = [
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
            &[190, 178, 62, 55, 49],
        ),
        (
            "4c8e2a6f-1b3d-4f5a-9e7c-0d2b4f6a8c21",
            "product-shots-v2",
            &["QUEUED", "TRAINING"],
            &[40, 31],
        ),
        (
            "7d0a4e8c-2f6b-4a1d-8c3e-5b7f9a1c3e42",
            "watercolor-style",
            &["QUEUED", "TRAINING", "FAILED"],
            &[300, 290, 120],
        ),
        (
            "1e5b9d3f-7a2c-4e6b-b0d8-3f5a7c9e1b64",
            "pet-portraits",
            &["QUEUED", "TRAINING", "TRAINING_COMPLETED"],
            &[95, 84, 3],
        ),
    ];
    for (id, name, steps, _) in jobs {
        post_steps(&app, id, name, steps).await;
    }
    app.wait_for(
        "/v1/deliveries?status=dead&sink=alerts",
        "the alerts sink's deliveries to die",
        |b| b["deliveries"].as_array().is_some_and(|d| d.len() >= 3),
    )
    .await;
    backdate(&app.dir.path().join("tunehook.db"), &jobs);
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

/// Moves each job's steps back to the given minutes ago (the job's first
/// sighting with its first step, its last change with its last), straight
/// in the database: only the pictures need it.
fn backdate(db: &std::path::Path, jobs: &[(&str, &str, &[&str], &[i64])]) {
    let conn = rusqlite::Connection::open(db).expect("the test database opens");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("a busy timeout");
    let now = chrono::Utc::now();
    let at = |minutes: i64| tunehook::time::rfc3339(now - chrono::Duration::minutes(minutes));
    for (id, _, steps, minutes) in jobs {
        for (step, ago) in steps.iter().zip(minutes.iter()) {
            let when = at(*ago);
            for sql in [
                "UPDATE transitions SET observed_at = ?1 WHERE finetune_id = ?2 AND to_status = ?3",
                "UPDATE events SET observed_at = ?1 WHERE finetune_id = ?2 AND status = ?3",
                "UPDATE receipts SET received_at = ?1 WHERE finetune_id = ?2 AND status = ?3",
            ] {
                conn.execute(sql, (&when, id, step))
                    .expect("a step is moved back");
            }
        }
        let (first, last) = (at(minutes[0]), at(minutes[minutes.len() - 1]));
        conn.execute(
            "UPDATE jobs SET first_seen_at = ?1, updated_at = ?2 WHERE finetune_id = ?3",
            (&first, &last, id),
        )
        .expect("the job's times are moved back");
    }
}
