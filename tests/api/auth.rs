//! Authentication and authorization through the real binary: keys made
//! with `ledger keys`, every scope boundary, revocation, the embedded
//! default's first key, `LEDGER_AUTH=disabled`, and no secret in any log.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const GLOBEX_IBAN: &str = "DE89370400440532013000";
const GLOBEX_BIC: &str = "COBADEFFXXX";

fn globex_bulk(amount: &str) -> Value {
    json!({"organization_name": "Globex", "organization_bic": GLOBEX_BIC, "organization_iban": GLOBEX_IBAN,
           "credit_transfers": [transfer(amount)]})
}

/// `ledger keys create …` through the binary: the key on stdout.
fn create_key_with_cli(url: &str, scope: &[&str]) -> String {
    let mut args = vec!["keys", "create"];
    args.extend_from_slice(scope);
    let output = run_ledger(&args, &[("DATABASE_URL", url), ("LEDGER_IBAN_CHECK", "structure")]);
    assert!(output.status.success(), "{output:?}");
    let key = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    // Shown once, on stdout only.
    assert!(!String::from_utf8_lossy(&output.stderr).contains(&key));
    key
}

/// The key's id, as `ledger keys list` and event metadata show it.
fn key_id(key: &str) -> String {
    uuid::Uuid::parse_str(&key["ldgr_".len().."ldgr_".len() + 32])
        .unwrap()
        .to_string()
}

struct Fixture {
    server: Binary,
    db: TestDb,
    admin: reqwest::Client,
    account_key: String,
    account: reqwest::Client,
}

