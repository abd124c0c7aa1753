//! The HTTP API (axum). Thin: parse, call [`crate::app`], render the
//! typed result. Each feature file (`accounts.rs`, `transfers.rs`,
//! `events.rs`, `ledger.rs`, `operations.rs`) registers its own endpoints once; the
//! router and the OpenAPI document are both built from that registration.
//! Commands (POST) and queries (GET) are separate routes over separate
//! models; every error is an RFC 9457 problem, including axum's own
//! rejections, and every response carries an `x-request-id`.

mod accounts;
mod errors;
mod events;
mod ledger;
pub mod openapi;
mod operations;
mod transfers;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::app::auth::Principal;
use crate::app::idempotency::IdempotencyKey;
use crate::app::{CommandContext, Ledger, Outcome};
use crate::problem::{FieldError, Problem, ProblemType};
pub use errors::ApiError;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The longest `x-request-id` a client may choose (HTTP and gRPC): a longer
/// or empty one is replaced by a fresh id, never echoed nor logged whole.
pub const REQUEST_ID_MAX: usize = 200;
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

pub type AppState = Arc<Ledger>;

/// The `/v1` endpoints, each registered once by its feature file.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(accounts::routes())
        .merge(events::routes())
        .merge(ledger::routes())
        .merge(transfers::routes())
}

/// Every endpoint with its OpenAPI description: the `/v1` API and the
/// operations endpoints, from the same registration the router serves.
pub(crate) fn registered() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(api_routes())
        .merge(operations::routes())
}

/// Builds the application; serving it is separate, so tests can call it
/// without a socket.
pub fn router(ledger: Arc<Ledger>) -> Router {
    // Install the metrics recorder before the first request records anything.
    crate::observability::prometheus();
    let body_limit = ledger.settings().limits.body_bytes_max;
    let request_timeout = ledger.settings().limits.request_timeout;
    let (api, _) = api_routes()
        // Runs for matched routes only: an unknown path is a 404 to anyone.
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&ledger), authenticate))
        // Outermost: a request past the bound is shed before anything else.
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&ledger), shed))
        .split_for_parts();
    let (operations, _) = operations::routes().split_for_parts();
    Router::new()
        .merge(api)
        .merge(operations)
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", openapi::document()))
        .fallback(errors::not_found)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(move |request, next| {
            time_limit(request_timeout, request, next)
        }))
        .layer(axum::middleware::from_fn(track_requests))
        // One span per request, carrying its id and route; the response
        // line adds status and latency. Errors inside are logged in it.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    let request_id = request
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let route = request
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map_or("unmatched", |path| path.as_str());
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        route,
                        path = %request.uri().path(),
                        request_id,
                        api_key_id = tracing::field::Empty,
                    )
                })
                .on_request(())
                .on_response(
                    tower_http::trace::DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Micros),
                ),
        )
        .with_state(ledger)
        .layer(CatchPanicLayer::custom(errors::panic_response))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_unusable_request_id))
}

/// Removes a client's `x-request-id` that is empty, longer than
/// [`REQUEST_ID_MAX`] or not printable ASCII, so the next layer gives the
/// request a fresh one: ids go into every log line and event's metadata.
async fn drop_unusable_request_id(mut request: axum::extract::Request) -> axum::extract::Request {
    let unusable = request.headers().get(REQUEST_ID).is_some_and(|value| {
        let bytes = value.as_bytes();
        bytes.is_empty() || bytes.len() > REQUEST_ID_MAX || !bytes.iter().all(|b| b.is_ascii_graphic())
    });
    if unusable {
        request.headers_mut().remove(REQUEST_ID);
    }
    request
}

/// Sheds an API request past `Limits::in_flight_max` requests in flight
/// (HTTP and gRPC together): a prompt 503 with `Retry-After`, nothing done.
async fn shed(
    State(ledger): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match ledger.admit() {
        Ok(admission) => {
            let response = next.run(request).await;
            drop(admission);
            response
        }
        Err(problem) => errors::problem_response(&problem),
    }
}

