//! Builds the service from `Settings`: opens the store, settles the tokens,
//! binds the listener (port 0 in tests) and runs until the shutdown token is
//! cancelled, then drains requests and closes the database in bounded time.

use crate::{
    config::{Secret, Settings},
    confirm::Confirmer,
    delivery::{self, Sink},
    http::{self, AppState},
    reconcile::Reconciler,
    store::Store,
};
use anyhow::Context;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Store,
    sinks: Vec<Arc<Sink>>,
    reconciler: Arc<Reconciler>,
    confirmer: Arc<Confirmer>,
    writer: JoinHandle<()>,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
    header_read_timeout: Duration,
    ingest_token: Secret,
    api_token: Secret,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        crate::telemetry::metrics::install();
        let (store, writer) = Store::open(&settings.database, delivery::routes(&settings.sinks))
            .await
            .with_context(|| format!("cannot open the database at {}", settings.database.url))?;
        let generated = store
            .generated_tokens()
            .await
            .context("cannot read or store the generated tokens")?;
        let ingest_token = settings
            .ingest
            .token
            .clone()
            .unwrap_or_else(|| Secret::new(generated.ingest));
        let api_token = settings
            .api
            .token
            .clone()
            .unwrap_or_else(|| Secret::new(generated.api));
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
        let state = AppState::new(http::Inner {
            store: store.clone(),
            reconciler: Arc::clone(&reconciler),
            confirmer: Arc::clone(&confirmer),
            started: std::time::Instant::now(),
            started_at: crate::time::now_rfc3339(),
            metrics_require_token: settings.metrics.require_token,
            webhook_permits: Arc::new(tokio::sync::Semaphore::new(
                settings.server.max_concurrent_webhooks,
            )),
            sinks: settings.sinks.clone(),
            ingest_token: ingest_token.clone(),
            api_token: api_token.clone(),
            max_body_bytes: settings.server.max_body_bytes,
        });
        Ok(Application {
            listener,
            router: http::router(state, settings.server.request_timeout),
            store,
            sinks,
            reconciler,
            confirmer,
            writer,
            shutdown: CancellationToken::new(),
            shutdown_timeout: settings.server.shutdown_timeout,
            header_read_timeout: settings.server.header_read_timeout,
            ingest_token,
            api_token,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn ingest_token(&self) -> &Secret {
        &self.ingest_token
    }

    pub fn api_token(&self) -> &Secret {
        &self.api_token
    }

    /// Cancel this token to stop the service.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled; then stops accepting,
    /// lets requests in flight finish (within `server.shutdown_timeout`) and
    /// waits for the writer to commit what it holds and close the database.
    pub async fn run(self) -> anyhow::Result<()> {
        let addr = self.local_addr();
        tracing::info!(%addr, "tunehook is listening");
        tracing::info!(
            "register the webhook URL in the Segmind console: run `tunehook tokens` to print it"
        );
        let shutdown = self.shutdown.clone();
        let deliveries = tokio::spawn(delivery::run(
            self.sinks,
            self.store.clone(),
            shutdown.clone(),
            self.shutdown_timeout,
        ));
        drop(self.store);
        let reconciler = tokio::spawn(Arc::clone(&self.reconciler).run(shutdown.clone()));
        drop(self.reconciler);
        let confirmer = tokio::spawn(Arc::clone(&self.confirmer).run(shutdown.clone()));
        drop(self.confirmer);
        let drained = http::serve::serve(
            self.listener,
            self.router,
            self.header_read_timeout,
            shutdown.clone(),
            self.shutdown_timeout,
        )
        .await;
        if !drained {
            tracing::warn!("requests still in flight at the shutdown timeout were dropped");
        }
        // The reconciler and the delivery workers stopped with the server:
        // a pass in flight finishes, attempts in flight finish or stay
        // pending. They share what is left of the shutdown timeout.
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout / 4;
        if tokio::time::timeout_at(deadline, reconciler).await.is_err() {
            tracing::warn!("the reconciler did not stop in time");
        }
        if tokio::time::timeout_at(deadline, confirmer).await.is_err() {
            tracing::warn!("the confirmer did not stop in time");
        }
        if tokio::time::timeout_at(deadline, deliveries).await.is_err() {
            tracing::warn!("delivery workers did not stop in time");
        }
        // The server and the workers released their handles on the store;
        // the writer now commits what it holds and closes the database.
        match tokio::time::timeout(self.shutdown_timeout, self.writer).await {
            Ok(_) => tracing::info!("database closed; stopped"),
            Err(_) => tracing::warn!("the database writer did not stop in time"),
        }
        Ok(())
    }
}
