//! pain.001 (customer credit transfer initiation), versions .03 and .09,
//! read into the typed commands of the JSON API: one
//! [`BulkTransferRequest`] per `PmtInf`, under the document's `MsgId`.
//!
//! Order of the checks: the XML itself ([`super::xml::read`]), then the
//! official XSD, then the group and payment counts and control sums, then
//! the ledger's own rules for every field (§1, §2.3). Every offending
//! element is named by its path (`PmtInf[1]/CdtTrfTxInf[3]/Amt/InstdAmt`);
//! any error refuses the whole document.
//!
//! About 600 lines, 180 of them tests: one message's mapping, element by
//! element, with the checks that name each element's path.

use std::str::FromStr;

use roxmltree::Node;
use rust_decimal::Decimal;

use super::xml::{child, child_text, children, descend};
use crate::app::requests::{
    BulkTransferRequest, CreditTransferRequest, END_TO_END_ID_CHARS_MAX, NAME_CHARS_MAX, TEXT_CHARS_MAX,
};
use crate::app::{FilePayment, PaymentFile};
use crate::domain::{Amount, Bic, Currency, Iban, IbanCheck};
use crate::problem::FieldError;

/// The versions accepted, by namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V03,
    V09,
}

impl Version {
    pub fn namespace(self) -> &'static str {
        match self {
            Version::V03 => "urn:iso:std:iso:20022:tech:xsd:pain.001.001.03",
            Version::V09 => "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09",
        }
    }

    /// The message name, as a status report quotes it (`OrgnlMsgNmId`).
    pub fn message_name(self) -> &'static str {
        match self {
            Version::V03 => "pain.001.001.03",
            Version::V09 => "pain.001.001.09",
        }
    }

    fn schema(self) -> &'static super::xsd::Schema {
        match self {
            Version::V03 => &super::PAIN_001_001_03,
            Version::V09 => &super::PAIN_001_001_09,
        }
    }

    /// The element naming an agent's BIC: `BIC` in .03, `BICFI` in .09.
    fn bic_element(self) -> &'static str {
        match self {
            Version::V03 => "BIC",
            Version::V09 => "BICFI",
        }
    }
}

/// Bounds on one document.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Transactions in the whole document (SPEC §2.3's bulk maximum).
    pub transactions_max: usize,
}

impl Limits {
    /// XML nodes allowed: generous for real files (a transaction is some
    /// forty elements and their texts), bounded for hostile ones.
    fn nodes_max(self) -> u32 {
        u32::try_from(self.transactions_max.saturating_mul(200).saturating_add(10_000)).unwrap_or(u32::MAX)
    }
}

/// Most errors listed in one answer: a file wrong everywhere is named
/// wrong, not returned in full.
const ERRORS_MAX: usize = 500;

/// Reads a pain.001 document into a [`PaymentFile`], or every reason it
/// cannot be booked.
pub fn parse(bytes: &[u8], check: IbanCheck, limits: Limits) -> Result<PaymentFile, Vec<FieldError>> {
    let doc = super::xml::read(bytes, limits.nodes_max()).map_err(|e| vec![e])?;
    let root = doc.root_element();
    let version = match root.tag_name().namespace() {
        Some(ns) if ns == Version::V03.namespace() => Version::V03,
        Some(ns) if ns == Version::V09.namespace() => Version::V09,
        other => {
            return Err(vec![FieldError::new(
                "Document",
                format!(
                    "must be a pain.001.001.03 or pain.001.001.09 document (namespace {} or {}), not {}",
                    Version::V03.namespace(),
                    Version::V09.namespace(),
                    other.map_or_else(|| "one without a namespace".to_owned(), |ns| format!("namespace {ns}"))
                ),
            )]);
        }
    };
    let invalid = version.schema().validate(&doc);
    if !invalid.is_empty() {
        return Err(capped(
            invalid
                .into_iter()
                .map(|i| FieldError::new(i.path, i.message))
                .collect(),
        ));
    }
    let mut reader = Reader {
        version,
        check,
        errors: Vec::new(),
    };
    let file = reader.document(root, limits);
    match file {
        Some(file) if reader.errors.is_empty() => Ok(file),
        _ => Err(capped(reader.errors)),
    }
}

