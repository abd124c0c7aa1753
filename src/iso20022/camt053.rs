//! camt.053.001.08 (bank to customer statement), rendered from a
//! [`StatementView`]: the same values as the statement's JSON form.
//!
//! Mapping: `Acct` the account (IBAN, currency, owner, servicer's BIC);
//! `Bal` the opening (`OPBD`, at the start of `from`) and closing (`CLBD`,
//! at the end of `to`) booked balances; `TxsSummry` the counts and sums;
//! one `Ntry` per history item, `AcctSvcrRef` its `transaction_id` (as 32
//! hex digits: `Max35Text` has no room for the hyphens), with the
//! end-to-end id, the counterparty and the remittance text in
//! `NtryDtls/TxDtls`.

use chrono::SecondsFormat;

use super::xml::{Element, document};
use crate::app::statements::StatementView;
use crate::app::views::TransactionView;

pub const NAMESPACE: &str = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08";

fn amount(currency: &str, cents: i64) -> (Element, Element) {
    let text = crate::app::views::amount_text(cents.abs(), currency);
    (
        Element::text("Amt", text).attribute("Ccy", currency),
        Element::text("CdtDbtInd", if cents < 0 { "DBIT" } else { "CRDT" }),
    )
}

fn balance(code: &'static str, statement: &StatementView, cents: i64, day: chrono::NaiveDate) -> Element {
    let (amt, indicator) = amount(&statement.currency, cents);
    Element::new("Bal")
        .child(Element::path(&["Tp", "CdOrPrtry"], Element::text("Cd", code)))
        .child(amt)
        .child(indicator)
        .child(Element::path(&["Dt"], Element::text("Dt", day.to_string())))
}

/// The bank transaction code of a history item: domain, family, sub-family
/// (ISO 20022 external code list).
fn transaction_code(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "transfer" => ("ICDT", "ESCT"),
        "transfer_received" => ("RCDT", "ESCT"),
        "transfer_returned" => ("ICDT", "RRTN"),
        _ => ("CNTR", "CDPT"),
    }
}

fn entry(statement: &StatementView, item: &TransactionView) -> Element {
    let (amt, indicator) = amount(&statement.currency, item.amount_cents);
    let booked = item.recorded_at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let (family, sub_family) = transaction_code(&item.kind);
    let code = Element::new("BkTxCd").child(
        Element::new("Domn").child(Element::text("Cd", "PMNT")).child(
            Element::new("Fmly")
                .child(Element::text("Cd", family))
                .child(Element::text("SubFmlyCd", sub_family)),
        ),
    );
    let reference = item.transaction_id.simple().to_string();
    // Who the money went to (a debit) or came from (a credit).
    let (party, account, agent) = if item.amount_cents < 0 {
        ("Cdtr", "CdtrAcct", "CdtrAgt")
    } else {
        ("Dbtr", "DbtrAcct", "DbtrAgt")
    };
    let parties = item.counterparty_name.as_ref().map(|name| {
        Element::new("RltdPties")
            .child(Element::path(&[party, "Pty"], Element::text("Nm", truncate(name, 140))))
            .child_opt(
                item.counterparty_iban
                    .as_ref()
                    .map(|iban| Element::path(&[account, "Id"], Element::text("IBAN", iban.clone()))),
            )
    });
    let agents = item
        .counterparty_bic
        .as_ref()
        .map(|bic| Element::path(&["RltdAgts", agent, "FinInstnId"], Element::text("BICFI", bic.clone())));
    let remittance = item
        .description
        .as_ref()
        .filter(|d| !d.is_empty())
        .map(|d| Element::path(&["RmtInf"], Element::text("Ustrd", truncate(d, 140))));
    let (tx_amt, tx_indicator) = amount(&statement.currency, item.amount_cents);
    let details = Element::new("TxDtls")
        .child(
            Element::new("Refs")
                .child(Element::text("AcctSvcrRef", reference.clone()))
                .child_opt(
                    item.end_to_end_id
                        .as_ref()
                        .map(|id| Element::text("EndToEndId", id.clone())),
                ),
        )
        .child(tx_amt)
        .child(tx_indicator)
        .child_opt(parties)
        .child_opt(agents)
        .child_opt(remittance);
    Element::new("Ntry")
        .child(amt)
        .child(indicator)
        .child(Element::path(&["Sts"], Element::text("Cd", "BOOK")))
        .child(Element::path(&["BookgDt"], Element::text("DtTm", booked)))
        .child(Element::path(
            &["ValDt"],
            Element::text("Dt", item.recorded_at.date_naive().to_string()),
        ))
        .child(Element::text("AcctSvcrRef", reference))
        .child(code)
        .child(Element::new("NtryDtls").child(details))
}

