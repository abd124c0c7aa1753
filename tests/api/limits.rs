//! Every configured limit at its edge, through the real binary: the limit
//! itself passes, one past it is a clear 4xx naming what was exceeded (or a
//! fast 503 for the time limits), and nothing is changed.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::Value;

use crate::support::*;

const BODY_MAX: usize = 2_000;
const BULK_MAX: usize = 3;
const PAGE_MAX: usize = 5;

#[tokio::test]
async fn each_limit_admits_its_edge_and_refuses_one_past_it() {
    let db = TestDb::new().await;
    let url = db.url();
    let (body_max, bulk_max, page_max) = (BODY_MAX.to_string(), BULK_MAX.to_string(), PAGE_MAX.to_string());
    let server = Binary::serve(&[
        ("DATABASE_URL", &url),
        ("LEDGER_IBAN_CHECK", "structure"),
        ("LEDGER_BODY_BYTES_MAX", &body_max),
        ("LEDGER_TRANSFERS_PER_BULK_MAX", &bulk_max),
        ("LEDGER_PAGE_SIZE_MAX", &page_max),
        // Generous time limits: ordinary requests pass well within them.
        ("LEDGER_REQUEST_TIMEOUT_MS", "10000"),
        ("LEDGER_STATEMENT_TIMEOUT_MS", "10000"),
        ("LEDGER_POOL_ACQUIRE_TIMEOUT_MS", "10000"),
    ]);
    let client = server.client.clone();
    open_acme(&client, &server.base, 1_000_000).await;
    let pool = db.pool().await;
    let events = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let post = |body: Vec<u8>, key: Option<String>| {
        let mut request = client
            .post(format!("{}/v1/transfer/bulk", server.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        async move { into_parts(request.send().await.unwrap()).await }
    };
    let refused = |status: u16, problem: &Value, expected_status: u16, field: Option<&str>| {
        assert_eq!(status, expected_status, "{problem}");
        if let Some(field) = field {
            assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        }
    };

    // Body size: exactly the limit is read, one byte more is a 413.
    let mut body = serde_json::to_vec(&bulk(vec![transfer("1.00")])).unwrap();
    assert!(body.len() < BODY_MAX);
    body.resize(BODY_MAX, b' ');
    let (status, booked) = post(body.clone(), None).await;
    assert_eq!(status, 201, "{booked}");
    let before = events().await;
    body.push(b' ');
    let (status, problem) = post(body, None).await;
    refused(status, &problem, 413, None);
    assert_eq!(problem["type"], "/problems/body-too-large");
    assert_eq!(events().await, before);

    // Transfers per bulk.
    let at_limit = serde_json::to_vec(&bulk(vec![transfer("1.00"); BULK_MAX])).unwrap();
    let (status, booked) = post(at_limit, None).await;
    assert_eq!(status, 201, "{booked}");
    assert_eq!(booked["transfer_count"], BULK_MAX);
    let before = events().await;
    let past = serde_json::to_vec(&bulk(vec![transfer("1.00"); BULK_MAX + 1])).unwrap();
    let (status, problem) = post(past, None).await;
    refused(status, &problem, 400, Some("credit_transfers"));
    assert_eq!(events().await, before);

    // Idempotency-Key length: 255 characters, then 256.
    let one = serde_json::to_vec(&bulk(vec![transfer("1.00")])).unwrap();
    let (status, _) = post(one.clone(), Some("k".repeat(255))).await;
    assert_eq!(status, 201);
    let before = events().await;
    let (status, problem) = post(one, Some("k".repeat(256))).await;
    refused(status, &problem, 400, Some("Idempotency-Key"));
    assert_eq!(events().await, before);

    // Page size, for the history and for the event feed.
    for path in [
        format!("/v1/accounts/{ACME_IBAN}/transactions"),
        "/v1/events".to_owned(),
    ] {
        let get = |limit: usize| {
            let request = client.get(format!("{}{path}?limit={limit}", server.base));
            async move { into_parts(request.send().await.unwrap()).await }
        };
        let (status, page) = get(PAGE_MAX).await;
        assert_eq!(status, 200, "{path}: {page}");
        let items = page.get("items").or_else(|| page.get("events")).unwrap();
        assert_eq!(items.as_array().unwrap().len(), PAGE_MAX, "{path}: a full page");
        let (status, problem) = get(PAGE_MAX + 1).await;
        refused(status, &problem, 400, Some("limit"));
    }
}

/// A pool of one connection and a 50 ms wait for it. A query holds that
/// connection (blocked on a table lock the test takes); meanwhile every
/// other request is a prompt 503 problem, never a 500 or a hang, and once
/// the lock goes the held query is answered normally.
#[tokio::test]
async fn a_pool_wait_over_its_limit_is_a_prompt_503() {
    let db = TestDb::new().await;
    let url = db.url();
    let server = Binary::serve(&[
        ("DATABASE_URL", &url),
        ("LEDGER_IBAN_CHECK", "structure"),
        ("LEDGER_POOL_SIZE", "1"),
        ("LEDGER_POOL_ACQUIRE_TIMEOUT_MS", "50"),
    ]);
    let client = server.client.clone();
    open_acme(&client, &server.base, 1_000_000).await;
    let account = format!("{}/v1/accounts/{ACME_IBAN}", server.base);

    let pool = db.pool().await;
    // The posting process shares the server's one connection and reads
    // balances while it has events to pass: once caught up it only peeks at
    // the feed, so the connection that waits on the lock is the held
    // query's (CI, fresh clone: the process took it, and the held query
    // was the one answered 503).
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger::posting::lag(&pool).await.unwrap().1 > 0 {
        assert!(Instant::now() < deadline, "the posting process never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE balances IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let held = tokio::spawn(client.get(&account).send());
    // Until the server's only connection waits on the lock.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' \
             AND query LIKE '%FROM balances b WHERE b.account_id = $1%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the query never reached the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let responses = join_all((0..20).map(|_| {
        let request = client.get(&account);
        async move {
            let started = Instant::now();
            let response = request.send().await.unwrap();
            let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
            let (status, body) = into_parts(response).await;
            (status, content_type, body, started.elapsed())
        }
    }))
    .await;
    for (status, content_type, body, elapsed) in responses {
        assert_eq!(status, 503, "{body}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(body["type"], "/problems/unavailable", "{body}");
        // Bounded: nowhere near the 30 s request limit a hang would reach.
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }
    assert!(!held.is_finished(), "the held query still waits for the lock");
    lock.commit().await.unwrap();
    let (status, body) = into_parts(held.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["balance_cents"], 1_000_000);
}
