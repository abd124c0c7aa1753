//! The original service's behaviour scenarios (shared/seed/README.md),
//! through the real `ledger` binary.

use futures::future::join_all;
use serde_json::json;

use crate::support::*;

async fn serve_seed() -> (Binary, TestDb) {
    let db = TestDb::new().await;
    let binary = Binary::serve(&[("DATABASE_URL", &db.url()), ("LEDGER_IBAN_CHECK", "structure")]);
    (binary, db)
}

async fn acme_balance(client: &reqwest::Client, base: &str) -> i64 {
    let response = client
        .get(format!("{base}/v1/accounts/{ACME_IBAN}"))
        .send()
        .await
        .unwrap();
    let (status, body) = into_parts(response).await;
    assert_eq!(status, 200, "{body}");
    body["balance_cents"].as_i64().unwrap()
}

/// Scenario 1: sample1.json books its three transfers and leaves 37,748.50.
#[tokio::test]
async fn sample1_books_three_transfers_and_leaves_37748_50() {
    let (binary, _db) = serve_seed().await;
    let client = binary.client.clone();
    open_acme(&client, &binary.base, 10_000_000).await;

    let response = client
        .post(format!("{}/v1/transfer/bulk", binary.base))
        .json(&fixture("sample1.json"))
        .send()
        .await
        .unwrap();
    let (status, body) = into_parts(response).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["total"], "62251.50");
    assert_eq!(body["total_cents"], 6_225_150);
    assert_eq!(body["balance_after"], "37748.50");
    assert_eq!(body["balance_after_cents"], 3_774_850);
    assert_eq!(body["transfer_ids"].as_array().unwrap().len(), 3);
    assert!(body["bulk_id"].is_string());

    assert_eq!(acme_balance(&client, &binary.base).await, 3_774_850);
    let response = client
        .get(format!("{}/v1/accounts/{ACME_IBAN}/transactions", binary.base))
        .send()
        .await
        .unwrap();
    let (_, history) = into_parts(response).await;
    let items = history["items"].as_array().unwrap();
    // Newest first: the three transfers (last one first), then the deposit.
    let amounts: Vec<i64> = items.iter().map(|i| i["amount_cents"].as_i64().unwrap()).collect();
    assert_eq!(amounts, vec![-99_900, -6_123_800, -1_450, 10_000_000]);
    let names: Vec<&str> = items[..3]
        .iter()
        .map(|i| i["counterparty_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Bugs Bunny", "Wile E Coyote", "Bip Bip"]);
    let ids: Vec<&str> = items[..3]
        .iter()
        .rev()
        .map(|i| i["transaction_id"].as_str().unwrap())
        .collect();
    let returned: Vec<&str> = body["transfer_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        ids, returned,
        "history rows carry the transfer ids of the 201, in request order"
    );
    assert_eq!(items[0]["balance_after_cents"], 3_774_850);
    assert_eq!(items[2]["balance_after_cents"], 9_998_550);
}

/// Scenario 2: sample1.json posted many times at once — exactly one 201,
/// every other a 422; three transfers booked in all.
#[tokio::test]
async fn sample1_posted_concurrently_is_accepted_exactly_once() {
    let (binary, db) = serve_seed().await;
    let client = binary.client.clone();
    open_acme(&client, &binary.base, 10_000_000).await;
    let body = fixture("sample1.json");
    let attempts = join_all((0..20).map(|_| {
        client
            .post(format!("{}/v1/transfer/bulk", binary.base))
            .json(&body)
            .send()
    }))
    .await;
    let mut statuses: Vec<u16> = attempts.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 422).count(), 19, "{statuses:?}");
    assert_eq!(acme_balance(&client, &binary.base).await, 3_774_850);
    let pool = db.pool().await;
    let transfers: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions WHERE kind = 'transfer'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(transfers, 3);
    let rejected: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'BulkTransferRejected'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rejected, 19, "every refusal is in the audit trail");
}

/// Scenario 3: sample2.json (100,000.01) on the fresh account is refused
/// and books nothing.
#[tokio::test]
async fn sample2_is_refused_for_insufficient_funds_and_books_nothing() {
    let (binary, _db) = serve_seed().await;
    let client = binary.client.clone();
    open_acme(&client, &binary.base, 10_000_000).await;
    let response = client
        .post(format!("{}/v1/transfer/bulk", binary.base))
        .json(&fixture("sample2.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let (status, body) = into_parts(response).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["requested_cents"], 10_000_001);
    assert_eq!(body["available_cents"], 10_000_000);
    assert_eq!(body["status"], 422);
    assert_eq!(acme_balance(&client, &binary.base).await, 10_000_000);
    let response = client
        .get(format!("{}/v1/accounts/{ACME_IBAN}/transactions", binary.base))
        .send()
        .await
        .unwrap();
    let (_, history) = into_parts(response).await;
    assert_eq!(
        history["items"].as_array().unwrap().len(),
        1,
        "only the deposit: {history}"
    );
}

/// Without the structure-only setting, the seed's IBANs fail the mod-97
/// check: the full check is the default.
#[tokio::test]
async fn the_seed_ibans_are_refused_by_the_default_full_check() {
    let db = TestDb::new().await;
    let binary = Binary::serve(&[("DATABASE_URL", &db.url())]);
    let response = binary
        .client
        .post(format!("{}/v1/accounts", binary.base))
        .json(&json!({"organization_name": ACME_NAME, "iban": ACME_IBAN, "bic": ACME_BIC}))
        .send()
        .await
        .unwrap();
    let (status, body) = into_parts(response).await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["field"], "iban");
}
