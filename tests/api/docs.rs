//! The OpenAPI document and the interactive docs.

use serde_json::Value;

use crate::support::*;

/// `/openapi.json` is OpenAPI 3.1 and every route it lists is served (not
/// answered by the fallback).
#[tokio::test]
async fn the_openapi_document_lists_served_routes() {
    let app = TestApp::spawn_with(ledger::app::Settings::default()).await;
    let (status, spec) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = spec["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 13, "{:?}", paths.keys());
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{iban}", "DE89370400440532013000");
            let request = app
                .client
                .request(method.to_uppercase().parse().unwrap(), app.url(&concrete));
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert!(
                status != 405 && !body.contains("no such route"),
                "{method} {path} is not served: {status} {body}"
            );
        }
    }
    // The bulk endpoint documents its statuses and the idempotency header,
    // and both media types (JSON, and pain.001 in XML with a pain.002 answer).
    let bulk = &spec["paths"]["/v1/transfer/bulk"]["post"];
    let request = &bulk["requestBody"]["content"];
    assert!(request["application/json"].is_object(), "{request}");
    assert!(
        request["application/xml"]["example"]
            .as_str()
            .unwrap()
            .contains("pain.001.001.09"),
        "{request}"
    );
    let created = &bulk["responses"]["201"]["content"];
    assert!(
        created["application/xml"]["example"]
            .as_str()
            .unwrap()
            .contains("pain.002.001.10")
    );
    assert!(bulk["responses"]["200"]["content"]["application/json"].is_object());
    let statement = &spec["paths"]["/v1/accounts/{iban}/statement"]["get"]["responses"]["200"]["content"];
    assert!(
        statement["application/xml"].is_object() && statement["application/json"].is_object(),
        "{statement}"
    );
    for status in ["201", "400", "404", "409", "413", "422"] {
        assert!(bulk["responses"][status].is_object(), "bulk documents {status}");
    }
    assert!(
        bulk["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Idempotency-Key")
    );
}

/// The request examples in the document are accepted by the API as they are.
#[tokio::test]
async fn the_documented_examples_are_accepted() {
    let app = TestApp::spawn_with(ledger::app::Settings::default()).await;
    let (_, spec) = app.get("/openapi.json").await;
    let example = |schema: &str| -> Value { spec["components"]["schemas"][schema]["example"].clone() };
    let (status, account) = app.post("/v1/accounts", &example("OpenAccountBody")).await;
    assert_eq!(status, 201, "{account}");
    let iban = account["iban"].as_str().unwrap().to_owned();
    let (status, body) = app
        .post(&format!("/v1/accounts/{iban}/deposits"), &example("DepositBody"))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app.post("/v1/transfer/bulk", &example("BulkTransferBody")).await;
    assert_eq!(status, 201, "{body}");
}

/// `/docs` is Swagger UI served from the binary: no asset comes from a CDN.
#[tokio::test]
async fn the_docs_page_is_self_contained() {
    let app = TestApp::spawn().await;
    let response = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let page = response.text().await.unwrap();
    assert!(page.contains("swagger-ui"), "{page}");
    for attribute in ["src=\"http", "href=\"http", "src='http", "href='http"] {
        assert!(!page.contains(attribute), "external asset in /docs: {page}");
    }
    for asset in [
        "/docs/swagger-ui.css",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-initializer.js",
    ] {
        let response = app.client.get(app.url(asset)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{asset}");
    }
    let initializer = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(initializer.contains("/openapi.json"), "{initializer}");
}

/// In a real headless Chromium, `/docs` renders every operation, offline.
/// Needs Debian's `chromium`: runs whenever it is installed, and says it
/// was skipped otherwise, so that `cargo test` on a machine with only Rust
/// and PostgreSQL still passes. `.ci/run` installs it and sets
/// LEDGER_BROWSER_TESTS=1, which turns a missing browser into a failure.
#[tokio::test]
async fn the_docs_render_every_operation_in_headless_chromium() {
    if std::process::Command::new("chromium")
        .arg("--version")
        .output()
        .is_err()
    {
        assert_ne!(
            std::env::var("LEDGER_BROWSER_TESTS").as_deref(),
            Ok("1"),
            "LEDGER_BROWSER_TESTS=1 but chromium is not installed"
        );
        eprintln!("skipped: chromium is not installed (Debian: chromium)");
        return;
    }
    let app = TestApp::spawn().await;
    let profile = std::env::temp_dir().join(format!("ledger-chromium-{}", uuid::Uuid::new_v4().simple()));
    let screenshot = profile.with_extension("png");
    let (profile_dir, base) = (profile.clone(), app.base.clone());
    let chromium = move |extra: &[String]| {
        let mut command = std::process::Command::new("chromium");
        command.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
        ]);
        command.arg(format!("--user-data-dir={}", profile_dir.display()));
        command.args(extra);
        command.arg(format!("{base}/docs/"));
        command
    };
    let (dom, shot) = tokio::task::spawn_blocking({
        let screenshot = screenshot.clone();
        move || {
            let dom = chromium(&["--dump-dom".to_owned()])
                .output()
                .expect("run chromium (apt-get install chromium)");
            let shot = chromium(&[
                "--window-size=1280,1600".to_owned(),
                format!("--screenshot={}", screenshot.display()),
            ])
            .output()
            .expect("run chromium");
            (dom, shot)
        }
    })
    .await
    .unwrap();
    assert!(
        dom.status.success() && shot.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    for (_, path) in ledger::http::openapi::routes() {
        assert!(
            dom.contains(&format!("data-path=\"{path}\"")),
            "{path} not rendered by Swagger UI"
        );
    }
    let png = std::fs::metadata(&screenshot).expect("a screenshot");
    assert!(png.len() > 10_000, "the screenshot is not blank");
    let _ = std::fs::remove_file(&screenshot);
    let _ = std::fs::remove_dir_all(&profile);
}
