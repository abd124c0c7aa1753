//! Reads: the account and its history.

use crate::support::*;

#[tokio::test]
async fn the_account_shows_its_balance_version_and_position() {
    let app = TestApp::spawn().await;
    app.acme_with(123_456).await;
    let (status, account) = app.get(&format!("/v1/accounts/{ACME_IBAN}")).await;
    assert_eq!(status, 200);
    assert_eq!(account["balance"], "1234.56");
    assert_eq!(account["balance_cents"], 123_456);
    assert_eq!(account["version"], 2);
    assert_eq!(account["organization_name"], ACME_NAME);
    assert_eq!(account["bic"], ACME_BIC);
    assert!(account["position"].as_i64().unwrap() >= 2);
    // Spaces and lower case in the path find the same account.
    let (status, _) = app
        .get("/v1/accounts/fr10%204746%200800%200002%200061%2007XX%20XXX")
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn history_pages_newest_first_with_a_cursor() {
    let app = TestApp::spawn().await;
    app.acme_with(100_000).await;
    for i in 1..=4 {
        let (status, _) = app
            .post(
                "/v1/transfer/bulk",
                &bulk(vec![transfer(&format!("{i}.00")), transfer("0.50")]),
            )
            .await;
        assert_eq!(status, 201);
    }
    // 1 deposit + 8 transfers = 9 rows; pages of 4.
    let mut seen = Vec::new();
    let mut path = format!("/v1/accounts/{ACME_IBAN}/transactions?limit=4");
    loop {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 4);
        seen.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/accounts/{ACME_IBAN}/transactions?limit=4&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 9);
    let balances: Vec<i64> = seen
        .iter()
        .map(|i| i["balance_after_cents"].as_i64().unwrap())
        .collect();
    let mut running = 100_000;
    let mut expected = vec![running];
    for i in 1..=4 {
        running -= i * 100;
        expected.push(running);
        running -= 50;
        expected.push(running);
    }
    expected.reverse();
    assert_eq!(balances, expected, "newest first, each with the balance right after it");
    let last = &seen[8];
    assert_eq!(last["kind"], "deposit");
    assert_eq!(last["amount"], "1000.00");
    let first = &seen[0];
    assert_eq!(first["kind"], "transfer");
    assert_eq!(first["amount_cents"], -50);
    assert_eq!(first["amount"], "-0.50");
    assert_eq!(first["counterparty_iban"], "EE383680981021245685");
    assert!(first["bulk_id"].is_string() && first["recorded_at"].is_string() && first["position"].is_i64());
}

#[tokio::test]
async fn bad_page_parameters_are_400() {
    let app = TestApp::spawn().await;
    app.acme_with(100).await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("cursor=zzz", "cursor"),
    ] {
        let (status, problem) = app.get(&format!("/v1/accounts/{ACME_IBAN}/transactions?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(problem["errors"][0]["field"], field);
    }
    let (status, _) = app
        .get(&format!("/v1/accounts/{ACME_IBAN}/transactions?limit=1000"))
        .await;
    assert_eq!(status, 200);
    let (status, _) = app.get("/v1/accounts/GB82WEST12345698765432/transactions").await;
    assert_eq!(status, 404);
}
