//! The OpenAPI 3.1 description (`GET /openapi.json`) and the interactive
//! docs (`GET /docs`, Swagger UI with its assets compiled in: it works
//! offline).
//!
//! Handlers carry their own `#[utoipa::path]` and each feature registers
//! them once (utoipa-axum's `routes!`): the paths here and the routes the
//! router serves come from that one registration.

use serde::Serialize;
use utoipa::{Modify, OpenApi, ToSchema};

use crate::app::views::{
    AccountView, BulkTransferView, DepositView, FeedEventView, FeedPage, PointInTimeView, TransactionPage,
    TransactionView,
};
use crate::audit::{Difference, StreamAudit};
use crate::problem::{FieldError, Problem};

/// The OpenAPI document `GET /openapi.json` serves: the description of
/// every registered endpoint, with the API key scheme on the `/v1` ones.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = super::registered().into_openapi();
    Security.modify(&mut document);
    document
}

/// Every documented route, as (method, OpenAPI path): the same
/// registration the router serves.
pub fn routes() -> Vec<(String, String)> {
    let document = serde_json::to_value(document()).expect("the document serialises");
    document["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flatten()
                .map(move |(method, _)| (method.clone(), path.clone()))
        })
        .collect()
}

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
    /// The payer's own reference for the transfer (ISO 20022 `EndToEndId`,
    /// 1 to 35 characters): kept in its events, history, feed and
    /// statements, and given to the payee's credit.
    pub end_to_end_id: Option<String>,
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

/// An example pain.001.001.09 document, for the API's documentation.
pub const PAIN_001_EXAMPLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.09">
  <CstmrCdtTrfInitn>
    <GrpHdr><MsgId>PAYROLL-2026-11</MsgId><CreDtTm>2026-11-30T09:00:00</CreDtTm><NbOfTxs>1</NbOfTxs><CtrlSum>2500.00</CtrlSum><InitgPty><Nm>Globex GmbH</Nm></InitgPty></GrpHdr>
    <PmtInf>
      <PmtInfId>PAYROLL-2026-11-1</PmtInfId><PmtMtd>TRF</PmtMtd><ReqdExctnDt><Dt>2026-12-01</Dt></ReqdExctnDt>
      <Dbtr><Nm>Globex GmbH</Nm></Dbtr>
      <DbtrAcct><Id><IBAN>DE89370400440532013000</IBAN></Id></DbtrAcct>
      <DbtrAgt><FinInstnId><BICFI>COBADEFFXXX</BICFI></FinInstnId></DbtrAgt>
      <CdtTrfTxInf>
        <PmtId><EndToEndId>SAL-2026-11-0001</EndToEndId></PmtId>
        <Amt><InstdAmt Ccy="EUR">2500.00</InstdAmt></Amt>
        <CdtrAgt><FinInstnId><BICFI>NWBKGB2L</BICFI></FinInstnId></CdtrAgt>
        <Cdtr><Nm>Hank Scorpio</Nm></Cdtr>
        <CdtrAcct><Id><IBAN>GB82WEST12345698765432</IBAN></Id></CdtrAcct>
        <RmtInf><Ustrd>Salary 2026-11</Ustrd></RmtInf>
      </CdtTrfTxInf>
    </PmtInf>
  </CstmrCdtTrfInitn>
</Document>"#;

/// An example pain.002.001.10 answer, for the API's documentation.
pub const PAIN_002_EXAMPLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.002.001.10">
  <CstmrPmtStsRpt>
    <GrpHdr><MsgId>STS-a5d2981a798b8a93be375ebcad17dc2</MsgId><CreDtTm>2026-12-01T09:00:01.234Z</CreDtTm></GrpHdr>
    <OrgnlGrpInfAndSts><OrgnlMsgId>PAYROLL-2026-11</OrgnlMsgId><OrgnlMsgNmId>pain.001.001.09</OrgnlMsgNmId><OrgnlNbOfTxs>1</OrgnlNbOfTxs><GrpSts>ACCP</GrpSts></OrgnlGrpInfAndSts>
    <OrgnlPmtInfAndSts><OrgnlPmtInfId>PAYROLL-2026-11-1</OrgnlPmtInfId><OrgnlNbOfTxs>1</OrgnlNbOfTxs><PmtInfSts>ACCP</PmtInfSts></OrgnlPmtInfAndSts>
  </CstmrPmtStsRpt>
