//! The account aggregate: commands, events, `decide` and `apply`.
//!
//! `decide(state, command)` says what happened (the events) or why nothing
//! may happen (a [`Refusal`]); `apply(state, event)` folds one event into the
//! state. A refused bulk is still a fact worth recording: `decide` returns a
//! [`Event::BulkTransferRejected`] for it, which changes no balance.

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
    pub organization_bic: Bic,
    pub transfers: Vec<TransferLine>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferLine {
    pub transfer_id: Uuid,
    pub amount_cents: i64,
    pub currency: Currency,
    pub counterparty_name: String,
    pub counterparty_iban: Iban,
    pub counterparty_bic: Bic,
    pub description: String,
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
    pub counterparty_bic: Bic,
    pub description: String,
}

impl Event {
    pub const SCHEMA_VERSION: i32 = 1;

    pub fn event_type(&self) -> &'static str {
        match self {
            Event::AccountOpened { .. } => "AccountOpened",
            Event::FundsDeposited { .. } => "FundsDeposited",
            Event::BulkTransferBooked { .. } => "BulkTransferBooked",
            Event::BulkTransferRejected { .. } => "BulkTransferRejected",
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
    if bulk.organization_name != account.organization_name || bulk.organization_bic != account.bic {
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
            })
            .collect(),
    }])
}

/// An event that cannot follow the state it is applied to: the stream is
/// corrupt (or the fold has a bug). Audit reports it; the write path never
/// produces it.
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
mod tests {
    use super::*;
    use crate::domain::IbanCheck;
    use proptest::prelude::*;

    // Given/when/then: given past events, when a command, then these events
    // or this refusal. No database, no mocks.
    struct Given(Vec<Event>);

    fn given(events: Vec<Event>) -> Given {
        Given(events)
    }

    impl Given {
        fn when(self, command: Command) -> Result<Vec<Event>, Refusal> {
            let state = replay(&self.0).expect("given events fold");
            let result = decide(state.as_ref(), &command);
            // Pair assertion: whatever decide returns must fold cleanly.
            if let Ok(events) = &result {
                let mut all = self.0.clone();
                all.extend(events.iter().cloned());
                replay(&all).expect("decided events fold");
            }
            result
        }
    }

    fn iban(text: &str) -> Iban {
        Iban::parse(text, IbanCheck::Structure).unwrap()
    }

    fn acme_id() -> Uuid {
        Uuid::from_u128(1)
    }

    fn opened() -> Event {
        Event::AccountOpened {
            account_id: acme_id(),
            organization_name: "ACME Corp".into(),
            iban: iban("FR10474608000002006107XXXXX"),
            bic: Bic::parse("OIVUSCLQXXX").unwrap(),
            currency: Currency::EUR,
        }
    }

    fn deposited(amount_cents: i64, balance_after_cents: i64) -> Event {
        Event::FundsDeposited {
            deposit_id: Uuid::from_u128(100 + amount_cents as u128),
            amount_cents,
            currency: Currency::EUR,
            reference: None,
            balance_after_cents,
        }
    }

    fn line(id: u128, amount_cents: i64) -> TransferLine {
        TransferLine {
            transfer_id: Uuid::from_u128(id),
            amount_cents,
            currency: Currency::EUR,
            counterparty_name: "Bip Bip".into(),
            counterparty_iban: iban("EE383680981021245685"),
            counterparty_bic: Bic::parse("CRLYFRPPTOU").unwrap(),
            description: "Wonderland/4410".into(),
        }
    }

    fn bulk(lines: Vec<TransferLine>) -> Command {
        Command::TransferBulk(TransferBulkCommand {
            bulk_id: Uuid::from_u128(42),
            organization_name: "ACME Corp".into(),
            organization_bic: Bic::parse("OIVUSCLQXXX").unwrap(),
            transfers: lines,
        })
    }

    fn deposit(amount_cents: i64) -> Command {
        Command::Deposit(DepositCommand {
            deposit_id: Uuid::from_u128(7),
            amount_cents,
            currency: Currency::EUR,
            reference: Some("seed".into()),
        })
    }

