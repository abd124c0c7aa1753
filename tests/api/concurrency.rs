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

fn iban_of(number: u64) -> String {
    // A German IBAN with valid check digits (ISO 13616 mod 97).
    let bban = format!("37040044{number:010}");
    let digits = format!("{bban}131400");
    let remainder = digits.bytes().fold(0u32, |n, d| (n * 10 + u32::from(d - b'0')) % 97);
    format!("DE{:02}{bban}", 98 - remainder)
}

async fn open_funded(app: &TestApp, iban: &str, name: &str, amount: &str) {
    let (status, body) = app
        .post(
            "/v1/accounts",
            &serde_json::json!({"organization_name": name, "iban": iban, "bic": ACME_BIC, "currency": "EUR"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .post(
            &format!("/v1/accounts/{iban}/deposits"),
            &serde_json::json!({"amount": amount}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

fn bulk_from(iban: &str, name: &str, amount: &str) -> serde_json::Value {
    serde_json::json!({"organization_name": name, "organization_bic": ACME_BIC, "organization_iban": iban,
                       "credit_transfers": [transfer(amount)]})
}

/// Group commit across accounts: 480 concurrent bulks spread over 40
/// accounts share batches (one statement for several accounts), and every
/// account is still exact on its own: 12 bulks of 1.00 against 10.00 are
/// 10 accepted and 2 refused, its stream gapless.
#[tokio::test]
async fn commands_for_many_accounts_share_batches_and_each_account_stays_exact() {
    let app = TestApp::spawn().await;
    let accounts: Vec<(String, String)> = (1..=40).map(|i| (iban_of(i), format!("Spread {i} GmbH"))).collect();
    for (iban, name) in &accounts {
        open_funded(&app, iban, name, "10.00").await;
    }
    let (batches_before, commands_before, _) = app.ledger.group_commit_stats();
    let requests = (0..12).flat_map(|_| {
        accounts.iter().map(|(iban, name)| {
            app.client
                .post(app.url("/v1/transfer/bulk"))
                .json(&bulk_from(iban, name, "1.00"))
                .send()
        })
    });
    let statuses: Vec<u16> = join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 400, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 422).count(), 80, "{statuses:?}");
    for (iban, _) in &accounts {
        assert_eq!(app.balance_cents(iban).await, 0, "{iban}");
    }
    let gaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT stream_id, max(version) <> count(*) AS gap FROM events GROUP BY stream_id) s \
         WHERE gap",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(gaps, 0, "every stream is gapless");
    let (batches, commands, _) = app.ledger.group_commit_stats();
    let (batches, commands) = (batches - batches_before, commands - commands_before);
    assert_eq!(commands, 480);
    assert!(batches < 480, "grouped: {commands} commands in {batches} batches");
    assert!(
        app.ledger.group_commit_accounts_max() > 1,
        "a batch appended to several accounts at once"
    );
}

/// A conflict on one account of a batch (another writer appended to it
/// behind this server's cached state) re-decides that account alone; the
/// batch's other accounts are not failed, and nothing is applied twice.
#[tokio::test]
async fn a_conflict_on_one_account_of_a_batch_fails_none_of_the_others() {
    let mut settings = seed_settings();
    settings.group_commit.lanes = 1;
    settings.group_commit.batch_wait = std::time::Duration::from_millis(20);
    let app = TestApp::spawn_with(settings).await;
    let stale = (iban_of(1), "Stale GmbH".to_owned());
    let others: Vec<(String, String)> = (2..=9).map(|i| (iban_of(i), format!("Other {i} GmbH"))).collect();
    open_funded(&app, &stale.0, &stale.1, "100.00").await;
    for (iban, name) in &others {
        open_funded(&app, iban, name, "100.00").await;
    }
    // Another ledger on the same database moves the stale account on:
    // this server's cached state of it is now behind.
    let second = ledger::app::Ledger::new(app.db.pool().await, seed_settings());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second_base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        ledger::server::run(std::sync::Arc::new(second), listener, None, std::future::pending())
            .await
            .unwrap()
    });
    let response = app
        .client
        .post(format!("{second_base}/v1/accounts/{}/deposits", stale.0))
        .json(&serde_json::json!({"amount": "50.00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let requests = std::iter::once(&stale).chain(&others).flat_map(|(iban, name)| {
        (0..3).map(|_| {
            app.client
                .post(app.url("/v1/transfer/bulk"))
                .json(&bulk_from(iban, name, "10.00"))
                .send()
        })
    });
    let statuses: Vec<u16> = join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert!(app.ledger.group_commit_conflicts() >= 1, "the stale state did conflict");
    assert_eq!(app.balance_cents(&stale.0).await, 15_000 - 3_000);
    for (iban, _) in &others {
        assert_eq!(app.balance_cents(iban).await, 10_000 - 3_000, "{iban}");
    }
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM events WHERE stream_id = (SELECT account_id FROM balances WHERE iban = $1) ORDER BY version",
    )
    .bind(&stale.0)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        versions,
        (1..=6).collect::<Vec<i64>>(),
        "open, two deposits, three bulks"
    );
}

