//! The gRPC API (`proto/ledger/v1/ledger.proto`, tonic), served beside HTTP
//! by `ledger serve`. Thin like [`crate::http`]: each call authenticates,
//! turns its message into the same JSON document the HTTP API accepts and
//! parses it with the same parser (so validation and field paths are the
//! HTTP API's), calls [`crate::app`], and renders the typed outcome as a
//! message or a status. No business rule lives here.
//!
//! - `authenticate.rs`: the tower layer checking the key before decoding;
//! - `convert.rs`: messages, views and problems converted;
//! - `subscription.rs`: the `SubscribeEvents` stream.

mod authenticate;
mod convert;
mod subscription;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::app::auth::{Action, Principal};
use crate::app::idempotency::IdempotencyKey;
use crate::app::params::{HistoryCursor, MinPosition, PageSize, parse_feed_cursor};
use crate::app::requests::{parse_bulk_transfer, parse_deposit, parse_open_account};
use crate::app::views::{BulkTransferView, DepositView};
use crate::app::{CommandContext, Ledger};
use crate::problem::{FieldError, Problem, ProblemType};
use authenticate::Authenticate;
use convert::{
    account_message, bulk_body, command_result, put, put_optional, transaction_message, trial_balance_message,
};
pub use convert::{bulk_request_from_json, code_of, status_of, status_of_problem};
use subscription::Subscription;

/// The code generated from `proto/` (see `build.rs`).
pub mod pb {
    tonic::include_proto!("ledger.v1");

    /// The compiled proto files, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ledger_descriptor");
}

use pb::ledger_service_server::{LedgerService, LedgerServiceServer};

/// Events read per query by a subscription (at most LEDGER_PAGE_SIZE_MAX).
const FEED_PAGE: u32 = 1_000;
/// How often a caught-up subscription looks for new events.
pub(crate) const FEED_POLL: Duration = Duration::from_millis(100);
/// Events buffered per subscriber before the reader waits for it.
const FEED_BUFFER: usize = 256;

pub struct GrpcApi {
    ledger: Arc<Ledger>,
    /// Turns true when the server shuts down: open streams end then.
    shutdown: watch::Receiver<bool>,
}

/// Serves the ledger service and server reflection on `listener` until
/// `shutdown` turns true; calls in flight finish, open event streams end
/// with UNAVAILABLE (resume from the last `after`).
pub async fn serve(
    ledger: Arc<Ledger>,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Both versions of server reflection: v1, and v1alpha, the only one
    // Evans, grpc_cli, Postman and Python's grpcio-reflection speak.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let body_limit = ledger.settings().limits.body_bytes_max;
    let authenticating = Arc::clone(&ledger);
    let service = LedgerServiceServer::new(GrpcApi {
        ledger,
        shutdown: shutdown.clone(),
    })
    .max_decoding_message_size(body_limit);
    let mut stopped = shutdown;
    tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn({
            let ledger = Arc::clone(&authenticating);
            move |inner| Authenticate {
                inner,
                ledger: Arc::clone(&ledger),
            }
        }))
        .add_service(service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await?;
    Ok(())
}

impl GrpcApi {
    /// Runs one call: authenticates it, bounds it by the request time
    /// limit, logs it in a span with its request id and key id, counts it.
    async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        metadata: &MetadataMap,
        extensions: &tonic::Extensions,
        handle: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(Principal, String) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let request_id = metadata
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= crate::http::REQUEST_ID_MAX)
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let span = tracing::info_span!(
            "grpc",
            method,
            request_id = %request_id,
            api_key_id = tracing::field::Empty,
        );
        let limit = self.ledger.settings().limits.request_timeout;
        let outcome = async {
            let authenticated = async {
                // [`Authenticate`] did it before the message was decoded;
                // without it (a service mounted elsewhere), do it here.
                let principal = match extensions.get::<Principal>() {
                    Some(principal) => principal.clone(),
                    None => {
                        let authorization = metadata.get("authorization").map(|v| v.as_bytes());
                        self.ledger.authenticate(authorization).await.map_err(status_of)?
                    }
                };
                if let Some(id) = principal.key_id() {
                    tracing::Span::current().record("api_key_id", tracing::field::display(id));
                }
                handle(principal, request_id.clone()).await
            };
            match tokio::time::timeout(limit, authenticated).await {
                Ok(outcome) => outcome,
                Err(_) => Err(status_of_problem(
                    &Problem::new(
                        ProblemType::Timeout,
                        format!(
                            "the call took longer than {} ms; a command may still have been applied — retry it \
                             with the same idempotency_key to learn its outcome",
                            limit.as_millis()
                        ),
                    ),
                    false,
                )),
            }
        }
        .instrument(span.clone())
        .await;
        let code = outcome.as_ref().map_or_else(Status::code, |_| Code::Ok);
        let elapsed = started.elapsed();
        crate::observability::record_grpc(method, code, elapsed);
        span.in_scope(|| tracing::info!(code = ?code, latency_us = elapsed.as_micros() as u64, "finished call"));
        let request_id = MetadataValue::try_from(request_id.as_str()).ok();
        match outcome {
            Ok(message) => {
                let mut response = Response::new(message);
                if let Some(id) = request_id {
                    response.metadata_mut().insert("x-request-id", id);
                }
                Ok(response)
            }
            Err(mut status) => {
                if let Some(id) = request_id {
                    status.metadata_mut().insert("x-request-id", id);
                }
                Err(status)
            }
        }
    }
}

