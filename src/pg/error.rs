//! What can go wrong in this module: [`PgError`], and `io_err`, which says what
//! we were doing when an `io::Error` happened.

use std::io;
use std::path::PathBuf;

/// Why a cluster could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "no PostgreSQL server binaries found (initdb, pg_ctl): install the PostgreSQL server (e.g. apt-get install postgresql) or set DATABASE_URL"
    )]
    NoBinaries,
    #[error(
        "running as root, but there is no `postgres` OS user to run the PostgreSQL server as (initdb and postgres refuse to run as root): create one (e.g. useradd --system postgres) or set DATABASE_URL"
    )]
    NoServerUser,
    // The underlying error is part of the message (rather than a `#[source]`) so
    // that printing the error with `{}` alone says what went wrong.
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
    #[error("{program} failed ({status}){output}")]
    Command {
        program: String,
        status: String,
        output: String,
    },
    #[error("the PostgreSQL server in {data} did not start ({status}){output}\n{log_tail}")]
    Start {
        data: PathBuf,
        status: String,
        output: String,
        log_tail: String,
    },
    #[error("{0}")]
    Unusable(String),
    #[error("could not create the database {database:?} in the PostgreSQL cluster: {error}")]
    Database { database: String, error: sqlx::Error },
}

/// Wraps an `io::Error` with what we were doing.
pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> PgError {
    let context = context.into();
    move |error| PgError::Io { context, error }
}
