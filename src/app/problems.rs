//! How the application fails: [`AppError`] (the client's mistake, or one of
//! three operational failures that are never confused), and the problems
//! the domain's refusals become.

use crate::domain::{Iban, Refusal};
use crate::problem::{FieldError, Problem, ProblemType};

/// A 4xx the client can act on, or an operational failure (5xx) that is
/// logged and never shown. The two never share a variant.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{}: {}", .0.kind.title(), .0.detail)]
    Client(Problem),
    /// Nothing was written: the database was out of reach or overloaded
    /// before the command was sent, or cancelled the statement before it
    /// committed. Retrying is safe (503 `/problems/unavailable`).
    #[error("unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// The connection broke while a command's commit was in flight: it may
    /// have been applied. Only a retry with the same idempotency key is
    /// safe, and the server never makes one itself (503
    /// `/problems/outcome-unknown`).
    #[error("outcome unknown: {0:#}")]
    OutcomeUnknown(anyhow::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    /// What the client is told: the problem itself, or for an operational
    /// failure a problem that says what to do and leaks nothing.
    pub fn problem(&self) -> Problem {
        match self {
            AppError::Client(problem) => problem.clone(),
            AppError::Unavailable(_) => Problem::new(
                ProblemType::Unavailable,
                "the database is unavailable or overloaded; nothing was changed, retry later",
            ),
            AppError::OutcomeUnknown(_) => Problem::new(
                ProblemType::OutcomeUnknown,
                "the connection to the database broke while the command was being committed, so it may have \
                 been applied; retry it with the same Idempotency-Key, which replays its outcome if it was \
                 applied and applies it otherwise (without a key, check the account before retrying)",
            ),
            AppError::Internal(_) => Problem::new(
                ProblemType::Internal,
                "an unexpected error occurred; it has been logged with this request's x-request-id",
            ),
        }
    }

    /// The same failure again, for each caller of a batch that shared it.
    pub(crate) fn share(&self) -> AppError {
        match self {
            AppError::Client(problem) => AppError::Client(problem.clone()),
            AppError::Unavailable(error) => AppError::Unavailable(anyhow::anyhow!("{error:#}")),
            AppError::OutcomeUnknown(error) => AppError::OutcomeUnknown(anyhow::anyhow!("{error:#}")),
            AppError::Internal(error) => AppError::Internal(anyhow::anyhow!("{error:#}")),
        }
    }
}

/// Whether a database error means "not now" (retry later) rather than a bug:
/// no connection, pool exhausted or closed, the server shutting down or not
/// yet accepting, a statement cancelled by its timeout. Meant for errors of
/// reads, and of writes that were never sent: see [`is_outcome_unknown`]
/// for a write in flight.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57014: query cancelled (statement
            // timeout); 57P01..57P03: admin/crash shutdown, cannot connect now.
            code.starts_with("08") || code == "57014" || code.starts_with("57P")
        }),
        _ => false,
    }
}

/// Whether an error that ended a write statement, once sent, leaves its
/// outcome unknown: the connection broke (I/O, protocol, a backend
/// terminated or crashed, `57P*`, `08*`), so the commit may have happened
/// with no one left to say so. An error the server reported in the
/// statement's normal flow (a constraint, a cancel by statement timeout)
/// means the statement, and so its transaction, did not commit.
pub fn is_outcome_unknown(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

impl From<Problem> for AppError {
    fn from(problem: Problem) -> AppError {
        AppError::Client(problem)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> AppError {
        if is_outcome_unknown(&error) {
            crate::db::note_connection_lost();
        }
        if is_unavailable(&error) {
            AppError::Unavailable(anyhow::Error::new(error).context("database"))
        } else {
            AppError::Internal(anyhow::Error::new(error).context("database"))
        }
    }
}

pub(crate) fn account_not_found(iban: &Iban) -> Problem {
    Problem::not_found(format!("no account with IBAN {iban}"))
}

/// The problem a domain refusal is answered with.
pub(crate) fn refusal_problem(refusal: &Refusal, iban: &Iban) -> Problem {
    match refusal {
        Refusal::AlreadyOpen => Problem::new(
            ProblemType::AccountExists,
            format!("an account with IBAN {iban} already exists"),
        ),
        Refusal::AccountNotFound => account_not_found(iban),
        Refusal::OrganizationMismatch => Problem::not_found(format!(
            "no account with IBAN {iban} for this organization name and BIC"
        )),
        Refusal::CurrencyMismatch {
            requested,
            account,
            transfer_index,
        } => {
            let field = match transfer_index {
                Some(index) => format!("credit_transfers[{index}].currency"),
                None => "currency".to_owned(),
            };
            let mut problem = Problem::new(
                ProblemType::CurrencyMismatch,
                format!("{field} is {requested} but the account holds {account}"),
            );
            problem.errors.push(FieldError::new(
                field,
                format!("must be the account's currency, {account}"),
            ));
            problem
        }
        Refusal::EmptyBulk => Problem::validation(vec![FieldError::new(
            "credit_transfers",
            "must contain at least one transfer",
        )]),
        Refusal::BalanceLimit => Problem::new(
            ProblemType::BalanceLimit,
            "the resulting balance would exceed the largest amount the ledger represents",
        ),
    }
}
