//! Audit: replay streams from the log, verify their hash chains, recompute
//! balances and histories with the domain's own fold, and compare them with
//! the projections. The SQL projections and this Rust fold are written
//! independently, so agreement means something.

pub mod double_entry;

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::app::queries;
use crate::domain::{self, Account, Event};
use crate::event_store::{self, StoredEvent, hash::GENESIS};

/// One disagreement, located in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Difference {
    pub account_id: Uuid,
    pub iban: Option<String>,
    /// The event's global position, when the difference is tied to one.
    pub position: Option<i64>,
    pub what: String,
}

/// The audit of one stream.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StreamAudit {
    pub account_id: Uuid,
    pub iban: Option<String>,
    pub events: usize,
    pub replayed_balance_cents: Option<i64>,
    pub projected_balance_cents: Option<i64>,
    pub consistent: bool,
    pub chain_valid: bool,
    pub differences: Vec<Difference>,
}

pub use crate::app::queries::HistoryRow;

/// The history rows an event produces, computed in Rust from the domain
/// event (the independent twin of `projection_transactions_apply`).
pub fn history_rows(stored: &StoredEvent, event: &Event) -> Vec<HistoryRow> {
    match event {
        Event::FundsDeposited {
            deposit_id,
            amount_cents,
            currency,
            reference,
            balance_after_cents,
        } => vec![HistoryRow {
            position: stored.position,
            seq: 1,
            transaction_id: *deposit_id,
            kind: "deposit".into(),
            amount_cents: *amount_cents,
            currency: currency.code().into(),
            counterparty_name: None,
            counterparty_iban: None,
            counterparty_bic: None,
            description: reference.clone(),
            bulk_id: None,
            balance_after_cents: *balance_after_cents,
            recorded_at: stored.recorded_at,
            reason: None,
            end_to_end_id: None,
        }],
        Event::BulkTransferBooked {
            bulk_id,
            total_cents,
            balance_after_cents,
            transfers,
            ..
        } => {
            let mut balance = balance_after_cents + total_cents;
            transfers
                .iter()
                .enumerate()
                .map(|(index, transfer)| {
                    balance -= transfer.amount_cents;
                    HistoryRow {
                        position: stored.position,
                        seq: index as i32 + 1,
                        transaction_id: transfer.transfer_id,
                        kind: "transfer".into(),
                        amount_cents: -transfer.amount_cents,
                        currency: transfer.currency.code().into(),
                        counterparty_name: Some(transfer.counterparty_name.clone()),
                        counterparty_iban: Some(transfer.counterparty_iban.to_string()),
                        counterparty_bic: transfer.counterparty_bic.as_ref().map(ToString::to_string),
                        description: Some(transfer.description.clone()),
                        bulk_id: Some(*bulk_id),
                        balance_after_cents: balance,
                        recorded_at: stored.recorded_at,
                        reason: None,
                        end_to_end_id: transfer.end_to_end_id.clone(),
                    }
                })
                .collect()
        }
        Event::TransferReceived {
            transfer_id,
            bulk_id,
            payer_iban,
            payer_bic,
            payer_name,
            amount_cents,
            currency,
            description,
            end_to_end_id,
            balance_after_cents,
            ..
        } => vec![HistoryRow {
            position: stored.position,
            seq: 1,
            transaction_id: *transfer_id,
            kind: "transfer_received".into(),
            amount_cents: *amount_cents,
            currency: currency.code().into(),
            counterparty_name: Some(payer_name.clone()),
            counterparty_iban: Some(payer_iban.to_string()),
            counterparty_bic: Some(payer_bic.to_string()),
            description: Some(description.clone()),
            bulk_id: Some(*bulk_id),
            balance_after_cents: *balance_after_cents,
            recorded_at: stored.recorded_at,
            reason: None,
            end_to_end_id: end_to_end_id.clone(),
        }],
        Event::TransferReturned {
            transfer_id,
            bulk_id,
            payee_iban,
            payee_bic,
            payee_name,
            amount_cents,
            currency,
            description,
            reason,
            end_to_end_id,
            balance_after_cents,
            ..
        } => vec![HistoryRow {
            position: stored.position,
            seq: 1,
            transaction_id: *transfer_id,
            kind: "transfer_returned".into(),
            amount_cents: *amount_cents,
            currency: currency.code().into(),
            counterparty_name: Some(payee_name.clone()),
            counterparty_iban: Some(payee_iban.to_string()),
            counterparty_bic: Some(payee_bic.to_string()),
            description: Some(description.clone()),
            bulk_id: Some(*bulk_id),
            balance_after_cents: *balance_after_cents,
            recorded_at: stored.recorded_at,
            reason: Some(reason.clone()),
            end_to_end_id: end_to_end_id.clone(),
        }],
        Event::AccountOpened { .. } | Event::BulkTransferRejected { .. } => Vec::new(),
    }
}

/// The result of folding a stream: the state, and what went wrong on the way.
pub struct Replayed {
    pub account: Option<Account>,
    pub history: Vec<HistoryRow>,
    pub chain_valid: bool,
    /// False when an event could not be read or folded: the state and
    /// history stop there.
    pub fold_complete: bool,
    pub differences: Vec<Difference>,
}

