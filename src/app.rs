//! Builds the service from `Settings`: opens the store, settles the tokens,
//! binds the listener (port 0 in tests) and runs until the shutdown token is
//! cancelled, then drains requests and closes the database in bounded time:
//! `server.shutdown_timeout` from the signal for the requests, workers and
//! reconciler together, then a few seconds for the writer's last commit and
//! checkpoint.
//!
//! Should the writer stop on its own (a panic, a database it can no longer
//! use), every route answers 503 and, after a moment for health probes to
//! see it, the service stops and `run` fails, so the process exits non-zero
//! and is restarted rather than refusing every webhook while looking alive.

use crate::{
    config::{RetentionSettings, Secret, Settings},
    confirm::Confirmer,
    delivery::{self, Sink},
    http::{self, AppState, auth},
    reconcile::Reconciler,
    store::{Store, WriterTask},
};
use anyhow::Context;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{net::TcpListener, time::Instant};
use tokio_util::sync::CancellationToken;

/// How long every route answers 503 after the writer stopped, before the
/// listener closes: enough for a health probe to see why.
const FAILED_LINGER: Duration = Duration::from_secs(2);
/// The least the workers and the reconciler get to stop, even when the
/// request drain used the whole shutdown timeout.
const WORKERS_GRACE: Duration = Duration::from_secs(1);
/// How long the writer gets, after everything else, for its last commit
/// and the final checkpoint.
const WRITER_GRACE: Duration = Duration::from_secs(5);

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Store,
    sinks: Vec<Arc<Sink>>,
    reconciler: Arc<Reconciler>,
    confirmer: Arc<Confirmer>,
    retention: RetentionSettings,
    writer: WriterTask,
    feed: Arc<crate::feed::EventFeed>,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
    header_read_timeout: Duration,
    credentials: Arc<auth::Credentials>,
    max_connections: usize,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        crate::telemetry::metrics::install();
        let (store, writer) = Store::open(&settings.database, delivery::routes(&settings.sinks))
            .await
            .with_context(|| {
                format!(
                    "cannot open the database at {}",
                    settings.database.redacted_url()
                )
            })?;
        tracing::info!(
            database = %Store::describe(&settings.database),
            "the database is open"
        );
        let generated = store
            .generated_tokens()
            .await
            .context("cannot read or store the generated tokens")?;
        let live = |configured: &Option<Secret>, generated: String| match configured {
            Some(token) => auth::LiveToken::new(token.clone(), true),
            None => auth::LiveToken::new(Secret::new(generated), false),
        };
        let credentials = Arc::new(auth::Credentials::new(
            live(&settings.ingest.token, generated.ingest),
            live(&settings.api.token, generated.api),
        ));
        let listener = TcpListener::bind(&settings.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
        let sinks = delivery::build_sinks(&settings.delivery, &settings.sinks)
            .context("cannot build the HTTP client for sinks")?;
        let reconciler = Arc::new(
            Reconciler::new(&settings, store.clone())
                .context("cannot build the HTTP client for Segmind")?,
        );
        let confirmer = Arc::new(Confirmer::new(
            &settings,
            store.clone(),
            reconciler.client().cloned(),
        ));
        // API callers choose the URL: only public addresses, unless the
        // operator's datasets live on their own network.
        let reach = if settings.dataset.allow_private {
            crate::dataset::remote::Reach::Anywhere
        } else {
            crate::dataset::remote::Reach::Public
        };
        let url_checker = Arc::new(
            crate::dataset::remote::UrlChecker::new(settings.segmind.timeout, reach)
                .context("cannot build the HTTP client for dataset checks")?,
        );
        let feed = Arc::new(
            crate::feed::EventFeed::new(store.clone())
                .await
                .context("cannot read the events for the live streams")?,
        );
        let shutdown = CancellationToken::new();
        let state = AppState::new(http::Inner {
            feed: Arc::clone(&feed),
            stream_permits: Arc::new(tokio::sync::Semaphore::new(settings.server.max_streams)),
            shutdown: shutdown.clone(),
            url_checker,
            store: store.clone(),
            reconciler: Arc::clone(&reconciler),
            confirmer: Arc::clone(&confirmer),
            started: std::time::Instant::now(),
            started_at: crate::time::now_rfc3339(),
            metrics_require_token: settings.metrics.require_token,
            gauges: http::metrics::GaugeCache::new(settings.metrics.cache),
            webhook_permits: Arc::new(tokio::sync::Semaphore::new(
                settings.server.max_concurrent_webhooks,
            )),
            webhook_bytes: http::WebhookBytes::new(settings.server.max_pending_webhook_bytes),
            sinks: settings.sinks.clone(),
            retention: settings.retention.clone(),
            credentials: Arc::clone(&credentials),
            public_url: settings.server.public_url.clone(),
            max_body_bytes: settings.server.max_body_bytes,
            session_ttl: settings.ui.session_ttl,
            sign_in_limit: Default::default(),
        });
        Ok(Application {
            listener,
            router: http::router(state, settings.server.request_timeout, settings.ui.enabled),
            store,
            sinks,
            reconciler,
            confirmer,
            retention: settings.retention.clone(),
            writer,
            feed,
            shutdown,
            shutdown_timeout: settings.server.shutdown_timeout,
            header_read_timeout: settings.server.header_read_timeout,
            credentials,
            max_connections: settings.server.max_connections,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The ingest token accepted now.
    pub fn ingest_token(&self) -> Secret {
        self.credentials.ingest.current()
    }

    /// The API token accepted now.
    pub fn api_token(&self) -> Secret {
        self.credentials.api.current()
    }

    /// Cancel this token to stop the service.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled; then stops accepting,
    /// lets requests in flight, delivery attempts and a reconcile pass
    /// finish (within `server.shutdown_timeout` of the signal), and has the
    /// writer commit what it holds and close the database. Fails when the
    /// writer stopped on its own.
    pub async fn run(self) -> anyhow::Result<()> {
        let addr = self.local_addr();
        tracing::info!(%addr, "tunehook is listening");
        tracing::info!(
            "register the webhook URL in the Segmind console: run `tunehook tokens` to print it"
        );
        let shutdown = self.shutdown.clone();
        // The shutdown is measured from the moment it is asked for.
        let asked = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                Instant::now()
            }
        });
        let hurry = CancellationToken::new();
        let watchdog = tokio::spawn(watch_writer(
            self.store.writer_failed(),
            shutdown.clone(),
            hurry.clone(),
        ));
        let deliveries = tokio::spawn(delivery::run(
            self.sinks,
            self.store.clone(),
            shutdown.clone(),
            self.shutdown_timeout,
        ));
        let tokens = tokio::spawn(auth::follow_stored_tokens(
            Arc::clone(&self.credentials),
            self.store.clone(),
            shutdown.clone(),
        ));
        let reconciler = tokio::spawn(Arc::clone(&self.reconciler).run(shutdown.clone()));
        drop(self.reconciler);
        let confirmer = tokio::spawn(Arc::clone(&self.confirmer).run(shutdown.clone()));
        drop(self.confirmer);
        let feed = tokio::spawn(Arc::clone(&self.feed).run(shutdown.clone()));
        drop(self.feed);
        let pruner = tokio::spawn(crate::retention::run(
            self.store.clone(),
            self.retention,
            shutdown.clone(),
        ));
        let drained = http::serve::serve(
            self.listener,
            self.router,
            self.header_read_timeout,
            self.max_connections,
            shutdown.clone(),
            self.shutdown_timeout,
            hurry,
        )
        .await;
        if !drained {
            tracing::warn!("requests still in flight at the shutdown timeout were dropped");
        }
        watchdog.abort();
        let failure = self.store.writer_failure();
        let asked = asked.await.unwrap_or_else(|_| Instant::now());
        // The reconciler and the delivery workers stopped with the server:
        // a pass in flight finishes, attempts in flight finish or stay
        // pending, within the same shutdown timeout as the requests.
        let deadline = if failure.is_some() {
            Instant::now() + WORKERS_GRACE
        } else {
            (asked + self.shutdown_timeout).max(Instant::now() + WORKERS_GRACE)
        };
        if tokio::time::timeout_at(deadline, reconciler).await.is_err() {
            tracing::warn!("the reconciler did not stop in time");
        }
        if tokio::time::timeout_at(deadline, confirmer).await.is_err() {
            tracing::warn!("the confirmer did not stop in time");
        }
        if tokio::time::timeout_at(deadline, deliveries).await.is_err() {
            tracing::warn!("delivery workers did not stop in time");
        }
        if tokio::time::timeout_at(deadline, feed).await.is_err() {
            tracing::warn!("the event feed did not stop in time");
        }
        // It stops at once on shutdown.
        let _ = tokio::time::timeout_at(deadline, tokens).await;
        // The pruner stops between two of its small steps.
        if tokio::time::timeout_at(deadline, pruner).await.is_err() {
            tracing::warn!("the pruner did not stop in time");
        }
        // The writer commits what it holds and closes the database, even
        // if a request or a worker that did not stop in time still holds a
        // handle on the store (its later writes get 503).
        let writer_deadline = Instant::now() + WRITER_GRACE;
        let _ = tokio::time::timeout_at(writer_deadline, self.store.close()).await;
        drop(self.store);
        match tokio::time::timeout_at(writer_deadline, self.writer.finished()).await {
            Ok(Ok(())) => tracing::info!("database closed; stopped"),
            Ok(Err(cause)) => anyhow::bail!("the database writer stopped: {cause}"),
            Err(_) => tracing::warn!("the database writer did not stop in time"),
        }
        if let Some(cause) = failure {
            anyhow::bail!("the database writer stopped: {cause}");
        }
        Ok(())
    }
}

/// Once the writer has stopped on its own: says why, lets every route
/// answer 503 for a moment, then stops the service with a short drain.
async fn watch_writer(
    failed: impl std::future::Future<Output = String>,
    shutdown: CancellationToken,
    hurry: CancellationToken,
) {
    let cause = failed.await;
    tracing::error!(cause = %cause, "the database writer stopped: answering 503 and exiting so that tunehook is restarted");
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(FAILED_LINGER) => {}
    }
    hurry.cancel();
    shutdown.cancel();
}
