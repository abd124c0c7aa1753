//! Conversions between the gRPC messages and the application: messages to
//! the JSON documents the shared parsers read, views to messages, and
//! problems to statuses (the code from the problem's type, the fields as
//! `google.rpc.BadRequest`, the type and its members as
//! `google.rpc.ErrorInfo`).

use std::collections::HashMap;

use serde_json::{Map, Value};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use super::pb;
use crate::app::views::{AccountView, FeedEventView, TransactionView, TrialBalanceView};
use crate::app::{AppError, Outcome};
use crate::problem::{Problem, ProblemType};

/// A command's outcome as a message (its view, marked `replayed` when an
/// idempotency key answered it), or its recorded refusal as a status.
pub(super) fn command_result<V, T>(outcome: Outcome<V>, convert: impl FnOnce(V, bool) -> T) -> Result<T, Status> {
    match outcome.result {
        Ok(view) => Ok(convert(view, outcome.replayed)),
        Err(problem) => Err(status_of_problem(&problem, outcome.replayed)),
    }
}

/// A failure as a status: logged like the HTTP API logs it, then the
/// problem the client is told.
pub fn status_of(error: AppError) -> Status {
    match &error {
        AppError::Client(_) => {}
        AppError::Unavailable(error) => {
            tracing::warn!(error = format!("{error:#}"), "call refused: database unavailable")
        }
        AppError::OutcomeUnknown(error) => tracing::error!(
            error = format!("{error:#}"),
            "connection lost while a command was committing: its outcome is unknown"
        ),
        AppError::Internal(error) => tracing::error!(error = format!("{error:#}"), "call failed"),
    }
    status_of_problem(&error.problem(), false)
}

/// The gRPC code of each problem type (the HTTP status's counterpart).
pub fn code_of(kind: ProblemType) -> Code {
    match kind {
        ProblemType::Validation | ProblemType::BodyTooLarge | ProblemType::UnsupportedMediaType => {
            Code::InvalidArgument
        }
        ProblemType::Unauthorized => Code::Unauthenticated,
        ProblemType::Forbidden => Code::PermissionDenied,
        ProblemType::NotFound => Code::NotFound,
        ProblemType::MethodNotAllowed => Code::Unimplemented,
        ProblemType::AccountExists | ProblemType::IdempotencyKeyReused => Code::AlreadyExists,
        ProblemType::InsufficientFunds | ProblemType::CurrencyMismatch | ProblemType::BalanceLimit => {
            Code::FailedPrecondition
        }
        ProblemType::Internal => Code::Internal,
        ProblemType::Unavailable | ProblemType::OutcomeUnknown | ProblemType::Timeout | ProblemType::NotReady => {
            Code::Unavailable
        }
    }
}

/// A problem as a status: the code for its HTTP status, the detail as
/// message, each invalid field as a `google.rpc.BadRequest` violation and
/// the problem type and members as a `google.rpc.ErrorInfo`.
pub fn status_of_problem(problem: &Problem, replayed: bool) -> Status {
    let code = code_of(problem.kind);
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
    // INSUFFICIENT_FUNDS for insufficient-funds.
    let reason = problem.kind.slug().replace('-', "_").to_ascii_uppercase();
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
pub(super) fn put(body: &mut Map<String, Value>, key: &str, value: String) {
    if !value.is_empty() {
        body.insert(key.to_owned(), Value::String(value));
    }
}

pub(super) fn put_optional(body: &mut Map<String, Value>, key: &str, value: Option<String>) {
    if let Some(value) = value {
        body.insert(key.to_owned(), Value::String(value));
    }
}

pub(super) fn bulk_body(request: &pb::TransferBulkRequest) -> Value {
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
            put_optional(&mut transfer, "end_to_end_id", t.end_to_end_id.clone());
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
                        end_to_end_id: t["end_to_end_id"].as_str().map(str::to_owned),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        idempotency_key: None,
    }
}

pub(super) fn account_message(view: AccountView, replayed: bool) -> pb::Account {
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

pub(super) fn trial_balance_message(view: TrialBalanceView) -> pb::TrialBalance {
    pb::TrialBalance {
        position: view.position,
        currencies: view
            .currencies
            .into_iter()
            .map(|c| pb::CurrencyTrialBalance {
                currency: c.currency,
                customers_cents: c.customers_cents,
                settlement_cents: c.settlement_cents,
                clearing_cents: c.clearing_cents,
                in_flight_cents: c.in_flight_cents,
                sum_cents: c.sum_cents,
            })
            .collect(),
    }
}

pub(super) fn transaction_message(view: TransactionView) -> pb::Transaction {
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
        reason: view.reason,
        end_to_end_id: view.end_to_end_id,
    }
}

pub(super) fn event_message(view: FeedEventView) -> pb::Event {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::problem::FieldError;

    #[test]
    fn problems_map_to_codes_with_field_details() {
        let problem = Problem::validation(vec![FieldError::new("credit_transfers[2].amount", "must be positive")]);
        let status = status_of_problem(&problem, false);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "credit_transfers[2].amount");
        assert_eq!(details.error_info().unwrap().reason, "VALIDATION");
        for (kind, code) in [
            (ProblemType::Unauthorized, Code::Unauthenticated),
            (ProblemType::Forbidden, Code::PermissionDenied),
            (ProblemType::NotFound, Code::NotFound),
            (ProblemType::AccountExists, Code::AlreadyExists),
            (ProblemType::InsufficientFunds, Code::FailedPrecondition),
            (ProblemType::Unavailable, Code::Unavailable),
            (ProblemType::OutcomeUnknown, Code::Unavailable),
        ] {
            let status = status_of_problem(&Problem::new(kind, "d"), false);
            assert_eq!(status.code(), code, "{kind:?}");
        }
        let unknown = status_of_problem(&Problem::new(ProblemType::OutcomeUnknown, "d"), false);
        assert_eq!(
            unknown.get_error_details().error_info().unwrap().reason,
            "OUTCOME_UNKNOWN"
        );
        let funds = Problem::new(ProblemType::InsufficientFunds, "no").with("requested_cents", 5);
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
