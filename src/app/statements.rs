//! Account statements (SPEC §10): for a period of whole days (UTC), the
//! opening and closing balances and every movement between them, all
//! replayed from the log with the domain's own fold (never read from a
//! projection), so opening + entries = closing by construction, and the
//! entries are the history items of the period.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::auth::{Action, Principal};
use super::problems::{AppError, account_not_found};
use super::views::{TransactionView, amount_text};
use super::{Ledger, Reader, account_id_for};
use crate::domain::{Iban, format_amount};
use crate::event_store;
use crate::problem::{FieldError, Problem};

/// Longest period one statement covers.
pub const PERIOD_DAYS_MAX: i64 = 366;

/// Whole days, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Period {
    /// `from` and `to` as `YYYY-MM-DD`; every bad one named.
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Period, Problem> {
        let mut errors = Vec::new();
        let mut day = |name: &str, text: Option<&str>| match text {
            None => {
                errors.push(FieldError::new(name, "is required (YYYY-MM-DD)"));
                None
            }
            Some(text) => NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| errors.push(FieldError::new(name, "must be a date, YYYY-MM-DD")))
                .ok(),
        };
        let (from, to) = (day("from", from), day("to", to));
        if let (Some(from), Some(to)) = (from, to) {
            if to < from {
                errors.push(FieldError::new("to", "must not be before from"));
            } else if (to - from).num_days() >= PERIOD_DAYS_MAX {
                errors.push(FieldError::new(
                    "to",
                    format!("a statement covers at most {PERIOD_DAYS_MAX} days"),
                ));
            } else {
                return Ok(Period { from, to });
            }
        }
        Err(Problem::validation(errors))
    }

    /// The first instant of the period.
    pub fn start(self) -> DateTime<Utc> {
        self.from.and_time(chrono::NaiveTime::MIN).and_utc()
    }

    /// The first instant after the period.
    pub fn end(self) -> DateTime<Utc> {
        (self.to + chrono::Days::new(1))
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
    }
}

/// A statement (the JSON form; camt.053 renders the same values).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatementView {
    pub iban: String,
    pub bic: String,
    pub organization_name: String,
    pub currency: String,
    #[schema(value_type = String, format = Date)]
    pub from: NaiveDate,
    #[schema(value_type = String, format = Date)]
    pub to: NaiveDate,
    /// At the start of `from`.
    pub opening_balance: String,
    pub opening_balance_cents: i64,
    /// At the end of `to`.
    pub closing_balance: String,
    pub closing_balance_cents: i64,
    pub credits: EntryTotals,
    pub debits: EntryTotals,
    /// The period's movements, oldest first: the history items of the
    /// period (`GET …/transactions`), in the order they were booked.
    pub entries: Vec<TransactionView>,
    /// The log position the statement was replayed to.
    pub position: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EntryTotals {
    pub count: usize,
    pub sum: String,
    pub sum_cents: i64,
}

impl Ledger {
    /// The statement of an account for a period.
    pub async fn statement(
        &self,
        reader: &Reader,
        principal: &Principal,
        iban: &Iban,
        period: Period,
    ) -> Result<StatementView, AppError> {
        principal.authorize(Action::ReadAccount(iban))?;
        let account_id = account_id_for(iban);
        let events = self
            .read(reader, |pool| async move {
                Ok(event_store::read_stream(&pool, account_id, None, None).await?)
            })
            .await?;
        // Up to where the period ends, in stream order: a stream's
        // versions are the order that counts, whatever the clocks said.
        let (start, end) = (period.start(), period.end());
        let until = events.iter().position(|e| e.recorded_at >= end).unwrap_or(events.len());
        let opening_at = events[..until]
            .iter()
            .position(|e| e.recorded_at >= start)
            .unwrap_or(until);
        let replayed = crate::audit::replay_stream(account_id, &events[..until]);
        if let Some(difference) = replayed.differences.first() {
            return Err(AppError::Internal(anyhow::anyhow!(
                "stream {account_id} does not replay: {}",
                difference.what
            )));
        }
        let Some(account) = replayed.account else {
            // Opened after the period (or never): no statement to give.
            return Err(if events.is_empty() {
                account_not_found(iban).into()
            } else {
                Problem::not_found(format!("the account with IBAN {iban} was opened after {}", period.to)).into()
            });
        };
        let mut entries = Vec::new();
        for stored in &events[opening_at..until] {
            let event = stored
                .to_event()
                .map_err(|e| AppError::Internal(anyhow::anyhow!("unreadable event {}: {e}", stored.position)))?;
            entries.extend(crate::audit::history_rows(stored, &event));
        }
        let moved: i64 = entries.iter().map(|row| row.amount_cents).sum();
        let closing = account.balance_cents;
        let opening = closing - moved;
        let totals = |credit: bool| {
            let rows: Vec<i64> = entries
                .iter()
                .map(|r| r.amount_cents)
                .filter(|a| (*a > 0) == credit)
                .collect();
            let sum = rows.iter().map(|a| a.abs()).sum();
            EntryTotals {
                count: rows.len(),
                sum: format_amount(sum, account.currency),
                sum_cents: sum,
            }
        };
        let (credits, debits) = (totals(true), totals(false));
        Ok(StatementView {
            iban: account.iban.to_string(),
            bic: account.bic.to_string(),
            organization_name: account.organization_name.clone(),
            currency: account.currency.code().to_owned(),
            from: period.from,
            to: period.to,
            opening_balance: amount_text(opening, account.currency.code()),
            opening_balance_cents: opening,
            closing_balance: format_amount(closing, account.currency),
            closing_balance_cents: closing,
            credits,
            debits,
            entries: entries.iter().map(super::queries::transaction_view).collect(),
            position: events[..until].last().map_or(0, |e| e.position),
            created_at: Utc::now(),
        })
    }
}
