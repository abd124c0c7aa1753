//! The account aggregate: commands, events, `decide` and `apply`.
//!
//! `decide(state, command)` says what happened (the events) or why nothing
//! may happen (a [`Refusal`]); `apply(state, event)` folds one event into the
//! state. A refused bulk is still a fact worth recording: `decide` returns a
//! [`Event::BulkTransferRejected`] for it, which changes no balance.
//!
//! About 520 lines: the commands, the events and the two pure functions
//! over them are one vocabulary, read together; the tests live apart in
//! `account/tests.rs`.
//!
//! The credit leg of an on-us transfer is decided on the payee's account by
//! [`decide_credit`] (or, when the payee cannot take it, returned to the
//! payer by [`decide_return`]): every command stays on one stream.
//!
//! A little over 500 lines, on purpose: the aggregate's commands, events,
//! decisions and fold are one vocabulary, read together; its tests live in
//! `account/tests.rs`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::iban::{Bic, Iban};
use super::money::Currency;

/// The state of one account, folded from its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub account_id: Uuid,
    pub organization_name: String,
    pub iban: Iban,
    pub bic: Bic,
    pub currency: Currency,
    pub balance_cents: i64,
    /// Number of events in the stream (the version of its last event).
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    OpenAccount(OpenAccountCommand),
    Deposit(DepositCommand),
    TransferBulk(TransferBulkCommand),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAccountCommand {
    pub account_id: Uuid,
    pub organization_name: String,
    pub iban: Iban,
    pub bic: Bic,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositCommand {
    pub deposit_id: Uuid,
    pub amount_cents: i64,
    pub currency: Currency,
    pub reference: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferBulkCommand {
    pub bulk_id: Uuid,
    pub organization_name: String,
    /// `None`: the payer named no BIC (a pain.001 may say `NOTPROVIDED`);
    /// only the name and the IBAN are checked then.
    pub organization_bic: Option<Bic>,
    pub transfers: Vec<TransferLine>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferLine {
    pub transfer_id: Uuid,
    pub amount_cents: i64,
    pub currency: Currency,
    pub counterparty_name: String,
    pub counterparty_iban: Iban,
    /// Optional in SEPA (IBAN only): a pain.001 may leave `CdtrAgt` out.
    pub counterparty_bic: Option<Bic>,
    pub description: String,
    /// The payer's end-to-end reference (ISO 20022 `EndToEndId`).
    pub end_to_end_id: Option<String>,
}

/// Facts, named in the past tense. The stored shape is this enum's serde
/// form: `type` is the variant name, the payload its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    AccountOpened {
        account_id: Uuid,
        organization_name: String,
        iban: Iban,
        bic: Bic,
        currency: Currency,
    },
    FundsDeposited {
        deposit_id: Uuid,
        amount_cents: i64,
        currency: Currency,
        reference: Option<String>,
        balance_after_cents: i64,
    },
    /// Every transfer of one bulk, booked together: all or nothing.
    BulkTransferBooked {
        bulk_id: Uuid,
        currency: Currency,
        total_cents: i64,
        balance_after_cents: i64,
        transfers: Vec<TransferBooked>,
    },
    /// A bulk refused for lack of funds. Recorded for the audit trail; it
    /// changes no balance.
    BulkTransferRejected {
        bulk_id: Uuid,
        reason: String,
        currency: Currency,
        requested_cents: i64,
        available_cents: i64,
        transfer_count: i64,
    },
    /// The credit leg of an on-us transfer, on the payee's stream (SPEC §9),
    /// decided by the posting process from the payer's
    /// [`Event::BulkTransferBooked`]. At most one per `transfer_id`.
    TransferReceived {
        transfer_id: Uuid,
        bulk_id: Uuid,
        payer_account_id: Uuid,
        payer_iban: Iban,
        payer_bic: Bic,
        payer_name: String,
        amount_cents: i64,
        currency: Currency,
        description: String,
        /// The payer's end-to-end reference (ISO 20022), when it gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end_to_end_id: Option<String>,
        balance_after_cents: i64,
    },
    /// An on-us transfer the payee could not take, credited back on the
    /// payer's stream (SPEC §9). At most one per `transfer_id`, and never
    /// beside a [`Event::TransferReceived`] of it.
    TransferReturned {
        transfer_id: Uuid,
        bulk_id: Uuid,
        payee_account_id: Uuid,
        payee_iban: Iban,
        payee_bic: Bic,
        payee_name: String,
        amount_cents: i64,
        currency: Currency,
        description: String,
        /// Why: `currency_mismatch` (the payee holds another currency) or
        /// `balance_limit` (the credit would overflow the payee's balance).
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end_to_end_id: Option<String>,
        balance_after_cents: i64,
    },
}

/// One transfer of a booked bulk. It carries everything the payee's side
/// needs (id, counterparty IBAN, currency) so a later process manager can
/// credit it exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferBooked {
    pub transfer_id: Uuid,
    pub amount_cents: i64,
    pub currency: Currency,
    pub counterparty_name: String,
    pub counterparty_iban: Iban,
    /// Absent when the payer gave none (SEPA allows IBAN only). Left out of
    /// the payload then, so events written before it was optional keep
    /// their exact bytes (and hashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterparty_bic: Option<Bic>,
    pub description: String,
    /// The payer's end-to-end reference (ISO 20022 `EndToEndId`), carried
    /// to the payee's credit, the history, the feed and statements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_to_end_id: Option<String>,
}

