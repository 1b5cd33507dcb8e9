//! A fake Segmind API: a real HTTP server on 127.0.0.1, port 0, that checks
//! what Segmind requires (method, path, the `x-api-key` header, the JSON
//! body on its GET endpoints) and answers as the test sets it up. It also
//! plays Segmind's upload bucket (pre-signed URLs point back to it, and a
//! `PUT` there is kept) and hosts datasets at public URLs of every kind a
//! dataset check must catch (`/datasets/...`).

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Multipart, Path, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{any, get, post, put},
};
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub const API_KEY: &str = "SG_test_key";

/// How the list endpoint answers.
#[derive(Debug, Clone)]
pub enum ListAnswer {
    Jobs,
    Status {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    Garbage,
    Hang,
}

/// Details calls answered 429: with `Retry-After: retry_after` seconds
/// when given, for the next `calls` of them (every one when `None`).
#[derive(Debug, Clone, Copy)]
struct Throttle {
    retry_after: Option<u64>,
    calls: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    jobs: Vec<Value>,
    details: HashMap<String, Value>,
    /// While set, details calls answer 429.
    details_throttled: Option<Throttle>,
    answers: Vec<ListAnswer>,
    calls: Vec<Call>,
    access: Vec<(String, String)>,
    /// The next answers of the submit endpoint, in order; then success.
    submit_answers: Vec<(u16, String)>,
    submitted: usize,
    /// Files PUT to pre-signed URLs, by name.
    uploads: HashMap<String, Vec<u8>>,
    /// This server's own address, for the URLs it hands out.
    base: String,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Inner>>);

pub struct FakeSegmind {
    pub addr: SocketAddr,
    shared: Shared,
}

impl FakeSegmind {
    pub async fn start() -> FakeSegmind {
        let shared = Shared::default();
        let app = Router::new()
            .route("/finetune/request/submit", post(submit))
            .route("/finetune/request/details", get(details))
            .route("/finetune/request/list", get(list))
            .route("/finetune/request/upload/pre-signed-url", get(presigned))
            .route("/finetune/request/access-update", put(access_update))
            .route("/uploads/{name}", put(upload))
            .route("/datasets/{name}", any(dataset))
            .fallback(|method: Method, uri: Uri| async move {
                (StatusCode::NOT_FOUND, format!("no route {method} {uri}"))
            })
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        shared.0.lock().expect("lock").base = format!("http://{addr}");
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeSegmind { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self.shared.0.lock().expect("lock");
        f(&mut inner)
    }

    /// The jobs the list endpoint returns.
    pub fn set_jobs(&self, jobs: Vec<Value>) {
        self.with(|i| i.jobs = jobs);
    }

    /// A job only the details endpoint knows.
    pub fn set_details(&self, id: &str, job: Value) {
        self.with(|i| i.details.insert(id.to_owned(), job));
    }

    /// From now on every details call answers 429, with `Retry-After:
    /// retry_after` (seconds) when given, until [`FakeSegmind::stop_throttling`].
    pub fn throttle_details(&self, retry_after: Option<u64>) {
        self.with(|i| {
            i.details_throttled = Some(Throttle {
                retry_after,
                calls: None,
            })
        });
    }

    /// The next `calls` details calls answer 429, with `Retry-After:
    /// retry_after` (seconds) when given; then details answer again.
    pub fn throttle_next_details(&self, calls: usize, retry_after: Option<u64>) {
        self.with(|i| {
            i.details_throttled = Some(Throttle {
                retry_after,
                calls: Some(calls),
            })
        });
    }

    /// Details calls are answered again.
    pub fn stop_throttling(&self) {
        self.with(|i| i.details_throttled = None);
    }

    /// The details calls that asked about `id`, in order.
    pub fn details_calls_for(&self, id: &str) -> Vec<Call> {
        self.calls("/finetune/request/details")
            .into_iter()
            .filter(|c| c.body["request_id"] == id)
            .collect()
    }

    /// The next answers of the list endpoint, in order; then `Jobs`.
    pub fn answer_list(&self, answers: Vec<ListAnswer>) {
        self.with(|i| i.answers = answers);
    }

    pub fn calls(&self, path: &str) -> Vec<Call> {
        self.with(|i| {
            i.calls
                .iter()
                .filter(|c| c.path.ends_with(path))
                .cloned()
                .collect()
        })
    }

    pub fn access_updates(&self) -> Vec<(String, String)> {
        self.with(|i| i.access.clone())
    }

    /// The next answers of the submit endpoint (status, body), in order.
    pub fn answer_submit(&self, answers: Vec<(u16, &str)>) {
        self.with(|i| {
            i.submit_answers = answers
                .into_iter()
                .map(|(s, b)| (s, b.to_owned()))
                .collect()
        });
    }

    /// What was PUT to the pre-signed URL for `name`.
    pub fn upload(&self, name: &str) -> Option<Vec<u8>> {
        self.with(|i| i.uploads.get(name).cloned())
    }

    /// A public URL of a dataset this server hosts: `ok.zip` (a ZIP's first
    /// bytes, with a Content-Length), `no-head.zip` (HEAD refused),
    /// `no-length.zip` (HEAD without Content-Length), `huge.zip` (150 MB by
    /// its Content-Length), `page.zip` (an HTML page), `moved.zip` (a
    /// redirect to `ok.zip`), `loop.zip` (redirects without end).
    pub fn dataset_url(&self, name: &str) -> String {
        format!("{}/datasets/{name}", self.url())
    }
}

fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    (key != Some(API_KEY)).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "Invalid API key"})),
        )
            .into_response()
    })
}

