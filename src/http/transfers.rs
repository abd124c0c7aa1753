//! `POST /v1/transfer/bulk`: the seed's endpoint, body and status codes.
//! [`routes`] registers it (router and OpenAPI path alike).

use axum::Extension;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{
    ApiError, AppState, IDEMPOTENT_REPLAYED, command_context, command_input, command_response, is_xml, json_response,
    media_type, wants_json, xml_response,
};
use crate::app::auth::Principal;
use crate::app::requests::parse_bulk_transfer;
use crate::app::views::BulkTransferView;
use crate::http::openapi::BulkTransferBody;
use crate::iso20022::pain002::StatusReport;
use crate::iso20022::{pain001, pain002};
use crate::problem::{FieldError, Problem, ProblemType};

/// This feature's endpoints.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(bulk))
}

/// Book a bulk of SEPA credit transfers from one account: all or nothing.
/// Book a bulk of SEPA credit transfers from one account: all or nothing.
///
/// With `Content-Type: application/xml` the body is an ISO 20022 pain.001
/// document (`pain.001.001.03` or `.09`, valid against its XSD): each
/// `PmtInf` is one bulk, booked all or nothing on its own and in document
/// order; `GrpHdr/MsgId` is the idempotency key; the answer is a
/// `pain.002.001.10` status report (JSON with `Accept: application/json`),
/// 201 when every payment booked, 200 when some did, 422 when none did.
#[utoipa::path(
    post, path = "/v1/transfer/bulk", tag = "commands",
    request_body(content(
        (BulkTransferBody = "application/json"),
        (String = "application/xml", example = json!(crate::http::openapi::PAIN_001_EXAMPLE)),
    )),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters; a repeat with the same body replays the first response (with Idempotent-Replayed: true), another body is a 409. With a pain.001 the key is GrpHdr/MsgId: leave the header out or repeat it")
    ),
    responses(
        (status = 201, description = "Every transfer booked; the account debited by the total. For a pain.001: every payment booked (GrpSts ACCP)",
            content(
                (BulkTransferView = "application/json"),
                (String = "application/xml", example = json!(crate::http::openapi::PAIN_002_EXAMPLE)),
            )),
        (status = 200, description = "A pain.001 of which some payments booked (GrpSts PART); the report says which, with a reason code for each refused one",
            content(
                (StatusReport = "application/json"),
                (String = "application/xml"),
            )),
        (status = 400, description = "Invalid field, by JSON path (`credit_transfers[2].amount`) or, for a pain.001, by element path (`PmtInf[1]/CdtTrfTxInf[3]/Amt/InstdAmt`: the XSD, NbOfTxs and CtrlSum, the ledger's rules; DTDs and entities are refused); nothing booked. A transfer to the ordering account's own IBAN is one", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No account with that IBAN, or its organization name / BIC differ", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "Idempotency key (or pain.001 MsgId) used with another body", content_type = "application/problem+json", body = Problem),
        (status = 413, description = "Body over the limit", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "Insufficient funds (`requested_cents`, `available_cents`; recorded, nothing booked) or a currency differing from the account's. For a pain.001: no payment booked (GrpSts RJCT; reasons AM04, AC01, RC01, AM03)", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn bulk(
    State(ledger): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    match media_type(headers.get(header::CONTENT_TYPE)) {
        Some(mime) if is_xml(&mime) => return payment_file(&ledger, principal, &headers, body).await,
        Some(mime) if !(mime == "application/json" || mime.ends_with("+json")) => {
            return Err(Problem::new(
                ProblemType::UnsupportedMediaType,
                "send the bulk as application/json, or a pain.001 document as application/xml",
            )
            .into());
        }
        _ => {}
    }
    let input = command_input(principal, &headers, body)?;
    let settings = ledger.settings();
    let request = parse_bulk_transfer(&input.body, settings.iban_check, settings.limits.transfers_per_bulk_max)
        .map_err(Problem::validation)?;
    Ok(command_response(ledger.transfer_bulk(&input.context, request).await?))
}

/// A pain.001 document (SPEC §10): booked bulk by bulk, answered with a
/// pain.002 status report (or the same report in JSON).
async fn payment_file(
    ledger: &AppState,
    principal: Principal,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(super::errors::body_rejection)?;
    let mut context = command_context(principal, headers)?;
    let settings = ledger.settings();
    let limits = pain001::Limits {
        transactions_max: settings.limits.transfers_per_bulk_max,
    };
    let file = pain001::parse(&body, settings.iban_check, limits).map_err(Problem::validation)?;
    // The document's MsgId is its idempotency key: a header may repeat it,
    // never contradict it.
    if let Some(key) = context.idempotency_key.take()
        && key.as_str() != file.msg_id
    {
        return Err(Problem::validation(vec![FieldError::new(
            "Idempotency-Key",
            format!(
                "must be left out or equal GrpHdr/MsgId ({:?}): a payment file's MsgId is its idempotency key",
                file.msg_id
            ),
        )])
        .into());
    }
    let outcome = ledger.transfer_file(&context, file).await?;
    let status = match pain002::group_status(&outcome) {
        pain002::Status::ACCP => StatusCode::CREATED,
        pain002::Status::PART => StatusCode::OK,
        pain002::Status::RJCT => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let mut response = if wants_json(headers) {
        // A plain struct of strings, numbers and ids.
        json_response(
            status,
            serde_json::to_string(&pain002::json(&outcome)).expect("report serialises"),
        )
    } else {
        xml_response(status, pain002::xml(&outcome))
    };
    if outcome.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}