impl Event {
    pub const SCHEMA_VERSION: i32 = 1;

    pub fn event_type(&self) -> &'static str {
        match self {
            Event::AccountOpened { .. } => "AccountOpened",
            Event::FundsDeposited { .. } => "FundsDeposited",
            Event::BulkTransferBooked { .. } => "BulkTransferBooked",
            Event::BulkTransferRejected { .. } => "BulkTransferRejected",
            Event::TransferReceived { .. } => "TransferReceived",
            Event::TransferReturned { .. } => "TransferReturned",
        }
    }

    /// The payload alone, as stored in the event's `data` column.
    pub fn data(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut map)) => map.remove("data").unwrap_or_default(),
            // Serialising plain structs of strings and integers cannot fail.
            other => unreachable!("event serialises to an object, got {other:?}"),
        }
    }

    /// Rebuilds an event from its stored type and payload.
    pub fn from_stored(event_type: &str, data: serde_json::Value) -> Result<Event, serde_json::Error> {
        serde_json::from_value(serde_json::json!({ "type": event_type, "data": data }))
    }
}

/// Why a command may not happen. Each is a client-visible outcome (4xx),
/// never an operational failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("an account with this IBAN already exists")]
    AlreadyOpen,
    #[error("no account with this IBAN")]
    AccountNotFound,
    #[error("the organization name or BIC does not match the account")]
    OrganizationMismatch,
    #[error("currency {requested} differs from the account's currency {account}")]
    CurrencyMismatch {
        requested: Currency,
        account: Currency,
        /// Index of the offending transfer in a bulk.
        transfer_index: Option<usize>,
    },
    #[error("the bulk contains no transfer")]
    EmptyBulk,
    #[error("the resulting balance would exceed the ledger's limit")]
    BalanceLimit,
}

/// Decides what a command does to an account in the state `state` (`None`
/// when the stream does not exist yet).
pub fn decide(state: Option<&Account>, command: &Command) -> Result<Vec<Event>, Refusal> {
    match (state, command) {
        (Some(_), Command::OpenAccount(_)) => Err(Refusal::AlreadyOpen),
        (None, Command::OpenAccount(open)) => Ok(vec![Event::AccountOpened {
            account_id: open.account_id,
            organization_name: open.organization_name.clone(),
            iban: open.iban.clone(),
            bic: open.bic.clone(),
            currency: open.currency,
        }]),
        (None, _) => Err(Refusal::AccountNotFound),
        (Some(account), Command::Deposit(deposit)) => {
            if deposit.currency != account.currency {
                return Err(Refusal::CurrencyMismatch {
                    requested: deposit.currency,
                    account: account.currency,
                    transfer_index: None,
                });
            }
            let balance_after_cents = account
                .balance_cents
                .checked_add(deposit.amount_cents)
                .ok_or(Refusal::BalanceLimit)?;
            Ok(vec![Event::FundsDeposited {
                deposit_id: deposit.deposit_id,
                amount_cents: deposit.amount_cents,
                currency: deposit.currency,
                reference: deposit.reference.clone(),
                balance_after_cents,
            }])
        }
        (Some(account), Command::TransferBulk(bulk)) => decide_bulk(account, bulk),
    }
}

