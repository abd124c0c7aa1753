//! The log as the source of truth: point-in-time balances, audit, replay,
//! the commit-safe feed and projection rebuilds.

use std::collections::HashSet;

use futures::future::join_all;
use ledger::event_store::{self, FeedCursor, StreamHead};
use serde_json::{Value, json};

use crate::support::*;

/// Balances at a past position or time are replayed from the log.
#[tokio::test]
async fn the_balance_at_a_point_in_time_is_replayed_from_the_log() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await; // positions 1 (open), 2 (deposit)
    let (_, first) = app.post("/v1/transfer/bulk", &bulk(vec![transfer("10.00")])).await;
    assert_eq!(first["balance_after_cents"], 9_000);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    app.post("/v1/transfer/bulk", &bulk(vec![transfer("20.00")])).await;

    let path = |query: &str| format!("/v1/accounts/{ACME_IBAN}/balance?{query}");
    let (status, at) = app.get(&path("position=2")).await;
    assert_eq!(status, 200, "{at}");
    assert_eq!(
        (
            at["balance_cents"].as_i64(),
            at["version"].as_i64(),
            at["balance"].as_str()
        ),
        (Some(10_000), Some(2), Some("100.00"))
    );
    let (_, at) = app.get(&path("position=3")).await;
    assert_eq!(at["balance_cents"], 9_000);
    let as_of = between
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        .replace('+', "%2B");
    let (status, at) = app.get(&path(&format!("as_of={as_of}"))).await;
    assert_eq!(status, 200, "{at}");
    assert_eq!(at["balance_cents"], 9_000);
    let (_, now) = app.get(&path("position=999999")).await;
    assert_eq!(now["balance_cents"], 7_000);

    let (status, _) = app.get(&path("as_of=2001-01-01T00:00:00Z")).await;
    assert_eq!(status, 404, "the account did not exist yet");
    for (query, field) in [
        ("as_of=yesterday", "as_of"),
        ("position=-1", "position"),
        ("", "as_of"),
        ("position=1&as_of=2026-01-01T00:00:00Z", "position"),
    ] {
        let (status, problem) = app.get(&path(query)).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(problem["errors"][0]["field"], field, "{query}");
    }
}

/// The audit endpoint agrees on a healthy account and reports drift when a
/// projection is changed behind the ledger's back.
#[tokio::test]
async fn the_audit_endpoint_compares_the_log_with_the_projections() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    app.post("/v1/transfer/bulk", &bulk(vec![transfer("1.00"), transfer("2.00")]))
        .await;
    app.post("/v1/transfer/bulk", &bulk(vec![transfer("1000.00")])).await; // refused
    let (status, audit) = app.get(&format!("/v1/accounts/{ACME_IBAN}/audit")).await;
    assert_eq!(status, 200);
    assert_eq!(audit["events"], 4);
    assert_eq!(audit["replayed_balance_cents"], 9_700);
    assert_eq!(audit["projected_balance_cents"], 9_700);
    assert_eq!(audit["consistent"], true);
    assert_eq!(audit["chain_valid"], true);

    sqlx::query("UPDATE balances SET balance_cents = balance_cents + 1")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE transactions SET description = 'edited' WHERE seq = 2")
        .execute(&app.pool)
        .await
        .unwrap();
    let (_, audit) = app.get(&format!("/v1/accounts/{ACME_IBAN}/audit")).await;
    assert_eq!(audit["consistent"], false);
    assert_eq!(audit["chain_valid"], true, "the log itself is intact");
    assert_eq!(audit["projected_balance_cents"], 9_701);
    let whats: Vec<&str> = audit["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["what"].as_str().unwrap())
        .collect();
    assert_eq!(whats.len(), 2, "{whats:?}");
    assert!(whats[0].contains("balance_cents"), "{whats:?}");
    assert!(whats[1].contains("transactions row"), "{whats:?}");

    let (status, _) = app.get("/v1/accounts/GB82WEST12345698765432/audit").await;
    assert_eq!(status, 404);
}

