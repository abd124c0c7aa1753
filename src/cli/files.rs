//! `ledger import FILE` (a pain.001 booked through the same path as
//! `POST /v1/transfer/bulk`, its pain.002 printed) and `ledger statement`
//! (a camt.053 or its JSON), acting as the operator.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::ValueEnum;

use crate::app::auth::Principal;
use crate::app::statements::Period;
use crate::app::{AppError, CommandContext, Ledger};
use crate::iso20022::{camt053, pain001, pain002};
use crate::problem::Problem;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum Format {
    Xml,
    Json,
}

/// Exit 0 when every payment booked, 1 when some or none did, 2 when the
/// file is invalid (nothing booked) or the ledger failed.
pub(super) async fn import(ledger: &Ledger, file: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let settings = ledger.settings();
    let limits = pain001::Limits {
        transactions_max: settings.limits.transfers_per_bulk_max,
    };
    let parsed = match pain001::parse(&bytes, settings.iban_check, limits) {
        Ok(parsed) => parsed,
        Err(errors) => return Ok(refused(&Problem::validation(errors), 2)),
    };
    let context = CommandContext {
        principal: Principal::operator(),
        request_id: format!("cli-{}", uuid::Uuid::now_v7()),
        idempotency_key: None,
    };
    let outcome = match ledger.transfer_file(&context, parsed).await {
        Ok(outcome) => outcome,
        Err(AppError::Client(problem)) => return Ok(refused(&problem, 2)),
        Err(AppError::OutcomeUnknown(error)) => {
            return Err(error.context(
                "some payments may have been booked: import the same file again, which replays what was booked and books the rest",
            ));
        }
        Err(AppError::Internal(error) | AppError::Unavailable(error)) => return Err(error),
    };
    match format {
        Format::Xml => print!("{}", pain002::xml(&outcome)),
        // A plain struct of strings, numbers and ids.
        Format::Json => println!(
            "{}",
            serde_json::to_string(&pain002::json(&outcome)).expect("report serialises")
        ),
    }
    Ok(match pain002::group_status(&outcome) {
        pain002::Status::ACCP => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// Exit 0 with the statement, 1 when the ledger refuses (no such
/// account, a bad period), 2 on error.
pub(super) async fn statement(
    ledger: &Ledger,
    account: &str,
    from: &str,
    to: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let result = async {
        let iban = ledger.lookup_iban(account, "account")?;
        let period = Period::parse(Some(from), Some(to))?;
        ledger
            .statement(&crate::app::Reader::primary(), &Principal::operator(), &iban, period)
            .await
    }
    .await;
    match result {
        Ok(statement) => {
            match format {
                Format::Xml => print!("{}", camt053::xml(&statement)),
                Format::Json => println!("{}", serde_json::to_string(&statement).expect("statement serialises")),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(AppError::Client(problem)) => Ok(refused(&problem, 1)),
        Err(AppError::OutcomeUnknown(error) | AppError::Internal(error) | AppError::Unavailable(error)) => Err(error),
    }
}

/// Prints a refusal (the problem on stdout, its fields on stderr).
fn refused(problem: &Problem, code: u8) -> ExitCode {
    println!("{}", problem.to_json());
    eprintln!("ledger: {}", problem.detail);
    for error in &problem.errors {
        eprintln!("  {}: {}", error.field, error.message);
    }
    ExitCode::from(code)
}
