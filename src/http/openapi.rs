//! The OpenAPI 3.1 description (`GET /openapi.json`) and the interactive
//! docs (`GET /docs`, Swagger UI with its assets compiled in: it works
//! offline).
//!
//! Handlers carry their own `#[utoipa::path]`; [`ROUTES`] lists what the
//! router serves, and a test checks the two agree.

use serde::Serialize;
use utoipa::{Modify, OpenApi, ToSchema};

use crate::app::views::{
    AccountView, BulkTransferView, DepositView, FeedEventView, FeedPage, PointInTimeView, TransactionPage,
    TransactionView,
};
use crate::audit::{Difference, StreamAudit};
use crate::problem::{FieldError, Problem};

/// Every route the router serves, as (method, OpenAPI path).
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/accounts"),
    ("get", "/v1/accounts/{iban}"),
    ("post", "/v1/accounts/{iban}/deposits"),
    ("get", "/v1/accounts/{iban}/transactions"),
    ("get", "/v1/accounts/{iban}/balance"),
    ("get", "/v1/accounts/{iban}/audit"),
    ("get", "/v1/events"),
    ("post", "/v1/transfer/bulk"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

/// Body of `POST /v1/accounts`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"organization_name": "Globex GmbH", "iban": "DE89 3704 0044 0532 0130 00", "bic": "COBADEFFXXX", "currency": "EUR"}))]
pub struct OpenAccountBody {
    /// Up to 140 characters.
    pub organization_name: String,
    /// ISO 13616; spaces allowed; checked for the country's length and the
    /// mod-97 check digits (structure only with `LEDGER_IBAN_CHECK=structure`).
    pub iban: String,
    /// ISO 9362: 8 or 11 characters.
    pub bic: String,
    /// ISO 4217 code; `EUR` when absent.
    pub currency: Option<String>,
}

/// Body of `POST /v1/accounts/{iban}/deposits`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"amount": "100000.00", "currency": "EUR", "reference": "Initial funding"}))]
pub struct DepositBody {
    /// A positive decimal string with at most the currency's digits
    /// (`"100000.00"`); a JSON number is read exactly from its digits.
    #[schema(value_type = String, example = "100000.00")]
    pub amount: String,
    /// The account's currency when absent; another currency is a 422.
    pub currency: Option<String>,
    /// Up to 140 characters.
    pub reference: Option<String>,
}

/// One SEPA credit transfer of a bulk.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditTransferBody {
    /// A positive decimal string (`"14.5"`); a JSON number is read exactly.
    #[schema(value_type = String, example = "14.5")]
    pub amount: String,
    /// Must be the account's currency.
    pub currency: String,
    pub counterparty_name: String,
    pub counterparty_bic: String,
    pub counterparty_iban: String,
    /// Up to 140 characters.
    pub description: Option<String>,
}

/// Body of `POST /v1/transfer/bulk` (the original service's format).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "organization_name": "Globex GmbH",
    "organization_bic": "COBADEFFXXX",
    "organization_iban": "DE89370400440532013000",
    "credit_transfers": [
        {"amount": "2500.00", "currency": "EUR", "counterparty_name": "Hank Scorpio",
         "counterparty_bic": "NWBKGB2L", "counterparty_iban": "GB82WEST12345698765432", "description": "Salary 2026-11"},
        {"amount": "1830.45", "currency": "EUR", "counterparty_name": "Homer Simpson",
         "counterparty_bic": "BNPAFRPPXXX", "counterparty_iban": "FR1420041010050500013M02606", "description": "Salary 2026-11"}
    ]
}))]
pub struct BulkTransferBody {
    pub organization_name: String,
    pub organization_bic: String,
    pub organization_iban: String,
    /// 1 to 10,000 transfers (configurable), booked all or none.
    pub credit_transfers: Vec<CreditTransferBody>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ledger",
        description = "An event-sourced transfer ledger for a business bank. Commands (POST) append events; \
                       queries (GET) read projections or replay the log. Every error is an RFC 9457 problem \
                       (application/problem+json). Every command accepts an Idempotency-Key header.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        super::accounts::open,
        super::accounts::get,
        super::accounts::deposit,
        super::accounts::transactions,
        super::accounts::balance_at,
        super::accounts::audit,
        super::events::feed,
        super::transfers::bulk,
        super::healthz,
        super::readyz,
        super::metrics,
    ),
    components(schemas(
        OpenAccountBody, DepositBody, BulkTransferBody, CreditTransferBody, AccountView, DepositView,
        BulkTransferView, TransactionView, TransactionPage, PointInTimeView, FeedPage, FeedEventView, StreamAudit,
        Difference, Problem, FieldError
    )),
    modifiers(&Version),
    tags(
        (name = "commands", description = "Writes: each appends events to one account's stream"),
        (name = "queries", description = "Reads: projections, or replays of the log"),
        (name = "operations", description = "Health, readiness, metrics")
    )
)]
pub struct ApiDoc;

/// Stamps the crate's version into the document.
struct Version;

impl Modify for Version {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi.info.version = env!("CARGO_PKG_VERSION").to_owned();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The spec documents exactly the routes the router serves.
    #[test]
    fn every_served_route_is_in_the_spec_and_nothing_else() {
        let spec = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let documented: BTreeSet<(String, String)> = spec["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (method.clone(), path.clone()))
            })
            .collect();
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(method, path)| (method.to_string(), path.to_string()))
            .collect();
        assert_eq!(documented, served);
        assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    }
}