</Document>"#;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ledger",
        description = "An event-sourced transfer ledger for a business bank. Commands (POST) append events; \
                       queries (GET) read projections or replay the log. Every error is an RFC 9457 problem \
                       (application/problem+json). Every command accepts an Idempotency-Key header. \
                       Every /v1 route needs an API key (`Authorization: Bearer <key>`, made with \
                       `ledger keys create`): admin keys may do everything, account keys may post bulk \
                       transfers from their account and read it, nothing else.",
        license(name = "MIT OR Apache-2.0")
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

/// The name of the API key scheme in `components.securitySchemes`.
pub const SECURITY_SCHEME: &str = "api_key";

/// Declares the bearer API key, requires it on every `/v1` operation and
/// documents the 401 and 403 each of them may answer.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ldgr_<id>_<secret>")
                    .description(Some(
                        "An API key from `ledger keys create --admin` or `ledger keys create --account IBAN`",
                    ))
                    .build(),
            ),
        );
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                operation.security = Some(vec![SecurityRequirement::new(SECURITY_SCHEME, Vec::<String>::new())]);
                let responses = &mut operation.responses.responses;
                responses.insert(
                    "401".to_owned(),
                    problem("No API key, or not a valid one (unknown, revoked, mistyped)").into(),
                );
                responses.insert(
                    "403".to_owned(),
                    problem("The API key may not do this (an account key acting on another account, or on an admin route); nothing was changed").into(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The document lists every endpoint, from the registration.
    #[test]
    fn every_endpoint_is_documented() {
        let documented: BTreeSet<(String, String)> = routes().into_iter().collect();
        let expected: BTreeSet<(String, String)> = [
            ("post", "/v1/accounts"),
            ("get", "/v1/accounts/{iban}"),
            ("post", "/v1/accounts/{iban}/deposits"),
            ("get", "/v1/accounts/{iban}/transactions"),
            ("get", "/v1/accounts/{iban}/balance"),
            ("get", "/v1/accounts/{iban}/audit"),
            ("get", "/v1/accounts/{iban}/statement"),
            ("get", "/v1/events"),
            ("get", "/v1/ledger/trial-balance"),
            ("post", "/v1/transfer/bulk"),
            ("get", "/healthz"),
            ("get", "/readyz"),
            ("get", "/metrics"),
        ]
        .into_iter()
        .map(|(method, path)| (method.to_owned(), path.to_owned()))
        .collect();
        assert_eq!(documented, expected);
        let spec = serde_json::to_value(document()).unwrap();
        assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    }

    /// Every `/v1` operation needs the bearer key and documents 401 and 403;
    /// the operations endpoints need nothing.
    #[test]
    fn api_routes_require_the_api_key() {
        let spec = serde_json::to_value(document()).unwrap();
        let scheme = &spec["components"]["securitySchemes"][SECURITY_SCHEME];
        assert_eq!(scheme["type"], "http");
        assert_eq!(scheme["scheme"], "bearer");
        for (method, path) in routes() {
            let operation = &spec["paths"][&path][&method];
            if path.starts_with("/v1/") {
                assert_eq!(
                    operation["security"],
                    serde_json::json!([{ SECURITY_SCHEME: [] }]),
                    "{method} {path}"
                );
                for status in ["401", "403"] {
                    assert!(operation["responses"][status].is_object(), "{method} {path} {status}");
                }
            } else {
                assert!(operation.get("security").is_none(), "{method} {path}");
            }
        }
    }
}