fn capped(mut errors: Vec<FieldError>) -> Vec<FieldError> {
    if errors.len() > ERRORS_MAX {
        let more = errors.len() - ERRORS_MAX;
        errors.truncate(ERRORS_MAX);
        errors.push(FieldError::new("Document", format!("and {more} more errors")));
    }
    errors
}

struct Reader {
    version: Version,
    check: IbanCheck,
    errors: Vec<FieldError>,
}

/// Sums of a group of transactions, to check `NbOfTxs` and `CtrlSum`.
#[derive(Default)]
struct Tally {
    count: usize,
    /// `None` once a sum overflowed (then it cannot match any `CtrlSum`).
    sum: Option<Decimal>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            count: 0,
            sum: Some(Decimal::ZERO),
        }
    }

    fn add(&mut self, amount: Option<Decimal>) {
        self.count += 1;
        self.sum = match (self.sum, amount) {
            (Some(sum), Some(amount)) => sum.checked_add(amount),
            _ => None,
        };
    }
}

impl Reader {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    fn document(&mut self, root: Node, limits: Limits) -> Option<PaymentFile> {
        // The XSD guarantees the message element and the group header.
        let message = root.first_element_child()?;
        let header = child(message, "GrpHdr")?;
        let msg_id = child_text(header, "MsgId")?.to_owned();
        let payments_xml: Vec<Node> = children(message, "PmtInf").collect();
        let transactions: usize = payments_xml.iter().map(|p| children(*p, "CdtTrfTxInf").count()).sum();
        if transactions > limits.transactions_max {
            self.fail(
                "GrpHdr/NbOfTxs",
                format!(
                    "the document has {transactions} transactions; at most {} are accepted in one document",
                    limits.transactions_max
                ),
            );
            return None;
        }
        let mut whole = Tally::new();
        let mut payments = Vec::with_capacity(payments_xml.len());
        for (index, payment) in payments_xml.into_iter().enumerate() {
            let path = format!("PmtInf[{}]", index + 1);
            let mut tally = Tally::new();
            let parsed = self.payment(payment, &path, &mut tally);
            self.check_totals(payment, &path, &tally);
            whole.count += tally.count;
            whole.sum = whole.sum.zip(tally.sum).and_then(|(a, b)| a.checked_add(b));
            payments.extend(parsed);
        }
        self.check_totals(header, "GrpHdr", &whole);
        Some(PaymentFile {
            msg_id,
            message_name: self.version.message_name().to_owned(),
            transactions,
            payments,
        })
    }

    /// `NbOfTxs` and `CtrlSum` of a group header or a payment, when given.
    fn check_totals(&mut self, node: Node, path: &str, tally: &Tally) {
        if let Some(declared) = child_text(node, "NbOfTxs")
            && declared.parse::<usize>().ok() != Some(tally.count)
        {
            self.fail(
                format!("{path}/NbOfTxs"),
                format!("is {declared} but there are {} transactions", tally.count),
            );
        }
        if let Some(declared) = child_text(node, "CtrlSum") {
            let declared_value = parse_decimal(declared);
            if declared_value.is_none() || declared_value != tally.sum {
                self.fail(
                    format!("{path}/CtrlSum"),
                    match tally.sum {
                        Some(sum) => format!("is {declared} but the amounts sum to {}", sum.normalize()),
                        None => format!("is {declared} but the amounts could not be summed"),
                    },
                );
            }
        }
    }

