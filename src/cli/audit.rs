//! `ledger audit` (exit 0 when the projections agree with the log, 1 on
//! any difference) and `ledger replay` (an account's history with its
//! running balance).

use std::process::ExitCode;

use sqlx::PgPool;

pub(super) async fn audit(pool: &PgPool, account: Option<&str>) -> anyhow::Result<ExitCode> {
    use crate::domain::{Iban, IbanCheck};
    let account_id_filter = match account {
        Some(text) => {
            let iban = Iban::parse(text, IbanCheck::Structure).map_err(|e| anyhow::anyhow!("--account {e}"))?;
            Some(crate::app::account_id_for(&iban))
        }
        None => None,
    };
    let accounts = match account_id_filter {
        Some(id) => vec![id],
        None => crate::audit::all_accounts(pool).await?,
    };
    let bar = super::projections::progress_bar(accounts.len() as u64, "accounts");
    let (mut events, mut differences, mut broken_chains) = (0_usize, Vec::new(), 0_usize);
    for account_id in &accounts {
        let audit = crate::audit::audit_stream(pool, *account_id).await?;
        events += audit.events;
        broken_chains += usize::from(!audit.chain_valid);
        differences.extend(audit.differences);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if account.is_some() && events == 0 && differences.is_empty() {
        eprintln!("ledger: no account with IBAN {}", account.unwrap_or_default());
        return Ok(ExitCode::from(2));
    }
    // Double entry: every leg has its debit, every passed on-us transfer its
    // leg, and per currency the books sum to zero.
    differences.extend(crate::audit::double_entry::differences(pool, account_id_filter).await?);
    let mut unbalanced = Vec::new();
    if account.is_none() {
        for currency in crate::app::queries::trial_balance(pool).await?.currencies {
            if currency.sum_cents != 0 {
                unbalanced.push(currency);
            }
        }
    }
    for currency in &unbalanced {
        println!(
            "DRIFT trial balance {}: customers {} + settlement {} + clearing {} + in flight {} = {}, not 0",
            currency.currency,
            currency.customers_cents,
            currency.settlement_cents,
            currency.clearing_cents,
            currency.in_flight_cents,
            currency.sum_cents
        );
    }
    for difference in &differences {
        println!(
            "DRIFT account {} iban {} position {}: {}",
            difference.account_id,
            difference.iban.as_deref().unwrap_or("?"),
            difference.position.map_or("-".to_owned(), |p| p.to_string()),
            difference.what
        );
    }
    println!(
        "audited {} accounts, {events} events: {} differences, {broken_chains} broken hash chains",
        accounts.len(),
        differences.len()
    );
    Ok(if differences.is_empty() && unbalanced.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(super) async fn replay(
    pool: &PgPool,
    account: &str,
    until: Option<&str>,
    position: Option<i64>,
) -> anyhow::Result<ExitCode> {
    use crate::domain::{Event, Iban, IbanCheck, format_amount};
    let iban = Iban::parse(account, IbanCheck::Structure).map_err(|e| anyhow::anyhow!("--account {e}"))?;
    let until = until
        .map(|text| chrono::DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&chrono::Utc)))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--until must be an RFC 3339 time: {e}"))?;
    let account_id = crate::app::account_id_for(&iban);
    let events = crate::event_store::read_stream(pool, account_id, position, until).await?;
    if events.is_empty() {
        eprintln!("ledger: no events for IBAN {iban} up to that point");
        return Ok(ExitCode::from(1));
    }
    println!(
        "{:>10} {:>7}  {:<27} {:<21} {:>18} {:>18}  detail",
        "position", "version", "recorded_at", "event", "amount", "balance"
    );
    let mut state = None;
    for stored in &events {
        let event = stored.to_event()?;
        let next = crate::domain::apply(state.take(), &event)
            .map_err(|e| anyhow::anyhow!("the stream does not replay at position {}: {e}", stored.position))?;
        let currency = next.currency;
        let (amount, detail) = match &event {
            Event::AccountOpened {
                organization_name, bic, ..
            } => (String::new(), format!("{organization_name}, {bic}")),
            Event::FundsDeposited {
                amount_cents,
                reference,
                ..
            } => (
                format_amount(*amount_cents, currency),
                reference.clone().unwrap_or_default(),
            ),
            Event::BulkTransferBooked {
                bulk_id,
                total_cents,
                transfers,
                ..
            } => (
                format_amount(-total_cents, currency),
                format!("bulk {bulk_id}, {} transfers", transfers.len()),
            ),
            Event::BulkTransferRejected {
                bulk_id,
                requested_cents,
                reason,
                ..
            } => (
                String::new(),
                format!(
                    "bulk {bulk_id} refused ({reason}): {} requested",
                    format_amount(*requested_cents, currency)
                ),
            ),
            Event::TransferReceived {
                transfer_id,
                payer_name,
                payer_iban,
                amount_cents,
                ..
            } => (
                format_amount(*amount_cents, currency),
                format!("transfer {transfer_id} from {payer_name}, {payer_iban}"),
            ),
            Event::TransferReturned {
                transfer_id,
                payee_iban,
                amount_cents,
                reason,
                ..
            } => (
                format_amount(*amount_cents, currency),
                format!("transfer {transfer_id} to {payee_iban} returned ({reason})"),
            ),
        };
        println!(
            "{:>10} {:>7}  {:<27} {:<21} {:>18} {:>18}  {detail}",
            stored.position,
            stored.version,
            stored.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            stored.event_type,
            amount,
            format_amount(next.balance_cents, currency)
        );
        state = Some(next);
    }
    Ok(ExitCode::SUCCESS)
}
