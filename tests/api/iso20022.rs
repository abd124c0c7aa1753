//! ISO 20022 (SPEC §10): pain.001 files booked through the real binary and
//! its CLI, pain.002 answers and camt.053 statements validated against the
//! official XSDs (by xmllint when installed, always by the ledger's own
//! validator), hostile documents refused without booking anything, and
//! statements that reconcile with the history.

use std::process::Command;

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::support::*;

const GLOBEX_IBAN: &str = "DE89370400440532013000";
const INITECH_IBAN: &str = "GB29NWBK60161331926819";
const PAIN_002_XSD: &str = "src/iso20022/xsd/pain.002.001.10.xsd";
const CAMT_053_XSD: &str = "src/iso20022/xsd/camt.053.001.08.xsd";

fn read_fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Validates a document the ledger wrote against the official XSD: with
/// xmllint when it is installed (always in CI), and with the ledger's own
/// validator in any case.
fn assert_valid(xsd: &str, xml: &str) {
    let schema = match xsd {
        PAIN_002_XSD => &*ledger::iso20022::PAIN_002_001_10,
        CAMT_053_XSD => &*ledger::iso20022::CAMT_053_001_08,
        other => panic!("no schema {other}"),
    };
    let doc = roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("not XML ({e}): {xml}"));
    assert_eq!(schema.validate(&doc), vec![], "{xml}");
    if Command::new("xmllint").arg("--version").output().is_err() {
        assert_ne!(
            std::env::var("LEDGER_XMLLINT_TESTS").as_deref(),
            Ok("1"),
            "LEDGER_XMLLINT_TESTS=1 but xmllint is not installed"
        );
        eprintln!(
            "skipped: xmllint is not installed (Debian: libxml2-utils); validated by the ledger's own validator only"
        );
        return;
    }
    let file = std::env::temp_dir().join(format!("ledger-{}.xml", uuid::Uuid::new_v4()));
    std::fs::write(&file, xml).unwrap();
    let output = Command::new("xmllint")
        .args(["--noout", "--nonet", "--schema"])
        .arg(format!("{}/{xsd}", env!("CARGO_MANIFEST_DIR")))
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_file(&file).ok();
    assert!(
        output.status.success(),
        "xmllint: {}\n{xml}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The text of the first element named `name`.
fn text_of(xml: &str, name: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).unwrap();
    doc.descendants()
        .find(|n| n.is_element() && n.tag_name().name() == name)
        .and_then(|n| n.text())
        .map(str::to_owned)
}

fn all_texts(xml: &str, name: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(xml).unwrap();
    doc.descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == name)
        .filter_map(|n| n.text().map(str::to_owned))
        .collect()
}