/// Verifies the chain and folds `events` (one stream, in version order).
pub fn replay_stream(account_id: Uuid, events: &[StoredEvent]) -> Replayed {
    let mut state: Option<Account> = None;
    let mut history = Vec::new();
    let mut differences = Vec::new();
    let mut chain_valid = true;
    let mut previous = GENESIS;
    let mut fold_broken = false;
    for (index, stored) in events.iter().enumerate() {
        let iban = state.as_ref().map(|a| a.iban.to_string());
        let mut differ = |what: String| {
            differences.push(Difference {
                account_id,
                iban: iban.clone(),
                position: Some(stored.position),
                what,
            })
        };
        if stored.version != index as i64 + 1 {
            differ(format!("version {} where {} was expected", stored.version, index + 1));
        }
        if chain_valid && stored.computed_hash(&previous).as_slice() != stored.hash.as_slice() {
            chain_valid = false;
            differ(format!(
                "hash chain broken at version {}: the event's content does not match its recorded hash",
                stored.version
            ));
        }
        previous = stored.hash.as_slice().try_into().unwrap_or(GENESIS);
        if fold_broken {
            continue;
        }
        match stored.to_event() {
            Err(error) => {
                fold_broken = true;
                differ(format!(
                    "{} at version {} does not read back: {error}",
                    stored.event_type, stored.version
                ));
            }
            Ok(event) => {
                history.extend(history_rows(stored, &event));
                match domain::apply(state.take(), &event) {
                    Ok(next) => state = Some(next),
                    Err(error) => {
                        fold_broken = true;
                        differ(error.to_string());
                    }
                }
            }
        }
    }
    Replayed {
        account: state,
        history,
        chain_valid,
        fold_complete: !fold_broken,
        differences,
    }
}

/// Audits one stream against the projections. The log and both inline
/// projections are read in one REPEATABLE READ snapshot: an append that
/// commits between the reads would otherwise show up as drift (the events
/// read before it, the newer balances row after).
pub async fn audit_stream(pool: &PgPool, account_id: Uuid) -> Result<StreamAudit, sqlx::Error> {
    let mut snapshot = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *snapshot)
        .await?;
    let events = event_store::read_stream(&mut *snapshot, account_id, None, None).await?;
    let projected = queries::balance_row(&mut *snapshot, account_id).await?;
    let rows = queries::history_of(&mut *snapshot, account_id).await?;
    snapshot.commit().await?;
    let replayed = replay_stream(account_id, &events);

    let iban = replayed
        .account
        .as_ref()
        .map(|a| a.iban.to_string())
        .or_else(|| projected.as_ref().map(|p| p.iban.clone()));
    let mut differences = replayed.differences;
    let mut differ = |position: Option<i64>, what: String| {
        differences.push(Difference {
            account_id,
            iban: iban.clone(),
            position,
            what,
        })
    };
    let last_position = events.last().map(|e| e.position);
    match (&replayed.account, &projected) {
        (None, None) => {}
        (Some(_), None) => differ(
            last_position,
            "the balances projection has no row for this account".into(),
        ),
        (None, Some(_)) if events.is_empty() => differ(
            None,
            "the balances projection has a row for an account with no events".into(),
        ),
        (None, Some(_)) => {}
        (Some(account), Some(row)) => {
            let mut compare = |name: &str, replayed: String, projected: String| {
                if replayed != projected {
                    differ(
                        last_position,
                        format!("balances.{name} is {projected} but the log says {replayed}"),
                    );
                }
            };
            compare(
                "balance_cents",
                account.balance_cents.to_string(),
                row.balance_cents.to_string(),
            );
            compare("version", account.version.to_string(), row.version.to_string());
            compare(
                "last_position",
                last_position.unwrap_or(0).to_string(),
                row.last_position.to_string(),
            );
            compare(
                "organization_name",
                account.organization_name.clone(),
                row.organization_name.clone(),
            );
            compare("iban", account.iban.to_string(), row.iban.clone());
            compare("bic", account.bic.to_string(), row.bic.clone());
            compare("currency", account.currency.code().to_owned(), row.currency.clone());
        }
    }
    // After a fold error the replayed history stops short; comparing the
    // rest would report every later row as foreign to the log.
    if replayed.fold_complete {
        compare_history(&replayed.history, &rows, &mut differ);
    }

    let consistent = differences.is_empty();
    Ok(StreamAudit {
        account_id,
        iban,
        events: events.len(),
        replayed_balance_cents: replayed.account.as_ref().map(|a| a.balance_cents),
        projected_balance_cents: projected.as_ref().map(|p| p.balance_cents),
        consistent,
        chain_valid: replayed.chain_valid,
        differences,
    })
}

fn compare_history(expected: &[HistoryRow], actual: &[HistoryRow], differ: &mut impl FnMut(Option<i64>, String)) {
    let mut expected_iter = expected.iter().peekable();
    let mut actual_iter = actual.iter().peekable();
    loop {
        match (expected_iter.peek(), actual_iter.peek()) {
            (None, None) => break,
            (Some(e), Some(a)) if (e.position, e.seq) == (a.position, a.seq) => {
                if e != a {
                    differ(
                        Some(e.position),
                        format!(
                            "transactions row {}.{} differs: log gives {e:?}, projection holds {a:?}",
                            e.position, e.seq
                        ),
                    );
                }
                expected_iter.next();
                actual_iter.next();
            }
            (Some(e), a) if a.is_none_or(|a| (e.position, e.seq) < (a.position, a.seq)) => {
                differ(
                    Some(e.position),
                    format!(
                        "transactions row {}.{} is missing from the projection",
                        e.position, e.seq
                    ),
                );
                expected_iter.next();
            }
            (_, Some(a)) => {
                differ(
                    Some(a.position),
                    format!(
                        "transactions row {}.{} is in the projection but not in the log",
                        a.position, a.seq
                    ),
                );
                actual_iter.next();
            }
            (Some(_), None) => unreachable!("handled by the guard above"),
        }
    }
}

/// Every stream id in the log, and every account id the projections know
/// (an orphan row there is a difference too).
pub async fn all_accounts(pool: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut ids = event_store::stream_ids(pool).await?;
    ids.extend(queries::projected_accounts(pool).await?);
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}
