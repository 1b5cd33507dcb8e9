//! Hostile input to the webhook route and the API: absurd nesting, numbers
//! and sizes, broken UTF-8, floods of unknown statuses, and ids made to
//! look like paths or SQL. Each test checks what a user would notice: a clear
//! answer (an error in the API's JSON shape), no job or transition made
//! from it (receipts are kept: everything with the right token is stored),
//! and a server that still answers and still applies a normal webhook.

use crate::helpers::{TestApp, spawn_app, transition_statuses};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Checks an error answer: its status, its `code`, and a message for
/// people; returns the message.
fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) -> String {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "an error without a message: {body}");
    message.to_owned()
}

/// The server still answers its probes, and a normal webhook (for a new job
/// `id`) is applied and shows on its job.
async fn assert_still_serving(app: &TestApp, id: &str) {
    for probe in ["/healthz", "/readyz"] {
        let response = app
            .client
            .get(app.url(probe))
            .send()
            .await
            .expect("the probe completes");
        assert_eq!(response.status(), StatusCode::OK, "{probe}");
    }
    let (status, body) = app
        .post(json!({"event": "QUEUED", "finetune_id": id}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["outcome"], "applied", "{body}");
    let job = app.job(id).await;
    assert_eq!(job["status"], "QUEUED");
    assert_eq!(transition_statuses(&job), vec!["QUEUED"]);
}

/// Every job, following `next_cursor` to the end.
async fn every_job(app: &TestApp) -> Vec<Value> {
    let mut jobs = Vec::new();
    let mut path = "/v1/jobs?limit=500".to_owned();
    for _ in 0..100 {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        jobs.extend(page["jobs"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/jobs?limit=500&cursor={cursor}"),
            None => return jobs,
        }
    }
    panic!("more than 100 pages of jobs");
}

/// Every receipt, following `next_cursor` to the end.
async fn every_receipt(app: &TestApp) -> Vec<Value> {
    let mut receipts = Vec::new();
    let mut path = "/v1/receipts?limit=500".to_owned();
    for _ in 0..100 {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK);
        receipts.extend(page["receipts"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/receipts?limit=500&cursor={cursor}"),
            None => return receipts,
        }
    }
    panic!("more than 100 pages of receipts");
}

/// Percent-encodes everything but unreserved characters, so the id reaches
/// the server as one path segment, exactly.
fn encode_segment(raw: &[u8]) -> String {
    raw.iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends `GET {path}` with the API token exactly as written (no client-side
/// normalisation of `..` or `%2e`), and reads the answer.
async fn raw_get(app: &TestApp, path: &str) -> (StatusCode, Value) {
    raw_request(app, "GET", path, Some(&app.api_token)).await
}

/// Sends `{method} {path}` exactly as written, with an empty JSON body and
/// `token` as the bearer token, and reads the answer (at most 10 s).
async fn raw_request(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}\r\n{auth}content-length: 2\r\nconnection: close\r\n\r\n{{}}",
        app.addr
    );
    let exchange = async {
        let mut stream = TcpStream::connect(app.addr).await.expect("connect");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write the request");
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .expect("read the answer");
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} {path}"));
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer to {method} {path}: {text:?}"));
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {method} {path}: {head:?}"));
    let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    (StatusCode::from_u16(code).expect("a status code"), body)
}

#[tokio::test]
async fn json_nested_deeper_than_the_parser_allows_is_refused_with_400_and_stored_as_invalid() {
    let app = spawn_app().await;
    let levels = 100_000;
    let bodies = [
        // Unterminated.
        "[".repeat(levels),
        // Balanced, and otherwise valid JSON.
        "[".repeat(levels) + &"]".repeat(levels),
        "{\"a\":".repeat(levels) + "1" + &"}".repeat(levels),
        // A real event with one deep field: the parser's depth limit (128)
        // refuses the whole body, so this status change is not applied.
        format!(
            r#"{{"event":"AVAILABLE","finetune_id":"deep","extra":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        ),
    ];
    for body in &bodies {
        let (status, answer) = app.post_raw(body.clone()).await;
        let message = assert_error(status, &answer, StatusCode::BAD_REQUEST, "invalid_payload");
        assert!(message.contains("not valid JSON"), "{message}");
        assert!(message.contains("recursion limit"), "{message}");
        assert!(message.contains("stored as receipt"), "{message}");
    }

    // Depth within the limit is fine.
    let shallow = format!(
        r#"{{"event":"AVAILABLE","finetune_id":"shallow","extra":{}{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let (status, answer) = app.post_raw(shallow).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["outcome"], "applied");

    let jobs = app.all_jobs().await;
    let ids: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j["finetune_id"].as_str())
        .collect();
    assert_eq!(ids, vec!["shallow"], "no job from the deep bodies");
    let receipts = app.receipts().await;
    assert_eq!(receipts.len(), bodies.len() + 1);
    for (listed, body) in receipts[1..].iter().rev().zip(&bodies) {
        // A list cuts long bodies; the receipt itself has the whole one.
        assert_eq!(listed["body_truncated"], body.len() > 4096);
        let (_, receipt) = app.get(&format!("/v1/receipts/{}", listed["id"])).await;
        assert_eq!(receipt["outcome"], "invalid");
        // Too deep to show as JSON, so shown as the text it is, verbatim.
        assert_eq!(receipt["body"].as_str(), Some(body.as_str()));
        assert!(
            receipt["error"]
                .as_str()
                .unwrap_or_default()
                .contains("recursion limit")
        );
    }
    assert_still_serving(&app, "after-deep").await;
}

#[tokio::test]
async fn numbers_beyond_a_double_and_ids_a_double_would_round_are_refused_with_400() {
    let app = spawn_app().await;
    let huge = "9".repeat(400);
    let bodies = [
        r#"{"event":"AVAILABLE","finetune_id":1e999999}"#.to_owned(),
        format!(r#"{{"event":"AVAILABLE","finetune_id":{huge}}}"#),
        format!(r#"{{"event":"AVAILABLE","finetune_id":-{huge}}}"#),
        format!(r#"{{"status":{huge},"finetune_id":"n1"}}"#),
        r#"{"event":"AVAILABLE","finetune_id":"n2","created_ts":-1e999999}"#.to_owned(),
        format!(r#"{{"event":"AVAILABLE","finetune_id":"n3","data":{{"x":{huge}.5}}}}"#),
    ];
    for body in &bodies {
        let (status, answer) = app.post_raw(body.clone()).await;
        let message = assert_error(status, &answer, StatusCode::BAD_REQUEST, "invalid_payload");
        assert!(message.contains("number out of range"), "{body}: {message}");
    }
    // Beyond 64 bits, or with a fraction, a number would be rounded to a
    // double, and two ids could become one: such an id is refused.
    for id in [
        "123456789012345678901234567890",
        "123456789012345678901234567891",
        "18446744073709551616",
        "1.5",
    ] {
        let (status, answer) = app
            .post_raw(format!(r#"{{"event":"QUEUED","request_id":{id}}}"#))
            .await;
        let message = assert_error(status, &answer, StatusCode::BAD_REQUEST, "invalid_payload");
        assert!(message.contains("`request_id`"), "{id}: {message}");
    }
    assert!(
        app.all_jobs().await.is_empty(),
        "no job from huge numbers or rounded ids"
    );
    let receipts = app.receipts().await;
    assert_eq!(
        receipts.len(),
        bodies.len() + 4,
        "each refused body is kept"
    );
    assert!(receipts.iter().all(|r| r["outcome"] == "invalid"));

    // Numbers a double holds are read as the rules say: an underflow is just
    // zero, a numeric status is no status, and integer ids up to 64 bits keep
    // every digit.
    let (status, answer) = app
        .post_raw(r#"{"event":"QUEUED","finetune_id":"tiny","x":1e-999999}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["outcome"], "applied");
    let (status, answer) = app
        .post_raw(r#"{"status":12345,"finetune_id":"numeric-status"}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["outcome"], "unrecognized");
    assert_eq!(
        app.get("/v1/jobs/numeric-status").await.0,
        StatusCode::NOT_FOUND
    );
    for id in ["18446744073709551615", "-9223372036854775808"] {
        let (status, answer) = app
            .post_raw(format!(r#"{{"event":"QUEUED","finetune_id":{id}}}"#))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["finetune_id"], id);
        assert_eq!(app.job(id).await["status"], "QUEUED");
    }
    assert_still_serving(&app, "after-numbers").await;
}

#[tokio::test]
async fn invalid_utf8_is_refused_with_400_stored_verbatim_and_makes_no_job() {
    let app = spawn_app().await;
    let in_string = |bad: &[u8]| -> Vec<u8> {
        let mut body = br#"{"event":"AVAILABLE","finetune_id":"utf8-"#.to_vec();
        body.extend_from_slice(bad);
        body.extend_from_slice(br#""}"#);
        body
    };
    let mut in_name = br#"{"event":"AVAILABLE","finetune_id":"utf8-name","name":"caf"#.to_vec();
    in_name.extend_from_slice(b"\xc3\"}");
    let bodies: Vec<Vec<u8>> = vec![
        b"\xff\xfe{\"event\":\"AVAILABLE\"}".to_vec(),
        in_string(b"\xff"),
        // An overlong encoding of `/`.
        in_string(b"\xc0\xaf"),
        // A UTF-16 surrogate, encoded as UTF-8.
        in_string(b"\xed\xa0\x80"),
        in_name,
        // A lone surrogate as an escape.
        br#"{"event":"AVAILABLE","finetune_id":"utf8-\ud800"}"#.to_vec(),
    ];
    for body in &bodies {
        let (status, answer) = app.post_raw(body.clone()).await;
        let message = assert_error(status, &answer, StatusCode::BAD_REQUEST, "invalid_payload");
        assert!(
            message.contains("not valid JSON"),
            "{}: {message}",
            String::from_utf8_lossy(body)
        );
    }
    assert!(app.all_jobs().await.is_empty(), "no job from broken text");
    let receipts = app.receipts().await;
    assert_eq!(receipts.len(), bodies.len());
    for (receipt, body) in receipts.iter().rev().zip(&bodies) {
        assert_eq!(receipt["outcome"], "invalid");
        assert_eq!(
            receipt["body_sha256"].as_str(),
            Some(hex::encode(Sha256::digest(body)).as_str()),
            "the stored body is the bytes received"
        );
        let shown = receipt["body"].as_str().unwrap_or_default();
        assert_eq!(shown, String::from_utf8_lossy(body), "shown as lossy text");
    }

    // A header value that is not text is dropped from the receipt; the
    // webhook itself is fine.
    let response = app
        .client
        .post(app.webhook_url())
        .header(
            "user-agent",
            reqwest::header::HeaderValue::from_bytes(b"agent-\xff\xfe").expect("obs-text"),
        )
        .body(r#"{"event":"QUEUED","finetune_id":"odd-header"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    let receipt = &app.receipts().await[0];
    assert_eq!(receipt["finetune_id"], "odd-header");
    assert!(receipt["headers"].get("user-agent").is_none(), "{receipt}");
    assert_still_serving(&app, "after-utf8").await;
}

/// A JSON webhook for `id` padded to exactly `size` bytes.
fn body_of_size(id: &str, size: usize) -> String {
    let empty = json!({"event": "QUEUED", "finetune_id": id, "pad": ""}).to_string();
    let body = json!({"event": "QUEUED", "finetune_id": id, "pad": "x".repeat(size - empty.len())})
        .to_string();
    assert_eq!(body.len(), size);
    body
}

#[tokio::test]
async fn a_10_mb_body_gets_413_in_the_error_shape_and_nothing_is_stored() {
    let app = spawn_app().await;
    let limit = app.settings.server.max_body_bytes;
    assert_eq!(limit, 1024 * 1024, "the documented default");

    let big = body_of_size("huge", 10 * 1024 * 1024);
    let (status, answer) = app.post_raw(big.clone()).await;
    let message = assert_error(
        status,
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert!(message.contains(&limit.to_string()), "{message}");

    // The same without a length up front: cut off as it streams.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .into_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let (status, answer) = app
        .post_raw(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .await;
    assert_error(
        status,
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    let (status, answer) = app.post_raw(body_of_size("over", limit + 1)).await;
    assert_error(
        status,
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert!(app.receipts().await.is_empty(), "nothing stored");
    assert!(app.all_jobs().await.is_empty());

    // At the limit and just under it, a body is a normal webhook.
    for (id, size) in [("at-limit", limit), ("under-limit", limit - 1)] {
        let body = body_of_size(id, size);
        let (status, answer) = app.post_raw(body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{id}: {answer}");
        assert_eq!(answer["outcome"], "applied");
        assert_eq!(app.job(id).await["status"], "QUEUED");
        let receipt = &app.receipts().await[0];
        assert_eq!(
            receipt["body_sha256"].as_str(),
            Some(hex::encode(Sha256::digest(&body)).as_str()),
            "{id}: the body is kept whole"
        );
    }
    assert_eq!(app.receipts().await.len(), 2);
    assert_still_serving(&app, "after-big").await;
}

/// Posts `bodies` 100 at a time; answers each body's (status, answer) in order.
async fn post_all(app: &TestApp, bodies: Vec<Value>) -> Vec<(StatusCode, Value)> {
    let mut answers = Vec::with_capacity(bodies.len());
    for chunk in bodies.chunks(100) {
        let posts = chunk.iter().map(|b| app.post(b.clone()));
        answers.extend(futures::future::join_all(posts).await);
    }
    answers
}

#[tokio::test]
async fn two_thousand_unknown_statuses_for_one_job_record_only_the_first() {
    let app = spawn_app().await;
    let statuses: Vec<String> = (0..2000).map(|i| format!("MYSTERY_{i:04}")).collect();
    let bodies = statuses
        .iter()
        .map(|s| json!({"status": s, "finetune_id": "flooded"}))
        .collect();
    let answers = post_all(&app, bodies).await;
    let mut applied = Vec::new();
    for (status, answer) in &answers {
        assert_eq!(*status, StatusCode::OK, "{answer}");
        match answer["outcome"].as_str() {
            Some("applied") => applied.push(answer["status"].as_str().unwrap_or_default()),
            // Unknown statuses share one rank: from a webhook, a different
            // status of the same rank is stale.
            Some("stale") => {}
            other => panic!("outcome {other:?}: {answer}"),
        }
    }
    assert_eq!(applied.len(), 1, "the first to arrive creates the job");
    let job = app.job("flooded").await;
    assert_eq!(job["status"], applied[0]);
    assert_eq!(transition_statuses(&job), vec![applied[0]]);

    // The job still moves up the ladder from there, and never back.
    let (_, answer) = app
        .post(json!({"event": "TRAINING_COMPLETED", "finetune_id": "flooded"}))
        .await;
    assert_eq!(answer["outcome"], "applied");
    let (_, answer) = app
        .post(json!({"status": "MYSTERY_9999", "finetune_id": "flooded"}))
        .await;
    assert_eq!(answer["outcome"], "stale");
    let job = app.job("flooded").await;
    assert_eq!(job["status"], "TRAINING_COMPLETED");
    assert_eq!(
        transition_statuses(&job),
        vec![applied[0], "TRAINING_COMPLETED"]
    );
    assert_eq!(every_job(&app).await.len(), 1);
    assert_eq!(
        every_receipt(&app).await.len(),
        2002,
        "every request is kept"
    );
    assert_still_serving(&app, "after-flood").await;
}

#[tokio::test]
async fn two_thousand_unknown_statuses_across_jobs_each_create_their_job() {
    let app = spawn_app().await;
    let bodies = (0..2000)
        .map(|i| json!({"status": format!("mystery {i}"), "finetune_id": format!("j{i}")}))
        .collect();
    let answers = post_all(&app, bodies).await;
    for (i, (status, answer)) in answers.iter().enumerate() {
        assert_eq!(*status, StatusCode::OK, "{answer}");
        assert_eq!(answer["outcome"], "applied", "{answer}");
        assert_eq!(
            answer["status"],
            format!("MYSTERY_{i}"),
            "stored normalised"
        );
    }
    let jobs = every_job(&app).await;
    assert_eq!(jobs.len(), 2000);
    for job in &jobs {
        let id = job["finetune_id"].as_str().unwrap_or_default();
        let n = id.trim_start_matches('j');
        assert_eq!(job["status"], format!("MYSTERY_{n}"), "{job}");
    }
    let (status, page) = app.get("/v1/jobs?status=mystery_1999").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["jobs"][0]["finetune_id"], "j1999");

    // Each job still moves up to a known status.
    let (_, answer) = app
        .post(json!({"event": "AVAILABLE", "finetune_id": "j7"}))
        .await;
    assert_eq!(answer["outcome"], "applied");
    assert_eq!(
        transition_statuses(&app.job("j7").await),
        vec!["MYSTERY_7", "AVAILABLE"]
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(metrics.status(), StatusCode::OK);
    // Unknown statuses share one label: posting webhooks cannot grow
    // /metrics without limit.
    let text = metrics.text().await.expect("text");
    let series = |name: &str| text.lines().filter(|l| l.starts_with(name)).count();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("MYSTERY"))
            .collect::<Vec<_>>(),
        Vec::<&str>::new()
    );
    assert!(
        text.contains("tunehook_jobs{status=\"OTHER\"} 1999"),
        "{text}"
    );
    assert!(series("tunehook_jobs{") <= 20, "{text}");
    assert!(series("tunehook_transitions_total{") <= 40, "{text}");
    assert_still_serving(&app, "after-many-jobs").await;
}

#[tokio::test]
async fn ids_that_look_like_paths_or_sql_are_stored_verbatim_and_read_back_exactly() {
    let app = spawn_app().await;
    let ids = [
        "../../etc/passwd",
        "..",
        ".",
        "%2e%2e%2f",
        "..%2F..%2Fetc%2Fpasswd",
        "..\\..\\windows\\win.ini",
        "'; DROP TABLE jobs; --",
        "\" OR \"1\"=\"1",
        "x' UNION SELECT * FROM receipts --",
        "$(rm -rf /)",
        "<script>alert(1)</script>",
        "a/b?c=d#e",
        "ジョブ 🚀",
        "\u{202e}txt.exe",
    ];
    for id in ids {
        let (status, answer) = app
            .post(json!({"event": "TRAINING", "finetune_id": id}))
            .await;
        assert_eq!(status, StatusCode::OK, "{id}: {answer}");
        assert_eq!(answer["outcome"], "applied", "{id}");
        assert_eq!(answer["finetune_id"], id);
    }
    for id in ids {
        let (status, job) =
            raw_get(&app, &format!("/v1/jobs/{}", encode_segment(id.as_bytes()))).await;
        assert_eq!(status, StatusCode::OK, "{id}: {job}");
        assert_eq!(job["finetune_id"], id);
        assert_eq!(job["status"], "TRAINING");
    }
    // The path decodes to the id: `%2e%2e%2f...` is the job `../..`, not a
    // way out of the route.
    let (status, job) = raw_get(&app, "/v1/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd").await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["finetune_id"], "../../etc/passwd");
    let (status, job) = raw_get(&app, "/v1/jobs/..").await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["finetune_id"], "..");
    // Unencoded slashes do not reach a job at all.
    for path in [
        "/v1/jobs/../../etc/passwd",
        "/v1/jobs/../receipts",
        "/v1/jobs/a/b",
        "/webhooks/segmind/../../v1/jobs",
    ] {
        let (status, body) = raw_get(&app, path).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    }

    let mut stored: Vec<String> = every_job(&app)
        .await
        .iter()
        .filter_map(|j| j["finetune_id"].as_str().map(str::to_owned))
        .collect();
    stored.sort();
    let mut expected: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(stored, expected, "the jobs table holds exactly these");
    assert_still_serving(&app, "after-odd-ids").await;
}

#[tokio::test]
async fn ids_with_control_characters_or_over_the_length_limit_are_refused_naming_the_key() {
    use tunehook::domain::payload::MAX_ID_LEN;
    let app = spawn_app().await;
    let longest = "i".repeat(MAX_ID_LEN);
    let too_long = "i".repeat(MAX_ID_LEN + 1);
    let refused = [
        json!({"event": "QUEUED", "finetune_id": "nul\u{0}byte"}),
        json!({"event": "QUEUED", "request_id": "line\nbreak"}),
        json!({"event": "QUEUED", "id": "esc\u{1b}[31m"}),
        json!({"event": "QUEUED", "data": {"finetune_id": "tab\tinside"}}),
        json!({"event": "QUEUED", "finetune_id": too_long}),
        json!({"event": "QUEUED", "finetune_id": "x".repeat(100_000)}),
    ];
    let keys = [
        "finetune_id",
        "request_id",
        "id",
        "finetune_id",
        "finetune_id",
        "finetune_id",
    ];
    for (body, key) in refused.iter().zip(keys) {
        let (status, answer) = app.post(body.clone()).await;
        let message = assert_error(status, &answer, StatusCode::BAD_REQUEST, "invalid_payload");
        assert!(message.contains(&format!("`{key}`")), "{message}");
        assert!(message.contains("not a usable job id"), "{message}");
    }
    assert!(app.all_jobs().await.is_empty(), "no job from a refused id");
    let receipts = app.receipts().await;
    assert_eq!(receipts.len(), refused.len());
    assert!(receipts.iter().all(|r| r["outcome"] == "invalid"));

    // The longest id accepted, and padding that is trimmed.
    let (status, answer) = app
        .post(json!({"event": "QUEUED", "finetune_id": longest}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = app
        .post(json!({"event": "QUEUED", "finetune_id": "  padded  "}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["finetune_id"], "padded");
    assert_eq!(app.job(&longest).await["finetune_id"], longest.as_str());

    // Reading such ids back is a 404 in the error shape, never a 500.
    for id in [
        "nul\u{0}byte".as_bytes(),
        b"line\nbreak",
        too_long.as_bytes(),
        "y".repeat(10_000).as_bytes(),
        b"'; DROP TABLE jobs; --",
    ] {
        let (status, body) = raw_get(&app, &format!("/v1/jobs/{}", encode_segment(id))).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    }
    assert_eq!(every_job(&app).await.len(), 2);
    assert_still_serving(&app, "after-refused-ids").await;
}

#[tokio::test]
async fn path_segments_that_are_not_utf8_are_answered_in_the_error_shape() {
    let app = spawn_app().await;
    for path in [
        "/v1/jobs/%FF",
        "/v1/jobs/%C0%AF",
        "/v1/jobs/ok%ED%A0%80",
        "/v1/deliveries/%FF",
        "/v1/deliveries/%FF/retry",
    ] {
        let method = if path.ends_with("/retry") {
            "POST"
        } else {
            "GET"
        };
        let (status, body) = raw_request(&app, method, path, Some(&app.api_token)).await;
        let message = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_parameter");
        assert!(message.contains("UTF-8"), "{path}: {message}");
    }
    // The webhook route: such a token is not the token.
    let (status, body) = raw_request(&app, "POST", "/webhooks/segmind/%FF%FE", None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(app.receipts().await.is_empty());
    assert_still_serving(&app, "after-bad-paths").await;
}

#[tokio::test]
async fn hostile_query_parameters_get_400_naming_the_parameter() {
    let app = spawn_app().await;
    app.post(json!({"event": "QUEUED", "finetune_id": "q"}))
        .await;
    for (path, parameter) in [
        ("/v1/jobs?status=x%27%20OR%20%271%27%3D%271", "status"),
        ("/v1/jobs?limit=1e999999", "limit"),
        ("/v1/jobs?limit=-1", "limit"),
        ("/v1/jobs?limit=99999999999999999999999", "limit"),
        (
            "/v1/jobs?cursor=%27%3B%20DROP%20TABLE%20jobs%3B--",
            "cursor",
        ),
        ("/v1/jobs?cursor=Li4vLi4vZXRjL3Bhc3N3ZA", "cursor"),
        ("/v1/receipts?outcome=%27%20OR%201%3D1%20--", "outcome"),
        ("/v1/receipts?cursor=1%20OR%201%3D1", "cursor"),
        ("/v1/receipts?cursor=99999999999999999999999", "cursor"),
    ] {
        let (status, body) = raw_get(&app, path).await;
        let message = assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_parameter");
        assert!(
            message.contains(&format!("`{parameter}`")),
            "{path}: {message}"
        );
    }
    let jobs = app.all_jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_still_serving(&app, "after-queries").await;
}