async fn open(client: &reqwest::Client, base: &str, name: &str, iban: &str, bic: &str, cents: i64) {
    let response = client
        .post(format!("{base}/v1/accounts"))
        .json(&json!({"organization_name": name, "iban": iban, "bic": bic}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201, "{}", response.text().await.unwrap());
    if cents > 0 {
        let response = client
            .post(format!("{base}/v1/accounts/{iban}/deposits"))
            .json(&json!({"amount": format!("{}.{:02}", cents / 100, cents % 100)}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "{}", response.text().await.unwrap());
    }
}

async fn open_globex_and_initech(client: &reqwest::Client, base: &str, globex_cents: i64) {
    open(client, base, "Globex GmbH", GLOBEX_IBAN, "COBADEFFXXX", globex_cents).await;
    open(client, base, "Initech Ltd", INITECH_IBAN, "NWBKGB2L", 0).await;
}

/// Posts an XML body; the status, the `Idempotent-Replayed` header and the body.
async fn post_xml(client: &reqwest::Client, base: &str, xml: &str, accept: Option<&str>) -> (u16, bool, String) {
    let mut request = client
        .post(format!("{base}/v1/transfer/bulk"))
        .header("content-type", "application/xml")
        .body(xml.to_owned());
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let replayed = response.headers().get("idempotent-replayed").is_some();
    (status, replayed, response.text().await.unwrap())
}

/// A GET with the client's key: status and JSON body.
async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    into_parts(client.get(url).send().await.unwrap()).await
}

async fn event_count(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// SPEC §10, done when: a pain.001 file books through the real binary, its
/// answer is a pain.002 valid against the XSD, the same file again replays
/// it, and another file under the same MsgId is a 409 that books nothing.
#[tokio::test]
async fn a_pain001_file_books_through_the_binary_and_answers_a_valid_pain002() {
    let db = TestDb::new().await;
    let binary = Binary::serve(&[("DATABASE_URL", &db.url())]);
    let (client, base) = (&binary.client, &binary.base);
    open_globex_and_initech(client, base, 10_000_000).await;
    let file = read_fixture("payroll.pain.001.xml");
    let (status, replayed, report) = post_xml(client, base, &file, None).await;
    assert_eq!(status, 201, "{report}");
    assert!(!replayed);
    assert_valid(PAIN_002_XSD, &report);
    assert_eq!(
        text_of(&report, "OrgnlMsgId").as_deref(),
        Some("GLOBEX-PAYROLL-2026-11")
    );
    assert_eq!(text_of(&report, "OrgnlMsgNmId").as_deref(), Some("pain.001.001.09"));
    assert_eq!(text_of(&report, "GrpSts").as_deref(), Some("ACCP"));
    assert_eq!(all_texts(&report, "OrgnlPmtInfId"), vec!["PAYROLL-2026-11-1"]);
    assert_eq!(all_texts(&report, "PmtInfSts"), vec!["ACCP"]);

    // Booked as one bulk: 100,000.00 - 5,530.45.
    let (status, account) = get(client, format!("{base}/v1/accounts/{GLOBEX_IBAN}")).await;
    assert_eq!(status, 200);
    assert_eq!(account["balance_cents"], 10_000_000 - 553_045);
    // The end-to-end ids are in the history...
    let (_, history) = get(client, format!("{base}/v1/accounts/{GLOBEX_IBAN}/transactions")).await;
    let ids: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["end_to_end_id"].as_str())
        .collect();
    assert_eq!(ids, vec!["INV-2026-117", "SAL-2026-11-0002", "SAL-2026-11-0001"]);
    // ...in the event the feed carries...
    let (_, feed) = get(client, format!("{base}/v1/events")).await;
    let bulk = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "BulkTransferBooked")
        .unwrap();
    assert_eq!(bulk["data"]["transfers"][0]["end_to_end_id"], "SAL-2026-11-0001");
    // The transfer naming no creditor agent has no BIC.
    assert!(bulk["data"]["transfers"][2].get("counterparty_bic").is_none());
    // ...and on the on-us payee's credit, once the posting process made it.
    let position = bulk["position"].as_i64().unwrap();
    let (status, credits) = get(
        client,
        format!("{base}/v1/accounts/{INITECH_IBAN}/transactions?min_position={position}"),
    )
    .await;
    assert_eq!(status, 200, "{credits}");
    assert_eq!(credits["items"][0]["kind"], "transfer_received");
    assert_eq!(credits["items"][0]["amount_cents"], 120_000);
    assert_eq!(credits["items"][0]["end_to_end_id"], "INV-2026-117");

    // The same file again: the same report, nothing booked twice.
    let pool = db.pool().await;
    let events = event_count(&pool).await;
    let (status, replayed, again) = post_xml(client, base, &file, None).await;
    assert_eq!(status, 201);
    assert!(replayed);
    assert_eq!(again, report);
    // As JSON, the same outcome.
    let (status, _, report_json) = post_xml(client, base, &file, Some("application/json")).await;
    assert_eq!(status, 201);
    let report_json: Value = serde_json::from_str(&report_json).unwrap();
    assert_eq!(report_json["msg_id"], "GLOBEX-PAYROLL-2026-11");
    assert_eq!(report_json["status"], "ACCP");
    assert_eq!(
        report_json["payment_informations"][0]["pmt_inf_id"],
        "PAYROLL-2026-11-1"
    );
    assert_eq!(
        report_json["payment_informations"][0]["transfer_ids"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(report_json["payment_informations"][0]["position"], position);
    // Another document under the same MsgId: 409, nothing booked.
    let other = file
        .replace("<InstdAmt Ccy=\"EUR\">2500.00", "<InstdAmt Ccy=\"EUR\">2500.01")
        .replace("<CtrlSum>5530.45</CtrlSum>", "<CtrlSum>5530.46</CtrlSum>");
    let (status, _, problem) = post_xml(client, base, &other, None).await;
    assert_eq!(status, 409, "{problem}");
    // An Idempotency-Key header contradicting the MsgId is a 400.
    let response = client
        .post(format!("{base}/v1/transfer/bulk"))
        .header("content-type", "application/xml")
        .header("idempotency-key", "something-else")
        .body(file.clone())
        .send()
        .await
        .unwrap();
    let (status, problem) = into_parts(response).await;
    assert_eq!(status, 400);
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(event_count(&pool).await, events, "nothing more was booked");
}

/// Each PmtInf is all or nothing on its own, in document order: one refused
/// for lack of funds (recorded, AM04) does not stop the others (PART, 200);
/// none booked is RJCT (422) with the reason of each.
#[tokio::test]
async fn each_payment_books_on_its_own_and_refusals_carry_their_reason_codes() {
    let app = TestApp::spawn_with(ledger::app::Settings::default()).await;
    open_globex_and_initech(&app.client, &app.base, 1_000_000).await;
    // .03: two payments, 15,000.00 then 100,000.00, against 10,000.00.
    let file = read_fixture("iso20022/pain.001.001.03.xml")
        .replace(">500000<", ">5000<")
        .replace(">1000000.00000<", ">10000.00000<")
        .replace("<CtrlSum>1500000</CtrlSum>", "<CtrlSum>15000</CtrlSum>")
        .replace("<CtrlSum>11500000.</CtrlSum>", "<CtrlSum>10015000</CtrlSum>");
    let (status, _, report) = post_xml(&app.client, &app.base, &file, None).await;
    // Neither payment is covered: RJCT, AM04 twice (both recorded).
    assert_eq!(status, 422, "{report}");
    assert_valid(PAIN_002_XSD, &report);
    assert_eq!(text_of(&report, "GrpSts").as_deref(), Some("RJCT"));
    assert_eq!(all_texts(&report, "Cd"), vec!["AM04", "AM04"]);

    // The first payment smaller: it books, the second is still refused.
    let funded = file
        .replace("ABC/090928/CCT001", "ABC/090928/CCT002")
        .replace(">5000<", ">50<")
        .replace(">10000.00000<", ">100.00000<")
        .replace("<CtrlSum>15000</CtrlSum>", "<CtrlSum>150</CtrlSum>")
        .replace("<CtrlSum>10015000</CtrlSum>", "<CtrlSum>10000150</CtrlSum>");
    let (status, _, report) = post_xml(&app.client, &app.base, &funded, Some("application/json")).await;
    assert_eq!(status, 200, "{report}");
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["status"], "PART");
    let payments = report["payment_informations"].as_array().unwrap();
    assert_eq!(payments[0]["status"], "ACCP");
    assert_eq!(payments[0]["transfer_ids"].as_array().unwrap().len(), 2);
    assert_eq!(payments[1]["status"], "RJCT");
    assert_eq!(payments[1]["reason"], "AM04");
    assert!(payments[1]["bulk_id"].is_string(), "a refusal for funds is recorded");
    assert_eq!(app.balance_cents(GLOBEX_IBAN).await, 1_000_000 - 15_000);

    // Unknown account (AC01), BIC mismatch (RC01), currency (AM03): RJCT.
    let one = |msg_id: &str, iban: &str, bic: &str, currency: &str| {
        read_fixture("payroll.pain.001.xml")
            .replace("GLOBEX-PAYROLL-2026-11", msg_id)
            .replace("<IBAN>DE89370400440532013000</IBAN>", &format!("<IBAN>{iban}</IBAN>"))
            .replace("<BICFI>COBADEFFXXX</BICFI>", &format!("<BICFI>{bic}</BICFI>"))
            .replace("Ccy=\"EUR\"", &format!("Ccy=\"{currency}\""))
    };
    for (file, code) in [
        (one("M-AC01", "GB94BARC10201530093459", "COBADEFFXXX", "EUR"), "AC01"),
        (one("M-RC01", GLOBEX_IBAN, "DEUTDEFFXXX", "EUR"), "RC01"),
        (one("M-AM03", GLOBEX_IBAN, "COBADEFFXXX", "USD"), "AM03"),
    ] {
        let events = app.event_count().await;
        let (status, _, report) = post_xml(&app.client, &app.base, &file, None).await;
        assert_eq!(status, 422, "{code}: {report}");
        assert_valid(PAIN_002_XSD, &report);
        assert_eq!(text_of(&report, "GrpSts").as_deref(), Some("RJCT"));
        assert_eq!(text_of(&report, "Cd").as_deref(), Some(code), "{report}");
        assert_eq!(app.event_count().await, events, "{code} booked nothing");
    }
}

/// Hostile or wrong documents: each one a 400 naming what is wrong, and
/// nothing of it booked.
#[tokio::test]
async fn hostile_and_invalid_documents_book_nothing() {
    let app = TestApp::spawn_with(ledger::app::Settings::default()).await;
    open_globex_and_initech(&app.client, &app.base, 10_000_000).await;
    let file = read_fixture("payroll.pain.001.xml");
    let body = file.split_once("-->").unwrap().1;
    let deep = format!(
        "<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:pain.001.001.09\">{}{}</Document>",
        "<CstmrCdtTrfInitn>".repeat(100_000),
        "</CstmrCdtTrfInitn>".repeat(100_000)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "billion laughs",
            format!(
                r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>{}"#,
                body.replace("Salary 2026-11", "&lol2;")
            ),
            "body",
        ),
        (
            "external entity",
            format!(
                r#"<?xml version="1.0"?><!DOCTYPE Document [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>{}"#,
                body.replace("Salary 2026-11", "&xxe;")
            ),
            "body",
        ),
        ("an undeclared entity", file.replace("Salary 2026-11", "&xxe;"), "body"),
        (
            "deep nesting",
            deep,
            "CstmrCdtTrfInitn/CstmrCdtTrfInitn/CstmrCdtTrfInitn/CstmrCdtTrfInitn",
        ),
        (
            "a wrong CtrlSum",
            file.replace(
                "<CtrlSum>5530.45</CtrlSum>\n      <InitgPty>",
                "<CtrlSum>5530.44</CtrlSum>\n      <InitgPty>",
            ),
            "GrpHdr/CtrlSum",
        ),
        (
            "a wrong NbOfTxs",
            file.replace(
                "<NbOfTxs>3</NbOfTxs>\n      <CtrlSum>5530.45</CtrlSum>\n      <InitgPty>",
                "<NbOfTxs>4</NbOfTxs>\n      <CtrlSum>5530.45</CtrlSum>\n      <InitgPty>",
            ),
            "GrpHdr/NbOfTxs",
        ),
        (
            "an invalid IBAN inside",
            file.replace("GB82WEST12345698765432", "GB00WEST12345698765432"),
            "PmtInf[1]/CdtTrfTxInf[1]/CdtrAcct/Id/IBAN",
        ),
        (
            "too many decimals for the currency",
            file.replace(">1830.45<", ">1830.455<").replace("5530.45", "5530.455"),
            "PmtInf[1]/CdtTrfTxInf[2]/Amt/InstdAmt",
        ),
        (
            "an element the XSD does not allow",
            file.replace(
                "<Cdtr><Nm>Homer Simpson</Nm></Cdtr>",
                "<Cdtr><Nm>Homer Simpson</Nm></Cdtr><Cdtr/>",
            ),
            "PmtInf[1]/CdtTrfTxInf[2]/Cdtr",
        ),
        (
            "not a pain.001",
            file.replace("pain.001.001.09", "pain.001.001.12"),
            "Document",
        ),
        ("not well-formed", file.replace("</Document>", ""), "body"),
        (
            "not UTF-8",
            file.replace("Homer", "Hom\u{e9}r").replace("UTF-8", "ISO-8859-1"),
            "body",
        ),
    ];
    for (what, xml, field) in cases {
        let events = app.event_count().await;
        let (status, _, problem) = post_xml(&app.client, &app.base, &xml, None).await;
        assert_eq!(status, 400, "{what}: {problem}");
        let problem: Value = serde_json::from_str(&problem).unwrap();
        assert_eq!(problem["type"], "/problems/validation", "{what}");
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{what}: {fields:?} {problem}");
        assert_eq!(app.event_count().await, events, "{what} booked nothing");
    }
    assert_eq!(app.balance_cents(GLOBEX_IBAN).await, 10_000_000);
}

