//! The event store refuses to change history, whoever connects, and chains
//! each event's hash to its predecessor's.

use ledger::event_store;
use sqlx::Row;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn the_database_refuses_update_delete_and_truncate_on_events() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    for statement in [
        "UPDATE events SET data = '{}'::jsonb",
        "DELETE FROM events",
        "TRUNCATE events",
        "TRUNCATE events CASCADE",
    ] {
        let error = sqlx::query(statement).execute(&app.pool).await.expect_err(statement);
        assert!(
            error.to_string().contains("events are immutable"),
            "{statement}: {error}"
        );
    }
    assert_eq!(app.event_count().await, 2);
}

#[tokio::test]
async fn each_event_hash_chains_to_the_previous_one_in_its_stream() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    app.post("/v1/transfer/bulk", &bulk(vec![transfer("1.00"), transfer("2.00")]))
        .await;
    let stream_id: uuid::Uuid = sqlx::query("SELECT stream_id FROM events LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap()
        .get(0);
    let events = event_store::read_stream(&app.pool, stream_id, None, None)
        .await
        .unwrap();
    assert_eq!(events.len(), 3);
    let mut previous = event_store::hash::GENESIS;
    for event in &events {
        assert_eq!(
            event.computed_hash(&previous).as_slice(),
            event.hash.as_slice(),
            "version {}",
            event.version
        );
        previous = event.hash.clone().try_into().unwrap();
        event.to_event().expect("stored payload reads back as a domain event");
    }
    assert_eq!(events[0].metadata["command"], "OpenAccount");
    assert!(
        events[2].metadata["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
}

/// Appending at a stale version is a conflict, never a second write.
#[tokio::test]
async fn a_stale_expected_version_is_a_conflict() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    let stream_id: uuid::Uuid = sqlx::query("SELECT stream_id FROM events LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap()
        .get(0);
    let stale = event_store::StreamHead {
        version: 1,
        hash: [0; 32],
        recorded_at: None,
    };
    let event = ledger::domain::Event::BulkTransferRejected {
        bulk_id: uuid::Uuid::now_v7(),
        reason: "insufficient_funds".into(),
        currency: ledger::domain::Currency::EUR,
        requested_cents: 1,
        available_cents: 0,
        transfer_count: 1,
    };
    let result = event_store::append(
        &app.pool,
        stream_id,
        stale,
        &[event_store::NewEvent {
            event,
            metadata: json!({}),
        }],
        chrono::Utc::now(),
        &[],
    )
    .await;
    assert!(
        matches!(result, Err(event_store::AppendError::VersionConflict(Some(stream))) if stream == stream_id),
        "the conflict names its stream, so a batch re-decides only it: {result:?}"
    );
    assert_eq!(app.event_count().await, 2);
}

#[tokio::test]
async fn large_payloads_are_stored_lz4_compressed() {
    let app = TestApp::spawn().await;
    app.acme_with(1_000_000).await;
    // 200 transfers: a payload well past PostgreSQL's TOAST threshold.
    let transfers: Vec<_> = (0..200).map(|_| transfer("1.00")).collect();
    let (status, body) = app.post("/v1/transfer/bulk", &bulk(transfers)).await;
    assert_eq!(status, 201, "{body}");
    let method: Option<String> =
        sqlx::query_scalar("SELECT pg_column_compression(data) FROM events WHERE event_type = 'BulkTransferBooked'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(method.as_deref(), Some("lz4"));
}

/// A stream's `recorded_at` never goes backwards (issue #15, item 5): after
/// an event recorded by a server whose clock runs an hour ahead, a server
/// with the right clock records the stream's next event no earlier, so
/// `as_of` always selects a prefix of the stream and never fails.
#[tokio::test]
async fn a_streams_recorded_times_never_go_backwards() {
    let app = TestApp::spawn().await;
    app.acme_with(10_000).await;
    let iban = ledger::domain::Iban::parse(ACME_IBAN, ledger::domain::IbanCheck::Structure).unwrap();
    let (account, head) = ledger::app::queries::load_account(&app.pool, &iban)
        .await
        .unwrap()
        .unwrap();
    let ahead = chrono::Utc::now() + chrono::Duration::hours(1);
    let event = ledger::domain::Event::BulkTransferRejected {
        bulk_id: uuid::Uuid::now_v7(),
        reason: "insufficient_funds".into(),
        currency: ledger::domain::Currency::EUR,
        requested_cents: 1_000_000,
        available_cents: 10_000,
        transfer_count: 1,
    };
    event_store::append(
        &app.pool,
        account.account_id,
        head,
        &[event_store::NewEvent {
            event,
            metadata: json!({}),
        }],
        ahead,
        &[],
    )
    .await
    .unwrap();
    // This server's clock is right; the stream's head is an hour ahead.
    let (status, body) = app
        .post(
            &format!("/v1/accounts/{ACME_IBAN}/deposits"),
            &json!({"amount": "1.00"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT recorded_at FROM events WHERE stream_id = $1 ORDER BY version")
            .bind(account.account_id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(times.len(), 4);
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(times[3] >= chrono::SubsecRound::trunc_subsecs(ahead, 6));
    // Any point in time is a prefix: now (before the skewed event), and later.
    for (at, events, balance) in [
        (chrono::Utc::now(), 2, 10_000),
        (ahead + chrono::Duration::minutes(1), 4, 10_100),
    ] {
        let at = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let (status, view) = app
            .get(&format!(
                "/v1/accounts/{ACME_IBAN}/balance?as_of={}",
                at.replace('+', "%2B")
            ))
            .await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["events"], events, "{view}");
        assert_eq!(view["balance_cents"], balance, "{view}");
    }
    let (_, audit) = app.get(&format!("/v1/accounts/{ACME_IBAN}/audit")).await;
    assert_eq!(audit["consistent"], true, "{audit}");
    assert_eq!(audit["chain_valid"], true, "{audit}");
}

/// A counterparty's total can pass what a bigint holds without stalling
/// the asynchronous projection (issue #15, item 8): the apply function
/// sums exactly.
#[tokio::test]
async fn counterparty_totals_cannot_overflow() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let near_max = i64::MAX - 1;
    for position in 1..=3 {
        let event = json!({
            "position": position, "stream_id": uuid::Uuid::now_v7(), "version": position,
            "event_type": "BulkTransferBooked", "schema_version": 1, "metadata": {},
            "recorded_at": chrono::Utc::now(), "hash": "\\x00",
            "data": {"transfers": [{"counterparty_iban": "GB82WEST12345698765432",
                "counterparty_name": "Big Payee", "currency": "EUR", "amount_cents": near_max}]},
        });
        // One account's stream: the same payee row each time.
        let event = {
            let mut event = event;
            event["stream_id"] = json!("0bac334c-e4f2-548a-8e58-2088dd4519f6");
            event
        };
        sqlx::query("SELECT projection_counterparties_apply(ARRAY[jsonb_populate_record(NULL::events, $1)])")
            .bind(&event)
            .execute(&pool)
            .await
            .unwrap();
    }
    let (transfers, total): (i64, String) = sqlx::query_as("SELECT transfers, total_cents::text FROM counterparties")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(transfers, 3);
    assert_eq!(total, (3 * i128::from(near_max)).to_string());
    // A table made before (bigint) is converted when the projections are
    // installed, as every server start does.
    sqlx::raw_sql("TRUNCATE counterparties; ALTER TABLE counterparties ALTER COLUMN total_cents TYPE bigint")
        .execute(&pool)
        .await
        .unwrap();
    let mut connection = pool.acquire().await.unwrap();
    ledger::projections::install(&mut connection).await.unwrap();
    let kind: String = sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = 'counterparties'::regclass AND attname = 'total_cents'",
    )
    .fetch_one(&mut *connection)
    .await
    .unwrap();
    assert_eq!(kind, "numeric");
}
