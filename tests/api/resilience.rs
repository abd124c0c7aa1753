//! Failure behaviour of the real binary: killed mid-load, and asked to stop.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

/// 16 clients post transfers; the server is SIGKILLed mid-load and started
/// again. Every transfer that got a 201 is in the history, the balance is
/// the deposit minus what is recorded, no bulk is half-booked, and
/// `ledger audit` finds nothing.
#[tokio::test]
async fn a_server_killed_mid_load_loses_nothing_it_acknowledged() {
    let db = TestDb::new().await;
    let url = db.url();
    let env = [("DATABASE_URL", url.as_str()), ("LEDGER_IBAN_CHECK", "structure")];
    let mut server = Binary::serve(&env);
    let client = server.client.clone();
    open_acme(&client, &server.base, 100_000_000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..16 {
        let (client, base, stop) = (client.clone(), server.base.clone(), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            let mut acknowledged: Vec<Value> = Vec::new();
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) && sent < 2_000 {
                sent += 1;
                let transfers = (0..(worker % 3 + 1)).map(|_| transfer("1.00")).collect();
                let response = client
                    .post(format!("{base}/v1/transfer/bulk"))
                    .json(&bulk(transfers))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status().as_u16() == 201 => {
                        if let Ok(body) = response.json::<Value>().await {
                            acknowledged.push(body);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.child.kill().expect("SIGKILL the server");
    let _ = server.child.wait();
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for worker in workers {
        acknowledged.extend(worker.await.unwrap());
    }
    assert!(
        acknowledged.len() > 10,
        "the load ran before the kill: {}",
        acknowledged.len()
    );

    let restarted = Binary::serve(&env);
    let pool = db.pool().await;
    // Every acknowledged transfer is booked, with its bulk whole.
    let booked: HashSet<String> =
        sqlx::query_scalar("SELECT transaction_id::text FROM transactions WHERE kind = 'transfer'")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for body in &acknowledged {
        for id in body["transfer_ids"].as_array().unwrap() {
            assert!(
                booked.contains(id.as_str().unwrap()),
                "acknowledged transfer {id} is missing"
            );
        }
    }
    let half_booked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e WHERE e.event_type = 'BulkTransferBooked' \
         AND jsonb_array_length(e.data->'transfers') <> \
             (SELECT count(*) FROM transactions t WHERE t.account_id = e.stream_id AND t.position = e.position)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(half_booked, 0);
    let recorded: i64 = sqlx::query_scalar("SELECT coalesce(sum(amount_cents), 0)::bigint FROM transactions")
        .fetch_one(&pool)
        .await
        .unwrap();
    let response = client
        .get(format!("{}/v1/accounts/{ACME_IBAN}", restarted.base))
        .send()
        .await
        .unwrap();
    let (_, account) = into_parts(response).await;
    assert_eq!(
        account["balance_cents"].as_i64().unwrap(),
        recorded,
        "balance = deposits - recorded transfers"
    );
    let output = run_ledger(&["audit"], &[("DATABASE_URL", &url)]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// SIGTERM during load: requests in flight complete, new connections are
/// refused, and the process exits 0 within a bounded time. A request the
/// server had not begun yet (still in the kernel's accept queue, or its
/// connection not read yet, as a loaded machine leaves one now and then:
/// CI, fresh clone) gets no answer and books nothing; the client retries
/// it with its idempotency key.
#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_exits_cleanly() {
    let db = TestDb::new().await;
    let url = db.url();
    let env = [("DATABASE_URL", url.as_str()), ("LEDGER_IBAN_CHECK", "structure")];
    let mut server = Binary::serve(&env);
    let client = server.client.clone();
    open_acme(&client, &server.base, 100_000_000).await;
    // A batch of bulks in flight when the signal arrives.
    let in_flight: Vec<_> = (0..16)
        .map(|_| {
            let request = client
                .post(format!("{}/v1/transfer/bulk", server.base))
                .json(&bulk(vec![transfer("1.00"); 200]));
            tokio::spawn(async move { (request.send().await, Instant::now()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let signalled = Instant::now();

    let mut statuses = Vec::new();
    let mut answered_after_signal = 0;
    for request in in_flight {
        match request.await.unwrap() {
            (Ok(response), at) => {
                statuses.push(response.status().as_u16());
                answered_after_signal += usize::from(at > signalled);
            }
            (Err(error), _) => assert!(
                error.is_connect() || error.is_request(),
                "a request failed otherwise than by not being begun: {error}"
            ),
        }
    }
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert!(
        answered_after_signal >= 1,
        "no request in flight at the signal was answered after it ({} answered)",
        statuses.len()
    );
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(20),
            "the server did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    let refused = client.get(format!("{}/healthz", server.base)).send().await;
    assert!(
        refused.is_err_and(|e| e.is_connect()),
        "new connections are refused after shutdown"
    );
    // What was acknowledged is booked.
    let pool = db.pool().await;
    let booked: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'BulkTransferBooked'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(booked, statuses.len() as i64);
}

/// A request over LEDGER_REQUEST_TIMEOUT_MS is answered 503 (problem+json);
/// the command it carried still completes, and its Idempotency-Key tells the
/// client the outcome.
#[tokio::test]
async fn a_request_over_its_time_limit_is_a_503_and_its_key_tells_the_outcome() {
    let db = TestDb::new().await;
    let url = db.url();
    let impatient = Binary::serve(&[
        ("DATABASE_URL", &url),
        ("LEDGER_IBAN_CHECK", "structure"),
        ("LEDGER_REQUEST_TIMEOUT_MS", "1"),
    ]);
    let patient = Binary::serve(&[("DATABASE_URL", &url), ("LEDGER_IBAN_CHECK", "structure")]);
    let client = patient.client.clone();
    open_acme(&client, &patient.base, 100_000_000).await;
    let body = bulk(vec![transfer("1.00"); 1_000]);
    let response = client
        .post(format!("{}/v1/transfer/bulk", impatient.base))
        .header("Idempotency-Key", "slow-payroll")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let (status, problem) = into_parts(response).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["type"], "/problems/timeout");
    // The retry, with the same key, against a server with time to answer.
    let mut replayed = None;
    for _ in 0..50 {
        let response = client
            .post(format!("{}/v1/transfer/bulk", patient.base))
            .header("Idempotency-Key", "slow-payroll")
            .json(&body)
            .send()
            .await
            .unwrap();
        if response.status().as_u16() == 201 {
            replayed = Some(response.headers().get("idempotent-replayed").is_some());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(replayed.is_some(), "the retry gets the outcome");
    let response = client
        .get(format!("{}/v1/accounts/{ACME_IBAN}", patient.base))
        .send()
        .await
        .unwrap();
    let (_, account) = into_parts(response).await;
    assert_eq!(account["balance_cents"], 100_000_000 - 100_000, "booked exactly once");
}

/// Migrations are not requests: they run whatever the statement timeout,
/// even on an empty database, and the server then starts under it.
#[tokio::test]
async fn migrations_ignore_the_requests_statement_timeout() {
    let db = TestDb::empty().await;
    let url = db.url();
    let output = run_ledger(
        &["migrate"],
        &[("DATABASE_URL", &url), ("LEDGER_STATEMENT_TIMEOUT_MS", "1")],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let server = Binary::serve(&[("DATABASE_URL", &url), ("LEDGER_STATEMENT_TIMEOUT_MS", "1")]);
    let response = server
        .client
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// A statement over LEDGER_STATEMENT_TIMEOUT_MS is cancelled by PostgreSQL:
/// the request is a 503 and nothing is written.
#[tokio::test]
async fn a_statement_over_its_time_limit_is_cancelled_and_writes_nothing() {
    let db = TestDb::new().await;
    let url = db.url();
    let funded = Binary::serve(&[("DATABASE_URL", &url), ("LEDGER_IBAN_CHECK", "structure")]);
    let client = funded.client.clone();
    open_acme(&client, &funded.base, 100_000_000).await;
    drop(funded);
    let strict = Binary::serve(&[
        ("DATABASE_URL", &url),
        ("LEDGER_IBAN_CHECK", "structure"),
        ("LEDGER_STATEMENT_TIMEOUT_MS", "1"),
    ]);
    let response = client
        .post(format!("{}/v1/transfer/bulk", strict.base))
        .json(&bulk(vec![transfer("1.00"); 5_000]))
        .send()
        .await
        .unwrap();
    let (status, problem) = into_parts(response).await;
    assert_eq!(status, 503, "{problem}");
    let pool = db.pool().await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 2, "only the opening and the deposit");
}

/// PostgreSQL stops during load and starts again: meanwhile requests fail
/// fast with a 503 problem and /readyz is red; afterwards the same server
/// process serves again, and nothing it acknowledged is lost.
#[tokio::test]
async fn a_database_outage_is_a_fast_503_and_the_service_recovers_without_a_restart() {
    let root = std::env::temp_dir().join(format!("ledger-outage-{}", uuid::Uuid::new_v4().simple()));
    ledger::pg::Cluster::remove_at_exit(&root).unwrap();
    let cluster = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || ledger::pg::Cluster::ensure(&root))
            .await
            .unwrap()
            .unwrap()
    };
    let url = cluster.url("ledger");
    let server = Binary::serve(&[
        ("DATABASE_URL", &url),
        ("LEDGER_IBAN_CHECK", "structure"),
        ("LEDGER_POOL_ACQUIRE_TIMEOUT_MS", "1000"),
    ]);
    let client = server.client.clone();
    open_acme(&client, &server.base, 100_000_000).await;
    let post = || {
        client
            .post(format!("{}/v1/transfer/bulk", server.base))
            .json(&bulk(vec![transfer("1.00")]))
            .send()
    };
    let mut acknowledged = Vec::new();
    for _ in 0..20 {
        let (status, body) = into_parts(post().await.unwrap()).await;
        assert_eq!(status, 201);
        acknowledged.push(body["transfer_ids"][0].as_str().unwrap().to_owned());
    }

    {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.stop())
            .await
            .unwrap()
            .unwrap();
    }
    for _ in 0..5 {
        let started = Instant::now();
        let response = post().await.unwrap();
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let (status, problem) = into_parts(response).await;
        assert_eq!(status, 503, "{problem}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "fails fast: {:?}",
            started.elapsed()
        );
    }
    let (status, _) = into_parts(client.get(format!("{}/readyz", server.base)).send().await.unwrap()).await;
    assert_eq!(status, 503);
    // Over gRPC too: UNAVAILABLE, promptly.
    let mut grpc = ledger::grpc::pb::ledger_service_client::LedgerServiceClient::connect(server.grpc.clone().unwrap())
        .await
        .unwrap();
    let mut request = tonic::Request::new(ledger::grpc::pb::GetAccountRequest {
        iban: ACME_IBAN.into(),
        min_position: None,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", server.key.as_deref().unwrap()).parse().unwrap(),
    );
    let started = Instant::now();
    let status = grpc.get_account(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    {
        let root = root.clone();
        tokio::task::spawn_blocking(move || ledger::pg::Cluster::ensure(&root))
            .await
            .unwrap()
            .unwrap();
    }
    let mut recovered = false;
    for _ in 0..100 {
        if client
            .get(format!("{}/readyz", server.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
            == 200
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "/readyz turns green again");
    let (status, _) = into_parts(post().await.unwrap()).await;
    assert_eq!(status, 201, "the same process serves again");
    let response = client
        .get(format!(
            "{}/v1/accounts/{ACME_IBAN}/transactions?limit=1000",
            server.base
        ))
        .send()
        .await
        .unwrap();
    let (_, history) = into_parts(response).await;
    let booked: HashSet<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["transaction_id"].as_str().unwrap())
        .collect();
    for id in &acknowledged {
        assert!(booked.contains(id.as_str()), "acknowledged {id} survived the outage");
    }
    drop(server);
    let _ = cluster.stop();
    let _ = std::fs::remove_dir_all(&root);
}

/// Load shedding (issue #15, item 7): past the bound of requests in flight
/// (and of commands queued), a flood is answered promptly with 503
/// `/problems/unavailable` and `Retry-After`, and a shed request did
/// nothing: every 201 is booked once, no 503 booked anything, and each
/// shed deposit retried with its key books exactly once.
#[tokio::test]
async fn a_flood_past_the_bounds_is_shed_and_nothing_is_lost() {
    let db = TestDb::new().await;
    let server = Binary::serve(&[
        ("DATABASE_URL", &db.url()),
        ("LEDGER_IBAN_CHECK", "structure"),
        ("LEDGER_IN_FLIGHT_MAX", "8"),
        ("LEDGER_QUEUED_COMMANDS_MAX", "4"),
    ]);
    open_acme(&server.client, &server.base, 0).await;
    const FLOOD: usize = 300;
    let sends = (0..FLOOD).map(|i| {
        let (client, base) = (server.client.clone(), server.base.clone());
        async move {
            let response = client
                .post(format!("{base}/v1/accounts/{ACME_IBAN}/deposits"))
                .header("idempotency-key", format!("flood-{i}"))
                .json(&json!({"amount": "1.00"}))
                .send()
                .await
                .unwrap();
            let retry_after = response.headers().get("retry-after").is_some();
            let (status, body) = into_parts(response).await;
            (i, status, retry_after, body)
        }
    });
    let answers = futures::future::join_all(sends).await;
    let mut shed = Vec::new();
    let mut booked = 0;
    for (i, status, retry_after, body) in answers {
        match status {
            201 => booked += 1,
            503 => {
                assert_eq!(body["type"], "/problems/unavailable", "{body}");
                assert!(retry_after, "a shed request says when to retry");
                shed.push(i);
            }
            other => panic!("a flooded server answers 201 or 503, not {other}: {body}"),
        }
    }
    assert!(!shed.is_empty(), "{FLOOD} requests at once past a bound of 8 shed some");
    let pool = db.pool().await;
    let deposits = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE event_type = 'FundsDeposited'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(deposits().await, booked, "every 201 booked, no 503 booked anything");
    for i in shed {
        let response = server
            .client
            .post(format!("{}/v1/accounts/{ACME_IBAN}/deposits", server.base))
            .header("idempotency-key", format!("flood-{i}"))
            .json(&json!({"amount": "1.00"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "a retry on a calm server books");
    }
    assert_eq!(deposits().await, FLOOD as i64);
    let (_, account) = into_parts(
        server
            .client
            .get(format!("{}/v1/accounts/{ACME_IBAN}", server.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(account["balance_cents"], FLOOD as i64 * 100);
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("ledger_requests_shed_total"), "shedding is counted");
}