/// ACME and Globex open and funded by the admin; an account key for ACME.
async fn fixture() -> Fixture {
    let db = TestDb::new().await;
    let url = db.url();
    let server = Binary::serve(&[("DATABASE_URL", &url), ("LEDGER_IBAN_CHECK", "structure")]);
    let admin = server.client.clone();
    open_acme(&admin, &server.base, 1_000_000).await;
    for (path, body) in [
        (
            "/v1/accounts".to_owned(),
            json!({"organization_name": "Globex", "iban": GLOBEX_IBAN, "bic": GLOBEX_BIC}),
        ),
        (
            format!("/v1/accounts/{GLOBEX_IBAN}/deposits"),
            json!({"amount": "5000.00"}),
        ),
    ] {
        let response = admin
            .post(format!("{}{path}", server.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    }
    let account_key = create_key_with_cli(&url, &["--account", ACME_IBAN, "--name", "acme payroll"]);
    Fixture {
        account: client_with_key(Some(&account_key)),
        account_key,
        server,
        db,
        admin,
    }
}

impl Fixture {
    async fn send(&self, client: &reqwest::Client, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = client.request(method.parse().unwrap(), format!("{}{path}", self.server.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        into_parts(request.send().await.unwrap()).await
    }

    async fn events(&self) -> i64 {
        let pool = self.db.pool().await;
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap()
    }
}

/// Every API route, with a body for the commands.
fn api_routes() -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        (
            "POST",
            "/v1/accounts".to_owned(),
            Some(json!({"organization_name": "Initech", "iban": "GB82WEST12345698765432", "bic": "NWBKGB2LXXX"})),
        ),
        (
            "POST",
            format!("/v1/accounts/{ACME_IBAN}/deposits"),
            Some(json!({"amount": "1.00"})),
        ),
        (
            "POST",
            "/v1/transfer/bulk".to_owned(),
            Some(bulk(vec![transfer("1.00")])),
        ),
        ("GET", format!("/v1/accounts/{ACME_IBAN}"), None),
        ("GET", format!("/v1/accounts/{ACME_IBAN}/transactions"), None),
        (
            "GET",
            format!("/v1/accounts/{ACME_IBAN}/balance?position=1000000"),
            None,
        ),
        ("GET", format!("/v1/accounts/{ACME_IBAN}/audit"), None),
        ("GET", "/v1/events".to_owned(), None),
    ]
}

#[tokio::test]
async fn without_a_valid_key_every_api_route_is_a_401_and_changes_nothing() {
    let f = fixture().await;
    let events = f.events().await;
    let (id, secret) = (key_id(&f.account_key), &f.account_key[f.account_key.len() - 43..]);
    let mut wrong_secret = f.account_key.clone();
    wrong_secret.replace_range(wrong_secret.len() - 43.., &"A".repeat(43));
    let unknown_id = format!("ldgr_{}_{secret}", uuid::Uuid::now_v7().simple());
    let credentials: Vec<Option<String>> = vec![
        None,
        Some(format!("Bearer {wrong_secret}")),
        Some(format!("Bearer {unknown_id}")),
        Some(format!("Bearer {}", &f.account_key[..f.account_key.len() - 1])),
        Some("Bearer ".to_owned()),
        Some("Bearer garbage".to_owned()),
        Some(format!("Basic {}", f.account_key)),
        Some(f.account_key.clone()),
        Some(format!("Bearer {id}")),
    ];
    let client = client();
    for (method, path, body) in api_routes() {
        for credential in &credentials {
            let mut request = client.request(method.parse().unwrap(), format!("{}{path}", f.server.base));
            if let Some(credential) = credential {
                request = request.header("Authorization", credential);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 401, "{method} {path} with {credential:?}");
            assert_eq!(response.headers()["www-authenticate"], r#"Bearer realm="ledger""#);
            assert_eq!(response.headers()["content-type"], "application/problem+json");
            let (_, problem) = into_parts(response).await;
            assert_eq!(problem["type"], "/problems/unauthorized");
            // The problem never echoes what was sent.
            assert!(!problem.to_string().contains(secret), "{problem}");
        }
    }
    assert_eq!(f.events().await, events, "nothing was appended");
    // Operations endpoints need no key; unknown routes are 404 to anyone.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs/"] {
        let response = client.get(format!("{}{path}", f.server.base)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
    let (status, _) = f.send(&client, "GET", "/v1/nowhere", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_account_key_reaches_its_own_account_only() {
    let f = fixture().await;
    let acme_balance = |body: &Value| body["balance_cents"].as_i64().unwrap();

    // Its own account: bulk transfers and every query.
    let (status, booked) = f
        .send(
            &f.account,
            "POST",
            "/v1/transfer/bulk",
            Some(bulk(vec![transfer("10.00")])),
        )
        .await;
    assert_eq!(status, 201, "{booked}");
    for path in [
        format!("/v1/accounts/{ACME_IBAN}"),
        format!("/v1/accounts/{ACME_IBAN}/transactions?limit=1"),
        format!("/v1/accounts/{ACME_IBAN}/balance?position=1000000"),
        // The same account, written differently.
        format!("/v1/accounts/{}", ACME_IBAN.to_lowercase()),
    ] {
        let (status, body) = f.send(&f.account, "GET", &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, acme) = f
        .send(&f.account, "GET", &format!("/v1/accounts/{ACME_IBAN}"), None)
        .await;
    assert_eq!(acme_balance(&acme), 1_000_000 - 1_000);

    // Everything else: 403, and nothing is booked or recorded.
    let events = f.events().await;
    let (_, globex_before) = f
        .send(&f.admin, "GET", &format!("/v1/accounts/{GLOBEX_IBAN}"), None)
        .await;
    let forbidden: Vec<(&str, String, Option<Value>)> = vec![
        ("POST", "/v1/transfer/bulk".to_owned(), Some(globex_bulk("10.00"))),
        // Even an invalid body from another account, or an unknown one.
        ("POST", "/v1/transfer/bulk".to_owned(), Some(globex_bulk("-1"))),
        (
            "POST",
            "/v1/accounts".to_owned(),
            Some(json!({"organization_name": "x"})),
        ),
        (
            "POST",
            "/v1/accounts".to_owned(),
            Some(json!({"organization_name": "Initech", "iban": "GB82WEST12345698765432", "bic": "NWBKGB2LXXX"})),
        ),
        (
            "POST",
            format!("/v1/accounts/{ACME_IBAN}/deposits"),
            Some(json!({"amount": "1000000.00"})),
        ),
        ("GET", format!("/v1/accounts/{GLOBEX_IBAN}"), None),
        ("GET", format!("/v1/accounts/{GLOBEX_IBAN}/transactions"), None),
        (
            "GET",
            format!("/v1/accounts/{GLOBEX_IBAN}/balance?position=1000000"),
            None,
        ),
        // Not even whether another account exists.
        ("GET", "/v1/accounts/GB82WEST12345698765432".to_owned(), None),
        ("GET", format!("/v1/accounts/{ACME_IBAN}/audit"), None),
        ("GET", "/v1/events".to_owned(), None),
    ];
    for (method, path, body) in forbidden {
        let (status, problem) = f.send(&f.account, method, &path, body.clone()).await;
        if status == 400 {
            // A body too broken to name its account is refused as such.
            assert_eq!(body, Some(globex_bulk("-1")), "{method} {path}: {problem}");
            continue;
        }
        assert_eq!(status, 403, "{method} {path}: {problem}");
        assert_eq!(problem["type"], "/problems/forbidden");
        assert!(problem["detail"].as_str().unwrap().contains(ACME_IBAN), "{problem}");
    }
    assert_eq!(f.events().await, events, "nothing was appended");
    let (_, globex_after) = f
        .send(&f.admin, "GET", &format!("/v1/accounts/{GLOBEX_IBAN}"), None)
        .await;
    assert_eq!(globex_before, globex_after);

    // The admin key may do all of it.
    for (method, path, body) in api_routes() {
        let (status, body) = f.send(&f.admin, method, &path, body).await;
        assert!(status == 200 || status == 201, "{method} {path}: {status} {body}");
    }
}

#[tokio::test]
async fn events_record_the_key_that_acted() {
    let f = fixture().await;
    let (status, booked) = f
        .send(
            &f.account,
            "POST",
            "/v1/transfer/bulk",
            Some(bulk(vec![transfer("1.00")])),
        )
        .await;
    assert_eq!(status, 201);
    let pool = f.db.pool().await;
    let metadata: Vec<Value> = sqlx::query_scalar("SELECT metadata FROM events ORDER BY position")
        .fetch_all(&pool)
        .await
        .unwrap();
    let admin_id = key_id(f.server.key.as_deref().unwrap());
    // ACME opened, ACME deposit, Globex opened, Globex deposit: the admin.
    for m in &metadata[..4] {
        assert_eq!(m["actor"], "api_key");
        assert_eq!(m["api_key_id"], admin_id.as_str());
    }
    let last = metadata.last().unwrap();
    assert_eq!(last["api_key_id"], key_id(&f.account_key).as_str());
    assert_eq!(last["command"], "TransferBulk");
    // The feed shows it to auditors, once no older transaction of this
    // database can still commit before it (the commit-safe horizon: the
    // posting process or the runner may hold one for a moment).
    let mut feed = Value::Null;
    for _ in 0..100 {
        feed = f.send(&f.admin, "GET", "/v1/events?limit=1000", None).await.1;
        if feed["events"].as_array().unwrap().len() == metadata.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let item = feed["events"].as_array().unwrap().last().unwrap();
    assert_eq!(item["data"]["bulk_id"], booked["bulk_id"]);
    assert_eq!(item["metadata"]["api_key_id"], key_id(&f.account_key).as_str());
}

#[tokio::test]
async fn idempotency_keys_belong_to_the_api_key_that_sent_them() {
    let f = fixture().await;
    let post = |client: &reqwest::Client, body: Value| {
        client
            .post(format!("{}/v1/transfer/bulk", f.server.base))
            .header("Idempotency-Key", "payroll-2026-11")
            .json(&body)
            .send()
    };
    let (status, first) = into_parts(post(&f.account, bulk(vec![transfer("1.00")])).await.unwrap()).await;
    assert_eq!(status, 201);
    // Another key using the same idempotency key is another request: it is
    // neither refused as a reuse nor shown the first key's response.
    let response = post(&f.admin, bulk(vec![transfer("2.00")])).await.unwrap();
    assert!(response.headers().get("idempotent-replayed").is_none());
    let (status, second) = into_parts(response).await;
    assert_eq!(status, 201, "{second}");
    assert_ne!(first["bulk_id"], second["bulk_id"]);
    // The same key repeating itself replays; with another body, a 409.
    let response = post(&f.account, bulk(vec![transfer("1.00")])).await.unwrap();
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    assert_eq!(into_parts(response).await.1, first);
    let (status, _) = into_parts(post(&f.account, bulk(vec![transfer("3.00")])).await.unwrap()).await;
    assert_eq!(status, 409);
    let (_, acme) = f
        .send(&f.admin, "GET", &format!("/v1/accounts/{ACME_IBAN}"), None)
        .await;
    assert_eq!(acme["balance_cents"], 1_000_000 - 300);
}

#[tokio::test]
async fn a_revoked_key_is_refused_from_the_next_request_on() {
    let f = fixture().await;
    let url = f.db.url();
    let env = [("DATABASE_URL", url.as_str())];
    let id = key_id(&f.account_key);
    let (status, _) = f
        .send(
            &f.account,
            "POST",
            "/v1/transfer/bulk",
            Some(bulk(vec![transfer("1.00")])),
        )
        .await;
    assert_eq!(status, 201, "the key works, and the server has cached it");

    let output = run_ledger(&["keys", "revoke", &id], &env);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("revoked API key {id}")
    );
    // The server hears of it through NOTIFY; allow it the time to arrive.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = f
            .send(&f.account, "GET", &format!("/v1/accounts/{ACME_IBAN}"), None)
            .await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "the revocation never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = f.events().await;
    for _ in 0..3 {
        let (status, _) = f
            .send(
                &f.account,
                "POST",
                "/v1/transfer/bulk",
                Some(bulk(vec![transfer("1.00")])),
            )
            .await;
        assert_eq!(status, 401);
    }
    assert_eq!(f.events().await, events);
    // A server started afterwards refuses it too; the admin key still works.
    let fresh = Binary::serve(&[("DATABASE_URL", &url), ("LEDGER_IBAN_CHECK", "structure")]);
    let response = f
        .account
        .get(format!("{}/v1/accounts/{ACME_IBAN}", fresh.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let (status, _) = f
        .send(&f.admin, "GET", &format!("/v1/accounts/{ACME_IBAN}"), None)
        .await;
    assert_eq!(status, 200);

    // The list shows it revoked, and never a secret.
    let output = run_ledger(&["keys", "list"], &env);
    assert!(output.status.success());
    let list = String::from_utf8(output.stdout).unwrap();
    let line = list.lines().find(|l| l.starts_with(&id)).expect("the key is listed");
    assert!(
        line.contains("account") && line.contains(ACME_IBAN) && line.contains("acme payroll"),
        "{line}"
    );
    assert!(!line.contains(" - "), "a revocation time: {line}");
    assert!(!list.contains("ldgr_"), "{list}");
    // Revoking again says so; an unknown id is refused (exit 1).
    let output = run_ledger(&["keys", "revoke", &id], &env);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("already revoked"));
    let output = run_ledger(&["keys", "revoke", &uuid::Uuid::now_v7().to_string()], &env);
    assert_eq!(output.status.code(), Some(1));
}

#[tokio::test]
async fn keys_create_refuses_bad_arguments() {
    let db = TestDb::new().await;
    let url = db.url();
    let env = [("DATABASE_URL", url.as_str())];
    for args in [
        vec!["keys", "create"],
        vec!["keys", "create", "--admin", "--account", GLOBEX_IBAN],
        vec!["keys", "revoke", "not-a-uuid"],
    ] {
        let output = run_ledger(&args, &env);
        assert_eq!(output.status.code(), Some(2), "{args:?}: usage error");
    }
    let output = run_ledger(&["keys", "create", "--account", "DE00 1234"], &env);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--account"));
    assert!(output.stdout.is_empty(), "no key printed");
    let pool = db.pool().await;
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(keys, 0);
    // Only a hash is stored: the printed key is nowhere in the database.
    let key = create_key_with_cli(&url, &["--admin"]);
    let stored: String = sqlx::query_scalar("SELECT string_agg(k::text, ' ') FROM api_keys k")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!stored.contains(&key[key.len() - 43..]), "{stored}");
}

#[tokio::test]
async fn with_auth_disabled_anyone_may_call_and_events_say_so() {
    let db = TestDb::new().await;
    let url = db.url();
    let server = Binary::serve(&[
        ("DATABASE_URL", &url),
        ("LEDGER_IBAN_CHECK", "structure"),
        ("LEDGER_AUTH", "disabled"),
    ]);
    assert!(server.key.is_none());
    open_acme(&client(), &server.base, 100).await;
    let pool = db.pool().await;
    let actors: Vec<Value> = sqlx::query_scalar("SELECT metadata->'actor' FROM events")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(actors, vec![json!("anonymous"); 2]);
}

/// Keys appear on stdout when created, and nowhere in any log: not at
/// debug level, not in JSON logs, not for valid or invalid keys.
#[tokio::test]
async fn no_key_or_secret_reaches_the_logs() {
    use std::io::Read;
    use std::process::Stdio;

    let db = TestDb::new().await;
    let url = db.url();
    let admin = create_key_with_cli(&url, &["--admin"]);
    let mut child = ledger_dying_with_the_test()
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("LEDGER_LISTEN", "127.0.0.1:0")
        .env("LEDGER_GRPC_LISTEN", "127.0.0.1:0")
        .env("LEDGER_IBAN_CHECK", "structure")
        .env("LEDGER_LOG_FORMAT", "json")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Drain stderr as it comes (trace logs fill a pipe quickly).
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (sender, receiver) = std::sync::mpsc::channel();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let mut buffer = [0u8; 256];
        loop {
            match stdout.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    text.push_str(&String::from_utf8_lossy(&buffer[..n]));
                    if let Some(address) = text.lines().find_map(|l| l.strip_prefix("ledger listening on ")) {
                        let grpc = text.lines().find_map(|l| l.strip_prefix("ledger gRPC listening on "));
                        let _ = sender.send((address.to_owned(), grpc.map(str::to_owned)));
                    }
                }
            }
        }
        text
    });
    let (base, grpc) = receiver.recv_timeout(Duration::from_secs(60)).unwrap();
    let admin_client = client_with_key(Some(&admin));
    open_acme(&admin_client, &base, 1_000).await;
    let wrong = format!(
        "{}{}",
        &admin[..admin.len() - 1],
        if admin.ends_with('A') { 'B' } else { 'A' }
    );
    for key in [&admin, &wrong] {
        let _ = client_with_key(Some(key))
            .post(format!("{base}/v1/transfer/bulk"))
            .json(&bulk(vec![transfer("1.00")]))
            .send()
            .await
            .unwrap();
    }
    // And over gRPC.
    let mut grpc = ledger::grpc::pb::ledger_service_client::LedgerServiceClient::connect(grpc.unwrap())
        .await
        .unwrap();
    for key in [&admin, &wrong] {
        let mut request = tonic::Request::new(ledger::grpc::pb::GetAccountRequest {
            iban: ACME_IBAN.into(),
            min_position: None,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        let _ = grpc.get_account(request).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let logs = logs.join().unwrap();
    let stdout = out.join().unwrap();
    assert!(logs.contains("api_key_id"), "the acting key's id is logged");
    assert!(logs.contains("GetAccount"), "the gRPC calls are logged");
    assert!(logs.contains(&key_id(&admin)), "by its id");
    for secret in [&admin, &wrong] {
        let tail = &secret[secret.len() - 43..];
        assert!(!logs.contains(tail), "a secret in the logs");
        assert!(!stdout.contains(tail), "a secret on stdout");
    }
}

/// Emptying the key table (TRUNCATE, no rows to name) makes every server
/// forget every cached key.
#[tokio::test]
async fn truncating_the_keys_refuses_every_cached_key() {
    let f = fixture().await;
    let account = format!("/v1/accounts/{ACME_IBAN}");
    for client in [&f.admin, &f.account] {
        let (status, _) = f.send(client, "GET", &account, None).await;
        assert_eq!(status, 200, "the key works, and the server has cached it");
    }
    let pool = f.db.pool().await;
    sqlx::query("TRUNCATE api_keys").execute(&pool).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for client in [&f.admin, &f.account] {
        loop {
            let (status, _) = f.send(client, "GET", &account, None).await;
            if status == 401 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "a truncated key still works");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
