//! `/v1/accounts`: open, deposit (commands); the account, its history, a
//! past balance and its audit (queries). [`routes`] is the one registration
//! of these endpoints: the router and the OpenAPI paths both come from it.

use axum::Extension;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{
    ApiError, AppState, QueryMap, command_input, command_response, ok_json, query_map, wants_json, xml_response,
};
use crate::app::auth::{Action, Principal};
use crate::app::params::{HistoryCursor, MinPosition, PageSize, PointInTime};
use crate::app::requests::{parse_deposit, parse_open_account};
use crate::app::statements::{Period, StatementView};
use crate::app::views::{AccountView, DepositView, PointInTimeView, TransactionPage};
use crate::audit::StreamAudit;
use crate::http::openapi::{DepositBody, OpenAccountBody};
use crate::problem::Problem;

/// This feature's endpoints.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(open))
        .routes(routes!(get))
        .routes(routes!(deposit))
        .routes(routes!(transactions))
        .routes(routes!(balance_at))
        .routes(routes!(statement))
        .routes(routes!(audit))
}

/// Open an account.
#[utoipa::path(
    post, path = "/v1/accounts", tag = "commands",
    request_body = OpenAccountBody,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters; a repeat with the same body replays the first response (with Idempotent-Replayed: true), another body is a 409")
    ),
    responses(
        (status = 201, description = "Opened", body = AccountView),
        (status = 400, description = "Invalid field (named in `errors`)", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "An account with this IBAN exists, or the idempotency key was used with another body", content_type = "application/problem+json", body = Problem),
        (status = 413, description = "Body over the limit", content_type = "application/problem+json", body = Problem),
        (status = 415, description = "Body is not JSON", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn open(
    State(ledger): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // Refused before the body is even read.
    principal.authorize(Action::OpenAccount)?;
    let input = command_input(principal, &headers, body)?;
    let request = parse_open_account(&input.body, ledger.settings().iban_check).map_err(Problem::validation)?;
    Ok(command_response(ledger.open_account(&input.context, request).await?))
}

/// Credit an account.
#[utoipa::path(
    post, path = "/v1/accounts/{iban}/deposits", tag = "commands",
    request_body = DepositBody,
    params(
        ("iban" = String, Path, description = "The account's IBAN (spaces and lower case tolerated)", example = "DE89370400440532013000"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters; a repeat with the same body replays the first response (with Idempotent-Replayed: true), another body is a 409")
    ),
    responses(
        (status = 201, description = "Deposited; the new balance", body = DepositView),
        (status = 400, description = "Invalid field (named in `errors`)", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such account", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "Idempotency key used with another body", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "Currency differs from the account's", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn deposit(
    State(ledger): State<AppState>,
    Extension(principal): Extension<Principal>,
    iban: IbanPath,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Deposit)?;
    let iban = ledger.lookup_iban(&path_iban(iban)?, "iban")?;
    let input = command_input(principal, &headers, body)?;
    let request = parse_deposit(&input.body).map_err(Problem::validation)?;
    Ok(command_response(ledger.deposit(&input.context, &iban, request).await?))
}

/// The account and its balance (from the balances projection).
#[utoipa::path(
    get, path = "/v1/accounts/{iban}", tag = "queries",
    params(
        ("iban" = String, Path, description = "The account's IBAN (spaces and lower case tolerated)", example = "DE89370400440532013000"),
        ("min_position" = Option<i64>, Query, description = "Answer only once this log position (a command's `position`) and its credits are reflected; 503 after LEDGER_MIN_POSITION_WAIT_MS")
    ),
    responses(
        (status = 200, description = "The account", body = AccountView),
        (status = 400, description = "Malformed IBAN", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such account", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn get(
    State(ledger): State<AppState>,
    Extension(principal): Extension<Principal>,
    iban: IbanPath,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let iban = ledger.lookup_iban(&path_iban(iban)?, "iban")?;
    let query = query_map(query)?;
    let min = MinPosition::parse(query.get("min_position").map(String::as_str)).map_err(invalid)?;
    let reader = ledger.reflect(min).await?;
    Ok(ok_json(&ledger.account(&reader, &principal, &iban).await?))
}

/// The account's history, newest first.
#[utoipa::path(
    get, path = "/v1/accounts/{iban}/transactions", tag = "queries",
    params(
        ("iban" = String, Path, description = "The account's IBAN (spaces and lower case tolerated)", example = "DE89370400440532013000"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 1,000 (default 50)"),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page"),
        ("min_position" = Option<i64>, Query, description = "Answer only once this log position and its credits are reflected")
    ),
    responses(
        (status = 200, description = "A page of history", body = TransactionPage),
        (status = 400, description = "Bad limit or cursor", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such account", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn transactions(
    State(ledger): State<AppState>,
    Extension(principal): Extension<Principal>,
    iban: IbanPath,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let iban = ledger.lookup_iban(&path_iban(iban)?, "iban")?;
    let query = query_map(query)?;
    // Both parameters are checked before either is reported.
    let limit = PageSize::parse(query.get("limit").map(String::as_str), &ledger.settings().limits);
    let cursor = query.get("cursor").map(|text| HistoryCursor::parse(text)).transpose();
    let min = MinPosition::parse(query.get("min_position").map(String::as_str));
    let (limit, cursor, min) = match (limit, cursor, min) {
        (Ok(limit), Ok(cursor), Ok(min)) => (limit, cursor, min),
        (limit, cursor, min) => {
            let errors = [limit.err(), cursor.err(), min.err()].into_iter().flatten().collect();
            return Err(Problem::validation(errors).into());
        }
    };
    let reader = ledger.reflect(min).await?;
    Ok(ok_json(
        &ledger.transactions(&reader, &principal, &iban, limit, cursor).await?,
    ))
}

/// The balance at a past time or position, replayed from the log.
#[utoipa::path(
    get, path = "/v1/accounts/{iban}/balance", tag = "queries",
    params(
        ("iban" = String, Path, description = "The account's IBAN (spaces and lower case tolerated)", example = "DE89370400440532013000"),
        ("as_of" = Option<String>, Query, description = "RFC 3339 time", example = "2026-11-24T12:00:00Z"),
        ("position" = Option<i64>, Query, description = "Global log position (give as_of or position)"),
        ("min_position" = Option<i64>, Query, description = "Answer only once this log position and its credits are reflected")
    ),
    responses(
        (status = 200, description = "The replayed balance", body = PointInTimeView),
        (status = 400, description = "Neither or both of as_of and position, or malformed", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such account at that point", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn balance_at(
    State(ledger): State<AppState>,
    Extension(principal): Extension<Principal>,
    iban: IbanPath,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let iban = ledger.lookup_iban(&path_iban(iban)?, "iban")?;
    let query = query_map(query)?;
    let at = PointInTime::parse(
        query.get("as_of").map(String::as_str),
        query.get("position").map(String::as_str),
    );
    let min = MinPosition::parse(query.get("min_position").map(String::as_str));
    let (at, min) = match (at, min) {
        (Ok(at), Ok(min)) => (at, min),
        (at, min) => {
            let mut errors = at.err().unwrap_or_default();
            errors.extend(min.err());
            return Err(Problem::validation(errors).into());
        }
    };
    let reader = ledger.reflect(min).await?;
    Ok(ok_json(&ledger.balance_at(&reader, &principal, &iban, at).await?))
}

/// The account's statement for a period of whole days (UTC): camt.053 in
/// XML, or the same statement in JSON.
#[utoipa::path(
    get, path = "/v1/accounts/{iban}/statement", tag = "queries",
    params(
        ("iban" = String, Path, description = "The account's IBAN (spaces and lower case tolerated)", example = "DE89370400440532013000"),
        ("from" = String, Query, description = "First day, YYYY-MM-DD (UTC)", example = "2026-11-01"),
        ("to" = String, Query, description = "Last day, YYYY-MM-DD (UTC), included; at most 366 days after from", example = "2026-11-30"),
        ("Accept" = Option<String>, Header, description = "`application/xml` (default): a camt.053.001.08 document; `application/json`: the same statement as JSON")
    ),
    responses(
        (status = 200, description = "The statement: opening balance + entries = closing balance, all replayed from the log", body = StatementView,
            content(
                (StatementView = "application/json"),
                (String = "application/xml", example = json!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:camt.053.001.08\">\n  <BkToCstmrStmt>…</BkToCstmrStmt>\n</Document>"))
            )),
        (status = 400, description = "from or to missing, malformed, reversed or too far apart", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such account (or it was opened after the period)", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn statement(
    State(ledger): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    iban: IbanPath,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let iban = ledger.lookup_iban(&path_iban(iban)?, "iban")?;
    let query = query_map(query)?;
    let period = Period::parse(
        query.get("from").map(String::as_str),
        query.get("to").map(String::as_str),
    )?;
    let reader = ledger.reflect(None).await?;
    let statement = ledger.statement(&reader, &principal, &iban, period).await?;
    Ok(if wants_json(&headers) {
        ok_json(&statement)
    } else {
        xml_response(axum::http::StatusCode::OK, crate::iso20022::camt053::xml(&statement))
    })
}

/// Replay the account's stream, verify its hash chain, compare with the projections.
#[utoipa::path(
    get, path = "/v1/accounts/{iban}/audit", tag = "queries",
    params(
        ("iban" = String, Path, description = "The account's IBAN (spaces and lower case tolerated)", example = "DE89370400440532013000")
    ),
    responses(
        (status = 200, description = "The audit; `consistent` and `chain_valid` say whether all agree", body = StreamAudit),
        (status = 404, description = "No such account", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn audit(
    State(ledger): State<AppState>,
    Extension(principal): Extension<Principal>,
    iban: IbanPath,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Audit)?;
    let iban = ledger.lookup_iban(&path_iban(iban)?, "iban")?;
    Ok(ok_json(&ledger.audit(&principal, &iban).await?))
}

/// One invalid query parameter as a 400.
fn invalid(error: crate::problem::FieldError) -> ApiError {
    Problem::validation(vec![error]).into()
}

/// The `{iban}` path segment; a segment that is not UTF-8 is a 400 problem
/// like any other bad input, not axum's plain-text rejection.
type IbanPath = Result<Path<String>, axum::extract::rejection::PathRejection>;

fn path_iban(path: IbanPath) -> Result<String, ApiError> {
    path.map(|Path(iban)| iban)
        .map_err(|e| Problem::validation(vec![crate::problem::FieldError::new("iban", e.body_text())]).into())
}
