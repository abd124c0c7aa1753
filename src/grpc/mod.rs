//! The gRPC API (`proto/ledger/v1/ledger.proto`, tonic), served beside HTTP
//! by `ledger serve`. Thin like [`crate::http`]: each call authenticates,
//! turns its message into the same JSON document the HTTP API accepts and
//! parses it with the same parser (so validation and field paths are the
//! HTTP API's), calls [`crate::app`], and maps the outcome to a message or
//! a status. No business rule lives here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
use tracing::Instrument;

use crate::app::auth::{Action, Principal};
use crate::app::idempotency::{IdempotencyKey, request_hash};
use crate::app::requests::{parse_bulk_transfer, parse_deposit, parse_open_account};
use crate::app::views::{AccountView, BulkTransferView, DepositView, FeedEventView, TransactionView};
use crate::app::{AppError, CommandContext, CommandResponse, Ledger};
use crate::problem::{FieldError, Problem};

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
const FEED_POLL: Duration = Duration::from_millis(100);
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
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
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
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await?;
    Ok(())
}

/// The service's methods, for metric labels (never a client's free text).
const METHODS: [&str; 6] = [
    "TransferBulk",
    "OpenAccount",
    "Deposit",
    "GetAccount",
    "ListTransactions",
    "SubscribeEvents",
];