/// An event edited behind the database's back (as a superuser with the
/// triggers disabled) breaks the hash chain: `ledger audit` exits 1 naming
/// the account and the event's position.
#[tokio::test]
async fn ledger_audit_detects_an_event_edited_behind_the_databases_back() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    app.post("/v1/transfer/bulk", &bulk(vec![transfer("1.00")])).await;
    let env = [("DATABASE_URL", app.db.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let output = run_ledger(&["audit"], &env);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    // Move a cent in the log, and in both projections so they still agree
    // with it: only the hash chain can tell.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    let position: i64 = sqlx::query_scalar(
        "UPDATE events SET data = jsonb_set(jsonb_set(data, '{amount_cents}', '10001'), '{balance_after_cents}', '10001') \
         WHERE event_type = 'FundsDeposited' RETURNING position",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let output = run_ledger(&["audit"], &env);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("iban {ACME_IBAN} position {position}: hash chain broken")),
        "{stdout}"
    );
    let output = run_ledger(&["audit", "--account", ACME_IBAN], &env);
    assert_eq!(output.status.code(), Some(1));
    let (_, audit) = app.get(&format!("/v1/accounts/{ACME_IBAN}/audit")).await;
    assert_eq!(audit["chain_valid"], false);

    // An unknown account is an error (2), not a clean bill of health.
    let output = run_ledger(&["audit", "--account", "GB82WEST12345698765432"], &env);
    assert_eq!(output.status.code(), Some(2));
}

/// `ledger replay` prints the history with the running balance, up to a point.
#[tokio::test]
async fn ledger_replay_prints_the_running_balance() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    app.post("/v1/transfer/bulk", &bulk(vec![transfer("1.50"), transfer("2.00")]))
        .await;
    app.post("/v1/transfer/bulk", &bulk(vec![transfer("1000.00")])).await;
    let url = app.db.url();
    let output = run_ledger(&["replay", "--account", ACME_IBAN], &[("DATABASE_URL", &url)]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert!(
        lines[2].contains("FundsDeposited") && lines[2].contains("100.00"),
        "{stdout}"
    );
    assert!(
        lines[3].contains("BulkTransferBooked") && lines[3].contains("-3.50") && lines[3].contains("96.50"),
        "{stdout}"
    );
    assert!(
        lines[4].contains("BulkTransferRejected") && lines[4].contains("96.50"),
        "{stdout}"
    );
    let output = run_ledger(
        &["replay", "--account", ACME_IBAN, "--position", "2"],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 3);
}

async fn page_all(app: &TestApp, after: &str, limit: u32) -> (Vec<Value>, String) {
    let mut events = Vec::new();
    let mut after = after.to_owned();
    loop {
        let (status, page) = app.get(&format!("/v1/events?after={after}&limit={limit}")).await;
        assert_eq!(status, 200, "{page}");
        let batch = page["events"].as_array().unwrap().clone();
        after = page["next_after"].as_str().unwrap().to_owned();
        if batch.is_empty() {
            return (events, after);
        }
        events.extend(batch);
    }
}

