//! Response bodies. Every amount appears twice: a decimal string with the
//! currency's digits and integer minor units.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{Account, Currency, format_amount};

/// Deserializable too: a recorded (idempotent) response is read back for gRPC.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccountView {
    pub account_id: Uuid,
    pub organization_name: String,
    pub iban: String,
    pub bic: String,
    pub currency: String,
    pub balance: String,
    pub balance_cents: i64,
    pub version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
}

impl AccountView {
    pub fn of(account: &Account, position: Option<i64>) -> AccountView {
        AccountView {
            account_id: account.account_id,
            organization_name: account.organization_name.clone(),
            iban: account.iban.to_string(),
            bic: account.bic.to_string(),
            currency: account.currency.code().to_owned(),
            balance: format_amount(account.balance_cents, account.currency),
            balance_cents: account.balance_cents,
            version: account.version,
            position,
        }
    }
}

/// Deserializable too: a recorded (idempotent) response is read back for gRPC.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DepositView {
    pub transaction_id: Uuid,
    pub account_id: Uuid,
    pub iban: String,
    pub amount: String,
    pub amount_cents: i64,
    pub currency: String,
    pub reference: Option<String>,
    pub balance: String,
    pub balance_cents: i64,
    pub version: i64,
    /// The log position of the command's last event: pass it as
    /// `min_position` to read this write back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
}

/// Deserializable too: a recorded (idempotent) response is read back for gRPC.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BulkTransferView {
    pub bulk_id: Uuid,
    pub account_id: Uuid,
    pub iban: String,
    pub transfer_count: usize,
    pub transfer_ids: Vec<Uuid>,
    pub currency: String,
    pub total: String,
    pub total_cents: i64,
    pub balance_after: String,
    pub balance_after_cents: i64,
    pub version: i64,
    /// The log position of the command's last event: pass it as
    /// `min_position` to read this write back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TransactionView {
    pub transaction_id: Uuid,
    pub kind: String,
    pub amount: String,
    pub amount_cents: i64,
    pub currency: String,
    pub counterparty_name: Option<String>,
    pub counterparty_iban: Option<String>,
    pub counterparty_bic: Option<String>,
    pub description: Option<String>,
    pub bulk_id: Option<Uuid>,
    pub balance_after: String,
    pub balance_after_cents: i64,
    pub recorded_at: DateTime<Utc>,
    pub position: i64,
    /// Why the money came back, for a `transfer_returned` item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The payer's ISO 20022 end-to-end reference (`EndToEndId`) of a
    /// transfer, its credit or its return, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_to_end_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TransactionPage {
    pub items: Vec<TransactionView>,
    pub next_cursor: Option<String>,
}

pub fn amount_text(minor: i64, currency: &str) -> String {
    match Currency::parse(currency) {
        Ok(currency) => format_amount(minor, currency),
        // Stored rows were written with a valid code; fall back to digits.
        Err(_) => minor.to_string(),
    }
}

/// The balance at a point of the log, replayed from the events.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PointInTimeView {
    pub account_id: Uuid,
    pub iban: String,
    pub currency: String,
    pub balance: String,
    pub balance_cents: i64,
    /// The stream version and global position of the last event included.
    pub version: i64,
    pub position: i64,
    pub recorded_at: DateTime<Utc>,
    pub as_of: Option<DateTime<Utc>>,
    pub until_position: Option<i64>,
    pub events: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FeedEventView {
    pub position: i64,
    pub stream_id: Uuid,
    pub version: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: i32,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
    /// Pass as `after` to resume right after this event.
    pub after: String,
}

impl From<crate::event_store::FeedEvent> for FeedEventView {
    fn from(feed: crate::event_store::FeedEvent) -> FeedEventView {
        let after = feed.cursor().token();
        let event = feed.event;
        FeedEventView {
            after,
            position: event.position,
            stream_id: event.stream_id,
            version: event.version,
            event_type: event.event_type,
            schema_version: event.schema_version,
            data: event.data,
            metadata: event.metadata,
            recorded_at: event.recorded_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FeedPage {
    pub events: Vec<FeedEventView>,
    pub next_after: String,
}

/// The trial balance (SPEC §9): per currency, where all the money is. The
/// four parts sum to zero whenever the books are right.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"position": 42, "currencies": [{"currency": "EUR", "customers_cents": 9566955,
    "settlement_cents": -10000000, "clearing_cents": 433045, "in_flight_cents": 0, "sum_cents": 0}]}))]
pub struct TrialBalanceView {
    /// The log position the figures are taken at.
    pub position: i64,
    pub currencies: Vec<CurrencyTrialBalance>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CurrencyTrialBalance {
    pub currency: String,
    /// The customer accounts' balances, summed.
    pub customers_cents: i64,
    /// The settlement account: money that came in from outside (deposits),
    /// negative.
    pub settlement_cents: i64,
    /// The clearing account: money sent to other banks (transfers to IBANs
    /// that are no account here), positive.
    pub clearing_cents: i64,
    /// On-us transfers debited from their payers and not yet credited to
    /// their payees or returned.
    pub in_flight_cents: i64,
    /// customers + settlement + clearing + in flight: 0.
    pub sum_cents: i64,
}