fn decide_bulk(account: &Account, bulk: &TransferBulkCommand) -> Result<Vec<Event>, Refusal> {
    if bulk.organization_name != account.organization_name
        || bulk.organization_bic.as_ref().is_some_and(|bic| *bic != account.bic)
    {
        return Err(Refusal::OrganizationMismatch);
    }
    if bulk.transfers.is_empty() {
        return Err(Refusal::EmptyBulk);
    }
    if let Some((index, line)) = bulk
        .transfers
        .iter()
        .enumerate()
        .find(|(_, t)| t.currency != account.currency)
    {
        return Err(Refusal::CurrencyMismatch {
            requested: line.currency,
            account: account.currency,
            transfer_index: Some(index),
        });
    }
    // Amounts are at most 1e14 minor units and bulks are bounded, but the sum
    // is still checked: an overflow here would be money created from nothing.
    let total_cents = bulk
        .transfers
        .iter()
        .try_fold(0_i64, |sum, t| sum.checked_add(t.amount_cents))
        .ok_or(Refusal::BalanceLimit)?;
    if total_cents > account.balance_cents {
        return Ok(vec![Event::BulkTransferRejected {
            bulk_id: bulk.bulk_id,
            reason: "insufficient_funds".to_owned(),
            currency: account.currency,
            requested_cents: total_cents,
            available_cents: account.balance_cents,
            transfer_count: bulk.transfers.len() as i64,
        }]);
    }
    Ok(vec![Event::BulkTransferBooked {
        bulk_id: bulk.bulk_id,
        currency: account.currency,
        total_cents,
        balance_after_cents: account.balance_cents - total_cents,
        transfers: bulk
            .transfers
            .iter()
            .map(|t| TransferBooked {
                transfer_id: t.transfer_id,
                amount_cents: t.amount_cents,
                currency: t.currency,
                counterparty_name: t.counterparty_name.clone(),
                counterparty_iban: t.counterparty_iban.clone(),
                counterparty_bic: t.counterparty_bic.clone(),
                description: t.description.clone(),
                end_to_end_id: t.end_to_end_id.clone(),
            })
            .collect(),
    }])
}

/// An event that cannot follow the state it is applied to: the stream is
/// corrupt (or the fold has a bug). Audit reports it; the write path never
/// produces it.
/// One transfer of a booked bulk, as the posting process sees it: who paid,
/// and the line itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting<'a> {
    pub bulk_id: Uuid,
    pub payer: &'a Account,
    pub transfer: &'a TransferBooked,
}

/// Why an on-us credit is returned to the payer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnReason {
    /// The payee's account holds another currency.
    CurrencyMismatch,
    /// The credit would take the payee's balance past what the ledger
    /// represents.
    BalanceLimit,
}

impl ReturnReason {
    pub fn code(self) -> &'static str {
        match self {
            ReturnReason::CurrencyMismatch => "currency_mismatch",
            ReturnReason::BalanceLimit => "balance_limit",
        }
    }
}

/// Decides the credit of an on-us transfer on its payee's account: the
/// [`Event::TransferReceived`] for the payee's stream, or why the payee
/// cannot take it (then [`decide_return`] on the payer's).
pub fn decide_credit(payee: &Account, posting: &Posting<'_>) -> Result<Event, ReturnReason> {
    let transfer = posting.transfer;
    if transfer.currency != payee.currency {
        return Err(ReturnReason::CurrencyMismatch);
    }
    let balance_after_cents = payee
        .balance_cents
        .checked_add(transfer.amount_cents)
        .ok_or(ReturnReason::BalanceLimit)?;
    Ok(Event::TransferReceived {
        transfer_id: transfer.transfer_id,
        bulk_id: posting.bulk_id,
        payer_account_id: posting.payer.account_id,
        payer_iban: posting.payer.iban.clone(),
        payer_bic: posting.payer.bic.clone(),
        payer_name: posting.payer.organization_name.clone(),
        amount_cents: transfer.amount_cents,
        currency: transfer.currency,
        description: transfer.description.clone(),
        end_to_end_id: transfer.end_to_end_id.clone(),
        balance_after_cents,
    })
}

