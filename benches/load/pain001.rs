//! The ISO 20022 scenario (SPEC §10): the same payroll of
//! [`TRANSACTIONS`] transfers posted as a pain.001 document and as a JSON
//! bulk, alternately, one at a time on one connection, so the figure
//! compares the two paths (parse, validate, map, book, answer) on the same
//! server in the same run. Goal of issue #14: the pain.001 within 1.5× of
//! the JSON bulk.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::bail;
use bytes::Bytes;

use super::http::{Account, BIC, Connection, bulk_json};

/// Rounds of each kind, alternating.
pub(super) const ROUNDS: usize = 5;
/// Transactions per document (the default bulk maximum).
pub(super) const TRANSACTIONS: usize = 10_000;

/// What the rounds measured, in milliseconds per request.
pub(super) struct Figures {
    pub(super) json_ms: Vec<f64>,
    pub(super) xml_ms: Vec<f64>,
    pub(super) json_bytes: usize,
    pub(super) xml_bytes: usize,
}

/// The payroll of [`bulk_json`] as a pain.001.001.09 document whose
/// `MsgId` is `MSG-ID` (replaced per round: it is the idempotency key).
fn pain001(payer: &Account) -> anyhow::Result<String> {
    let bulk = bulk_json(payer, TRANSACTIONS);
    let transfers = bulk["credit_transfers"].as_array().cloned().unwrap_or_default();
    let mut cents: i64 = 0;
    let mut transactions = String::new();
    for (index, transfer) in transfers.iter().enumerate() {
        let amount = transfer["amount"].as_str().unwrap_or("0");
        let (units, fraction) = amount.split_once('.').unwrap_or((amount, "0"));
        cents += units.parse::<i64>()? * 100 + format!("{fraction:0<2}")[..2].parse::<i64>()?;
        let _ = write!(
            transactions,
            "<CdtTrfTxInf><PmtId><EndToEndId>E2E-{index}</EndToEndId></PmtId>\
             <Amt><InstdAmt Ccy=\"EUR\">{amount}</InstdAmt></Amt>\
             <CdtrAgt><FinInstnId><BICFI>{}</BICFI></FinInstnId></CdtrAgt><Cdtr><Nm>{}</Nm></Cdtr>\
             <CdtrAcct><Id><IBAN>{}</IBAN></Id></CdtrAcct><RmtInf><Ustrd>{}</Ustrd></RmtInf></CdtTrfTxInf>",
            transfer["counterparty_bic"].as_str().unwrap_or(""),
            transfer["counterparty_name"].as_str().unwrap_or(""),
            transfer["counterparty_iban"].as_str().unwrap_or(""),
            transfer["description"].as_str().unwrap_or(""),
        );
    }
    let total = format!("{}.{:02}", cents / 100, cents % 100);
    if transfers.len() != TRANSACTIONS {
        bail!("the JSON bulk has {} transfers", transfers.len());
    }
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:pain.001.001.09\"><CstmrCdtTrfInitn>\
         <GrpHdr><MsgId>MSG-ID</MsgId><CreDtTm>2026-12-01T09:00:00</CreDtTm><NbOfTxs>{TRANSACTIONS}</NbOfTxs>\
         <CtrlSum>{total}</CtrlSum><InitgPty><Nm>{name}</Nm></InitgPty></GrpHdr>\
         <PmtInf><PmtInfId>PAY-1</PmtInfId><PmtMtd>TRF</PmtMtd><ReqdExctnDt><Dt>2026-12-01</Dt></ReqdExctnDt>\
         <Dbtr><Nm>{name}</Nm></Dbtr><DbtrAcct><Id><IBAN>{iban}</IBAN></Id></DbtrAcct>\
         <DbtrAgt><FinInstnId><BICFI>{BIC}</BICFI></FinInstnId></DbtrAgt>{transactions}</PmtInf>\
         </CstmrCdtTrfInitn></Document>\n",
        name = payer.name,
        iban = payer.iban,
    ))
}

/// Posts [`ROUNDS`] JSON bulks and [`ROUNDS`] pain.001 documents of the
/// same transfers from `payer`, alternately; every one must be booked.
pub(super) async fn run(address: SocketAddr, payer: &Account) -> anyhow::Result<Figures> {
    let mut connection = Connection::open(address).await.map_err(anyhow::Error::msg)?;
    let json = Bytes::from(serde_json::to_vec(&bulk_json(payer, TRANSACTIONS))?);
    let xml = pain001(payer)?;
    let mut figures = Figures {
        json_ms: Vec::new(),
        xml_ms: Vec::new(),
        json_bytes: json.len(),
        xml_bytes: xml.len(),
    };
    let run = std::process::id();
    for round in 0..ROUNDS {
        let key = format!("bench-json-{run}-{round}");
        let sent = Instant::now();
        let (status, answer) = connection
            .post("/v1/transfer/bulk", json.clone(), Some(&key))
            .await
            .map_err(anyhow::Error::msg)?;
        figures.json_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        if status != 201 {
            bail!("the JSON bulk answered {status}: {}", String::from_utf8_lossy(&answer));
        }
        let document = Bytes::from(xml.replace("MSG-ID", &format!("bench-pain-{run}-{round}")));
        let sent = Instant::now();
        let (status, answer) = connection
            .post_as("/v1/transfer/bulk", document, "application/xml", None)
            .await
            .map_err(anyhow::Error::msg)?;
        figures.xml_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        if status != 201 {
            bail!("the pain.001 answered {status}: {}", String::from_utf8_lossy(&answer));
        }
    }
    Ok(figures)
}