fn truncate(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

fn totals(statement: &StatementView) -> Element {
    let count = statement.credits.count + statement.debits.count;
    let net = statement.credits.sum_cents - statement.debits.sum_cents;
    let sum = |cents: i64| crate::app::views::amount_text(cents, &statement.currency);
    let (net_amount, net_indicator) = amount(&statement.currency, net);
    Element::new("TxsSummry")
        .child(
            Element::new("TtlNtries")
                .child(Element::text("NbOfNtries", count.to_string()))
                .child(Element::text(
                    "Sum",
                    sum(statement.credits.sum_cents + statement.debits.sum_cents),
                ))
                .child(
                    Element::new("TtlNetNtry")
                        .child(Element::text("Amt", net_amount_text(&net_amount)))
                        .child(net_indicator),
                ),
        )
        .child(
            Element::new("TtlCdtNtries")
                .child(Element::text("NbOfNtries", statement.credits.count.to_string()))
                .child(Element::text("Sum", sum(statement.credits.sum_cents))),
        )
        .child(
            Element::new("TtlDbtNtries")
                .child(Element::text("NbOfNtries", statement.debits.count.to_string()))
                .child(Element::text("Sum", sum(statement.debits.sum_cents))),
        )
}

/// `TtlNetNtry/Amt` is a bare decimal (no `Ccy`): the amount's text.
fn net_amount_text(amount: &Element) -> String {
    amount.text_content().unwrap_or_default().to_owned()
}

pub fn xml(statement: &StatementView) -> String {
    let created = statement.created_at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let id = format!("{}-{}", statement.from.format("%Y%m%d"), statement.to.format("%Y%m%d"));
    let period = Element::new("FrToDt")
        .child(Element::text(
            "FrDtTm",
            statement
                .from
                .and_time(chrono::NaiveTime::MIN)
                .and_utc()
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        ))
        .child(Element::text(
            "ToDtTm",
            statement
                .to
                .and_hms_opt(23, 59, 59)
                .map(|t| t.and_utc().to_rfc3339_opts(SecondsFormat::Secs, true))
                .unwrap_or_default(),
        ));
    let account = Element::new("Acct")
        .child(Element::path(&["Id"], Element::text("IBAN", statement.iban.clone())))
        .child(Element::text("Ccy", statement.currency.clone()))
        .child(Element::path(
            &["Ownr"],
            Element::text("Nm", truncate(&statement.organization_name, 140)),
        ))
        .child(Element::path(
            &["Svcr", "FinInstnId"],
            Element::text("BICFI", statement.bic.clone()),
        ));
    let stmt = Element::new("Stmt")
        .child(Element::text("Id", id.clone()))
        .child(Element::text("CreDtTm", created.clone()))
        .child(period)
        .child(account)
        .child(balance(
            "OPBD",
            statement,
            statement.opening_balance_cents,
            statement.from,
        ))
        .child(balance(
            "CLBD",
            statement,
            statement.closing_balance_cents,
            statement.to,
        ))
        .child(totals(statement))
        .children(statement.entries.iter().map(|item| entry(statement, item)));
    let message = Element::new("BkToCstmrStmt")
        .child(
            Element::new("GrpHdr")
                .child(Element::text("MsgId", format!("STMT-{id}-{}", statement.position)))
                .child(Element::text("CreDtTm", created)),
        )
        .child(stmt);
    document(NAMESPACE, message)
}
