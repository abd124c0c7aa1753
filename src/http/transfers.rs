//! `POST /v1/transfer/bulk`: the seed's endpoint, body and status codes.

use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use bytes::Bytes;

use super::{ApiError, AppState, command_input, command_response};
use crate::app::requests::parse_bulk_transfer;
use crate::problem::Problem;

pub async fn bulk(
    State(ledger): State<AppState>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let input = command_input(&headers, &method, uri.path(), body)?;
    let settings = ledger.settings();
    let request = parse_bulk_transfer(&input.body, settings.iban_check, settings.limits.transfers_per_bulk_max)
        .map_err(Problem::validation)?;
    Ok(command_response(ledger.transfer_bulk(&input.context, request).await?))
}
