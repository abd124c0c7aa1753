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
