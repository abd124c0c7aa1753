//! `/v1/accounts`: open, deposit (commands); the account and its history
//! (queries).

use std::collections::HashMap;

use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;

use super::{ApiError, AppState, command_input, command_response, json_response};
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
    let request = parse_open_account(&input.body, ledger.settings().iban_check)
        .map_err(Problem::validation)?;
    Ok(command_response(
        ledger.open_account(&input.context, request).await?,
    ))
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
    Ok(command_response(
        ledger.deposit(&input.context, &iban, request).await?,
    ))
}

pub async fn get(
    State(ledger): State<AppState>,
    Path(iban): Path<String>,
) -> Result<Response, ApiError> {
    let iban = ledger.lookup_iban(&iban, "iban")?;
    let view = ledger.account(&iban).await?;
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&view).expect("view serialises"),
    ))
}

pub async fn transactions(
    State(ledger): State<AppState>,
    Path(iban): Path<String>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let iban = ledger.lookup_iban(&iban, "iban")?;
    let Query(query) = query.map_err(|e| {
        Problem::validation(vec![crate::problem::FieldError::new(
            "query",
            e.body_text(),
        )])
    })?;
    let page = ledger
        .transactions(
            &iban,
            query.get("limit").map(String::as_str),
            query.get("cursor").map(String::as_str),
        )
        .await?;
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&page).expect("page serialises"),
    ))
}