    fn payment(&mut self, payment: Node, path: &str, tally: &mut Tally) -> Option<FilePayment> {
        let id = child_text(payment, "PmtInfId")?.to_owned();
        let organization_name = self.name(descend(payment, &["Dbtr", "Nm"]), &format!("{path}/Dbtr/Nm"));
        let organization_iban = self.iban(descend(payment, &["DbtrAcct", "Id"]), &format!("{path}/DbtrAcct/Id"));
        let organization_bic = self.agent_bic(child(payment, "DbtrAgt"), &format!("{path}/DbtrAgt"));
        let mut transfers = Vec::new();
        let mut all_ok = true;
        for (index, transaction) in children(payment, "CdtTrfTxInf").enumerate() {
            let path = format!("{path}/CdtTrfTxInf[{}]", index + 1);
            let (transfer, amount) = self.transaction(transaction, &path);
            tally.add(amount);
            match transfer {
                Some(transfer) if organization_iban.as_ref() == Some(&transfer.counterparty_iban) => {
                    self.fail(
                        format!("{path}/CdtrAcct/Id/IBAN"),
                        "must not be the debtor's own IBAN (DbtrAcct/Id/IBAN)",
                    );
                    all_ok = false;
                }
                Some(transfer) => transfers.push(transfer),
                None => all_ok = false,
            }
        }
        let request = BulkTransferRequest {
            organization_name: organization_name?,
            organization_bic: organization_bic?,
            organization_iban: organization_iban?,
            credit_transfers: all_ok.then_some(transfers)?,
        };
        Some(FilePayment { id, request })
    }

    /// One transaction, and its amount as written (for the control sums,
    /// even when the transaction is refused for another field).
    fn transaction(&mut self, transaction: Node, path: &str) -> (Option<CreditTransferRequest>, Option<Decimal>) {
        let end_to_end_id = descend(transaction, &["PmtId", "EndToEndId"])
            .and_then(|n| n.text())
            .map(str::trim)
            .unwrap_or("");
        let end_to_end_id = if end_to_end_id.is_empty() || end_to_end_id.chars().count() > END_TO_END_ID_CHARS_MAX {
            self.fail(
                format!("{path}/PmtId/EndToEndId"),
                format!("must be 1 to {END_TO_END_ID_CHARS_MAX} characters"),
            );
            None
        } else {
            Some(end_to_end_id.to_owned())
        };
        let (amount, written) = self.amount(transaction, path);
        let counterparty_name = self.name(descend(transaction, &["Cdtr", "Nm"]), &format!("{path}/Cdtr/Nm"));
        let counterparty_iban = self.iban(
            descend(transaction, &["CdtrAcct", "Id"]),
            &format!("{path}/CdtrAcct/Id"),
        );
        let counterparty_bic = self.agent_bic(child(transaction, "CdtrAgt"), &format!("{path}/CdtrAgt"));
        let description = self.remittance(child(transaction, "RmtInf"), &format!("{path}/RmtInf"));
        let transfer = (|| {
            let (amount_cents, currency) = amount?;
            Some(CreditTransferRequest {
                amount_cents,
                currency,
                counterparty_name: counterparty_name?,
                counterparty_bic: counterparty_bic?,
                counterparty_iban: counterparty_iban?,
                description: description?,
                end_to_end_id: Some(end_to_end_id?),
            })
        })();
        (transfer, written)
    }

    /// `Amt/InstdAmt` in minor units of its `Ccy`, and its written value.
    fn amount(&mut self, transaction: Node, path: &str) -> (Option<(i64, Currency)>, Option<Decimal>) {
        let Some(instructed) = descend(transaction, &["Amt", "InstdAmt"]) else {
            self.fail(
                format!("{path}/Amt"),
                "must be an instructed amount (InstdAmt); equivalent amounts (EqvtAmt) are not accepted",
            );
            return (None, None);
        };
        let path = format!("{path}/Amt/InstdAmt");
        let text = instructed.text().unwrap_or("").trim();
        let written = parse_decimal(text);
        let currency = match Currency::parse(instructed.attribute("Ccy").unwrap_or("")) {
            Ok(currency) => Some(currency),
            Err(error) => {
                self.fail(format!("{path}/@Ccy"), error.to_string());
                None
            }
        };
        // The XSD allowed the lexical form; the ledger's rules (positive,
        // the currency's digits at most, a sane size) apply to the value.
        let cents = Amount::parse(&plain_decimal(text))
            .and_then(|amount| match currency {
                Some(currency) => amount.to_minor(currency).map(Some),
                None => Ok(None),
            })
            .map_err(|error| self.fail(path.clone(), error.to_string()))
            .ok()
            .flatten();
        (cents.zip(currency), written)
    }

