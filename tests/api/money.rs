//! Exact money over HTTP: amounts are read from their digits.

use serde_json::json;

use crate::support::*;

async fn deposit_raw(app: &TestApp, body: &str) -> (u16, serde_json::Value) {
    let response = app
        .client
        .post(app.url(&format!("/v1/accounts/{ACME_IBAN}/deposits")))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    into_parts(response).await
}

/// `"0.29"` and the JSON number `0.29` are both 29 cents (the seed made 28).
#[tokio::test]
async fn string_and_number_0_29_are_29_cents() {
    let app = TestApp::spawn().await;
    app.acme_with(0).await;
    let (status, body) = deposit_raw(&app, r#"{"amount": "0.29"}"#).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["amount_cents"], 29);
    let (status, body) = deposit_raw(&app, r#"{"amount": 0.29}"#).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["amount_cents"], 29);
    assert_eq!(body["balance_cents"], 58);
    assert_eq!(body["balance"], "0.58");

    // And a bulk transfer of 0.29 as a JSON number debits exactly 29 cents.
    let (status, body) = app.post("/v1/transfer/bulk", &bulk(vec![json!({"amount": 0.29, "currency": "EUR",
        "counterparty_name": "Bip Bip", "counterparty_bic": "CRLYFRPPTOU", "counterparty_iban": "EE383680981021245685"})])).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["total_cents"], 29);
    assert_eq!(app.balance_cents(ACME_IBAN).await, 29);
}

/// Amounts with too many decimals, not positive, not numeric or absurdly
/// large are a 400 naming the field, and change nothing.
#[tokio::test]
async fn bad_amounts_are_400_and_change_nothing() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    let events_before = app.event_count().await;
    for amount in [
        r#""1.005""#,
        r#""-1""#,
        r#""0""#,
        r#""abc""#,
        "1e309",
        "-1",
        "0",
        "1.005",
        r#""1000000000000.01""#,
        "true",
        "null",
        r#""""#,
    ] {
        let (status, body) = deposit_raw(&app, &format!(r#"{{"amount": {amount}}}"#)).await;
        assert_eq!(status, 400, "deposit {amount}: {body}");
        assert_eq!(body["errors"][0]["field"], "amount", "{body}");
        let transfer_body = format!(
            r#"{{"organization_name": "ACME Corp", "organization_bic": "OIVUSCLQXXX", "organization_iban": "{ACME_IBAN}",
                "credit_transfers": [{{"amount": {amount}, "currency": "EUR", "counterparty_name": "A",
                "counterparty_bic": "CRLYFRPPTOU", "counterparty_iban": "EE383680981021245685"}}]}}"#
        );
        let response = app
            .client
            .post(app.url("/v1/transfer/bulk"))
            .header("content-type", "application/json")
            .body(transfer_body)
            .send()
            .await
            .unwrap();
        let (status, body) = into_parts(response).await;
        assert_eq!(status, 400, "transfer {amount}: {body}");
        assert_eq!(body["errors"][0]["field"], "credit_transfers[0].amount", "{body}");
    }
    assert_eq!(app.balance_cents(ACME_IBAN).await, 10_000);
    assert_eq!(app.event_count().await, events_before);
}