/// The context of a command: who, which request, and its idempotency key
/// (the application fingerprints the parsed command itself, so a retry
/// over either API with the same key and command replays).
fn command_context(
    principal: Principal,
    request_id: String,
    idempotency_key: Option<String>,
) -> Result<CommandContext, Status> {
    let idempotency_key = match idempotency_key {
        None => None,
        Some(key) => Some(
            IdempotencyKey::parse(key.as_bytes(), principal.idempotency_scope()).map_err(|problem| {
                let errors = problem
                    .errors
                    .into_iter()
                    .map(|e| FieldError::new("idempotency_key", e.message))
                    .collect();
                status_of_problem(&Problem::validation(errors), false)
            })?,
        ),
    };
    Ok(CommandContext {
        principal,
        request_id,
        idempotency_key,
    })
}

/// A list of invalid fields as a status.
fn invalid(errors: Vec<FieldError>) -> Status {
    status_of_problem(&Problem::validation(errors), false)
}

#[tonic::async_trait]
impl LedgerService for GrpcApi {
    async fn transfer_bulk(
        &self,
        request: Request<pb::TransferBulkRequest>,
    ) -> Result<Response<pb::TransferBulkResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        self.call(
            "TransferBulk",
            &metadata,
            &extensions,
            |principal, request_id| async move {
                let body = bulk_body(&message);
                let ctx = command_context(principal, request_id, message.idempotency_key)?;
                let settings = self.ledger.settings();
                let request = parse_bulk_transfer(&body, settings.iban_check, settings.limits.transfers_per_bulk_max)
                    .map_err(invalid)?;
                let outcome = self.ledger.transfer_bulk(&ctx, request).await.map_err(status_of)?;
                command_result(outcome, |view: BulkTransferView, replayed| pb::TransferBulkResponse {
                    bulk_id: view.bulk_id.to_string(),
                    account_id: view.account_id.to_string(),
                    iban: view.iban,
                    transfer_count: view.transfer_count as u32,
                    transfer_ids: view.transfer_ids.iter().map(ToString::to_string).collect(),
                    currency: view.currency,
                    total: view.total,
                    total_cents: view.total_cents,
                    balance_after: view.balance_after,
                    balance_after_cents: view.balance_after_cents,
                    version: view.version,
                    replayed,
                    position: view.position,
                })
            },
        )
        .await
    }

    async fn open_account(&self, request: Request<pb::OpenAccountRequest>) -> Result<Response<pb::Account>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        self.call(
            "OpenAccount",
            &metadata,
            &extensions,
            |principal, request_id| async move {
                principal
                    .authorize(Action::OpenAccount)
                    .map_err(|p| status_of_problem(&p, false))?;
                let mut body = Map::new();
                put(&mut body, "organization_name", message.organization_name);
                put(&mut body, "iban", message.iban);
                put(&mut body, "bic", message.bic);
                put_optional(&mut body, "currency", message.currency);
                let body = Value::Object(body);
                let ctx = command_context(principal, request_id, message.idempotency_key)?;
                let request = parse_open_account(&body, self.ledger.settings().iban_check).map_err(invalid)?;
                let outcome = self.ledger.open_account(&ctx, request).await.map_err(status_of)?;
                command_result(outcome, account_message)
            },
        )
        .await
    }

    async fn deposit(&self, request: Request<pb::DepositRequest>) -> Result<Response<pb::DepositResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        self.call("Deposit", &metadata, &extensions, |principal, request_id| async move {
            principal
                .authorize(Action::Deposit)
                .map_err(|p| status_of_problem(&p, false))?;
            let iban = self
                .ledger
                .lookup_iban(&message.iban, "iban")
                .map_err(|p| status_of_problem(&p, false))?;
            let mut body = Map::new();
            put(&mut body, "amount", message.amount);
            put_optional(&mut body, "currency", message.currency);
            put_optional(&mut body, "reference", message.reference);
            let body = Value::Object(body);
            let ctx = command_context(principal, request_id, message.idempotency_key)?;
            let request = parse_deposit(&body).map_err(invalid)?;
            let outcome = self.ledger.deposit(&ctx, &iban, request).await.map_err(status_of)?;
            command_result(outcome, |view: DepositView, replayed| pb::DepositResponse {
                transaction_id: view.transaction_id.to_string(),
                account_id: view.account_id.to_string(),
                iban: view.iban,
                amount: view.amount,
                amount_cents: view.amount_cents,
                currency: view.currency,
                reference: view.reference,
                balance: view.balance,
                balance_cents: view.balance_cents,
                version: view.version,
                replayed,
                position: view.position,
            })
        })
        .await
    }

    async fn get_account(&self, request: Request<pb::GetAccountRequest>) -> Result<Response<pb::Account>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        self.call("GetAccount", &metadata, &extensions, |principal, _| async move {
            let iban = self
                .ledger
                .lookup_iban(&message.iban, "iban")
                .map_err(|p| status_of_problem(&p, false))?;
            let min = MinPosition::new(message.min_position).map_err(|error| invalid(vec![error]))?;
            let reader = self.ledger.reflect(min).await.map_err(status_of)?;
            let view = self
                .ledger
                .account(&reader, &principal, &iban)
                .await
                .map_err(status_of)?;
            Ok(account_message(view, false))
        })
        .await
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        self.call("ListTransactions", &metadata, &extensions, |principal, _| async move {
            let iban = self
                .ledger
                .lookup_iban(&message.iban, "iban")
                .map_err(|p| status_of_problem(&p, false))?;
            // Both parameters are checked before either is reported.
            let limit = PageSize::new(message.limit, &self.ledger.settings().limits);
            let cursor = message.cursor.as_deref().map(HistoryCursor::parse).transpose();
            let min = MinPosition::new(message.min_position);
            let (limit, cursor, min) = match (limit, cursor, min) {
                (Ok(limit), Ok(cursor), Ok(min)) => (limit, cursor, min),
                (limit, cursor, min) => {
                    return Err(invalid(
                        [limit.err(), cursor.err(), min.err()].into_iter().flatten().collect(),
                    ));
                }
            };
            let reader = self.ledger.reflect(min).await.map_err(status_of)?;
            let page = self
                .ledger
                .transactions(&reader, &principal, &iban, limit, cursor)
                .await
                .map_err(status_of)?;
            Ok(pb::ListTransactionsResponse {
                items: page.items.into_iter().map(transaction_message).collect(),
                next_cursor: page.next_cursor,
            })
        })
        .await
    }

    async fn get_trial_balance(
        &self,
        request: Request<pb::GetTrialBalanceRequest>,
    ) -> Result<Response<pb::TrialBalance>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        self.call("GetTrialBalance", &metadata, &extensions, |principal, _| async move {
            let min = MinPosition::new(message.min_position).map_err(|error| invalid(vec![error]))?;
            // The key's scope first: an account key learns nothing by waiting.
            principal
                .authorize(Action::ReadLedger)
                .map_err(|p| status_of_problem(&p, false))?;
            let reader = self.ledger.reflect(min).await.map_err(status_of)?;
            let balance = self
                .ledger
                .trial_balance(&reader, &principal)
                .await
                .map_err(status_of)?;
            Ok(trial_balance_message(balance))
        })
        .await
    }

    type SubscribeEventsStream = ReceiverStream<Result<pb::Event, Status>>;

    async fn subscribe_events(
        &self,
        request: Request<pb::SubscribeEventsRequest>,
    ) -> Result<Response<Self::SubscribeEventsStream>, Status> {
        let (metadata, extensions, message) = request.into_parts();
        // Kept to authenticate again while the stream lasts: a key revoked
        // meanwhile ends it.
        let authorization = metadata.get("authorization").map(|v| v.as_bytes().to_vec());
        self.call("SubscribeEvents", &metadata, &extensions, |principal, _| async move {
            let limits = &self.ledger.settings().limits;
            let page_size = PageSize::new(Some(FEED_PAGE.min(limits.page_size_max)), limits)
                .unwrap_or_else(|_| PageSize::max(limits));
            let after = parse_feed_cursor(Some(&message.after)).map_err(|error| invalid(vec![error]))?;
            // Bounded like the requests in flight: past it, UNAVAILABLE.
            let admission = self
                .ledger
                .admit_subscription()
                .map_err(|problem| status_of_problem(&problem, false))?;
            // The first page is read before answering: a bad cursor or a
            // forbidden key is the call's status, not a broken stream.
            let first = self
                .ledger
                .events(&crate::app::Reader::primary(), &principal, after, page_size)
                .await
                .map_err(status_of)?;
            let (sender, receiver) = mpsc::channel(FEED_BUFFER);
            let subscription = Subscription {
                ledger: Arc::clone(&self.ledger),
                authorization,
                sender,
                shutdown: self.shutdown.clone(),
                page_size,
                _admission: admission,
            };
            tokio::spawn(subscription.run(first).in_current_span());
            Ok(ReceiverStream::new(receiver))
        })
        .await
    }
}