/// A camt.053 for the period validates against the XSD and reconciles with
/// the history: opening + entries = closing, one entry per history item.
#[tokio::test]
async fn a_statement_validates_and_reconciles_with_the_history() {
    let db = TestDb::new().await;
    let binary = Binary::serve(&[("DATABASE_URL", &db.url())]);
    let (client, base) = (&binary.client, &binary.base);
    open_globex_and_initech(client, base, 10_000_000).await;
    let (status, _, _) = post_xml(client, base, &read_fixture("payroll.pain.001.xml"), None).await;
    assert_eq!(status, 201);
    let today = chrono::Utc::now().date_naive();
    let period = format!("from={}&to={}", today.pred_opt().unwrap(), today.succ_opt().unwrap());
    let statement = client
        .get(format!("{base}/v1/accounts/{GLOBEX_IBAN}/statement?{period}"))
        .send()
        .await
        .unwrap();
    assert_eq!(statement.status().as_u16(), 200);
    assert!(
        statement.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/xml")
    );
    let xml = statement.text().await.unwrap();
    assert_valid(CAMT_053_XSD, &xml);
    assert_eq!(text_of(&xml, "IBAN").as_deref(), Some(GLOBEX_IBAN));
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let balance = |code: &str| {
        let bal = doc
            .descendants()
            .filter(|n| n.tag_name().name() == "Bal")
            .find(|n| {
                n.descendants()
                    .any(|c| c.tag_name().name() == "Cd" && c.text() == Some(code))
            })
            .unwrap();
        let amount = bal.children().find(|c| c.tag_name().name() == "Amt").unwrap();
        assert_eq!(amount.attribute("Ccy"), Some("EUR"));
        amount.text().unwrap().to_owned()
    };
    assert_eq!(balance("OPBD"), "0.00");
    assert_eq!(balance("CLBD"), "94469.55");
    let entries: Vec<roxmltree::Node> = doc.descendants().filter(|n| n.tag_name().name() == "Ntry").collect();
    assert_eq!(entries.len(), 4, "a deposit and three transfers");
    let end_to_end: Vec<String> = all_texts(&xml, "EndToEndId");
    assert_eq!(end_to_end, vec!["SAL-2026-11-0001", "SAL-2026-11-0002", "INV-2026-117"]);

    // The JSON form: the same statement, and its entries are the history.
    let (status, json) = into_parts(
        client
            .get(format!("{base}/v1/accounts/{GLOBEX_IBAN}/statement?{period}"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{json}");
    let (_, history) = get(client, format!("{base}/v1/accounts/{GLOBEX_IBAN}/transactions")).await;
    let mut items = history["items"].as_array().unwrap().clone();
    items.reverse();
    assert_eq!(json["entries"].as_array().unwrap(), &items);
    assert_eq!(json["opening_balance_cents"], 0);
    assert_eq!(json["closing_balance_cents"], 10_000_000 - 553_045);
    assert_eq!(json["credits"]["sum_cents"], 10_000_000);
    assert_eq!(json["debits"]["count"], 3);

    // A period before anything happened, and bad periods.
    let (status, _) = get(
        client,
        format!("{base}/v1/accounts/{GLOBEX_IBAN}/statement?from=2020-01-01&to=2020-01-31"),
    )
    .await;
    assert_eq!(status, 404, "opened after the period");
    for (query, field) in [
        ("from=2026-13-01&to=2026-12-31", "from"),
        ("from=2026-12-02&to=2026-12-01", "to"),
        ("from=2024-01-01&to=2026-01-01", "to"),
        ("to=2026-12-01", "from"),
    ] {
        let (status, problem) = get(client, format!("{base}/v1/accounts/{GLOBEX_IBAN}/statement?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(problem["errors"][0]["field"], field, "{query}");
    }
}

/// `ledger import FILE` books a pain.001 and prints its pain.002 (exit 0;
/// a replay the second time); `ledger statement` prints a valid camt.053.
#[tokio::test]
async fn the_cli_imports_a_file_and_prints_a_statement() {
    let db = TestDb::new().await;
    let env = [("DATABASE_URL", db.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let ok = |args: &[&str]| {
        let output = run_ledger(args, &env);
        assert!(output.status.success(), "{args:?}: {output:?}");
    };
    ok(&[
        "accounts",
        "open",
        "--organization-name",
        "Globex GmbH",
        "--iban",
        GLOBEX_IBAN,
        "--bic",
        "COBADEFFXXX",
    ]);
    ok(&[
        "accounts",
        "open",
        "--organization-name",
        "Initech Ltd",
        "--iban",
        INITECH_IBAN,
        "--bic",
        "NWBKGB2L",
    ]);
    ok(&["accounts", "deposit", "--iban", GLOBEX_IBAN, "--amount", "10000.00"]);
    let fixture = format!("{}/tests/fixtures/payroll.pain.001.xml", env!("CARGO_MANIFEST_DIR"));
    let first = run_ledger(&["import", &fixture], &env);
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    let report = String::from_utf8(first.stdout).unwrap();
    assert_valid(PAIN_002_XSD, &report);
    assert_eq!(text_of(&report, "GrpSts").as_deref(), Some("ACCP"));
    let again = run_ledger(&["import", &fixture, "--format", "json"], &env);
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["status"], "ACCP");
    // Not enough money for a second run: none booked, exit 1.
    let poor = std::env::temp_dir().join(format!("pain-{}.xml", uuid::Uuid::new_v4()));
    std::fs::write(
        &poor,
        read_fixture("payroll.pain.001.xml").replace("GLOBEX-PAYROLL-2026-11", "GLOBEX-2"),
    )
    .unwrap();
    let refused = run_ledger(&["import", poor.to_str().unwrap()], &env);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert_eq!(
        text_of(&String::from_utf8(refused.stdout).unwrap(), "Cd").as_deref(),
        Some("AM04")
    );
    // An invalid file: exit 2, the problem named, nothing booked.
    std::fs::write(&poor, read_fixture("payroll.pain.001.xml").replace("5530.45", "1.00")).unwrap();
    let invalid = run_ledger(&["import", poor.to_str().unwrap()], &env);
    assert_eq!(invalid.status.code(), Some(2), "{invalid:?}");
    assert!(String::from_utf8_lossy(&invalid.stdout).contains("GrpHdr/CtrlSum"));
    std::fs::remove_file(&poor).ok();

    let today = chrono::Utc::now().date_naive().to_string();
    let statement = run_ledger(
        &["statement", "--account", GLOBEX_IBAN, "--from", &today, "--to", &today],
        &env,
    );
    assert!(statement.status.success(), "{statement:?}");
    let xml = String::from_utf8(statement.stdout).unwrap();
    assert_valid(CAMT_053_XSD, &xml);
    assert_eq!(
        roxmltree::Document::parse(&xml)
            .unwrap()
            .descendants()
            .filter(|n| n.tag_name().name() == "Ntry")
            .count(),
        4
    );
    let unknown = run_ledger(
        &[
            "statement",
            "--account",
            "GB94BARC10201530093459",
            "--from",
            &today,
            "--to",
            &today,
            "--format",
            "json",
        ],
        &env,
    );
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
}

/// A pain.001 of 10,000 transactions, booked through the real binary as one
/// bulk.
#[tokio::test]
async fn a_pain001_of_ten_thousand_transactions_books_through_the_binary() {
    let db = TestDb::new().await;
    let binary = Binary::serve(&[("DATABASE_URL", &db.url())]);
    let (client, base) = (&binary.client, &binary.base);
    open_globex_and_initech(client, base, 100_000_000).await;
    let transactions: String = (0..10_000)
        .map(|i| {
            format!(
                "<CdtTrfTxInf><PmtId><EndToEndId>E2E-{i}</EndToEndId></PmtId><Amt><InstdAmt Ccy=\"EUR\">{}.{:02}</InstdAmt></Amt>\
                 <Cdtr><Nm>Employee {i}</Nm></Cdtr><CdtrAcct><Id><IBAN>GB82WEST12345698765432</IBAN></Id></CdtrAcct>\
                 <RmtInf><Ustrd>Salary {i}</Ustrd></RmtInf></CdtTrfTxInf>",
                1 + i % 50,
                i % 100
            )
        })
        .collect();
    let total: i64 = (0..10_000).map(|i| (1 + i % 50) * 100 + i % 100).sum();
    let file = read_fixture("payroll.pain.001.xml");
    let start = file.find("<CdtTrfTxInf>").unwrap();
    let end = file.rfind("</CdtTrfTxInf>").unwrap() + "</CdtTrfTxInf>".len();
    let ctrl = format!("{}.{:02}", total / 100, total % 100);
    let big = format!("{}{transactions}{}", &file[..start], &file[end..])
        .replace("<NbOfTxs>3</NbOfTxs>", "<NbOfTxs>10000</NbOfTxs>")
        .replace("<CtrlSum>5530.45</CtrlSum>", &format!("<CtrlSum>{ctrl}</CtrlSum>"));
    let (status, _, report) = post_xml(client, base, &big, Some("application/json")).await;
    assert_eq!(status, 201, "{}", &report[..report.len().min(2000)]);
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        report["payment_informations"][0]["transfer_ids"]
            .as_array()
            .unwrap()
            .len(),
        10_000
    );
    let (_, account) = get(client, format!("{base}/v1/accounts/{GLOBEX_IBAN}")).await;
    assert_eq!(account["balance_cents"], 100_000_000 - total);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    /// Over random histories (deposits, bulks, refusals, on-us credits), a
    /// statement's opening balance plus its entries is its closing balance,
    /// its entries are the history's items, and the closing balance is the
    /// account's balance.
    #[test]
    fn statements_reconcile_with_the_history(ops in proptest::collection::vec((0u8..3, 1i64..50_000), 1..12)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let app = TestApp::spawn_with(ledger::app::Settings::default()).await;
            open_globex_and_initech(&app.client, &app.base, 0).await;
            for (index, (op, cents)) in ops.iter().enumerate() {
                let amount = format!("{}.{:02}", cents / 100, cents % 100);
                let (iban, body) = match op {
                    0 => (GLOBEX_IBAN, None),
                    1 => (INITECH_IBAN, None),
                    _ => (GLOBEX_IBAN, Some(json!({"organization_name": "Globex GmbH", "organization_bic": "COBADEFFXXX",
                        "organization_iban": GLOBEX_IBAN, "credit_transfers": [
                            {"amount": amount, "currency": "EUR", "counterparty_name": "Initech Ltd", "counterparty_bic": "NWBKGB2L",
                             "counterparty_iban": INITECH_IBAN, "description": format!("op {index}"), "end_to_end_id": format!("E2E-{index}")},
                            {"amount": "0.01", "currency": "EUR", "counterparty_name": "Elsewhere", "counterparty_bic": "NWBKGB2L",
                             "counterparty_iban": "GB82WEST12345698765432"}]}))),
                };
                match body {
                    None => { app.post(&format!("/v1/accounts/{iban}/deposits"), &json!({"amount": amount})).await; }
                    Some(bulk) => { app.post("/v1/transfer/bulk", &bulk).await; }
                }
            }
            post_everything(&app.pool).await;
            let today = chrono::Utc::now().date_naive();
            for iban in [GLOBEX_IBAN, INITECH_IBAN] {
                let period = format!("from={}&to={}", today.pred_opt().unwrap(), today.succ_opt().unwrap());
                let (status, statement) = into_parts(
                    app.client.get(app.url(&format!("/v1/accounts/{iban}/statement?{period}")))
                        .header("accept", "application/json").send().await.unwrap()).await;
                assert_eq!(status, 200, "{statement}");
                let entries = statement["entries"].as_array().unwrap();
                let moved: i64 = entries.iter().map(|e| e["amount_cents"].as_i64().unwrap()).sum();
                let opening = statement["opening_balance_cents"].as_i64().unwrap();
                let closing = statement["closing_balance_cents"].as_i64().unwrap();
                assert_eq!(opening, 0);
                assert_eq!(opening + moved, closing);
                assert_eq!(closing, app.balance_cents(iban).await);
                let (_, history) = app.get(&format!("/v1/accounts/{iban}/transactions?limit=1000")).await;
                let mut items = history["items"].as_array().unwrap().clone();
                items.reverse();
                assert_eq!(entries, &items);
                // And the camt.053 of the same period says the same.
                let xml = app.client.get(app.url(&format!(
                    "/v1/accounts/{iban}/statement?from={}&to={}", today.pred_opt().unwrap(), today.succ_opt().unwrap())))
                    .send().await.unwrap().text().await.unwrap();
                assert_valid(CAMT_053_XSD, &xml);
                let doc = roxmltree::Document::parse(&xml).unwrap();
                assert_eq!(doc.descendants().filter(|n| n.tag_name().name() == "Ntry").count(), entries.len());
            }
        });
    }
}
