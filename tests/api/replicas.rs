//! Read replicas (issue #16, SPEC §8): queries served by a real streaming
//! standby (`pg_basebackup -R`, started beside a throw-away primary),
//! through the real binary with `LEDGER_READ_DATABASE_URL`. A read given
//! `min_position` sees its own write, including the posting process's
//! credit, whether the standby answers it or the primary does; a stopped
//! standby or one whose replay is paused costs nothing but the fallback to
//! the primary, and comes back into rotation when healthy.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const PAYEE_IBAN: &str = "DE89370400440532013000";

/// The value of one sample of `/metrics` (0 when absent).
async fn metric(binary: &Binary, sample: &str) -> f64 {
    metric_sample(binary, sample).await.unwrap_or(0.0)
}

async fn readyz(binary: &Binary) -> Value {
    let (status, body) = into_parts(
        binary
            .client
            .get(format!("{}/readyz", binary.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `/readyz` (bounded) until the one replica's `up` is `up`.
async fn until_replica(binary: &Binary, up: bool) -> Value {
    let started = Instant::now();
    loop {
        let body = readyz(binary).await;
        if body["replicas"][0]["up"] == up {
            return body["replicas"][0].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "replica never up={up}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(binary: &Binary, path: &str, body: &Value) -> Value {
    let (status, answer) = into_parts(
        binary
            .client
            .post(format!("{}{path}", binary.base))
            .json(body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(status == 201, "{path}: {status} {answer}");
    answer
}

async fn get(binary: &Binary, path: &str) -> Value {
    let (status, answer) = into_parts(
        binary
            .client
            .get(format!("{}{path}", binary.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{path}: {answer}");
    answer
}

fn pay_payee(amount: &str) -> Value {
    json!({"amount": amount, "currency": "EUR", "counterparty_name": "Globex GmbH",
           "counterparty_bic": "COBADEFFXXX", "counterparty_iban": PAYEE_IBAN, "description": "Invoice"})
}

/// A deposit on ACME, then a read of ACME with its position; an on-us
/// transfer to the payee, then a read of the payee with its position.
/// Every read must reflect its write exactly. Returns the next expected
/// balances.
async fn write_then_read(binary: &Binary, acme_cents: &mut i64, payee_cents: &mut i64) {
    let deposit = post(
        binary,
        &format!("/v1/accounts/{ACME_IBAN}/deposits"),
        &json!({"amount": "2.00"}),
    )
    .await;
    *acme_cents += 200;
    let position = deposit["position"].as_i64().unwrap();
    let account = get(binary, &format!("/v1/accounts/{ACME_IBAN}?min_position={position}")).await;
    assert_eq!(
        account["balance_cents"], *acme_cents,
        "the deposit at {position} is read back"
    );

    let booked = post(binary, "/v1/transfer/bulk", &bulk(vec![pay_payee("1.00")])).await;
    *acme_cents -= 100;
    *payee_cents += 100;
    let position = booked["position"].as_i64().unwrap();
    let payee = get(binary, &format!("/v1/accounts/{PAYEE_IBAN}?min_position={position}")).await;
    assert_eq!(
        payee["balance_cents"], *payee_cents,
        "the credit of {position} is read back"
    );
    let page = get(
        binary,
        &format!("/v1/accounts/{PAYEE_IBAN}/transactions?min_position={position}"),
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len() as i64, *payee_cents / 100);
    let trial = get(binary, &format!("/v1/ledger/trial-balance?min_position={position}")).await;
    assert_eq!(trial["currencies"][0]["sum_cents"], 0, "{trial}");
    assert_eq!(trial["currencies"][0]["in_flight_cents"], 0, "{trial}");
}

const REPLICA_READS: &str = "ledger_reads_total{source=\"replica\"}";
const PRIMARY_READS: &str = "ledger_reads_total{source=\"primary\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_serves_min_position_reads_and_the_primary_covers_for_it_when_down() {
    let primary = OwnCluster::start("replica-primary").await;
    let mut standby = primary.standby("replica-standby").await;
    let (primary_url, standby_url) = (primary.cluster.url("ledger"), standby.cluster.url("ledger"));
    let binary = Binary::serve(&[
        ("DATABASE_URL", primary_url.as_str()),
        ("LEDGER_READ_DATABASE_URL", standby_url.as_str()),
        ("LEDGER_READ_REPLICA_CHECK_MS", "100"),
        ("LEDGER_IBAN_CHECK", "structure"),
    ]);
    open_acme(&binary.client, &binary.base, 100_000).await;
    post(
        &binary,
        "/v1/accounts",
        &json!({"organization_name": "Globex GmbH", "iban": PAYEE_IBAN, "bic": "COBADEFFXXX", "currency": "EUR"}),
    )
    .await;
    let replica = until_replica(&binary, true).await;
    assert!(replica["lag_bytes"].as_i64().is_some(), "{replica}");

    // The standby serves the reads, and each one sees its write.
    let (mut acme, mut payee) = (100_000, 0);
    let before = metric(&binary, REPLICA_READS).await;
    for _ in 0..10 {
        write_then_read(&binary, &mut acme, &mut payee).await;
    }
    let served = metric(&binary, REPLICA_READS).await - before;
    assert!(served >= 30.0, "the standby answered {served} of the 40 reads");

    // A query without min_position goes to the standby too: the feed.
    let before = metric(&binary, REPLICA_READS).await;
    let feed = get(&binary, "/v1/events?limit=500").await;
    assert!(!feed["events"].as_array().unwrap().is_empty());
    assert_eq!(metric(&binary, REPLICA_READS).await - before, 1.0);

    // Standby stopped: reads go on at once (the primary answers), and the
    // standby leaves the rotation with a reason.
    standby.cluster.stop().unwrap();
    let before = metric(&binary, PRIMARY_READS).await;
    for _ in 0..5 {
        write_then_read(&binary, &mut acme, &mut payee).await;
    }
    assert!(metric(&binary, PRIMARY_READS).await - before >= 20.0);
    let down = until_replica(&binary, false).await;
    assert!(down["reason"].as_str().is_some_and(|r| !r.is_empty()), "{down}");

    // Started again, it catches up and comes back into rotation.
    standby.start_after_stop().await;
    until_replica(&binary, true).await;
    let before = metric(&binary, REPLICA_READS).await;
    for _ in 0..5 {
        write_then_read(&binary, &mut acme, &mut payee).await;
    }
    assert!(metric(&binary, REPLICA_READS).await - before >= 15.0);
    assert_eq!(
        get(&binary, &format!("/v1/accounts/{ACME_IBAN}")).await["balance_cents"],
        acme
    );
}

/// Replay paused on the standby (`pg_wal_replay_pause()`): it is still up,
/// but behind. A read given `min_position` waits on it for
/// `LEDGER_READ_REPLICA_WAIT_MS`, then the primary answers: never older
/// than the position. Past `LEDGER_READ_REPLICA_MAX_LAG_BYTES` it leaves
/// the rotation; replay resumed, it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_standby_never_answers_older_than_min_position_and_leaves_the_rotation() {
    let primary = OwnCluster::start("lag-primary").await;
    let standby = primary.standby("lag-standby").await;
    let (primary_url, standby_url) = (primary.cluster.url("ledger"), standby.cluster.url("ledger"));
    let binary = Binary::serve(&[
        ("DATABASE_URL", primary_url.as_str()),
        ("LEDGER_READ_DATABASE_URL", standby_url.as_str()),
        ("LEDGER_READ_REPLICA_CHECK_MS", "100"),
        ("LEDGER_READ_REPLICA_WAIT_MS", "100"),
        ("LEDGER_READ_REPLICA_MAX_LAG_BYTES", "1000000"),
        ("LEDGER_IBAN_CHECK", "structure"),
    ]);
    open_acme(&binary.client, &binary.base, 100_000).await;
    post(
        &binary,
        "/v1/accounts",
        &json!({"organization_name": "Globex GmbH", "iban": PAYEE_IBAN, "bic": "COBADEFFXXX", "currency": "EUR"}),
    )
    .await;
    until_replica(&binary, true).await;

    let standby_pool = sqlx::PgPool::connect(&standby_url).await.unwrap();
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&standby_pool)
        .await
        .unwrap();
    let before = metric(&binary, "ledger_read_replica_fallbacks_total{reason=\"behind\"}").await;
    let (mut acme, mut payee) = (100_000, 0);
    for _ in 0..3 {
        write_then_read(&binary, &mut acme, &mut payee).await;
    }
    let behind = metric(&binary, "ledger_read_replica_fallbacks_total{reason=\"behind\"}").await - before;
    assert!(behind >= 1.0, "the paused standby was waited on, then passed over");

    // Enough WAL to pass the bound: big bulks to external payees.
    let transfers: Vec<Value> = (0..1_000).map(|_| transfer("0.01")).collect();
    for _ in 0..8 {
        post(&binary, "/v1/transfer/bulk", &bulk(transfers.clone())).await;
        acme -= 1_000;
    }
    let out = until_replica(&binary, false).await;
    assert!(out["reason"].as_str().unwrap().contains("behind the primary"), "{out}");
    assert!(out["lag_bytes"].as_i64().unwrap() > 1_000_000, "{out}");
    // Out of rotation, it is not even waited on.
    write_then_read(&binary, &mut acme, &mut payee).await;

    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&standby_pool)
        .await
        .unwrap();
    until_replica(&binary, true).await;
    // Back in rotation, it serves reads again. Each read waits for it only
    // 100 ms here, which a loaded machine's replay can overrun (the primary
    // then answers, exactly): a few rounds, not one (CI, fresh clone).
    let before = metric(&binary, REPLICA_READS).await;
    let mut served = 0.0;
    for _ in 0..10 {
        write_then_read(&binary, &mut acme, &mut payee).await;
        served = metric(&binary, REPLICA_READS).await - before;
        if served >= 3.0 {
            break;
        }
    }
    assert!(
        served >= 3.0,
        "the standby, back in rotation, answered {served} reads of up to 40"
    );
    standby_pool.close().await;
}
