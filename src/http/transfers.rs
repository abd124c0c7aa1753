//! `POST /v1/transfer/bulk`: the seed's endpoint, body and status codes.
//! [`routes`] registers it (router and OpenAPI path alike).

use axum::Extension;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, command_input, command_response};
use crate::app::auth::Principal;
use crate::app::requests::parse_bulk_transfer;
use crate::app::views::BulkTransferView;
use crate::http::openapi::BulkTransferBody;
use crate::problem::Problem;

/// This feature's endpoints.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(bulk))
}

/// Book a bulk of SEPA credit transfers from one account: all or nothing.
#[utoipa::path(
    post, path = "/v1/transfer/bulk", tag = "commands",
    request_body = BulkTransferBody,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters; a repeat with the same body replays the first response (with Idempotent-Replayed: true), another body is a 409")
    ),
    responses(
        (status = 201, description = "Every transfer booked; the account debited by the total", body = BulkTransferView),
        (status = 400, description = "Invalid field, by JSON path (`credit_transfers[2].amount`); a transfer to the ordering account's own IBAN is one", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No account with that IBAN, or its organization name / BIC differ", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "Idempotency key used with another body", content_type = "application/problem+json", body = Problem),
        (status = 413, description = "Body over the limit", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "Insufficient funds (`requested_cents`, `available_cents`; recorded, nothing booked) or a currency differing from the account's", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn bulk(
    State(ledger): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let input = command_input(principal, &headers, body)?;
    let settings = ledger.settings();
    let request = parse_bulk_transfer(&input.body, settings.iban_check, settings.limits.transfers_per_bulk_max)
        .map_err(Problem::validation)?;
    Ok(command_response(ledger.transfer_bulk(&input.context, request).await?))
}