/// Issue #13's mixed load, through two real `ledger serve` processes on
/// one database: one hot account and 30 others at once, every command sent
/// to both servers at the same moment with the same `Idempotency-Key` (a
/// client retrying on the other server). Each key is booked exactly once,
/// both answers to it agree, and every balance and stream is exact.
/// FIXME: with one of the servers pipelining (`LEDGER_BATCH_PIPELINE_DEPTH=2`)
/// this failed 2 runs in ~14: the other server answered one command 500
/// (not yet diagnosed; suspected: its appends to the hot account lose every
/// race against the pipelined server's uncommitted next batch until its 64
/// attempts run out). Pipelining stays off by default until that is fixed.
#[tokio::test]
async fn a_hot_account_and_many_others_on_two_servers_stay_exact_and_each_key_books_once() {
    let db = TestDb::new().await;
    let url = db.url();
    let env = [("DATABASE_URL", url.as_str()), ("LEDGER_IBAN_CHECK", "structure")];
    let servers = [Binary::serve(&env), Binary::serve(&env)];
    let client = servers[0].client.clone();
    let bases = [servers[0].base.as_str(), servers[1].base.as_str()];
    open_acme(&client, bases[0], 10_000).await;
    let spread: Vec<(String, String)> = (1..=30).map(|i| (iban_of(i), format!("Spread {i} GmbH"))).collect();
    for (i, (iban, name)) in spread.iter().enumerate() {
        let base = bases[i % 2];
        let opened = client
            .post(format!("{base}/v1/accounts"))
            .json(&serde_json::json!({"organization_name": name, "iban": iban, "bic": ACME_BIC, "currency": "EUR"}))
            .send()
            .await
            .unwrap();
        assert_eq!(opened.status(), 201);
        let funded = client
            .post(format!("{base}/v1/accounts/{iban}/deposits"))
            .json(&serde_json::json!({"amount": "10.00"}))
            .send()
            .await
            .unwrap();
        assert_eq!(funded.status(), 201);
    }

    // (account, key, body): 60 bulks of 3.00 on the hot account (100.00),
    // 12 bulks of 1.00 on each of the others (10.00 each), interleaved.
    let mut commands: Vec<(String, String, serde_json::Value)> = Vec::new();
    for round in 0..60 {
        commands.push((
            ACME_IBAN.to_owned(),
            format!("hot-{round}"),
            bulk(vec![transfer("3.00")]),
        ));
        if round < 12 {
            for (iban, name) in &spread {
                commands.push((iban.clone(), format!("{iban}-{round}"), bulk_from(iban, name, "1.00")));
            }
        }
    }
    let requests = commands.iter().flat_map(|(_, key, body)| {
        bases.map(|base| {
            client
                .post(format!("{base}/v1/transfer/bulk"))
                .header("Idempotency-Key", key.as_str())
                .json(body)
                .send()
        })
    });
    let statuses: Vec<u16> = join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let mut accepted: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for ((account, key, _), pair) in commands.iter().zip(statuses.chunks(2)) {
        assert_eq!(pair[0], pair[1], "{key}: both servers answer alike");
        assert!(pair[0] == 201 || pair[0] == 422, "{key}: {pair:?}");
        if pair[0] == 201 {
            *accepted.entry(account.as_str()).or_default() += 1;
        }
    }
    assert_eq!(accepted[ACME_IBAN], 33, "3.00 fits 33 times into 100.00");
    for (iban, _) in &spread {
        assert_eq!(accepted[iban.as_str()], 10, "{iban}: 1.00 fits 10 times into 10.00");
    }

    let pool = db.pool().await;
    let (hot_balance, hot_version): (i64, i64) =
        sqlx::query_as("SELECT balance_cents, version FROM balances WHERE iban = $1")
            .bind(ACME_IBAN)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (hot_balance, hot_version),
        (100, 62),
        "open, deposit, 60 bulks: once each"
    );
    for (iban, _) in &spread {
        let (balance, version): (i64, i64) =
            sqlx::query_as("SELECT balance_cents, version FROM balances WHERE iban = $1")
                .bind(iban)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            (balance, version),
            (0, 14),
            "{iban}: open, deposit, 12 bulks: once each"
        );
    }
    let bulks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type IN ('BulkTransferBooked', 'BulkTransferRejected')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(bulks, commands.len() as i64, "one decision per key, none twice");
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(keys, commands.len() as i64);
    let gaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT stream_id, max(version) <> count(*) AS gap FROM events GROUP BY stream_id) s \
         WHERE gap",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(gaps, 0, "every stream is gapless");
    pool.close().await;
}

