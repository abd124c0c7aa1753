//! Table-driven: every 400/404/409/413/415 of SPEC §2.3 is a problem+json
//! naming what is wrong, and changes nothing.

use ledger::app::{Limits, Settings};
use ledger::domain::IbanCheck;
use serde_json::{Value, json};

use crate::support::*;

fn with(mut body: Value, path: &[&str], value: Value) -> Value {
    let mut target = &mut body;
    for key in &path[..path.len() - 1] {
        target = match key.parse::<usize>() {
            Ok(index) => &mut target[index],
            Err(_) => &mut target[*key],
        };
    }
    let last = path[path.len() - 1];
    match last.parse::<usize>() {
        Ok(index) => target[index] = value,
        Err(_) => target[last] = value,
    }
    body
}

fn without(mut body: Value, key: &str) -> Value {
    body.as_object_mut().unwrap().remove(key);
    body
}

#[tokio::test]
async fn every_invalid_bulk_is_refused_with_a_named_field_and_changes_nothing() {
    let settings = Settings {
        iban_check: IbanCheck::Structure,
        limits: Limits {
            transfers_per_bulk_max: 5,
            body_bytes_max: 64 * 1024,
            ..Limits::default()
        },
        ..Settings::default()
    };
    let app = TestApp::spawn_with(settings).await;
    app.acme_with(10_000).await;
    let events_before = app.event_count().await;
    let valid = bulk(vec![transfer("1.00"), transfer("2.00"), transfer("3.00")]);

    // (case, body, expected status, expected field)
    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        ("not an object", json!([1, 2]), 400, Some("body")),
        (
            "missing organization_name",
            without(valid.clone(), "organization_name"),
            400,
            Some("organization_name"),
        ),
        (
            "empty organization_name",
            with(valid.clone(), &["organization_name"], json!("  ")),
            400,
            Some("organization_name"),
        ),
        (
            "missing organization_iban",
            without(valid.clone(), "organization_iban"),
            400,
            Some("organization_iban"),
        ),
        (
            "invalid organization_iban",
            with(valid.clone(), &["organization_iban"], json!("FR1")),
            400,
            Some("organization_iban"),
        ),
        (
            "invalid organization_bic",
            with(valid.clone(), &["organization_bic"], json!("OIVU")),
            400,
            Some("organization_bic"),
        ),
        (
            "missing credit_transfers",
            without(valid.clone(), "credit_transfers"),
            400,
            Some("credit_transfers"),
        ),
        (
            "credit_transfers not an array",
            with(valid.clone(), &["credit_transfers"], json!({})),
            400,
            Some("credit_transfers"),
        ),
        (
            "empty credit_transfers",
            with(valid.clone(), &["credit_transfers"], json!([])),
            400,
            Some("credit_transfers"),
        ),
        (
            "over the transfer limit",
            bulk(vec![transfer("1.00"); 6]),
            400,
            Some("credit_transfers"),
        ),
        (
            "transfer not an object",
            with(valid.clone(), &["credit_transfers", "1"], json!("x")),
            400,
            Some("credit_transfers[1]"),
        ),
        (
            "missing amount",
            with(valid.clone(), &["credit_transfers", "2", "amount"], Value::Null),
            400,
            Some("credit_transfers[2].amount"),
        ),
        (
            "three decimals",
            with(valid.clone(), &["credit_transfers", "2", "amount"], json!("1.005")),
            400,
            Some("credit_transfers[2].amount"),
        ),
        (
            "unknown currency",
            with(valid.clone(), &["credit_transfers", "0", "currency"], json!("EURO")),
            400,
            Some("credit_transfers[0].currency"),
        ),
        (
            "missing currency",
            with(valid.clone(), &["credit_transfers", "0", "currency"], Value::Null),
            400,
            Some("credit_transfers[0].currency"),
        ),
        (
            "invalid counterparty_iban",
            with(
                valid.clone(),
                &["credit_transfers", "1", "counterparty_iban"],
                json!("EE38-3680"),
            ),
            400,
            Some("credit_transfers[1].counterparty_iban"),
        ),
        (
            "a transfer to the ordering account itself (SPEC §9)",
            with(
                valid.clone(),
                &["credit_transfers", "2", "counterparty_iban"],
                json!(ACME_IBAN),
            ),
            400,
            Some("credit_transfers[2].counterparty_iban"),
        ),
        (
            "invalid counterparty_bic",
            with(
                valid.clone(),
                &["credit_transfers", "1", "counterparty_bic"],
                json!("CRLY"),
            ),
            400,
            Some("credit_transfers[1].counterparty_bic"),
        ),
        (
            "missing counterparty_name",
            with(
                valid.clone(),
                &["credit_transfers", "0", "counterparty_name"],
                Value::Null,
            ),
            400,
            Some("credit_transfers[0].counterparty_name"),
        ),
        (
            "name too long",
            with(
                valid.clone(),
                &["credit_transfers", "0", "counterparty_name"],
                json!("x".repeat(141)),
            ),
            400,
            Some("credit_transfers[0].counterparty_name"),
        ),
        (
            "description not a string",
            with(valid.clone(), &["credit_transfers", "0", "description"], json!(5)),
            400,
            Some("credit_transfers[0].description"),
        ),
        (
            "unknown account",
            with(valid.clone(), &["organization_iban"], json!("DE89370400440532013000")),
            404,
            None,
        ),
        (
            "BIC does not match",
            with(valid.clone(), &["organization_bic"], json!("DEUTDEFFXXX")),
            404,
            None,
        ),
        (
            "organization does not match",
            with(valid.clone(), &["organization_name"], json!("ACME Inc")),
            404,
            None,
        ),
        (
            "currency differs from the account's",
            with(valid.clone(), &["credit_transfers", "1", "currency"], json!("USD")),
            422,
            Some("credit_transfers[1].currency"),
        ),
        (
            "body over the limit",
            bulk(vec![with(
                transfer("1.00"),
                &["description"],
                json!("x".repeat(70 * 1024)),
            )]),
            413,
            None,
        ),
    ];
    for (case, body, status, field) in cases {
        let response = app
            .client
            .post(app.url("/v1/transfer/bulk"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["content-type"], "application/problem+json", "{case}");
        assert!(response.headers().contains_key("x-request-id"), "{case}");
        let (got, problem) = into_parts(response).await;
        assert_eq!(got, status, "{case}: {problem}");
        assert_eq!(problem["status"], status, "{case}");
        assert!(
            problem["title"].is_string() && problem["detail"].is_string() && problem["type"].is_string(),
            "{case}: {problem}"
        );
        if let Some(field) = field {
            let fields: Vec<&str> = problem["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["field"].as_str().unwrap())
                .collect();
            assert_eq!(fields, vec![field], "{case}: {problem}");
        }
    }

    // Malformed JSON and a non-JSON content type.
    let response = app
        .client
        .post(app.url("/v1/transfer/bulk"))
        .header("content-type", "application/json")
        .body("{\"organization_name\": ")
        .send()
        .await
        .unwrap();
    let (status, problem) = into_parts(response).await;
    assert_eq!(status, 400);
    assert_eq!(problem["errors"][0]["field"], "body");
    let response = app
        .client
        .post(app.url("/v1/transfer/bulk"))
        .header("content-type", "text/plain")
        .body(valid.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);

    // A bulk at exactly the limit passes.
    let (status, body) = app.post("/v1/transfer/bulk", &bulk(vec![transfer("1.00"); 5])).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(app.balance_cents(ACME_IBAN).await, 10_000 - 500);
    assert_eq!(
        app.event_count().await,
        events_before + 1,
        "only the valid bulk appended an event"
    );
}

#[tokio::test]
async fn invalid_accounts_and_deposits_are_refused_and_change_nothing() {
    let app = TestApp::spawn_with(Settings::default()).await;
    let valid = json!({"organization_name": "Globex", "iban": "DE89 3704 0044 0532 0130 00", "bic": "COBADEFFXXX"});
    let (status, body) = app.post("/v1/accounts", &valid).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["iban"], "DE89370400440532013000",
        "stored upper-case without spaces"
    );
    assert_eq!(body["currency"], "EUR", "EUR by default");
    assert_eq!(body["balance"], "0.00");
    let events_before = app.event_count().await;

    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        ("same IBAN twice", valid.clone(), 409, None),
        (
            "same IBAN, other spelling",
            with(valid.clone(), &["iban"], json!("de89370400440532013000")),
            409,
            None,
        ),
        (
            "bad check digits",
            with(valid.clone(), &["iban"], json!("DE88370400440532013000")),
            400,
            Some("iban"),
        ),
        (
            "wrong length for the country",
            with(valid.clone(), &["iban"], json!("DE8937040044053201300")),
            400,
            Some("iban"),
        ),
        (
            "bad BIC",
            with(valid.clone(), &["bic"], json!("COBADE")),
            400,
            Some("bic"),
        ),
        (
            "unknown currency",
            with(valid.clone(), &["currency"], json!("ABC")),
            400,
            Some("currency"),
        ),
        (
            "missing name",
            without(valid.clone(), "organization_name"),
            400,
            Some("organization_name"),
        ),
    ];
    for (case, body, status, field) in cases {
        let (got, problem) = app.post("/v1/accounts", &body).await;
        assert_eq!(got, status, "{case}: {problem}");
        if let Some(field) = field {
            assert_eq!(problem["errors"][0]["field"], field, "{case}: {problem}");
        }
    }

    let deposits: Vec<(&str, &str, Value, u16)> = vec![
        (
            "unknown account",
            "/v1/accounts/GB82WEST12345698765432/deposits",
            json!({"amount": "1"}),
            404,
        ),
        (
            "garbage IBAN in the path",
            "/v1/accounts/nope/deposits",
            json!({"amount": "1"}),
            400,
        ),
        (
            "other currency",
            "/v1/accounts/DE89370400440532013000/deposits",
            json!({"amount": "1", "currency": "USD"}),
            422,
        ),
        (
            "bad currency",
            "/v1/accounts/DE89370400440532013000/deposits",
            json!({"amount": "1", "currency": "usd"}),
            400,
        ),
        (
            "reference not a string",
            "/v1/accounts/DE89370400440532013000/deposits",
            json!({"amount": "1", "reference": []}),
            400,
        ),
    ];
    for (case, path, body, status) in deposits {
        let (got, problem) = app.post(path, &body).await;
        assert_eq!(got, status, "{case}: {problem}");
    }
    assert_eq!(app.event_count().await, events_before);
    assert_eq!(app.balance_cents("DE89370400440532013000").await, 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_too() {
    let app = TestApp::spawn().await;
    let response = app.client.get(app.url("/v1/nothing-here")).send().await.unwrap();
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert_eq!(response.status().as_u16(), 404);
    let response = app.client.delete(app.url("/v1/transfer/bulk")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let (status, _) = app.get(&format!("/v1/accounts/{ACME_IBAN}")).await;
    assert_eq!(status, 404);
}

/// A client's `x-request-id` is echoed when usable; a 20,000-character one
/// (or an empty one) is replaced by a fresh id, never echoed nor logged
/// whole (issue #15, item 8).
#[tokio::test]
async fn an_unusable_request_id_is_replaced_and_a_usable_one_echoed() {
    let app = TestApp::spawn().await;
    let echoed = |id: String| {
        let request = app
            .client
            .get(app.url("/v1/accounts/DE89370400440532013000"))
            .header("x-request-id", id);
        async move {
            let response = request.send().await.unwrap();
            response.headers()["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(echoed("trace-42".into()).await, "trace-42");
    let long = "x".repeat(20_000);
    let replaced = echoed(long).await;
    assert!(
        uuid::Uuid::parse_str(&replaced).is_ok(),
        "a fresh id, not the client's: {replaced:.60}"
    );
    let at_limit = "y".repeat(200);
    assert_eq!(echoed(at_limit.clone()).await, at_limit);
    let replaced = echoed(String::new()).await;
    assert!(uuid::Uuid::parse_str(&replaced).is_ok(), "{replaced}");
}
