//! Double entry (SPEC §9) through the real server and its posting process:
//! money paid to an account of this ledger arrives there, exactly once; a
//! payee that cannot take it sends it back; commands on the payee meanwhile
//! lose nothing.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};

use crate::support::*;

const GLOBEX_IBAN: &str = "DE89370400440532013000";
const INITECH_IBAN: &str = "GB82WEST12345698765432";

async fn open(app: &TestApp, name: &str, iban: &str, bic: &str, currency: &str) {
    let (status, body) = app
        .post(
            "/v1/accounts",
            &json!({"organization_name": name, "iban": iban, "bic": bic, "currency": currency}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

fn pay(iban: &str, name: &str, amount: &str, currency: &str) -> Value {
    json!({"amount": amount, "currency": currency, "counterparty_name": name,
           "counterparty_bic": "COBADEFFXXX", "counterparty_iban": iban, "description": "Invoice 2026-12"})
}

/// Polls (bounded) until `done` holds for the account's state.
async fn eventually(app: &TestApp, iban: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, account) = app.get(&format!("/v1/accounts/{iban}")).await;
        assert_eq!(status, 200, "{account}");
        if done(&account) {
            return account;
        }
        assert!(Instant::now() < deadline, "{what} never happened: {account}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn history(app: &TestApp, iban: &str) -> Vec<Value> {
    let (status, page) = app.get(&format!("/v1/accounts/{iban}/transactions?limit=1000")).await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

async fn events_of_type(app: &TestApp, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// A bulk paying an account of the ledger and an outside IBAN: the payee
/// is credited once, with the payer as counterparty and the payer's
/// transfer id; the outside transfer leaves the bank; posting again adds
/// nothing; both accounts audit clean.
#[tokio::test]
async fn an_on_us_transfer_credits_the_payee_exactly_once() {
    let app = TestApp::spawn().await;
    app.acme_with(100_000).await;
    open(&app, "Globex GmbH", GLOBEX_IBAN, "COBADEFFXXX", "EUR").await;
    let (status, booked) = app
        .post(
            "/v1/transfer/bulk",
            &bulk(vec![
                pay(GLOBEX_IBAN, "Globex GmbH", "250.00", "EUR"),
                transfer("10.00"),
            ]),
        )
        .await;
    assert_eq!(status, 201, "{booked}");
    assert_eq!(booked["balance_after_cents"], 100_000 - 26_000);
    let transfer_id = booked["transfer_ids"][0].as_str().unwrap().to_owned();

    eventually(&app, GLOBEX_IBAN, "the credit", |a| a["balance_cents"] == 25_000).await;
    let items = history(&app, GLOBEX_IBAN).await;
    let credit = items
        .iter()
        .find(|i| i["kind"] == "transfer_received")
        .expect("a credit item");
    assert_eq!(credit["transaction_id"], transfer_id.as_str());
    assert_eq!(credit["amount_cents"], 25_000);
    assert_eq!(credit["counterparty_iban"], ACME_IBAN);
    assert_eq!(credit["counterparty_bic"], ACME_BIC);
    assert_eq!(credit["counterparty_name"], ACME_NAME);
    assert_eq!(credit["bulk_id"], booked["bulk_id"]);
    assert_eq!(credit["description"], "Invoice 2026-12");
    assert_eq!(credit["balance_after_cents"], 25_000);

    // Exactly once: one credit in the log, and posting again finds nothing.
    let again = ledger::posting::catch_up(&app.pool).await.unwrap();
    assert_eq!(again.postings, 0);
    assert_eq!(events_of_type(&app, "TransferReceived").await, 1);
    assert_eq!(events_of_type(&app, "TransferReturned").await, 0);
    assert_eq!(app.balance_cents(ACME_IBAN).await, 74_000);
    for iban in [ACME_IBAN, GLOBEX_IBAN] {
        let (status, audit) = app.get(&format!("/v1/accounts/{iban}/audit")).await;
        assert_eq!(status, 200);
        assert_eq!(audit["consistent"], true, "{audit}");
        assert_eq!(audit["chain_valid"], true, "{audit}");
    }
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("ledger_posting_lag_events"), "{metrics}");
}

/// A payee in another currency cannot take a euro transfer: the payer gets
/// it back, once, as a `transfer_returned` item with its reason.
#[tokio::test]
async fn a_payee_in_another_currency_returns_the_transfer() {
    let app = TestApp::spawn().await;
    app.acme_with(50_000).await;
    open(&app, "Initech Ltd", INITECH_IBAN, "NWBKGB2L", "GBP").await;
    let (status, booked) = app
        .post(
            "/v1/transfer/bulk",
            &bulk(vec![pay(INITECH_IBAN, "Initech Ltd", "120.00", "EUR")]),
        )
        .await;
    assert_eq!(status, 201, "{booked}");
    assert_eq!(booked["balance_after_cents"], 38_000);

    eventually(&app, ACME_IBAN, "the return", |a| a["balance_cents"] == 50_000).await;
    let items = history(&app, ACME_IBAN).await;
    let returned = items
        .iter()
        .find(|i| i["kind"] == "transfer_returned")
        .expect("a return item");
    assert_eq!(returned["transaction_id"], booked["transfer_ids"][0]);
    assert_eq!(returned["amount_cents"], 12_000);
    assert_eq!(returned["reason"], "currency_mismatch");
    assert_eq!(returned["counterparty_iban"], INITECH_IBAN);
    assert_eq!(returned["balance_after_cents"], 50_000);
    assert_eq!(app.balance_cents(INITECH_IBAN).await, 0, "the payee got nothing");
    assert_eq!(ledger::posting::catch_up(&app.pool).await.unwrap().postings, 0);
    assert_eq!(events_of_type(&app, "TransferReturned").await, 1);
    assert_eq!(events_of_type(&app, "TransferReceived").await, 0);
}

/// Credits land on a payee that is receiving deposits at the same time
/// (its group commit and the posting process append to one stream): every
/// deposit and every credit counts once, and the stream audits clean.
#[tokio::test]
async fn credits_and_commands_on_one_payee_never_double_apply() {
    let app = TestApp::spawn().await;
    app.acme_with(1_000_000).await;
    open(&app, "Globex GmbH", GLOBEX_IBAN, "COBADEFFXXX", "EUR").await;
    let bulks = (0..20).map(|_| {
        app.client
            .post(app.url("/v1/transfer/bulk"))
            .json(&bulk(vec![
                pay(GLOBEX_IBAN, "Globex GmbH", "1.00", "EUR"),
                pay(GLOBEX_IBAN, "Globex GmbH", "2.00", "EUR"),
            ]))
            .send()
    });
    let deposits = (0..20).map(|_| {
        app.client
            .post(app.url(&format!("/v1/accounts/{GLOBEX_IBAN}/deposits")))
            .json(&json!({"amount": "5.00"}))
            .send()
    });
    let (bulks, deposits) = tokio::join!(join_all(bulks), join_all(deposits));
    for response in bulks.into_iter().chain(deposits) {
        assert_eq!(response.unwrap().status().as_u16(), 201);
    }
    let expected = 20 * 300 + 20 * 500;
    eventually(&app, GLOBEX_IBAN, "every credit", |a| a["balance_cents"] == expected).await;
    assert_eq!(events_of_type(&app, "TransferReceived").await, 40);
    let (_, audit) = app.get(&format!("/v1/accounts/{GLOBEX_IBAN}/audit")).await;
    assert_eq!(audit["consistent"], true, "{audit}");
    assert_eq!(app.balance_cents(ACME_IBAN).await, 1_000_000 - 20 * 300);
}

async fn trial_balance(app: &TestApp) -> Value {
    let (status, balance) = app.get("/v1/ledger/trial-balance").await;
    assert_eq!(status, 200, "{balance}");
    balance
}

fn currency<'a>(balance: &'a Value, code: &str) -> &'a Value {
    balance["currencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["currency"] == code)
        .unwrap_or_else(|| panic!("no {code} in {balance}"))
}

/// The trial balance sums to zero per currency at every moment: with an
/// on-us transfer in flight (the posting process held back by a lock on its
/// checkpoint), and once it is credited; a transfer to another bank sits in
/// clearing. Only admin keys may read it.
#[tokio::test]
async fn the_trial_balance_sums_to_zero_in_flight_and_after() {
    let app = TestApp::spawn().await;
    app.acme_with(100_000).await;
    open(&app, "Globex GmbH", GLOBEX_IBAN, "COBADEFFXXX", "EUR").await;
    let before = trial_balance(&app).await;
    let eur = currency(&before, "EUR");
    assert_eq!(eur["customers_cents"], 100_000);
    assert_eq!(eur["settlement_cents"], -100_000);
    assert_eq!(eur["sum_cents"], 0);

    // Hold the posting process back: it skips its turn while its page lock is taken.
    let mut hold = app.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ledger::posting::PAGE_LOCK)
        .execute(&mut *hold)
        .await
        .unwrap();
    let (status, booked) = app
        .post(
            "/v1/transfer/bulk",
            &bulk(vec![
                pay(GLOBEX_IBAN, "Globex GmbH", "250.00", "EUR"),
                transfer("10.00"),
            ]),
        )
        .await;
    assert_eq!(status, 201, "{booked}");
    let in_flight = trial_balance(&app).await;
    let eur = currency(&in_flight, "EUR");
    assert_eq!(eur["customers_cents"], 74_000, "{in_flight}");
    assert_eq!(eur["in_flight_cents"], 26_000, "{in_flight}");
    assert_eq!(eur["clearing_cents"], 0, "{in_flight}");
    assert_eq!(eur["sum_cents"], 0, "{in_flight}");
    assert_eq!(app.balance_cents(GLOBEX_IBAN).await, 0, "not credited while held");
    hold.rollback().await.unwrap();

    eventually(&app, GLOBEX_IBAN, "the credit", |a| a["balance_cents"] == 25_000).await;
    let after = trial_balance(&app).await;
    let eur = currency(&after, "EUR");
    assert_eq!(eur["customers_cents"], 99_000, "{after}");
    assert_eq!(eur["settlement_cents"], -100_000, "{after}");
    assert_eq!(eur["clearing_cents"], 1_000, "{after}");
    assert_eq!(eur["in_flight_cents"], 0, "{after}");
    assert_eq!(eur["sum_cents"], 0, "{after}");
    assert!(after["position"].as_i64().unwrap() >= in_flight["position"].as_i64().unwrap());

    let account_key = create_key(
        &app.pool,
        ledger::app::auth::Scope::Account(
            ledger::domain::Iban::parse(ACME_IBAN, ledger::domain::IbanCheck::Structure).unwrap(),
        ),
    )
    .await;
    let response = client_with_key(Some(&account_key))
        .get(app.url("/v1/ledger/trial-balance"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
}

/// A credit removed behind the database's back (triggers off), with the
/// projections made to agree with the shortened stream so that only double
/// entry can tell: `ledger audit` exits 1 naming the transfer never
/// credited and the unbalanced books, and the payer's audit is inconsistent.
#[tokio::test]
async fn the_audit_catches_a_removed_credit() {
    let app = TestApp::spawn().await;
    app.acme_with(100_000).await;
    open(&app, "Globex GmbH", GLOBEX_IBAN, "COBADEFFXXX", "EUR").await;
    let (status, booked) = app
        .post(
            "/v1/transfer/bulk",
            &bulk(vec![pay(GLOBEX_IBAN, "Globex GmbH", "250.00", "EUR")]),
        )
        .await;
    assert_eq!(status, 201, "{booked}");
    eventually(&app, GLOBEX_IBAN, "the credit", |a| a["balance_cents"] == 25_000).await;
    let env = [("DATABASE_URL", app.db.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let output = run_ledger(&["audit"], &env);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    let mut tx = app.pool.begin().await.unwrap();
    for statement in [
        "SET LOCAL session_replication_role = replica",
        "DELETE FROM events WHERE event_type = 'TransferReceived'",
        "DELETE FROM transactions WHERE kind = 'transfer_received'",
        "UPDATE balances b SET balance_cents = 0, version = 1, \
             last_position = (SELECT position FROM events e WHERE e.stream_id = b.account_id AND e.version = 1) \
         WHERE iban = 'DE89370400440532013000'",
    ] {
        sqlx::query(statement).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();

    let output = run_ledger(&["audit"], &env);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let transfer_id = booked["transfer_ids"][0].as_str().unwrap();
    assert!(
        stdout.contains(&format!(
            "transfer {transfer_id} to {GLOBEX_IBAN}, an account of this ledger, was never credited or returned"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("DRIFT trial balance EUR"), "{stdout}");
    let (_, audit) = app.get(&format!("/v1/accounts/{ACME_IBAN}/audit")).await;
    assert_eq!(audit["consistent"], false, "{audit}");
    let (_, globex) = app.get(&format!("/v1/accounts/{GLOBEX_IBAN}/audit")).await;
    assert_eq!(
        globex["consistent"], true,
        "the payee's own stream still agrees: {globex}"
    );
    let sum = currency(&trial_balance(&app).await, "EUR")["sum_cents"].clone();
    assert_eq!(sum, -25_000);
}

/// A German IBAN with valid check digits for account `number`.
fn german_iban(number: u64) -> String {
    let bban = format!("37040044{number:010}");
    let digits = format!("{bban}131400");
    let remainder = digits.bytes().fold(0u32, |n, d| (n * 10 + u32::from(d - b'0')) % 97);
    format!("DE{:02}{bban}", 98 - remainder)
}

/// 20 accounts pay each other at random: 400 bulks from 16 clients, spread
/// over two servers on one database (both run the posting process). One
/// server is SIGKILLed midway and started again. Once the posting process
/// has caught up, every acknowledged transfer is credited exactly once,
/// the trial balance sums to zero, and `ledger audit` exits 0.
#[tokio::test]
async fn on_us_credits_are_exactly_once_across_kill_9_and_two_servers() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let db = TestDb::new().await;
    let url = db.url();
    let env = [("DATABASE_URL", url.as_str())];
    let mut first = Binary::serve(&env);
    let second = Binary::serve(&env);
    let accounts: Vec<String> = (0..20).map(|n| german_iban(1_000 + n)).collect();
    for (n, iban) in accounts.iter().enumerate() {
        let response = first
            .client
            .post(format!("{}/v1/accounts", first.base))
            .json(&json!({"organization_name": format!("Org {n}"), "iban": iban, "bic": "COBADEFFXXX"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let response = first
            .client
            .post(format!("{}/v1/accounts/{iban}/deposits", first.base))
            .json(&json!({"amount": "10000.00"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    }

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..16_u64 {
        let bases = [first.base.clone(), second.base.clone()];
        let clients = [first.client.clone(), second.client.clone()];
        let (accounts, acknowledged) = (accounts.clone(), Arc::clone(&acknowledged));
        workers.push(tokio::spawn(async move {
            let mut ids: Vec<String> = Vec::new();
            for round in 0..25_u64 {
                // A fixed pseudo-random walk per worker: reproducible.
                let seed = worker * 1_000 + round;
                let payer = (seed * 7 % 20) as usize;
                let transfers: Vec<Value> = (0..(seed % 3 + 1))
                    .map(|k| {
                        let payee = (payer + 1 + ((seed + k) * 13 % 19) as usize) % 20;
                        pay(
                            &accounts[payee],
                            &format!("Org {payee}"),
                            &format!("{}.00", k + 1),
                            "EUR",
                        )
                    })
                    .collect();
                let body = json!({"organization_name": format!("Org {payer}"), "organization_bic": "COBADEFFXXX",
                                  "organization_iban": accounts[payer], "credit_transfers": transfers});
                let side = (seed % 2) as usize;
                let response = clients[side]
                    .post(format!("{}/v1/transfer/bulk", bases[side]))
                    .json(&body)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                if let Ok(response) = response
                    && response.status().as_u16() == 201
                    && let Ok(booked) = response.json::<Value>().await
                {
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                    ids.extend(
                        booked["transfer_ids"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|id| id.as_str().unwrap().to_owned()),
                    );
                }
            }
            ids
        }));
    }
    // Midway: SIGKILL the first server, then start it again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.load(Ordering::Relaxed) < 120 {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.child.kill().expect("SIGKILL the first server");
    let _ = first.child.wait();
    let restarted = Binary::serve(&env);
    let mut transfer_ids = Vec::new();
    for worker in workers {
        transfer_ids.extend(worker.await.unwrap());
    }
    assert!(
        transfer_ids.len() > 150,
        "enough transfers were acknowledged: {}",
        transfer_ids.len()
    );

    let pool = db.pool().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, lag) = ledger::posting::lag(&pool).await.unwrap();
        if lag == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the posting process never caught up ({lag} behind)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let credits: std::collections::HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT data->>'transfer_id', count(*) FROM events WHERE event_type = 'TransferReceived' GROUP BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    for id in &transfer_ids {
        assert_eq!(
            credits.get(id),
            Some(&1),
            "acknowledged transfer {id} is credited exactly once"
        );
    }
    let returns: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'TransferReturned'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(returns, 0, "every payee holds euros");
    let response = restarted
        .client
        .get(format!("{}/v1/ledger/trial-balance", restarted.base))
        .send()
        .await
        .unwrap();
    let (_, balance) = into_parts(response).await;
    let eur = currency(&balance, "EUR");
    assert_eq!(eur["sum_cents"], 0, "{balance}");
    assert_eq!(eur["in_flight_cents"], 0, "{balance}");
    assert_eq!(
        eur["customers_cents"],
        20 * 1_000_000,
        "no money created or lost: {balance}"
    );
    let output = run_ledger(&["audit"], &[("DATABASE_URL", &url)]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    drop(second);
}

/// Read your writes (SPEC §9): a command's 201 carries the log position of
/// its event; a query given it as `min_position` answers only once the
/// posting process has credited the payee, so the payee's balance, history
/// and the trial balance read right away show the credit. Held back, the
/// wait ends in a 503 after `min_position_wait`; a malformed value is a 400.
#[tokio::test]
async fn min_position_reads_the_credits_of_a_command_back() {
    let app = TestApp::spawn_with(ledger::app::Settings {
        min_position_wait: Duration::from_millis(300),
        ..seed_settings()
    })
    .await;
    app.acme_with(100_000).await;
    open(&app, "Globex GmbH", GLOBEX_IBAN, "COBADEFFXXX", "EUR").await;
    for round in 1..=5 {
        let (status, booked) = app
            .post(
                "/v1/transfer/bulk",
                &bulk(vec![pay(GLOBEX_IBAN, "Globex GmbH", "1.00", "EUR")]),
            )
            .await;
        assert_eq!(status, 201, "{booked}");
        let position = booked["position"]
            .as_i64()
            .expect("a command's 201 carries its position");
        let (status, account) = app
            .get(&format!("/v1/accounts/{GLOBEX_IBAN}?min_position={position}"))
            .await;
        assert_eq!(status, 200, "{account}");
        assert_eq!(account["balance_cents"], 100 * round, "read your writes, round {round}");
        let (_, page) = app
            .get(&format!(
                "/v1/accounts/{GLOBEX_IBAN}/transactions?min_position={position}"
            ))
            .await;
        assert_eq!(page["items"].as_array().unwrap().len(), round as usize);
        let (status, balance) = app
            .get(&format!("/v1/ledger/trial-balance?min_position={position}"))
            .await;
        assert_eq!(status, 200, "{balance}");
        assert_eq!(currency(&balance, "EUR")["in_flight_cents"], 0, "{balance}");
    }

    let mut hold = app.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ledger::posting::PAGE_LOCK)
        .execute(&mut *hold)
        .await
        .unwrap();
    let (_, booked) = app
        .post(
            "/v1/transfer/bulk",
            &bulk(vec![pay(GLOBEX_IBAN, "Globex GmbH", "1.00", "EUR")]),
        )
        .await;
    let position = booked["position"].as_i64().unwrap();
    let response = app
        .client
        .get(app.url(&format!("/v1/accounts/{GLOBEX_IBAN}?min_position={position}")))
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("retry-after").is_some());
    let (status, problem) = into_parts(response).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["type"], "/problems/unavailable", "{problem}");
    hold.rollback().await.unwrap();
    let (status, account) = app
        .get(&format!("/v1/accounts/{GLOBEX_IBAN}?min_position={position}"))
        .await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["balance_cents"], 600);

    let (status, problem) = app.get(&format!("/v1/accounts/{GLOBEX_IBAN}?min_position=soon")).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "min_position");
    // A replay answers the same position.
    let response = app
        .client
        .post(app.url(&format!("/v1/accounts/{ACME_IBAN}/deposits")))
        .header("Idempotency-Key", "position-replay")
        .json(&json!({"amount": "1.00"}))
        .send()
        .await
        .unwrap();
    let (_, first) = into_parts(response).await;
    let response = app
        .client
        .post(app.url(&format!("/v1/accounts/{ACME_IBAN}/deposits")))
        .header("Idempotency-Key", "position-replay")
        .json(&json!({"amount": "1.00"}))
        .send()
        .await
        .unwrap();
    let (_, again) = into_parts(response).await;
    assert!(first["position"].as_i64().is_some(), "{first}");
    assert_eq!(again, first);
}

/// Bulks that land while the posting process is held back make one long
/// page: it stops before the bulk that would take it past its transfer
/// bound (a bulk is never split), and the next page posts the rest. Then
/// the checkpoint is moved back to the beginning by hand: posting passes
/// what already has its credit instead of failing on the unique leg for
/// ever, and appends nothing.
#[tokio::test]
async fn long_pages_are_cut_between_bulks_and_a_rewound_checkpoint_posts_nothing_twice() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000_000).await;
    open(&app, "Globex GmbH", GLOBEX_IBAN, "COBADEFFXXX", "EUR").await;

    // Hold the page lock: the server's posting process skips its turns.
    let mut hold = app.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ledger::posting::PAGE_LOCK)
        .execute(&mut *hold)
        .await
        .unwrap();
    for _ in 0..2 {
        let payroll: Vec<Value> = (0..3_000)
            .map(|_| pay(GLOBEX_IBAN, "Globex GmbH", "1.00", "EUR"))
            .collect();
        let (status, body) = app.post("/v1/transfer/bulk", &bulk(payroll)).await;
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(app.balance_cents(GLOBEX_IBAN).await, 0, "nothing posted while held");
    hold.rollback().await.unwrap();

    eventually(&app, GLOBEX_IBAN, "both bulks' credits", |a| {
        a["balance_cents"] == 600_000
    })
    .await;
    assert_eq!(events_of_type(&app, "TransferReceived").await, 6_000);

    sqlx::query("UPDATE process_checkpoints SET checkpoint_tx = 0, checkpoint_position = 0 WHERE name = 'posting'")
        .execute(&app.pool)
        .await
        .unwrap();
    // The server's process and this one take turns on the checkpoint; it
    // must reach the end of the log again, appending nothing on the way.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        ledger::posting::catch_up(&app.pool).await.unwrap();
        let lag: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events e, process_checkpoints c WHERE c.name = 'posting' \
             AND (e.tx_id, e.position) > (c.checkpoint_tx::text::xid8, c.checkpoint_position)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if lag == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rewound checkpoint is stuck {lag} events behind"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(events_of_type(&app, "TransferReceived").await, 6_000);
    let (status, audit) = app.get(&format!("/v1/accounts/{GLOBEX_IBAN}/audit")).await;
    assert_eq!(status, 200);
    assert_eq!(audit["consistent"], true, "{audit}");
}
