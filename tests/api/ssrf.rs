//! `POST /v1/finetunes` from an attacker's side: a `data_source_path` at a
//! private or local address, in any spelling, gets one and the same 422
//! whether anything listens there or not, and nothing connects to it; with
//! `dataset.allow_private = true` the check goes there again. (A public URL
//! redirecting to a private one cannot be served offline: its tests are in
//! `src/dataset/remote.rs`, with a resolver they fake.)

use crate::{
    fake_segmind::{API_KEY, FakeSegmind},
    helpers::{TestApp, spawn_app_with},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunehook::config::{Secret, Settings};

const REFUSED: &str = "the dataset URL points to a private or local address; tunehook does not fetch those (set dataset.allow_private = true if your datasets live on your own network)";

/// A server on 127.0.0.1 that answers every request 404 and counts the
/// connections it accepts. A connection is counted before it is answered,
/// so by the time the service has answered a submission, any connection
/// its check made is counted.
struct Listener {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Listener {
    async fn start() -> Listener {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("an address");
        let hits = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer =
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Listener { addr, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A port on 127.0.0.1 that nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    listener.local_addr().expect("an address").port()
}

fn segmind(settings: &mut Settings, fake: &FakeSegmind) {
    settings.segmind.base_url = fake.url();
    settings.segmind.api_key = Some(Secret::new(API_KEY));
    settings.ingest.confirm = Some(tunehook::config::Confirm::Off);
    settings.segmind.timeout = Duration::from_secs(5);
    settings.reconcile.initial_delay = Duration::from_secs(3600);
    settings.reconcile.interval = Duration::from_secs(3600);
}

async fn submit(app: &TestApp, dataset: &str) -> (StatusCode, Value) {
    let body = json!({
        "name": "portrait", "data_source_path": dataset,
        "instance_prompt": "a photo of 1MAN", "trigger_word": "1MAN"
    });
    app.post_api("/v1/finetunes", body).await
}

fn fields(body: &Value) -> Vec<(String, String)> {
    body["error"]["fields"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .map(|f| {
                    (
                        f["field"].as_str().unwrap_or_default().to_owned(),
                        f["message"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn refused() -> Vec<(String, String)> {
    vec![("data_source_path".to_owned(), REFUSED.to_owned())]
}

/// Spellings of a loopback (or otherwise local) address, with a port.
const LOCAL_FORMS: [&str; 13] = [
    "http://127.0.0.1:{port}/x.zip",
    "https://127.0.0.1:{port}/x.zip",
    "http://[::ffff:127.0.0.1]:{port}/x.zip",
    "http://2130706433:{port}/x.zip",
    "http://0x7f000001:{port}/x.zip",
    "http://0177.0.0.1:{port}/x.zip",
    "http://127.1:{port}/x.zip",
    "http://localhost:{port}/x.zip",
    "http://LocalHost:{port}/x.zip",
    "http://0.0.0.0:{port}/x.zip",
    "http://[::]:{port}/x.zip",
    "http://[::1]:{port}/x.zip",
    "http://user:secret@127.0.0.1:{port}/x.zip?X-Amz-Signature=s",
];

#[tokio::test]
async fn a_private_dataset_url_gets_the_same_422_whether_its_port_is_open_or_closed_and_is_never_reached()
 {
    let fake = FakeSegmind::start().await;
    let app = spawn_app_with(|s| segmind(s, &fake)).await;
    let open = Listener::start().await;
    let closed = closed_port().await;
    for form in LOCAL_FORMS {
        let (open_status, open_answer) =
            submit(&app, &form.replace("{port}", &open.addr.port().to_string())).await;
        let (closed_status, closed_answer) =
            submit(&app, &form.replace("{port}", &closed.to_string())).await;
        assert_eq!(
            open_status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{form}: {open_answer}"
        );
        assert_eq!(open_answer["error"]["code"], "invalid_request");
        assert_eq!(fields(&open_answer), refused(), "{form}");
        assert_eq!(
            (closed_status, &closed_answer),
            (open_status, &open_answer),
            "{form}: an open port and a closed one read the same"
        );
    }
    for url in [
        "http://127.0.0.1/x.zip",
        "https://10.0.0.1/x.zip",
        "http://172.16.0.1/x.zip",
        "http://192.168.1.1/x.zip",
        "http://100.64.0.1/x.zip",
        "http://169.254.169.254/latest/meta-data/",
        "http://0xa9fea9fe/latest/meta-data/",
        "http://[fe80::1]/x.zip",
        "http://[fd00::1]/x.zip",
        "http://[::ffff:10.0.0.1]/x.zip",
        "http://[64:ff9b::7f00:1]/x.zip",
        "http://224.0.0.1/x.zip",
        "http://255.255.255.255/x.zip",
    ] {
        let (status, answer) = submit(&app, url).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {answer}");
        assert_eq!(fields(&answer), refused(), "{url}");
    }
    assert_eq!(open.hits(), 0, "the check never connected to the listener");
    assert!(fake.calls("/finetune/request/submit").is_empty());
    assert!(app.all_jobs().await.is_empty());
}

#[tokio::test]
async fn a_real_dataset_on_loopback_is_refused_by_default_like_any_other_local_url() {
    let fake = FakeSegmind::start().await;
    let app = spawn_app_with(|s| segmind(s, &fake)).await;
    // The fake's ok.zip passes every check once allowed (the last test).
    let (status, answer) = submit(&app, &fake.dataset_url("ok.zip")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(fields(&answer), refused());
    assert!(fake.calls("/finetune/request/submit").is_empty());
}

#[tokio::test]
async fn with_allow_private_the_check_reaches_a_local_address_again() {
    let fake = FakeSegmind::start().await;
    let app = spawn_app_with(|s| {
        segmind(s, &fake);
        s.dataset.allow_private = true;
    })
    .await;
    let listener = Listener::start().await;
    let port = listener.addr.port().to_string();
    for (form, reached) in [
        (
            "http://127.0.0.1:{port}/x.zip",
            "http://127.0.0.1:{port}/x.zip",
        ),
        (
            "http://2130706433:{port}/x.zip",
            "http://127.0.0.1:{port}/x.zip",
        ),
        (
            "http://localhost:{port}/x.zip",
            "http://localhost:{port}/x.zip",
        ),
    ] {
        let before = listener.hits();
        let (status, answer) = submit(&app, &form.replace("{port}", &port)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{form}: {answer}");
        assert!(listener.hits() > before, "{form}: the listener was reached");
        let expected = format!(
            "HEAD {} answered 404 Not Found; Segmind needs a URL that answers HEAD and GET",
            reached.replace("{port}", &port)
        );
        assert!(
            fields(&answer)
                .iter()
                .any(|(field, message)| field == "data_source_path" && *message == expected),
            "{form}: {answer}"
        );
    }
    let (status, job) = submit(&app, &fake.dataset_url("ok.zip")).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
}
