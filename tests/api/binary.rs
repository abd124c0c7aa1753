//! The real `ledger` binary: its subcommands, and the embedded default
//! database when no DATABASE_URL is given.

use serde_json::{Value, json};

use crate::support::*;

fn stdout_json(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("stdout is JSON: {}", String::from_utf8_lossy(&output.stdout)))
}

/// `ledger migrate`, `ledger accounts open` and `ledger accounts deposit`
/// act on the database the server then reads.
#[tokio::test]
async fn cli_commands_open_and_fund_an_account_the_api_then_serves() {
    let db = TestDb::new().await;
    let url = db.url();
    let env = [("DATABASE_URL", url.as_str()), ("LEDGER_IBAN_CHECK", "structure")];
    let output = run_ledger(&["migrate"], &env);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let open_acme_args = [
        "accounts",
        "open",
        "--organization-name",
        ACME_NAME,
        "--iban",
        ACME_IBAN,
        "--bic",
        ACME_BIC,
    ];

    let output = run_ledger(&open_acme_args, &env);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout_json(&output)["iban"], ACME_IBAN);

    let output = run_ledger(
        &[
            "accounts",
            "deposit",
            "--iban",
            ACME_IBAN,
            "--amount",
            "100000.00",
            "--idempotency-key",
            "seed-funding",
        ],
        &env,
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout_json(&output)["balance"], "100000.00");
    // Retried with its key: applied once.
    let output = run_ledger(
        &[
            "accounts",
            "deposit",
            "--iban",
            ACME_IBAN,
            "--amount",
            "100000.00",
            "--idempotency-key",
            "seed-funding",
        ],
        &env,
    );
    assert!(output.status.success());
    assert_eq!(stdout_json(&output)["balance_cents"], 10_000_000);

    // Refusals exit 1 with a problem; bad input names the field.
    let output = run_ledger(&open_acme_args, &env);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout_json(&output)["status"], 409);
    let output = run_ledger(&["accounts", "deposit", "--iban", ACME_IBAN, "--amount", "1.005"], &env);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout_json(&output)["errors"][0]["field"], "amount");
    // Operational errors exit 2.
    let output = run_ledger(&["migrate"], &[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")]);
    assert_eq!(output.status.code(), Some(2));

    let binary = Binary::serve(&env);
    let response = binary
        .client
        .get(format!("{}/v1/accounts/{ACME_IBAN}", binary.base))
        .send()
        .await
        .unwrap();
    let (status, account) = into_parts(response).await;
    assert_eq!(status, 200);
    assert_eq!(account["balance_cents"], 10_000_000);
}

/// With no DATABASE_URL, `ledger serve` creates a project-local cluster in
/// LEDGER_DATA_DIR, starts it, and keeps its data between runs.
#[tokio::test]
async fn the_embedded_default_creates_starts_and_keeps_a_local_cluster() {
    let dir = std::env::temp_dir().join(format!("ledger-embedded-{}", uuid::Uuid::new_v4().simple()));
    let data_dir = dir.to_str().unwrap().to_owned();
    let env = [("LEDGER_DATA_DIR", data_dir.as_str())];
    let first_key = {
        let binary = Binary::serve(&env);
        // The first start prints an admin key, so the API is usable at once.
        let first_key = binary.first_key.clone().expect("the first start prints an admin key");
        assert!(first_key.starts_with("ldgr_"), "{first_key}");
        let admin = binary.client.clone();
        let response = admin.get(format!("{}/readyz", binary.base)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let response = client()
            .get(format!("{}/v1/accounts/DE89370400440532013000", binary.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "no key, no entry");
        let response = admin
            .post(format!("{}/v1/accounts", binary.base))
            .json(&json!({"organization_name": "Globex", "iban": "DE89370400440532013000", "bic": "COBADEFFXXX"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        first_key
    };
    // A second run finds the cluster (still running or restarted) and its
    // data, and prints no new key: the first one still works.
    let binary = Binary::serve(&env);
    assert!(binary.first_key.is_none());
    let response = client_with_key(Some(&first_key))
        .get(format!("{}/v1/accounts/DE89370400440532013000", binary.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // Made with data checksums (issue #15, item 3).
    let cluster = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || ledger::pg::Cluster::ensure(&dir)
    })
    .await
    .unwrap()
    .expect("adopt the running cluster");
    let mut connection = sqlx::ConnectOptions::connect(&cluster.connect_options("postgres"))
        .await
        .unwrap();
    let checksums: String = sqlx::query_scalar("SHOW data_checksums")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(checksums, "on");
    drop(connection);
    drop(binary);
    stop_cluster(&dir);
}

fn stop_cluster(dir: &std::path::Path) {
    let pid_file = dir.join("data/postmaster.pid");
    if let Ok(text) = std::fs::read_to_string(&pid_file)
        && let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok())
    {
        let _ = std::process::Command::new("kill")
            .arg("-INT")
            .arg(pid.to_string())
            .status();
        for _ in 0..100 {
            if !pid_file.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `/metrics` speaks Prometheus: requests by route template and status,
/// commands by outcome, events appended, group-commit batch sizes, pool and
/// projection gauges.
#[tokio::test]
async fn metrics_are_exposed_in_prometheus_format() {
    let app = TestApp::spawn().await;
    app.acme_with(100).await;
    app.post("/v1/transfer/bulk", &bulk(vec![transfer("0.50")])).await;
    app.post("/v1/transfer/bulk", &bulk(vec![transfer("5.00")])).await;
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for expected in [
        r#"ledger_http_requests_total{method="POST",route="/v1/transfer/bulk",status="201"}"#,
        r#"ledger_http_requests_total{method="POST",route="/v1/transfer/bulk",status="422"}"#,
        r#"route="/v1/accounts/{iban}/deposits""#,
        "ledger_http_request_duration_seconds_bucket",
        r#"ledger_commands_total{command="TransferBulk",outcome="accepted"}"#,
        r#"ledger_commands_total{command="TransferBulk",outcome="refused_422"}"#,
        r#"ledger_events_appended_total{type="BulkTransferRejected"}"#,
        "ledger_group_commit_batch_commands_bucket",
        r#"ledger_db_pool_connections{state="in_use"}"#,
        r#"ledger_projection_lag_events{projection="counterparties"}"#,
        "ledger_build_info",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
    assert!(!text.contains(ACME_IBAN), "raw paths never become labels");
}

/// However often `/metrics` is scraped, it reads the lags from the database
/// at most once per interval (issue #15, item 8): a burst of scrapes all
/// answer, with the lag gauges, and only the first of them refreshes.
#[tokio::test]
async fn metrics_read_the_database_at_most_once_a_second() {
    let app = TestApp::spawn().await;
    for _ in 0..30 {
        let response = app.client.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let text = response.text().await.unwrap();
        assert!(text.contains("ledger_posting_lag_events"), "{text}");
        assert!(text.contains("ledger_metrics_database_refreshes_total"), "{text}");
    }
    // The burst refreshed (the first scrape); within the second, no scrape
    // may refresh again, and after it one may.
    let interval = std::time::Duration::from_millis(400);
    assert!(!app.ledger.metrics_refresh_due(std::time::Duration::from_secs(60)));
    tokio::time::sleep(interval).await;
    assert!(app.ledger.metrics_refresh_due(interval));
    assert!(!app.ledger.metrics_refresh_due(interval));
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, _) = app.get("/readyz").await;
    assert_eq!(status, 200);
}

/// Schema-safe (issue #15, item 9): in a database where a schema named
/// after the role exists (PostgreSQL's secure-schema pattern: `"$user"`
/// comes first in the search path), the ledger's tables live there, and the
/// asynchronous projections, the posting process, a rebuild and the audit
/// all work; nothing assumes `public`.
#[tokio::test]
async fn a_database_with_a_schema_named_after_the_role_works_end_to_end() {
    use sqlx::Connection;
    let db = TestDb::empty().await;
    let mut admin = sqlx::PgConnection::connect_with(&db.options).await.unwrap();
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    sqlx::raw_sql(&format!("CREATE SCHEMA \"{role}\" AUTHORIZATION \"{role}\""))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = db.url();
    let binary = Binary::serve(&[("DATABASE_URL", &url), ("LEDGER_IBAN_CHECK", "structure")]);
    let home: String = sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relname = 'events' AND c.relkind IN ('r', 'p')",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(home, role, "the tables live in the role's schema");
    let client = binary.client.clone();
    open_acme(&client, &binary.base, 1_000_000).await;
    let payee = json!({"organization_name": "Globex GmbH", "iban": "DE89370400440532013000", "bic": "COBADEFFXXX"});
    let (status, body) = into_parts(
        client
            .post(format!("{}/v1/accounts", binary.base))
            .json(&payee)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let on_us = json!({"amount": "10.00", "currency": "EUR", "counterparty_name": "Globex GmbH",
        "counterparty_bic": "COBADEFFXXX", "counterparty_iban": "DE89370400440532013000"});
    let mut last = 0;
    for _ in 0..3 {
        let (status, body) = into_parts(
            client
                .post(format!("{}/v1/transfer/bulk", binary.base))
                .json(&bulk(vec![transfer("1.00"), on_us.clone()]))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        last = body["position"].as_i64().unwrap();
    }
    // The posting process credits the payee...
    let (status, payee) = into_parts(
        client
            .get(format!(
                "{}/v1/accounts/DE89370400440532013000?min_position={last}",
                binary.base
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{payee}");
    assert_eq!(payee["balance_cents"], 3_000);
    // ...and the asynchronous projection catches up with the log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = run_ledger(&["projections", "status"], &[("DATABASE_URL", &url)]);
        assert!(status.status.success(), "{status:?}");
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        let counterparties = text
            .lines()
            .find(|l| l.starts_with("counterparties"))
            .unwrap_or_default();
        if counterparties.split_whitespace().nth(4) == Some("0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the runner never caught up: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let rebuilt = run_ledger(&["projections", "rebuild"], &[("DATABASE_URL", &url)]);
    assert!(rebuilt.status.success(), "{rebuilt:?}");
    let audit = run_ledger(&["audit"], &[("DATABASE_URL", &url)]);
    assert!(audit.status.success(), "{audit:?}");
    let stray: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(stray, 0, "nothing was put in public");
}