    fn name(&mut self, node: Option<Node>, path: &str) -> Option<String> {
        let text = node.and_then(|n| n.text()).map(str::trim).unwrap_or("");
        if text.is_empty() {
            self.fail(path, "is required");
            return None;
        }
        if text.chars().count() > NAME_CHARS_MAX {
            self.fail(path, format!("must be at most {NAME_CHARS_MAX} characters"));
            return None;
        }
        Some(text.to_owned())
    }

    /// An account's IBAN (`…/Id/IBAN`; `Othr` identifications are not
    /// accounts of this ledger).
    fn iban(&mut self, id: Option<Node>, path: &str) -> Option<Iban> {
        let Some(node) = id.and_then(|id| child(id, "IBAN")) else {
            self.fail(path, "must identify the account by IBAN");
            return None;
        };
        Iban::parse(node.text().unwrap_or("").trim(), self.check)
            .map_err(|error| self.fail(format!("{path}/IBAN"), error.to_string()))
            .ok()
    }

    /// An agent's BIC: `Some(None)` when absent or `NOTPROVIDED`.
    fn agent_bic(&mut self, agent: Option<Node>, path: &str) -> Option<Option<Bic>> {
        let element = self.version.bic_element();
        let Some(node) = agent.and_then(|a| descend(a, &["FinInstnId", element])) else {
            return Some(None);
        };
        let text = node.text().unwrap_or("").trim();
        if text == "NOTPROVIDED" {
            return Some(None);
        }
        Bic::parse(text)
            .map(Some)
            .map_err(|error| self.fail(format!("{path}/FinInstnId/{element}"), error.to_string()))
            .ok()
    }

    /// `RmtInf/Ustrd` as the description (several are joined by a space).
    fn remittance(&mut self, remittance: Option<Node>, path: &str) -> Option<String> {
        let Some(remittance) = remittance else {
            return Some(String::new());
        };
        let text = children(remittance, "Ustrd")
            .filter_map(|n| n.text())
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ");
        if text.chars().count() > TEXT_CHARS_MAX {
            self.fail(
                format!("{path}/Ustrd"),
                format!("must be at most {TEXT_CHARS_MAX} characters in all"),
            );
            return None;
        }
        if text.chars().any(char::is_control) {
            self.fail(format!("{path}/Ustrd"), "must not contain control characters");
            return None;
        }
        Some(text)
    }
}

/// An xs:decimal's value (the XSD has checked its form).
fn parse_decimal(text: &str) -> Option<Decimal> {
    Decimal::from_str(&plain_decimal(text)).ok()
}