/// A consumer paging through the feed never misses an event and never sees
/// one twice, even when an append commits after later ones.
#[tokio::test]
async fn the_feed_never_skips_an_event_that_commits_late() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    // The feed hands out events below its horizon, which a transaction of
    // another test's database in the shared cluster can hold back for a
    // moment: wait (bounded) until both set-up events are out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (before, cursor) = loop {
        let (events, cursor) = page_all(&app, "0", 1).await;
        if events.len() >= 2 || std::time::Instant::now() >= deadline {
            break (events, cursor);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(before.len(), 2);

    // Hold one append open: it takes its position now, commits last.
    let slow_stream = uuid::Uuid::now_v7();
    let mut slow = app.pool.begin().await.unwrap();
    let opened = ledger::domain::Event::AccountOpened {
        account_id: slow_stream,
        organization_name: "Slow Corp".into(),
        iban: ledger::domain::Iban::parse("GB82WEST12345698765432", ledger::domain::IbanCheck::Full).unwrap(),
        bic: ledger::domain::Bic::parse("NWBKGB2L").unwrap(),
        currency: ledger::domain::Currency::EUR,
    };
    let slow_append = event_store::append(
        &mut *slow,
        slow_stream,
        StreamHead::EMPTY,
        &[event_store::NewEvent {
            event: opened,
            metadata: json!({}),
        }],
        chrono::Utc::now(),
        &[],
    )
    .await
    .unwrap();

    // Later appends commit meanwhile, with higher positions.
    let responses = join_all((0..5).map(|_| {
        app.client
            .post(app.url("/v1/transfer/bulk"))
            .json(&bulk(vec![transfer("1.00")]))
            .send()
    }))
    .await;
    assert!(responses.into_iter().all(|r| r.unwrap().status().as_u16() == 201));
    let (during, cursor) = page_all(&app, &cursor, 2).await;
    assert!(
        during.is_empty(),
        "nothing past the open transaction is handed out yet: {during:?}"
    );

    slow.commit().await.unwrap();
    // Bounded, for the same horizon as above.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let after = loop {
        let (events, _) = page_all(&app, &cursor, 2).await;
        if before.len() + events.len() >= 8 || std::time::Instant::now() >= deadline {
            break events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let positions: Vec<i64> = before
        .iter()
        .chain(&after)
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    let unique: HashSet<i64> = positions.iter().copied().collect();
    assert_eq!(positions.len(), 8, "{positions:?}");
    assert_eq!(unique.len(), 8, "no event twice: {positions:?}");
    assert!(
        unique.contains(&slow_append.first_position),
        "the late event is delivered"
    );
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(all, 8);
    let first = &after[0];
    assert!(
        first["type"].is_string()
            && first["data"].is_object()
            && first["stream_id"].is_string()
            && first["version"].is_i64()
    );
}

/// Many concurrent appends, a consumer paging all the while: each event is
/// seen exactly once.
#[tokio::test]
async fn a_consumer_paging_during_concurrent_appends_sees_each_event_once() {
    let app = TestApp::spawn().await;
    app.acme_with(1_000_000).await;
    let writers = async {
        for _ in 0..5 {
            let requests = (0..20).map(|_| {
                app.client
                    .post(app.url("/v1/transfer/bulk"))
                    .json(&bulk(vec![transfer("1.00")]))
                    .send()
            });
            for response in join_all(requests).await {
                assert_eq!(response.unwrap().status().as_u16(), 201);
            }
        }
    };
    let reader = async {
        let mut seen = Vec::new();
        let mut after = "0".to_owned();
        for _ in 0..200 {
            let (_, page) = app.get(&format!("/v1/events?after={after}&limit=7")).await;
            seen.extend(
                page["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["position"].as_i64().unwrap()),
            );
            after = page["next_after"].as_str().unwrap().to_owned();
            tokio::task::yield_now().await;
        }
        (seen, after)
    };
    let ((), (mut seen, after)) = tokio::join!(writers, reader);
    let (rest, _) = page_all(&app, &after, 50).await;
    seen.extend(rest.iter().map(|e| e["position"].as_i64().unwrap()));
    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), 102, "2 + 100 events");
    assert_eq!(unique.len(), 102, "none twice");
    let bad = app.get("/v1/events?after=nonsense").await;
    assert_eq!(bad.0, 400);
    assert_eq!(FeedCursor::parse("0"), Some(FeedCursor::START));
}

