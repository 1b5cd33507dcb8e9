//! The HTTP server loop: hyper's HTTP/1 with a timer, so a client that
//! trickles its request headers is cut off after `server.header_read_timeout`
//! (axum's own `serve` sets no such limit), and a graceful shutdown that
//! stops accepting, lets requests in flight finish, and gives up after the
//! drain timeout. Open connections are capped at `server.max_connections`:
//! each accepted connection holds a permit until it ends, and at the cap the
//! loop stops accepting (new clients wait in the listen backlog) until one
//! frees, so a flood of idle connections cannot exhaust file descriptors.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use std::{sync::Arc, time::Duration};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How long requests in flight may still take once the drain is hurried.
const HURRIED_DRAIN: Duration = Duration::from_secs(2);

/// Serves `router` until `shutdown` is cancelled, then drains connections
/// for at most `drain`, or a short while once `hurry` is cancelled (the
/// writer stopped: nothing in flight can succeed). Returns whether every
/// connection finished in time.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    max_connections: usize,
    shutdown: CancellationToken,
    drain: Duration,
    hurry: CancellationToken,
) -> bool {
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(
        max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    loop {
        // Wait for a free slot before accepting: at the cap, connections
        // queue in the kernel's backlog rather than in tunehook.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&open).acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        // Handlers that limit by client address (sign-in) read the peer.
        let service = tower::ServiceBuilder::new()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)))
            .service(router.clone());
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing requests in flight");
    let hurried = async {
        hurry.cancelled().await;
        tokio::time::sleep(HURRIED_DRAIN).await;
    };
    tokio::select! {
        () = graceful.shutdown() => true,
        () = tokio::time::sleep(drain) => false,
        () = hurried => false,
    }
}
