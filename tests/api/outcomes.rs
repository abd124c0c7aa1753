//! The two 503s of SPEC §4, each provoked for real through the binary:
//! "outcome unknown" when the connection breaks while a commit is in
//! flight (the command may have been applied, and here it was), and
//! "unavailable" when no connection was had in time (nothing written).

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::support::*;

async fn events_of_type(connection: &mut PgConnection, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(connection)
        .await
        .unwrap()
}

/// Waits (bounded) until a backend of `database` running a statement that
/// contains `statement` waits on `wait_event`, and returns its pid.
async fn backend_waiting_on(admin: &mut PgConnection, database: &str, wait_event: &str, statement: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event = $2 \
             AND strpos(query, $3) > 0 LIMIT 1",
        )
        .bind(database)
        .bind(wait_event)
        .bind(statement)
        .fetch_optional(&mut *admin)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no backend of {database} waits on {wait_event}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cluster that commits only once a synchronous standby confirms, and has
/// none: a deposit's commit is durable locally and then waits in `SyncRep`.
/// Its backend is terminated there. The answer comes at once, is a 503
/// `/problems/outcome-unknown` telling the client to retry with its key,
/// and the deposit is in the log: answering "nothing was changed, retry"
/// would have had a client without a key deposit twice.
#[tokio::test]
async fn a_connection_lost_during_commit_is_outcome_unknown_and_the_command_stands() {
    let own = OwnCluster::start("syncrep").await;
    let cluster = &own.cluster;
    let server = Binary::serve(&[
        ("DATABASE_URL", &cluster.url("ledger")),
        ("LEDGER_IBAN_CHECK", "structure"),
    ]);
    let client = server.client.clone();
    open_acme(&client, &server.base, 10_000).await;
    let mut admin = PgConnection::connect_with(&cluster.connect_options("ledger"))
        .await
        .unwrap();
    assert_eq!(events_of_type(&mut admin, "FundsDeposited").await, 1);

    sqlx::query("ALTER SYSTEM SET synchronous_standby_names = 'a_standby_that_does_not_exist'")
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut admin)
        .await
        .unwrap();

    let deposit = {
        let request = client
            .post(format!("{}/v1/accounts/{ACME_IBAN}/deposits", server.base))
            .json(&json!({"amount": "25.00", "reference": "commit in flight"}));
        tokio::spawn(async move { request.send().await })
    };
    // The deposit's append (not a background task's commit, which waits
    // there too).
    let pid = backend_waiting_on(&mut admin, "ledger", "SyncRep", "INSERT INTO idempotency_keys").await;
    let terminated_at = Instant::now();
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(terminated);
    let response = deposit.await.unwrap().unwrap();
    let answered_after = terminated_at.elapsed();
    let retry_after = response.headers().get("retry-after").cloned();
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let (status, problem) = into_parts(response).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["type"], "/problems/outcome-unknown", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("Idempotency-Key"),
        "{problem}"
    );
    assert!(retry_after.is_some(), "a 503 carries Retry-After");
    assert!(
        answered_after < Duration::from_secs(5),
        "answered at once, not at the request time limit: {answered_after:?}"
    );

    sqlx::query("ALTER SYSTEM RESET synchronous_standby_names")
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut admin)
        .await
        .unwrap();
    // The commit had happened: the deposit is in the log, and the balance
    // shows it.
    assert_eq!(events_of_type(&mut admin, "FundsDeposited").await, 2);
    let (status, account) = into_parts(
        client
            .get(format!("{}/v1/accounts/{ACME_IBAN}", server.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["balance_cents"], 12_500);

    drop(server);
    admin.close().await.ok();
}

/// No connection in time for a command (a pool of one, held by a query
/// blocked on a table lock): a prompt 503 `/problems/unavailable` that
/// says nothing was changed, and nothing was.
#[tokio::test]
async fn a_command_without_a_connection_in_time_is_unavailable_and_writes_nothing() {
    let db = TestDb::new().await;
    let server = Binary::serve(&[
        ("DATABASE_URL", &db.url()),
        ("LEDGER_IBAN_CHECK", "structure"),
        ("LEDGER_POOL_SIZE", "1"),
        ("LEDGER_POOL_ACQUIRE_TIMEOUT_MS", "50"),
    ]);
    let client = server.client.clone();
    open_acme(&client, &server.base, 10_000).await;
    let mut admin = PgConnection::connect_with(&db.options).await.unwrap();
    let events_before: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut admin)
        .await
        .unwrap();

    // The posting process reads `balances` too: let it pass the set-up's
    // events first, so that the query blocked below (holding the pool's
    // one connection) is the GET's, not the posting process's.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lag: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events e, process_checkpoints c WHERE c.name = 'posting' \
             AND (e.tx_id, e.position) > (c.checkpoint_tx::text::xid8, c.checkpoint_position)",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if lag == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the posting process never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pool = db.pool().await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE balances IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let held = tokio::spawn(client.get(format!("{}/v1/accounts/{ACME_IBAN}", server.base)).send());
    backend_waiting_on(&mut admin, &db.name, "relation", "balances").await;

    let started = Instant::now();
    let response = client
        .post(format!("{}/v1/accounts/{ACME_IBAN}/deposits", server.base))
        .json(&json!({"amount": "25.00"}))
        .send()
        .await
        .unwrap();
    let retry_after = response.headers().get("retry-after").cloned();
    let (status, problem) = into_parts(response).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["type"], "/problems/unavailable", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("nothing was changed"),
        "{problem}"
    );
    assert!(retry_after.is_some(), "a 503 carries Retry-After");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    lock.commit().await.unwrap();
    let (status, account) = into_parts(held.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["balance_cents"], 10_000, "the refused deposit was not applied");
    let events_after: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(events_after, events_before);
}
