//! Concurrent commands on one account never overdraw it.

use futures::future::join_all;

use crate::support::*;

/// 60 concurrent single-transfer bulks of 3.00 against 100.00: exactly 33
/// fit, 27 are refused, and 1.00 remains.
#[tokio::test]
async fn sixty_concurrent_bulks_of_3_against_100_accept_exactly_33() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    let body = bulk(vec![transfer("3.00")]);
    let responses = join_all((0..60).map(|_| app.client.post(app.url("/v1/transfer/bulk")).json(&body).send())).await;
    let statuses: Vec<u16> = responses.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 33, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 422).count(), 27, "{statuses:?}");
    assert_eq!(app.balance_cents(ACME_IBAN).await, 100);
    // The stream is gapless: open, deposit, and one event per bulk.
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM events ORDER BY version")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(versions, (1..=62).collect::<Vec<i64>>());
}

/// Two ledgers sharing one database (as two processes would) on one hot
/// account: optimistic concurrency keeps the balance exact.
#[tokio::test]
async fn two_ledgers_on_one_database_never_overdraw() {
    let first = TestApp::spawn().await;
    first.acme_with(10_000).await;
    // A second, independent ledger over the same database.
    let pool = first.db.pool().await;
    let ledger = std::sync::Arc::new(ledger::app::Ledger::new(pool, seed_settings()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        ledger::server::run(ledger, listener, None, std::future::pending())
            .await
            .unwrap()
    });

    let body = bulk(vec![transfer("7.00")]);
    let requests = (0..40).map(|i| {
        let base = if i % 2 == 0 { &first.base } else { &second };
        first.client.post(format!("{base}/v1/transfer/bulk")).json(&body).send()
    });
    let statuses: Vec<u16> = join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 14, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 422).count(), 26, "{statuses:?}");
    assert_eq!(first.balance_cents(ACME_IBAN).await, 200);
}

/// 64 concurrent requests on one account are decided in batches (group
/// commit), and each caller still gets its own answer: the balance after
/// each accepted bulk is distinct, and the refusals see an empty account.
#[tokio::test]
async fn concurrent_commands_on_one_account_are_grouped_and_each_gets_its_answer() {
    let app = TestApp::spawn().await;
    app.acme_with(4_000).await;
    let (batches_before, commands_before, _) = app.ledger.group_commit_stats();
    let body = bulk(vec![transfer("1.00")]);
    let responses = join_all((0..64).map(|_| app.client.post(app.url("/v1/transfer/bulk")).json(&body).send())).await;
    let mut balances_after = Vec::new();
    let mut refused = 0;
    for response in responses {
        let (status, body) = into_parts(response.unwrap()).await;
        match status {
            201 => balances_after.push(body["balance_after_cents"].as_i64().unwrap()),
            422 => {
                assert_eq!(body["available_cents"], 0, "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    balances_after.sort_unstable();
    assert_eq!(
        balances_after,
        (0..40).map(|n| n * 100).collect::<Vec<i64>>(),
        "one distinct answer per accepted bulk"
    );
    assert_eq!(refused, 24);
    assert_eq!(app.balance_cents(ACME_IBAN).await, 0);
    let (batches, commands, largest) = app.ledger.group_commit_stats();
    let (batches, commands) = (batches - batches_before, commands - commands_before);
    assert_eq!(commands, 64);
    assert!(
        batches < 64 && largest > 1,
        "grouped: {commands} commands in {batches} batches, largest {largest}"
    );
}

/// Two real `ledger serve` processes on one database, one hot account:
/// group commit inside each, optimistic concurrency between them.
#[tokio::test]
async fn two_servers_on_one_database_never_overdraw() {
    let db = TestDb::new().await;
    let url = db.url();
    let env = [("DATABASE_URL", url.as_str()), ("LEDGER_IBAN_CHECK", "structure")];
    let first = Binary::serve(&env);
    let second = Binary::serve(&env);
    let client = first.client.clone();
    open_acme(&client, &first.base, 10_000).await;
    let body = bulk(vec![transfer("3.00")]);
    let requests = (0..60).map(|i| {
        let base = if i % 2 == 0 { &first.base } else { &second.base };
        client.post(format!("{base}/v1/transfer/bulk")).json(&body).send()
    });
    let statuses: Vec<u16> = join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 33, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 422).count(), 27, "{statuses:?}");
    let response = client
        .get(format!("{}/v1/accounts/{ACME_IBAN}", second.base))
        .send()
        .await
        .unwrap();
    let (_, account) = into_parts(response).await;
    assert_eq!(account["balance_cents"], 100);
    assert_eq!(account["version"], 62, "gapless: open, deposit, 60 bulks");
}