    #[test]
    fn opening_an_account_records_its_identity_with_a_zero_balance() {
        let events = given(vec![])
            .when(Command::OpenAccount(OpenAccountCommand {
                account_id: acme_id(),
                organization_name: "ACME Corp".into(),
                iban: iban("FR10474608000002006107XXXXX"),
                bic: Bic::parse("OIVUSCLQXXX").unwrap(),
                currency: Currency::EUR,
            }))
            .unwrap();
        assert_eq!(events, vec![opened()]);
        assert_eq!(replay(&events).unwrap().unwrap().balance_cents, 0);
    }

    #[test]
    fn opening_twice_is_refused() {
        let command = Command::OpenAccount(OpenAccountCommand {
            account_id: Uuid::from_u128(9),
            organization_name: "Other".into(),
            iban: iban("FR10474608000002006107XXXXX"),
            bic: Bic::parse("OIVUSCLQXXX").unwrap(),
            currency: Currency::EUR,
        });
        assert_eq!(given(vec![opened()]).when(command), Err(Refusal::AlreadyOpen));
    }

    #[test]
    fn a_deposit_credits_the_account() {
        let events = given(vec![opened()]).when(deposit(10_000_000)).unwrap();
        assert!(matches!(
            events[..],
            [Event::FundsDeposited {
                balance_after_cents: 10_000_000,
                ..
            }]
        ));
    }

    #[test]
    fn a_deposit_in_another_currency_is_refused() {
        let command = Command::Deposit(DepositCommand {
            deposit_id: Uuid::from_u128(7),
            amount_cents: 100,
            currency: Currency::parse("USD").unwrap(),
            reference: None,
        });
        assert!(matches!(
            given(vec![opened()]).when(command),
            Err(Refusal::CurrencyMismatch { .. })
        ));
    }

    #[test]
    fn commands_on_a_missing_account_are_refused() {
        assert_eq!(given(vec![]).when(deposit(100)), Err(Refusal::AccountNotFound));
        assert_eq!(
            given(vec![]).when(bulk(vec![line(1, 1)])),
            Err(Refusal::AccountNotFound)
        );
    }

