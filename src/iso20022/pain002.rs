//! pain.002.001.10 (customer payment status report): the answer to a
//! pain.001, rendered from the recorded outcome of each of its bulks, as
//! XML or as the same report in JSON.
//!
//! The report is a function of the outcome alone, so the same document
//! sent again gets the same report: its `MsgId` derives from the
//! document's fingerprint and its `CreDtTm` from the time the bulks were
//! decided (their ids are UUID v7).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::xml::{Element, document};
use crate::app::{FileOutcome, PaymentOutcome, PaymentRefusal};

pub const NAMESPACE: &str = "urn:iso:std:iso:20022:tech:xsd:pain.002.001.10";

/// A group or payment status (ISO 20022 `ExternalPaymentGroupStatus1Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    /// Accepted: every bulk booked.
    ACCP,
    /// Partially accepted: some bulks booked.
    PART,
    /// Rejected: nothing booked.
    RJCT,
}

impl Status {
    pub fn code(self) -> &'static str {
        match self {
            Status::ACCP => "ACCP",
            Status::PART => "PART",
            Status::RJCT => "RJCT",
        }
    }
}

/// The ISO 20022 status reason code of a refusal
/// (`ExternalStatusReason1Code`).
pub fn reason_code(refusal: PaymentRefusal) -> &'static str {
    match refusal {
        PaymentRefusal::InsufficientFunds => "AM04",
        PaymentRefusal::UnknownAccount | PaymentRefusal::NameMismatch => "AC01",
        PaymentRefusal::BicMismatch => "RC01",
        PaymentRefusal::CurrencyMismatch => "AM03",
        // "Regulatory reason": the ledger's own limit (a balance past
        // what it represents).
        PaymentRefusal::Other => "NARR",
    }
}

/// The status of the whole file.
pub fn group_status(outcome: &FileOutcome) -> Status {
    let booked = outcome.payments.iter().filter(|p| p.result.is_ok()).count();
    match booked {
        0 => Status::RJCT,
        n if n == outcome.payments.len() => Status::ACCP,
        _ => Status::PART,
    }
}

/// The report as JSON (`Accept: application/json`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatusReport {
    pub msg_id: String,
    /// `ACCP`, `PART` or `RJCT`.
    pub status: String,
    pub payment_informations: Vec<PaymentStatus>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PaymentStatus {
    pub pmt_inf_id: String,
    /// `ACCP` or `RJCT`.
    pub status: String,
    /// The status reason code when refused (`AM04`, `AC01`, `RC01`, `AM03`).
    pub reason: Option<String>,
    /// What was wrong, in words, when refused.
    pub detail: Option<String>,
    pub bulk_id: Option<Uuid>,
    pub transfer_ids: Vec<Uuid>,
    /// The log position of the booked bulk (`min_position` for reads).
    pub position: Option<i64>,
}

pub fn json(outcome: &FileOutcome) -> StatusReport {
    StatusReport {
        msg_id: outcome.msg_id.clone(),
        status: group_status(outcome).code().to_owned(),
        payment_informations: outcome
            .payments
            .iter()
            .map(|payment| match &payment.result {
                Ok(view) => PaymentStatus {
                    pmt_inf_id: payment.id.clone(),
                    status: Status::ACCP.code().to_owned(),
                    reason: None,
                    detail: None,
                    bulk_id: Some(view.bulk_id),
                    transfer_ids: view.transfer_ids.clone(),
                    position: view.position,
                },
                Err((refusal, problem)) => PaymentStatus {
                    pmt_inf_id: payment.id.clone(),
                    status: Status::RJCT.code().to_owned(),
                    reason: Some(reason_code(*refusal).to_owned()),
                    detail: Some(problem.detail.clone()),
                    bulk_id: recorded_bulk_id(payment),
                    transfer_ids: Vec::new(),
                    position: None,
                },
            })
            .collect(),
    }
}

/// A refused bulk's id, when its refusal was recorded (insufficient funds).
fn recorded_bulk_id(payment: &PaymentOutcome) -> Option<Uuid> {
    match &payment.result {
        Ok(view) => Some(view.bulk_id),
        Err((_, problem)) => problem
            .extensions
            .get("bulk_id")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse().ok()),
    }
}

/// When the bulks were decided: the latest time in their UUID v7 ids, or
/// now when none was recorded.
fn decided_at(outcome: &FileOutcome) -> DateTime<Utc> {
    outcome
        .payments
        .iter()
        .filter_map(recorded_bulk_id)
        .filter_map(|id| id.get_timestamp())
        .filter_map(|ts| {
            let (secs, nanos) = ts.to_unix();
            DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
        })
        .max()
        .unwrap_or_else(Utc::now)
}

/// The report's own message id: `STS-` and 31 hex digits of the file's
/// fingerprint (35 characters, `Max35Text`).
fn report_id(outcome: &FileOutcome) -> String {
    format!("STS-{}", &hex::encode(outcome.fingerprint)[..31])
}

/// Free text fits `Max105Text`.
fn max105(text: &str) -> String {
    text.chars().take(105).collect()
}

pub fn xml(outcome: &FileOutcome) -> String {
    let created = decided_at(outcome).to_rfc3339_opts(SecondsFormat::Millis, true);
    let group = Element::new("OrgnlGrpInfAndSts")
        .child(Element::text("OrgnlMsgId", outcome.msg_id.clone()))
        .child(Element::text("OrgnlMsgNmId", outcome.message_name.clone()))
        .child(Element::text("OrgnlNbOfTxs", outcome.transactions.to_string()))
        .child(Element::text("GrpSts", group_status(outcome).code()));
    let payments = outcome.payments.iter().map(|payment| {
        let status = if payment.result.is_ok() {
            Status::ACCP
        } else {
            Status::RJCT
        };
        let reason = payment.result.as_ref().err().map(|(refusal, problem)| {
            Element::new("StsRsnInf")
                .child(Element::path(&["Rsn"], Element::text("Cd", reason_code(*refusal))))
                .child(Element::text("AddtlInf", max105(&problem.detail)))
        });
        Element::new("OrgnlPmtInfAndSts")
            .child(Element::text("OrgnlPmtInfId", payment.id.clone()))
            .child(Element::text("OrgnlNbOfTxs", payment.transactions.to_string()))
            .child(Element::text("PmtInfSts", status.code()))
            .child_opt(reason)
    });
    let report = Element::new("CstmrPmtStsRpt")
        .child(
            Element::new("GrpHdr")
                .child(Element::text("MsgId", report_id(outcome)))
                .child(Element::text("CreDtTm", created)),
        )
        .child(group)
        .children(payments);
    document(NAMESPACE, report)
}
