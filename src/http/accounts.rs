//! `/v1/accounts`: open, deposit (commands); the account and its history
//! (queries).

use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use bytes::Bytes;

use super::{ApiError, AppState, QueryMap, command_input, command_response, ok_json, query_map};
use crate::app::requests::{parse_deposit, parse_open_account};
use crate::problem::Problem;

pub async fn open(
    State(ledger): State<AppState>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let input = command_input(&headers, &method, uri.path(), body)?;
    let request = parse_open_account(&input.body, ledger.settings().iban_check).map_err(Problem::validation)?;
    Ok(command_response(ledger.open_account(&input.context, request).await?))
}

pub async fn deposit(
    State(ledger): State<AppState>,
    Path(iban): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let iban = ledger.lookup_iban(&iban, "iban")?;
    let input = command_input(&headers, &method, uri.path(), body)?;
    let request = parse_deposit(&input.body).map_err(Problem::validation)?;
    Ok(command_response(ledger.deposit(&input.context, &iban, request).await?))
}

pub async fn get(State(ledger): State<AppState>, Path(iban): Path<String>) -> Result<Response, ApiError> {
    let iban = ledger.lookup_iban(&iban, "iban")?;
    Ok(ok_json(&ledger.account(&iban).await?))
}

pub async fn transactions(
    State(ledger): State<AppState>,
    Path(iban): Path<String>,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let iban = ledger.lookup_iban(&iban, "iban")?;
    let query = query_map(query)?;
    let page = ledger
        .transactions(
            &iban,
            query.get("limit").map(String::as_str),
            query.get("cursor").map(String::as_str),
        )
        .await?;
    Ok(ok_json(&page))
}

pub async fn balance_at(
    State(ledger): State<AppState>,
    Path(iban): Path<String>,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let iban = ledger.lookup_iban(&iban, "iban")?;
    let query = query_map(query)?;
    let view = ledger
        .balance_at(
            &iban,
            query.get("as_of").map(String::as_str),
            query.get("position").map(String::as_str),
        )
        .await?;
    Ok(ok_json(&view))
}

pub async fn audit(State(ledger): State<AppState>, Path(iban): Path<String>) -> Result<Response, ApiError> {
    let iban = ledger.lookup_iban(&iban, "iban")?;
    Ok(ok_json(&ledger.audit(&iban).await?))
}
