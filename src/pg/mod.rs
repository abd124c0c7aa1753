//! A project-local PostgreSQL cluster run with the machine's own server binaries.
//!
//! Two uses:
//!
//! * [`Cluster::ensure`]: the `ledger` binary's embedded default database when no
//!   `DATABASE_URL` is set. The cluster lives under a directory of the project
//!   (`<cwd>/.ledger` by default, see [`default_root`]), is created on first use,
//!   started when it is not running, and left running when the process exits.
//! * [`Cluster::temporary`]: a throw-away cluster for the test suite, stopped and
//!   deleted by a detached watchdog once the process that created it has exited.
//! * [`Cluster::standby_of`]: a streaming standby of a cluster, for the
//!   read-replica tests.
//!
//! Layout under the cluster's root directory:
//!
//! ```text
//! <root>/data          PGDATA; data/ledger.conf holds the settings we manage
//! <root>/run           the Unix socket directory (the server listens on nothing else)
//! <root>/postgres.log  the server log
//! <root>/lock          serialises concurrent `ensure` calls
//! ```
//!
//! `initdb` and `postgres` refuse to run as root, so when this process is root the
//! server programs run as the `postgres` OS user and the directories they write to
//! are handed to that user.

mod binaries;
mod cluster;
mod command;
mod error;
mod process;
mod quote;
mod server_user;
mod standby;
mod temporary;

pub use cluster::{Cluster, default_root};
pub use error::PgError;

#[cfg(test)]
mod tests;
