//! A bank-style chaos test, after Jepsen's "bank" workload (issue #15,
//! item 10): concurrent on-us transfers between a few accounts, each with
//! an idempotency key and retried until it has an answer, through two
//! servers on one database, while one server is SIGKILLed and started
//! again and PostgreSQL crashes (`pg_ctl stop -m immediate`) and recovers.
//! At the end the books balance, every acknowledged transfer is booked and
//! credited exactly once, no retry applied anything twice, `ledger audit`
//! agrees, and a consumer of the feed saw every event exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const ACCOUNTS: u64 = 6;
const WORKERS: usize = 6;
const TRANSFERS_PER_WORKER: usize = 40;
const FUNDING_CENTS: i64 = 100_000;
/// Longest a worker keeps retrying one transfer.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// A German IBAN (bank code 37040044) with correct mod-97 check digits.
fn iban(number: u64) -> String {
    let bban = format!("37040044{number:010}");
    // Check digits: 98 - (BBAN + "DE00" as digits) mod 97; D=13, E=14.
    let digits = format!("{bban}131400");
    let remainder = digits.bytes().fold(0u64, |r, b| (r * 10 + u64::from(b - b'0')) % 97);
    format!("DE{:02}{bban}", 98 - remainder)
}

/// A small deterministic generator, one per worker.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// Sends a request to the servers in turn until one gives a definitive
/// answer (anything but a 5xx or no answer): what a client holding an
/// idempotency key does.
async fn until_answered(
    client: &reqwest::Client,
    bases: &RwLock<Vec<String>>,
    first: usize,
    send: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
) -> (u16, Value, u32) {
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        let base = {
            let bases = bases.read().unwrap();
            bases[(first + attempt as usize) % bases.len()].clone()
        };
        attempt += 1;
        if let Ok(response) = send(client, &base).timeout(Duration::from_secs(10)).send().await {
            let (status, body) = into_parts(response).await;
            if status < 500 {
                return (status, body, attempt);
            }
        }
        assert!(started.elapsed() < RETRY_FOR, "no answer for {RETRY_FOR:?}");
        tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(10)))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bank_workload_survives_kills_crashes_and_two_servers() {
    let test_started = Instant::now();
    let mut own = OwnCluster::start("chaos").await;
    let url = own.cluster.url("ledger");
    let envs = [("DATABASE_URL", url.as_str())];
    let mut first = Binary::serve(&envs);
    let second = Binary::serve(&envs);
    let key = first.key.clone().unwrap();
    let client = client_with_key(Some(&key));
    let bases = Arc::new(RwLock::new(vec![first.base.clone(), second.base.clone()]));

    let ibans: Vec<String> = (1..=ACCOUNTS).map(iban).collect();
    for (i, iban) in ibans.iter().enumerate() {
        let (status, body) = into_parts(
            client
                .post(format!("{}/v1/accounts", first.base))
                .json(&json!({"organization_name": format!("Bank client {i}"), "iban": iban, "bic": "COBADEFFXXX"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = into_parts(
            client
                .post(format!("{}/v1/accounts/{iban}/deposits", first.base))
                .json(&json!({"amount": format!("{}.00", FUNDING_CENTS / 100)}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }

    // A consumer of the feed, paging through it for the whole test.
    let feed_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = {
        let (client, bases, done) = (client.clone(), Arc::clone(&bases), Arc::clone(&feed_done));
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = "0".to_owned();
            let mut empty_after_done = 0;
            loop {
                let (status, page, _) = until_answered(&client, &bases, 0, |c, base| {
                    c.get(format!("{base}/v1/events?after={after}&limit=200"))
                })
                .await;
                assert_eq!(status, 200, "{page}");
                let events = page["events"].as_array().unwrap();
                seen.extend(events.iter().map(|e| e["position"].as_i64().unwrap()));
                after = page["next_after"].as_str().unwrap().to_owned();
                if events.is_empty() {
                    if done.load(std::sync::atomic::Ordering::SeqCst) {
                        empty_after_done += 1;
                        if empty_after_done >= 3 {
                            return seen;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };

    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let at = |n: usize| {
        let done = Arc::clone(&done);
        async move {
            while done.load(std::sync::atomic::Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    // The clients: on-us transfers between the accounts, each keyed and
    // retried until answered, through either server.
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (client, bases, ibans, done) = (client.clone(), Arc::clone(&bases), ibans.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let mut random = Lcg(w as u64 + 7);
                let mut answers = Vec::new();
                for t in 0..TRANSFERS_PER_WORKER {
                    let payer = random.next(ACCOUNTS) as usize;
                    let payee = (payer + 1 + random.next(ACCOUNTS - 1) as usize) % ACCOUNTS as usize;
                    let cents = 1 + random.next(30_000) as i64;
                    let idempotency_key = format!("bank-{w}-{t}");
                    let body = json!({
                        "organization_name": format!("Bank client {payer}"), "organization_bic": "COBADEFFXXX",
                        "organization_iban": ibans[payer],
                        "credit_transfers": [{"amount": format!("{}.{:02}", cents / 100, cents % 100), "currency": "EUR",
                            "counterparty_name": format!("Bank client {payee}"), "counterparty_bic": "COBADEFFXXX",
                            "counterparty_iban": ibans[payee], "description": idempotency_key}]});
                    // Half the clients start with each server.
                    let (status, answer, attempts) = until_answered(&client, &bases, w, |c, base| {
                        c.post(format!("{base}/v1/transfer/bulk"))
                            .header("idempotency-key", &idempotency_key)
                            .json(&body)
                    })
                    .await;
                    assert!(status == 201 || status == 422, "{status}: {answer}");
                    answers.push((idempotency_key, status, answer, attempts, cents));
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                answers
            })
        })
        .collect();

    // The chaos, while the clients run: kill a server and start it again;
    // crash PostgreSQL and let it recover.
    let total = WORKERS * TRANSFERS_PER_WORKER;
    at(total / 5).await;
    let _ = first.child.kill();
    let _ = first.child.wait();
    first = Binary::serve(&envs);
    bases.write().unwrap()[0] = first.base.clone();
    at(total / 2).await;
    own.crash_and_recover().await;
    assert!(
        done.load(std::sync::atomic::Ordering::SeqCst) < total,
        "the crash came while the clients were still sending"
    );

    let mut answers = Vec::new();
    for worker in workers {
        answers.extend(worker.await.unwrap());
    }
    let retried = answers.iter().filter(|a| a.3 > 1).count();
    assert!(retried > 0, "the kills interrupted requests that had to be retried");

    // Every on-us transfer credited: nothing in flight, the books balance.
    let deadline = Instant::now() + Duration::from_secs(30);
    let trial = loop {
        let (status, trial, _) = until_answered(&client, &bases, 0, |c, base| {
            c.get(format!("{base}/v1/ledger/trial-balance"))
        })
        .await;
        assert_eq!(status, 200, "{trial}");
        let eur = trial["currencies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["currency"] == "EUR")
            .cloned()
            .unwrap();
        if eur["in_flight_cents"] == 0 {
            break eur;
        }
        assert!(Instant::now() < deadline, "credits still in flight: {trial}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(trial["sum_cents"], 0, "{trial}");
    assert_eq!(
        trial["customers_cents"],
        ACCOUNTS as i64 * FUNDING_CENTS,
        "on-us money stays with the customers"
    );

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(own.cluster.connect_options("ledger"))
        .await
        .unwrap();
    // No retry applied anything twice: one bulk event (booked or refused)
    // per key, and one for every key.
    let decided: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT metadata->>'idempotency_key', count(*) FROM events \
         WHERE event_type IN ('BulkTransferBooked', 'BulkTransferRejected') GROUP BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(decided.len(), answers.len(), "every key decided once");
    assert!(decided.values().all(|n| *n == 1), "a key decided twice: {decided:?}");
    // Every acknowledged transfer booked once and credited once.
    let booked: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT t->>'transfer_id', count(*) FROM events, jsonb_array_elements(data->'transfers') AS t \
         WHERE event_type = 'BulkTransferBooked' GROUP BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let credited: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT data->>'transfer_id', count(*) FROM events WHERE event_type = 'TransferReceived' GROUP BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let acknowledged: Vec<&str> = answers
        .iter()
        .filter(|a| a.1 == 201)
        .map(|a| a.2["transfer_ids"][0].as_str().unwrap())
        .collect();
    assert!(!acknowledged.is_empty());
    for id in &acknowledged {
        assert_eq!(booked.get(*id), Some(&1), "transfer {id} booked once");
        assert_eq!(credited.get(*id), Some(&1), "transfer {id} credited once");
    }
    assert_eq!(
        booked.len(),
        acknowledged.len(),
        "nothing booked that was not acknowledged"
    );
    assert_eq!(credited.len(), acknowledged.len());

    let audit = run_ledger(&["audit"], &[("DATABASE_URL", &url)]);
    assert!(audit.status.success(), "ledger audit: {audit:?}");

    feed_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = consumer.await.unwrap();
    let all: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY tx_id, position")
        .fetch_all(&pool)
        .await
        .unwrap();
    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "the feed delivered an event twice");
    assert_eq!(seen, all, "the feed delivered every event, in commit-safe order");
    eprintln!(
        "bank workload: {} transfers ({} acknowledged, {} refused for funds, {retried} retried), {} events, {:.1} s",
        answers.len(),
        acknowledged.len(),
        answers.len() - acknowledged.len(),
        all.len(),
        test_started.elapsed().as_secs_f64()
    );
    pool.close().await;
    drop(first);
    drop(second);
}