/// Authenticates the caller of an API route: a 401 problem without a valid
/// key, else the [`Principal`] for the handler (and its key id in the log).
async fn authenticate(
    State(ledger): State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    match ledger.authenticate(authorization).await {
        Ok(principal) => {
            if let Some(id) = principal.key_id() {
                tracing::Span::current().record("api_key_id", tracing::field::display(id));
            }
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// Answers 503 when a request outlives its time limit. A command already
/// queued still completes (it runs in a task of its own); with its
/// Idempotency-Key the client's retry learns its outcome.
async fn time_limit(
    limit: std::time::Duration,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => errors::problem_response(&Problem::new(
            ProblemType::Timeout,
            format!(
                "the request took longer than {} ms; a command may still have been applied — retry it with the same Idempotency-Key to learn its outcome",
                limit.as_millis()
            ),
        )),
    }
}

/// Counts every request and its latency by method, route template (not the
/// raw path: IBANs would explode the label set) and status.
async fn track_requests(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    crate::observability::record_http(&method, &route, response.status().as_u16(), started.elapsed());
    response
}

/// A query string as a map; a malformed one is a 400 naming `query`.
pub(crate) type QueryMap =
    Result<axum::extract::Query<std::collections::HashMap<String, String>>, axum::extract::rejection::QueryRejection>;

pub(crate) fn query_map(query: QueryMap) -> Result<std::collections::HashMap<String, String>, ApiError> {
    query
        .map(|axum::extract::Query(map)| map)
        .map_err(|e| Problem::validation(vec![FieldError::new("query", e.body_text())]).into())
}

pub(crate) fn ok_json<T: serde::Serialize>(value: &T) -> Response {
    // Views are plain structs of strings, numbers and JSON values.
    json_response(StatusCode::OK, serde_json::to_string(value).expect("view serialises"))
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

/// Everything a command needs from the request besides its parsed body:
/// the request id, the idempotency key, and the body as JSON.
pub(crate) struct CommandInput {
    pub context: CommandContext,
    pub body: serde_json::Value,
}

pub(crate) fn command_input(
    principal: Principal,
    headers: &axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<CommandInput, ApiError> {
    let body = body.map_err(errors::body_rejection)?;
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let is_json = content_type
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(Problem::new(ProblemType::UnsupportedMediaType, "send the body as application/json").into());
        }
    }
    let context = command_context(principal, headers)?;
    let body = serde_json::from_slice(&body)
        .map_err(|error| Problem::validation(vec![FieldError::new("body", format!("is not valid JSON: {error}"))]))?;
    Ok(CommandInput { context, body })
}

/// A command's context from its request's headers: the request id and the
/// idempotency key.
pub(crate) fn command_context(
    principal: Principal,
    headers: &axum::http::HeaderMap,
) -> Result<CommandContext, ApiError> {
    let request_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let idempotency_key = headers
        .get(IDEMPOTENCY_KEY)
        .map(|raw| IdempotencyKey::parse(raw.as_bytes(), principal.idempotency_scope()))
        .transpose()?;
    Ok(CommandContext {
        principal,
        request_id,
        idempotency_key,
    })
}

/// The essence (type/subtype, lower case) of a media type header.
pub(crate) fn media_type(value: Option<&HeaderValue>) -> Option<String> {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| mime.trim().to_ascii_lowercase())
}

/// Whether a media type is XML (`application/xml`, `text/xml`, `…+xml`).
pub(crate) fn is_xml(mime: &str) -> bool {
    mime == "application/xml" || mime == "text/xml" || mime.ends_with("+xml")
}

/// Whether the client asked for JSON rather than XML (`Accept`), for the
/// routes that speak both: JSON only when it names JSON and not XML.
pub(crate) fn wants_json(headers: &axum::http::HeaderMap) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase();
    accept.contains("json") && !accept.contains("xml")
}

pub(crate) fn xml_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// A command's outcome: 201 with its view, or its recorded refusal, marked
/// `Idempotent-Replayed: true` when a key answered it from the record.
pub(crate) fn command_response<V: serde::Serialize>(outcome: Outcome<V>) -> Response {
    let mut http = match &outcome.result {
        // Views are plain structs of strings, numbers and JSON values.
        Ok(view) => json_response(
            StatusCode::CREATED,
            serde_json::to_string(view).expect("view serialises"),
        ),
        Err(problem) => errors::problem_response(problem),
    };
    if outcome.replayed {
        http.headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    http
}