fn record(shared: &Shared, method: Method, path: &str, body: &Bytes) -> Value {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Ok(mut inner) = shared.0.lock() {
        inner.calls.push(Call {
            method,
            path: path.to_owned(),
            body: body.clone(),
            at: Instant::now(),
        });
    }
    body
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

async fn submit(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let body = record(&shared, Method::POST, "/finetune/request/submit", &body);
    if let Some(refused) = unauthorized(&headers) {
        return refused;
    }
    for key in [
        "name",
        "data_source_path",
        "instance_prompt",
        "trigger_word",
        "base_model",
        "theme",
        "segmind_public",
        "advance_parameters",
    ] {
        if body.get(key).is_none() {
            return bad_request(&format!("missing {key}"));
        }
    }
    let answer = {
        let Ok(mut inner) = shared.0.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        if inner.submit_answers.is_empty() {
            inner.submitted += 1;
            Ok(inner.submitted)
        } else {
            Err(inner.submit_answers.remove(0))
        }
    };
    match answer {
        Ok(n) => Json(
            json!({"status": "REQUESTED", "request_id": format!("new-job-{n}"), "name": body["name"]}),
        )
        .into_response(),
        Err((status, body)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        )
            .into_response(),
    }
}

async fn details(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let body = record(&shared, Method::GET, "/finetune/request/details", &body);
    if let Some(refused) = unauthorized(&headers) {
        return refused;
    }
    let Some(id) = body["request_id"].as_str() else {
        return bad_request("request_id is required in the body");
    };
    let (throttled, job) = shared
        .0
        .lock()
        .map(|mut i| {
            let throttled = i.details_throttled;
            // A counted throttle is used up call by call.
            if let Some(Throttle {
                calls: Some(left), ..
            }) = &mut i.details_throttled
            {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    i.details_throttled = None;
                }
            }
            (throttled, i.details.get(id).cloned())
        })
        .unwrap_or_default();
    if let Some(Throttle { retry_after, .. }) = throttled {
        let body = Json(json!({"error": "Too many requests"}));
        return match retry_after {
            Some(s) => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", s.to_string())],
                body,
            )
                .into_response(),
            None => (StatusCode::TOO_MANY_REQUESTS, body).into_response(),
        };
    }
    match job {
        Some(job) => Json(json!({"finetune": job})).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "Finetune request not found"})),
        )
            .into_response(),
    }
}