/// Authenticates every call to the ledger service before its message is
/// read: without a valid key nothing is decoded (as HTTP checks the key
/// before reading a body). Server reflection stays open, like /openapi.json.
#[derive(Clone)]
struct Authenticate<S> {
    inner: S,
    ledger: Arc<Ledger>,
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
            let authorization = request
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            // Bounded like the call itself (a database that does not answer).
            let limit = ledger.settings().limits.request_timeout;
            let authenticated = match tokio::time::timeout(limit, ledger.authenticate(authorization)).await {
                Ok(result) => result.map_err(status_of),
                Err(_) => Err(Status::unavailable(format!(
                    "authentication took longer than {} ms; nothing was done, retry later",
                    limit.as_millis()
                ))),
            };
            match authenticated {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
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
            .filter(|v| !v.is_empty() && v.len() <= 200)
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
                Err(_) => Err(Status::unavailable(format!(
                    "the call took longer than {} ms; a command may still have been applied — retry it with \
                     the same idempotency_key to learn its outcome",
                    limit.as_millis()
                ))),
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
/// fingerprinted as the equivalent HTTP request (so a retry over either
/// API with the same key and content replays).
fn command_context(
    principal: Principal,
    request_id: String,
    idempotency_key: Option<String>,
    http_path: &str,
    body: &Value,
) -> Result<CommandContext, Status> {
    let idempotency = match idempotency_key {
        None => None,
        Some(key) => {
            let key = IdempotencyKey::parse(key.as_bytes(), principal.idempotency_scope()).map_err(|problem| {
                let errors = problem
                    .errors
                    .into_iter()
                    .map(|e| FieldError::new("idempotency_key", e.message))
                    .collect();
                status_of_problem(&Problem::validation(errors), false)
            })?;
            Some((key, request_hash("POST", http_path, body.to_string().as_bytes())))
        }
    };
    Ok(CommandContext {
        principal,
        request_id,
        idempotency,
    })
}

/// A command's response as a message: its recorded body (JSON) read back
/// as the view, or its recorded refusal as a status.
fn command_result<V: DeserializeOwned, T>(
    response: CommandResponse,
    convert: impl FnOnce(V, bool) -> T,
) -> Result<T, Status> {
    if (200..300).contains(&response.status) {
        let view: V = serde_json::from_str(&response.body)
            .map_err(|e| status_of(AppError::Internal(anyhow::anyhow!("unreadable command response: {e}"))))?;
        return Ok(convert(view, response.replayed));
    }
    match serde_json::from_str::<Problem>(&response.body) {
        Ok(problem) => Err(status_of_problem(&problem, response.replayed)),
        Err(e) => Err(status_of(AppError::Internal(anyhow::anyhow!(
            "unreadable recorded problem: {e}"
        )))),
    }
}

pub fn status_of(error: AppError) -> Status {
    match error {
        AppError::Client(problem) => status_of_problem(&problem, false),
        AppError::Unavailable(error) => {
            tracing::warn!(error = format!("{error:#}"), "call refused: database unavailable");
            Status::unavailable("the database is unavailable or overloaded; nothing was changed, retry later")
        }
        AppError::Internal(error) => {
            tracing::error!(error = format!("{error:#}"), "call failed");
            Status::internal("an unexpected error occurred; it has been logged with this call's x-request-id")
        }
    }
}

/// A problem as a status: the code for its HTTP status, the detail as
/// message, each invalid field as a `google.rpc.BadRequest` violation and
/// the problem type and members as a `google.rpc.ErrorInfo`.
pub fn status_of_problem(problem: &Problem, replayed: bool) -> Status {
    let code = match problem.status {
        400 | 413 | 415 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        422 => Code::FailedPrecondition,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        _ => Code::Internal,
    };
    let mut details = ErrorDetails::new();
    if !problem.errors.is_empty() {
        details.set_bad_request(
            problem
                .errors
                .iter()
                .map(|e| FieldViolation::new(e.field.clone(), e.message.clone()))
                .collect::<Vec<_>>(),
        );
    }
    let reason = problem
        .kind
        .trim_start_matches("/problems/")
        .replace('-', "_")
        .to_ascii_uppercase();
    let members: HashMap<String, String> = problem
        .extensions
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        .collect();
    details.set_error_info(reason, "ledger", members);
    let mut status = Status::with_error_details(code, problem.detail.clone(), details);
    if replayed {
        status
            .metadata_mut()
            .insert("idempotent-replayed", MetadataValue::from_static("true"));
    }
    status
}

/// Puts a text field in a JSON body when it has a value; an empty proto3
/// string is an absent field (the parser then says it is required).
fn put(body: &mut Map<String, Value>, key: &str, value: String) {
    if !value.is_empty() {
        body.insert(key.to_owned(), Value::String(value));
    }
}

fn put_optional(body: &mut Map<String, Value>, key: &str, value: Option<String>) {
    if let Some(value) = value {
        body.insert(key.to_owned(), Value::String(value));
    }
}

fn bulk_body(request: &pb::TransferBulkRequest) -> Value {
    let mut body = Map::new();
    put(&mut body, "organization_name", request.organization_name.clone());
    put(&mut body, "organization_bic", request.organization_bic.clone());
    put(&mut body, "organization_iban", request.organization_iban.clone());
    let transfers = request
        .credit_transfers
        .iter()
        .map(|t| {
            let mut transfer = Map::new();
            put(&mut transfer, "amount", t.amount.clone());
            put(&mut transfer, "currency", t.currency.clone());
            put(&mut transfer, "counterparty_name", t.counterparty_name.clone());
            put(&mut transfer, "counterparty_bic", t.counterparty_bic.clone());
            put(&mut transfer, "counterparty_iban", t.counterparty_iban.clone());
            put_optional(&mut transfer, "description", t.description.clone());
            Value::Object(transfer)
        })
        .collect();
    body.insert("credit_transfers".to_owned(), Value::Array(transfers));
    Value::Object(body)
}

/// A bulk in the HTTP API's JSON (the seed's format) as a gRPC message:
/// the inverse of the conversion the server makes. For clients that hold
/// their payrolls as JSON files.
pub fn bulk_request_from_json(json: &Value) -> pb::TransferBulkRequest {
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    pb::TransferBulkRequest {
        organization_name: text(json, "organization_name"),
        organization_bic: text(json, "organization_bic"),
        organization_iban: text(json, "organization_iban"),
        credit_transfers: json["credit_transfers"]
            .as_array()
            .map(|transfers| {
                transfers
                    .iter()
                    .map(|t| pb::CreditTransfer {
                        amount: text(t, "amount"),
                        currency: text(t, "currency"),
                        counterparty_name: text(t, "counterparty_name"),
                        counterparty_bic: text(t, "counterparty_bic"),
                        counterparty_iban: text(t, "counterparty_iban"),
                        description: t["description"].as_str().map(str::to_owned),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        idempotency_key: None,
    }
}

fn account_message(view: AccountView, replayed: bool) -> pb::Account {
    pb::Account {
        account_id: view.account_id.to_string(),
        organization_name: view.organization_name,
        iban: view.iban,
        bic: view.bic,
        currency: view.currency,
        balance: view.balance,
        balance_cents: view.balance_cents,
        version: view.version,
        position: view.position,
        replayed,
    }
}

fn transaction_message(view: TransactionView) -> pb::Transaction {
    pb::Transaction {
        transaction_id: view.transaction_id.to_string(),
        kind: view.kind,
        amount: view.amount,
        amount_cents: view.amount_cents,
        currency: view.currency,
        counterparty_name: view.counterparty_name,
        counterparty_iban: view.counterparty_iban,
        counterparty_bic: view.counterparty_bic,
        description: view.description,
        bulk_id: view.bulk_id.map(|id| id.to_string()),
        balance_after: view.balance_after,
        balance_after_cents: view.balance_after_cents,
        recorded_at: view.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        position: view.position,
    }
}

fn event_message(view: FeedEventView) -> pb::Event {
    pb::Event {
        position: view.position,
        stream_id: view.stream_id.to_string(),
        version: view.version,
        r#type: view.event_type,
        schema_version: view.schema_version,
        data_json: view.data.to_string(),
        metadata_json: view.metadata.to_string(),
        recorded_at: view.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        after: view.after,
    }
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
                let ctx = command_context(
                    principal,
                    request_id,
                    message.idempotency_key,
                    "/v1/transfer/bulk",
                    &body,
                )?;
                let settings = self.ledger.settings();
                let request = parse_bulk_transfer(&body, settings.iban_check, settings.limits.transfers_per_bulk_max)
                    .map_err(|errors| status_of_problem(&Problem::validation(errors), false))?;
                let response = self.ledger.transfer_bulk(&ctx, request).await.map_err(status_of)?;
                command_result(response, |view: BulkTransferView, replayed| pb::TransferBulkResponse {
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
                let ctx = command_context(principal, request_id, message.idempotency_key, "/v1/accounts", &body)?;
                let request = parse_open_account(&body, self.ledger.settings().iban_check)
                    .map_err(|errors| status_of_problem(&Problem::validation(errors), false))?;
                let response = self.ledger.open_account(&ctx, request).await.map_err(status_of)?;
                command_result(response, account_message)
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
            let path = format!("/v1/accounts/{iban}/deposits");
            let ctx = command_context(principal, request_id, message.idempotency_key, &path, &body)?;
            let request =
                parse_deposit(&body).map_err(|errors| status_of_problem(&Problem::validation(errors), false))?;
            let response = self.ledger.deposit(&ctx, &iban, request).await.map_err(status_of)?;
            command_result(response, |view: DepositView, replayed| pb::DepositResponse {
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
            let view = self.ledger.account(&principal, &iban).await.map_err(status_of)?;
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
            let limit = message.limit.map(|l| l.to_string());
            let page = self
                .ledger
                .transactions(&principal, &iban, limit.as_deref(), message.cursor.as_deref())
                .await
                .map_err(status_of)?;
            Ok(pb::ListTransactionsResponse {
                items: page.items.into_iter().map(transaction_message).collect(),
                next_cursor: page.next_cursor,
            })
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
            let page_size = FEED_PAGE.min(self.ledger.settings().limits.page_size_max);
            let limit = page_size.to_string();
            // The first page is read before answering: a bad cursor or a
            // forbidden key is the call's status, not a broken stream.
            let first = self
                .ledger
                .events(&principal, Some(&message.after), Some(&limit))
                .await
                .map_err(status_of)?;
            let (sender, receiver) = mpsc::channel(FEED_BUFFER);
            let subscription = Subscription {
                ledger: Arc::clone(&self.ledger),
                authorization,
                sender,
                shutdown: self.shutdown.clone(),
                page_size,
            };
            tokio::spawn(subscription.run(first).in_current_span());
            Ok(ReceiverStream::new(receiver))
        })
        .await
    }
}

/// One open `SubscribeEvents` stream, fed by a task of its own.
struct Subscription {
    ledger: Arc<Ledger>,
    authorization: Option<Vec<u8>>,
    sender: mpsc::Sender<Result<pb::Event, Status>>,
    shutdown: watch::Receiver<bool>,
    page_size: u32,
}

impl Subscription {
    /// Sends pages until the subscriber goes, the server stops, the key is
    /// revoked or the database fails; the last three end the stream with a
    /// status (the subscriber resumes from its last event's `after`).
    async fn run(mut self, first: crate::app::views::FeedPage) {
        let mut page = first;
        loop {
            let full = page.events.len() >= self.page_size as usize;
            let next_after = page.next_after.clone();
            for event in page.events {
                if !self.send(Ok(event_message(event))).await {
                    return;
                }
            }
            if !full {
                tokio::select! {
                    _ = tokio::time::sleep(FEED_POLL) => {}
                    _ = self.sender.closed() => return,
                    _ = Self::stopping(&mut self.shutdown) => return self.end(Self::shutting_down()),
                }
            }
            let principal = match self.ledger.authenticate(self.authorization.as_deref()).await {
                Ok(principal) => principal,
                Err(error) => return self.end(status_of(error)),
            };
            let limit = self.page_size.to_string();
            page = match self.ledger.events(&principal, Some(&next_after), Some(&limit)).await {
                Ok(page) => page,
                Err(error) => return self.end(status_of(error)),
            };
        }
    }

    /// Sends unless the subscriber has gone or the server stops first.
    async fn send(&mut self, item: Result<pb::Event, Status>) -> bool {
        tokio::select! {
            sent = self.sender.send(item) => sent.is_ok(),
            _ = Self::stopping(&mut self.shutdown) => {
                self.end(Self::shutting_down());
                false
            }
        }
    }

    /// Ends the stream with `status`, if there is room for it: a stalled
    /// subscriber never holds the task (or the server's shutdown) up.
    fn end(&self, status: Status) {
        let _ = self.sender.try_send(Err(status));
    }

    async fn stopping(shutdown: &mut watch::Receiver<bool>) {
        let _ = shutdown.wait_for(|stop| *stop).await.is_ok();
    }

    fn shutting_down() -> Status {
        Status::unavailable("the server is shutting down; resume with the last event's `after`")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn problems_map_to_codes_with_field_details() {
        let problem = Problem::validation(vec![FieldError::new("credit_transfers[2].amount", "must be positive")]);
        let status = status_of_problem(&problem, false);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "credit_transfers[2].amount");
        assert_eq!(details.error_info().unwrap().reason, "VALIDATION");
        for (http, code) in [
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::NotFound),
            (409, Code::AlreadyExists),
            (422, Code::FailedPrecondition),
            (503, Code::Unavailable),
        ] {
            let status = status_of_problem(&Problem::new(http, "x", "X", "d"), false);
            assert_eq!(status.code(), code, "{http}");
        }
        let funds = Problem::new(422, "insufficient-funds", "Insufficient funds", "no").with("requested_cents", 5);
        let status = status_of_problem(&funds, true);
        let info = status.get_error_details().error_info().unwrap().clone();
        assert_eq!(info.reason, "INSUFFICIENT_FUNDS");
        assert_eq!(info.metadata["requested_cents"], "5");
        assert_eq!(status.metadata().get("idempotent-replayed").unwrap(), "true");
    }

    #[test]
    fn a_json_bulk_round_trips_through_the_message() {
        let json = json!({"organization_name": "ACME Corp", "organization_bic": "OIVUSCLQXXX",
                          "organization_iban": "FR10474608000002006107XXXXX",
                          "credit_transfers": [{"amount": "14.5", "currency": "EUR", "counterparty_name": "Bip Bip",
                                                "counterparty_bic": "CRLYFRPPTOU",
                                                "counterparty_iban": "EE383680981021245685",
                                                "description": "Wonderland/4410"}]});
        assert_eq!(bulk_body(&bulk_request_from_json(&json)), json);
    }

    #[test]
    fn empty_proto_strings_are_absent_fields() {
        let body = bulk_body(&pb::TransferBulkRequest {
            organization_name: String::new(),
            organization_iban: "DE89370400440532013000".into(),
            credit_transfers: vec![pb::CreditTransfer {
                amount: "1.00".into(),
                description: Some(String::new()),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(
            body,
            json!({"organization_iban": "DE89370400440532013000",
                   "credit_transfers": [{"amount": "1.00", "description": ""}]})
        );
    }
}
