//! The tower layer that sheds calls past the bound of requests in flight
//! and authenticates every call to the ledger service before its message
//! is decoded.

use std::sync::Arc;
use std::time::Instant;

use super::convert::{status_of, status_of_problem};
use crate::app::Ledger;
use crate::problem::{Problem, ProblemType};

/// The service's methods, for metric labels (never a client's free text).
pub(super) const METHODS: [&str; 7] = [
    "TransferBulk",
    "OpenAccount",
    "Deposit",
    "GetAccount",
    "ListTransactions",
    "SubscribeEvents",
    "GetTrialBalance",
];

/// Authenticates every call to the ledger service before its message is
/// read: without a valid key nothing is decoded (as HTTP checks the key
/// before reading a body). Server reflection stays open, like /openapi.json.
#[derive(Clone)]
pub(super) struct Authenticate<S> {
    pub(super) inner: S,
    pub(super) ledger: Arc<Ledger>,
}

impl<S, B> tower::Service<axum::http::Request<B>> for Authenticate<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        // The clone that was made ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ledger = Arc::clone(&self.ledger);
        Box::pin(async move {
            let Some(method) = request.uri().path().strip_prefix("/ledger.v1.LedgerService/") else {
                return inner.call(request).await;
            };
            let method = METHODS.iter().find(|m| **m == method).copied().unwrap_or("unknown");
            let started = Instant::now();
            // Shed past the bound of requests in flight (shared with HTTP).
            let admission = match ledger.admit() {
                Ok(admission) => admission,
                Err(problem) => {
                    let status = status_of_problem(&problem, false);
                    crate::observability::record_grpc(method, status.code(), started.elapsed());
                    return Ok(status.into_http());
                }
            };
            let authorization = request
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            // Bounded like the call itself (a database that does not answer).
            let limit = ledger.settings().limits.request_timeout;
            let authenticated = match tokio::time::timeout(limit, ledger.authenticate(authorization)).await {
                Ok(result) => result.map_err(status_of),
                Err(_) => Err(status_of_problem(
                    &Problem::new(
                        ProblemType::Unavailable,
                        format!(
                            "authentication took longer than {} ms; nothing was done, retry later",
                            limit.as_millis()
                        ),
                    ),
                    false,
                )),
            };
            match authenticated {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    let response = inner.call(request).await;
                    drop(admission);
                    response
                }
                Err(status) => {
                    crate::observability::record_grpc(method, status.code(), started.elapsed());
                    tracing::info!(method, code = ?status.code(), "call refused before its message was read");
                    Ok(status.into_http())
                }
            }
        })
    }
}