async fn list(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    record(&shared, Method::GET, "/finetune/request/list", &body);
    if let Some(refused) = unauthorized(&headers) {
        return refused;
    }
    let (answer, jobs) = {
        let mut inner = match shared.0.lock() {
            Ok(inner) => inner,
            Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        };
        let answer = if inner.answers.is_empty() {
            ListAnswer::Jobs
        } else {
            inner.answers.remove(0)
        };
        (answer, inner.jobs.clone())
    };
    match answer {
        ListAnswer::Jobs => Json(Value::Array(jobs)).into_response(),
        ListAnswer::Status {
            status,
            body,
            retry_after,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match retry_after {
                Some(s) => (status, [("retry-after", s.to_string())], body).into_response(),
                None => (status, body).into_response(),
            }
        }
        ListAnswer::Garbage => (StatusCode::OK, "<html>not json</html>").into_response(),
        ListAnswer::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Json(Value::Array(jobs)).into_response()
        }
    }
}

async fn presigned(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let body = record(
        &shared,
        Method::GET,
        "/finetune/request/upload/pre-signed-url",
        &body,
    );
    if let Some(refused) = unauthorized(&headers) {
        return refused;
    }
    let Some(name) = body["name"].as_str() else {
        return bad_request("name is required in the body");
    };
    let base = shared.0.lock().map(|i| i.base.clone()).unwrap_or_default();
    Json(json!({
        "presigned_url": format!("{base}/uploads/{name}?X-Amz-Signature=abc"),
        "s3_url": format!("{base}/uploads/{name}")
    }))
    .into_response()
}

async fn access_update(
    State(shared): State<Shared>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    record(
        &shared,
        Method::PUT,
        "/finetune/request/access-update",
        &Bytes::new(),
    );
    if let Some(refused) = unauthorized(&headers) {
        return refused;
    }
    let mut fields = HashMap::new();
    while let Ok(Some(field)) = form.next_field().await {
        let name = field.name().unwrap_or_default().to_owned();
        fields.insert(name, field.text().await.unwrap_or_default());
    }
    let (Some(id), Some(public)) = (fields.get("request_id"), fields.get("segmind_public")) else {
        return bad_request("request_id and segmind_public are required form fields");
    };
    if let Ok(mut inner) = shared.0.lock() {
        inner.access.push((id.clone(), public.clone()));
    }
    (StatusCode::OK, "200").into_response()
}

/// A pre-signed upload: S3 takes the body as it is, without `x-api-key`,
/// and only with the signature in the query.
async fn upload(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Response {
    if !uri.query().unwrap_or_default().contains("X-Amz-Signature=") {
        return (StatusCode::FORBIDDEN, "missing signature").into_response();
    }
    if let Ok(mut inner) = shared.0.lock() {
        inner.uploads.insert(name, body.to_vec());
    }
    StatusCode::OK.into_response()
}

async fn dataset(method: Method, Path(name): Path<String>, headers: HeaderMap) -> Response {
    const ZIP_HEAD: &[u8] = b"PK\x03\x04rest-of-the-archive";
    let head = method == Method::HEAD;
    let ranged = |bytes: &'static [u8]| -> Response {
        // Segmind's GET asks for the first bytes only.
        if headers.contains_key("range") {
            (StatusCode::PARTIAL_CONTENT, &bytes[..4]).into_response()
        } else {
            bytes.into_response()
        }
    };
    match name.as_str() {
        "ok.zip" | "no-length.zip" | "huge.zip" if !head => ranged(ZIP_HEAD),
        "ok.zip" => ZIP_HEAD.into_response(),
        "no-head.zip" if head => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        "no-head.zip" => ranged(ZIP_HEAD),
        // A streamed body has no length to announce.
        "no-length.zip" => Response::new(Body::from_stream(futures::stream::iter(vec![Ok::<
            _,
            std::io::Error,
        >(
            Bytes::from_static(ZIP_HEAD),
        )]))),
        "huge.zip" => ([("content-length", "150000000")], Body::empty()).into_response(),
        "page.zip" => ranged(b"<html>a download page</html>"),
        "moved.zip" => (StatusCode::FOUND, [("location", "/datasets/ok.zip")]).into_response(),
        "loop.zip" => (StatusCode::FOUND, [("location", "/datasets/loop.zip")]).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
