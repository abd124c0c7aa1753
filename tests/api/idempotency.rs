//! Idempotency keys (SPEC §2.4).

use futures::future::join_all;
use serde_json::{Value, json};

use crate::support::*;

async fn post_with_key(app: &TestApp, path: &str, key: &str, body: &Value) -> (u16, Option<String>, Value) {
    let response = app
        .client
        .post(app.url(path))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = into_parts(response).await;
    (status, replayed, body)
}

/// A repeat with the same key and body returns the first response and
/// applies nothing again; a different body under the key is a 409.
#[tokio::test]
async fn a_repeated_key_replays_the_first_response() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    let body = bulk(vec![transfer("10.00")]);
    let (status, replayed, first) = post_with_key(&app, "/v1/transfer/bulk", "payroll-2026-11", &body).await;
    assert_eq!((status, replayed), (201, None));
    let (status, replayed, again) = post_with_key(&app, "/v1/transfer/bulk", "payroll-2026-11", &body).await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    assert_eq!(again, first, "same body, same ids");
    assert_eq!(app.balance_cents(ACME_IBAN).await, 9_000, "debited once");

    let other = bulk(vec![transfer("11.00")]);
    let (status, _, problem) = post_with_key(&app, "/v1/transfer/bulk", "payroll-2026-11", &other).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(app.balance_cents(ACME_IBAN).await, 9_000);

    // The same document with its keys in another order is the same request.
    let reordered: Value = serde_json::from_str(&format!(
        r#"{{"credit_transfers": {}, "organization_iban": "{ACME_IBAN}", "organization_bic": "{ACME_BIC}", "organization_name": "{ACME_NAME}"}}"#,
        body["credit_transfers"]
    ))
    .unwrap();
    let (status, replayed, _) = post_with_key(&app, "/v1/transfer/bulk", "payroll-2026-11", &reordered).await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));

    // Deposits and account opening take keys too.
    let (status, _, first) = post_with_key(
        &app,
        &format!("/v1/accounts/{ACME_IBAN}/deposits"),
        "dep-1",
        &json!({"amount": "5"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, replayed, again) = post_with_key(
        &app,
        &format!("/v1/accounts/{ACME_IBAN}/deposits"),
        "dep-1",
        &json!({"amount": "5"}),
    )
    .await;
    assert_eq!((status, replayed.as_deref(), again), (201, Some("true"), first));
    assert_eq!(app.balance_cents(ACME_IBAN).await, 9_500);
}

/// A refused bulk replays as the same 422 even after a later deposit would
/// have let it through: a retry never turns a 422 into a 201.
#[tokio::test]
async fn a_refused_bulk_replays_as_422_after_a_deposit() {
    let app = TestApp::spawn().await;
    app.acme_with(100).await;
    let body = bulk(vec![transfer("5.00")]);
    let (status, _, first) = post_with_key(&app, "/v1/transfer/bulk", "k-422", &body).await;
    assert_eq!(status, 422);
    let (status, _) = app
        .post(&format!("/v1/accounts/{ACME_IBAN}/deposits"), &json!({"amount": "100"}))
        .await;
    assert_eq!(status, 201);
    let (status, replayed, again) = post_with_key(&app, "/v1/transfer/bulk", "k-422", &body).await;
    assert_eq!((status, replayed.as_deref()), (422, Some("true")));
    assert_eq!(again, first);
    assert_eq!(app.balance_cents(ACME_IBAN).await, 10_100);
}

/// 16 concurrent requests with one key apply once, and all get the same answer.
#[tokio::test]
async fn sixteen_concurrent_requests_with_one_key_apply_once() {
    let app = TestApp::spawn().await;
    app.acme_with(100_000).await;
    let body = bulk(vec![transfer("10.00"), transfer("0.01")]);
    let responses = join_all((0..16).map(|_| post_with_key(&app, "/v1/transfer/bulk", "same-key", &body))).await;
    let first = &responses[0].2;
    for (status, _, answer) in &responses {
        assert_eq!(*status, 201);
        assert_eq!(answer["bulk_id"], first["bulk_id"]);
    }
    assert_eq!(
        responses.iter().filter(|r| r.1.is_none()).count(),
        1,
        "exactly one was applied, the rest replayed"
    );
    assert_eq!(app.balance_cents(ACME_IBAN).await, 100_000 - 1_001);
    let booked: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'BulkTransferBooked'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(booked, 1);
}

/// Keys must be 1 to 255 printable ASCII characters.
#[tokio::test]
async fn malformed_keys_are_refused() {
    let app = TestApp::spawn().await;
    app.acme_with(1_000).await;
    let body = bulk(vec![transfer("1.00")]);
    for key in ["".to_owned(), "k".repeat(256)] {
        let (status, _, problem) = post_with_key(&app, "/v1/transfer/bulk", &key, &body).await;
        assert_eq!(status, 400, "{problem}");
        assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    }
    let (status, _, _) = post_with_key(&app, "/v1/transfer/bulk", &"k".repeat(255), &body).await;
    assert_eq!(status, 201);
    assert_eq!(app.balance_cents(ACME_IBAN).await, 900);
}

/// Keys are remembered for their time to live, then forgotten in bounded
/// batches; a recent key stays.
#[tokio::test]
async fn expired_keys_are_purged_and_recent_ones_kept() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    let body = bulk(vec![transfer("1.00")]);
    assert_eq!(post_with_key(&app, "/v1/transfer/bulk", "old-key", &body).await.0, 201);
    assert_eq!(post_with_key(&app, "/v1/transfer/bulk", "new-key", &body).await.0, 201);
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '8 days' WHERE key = 'old-key'")
        .execute(&app.pool)
        .await
        .unwrap();
    let week = std::time::Duration::from_secs(7 * 24 * 3600);
    let purged = ledger::app::idempotency::purge(&app.pool, week).await.unwrap();
    assert_eq!(purged, 1);
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(keys, vec!["new-key".to_owned()]);
    // The recent key still replays; the forgotten one is a new request.
    let (status, replayed, _) = post_with_key(&app, "/v1/transfer/bulk", "new-key", &body).await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    let (status, replayed, _) =
        post_with_key(&app, "/v1/transfer/bulk", "old-key", &bulk(vec![transfer("2.00")])).await;
    assert_eq!((status, replayed), (201, None));
}