/// Pipelining: a batch decided on the state an earlier batch in flight
/// leaves commits only if that batch does. Here the earlier batch (a
/// deposit of 10.00) is held in its statement by a lock on the account's
/// projection row and then cancelled; the later one (a deposit of 20.00),
/// decided on the first one's outcome and already waiting behind it, must
/// roll back and be decided again on what the database holds. Had it
/// committed as decided, the stream would have a gap (versions 1, 2, 4)
/// and the balance would count the cancelled deposit.
#[tokio::test]
async fn a_batch_decided_on_one_in_flight_is_decided_again_when_that_one_fails() {
    let mut settings = seed_settings();
    settings.group_commit.lanes = 1;
    settings.group_commit.pipeline_depth = 2;
    settings.group_commit.batch_wait = std::time::Duration::ZERO;
    let app = TestApp::spawn_with(settings).await;
    let iban = iban_of(77);
    open_funded(&app, &iban, "Pipeline GmbH", "100.00").await;

    // Hold the account's projection row: the next append blocks on it.
    let mut holder = app.pool.acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *holder).await.unwrap();
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM balances WHERE iban = $1 FOR UPDATE")
        .bind(&iban)
        .execute(&mut *holder)
        .await
        .unwrap();

    let deposit = |amount: &str| {
        app.client
            .post(app.url(&format!("/v1/accounts/{iban}/deposits")))
            .json(&serde_json::json!({"amount": amount}))
            .send()
    };
    let first = tokio::spawn(deposit("10.00"));
    let blocked: i32 = wait_for_backend(
        &app.pool,
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO events%'",
    )
    .await;
    let second = tokio::spawn(deposit("20.00"));
    // The second batch has begun its transaction and waits for the first
    // one's statement to finish.
    let _: i32 = wait_for_backend(
        &app.pool,
        &format!(
            "SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction' AND pid <> {holder_pid} \
             AND datname = current_database()"
        ),
    )
    .await;
    let cancelled: bool = sqlx::query_scalar("SELECT pg_cancel_backend($1)")
        .bind(blocked)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(cancelled);
    sqlx::query("COMMIT").execute(&mut *holder).await.unwrap();

    let first = first.await.unwrap().unwrap();
    assert_ne!(first.status(), 201, "the cancelled batch booked nothing");
    let second = second.await.unwrap().unwrap();
    let status = second.status();
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        app.balance_cents(&iban).await,
        12_000,
        "100.00 + 20.00; the cancelled 10.00 is not there"
    );
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM events WHERE stream_id = (SELECT account_id FROM balances WHERE iban = $1) ORDER BY version",
    )
    .bind(&iban)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(versions, vec![1, 2, 3], "open, the first deposit, the 20.00");
    let account_id: uuid::Uuid = sqlx::query_scalar("SELECT account_id FROM balances WHERE iban = $1")
        .bind(&iban)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let audit = ledger::audit::audit_stream(&app.pool, account_id).await.unwrap();
    assert!(audit.chain_valid && audit.consistent, "{audit:?}");
}

