//! The whole server: both front ends, every background task and the
//! shutdown, composed in one function that `ledger serve`, the integration
//! tests and the benchmarks all call.
//!
//! [`run`] takes its listeners and its shutdown signal as parameters (as
//! mini-redis's `server::run(listener, shutdown)` does), so a test binds
//! port 0, starts the real thing and stops it when it likes.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::app::Ledger;

/// Time in-flight calls get after the request time limit, once stopping.
const GRACE_EXTRA: Duration = Duration::from_secs(5);

/// Serves the HTTP API on `http` and, when given, the gRPC API on `grpc`,
/// with the background tasks a server needs:
/// - the API key watcher (revocations take effect at once),
/// - the idempotency key purge (keys older than
///   [`crate::app::Settings::idempotency_ttl`]),
/// - the asynchronous projection runner,
/// - the posting process (the credits of on-us transfers),
/// - the read replicas' health checks, when there are replicas,
/// - the feed's relay to NATS JetStream, when the ledger has one
///   ([`Ledger::with_relay`]; `ledger relay` runs it alone).
///
/// Runs until `shutdown` completes or either server fails. In-flight
/// requests then get the request time limit and [`GRACE_EXTRA`] more; a
/// client that holds on longer (a stalled stream) is cut off. The
/// background tasks end with the function (each of their batches is a
/// transaction of its own, so stopping between them loses nothing).
pub async fn run(
    ledger: Arc<Ledger>,
    http: TcpListener,
    grpc: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut background = JoinSet::new();
    {
        let watcher = Arc::clone(&ledger);
        background.spawn(async move { watcher.watch_key_changes().await });
    }
    background.spawn(crate::app::idempotency::purge_periodically(
        ledger.pool().clone(),
        ledger.settings().idempotency_ttl,
    ));
    background.spawn(crate::projections::runner::run(ledger.pool().clone()));
    background.spawn(crate::posting::run(ledger.pool().clone(), ledger.posting_wake()));
    background.spawn(crate::observability::upkeep_periodically());
    background.spawn(Arc::clone(ledger.replicas()).check_periodically(ledger.pool().clone()));
    if let Some(relay) = ledger.relay() {
        background.spawn(crate::relay::run(ledger.pool().clone(), relay.clone()));
    }

    // The signal, or either server failing, stops both.
    let (stop, stopped) = watch::channel(false);
    let stop = Arc::new(stop);
    {
        let stop = Arc::clone(&stop);
        background.spawn(async move {
            shutdown.await;
            stop.send_replace(true);
        });
    }
    // A server's failure is kept, so the function returns it even when the
    // other one is cut off at the end of the grace period.
    let failure = Mutex::new(None::<anyhow::Error>);
    let fail = |error: anyhow::Error| {
        failure.lock().expect("failure lock").get_or_insert(error);
    };
    let http_server = {
        let mut stopped = stopped.clone();
        let app = crate::http::router(Arc::clone(&ledger));
        let stop = Arc::clone(&stop);
        async move {
            let served = axum::serve(http, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await;
            stop.send_replace(true);
            if let Err(error) = served {
                fail(anyhow::Error::new(error).context("HTTP server"));
            }
        }
    };
    let grpc_server = {
        let ledger = Arc::clone(&ledger);
        let stopped = stopped.clone();
        let stop = Arc::clone(&stop);
        async move {
            let Some(listener) = grpc else {
                return; // off: nothing to stop the HTTP server for
            };
            let served = crate::grpc::serve(ledger, listener, stopped).await;
            stop.send_replace(true);
            if let Err(error) = served {
                fail(error.context("gRPC server"));
            }
        }
    };
    let grace = ledger.settings().limits.request_timeout + GRACE_EXTRA;
    let mut grace_stopped = stopped;
    let cut_off = async move {
        let _ = grace_stopped.wait_for(|stop| *stop).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        _ = async { tokio::join!(http_server, grpc_server) } => tracing::info!("stopped"),
        _ = cut_off => tracing::warn!(?grace, "stopped with requests still open after the grace period"),
    }
    background.shutdown().await;
    match failure.into_inner().expect("failure lock") {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Completes on SIGTERM or SIGINT: the shutdown `ledger serve` passes to
/// [`run`].
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            let _ = interrupt.await;
            return;
        }
    };
    tokio::select! {
        _ = interrupt => {},
        _ = terminate.recv() => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
