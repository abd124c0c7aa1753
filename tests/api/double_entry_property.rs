//! Property (SPEC §9): for any sequence of deposits and bulks over several
//! accounts — paying each other, another bank, an account in another
//! currency, some refused for lack of funds — with the posting process
//! running now and then, once it has caught up: per currency every part of
//! the books sums to zero, every on-us transfer has exactly one credit or
//! one return (a credit when the currencies agree), and replaying each
//! stream gives the projections.

use std::collections::{HashMap, HashSet};

use ledger::app::auth::Principal;
use ledger::app::requests::{BulkTransferRequest, CreditTransferRequest, DepositRequest, OpenAccountRequest};
use ledger::app::{CommandContext, Ledger};
use ledger::domain::{Amount, Bic, Currency, Event, Iban, IbanCheck};
use proptest::prelude::*;

use crate::support::*;

/// Three euro accounts, one in pounds, and (last) an IBAN of another bank.
const IBANS: [&str; 5] = [
    "DE89370400440532013000",
    "FR1420041010050500013M02606",
    "NL91ABNA0417164300",
    "GB29NWBK60161331926819",
    "BE68539007547034",
];
const OPENABLE: usize = 4;

fn currency_of(index: usize) -> Currency {
    if index == 3 {
        Currency::parse("GBP").unwrap()
    } else {
        Currency::EUR
    }
}

#[derive(Debug, Clone)]
enum Op {
    Open(usize),
    Deposit(usize, i64),
    /// From an account, (payee index, cents) transfers.
    Bulk(usize, Vec<(usize, i64)>),
    /// The posting process catches up now.
    Post,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..OPENABLE).prop_map(Op::Open),
        3 => (0..OPENABLE, 1_i64..50_000).prop_map(|(a, c)| Op::Deposit(a, c)),
        5 => (0..OPENABLE, prop::collection::vec((0..IBANS.len(), 1_i64..20_000), 1..5))
            .prop_map(|(a, t)| Op::Bulk(a, t)),
        1 => Just(Op::Post),
    ]
}

fn iban(index: usize) -> Iban {
    Iban::parse(IBANS[index], IbanCheck::Full).unwrap()
}

async fn apply(ledger: &Ledger, op: &Op) {
    let context = CommandContext {
        principal: Principal::operator(),
        request_id: String::new(),
        idempotency_key: None,
    };
    // Refusals (unknown account, already open, insufficient funds) are part
    // of the property; a transfer to the payer itself is left out (the
    // parser refuses it).
    match op {
        Op::Open(a) => {
            let request = OpenAccountRequest {
                organization_name: format!("Org {a}"),
                iban: iban(*a),
                bic: Bic::parse("COBADEFFXXX").unwrap(),
                currency: currency_of(*a),
            };
            let _ = ledger.open_account(&context, request).await;
        }
        Op::Deposit(a, cents) => {
            let request = DepositRequest {
                amount: Amount::parse(&format!("{}.{:02}", cents / 100, cents % 100)).unwrap(),
                currency: None,
                reference: None,
            };
            let _ = ledger.deposit(&context, &iban(*a), request).await;
        }
        Op::Bulk(a, transfers) => {
            let credit_transfers: Vec<CreditTransferRequest> = transfers
                .iter()
                .filter(|(payee, _)| payee != a)
                .map(|(payee, cents)| CreditTransferRequest {
                    amount_cents: *cents,
                    currency: currency_of(*a),
                    counterparty_name: format!("Org {payee}"),
                    counterparty_bic: Some(Bic::parse("COBADEFFXXX").unwrap()),
                    counterparty_iban: iban(*payee),
                    description: format!("{cents}"),
                    end_to_end_id: None,
                })
                .collect();
            if credit_transfers.is_empty() {
                return;
            }
            let request = BulkTransferRequest {
                organization_name: format!("Org {a}"),
                organization_bic: Some(Bic::parse("COBADEFFXXX").unwrap()),
                organization_iban: iban(*a),
                credit_transfers,
            };
            let _ = ledger.transfer_bulk(&context, request).await;
        }
        Op::Post => {
            ledger::posting::catch_up(ledger.pool()).await.unwrap();
        }
    }
}

/// What the log says, folded independently of the posting process and the
/// audit: for each booked transfer to an account open before its bulk, the
/// legs it got, and whether they should be a credit. (A payee opened after
/// the bulk may or may not have been seen by the posting process in time:
/// such a transfer may have one leg, never more.)
fn legs_owed(events: &[ledger::event_store::FeedEvent]) -> Vec<(String, bool, Vec<&'static str>)> {
    let mut open: HashMap<String, Currency> = HashMap::new();
    let mut legs: HashMap<String, Vec<&'static str>> = HashMap::new();
    let mut owed = Vec::new();
    let mut to_accounts_opened_later: Vec<(String, String)> = Vec::new();
    for stored in events {
        match stored.event.to_event().unwrap() {
            Event::AccountOpened { iban, currency, .. } => {
                open.insert(iban.to_string(), currency);
            }
            Event::BulkTransferBooked { transfers, .. } => {
                for transfer in transfers {
                    match open.get(transfer.counterparty_iban.as_str()) {
                        Some(payee_currency) => {
                            owed.push((transfer.transfer_id.to_string(), *payee_currency == transfer.currency))
                        }
                        None => to_accounts_opened_later
                            .push((transfer.transfer_id.to_string(), transfer.counterparty_iban.to_string())),
                    }
                }
            }
            Event::TransferReceived { transfer_id, .. } => {
                legs.entry(transfer_id.to_string()).or_default().push("received")
            }
            Event::TransferReturned { transfer_id, .. } => {
                legs.entry(transfer_id.to_string()).or_default().push("returned")
            }
            _ => {}
        }
    }
    let owed_ids: HashSet<&String> = owed.iter().map(|(id, _)| id).collect();
    for (id, got) in &legs {
        if owed_ids.contains(id) {
            continue;
        }
        let payee = to_accounts_opened_later
            .iter()
            .find(|(t, _)| t == id)
            .map(|(_, iban)| iban);
        assert!(
            payee.is_some_and(|iban| open.contains_key(iban)),
            "transfer {id} got {got:?} but its payee is no account here"
        );
        assert_eq!(got.len(), 1, "transfer {id} got {got:?}");
    }
    owed.into_iter()
        .map(|(id, credit)| {
            let got = legs.get(&id).cloned().unwrap_or_default();
            (id, credit, got)
        })
        .collect()
}

