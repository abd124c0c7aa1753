//! `ledger accounts open|deposit`: commands through the same application
//! layer as the APIs, acting as the operator.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use crate::app::auth::Principal;
use crate::app::idempotency::IdempotencyKey;
use crate::app::requests::{parse_deposit, parse_open_account};
use crate::app::{AppError, CommandContext, Ledger, Outcome};
use crate::problem::Problem;

#[derive(Debug, Subcommand)]
pub(super) enum AccountsCommand {
    /// Open an account; prints it as JSON.
    Open {
        #[arg(long)]
        organization_name: String,
        #[arg(long)]
        iban: String,
        #[arg(long)]
        bic: String,
        #[arg(long, default_value = "EUR")]
        currency: String,
    },
    /// Credit an account; prints the new balance as JSON.
    Deposit {
        #[arg(long)]
        iban: String,
        /// Decimal amount, e.g. 100000.00
        #[arg(long)]
        amount: String,
        #[arg(long)]
        currency: Option<String>,
        #[arg(long)]
        reference: Option<String>,
        /// Makes a retried command apply once.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

pub(super) async fn run(ledger: &Ledger, command: AccountsCommand) -> anyhow::Result<ExitCode> {
    let mut context = CommandContext {
        principal: Principal::operator(),
        request_id: format!("cli-{}", uuid::Uuid::now_v7()),
        idempotency_key: None,
    };
    let result: Result<(String, bool), AppError> = match command {
        AccountsCommand::Open {
            organization_name,
            iban,
            bic,
            currency,
        } => {
            let body = json!({"organization_name": organization_name, "iban": iban, "bic": bic, "currency": currency});
            match parse_open_account(&body, ledger.settings().iban_check) {
                Ok(request) => ledger.open_account(&context, request).await.map(printed),
                Err(errors) => Err(Problem::validation(errors).into()),
            }
        }
        AccountsCommand::Deposit {
            iban,
            amount,
            currency,
            reference,
            idempotency_key,
        } => {
            let body = json!({"amount": amount, "currency": currency, "reference": reference});
            async {
                let iban = ledger.lookup_iban(&iban, "iban")?;
                if let Some(key) = idempotency_key {
                    let key = IdempotencyKey::parse(key.as_bytes(), context.principal.idempotency_scope())?;
                    context.idempotency_key = Some(key);
                }
                let request = parse_deposit(&body).map_err(Problem::validation)?;
                ledger.deposit(&context, &iban, request).await.map(printed)
            }
            .await
        }
    };
    match result {
        Ok((document, accepted)) => {
            println!("{document}");
            Ok(if accepted { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Err(AppError::Client(problem)) => {
            println!("{}", problem.to_json());
            let fields: Vec<String> = problem
                .errors
                .iter()
                .map(|e| format!("{} {}", e.field, e.message))
                .collect();
            eprintln!(
                "ledger: {}{}",
                problem.detail,
                if fields.len() > 1 {
                    format!(": {}", fields.join("; "))
                } else {
                    String::new()
                }
            );
            Ok(ExitCode::from(1))
        }
        Err(AppError::OutcomeUnknown(error)) => Err(error.context(
            "the command may have been applied: run it again with the same --idempotency-key to learn its outcome",
        )),
        Err(AppError::Internal(error) | AppError::Unavailable(error)) => Err(error),
    }
}

/// What the command prints: its view, or its recorded refusal, as JSON;
/// and whether it was accepted.
fn printed<V: serde::Serialize>(outcome: Outcome<V>) -> (String, bool) {
    match outcome.result {
        // Views are plain structs of strings and numbers.
        Ok(view) => (serde_json::to_string(&view).expect("view serialises"), true),
        Err(problem) => (problem.to_json(), false),
    }
}