/// Polls `ledger projections status` until the asynchronous projections
/// have no lag.
async fn wait_for_async_projections(url: &str) {
    for _ in 0..100 {
        let output = run_ledger(&["projections", "status"], &[("DATABASE_URL", url)]);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let line = stdout
            .lines()
            .find(|l| l.starts_with("counterparties"))
            .expect("counterparties in status");
        let lag: i64 = line.split_whitespace().nth(4).unwrap().parse().unwrap();
        if lag == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the asynchronous projections did not catch up");
}

/// `ledger projections rebuild` while `ledger serve` keeps answering: the
/// rebuilt tables equal the incrementally maintained ones, row for row, and
/// writes during the rebuild are not lost.
#[tokio::test]
async fn a_rebuild_while_serving_reproduces_the_projections() {
    let db = TestDb::new().await;
    let url = db.url();
    let binary = Binary::serve(&[("DATABASE_URL", &url), ("LEDGER_IBAN_CHECK", "structure")]);
    let client = binary.client.clone();
    open_acme(&client, &binary.base, 1_000_000).await;
    for i in 0..30 {
        let body = bulk(
            (0..(i % 4 + 1))
                .map(|j| transfer(&format!("{}.{j:02}", i + 1)))
                .collect(),
        );
        let response = client
            .post(format!("{}/v1/transfer/bulk", binary.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    }
    let pool = db.pool().await;
    // The server's runner keeps the asynchronous projection up to date.
    wait_for_async_projections(&url).await;
    let paid: (i64, i64) =
        sqlx::query_as("SELECT sum(transfers)::bigint, sum(total_cents)::bigint FROM counterparties")
            .fetch_one(&pool)
            .await
            .unwrap();
    let booked: (i64, i64) =
        sqlx::query_as("SELECT count(*), -sum(amount_cents)::bigint FROM transactions WHERE kind = 'transfer'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(paid, booked);
    let before = projection_rows(&pool).await;

    // Rebuild while writes keep coming.
    let writer = {
        let client = client.clone();
        let base = binary.base.clone();
        tokio::spawn(async move {
            let mut accepted = 0;
            for _ in 0..20 {
                let response = client
                    .post(format!("{base}/v1/transfer/bulk"))
                    .json(&bulk(vec![transfer("0.01")]))
                    .send()
                    .await
                    .unwrap();
                accepted += usize::from(response.status().as_u16() == 201);
            }
            accepted
        })
    };
    let rebuild_url = url.clone();
    let output =
        tokio::task::spawn_blocking(move || run_ledger(&["projections", "rebuild"], &[("DATABASE_URL", &rebuild_url)]))
            .await
            .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("rebuilt balances, transactions, counterparties"));
    assert_eq!(writer.await.unwrap(), 20);
    wait_for_async_projections(&url).await;

    // Everything written before and during the rebuild is there, and the
    // log, the rebuilt projections and a second rebuild all agree.
    let after_writes = projection_rows(&pool).await;
    assert_eq!(after_writes[1].len(), before[1].len() + 20);
    let output = run_ledger(&["audit"], &[("DATABASE_URL", &url)]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    ledger::projections::rebuild(&pool, &["transactions".to_owned()], |_| {})
        .await
        .unwrap();
    assert_eq!(projection_rows(&pool).await, after_writes);
    let response = client
        .get(format!("{}/v1/accounts/{ACME_IBAN}", binary.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "the server reads the swapped-in tables"
    );

    let output = run_ledger(&["projections", "status"], &[("DATABASE_URL", &url)]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("balances") && l.contains("inline")),
        "{stdout}"
    );
    assert!(
        ledger::projections::rebuild(&pool, &["nope".to_owned()], |_| {})
            .await
            .is_err()
    );
}

/// The asynchronous runner takes a projection's status row, then its table;
/// a rebuild's swap must take them in the same order. Here the test plays
/// the runner: it holds the counterparties row while a rebuild swaps, then
/// reads the table. In the other order that read would wait for the
/// dropped table while the rebuild waited for the row: a deadlock, and a
/// failed rebuild.
#[tokio::test]
async fn a_rebuild_swap_waits_for_a_runner_batch_instead_of_deadlocking() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    let mut runner = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM projection_status WHERE name = 'counterparties' FOR UPDATE")
        .execute(&mut *runner)
        .await
        .unwrap();
    let pool = app.db.pool().await;
    let rebuild = ledger::projections::rebuild(&pool, &[], |_| {});
    let play_runner = async {
        // Until the rebuild's swap waits on a lock.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the rebuild never reached its swap"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // The runner's next step: its table. It must not wait for the rebuild.
        sqlx::query("SET LOCAL lock_timeout = '5s'")
            .execute(&mut *runner)
            .await
            .unwrap();
        let read = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM counterparties")
            .fetch_one(&mut *runner)
            .await;
        runner.commit().await.unwrap();
        read
    };
    let (report, read) = tokio::join!(rebuild, play_runner);
    read.expect("the runner reads its table while the rebuild waits for the row");
    assert_eq!(report.expect("the rebuild succeeds").projections.len(), 3);
}

/// A rebuild is not a request: `LEDGER_STATEMENT_TIMEOUT_MS` bounds the
/// server's statements, not the rebuild's (issue #15, item 1). The log is
/// large enough that loading it takes far longer than the timeout, which
/// still leaves the CLI's own short statements (migrations, install) room
/// on a busy machine.
#[tokio::test]
async fn a_rebuild_is_not_bound_by_the_requests_statement_timeout() {
    let app = TestApp::spawn().await;
    app.acme_with(100_000_000).await;
    for _ in 0..40 {
        let transfers: Vec<Value> = (0..500).map(|_| transfer("1.00")).collect();
        let (status, body) = app.post("/v1/transfer/bulk", &bulk(transfers)).await;
        assert_eq!(status, 201, "{body}");
    }
    post_everything(&app.pool).await;
    ledger::projections::runner::catch_up(&app.pool).await.unwrap();
    let before = projection_rows(&app.pool).await;
    let url = app.db.url();
    let output = run_ledger(
        &["projections", "rebuild"],
        &[("DATABASE_URL", &url), ("LEDGER_STATEMENT_TIMEOUT_MS", "50")],
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("from 42 events"), "{stdout}");
    assert_eq!(projection_rows(&app.pool).await, before);
}

/// A transaction registered in `horizon_exemptions` (what a rebuild does
/// for its long load transactions) no longer holds the feed back, and can
/// never append an event, so passing over it cannot make the feed skip one.
#[tokio::test]
async fn an_exempt_transaction_does_not_hold_the_feed_back_and_cannot_append() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    let feed_len = || async {
        let (status, feed) = app.get("/v1/events?limit=1000").await;
        assert_eq!(status, 200, "{feed}");
        feed["events"].as_array().unwrap().len()
    };
    let mut settled = 0;
    for _ in 0..100 {
        settled = feed_len().await;
        if settled == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(settled, 2, "opened and deposited");

    // A long transaction of this database, with an id, still open.
    let mut long = app.pool.acquire().await.unwrap().detach();
    sqlx::raw_sql("BEGIN").execute(&mut long).await.unwrap();
    let id: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut long)
        .await
        .unwrap();
    let (status, body) = app
        .post(
            &format!("/v1/accounts/{ACME_IBAN}/deposits"),
            &serde_json::json!({"amount": "1.00"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        feed_len().await,
        2,
        "held back: the open transaction might still append"
    );

    sqlx::query("INSERT INTO horizon_exemptions (tx_id, reason) VALUES ($1::xid8, 'test')")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(feed_len().await, 3, "the exempt transaction holds nothing back");
    let refused = sqlx::query(
        "INSERT INTO events (stream_id, version, event_type, schema_version, data, metadata, recorded_at, hash) \
         VALUES (gen_random_uuid(), 1, 'AccountOpened', 1, '{}', '{}', now(), '\\x00'::bytea || sha256(''))",
    )
    .execute(&mut long)
    .await
    .expect_err("an exempt transaction cannot append");
    assert!(
        refused.to_string().contains("exempt from the feed horizon"),
        "{refused}"
    );
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut long).await;
}

/// An audit reads the log and the projections in one snapshot (issue #15,
/// item 4): appends landing while it reads can never show up as drift.
/// Before, most audits made while deposits were landing reported the
/// account inconsistent (events read, then a newer balances row).
#[tokio::test]
async fn audits_while_deposits_land_are_all_consistent() {
    let app = TestApp::spawn().await;
    app.acme_with(100).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let depositing = {
        let (client, base, stop) = (app.client.clone(), app.base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut made = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let response = client
                    .post(format!("{base}/v1/accounts/{ACME_IBAN}/deposits"))
                    .json(&serde_json::json!({"amount": "1.00"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 201);
                made += 1;
            }
            made
        })
    };
    let mut inconsistent = Vec::new();
    for _ in 0..200 {
        let (status, audit) = app.get(&format!("/v1/accounts/{ACME_IBAN}/audit")).await;
        assert_eq!(status, 200, "{audit}");
        if audit["consistent"] != true {
            inconsistent.push(audit);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let made = depositing.await.unwrap();
    assert!(made > 10, "deposits landed during the audits ({made})");
    assert!(
        inconsistent.is_empty(),
        "{} of 200 audits reported drift, e.g. {}",
        inconsistent.len(),
        inconsistent[0]
    );
}

/// An orphaned prepared transaction in another database does not hold the
/// feed's horizon back (issue #15, item 6): the feed, and everything that
/// follows it, goes on. (One in this database does hold it: it may have
/// appended.)
#[tokio::test]
async fn a_prepared_transaction_elsewhere_does_not_hold_the_feed() {
    use sqlx::Connection;
    let mut own = OwnCluster::start("prepared").await;
    {
        let mut admin = sqlx::PgConnection::connect_with(&own.cluster.connect_options("ledger"))
            .await
            .unwrap();
        sqlx::query("ALTER SYSTEM SET max_prepared_transactions = 4")
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query("CREATE DATABASE other").execute(&mut admin).await.unwrap();
    }
    own.restart().await;
    let mut other = sqlx::PgConnection::connect_with(&own.cluster.connect_options("other"))
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE t (x int); BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'orphan_of_a_crashed_coordinator'",
    )
    .execute(&mut other)
    .await
    .unwrap();
    let server = Binary::serve(&[
        ("DATABASE_URL", &own.cluster.url("ledger")),
        ("LEDGER_IBAN_CHECK", "structure"),
    ]);
    open_acme(&server.client, &server.base, 10_000).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, page) = into_parts(
            server
                .client
                .get(format!("{}/v1/events", server.base))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        if page["events"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the feed is held back by the other database's prepared transaction: {page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    sqlx::query("ROLLBACK PREPARED 'orphan_of_a_crashed_coordinator'")
        .execute(&mut other)
        .await
        .unwrap();
}

/// A rebuild keeps what is attached to the live tables (issue #15, item
/// 2): run by another role (a superuser) than the server's, it leaves the
/// tables owned by the server's role (which still writes them), a
/// reporting role's grant, and an index a DBA added; then it ANALYZEs.
#[tokio::test]
async fn a_rebuild_by_another_role_keeps_owner_grants_and_a_dbas_index() {
    use sqlx::Connection;
    let db = TestDb::empty().await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (app_role, reporting) = (
        format!("ledger_app_{}", &suffix[..12]),
        format!("reporting_{}", &suffix[..12]),
    );
    let mut admin = sqlx::PgConnection::connect_with(&db.options).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE ROLE {app_role} LOGIN; CREATE ROLE {reporting} NOLOGIN; \
         GRANT CREATE ON SCHEMA public TO {app_role}"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let superuser = db.options.get_username().to_owned();
    let admin_url = db.url();
    let app_url = admin_url.replacen(&format!("//{superuser}@"), &format!("//{app_role}@"), 1);
    assert_ne!(app_url, admin_url);
    // The server's role migrates and owns everything; a reporting role may
    // read the balances; a DBA indexes the history by description.
    let server = Binary::serve(&[("DATABASE_URL", &app_url), ("LEDGER_IBAN_CHECK", "structure")]);
    open_acme(&server.client, &server.base, 100_000).await;
    let (status, body) = into_parts(
        server
            .client
            .post(format!("{}/v1/transfer/bulk", server.base))
            .json(&bulk(vec![transfer("10.00"), transfer("5.00")]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    sqlx::raw_sql(&format!(
        "GRANT SELECT ON balances TO {reporting}; \
         CREATE INDEX transactions_by_description ON transactions (description)"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let pool = db.pool().await;
    ledger::projections::runner::catch_up(&pool).await.unwrap();
    let before = projection_rows(&pool).await;

    let rebuilt = run_ledger(&["projections", "rebuild"], &[("DATABASE_URL", &admin_url)]);
    assert!(rebuilt.status.success(), "{rebuilt:?}");
    assert!(
        String::from_utf8_lossy(&rebuilt.stdout).contains("analyze"),
        "{rebuilt:?}"
    );

    for table in ["balances", "transactions", "counterparties"] {
        let owner: String = sqlx::query_scalar("SELECT relowner::regrole::text FROM pg_class WHERE oid = $1::regclass")
            .bind(table)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(owner, app_role, "{table} keeps its owner");
    }
    let granted: bool = sqlx::query_scalar("SELECT has_table_privilege($1, 'balances', 'SELECT')")
        .bind(&reporting)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(granted, "the reporting role's grant survives the swap");
    let index: Option<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'transactions' AND indexname = 'transactions_by_description'",
    )
    .fetch_optional(&mut admin)
    .await
    .unwrap();
    assert!(
        index.is_some_and(|d| d.contains("(description)")),
        "the DBA's index survives"
    );
    let analyzed: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'transactions'")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(analyzed.is_some(), "statistics after the swap");
    assert_eq!(projection_rows(&pool).await, before);
    // The server's role still writes the rebuilt tables.
    let (status, body) = into_parts(
        server
            .client
            .post(format!("{}/v1/transfer/bulk", server.base))
            .json(&bulk(vec![transfer("1.00")]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    drop(server);
    pool.close().await;
    admin.close().await.ok();
    let mut cleanup = sqlx::PgConnection::connect_with(&db.options.clone().database("postgres"))
        .await
        .unwrap();
    let _ = sqlx::raw_sql(&format!(
        "DROP DATABASE {} WITH (FORCE); DROP ROLE {app_role}; DROP ROLE {reporting}",
        db.name
    ))
    .execute(&mut cleanup)
    .await;
}

/// The asynchronous runner cannot get stuck (issue #15, item 1): its
/// batches are not bound by the requests' statement timeout, and are cut
/// by transfers (and stored bytes), not only by their event count. Twelve
/// bulks of 10,000 transfers, then the runner on connections with a 20 ms
/// statement timeout: it catches up (before, every attempt at the batch
/// was cancelled, for ever), in more than one batch though the whole log
/// fits in one batch's bytes.
#[tokio::test]
async fn the_runner_catches_up_on_large_bulks_under_a_tiny_statement_timeout() {
    use ledger::app::requests::parse_bulk_transfer;
    use ledger::domain::IbanCheck;
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let ledger = ledger::app::Ledger::new(pool.clone(), seed_settings());
    let context = ledger::app::CommandContext {
        principal: ledger::app::auth::Principal::operator(),
        request_id: String::new(),
        idempotency_key: None,
    };
    let open = ledger::app::requests::parse_open_account(
        &serde_json::json!({"organization_name": ACME_NAME, "iban": ACME_IBAN, "bic": ACME_BIC}),
        IbanCheck::Structure,
    )
    .unwrap();
    ledger.open_account(&context, open).await.unwrap().result.unwrap();
    let deposit = ledger::app::requests::parse_deposit(&serde_json::json!({"amount": "1000000.00"})).unwrap();
    let iban = ledger::domain::Iban::parse(ACME_IBAN, IbanCheck::Structure).unwrap();
    ledger.deposit(&context, &iban, deposit).await.unwrap().result.unwrap();
    for _ in 0..12 {
        let transfers: Vec<Value> = (0..10_000)
            .map(|i| {
                let mut t = transfer("1.00");
                t["counterparty_iban"] = Value::String(format!("EE38368098102124{i:04}"));
                t
            })
            .collect();
        let request = parse_bulk_transfer(&bulk(transfers), IbanCheck::Structure, 10_000).unwrap();
        ledger.transfer_bulk(&context, request).await.unwrap().result.unwrap();
    }
    let strict = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(db.options.clone().options([("statement_timeout", "20")]))
        .await
        .unwrap();
    let stored: i64 =
        sqlx::query_scalar("SELECT sum(pg_column_size(data) + pg_column_size(metadata))::bigint FROM events")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        stored < 8 << 20,
        "the log ({stored} bytes stored) fits one batch's bytes"
    );
    let (_, batches) = ledger::projections::runner::catch_up_counted(&strict)
        .await
        .expect("the runner is not bound by the requests' statement timeout");
    assert!(
        batches >= 2,
        "120,000 transfers are more than one batch's 100,000, however well they compress ({batches} batch)"
    );
    let status = ledger::projections::status(&pool).await.unwrap();
    let counterparties = status.iter().find(|s| s.name == "counterparties").unwrap();
    assert_eq!(counterparties.lag_events, 0, "{status:?}");
    let payees: i64 = sqlx::query_scalar("SELECT count(*) FROM counterparties")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(payees, 10_000);
}

/// Feed pages are bounded by bytes as well as by events (issue #15, item
/// 1): bulks of 10,000 transfers with incompressible descriptions make a
/// few events of megabytes each; a page of `limit=1000` holds only as many
/// as fit in `PAGE_BYTES` (at least one), and paging still delivers every
/// event once, in order.
#[tokio::test]
async fn feed_pages_are_bounded_by_bytes() {
    let app = TestApp::spawn().await;
    app.acme_with(100_000_000).await;
    for _ in 0..4 {
        let transfers: Vec<Value> = (0..10_000)
            .map(|_| {
                let mut t = transfer("1.00");
                let noise: String = (0..4).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
                t["description"] = Value::String(noise);
                t
            })
            .collect();
        let (status, body) = app.post("/v1/transfer/bulk", &bulk(transfers)).await;
        assert_eq!(status, 201, "{body}");
    }
    let largest: i32 = sqlx::query_scalar("SELECT max(pg_column_size(data)) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        i64::from(largest) * 3 > event_store::PAGE_BYTES,
        "three bulks pass a page's bytes ({largest} bytes each)"
    );
    let (first, _) = page_all(&app, "0", 1000).await;
    let (status, body) = app.get("/v1/events?limit=1000").await;
    assert_eq!(status, 200, "{body}");
    let page = body["events"].as_array().unwrap().len();
    assert!(
        page < 6,
        "one page of limit=1000 stops at its bytes: {page} of 6 events"
    );
    assert!(page >= 1);
    let positions: Vec<i64> = first.iter().map(|e| e["position"].as_i64().unwrap()).collect();
    assert_eq!(
        positions,
        vec![1, 2, 3, 4, 5, 6],
        "paging delivers every event once, in order"
    );
}

/// A runner batch does not hold the feed back (issue #15, item 6): its
/// transaction is exempt from the horizon. The runner's batch is blocked
/// on a lock held here, and an append made meanwhile still reaches the
/// feed at once (before, it waited for the batch to end).
#[tokio::test]
async fn a_runner_batch_in_progress_does_not_hold_the_feed() {
    use sqlx::Connection;
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    let mut blocker = sqlx::PgConnection::connect_with(&app.db.options).await.unwrap();
    // SHARE: blocks the runner's writes, and (unlike ACCESS EXCLUSIVE, which is
    // WAL-logged) gives this transaction no id of its own to hold the feed.
    sqlx::raw_sql("BEGIN; LOCK TABLE counterparties IN SHARE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let (status, body) = app.post("/v1/transfer/bulk", &bulk(vec![transfer("1.00")])).await;
    assert_eq!(status, 201, "{body}");
    // The runner's batch is now inside its statement, waiting for the lock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            // The batch statement (its text is cut at track_activity_query_size).
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock' \
             AND strpos(query, 'SELECT c, t, p FROM (WITH sized') > 0",
        )
        .bind(&app.db.name)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let activity: Vec<String> = sqlx::query_scalar(
                "SELECT concat_ws(' | ', state, wait_event_type, wait_event, left(query, 160)) \
                 FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(&app.db.name)
            .fetch_all(&app.pool)
            .await
            .unwrap();
            panic!("the runner never started its batch: {activity:#?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, body) = app
        .post(
            &format!("/v1/accounts/{ACME_IBAN}/deposits"),
            &json!({"amount": "1.00"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let deposit = body["position"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (events, _) = page_all(&app, "0", 100).await;
        if events.iter().any(|e| e["position"] == deposit) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the feed waits for the runner's batch: {} events",
            events.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    sqlx::raw_sql("ROLLBACK").execute(&mut blocker).await.unwrap();
    // The batch then completes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ledger::projections::status(&app.pool)
        .await
        .unwrap()
        .iter()
        .any(|s| s.name == "counterparties" && s.lag_events > 0)
    {
        assert!(std::time::Instant::now() < deadline, "the runner never finished");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