/// The whole log through the feed. The feed is conservative: a
/// transaction that has just taken its id in another database (another
/// test's) can hold its horizon back for a moment, so one page may stop
/// short of the last events; read until it holds every committed event.
async fn whole_feed(pool: &sqlx::PgPool) -> Vec<ledger::event_store::FeedEvent> {
    let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let events = ledger::event_store::read_feed(pool, ledger::event_store::FeedCursor::START, i64::MAX)
            .await
            .unwrap();
        if events.len() as i64 == committed {
            return events;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the feed holds {} of {committed} events",
            events.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn the_books_balance_and_every_on_us_transfer_is_posted_once(ops in prop::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (balance, owed, differences, audits) = runtime.block_on(async {
            let db = TestDb::new().await;
            let pool = db.pool().await;
            let ledger = Ledger::new(pool.clone(), seed_settings());
            for op in &ops {
                apply(&ledger, op).await;
            }
            post_everything(&pool).await;
            let balance = ledger::app::queries::trial_balance(&pool).await.unwrap();
            let events = whole_feed(&pool).await;
            let owed: Vec<(String, bool, Vec<&'static str>)> = legs_owed(&events);
            let differences = ledger::audit::double_entry::differences(&pool, None).await.unwrap();
            let mut audits = Vec::new();
            for account_id in ledger::audit::all_accounts(&pool).await.unwrap() {
                audits.push(ledger::audit::audit_stream(&pool, account_id).await.unwrap());
            }
            pool.close().await;
            (balance, owed, differences, audits)
        });
        for currency in &balance.currencies {
            prop_assert_eq!(currency.sum_cents, 0, "{:?}", currency);
            prop_assert_eq!(currency.in_flight_cents, 0, "{:?}", currency);
        }
        for (id, credit, got) in &owed {
            let expected = if *credit { vec!["received"] } else { vec!["returned"] };
            prop_assert_eq!(got, &expected, "transfer {}", id);
        }
        prop_assert!(differences.is_empty(), "{:?}", differences);
        for audit in audits {
            prop_assert!(audit.consistent && audit.chain_valid, "{:?}", audit.differences);
        }
    }
}

/// A sequence the property once failed on (CI, fresh clone): after the
/// posting process caught up, a bulk was still in flight.
#[tokio::test]
async fn regression_every_bulk_is_passed_after_catching_up() {
    use Op::*;
    let ops = vec![
        Deposit(1, 30905),
        Deposit(3, 11448),
        Deposit(3, 35205),
        Deposit(1, 47349),
        Open(3),
        Deposit(0, 33859),
        Deposit(3, 49751),
        Bulk(0, vec![(1, 12939), (0, 17147), (3, 11181)]),
        Bulk(0, vec![(1, 10533), (0, 12541), (0, 15141), (4, 1508)]),
        Bulk(1, vec![(0, 4429), (4, 6107), (2, 8025), (3, 7900)]),
        Bulk(3, vec![(0, 9210), (2, 15241), (4, 6138), (2, 18362)]),
        Bulk(1, vec![(4, 7167), (2, 3655), (4, 16394)]),
        Deposit(3, 9609),
        Deposit(2, 11820),
        Bulk(0, vec![(4, 11985)]),
        Open(0),
        Deposit(3, 22533),
        Post,
        Deposit(2, 16608),
        Deposit(2, 19248),
        Open(1),
        Deposit(3, 40767),
        Bulk(2, vec![(4, 1212), (0, 17958), (3, 16975), (4, 18605)]),
        Bulk(1, vec![(2, 14662), (4, 904)]),
        Bulk(0, vec![(2, 19855), (3, 10994)]),
        Bulk(3, vec![(4, 7500), (1, 7431), (4, 3260), (1, 15263)]),
        Bulk(0, vec![(4, 14360), (3, 1601), (1, 7986), (3, 12105)]),
        Bulk(3, vec![(0, 8223), (4, 7663)]),
        Bulk(1, vec![(3, 13599), (1, 17072), (3, 15620)]),
        Bulk(2, vec![(1, 17548), (2, 6425)]),
        Deposit(2, 4318),
        Post,
        Open(3),
        Bulk(0, vec![(3, 2310), (3, 2341), (2, 14232)]),
        Open(2),
        Bulk(1, vec![(4, 16771), (1, 11565), (4, 11332), (2, 15592)]),
        Deposit(0, 5457),
        Bulk(3, vec![(4, 3342), (3, 18377), (1, 12448)]),
        Deposit(1, 27394),
    ];
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let ledger = Ledger::new(pool.clone(), seed_settings());
    for op in &ops {
        apply(&ledger, op).await;
    }
    post_everything(&pool).await;
    let balance = ledger::app::queries::trial_balance(&pool).await.unwrap();
    for currency in &balance.currencies {
        assert_eq!(currency.in_flight_cents, 0, "{currency:?}");
        assert_eq!(currency.sum_cents, 0, "{currency:?}");
    }
}
