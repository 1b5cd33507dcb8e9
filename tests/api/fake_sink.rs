//! A fake sink: a real HTTP server on 127.0.0.1, port 0, that records every
//! request and answers as the test tells it.

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::Value;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// How to answer: a status, an optional `Retry-After`, and how long to
/// take over it.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub delay: Duration,
}

pub const OK: Reply = Reply {
    status: 204,
    retry_after: None,
    delay: Duration::ZERO,
};
pub const FAIL: Reply = Reply {
    status: 500,
    retry_after: None,
    delay: Duration::ZERO,
};

type Behaviour = dyn Fn(&Value, &[Received]) -> Reply + Send + Sync;

#[derive(Clone)]
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Arc<Behaviour>>>,
}

pub struct FakeSink {
    pub addr: SocketAddr,
    shared: Shared,
}

impl FakeSink {
    /// A sink that answers 204 to everything.
    pub async fn start() -> FakeSink {
        FakeSink::answering(|_, _| OK).await
    }

    /// A sink that answers what `behaviour` says, given the request's JSON
    /// body and every request received before it.
    pub async fn answering(
        behaviour: impl Fn(&Value, &[Received]) -> Reply + Send + Sync + 'static,
    ) -> FakeSink {
        FakeSink::answering_on("127.0.0.1:0".parse().expect("addr"), behaviour).await
    }

    /// Like `answering`, on a given address (to bring a sink back where it was).
    pub async fn answering_on(
        addr: SocketAddr,
        behaviour: impl Fn(&Value, &[Received]) -> Reply + Send + Sync + 'static,
    ) -> FakeSink {
        let shared = Shared {
            received: Arc::default(),
            behaviour: Arc::new(Mutex::new(Arc::new(behaviour))),
        };
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeSink { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// From now on, answer what `behaviour` says.
    pub fn answer(&self, behaviour: impl Fn(&Value, &[Received]) -> Reply + Send + Sync + 'static) {
        if let Ok(mut current) = self.shared.behaviour.lock() {
            *current = Arc::new(behaviour);
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Waits until at least `n` requests arrived (at most 15 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "the sink got {} of {n} requests",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let behaviour = shared.behaviour.lock().map(|b| Arc::clone(&b)).ok();
    let reply = {
        let received = shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        behaviour.map(|b| b(&json, &received)).unwrap_or(OK)
    };
    if let Ok(mut received) = shared.received.lock() {
        received.push(Received {
            headers,
            body,
            at: Instant::now(),
        });
    }
    tokio::time::sleep(reply.delay).await;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match reply.retry_after {
        Some(seconds) => {
            (status, [("retry-after", seconds.to_string())], "slow down").into_response()
        }
        None => (status, "ok").into_response(),
    }
}

/// How many requests before this one carried the same event id.
pub fn earlier_tries(body: &Value, received: &[Received]) -> usize {
    let id = body["id"].as_str().unwrap_or_default();
    received.iter().filter(|r| r.json()["id"] == id).count()
}
