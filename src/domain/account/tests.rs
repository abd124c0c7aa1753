//! Given/when/then tests and properties of the account aggregate.

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