    #[test]
    fn the_seed_bulk_is_booked_whole_and_leaves_37748_50() {
        let events = given(vec![opened(), deposited(10_000_000, 10_000_000)])
            .when(bulk(vec![line(1, 1_450), line(2, 6_123_800), line(3, 99_900)]))
            .unwrap();
        match &events[..] {
            [
                Event::BulkTransferBooked {
                    total_cents,
                    balance_after_cents,
                    transfers,
                    ..
                },
            ] => {
                assert_eq!(*total_cents, 6_225_150);
                assert_eq!(*balance_after_cents, 3_774_850);
                let ids: Vec<_> = transfers.iter().map(|t| t.transfer_id).collect();
                assert_eq!(
                    ids,
                    vec![Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3)],
                    "request order"
                );
            }
            other => panic!("expected one booked bulk, got {other:?}"),
        }
    }

    #[test]
    fn a_bulk_the_balance_cannot_cover_is_recorded_as_rejected_and_moves_nothing() {
        let history = vec![opened(), deposited(10_000_000, 10_000_000)];
        let events = given(history.clone())
            .when(bulk(vec![line(1, 6_200_000), line(2, 3_800_001)]))
            .unwrap();
        assert_eq!(
            events,
            vec![Event::BulkTransferRejected {
                bulk_id: Uuid::from_u128(42),
                reason: "insufficient_funds".into(),
                currency: Currency::EUR,
                requested_cents: 10_000_001,
                available_cents: 10_000_000,
                transfer_count: 2,
            }]
        );
        let mut all = history;
        all.extend(events);
        assert_eq!(replay(&all).unwrap().unwrap().balance_cents, 10_000_000);
    }

    #[test]
    fn a_bulk_that_spends_exactly_the_balance_is_booked() {
        let events = given(vec![opened(), deposited(300, 300)])
            .when(bulk(vec![line(1, 300)]))
            .unwrap();
        assert!(matches!(
            events[..],
            [Event::BulkTransferBooked {
                balance_after_cents: 0,
                ..
            }]
        ));
    }

    #[test]
    fn a_bulk_for_another_organization_or_bic_is_refused() {
        let mut command = bulk(vec![line(1, 1)]);
        if let Command::TransferBulk(b) = &mut command {
            b.organization_name = "ACME Inc".into();
        }
        assert_eq!(given(vec![opened()]).when(command), Err(Refusal::OrganizationMismatch));
        let mut command = bulk(vec![line(1, 1)]);
        if let Command::TransferBulk(b) = &mut command {
            b.organization_bic = Bic::parse("DEUTDEFF").unwrap();
        }
        assert_eq!(given(vec![opened()]).when(command), Err(Refusal::OrganizationMismatch));
    }

    #[test]
    fn a_transfer_in_another_currency_is_refused_naming_its_index() {
        let mut usd = line(2, 100);
        usd.currency = Currency::parse("USD").unwrap();
        let refusal = given(vec![opened(), deposited(1_000, 1_000)]).when(bulk(vec![line(1, 100), usd]));
        assert!(matches!(
            refusal,
            Err(Refusal::CurrencyMismatch {
                transfer_index: Some(1),
                ..
            })
        ));
    }

    #[test]
    fn an_empty_bulk_is_refused() {
        assert_eq!(given(vec![opened()]).when(bulk(vec![])), Err(Refusal::EmptyBulk));
    }

    #[test]
    fn deposits_cannot_overflow_the_balance() {
        let history = vec![opened(), deposited(i64::MAX - 5, i64::MAX - 5)];
        assert_eq!(given(history).when(deposit(6)), Err(Refusal::BalanceLimit));
    }

    #[test]
    fn the_fold_detects_a_recorded_balance_that_does_not_add_up() {
        let result = replay(&[opened(), deposited(100, 101)]);
        assert!(matches!(
            result,
            Err(FoldError::BalanceMismatch {
                version: 2,
                recorded: 101,
                computed: 100,
                ..
            })
        ));
        assert!(matches!(
            replay(&[deposited(100, 100)]),
            Err(FoldError::NotOpened { version: 1, .. })
        ));
        assert!(matches!(
            replay(&[opened(), opened()]),
            Err(FoldError::OpenedTwice { version: 2 })
        ));
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        let event = Event::BulkTransferBooked {
            bulk_id: Uuid::from_u128(5),
            currency: Currency::EUR,
            total_cents: 1,
            balance_after_cents: 2,
            transfers: vec![TransferBooked {
                transfer_id: Uuid::from_u128(6),
                amount_cents: 1,
                currency: Currency::EUR,
                counterparty_name: "Bip Bip".into(),
                counterparty_iban: iban("EE383680981021245685"),
                counterparty_bic: Bic::parse("CRLYFRPPTOU").unwrap(),
                description: "x".into(),
            }],
        };
        let stored = event.data();
        assert_eq!(stored["transfers"][0]["currency"], "EUR");
        assert_eq!(Event::from_stored(event.event_type(), stored).unwrap(), event);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Deposit(i64),
        Bulk(Vec<i64>),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1_i64..1_000_000).prop_map(Step::Deposit),
            prop::collection::vec(1_i64..500_000, 1..8).prop_map(Step::Bulk),
        ]
    }

    proptest! {
        /// No sequence of commands takes a balance below zero, and the balance
        /// is always deposits minus accepted transfers.
        #[test]
        fn balances_never_go_negative_and_money_is_conserved(steps in prop::collection::vec(step(), 0..60)) {
            let mut events = vec![opened()];
            let mut state = replay(&events).unwrap();
            let (mut deposited_total, mut transferred_total) = (0_i64, 0_i64);
            for (i, step) in steps.into_iter().enumerate() {
                let command = match step {
                    Step::Deposit(amount) => deposit(amount),
                    Step::Bulk(amounts) => bulk(amounts.iter().enumerate().map(|(j, a)| line((i * 100 + j) as u128, *a)).collect()),
                };
                let new_events = decide(state.as_ref(), &command).unwrap();
                for event in &new_events {
                    match event {
                        Event::FundsDeposited { amount_cents, .. } => deposited_total += amount_cents,
                        Event::BulkTransferBooked { total_cents, .. } => transferred_total += total_cents,
                        _ => {}
                    }
                    state = Some(apply(state, event).unwrap());
                }
                events.extend(new_events);
                let balance = state.as_ref().unwrap().balance_cents;
                prop_assert!(balance >= 0);
                prop_assert_eq!(balance, deposited_total - transferred_total);
            }
            // Replaying the whole stream from scratch gives the same state as
            // applying it step by step.
            prop_assert_eq!(replay(&events).unwrap(), state);
        }
    }
}