/// The return of a transfer its payee could not take, on the payer's
/// account (`payer` is the payer's state now, not at booking time). `None`
/// when crediting it back would overflow the payer's balance (deposits
/// since the bulk took it to the edge of what the ledger represents): the
/// posting process then stops at that transfer rather than wrap around.
pub fn decide_return(payer: &Account, payee: &Account, posting: &Posting<'_>, reason: ReturnReason) -> Option<Event> {
    let transfer = posting.transfer;
    let balance_after_cents = payer.balance_cents.checked_add(transfer.amount_cents)?;
    Some(Event::TransferReturned {
        transfer_id: transfer.transfer_id,
        bulk_id: posting.bulk_id,
        payee_account_id: payee.account_id,
        payee_iban: payee.iban.clone(),
        payee_bic: payee.bic.clone(),
        payee_name: payee.organization_name.clone(),
        amount_cents: transfer.amount_cents,
        currency: transfer.currency,
        description: transfer.description.clone(),
        reason: reason.code().to_owned(),
        end_to_end_id: transfer.end_to_end_id.clone(),
        balance_after_cents,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("{event_type} at version {version} applies to an account that was never opened")]
    NotOpened { event_type: &'static str, version: i64 },
    #[error("AccountOpened at version {version} on an account already open")]
    OpenedTwice { version: i64 },
    #[error("{event_type} at version {version} records balance {recorded} but the fold gives {computed}")]
    BalanceMismatch {
        event_type: &'static str,
        version: i64,
        recorded: i64,
        computed: i64,
    },
    #[error("{event_type} at version {version} would take the balance to {computed}")]
    Overdrawn {
        event_type: &'static str,
        version: i64,
        computed: i64,
    },
}

/// Folds one event into the state.
pub fn apply(state: Option<Account>, event: &Event) -> Result<Account, FoldError> {
    let next_version = state.as_ref().map_or(1, |a| a.version + 1);
    let event_type = event.event_type();
    match (state, event) {
        (
            None,
            Event::AccountOpened {
                account_id,
                organization_name,
                iban,
                bic,
                currency,
            },
        ) => Ok(Account {
            account_id: *account_id,
            organization_name: organization_name.clone(),
            iban: iban.clone(),
            bic: bic.clone(),
            currency: *currency,
            balance_cents: 0,
            version: 1,
        }),
        (Some(_), Event::AccountOpened { .. }) => Err(FoldError::OpenedTwice { version: next_version }),
        (None, _) => Err(FoldError::NotOpened {
            event_type,
            version: next_version,
        }),
        (Some(mut account), event) => {
            let (delta, recorded) = match event {
                Event::FundsDeposited {
                    amount_cents,
                    balance_after_cents,
                    ..
                } => (*amount_cents, Some(*balance_after_cents)),
                Event::BulkTransferBooked {
                    total_cents,
                    balance_after_cents,
                    ..
                } => (-*total_cents, Some(*balance_after_cents)),
                Event::BulkTransferRejected { .. } => (0, None),
                Event::TransferReceived {
                    amount_cents,
                    balance_after_cents,
                    ..
                }
                | Event::TransferReturned {
                    amount_cents,
                    balance_after_cents,
                    ..
                } => (*amount_cents, Some(*balance_after_cents)),
                Event::AccountOpened { .. } => unreachable!("handled above"),
            };
            let computed = account.balance_cents.saturating_add(delta);
            if computed < 0 {
                return Err(FoldError::Overdrawn {
                    event_type,
                    version: next_version,
                    computed,
                });
            }
            if let Some(recorded) = recorded
                && recorded != computed
            {
                return Err(FoldError::BalanceMismatch {
                    event_type,
                    version: next_version,
                    recorded,
                    computed,
                });
            }
            account.balance_cents = computed;
            account.version = next_version;
            Ok(account)
        }
    }
}

/// Folds freshly decided events onto the state they were decided from.
///
/// # Panics
/// When they do not fold: `decide` and `apply` disagreeing is a bug, never
/// an input error.
pub fn evolve(state: Option<Account>, events: &[Event]) -> Account {
    let folded = events
        .iter()
        .try_fold(state, |state, event| apply(state, event).map(Some));
    match folded {
        Ok(Some(account)) => account,
        Ok(None) => panic!("evolve needs an opened account or an AccountOpened event"),
        Err(error) => panic!("decided events do not fold: {error}"),
    }
}

/// Folds a whole stream from the beginning.
pub fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> Result<Option<Account>, FoldError> {
    events
        .into_iter()
        .try_fold(None, |state, event| apply(state, event).map(Some))
}

#[cfg(test)]
mod tests;
