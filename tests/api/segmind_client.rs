//! The Segmind client against the fake: every documented endpoint, its
//! method, path, key and body, and its typed errors.

use crate::fake_segmind::{API_KEY, FakeSegmind, ListAnswer};
use axum::http::Method;
use serde_json::json;
use std::time::Duration;
use tunehook::{
    config::Secret,
    segmind::{AdvanceParameters, SegmindClient, SegmindError, SubmitRequest},
};

fn client(fake: &FakeSegmind, key: &str) -> SegmindClient {
    SegmindClient::new(&fake.url(), Secret::new(key), Duration::from_secs(2)).expect("a client")
}

#[tokio::test]
async fn submit_posts_the_documented_body_and_reads_request_id_as_the_job_id() {
    let fake = FakeSegmind::start().await;
    let request = SubmitRequest {
        name: "portrait".into(),
        data_source_path: "https://data.example/set.zip".into(),
        instance_prompt: "1MAN, running".into(),
        trigger_word: "1MAN".into(),
        base_model: "FLUX_PRO".into(),
        theme: "GENERAL".into(),
        segmind_public: false,
        advance_parameters: AdvanceParameters {
            iterations: 300,
            captioning: true,
            priority: "QUALITY".into(),
            finetune_type: "FULL".into(),
            lora_rank: 32,
            learning_rate: 0.005,
        },
    };
    let answer = client(&fake, API_KEY)
        .submit(&request)
        .await
        .expect("submitted");
    assert_eq!(answer.job_id(), Some("new-job-1"));
    assert_eq!(answer.status.as_deref(), Some("REQUESTED"));
    let calls = fake.calls("/submit");
    assert_eq!(calls[0].method, Method::POST);
    assert_eq!(calls[0].body["advance_parameters"]["lora_rank"], 32);
    assert_eq!(calls[0].body["segmind_public"], false);
}

#[tokio::test]
async fn details_is_a_get_with_the_request_id_in_its_json_body() {
    let fake = FakeSegmind::start().await;
    fake.set_details(
        "ft-9",
        json!({"finetune_id": "ft-9", "status": "AVAILABLE", "slug": "s"}),
    );
    let job = client(&fake, API_KEY)
        .details("ft-9")
        .await
        .expect("details")
        .expect("a job");
    assert_eq!(job.slug.as_deref(), Some("s"));
    let calls = fake.calls("/details");
    assert_eq!(calls[0].method, Method::GET);
    assert_eq!(calls[0].body, json!({"request_id": "ft-9"}));
    let missing = client(&fake, API_KEY).details("nope").await;
    assert!(
        matches!(missing, Err(SegmindError::Rejected { status: 404, ref message }) if message == "Finetune request not found"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn list_reads_an_array_of_jobs_leniently() {
    let fake = FakeSegmind::start().await;
    fake.set_jobs(vec![
        json!({"id": "a", "finetune_id": "a", "status": "TRAINING", "unknown_field": [1, 2]}),
        json!({"id": 7, "status": null, "segmind_public_model": "True"}),
    ]);
    let jobs = client(&fake, API_KEY).list().await.expect("list");
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[1].job_id(), Some("7"));
    assert_eq!(jobs[1].status, None);
    assert_eq!(jobs[1].public(), Some(true));
    assert_eq!(fake.calls("/list")[0].method, Method::GET);
}

#[tokio::test]
async fn the_presigned_url_is_a_get_with_the_file_name_in_its_body() {
    let fake = FakeSegmind::start().await;
    let urls = client(&fake, API_KEY)
        .presigned_url("set.zip")
        .await
        .expect("urls");
    assert_eq!(
        urls.s3_url.unwrap_or_default(),
        format!("{}/uploads/set.zip", fake.url())
    );
    assert!(
        urls.presigned_url
            .unwrap_or_default()
            .contains("X-Amz-Signature")
    );
    let calls = fake.calls("/pre-signed-url");
    assert_eq!(calls[0].method, Method::GET);
    assert_eq!(calls[0].body, json!({"name": "set.zip"}));
}

#[tokio::test]
async fn access_update_is_a_multipart_put() {
    let fake = FakeSegmind::start().await;
    client(&fake, API_KEY)
        .access_update("ft-1", true)
        .await
        .expect("updated");
    client(&fake, API_KEY)
        .access_update("ft-2", false)
        .await
        .expect("updated");
    assert_eq!(
        fake.access_updates(),
        vec![
            ("ft-1".to_owned(), "True".to_owned()),
            ("ft-2".to_owned(), "False".to_owned())
        ]
    );
    assert_eq!(fake.calls("/access-update")[0].method, Method::PUT);
}

#[tokio::test]
async fn errors_are_typed_with_segminds_message() {
    let fake = FakeSegmind::start().await;
    let refused = client(&fake, "wrong").list().await;
    assert!(
        matches!(&refused, Err(SegmindError::Unauthorized { status: 401, message }) if message == "Invalid API key"),
        "{refused:?}"
    );

    fake.answer_list(vec![
        ListAnswer::Status {
            status: 406,
            body: r#"{"error": "Insufficient credits"}"#.into(),
            retry_after: None,
        },
        ListAnswer::Status {
            status: 429,
            body: r#"{"error": "slow down"}"#.into(),
            retry_after: Some(7),
        },
        ListAnswer::Status {
            status: 502,
            body: "bad gateway".into(),
            retry_after: None,
        },
        ListAnswer::Garbage,
        ListAnswer::Hang,
    ]);
    let c = client(&fake, API_KEY);
    assert!(
        matches!(c.list().await, Err(SegmindError::InsufficientCredits { message }) if message == "Insufficient credits")
    );
    let limited = c.list().await;
    assert!(
        matches!(&limited, Err(e @ SegmindError::RateLimited { .. }) if e.wait() == Some(Duration::from_secs(7))),
        "{limited:?}"
    );
    assert!(matches!(
        c.list().await,
        Err(SegmindError::Server { status: 502, .. })
    ));
    let garbage = c.list().await;
    assert!(
        matches!(&garbage, Err(SegmindError::Undecodable { snippet }) if snippet.contains("not json")),
        "{garbage:?}"
    );
    assert!(matches!(c.list().await, Err(SegmindError::Timeout)));
}