/// An xs:decimal in the one spelling [`Amount::parse`] reads: no `+`, a
/// digit before the point, none after a trailing point (`+.5` is `0.5`).
fn plain_decimal(text: &str) -> String {
    let text = text.strip_prefix('+').unwrap_or(text);
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text),
    };
    let digits = digits.strip_suffix('.').unwrap_or(digits);
    if digits.starts_with('.') {
        format!("{sign}0{digits}")
    } else {
        format!("{sign}{digits}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { transactions_max: 100 };

    fn document(version: Version, transactions: &str, ctrl_sum: &str) -> String {
        let bic = version.bic_element();
        let n = transactions.matches("<CdtTrfTxInf>").count();
        let (date_open, date_close) = match version {
            Version::V03 => ("", ""),
            Version::V09 => ("<Dt>", "</Dt>"),
        };
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="{ns}">
  <CstmrCdtTrfInitn>
    <GrpHdr><MsgId>MSG-1</MsgId><CreDtTm>2026-12-01T09:00:00</CreDtTm><NbOfTxs>{n}</NbOfTxs>{ctrl_sum}<InitgPty><Nm>ACME Corp</Nm></InitgPty></GrpHdr>
    <PmtInf>
      <PmtInfId>PAY-1</PmtInfId><PmtMtd>TRF</PmtMtd><ReqdExctnDt>{date_open}2026-12-01{date_close}</ReqdExctnDt>
      <Dbtr><Nm>ACME Corp</Nm></Dbtr>
      <DbtrAcct><Id><IBAN>DE89370400440532013000</IBAN></Id></DbtrAcct>
      <DbtrAgt><FinInstnId><{bic}>COBADEFFXXX</{bic}></FinInstnId></DbtrAgt>
      {transactions}
    </PmtInf>
  </CstmrCdtTrfInitn>
</Document>"#,
            ns = version.namespace(),
        )
    }

    fn transaction(version: Version, e2e: &str, amount: &str, iban: &str) -> String {
        let bic = version.bic_element();
        format!(
            r#"<CdtTrfTxInf><PmtId><EndToEndId>{e2e}</EndToEndId></PmtId><Amt><InstdAmt Ccy="EUR">{amount}</InstdAmt></Amt>
<CdtrAgt><FinInstnId><{bic}>NWBKGB2L</{bic}></FinInstnId></CdtrAgt><Cdtr><Nm>Jane Doe</Nm></Cdtr>
<CdtrAcct><Id><IBAN>{iban}</IBAN></Id></CdtrAcct><RmtInf><Ustrd>Salary 2026-11</Ustrd></RmtInf></CdtTrfTxInf>"#
        )
    }

    fn fields(result: Result<PaymentFile, Vec<FieldError>>) -> Vec<String> {
        result.unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn both_versions_map_into_the_json_apis_bulk() {
        for version in [Version::V03, Version::V09] {
            let txs = [
                transaction(version, "E2E-1", "1500.00", "GB82WEST12345698765432"),
                transaction(version, "E2E-2", "0.29000", "FR1420041010050500013M02606"),
            ]
            .concat();
            let xml = document(version, &txs, "<CtrlSum>1500.29</CtrlSum>");
            let file = parse(xml.as_bytes(), IbanCheck::Full, LIMITS).unwrap();
            assert_eq!(file.msg_id, "MSG-1");
            assert_eq!(file.message_name, version.message_name());
            assert_eq!(file.payments.len(), 1);
            let payment = &file.payments[0];
            assert_eq!(payment.id, "PAY-1");
            assert_eq!(payment.request.organization_name, "ACME Corp");
            assert_eq!(
                payment.request.organization_bic.as_ref().unwrap().to_string(),
                "COBADEFFXXX"
            );
            let amounts: Vec<i64> = payment
                .request
                .credit_transfers
                .iter()
                .map(|t| t.amount_cents)
                .collect();
            assert_eq!(amounts, vec![150_000, 29]);
            let first = &payment.request.credit_transfers[0];
            assert_eq!(first.end_to_end_id.as_deref(), Some("E2E-1"));
            assert_eq!(first.description, "Salary 2026-11");
            assert_eq!(first.counterparty_bic.as_ref().unwrap().to_string(), "NWBKGB2L");
        }
    }

    #[test]
    fn counts_and_control_sums_must_match() {
        let v = Version::V09;
        let txs = transaction(v, "E2E-1", "10.00", "GB82WEST12345698765432");
        let xml = document(v, &txs, "<CtrlSum>10.01</CtrlSum>");
        assert_eq!(
            fields(parse(xml.as_bytes(), IbanCheck::Full, LIMITS)),
            vec!["GrpHdr/CtrlSum"]
        );
        let xml = document(v, &txs, "").replace("<NbOfTxs>1</NbOfTxs>", "<NbOfTxs>2</NbOfTxs>");
        assert_eq!(
            fields(parse(xml.as_bytes(), IbanCheck::Full, LIMITS)),
            vec!["GrpHdr/NbOfTxs"]
        );
        // Trailing zeros are the same value.
        let xml = document(v, &txs, "<CtrlSum>10.000</CtrlSum>");
        assert!(parse(xml.as_bytes(), IbanCheck::Full, LIMITS).is_ok());
    }

    #[test]
    fn the_ledgers_rules_name_each_element() {
        let v = Version::V09;
        let txs = [
            transaction(v, "E2E-1", "10.00", "GB82WEST12345698765432"),
            transaction(v, "E2E-2", "10.001", "GB82WEST12345698765432"),
            transaction(v, "E2E-3", "0", "GB00WEST12345698765432"),
            transaction(v, "E2E-4", "5", "DE89370400440532013000"),
        ]
        .concat();
        let xml = document(v, &txs, "");
        assert_eq!(
            fields(parse(xml.as_bytes(), IbanCheck::Full, LIMITS)),
            vec![
                "PmtInf[1]/CdtTrfTxInf[2]/Amt/InstdAmt",
                "PmtInf[1]/CdtTrfTxInf[3]/Amt/InstdAmt",
                "PmtInf[1]/CdtTrfTxInf[3]/CdtrAcct/Id/IBAN",
                "PmtInf[1]/CdtTrfTxInf[4]/CdtrAcct/Id/IBAN",
            ]
        );
    }

    #[test]
    fn the_xsd_is_enforced_with_paths() {
        let v = Version::V03;
        let txs = transaction(v, "E2E-1", "10.00", "GB82WEST12345698765432").replace(
            "<Cdtr><Nm>Jane Doe</Nm></Cdtr>",
            "<Cdtr><Nm>Jane Doe</Nm></Cdtr><Bogus/>",
        );
        let xml = document(v, &txs, "");
        assert_eq!(
            fields(parse(xml.as_bytes(), IbanCheck::Full, LIMITS)),
            vec!["PmtInf[1]/CdtTrfTxInf[1]/Bogus"]
        );
        let xml = document(v, &transaction(v, "E2E-1", "1.1234567", "GB82WEST12345698765432"), "");
        assert_eq!(
            fields(parse(xml.as_bytes(), IbanCheck::Full, LIMITS)),
            vec!["PmtInf[1]/CdtTrfTxInf[1]/Amt/InstdAmt"]
        );
        let other = document(v, "", "").replace("pain.001.001.03", "pain.001.001.02");
        assert_eq!(
            fields(parse(other.as_bytes(), IbanCheck::Full, LIMITS)),
            vec!["Document"]
        );
    }

    #[test]
    fn an_absent_or_not_provided_bic_is_none() {
        let v = Version::V09;
        let txs = transaction(v, "E2E-1", "10.00", "GB82WEST12345698765432").replace(
            "<CdtrAgt><FinInstnId><BICFI>NWBKGB2L</BICFI></FinInstnId></CdtrAgt>",
            "",
        );
        let xml = document(v, &txs, "").replace(
            "<DbtrAgt><FinInstnId><BICFI>COBADEFFXXX</BICFI></FinInstnId></DbtrAgt>",
            "<DbtrAgt><FinInstnId><Othr><Id>NOTPROVIDED</Id></Othr></FinInstnId></DbtrAgt>",
        );
        let file = parse(xml.as_bytes(), IbanCheck::Full, LIMITS).unwrap();
        assert_eq!(file.payments[0].request.organization_bic, None);
        assert_eq!(file.payments[0].request.credit_transfers[0].counterparty_bic, None);
    }

    #[test]
    fn too_many_transactions_are_refused() {
        let v = Version::V09;
        let txs = transaction(v, "E2E-1", "1", "GB82WEST12345698765432").repeat(3);
        let xml = document(v, &txs, "");
        let limits = Limits { transactions_max: 2 };
        assert_eq!(
            fields(parse(xml.as_bytes(), IbanCheck::Full, limits)),
            vec!["GrpHdr/NbOfTxs"]
        );
    }

    #[test]
    fn decimals_are_read_in_every_xsd_spelling() {
        assert_eq!(plain_decimal("+.5"), "0.5");
        assert_eq!(plain_decimal("10."), "10");
        assert_eq!(parse_decimal("0010.500"), Some(Decimal::new(105, 1)));
    }
}