/// Without pipelining a leader goes straight on to the commands queued
/// while its batch committed; its own caller is answered with that batch
/// all the same, not once the leader stops leading. The first deposit's
/// batch is held by a lock on the account's projection row while a second
/// deposit queues behind it, and a second holder queues for a lock on
/// `events` behind the first batch, so the next batch (which the same
/// leader goes on to) is held in turn: the first caller must have its 201
/// while that batch is still held.
#[tokio::test]
async fn a_leader_s_own_caller_is_answered_with_its_batch_while_it_leads_the_next() {
    let mut settings = seed_settings();
    settings.group_commit.lanes = 1;
    settings.group_commit.pipeline_depth = 1;
    settings.group_commit.batch_wait = std::time::Duration::ZERO;
    let app = TestApp::spawn_with(settings).await;
    let iban = iban_of(78);
    open_funded(&app, &iban, "Chained GmbH", "100.00").await;
    let hold = "SELECT 1 FROM balances WHERE iban = $1 FOR UPDATE";

    let mut first_holder = app.pool.acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *first_holder).await.unwrap();
    sqlx::query(hold).bind(&iban).execute(&mut *first_holder).await.unwrap();
    let deposit = |amount: &str| {
        app.client
            .post(app.url(&format!("/v1/accounts/{iban}/deposits")))
            .json(&serde_json::json!({"amount": amount}))
            .send()
    };
    let first = tokio::spawn(deposit("10.00"));
    let _: i32 = wait_for_backend(
        &app.pool,
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO events%'",
    )
    .await;
    let second = tokio::spawn(deposit("20.00"));
    for _ in 0..500 {
        if app.ledger.group_commit_queued() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        app.ledger.group_commit_queued(),
        1,
        "the second deposit waits behind the first batch"
    );
    // The second holder queues, behind the first batch's transaction, for a
    // lock on `events` that every append waits for: whenever the leader
    // sends the next batch, that batch waits behind it.
    let pool = app.pool.clone();
    let second_holder = tokio::spawn(async move {
        let mut connection = pool.acquire().await.unwrap();
        sqlx::query("BEGIN").execute(&mut *connection).await.unwrap();
        sqlx::query("LOCK TABLE events IN SHARE MODE")
            .execute(&mut *connection)
            .await
            .unwrap();
        connection
    });
    let _: i32 = wait_for_backend(
        &app.pool,
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE events%'",
    )
    .await;
    sqlx::query("COMMIT").execute(&mut *first_holder).await.unwrap();

    let mut second_holder = second_holder.await.unwrap();
    // The second batch is now held by the second holder ...
    let _: i32 = wait_for_backend(
        &app.pool,
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO events%'",
    )
    .await;
    // ... and the first caller has its answer regardless.
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), first)
        .await
        .expect("the first caller is answered while its leader's next batch is held")
        .unwrap()
        .unwrap();
    assert_eq!(first.status(), 201);
    assert!(!second.is_finished(), "the second batch is still held");
    sqlx::query("COMMIT").execute(&mut *second_holder).await.unwrap();
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.status(), 201);
    assert_eq!(app.balance_cents(&iban).await, 13_000, "100.00 + 10.00 + 20.00");
}

/// Polls until `sql` finds a backend, and returns its pid.
async fn wait_for_backend(pool: &sqlx::PgPool, sql: &str) -> i32 {
    for _ in 0..500 {
        if let Some(pid) = sqlx::query_scalar::<_, i32>(sql).fetch_optional(pool).await.unwrap() {
            return pid;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no backend found by {sql}");
}
