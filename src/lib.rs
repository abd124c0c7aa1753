//! ledger — an event-sourced transfer ledger for a business bank.
//!
//! A tour of the crate, from the inside out:
//! - [`domain`]: the rules of money, pure (no IO): exact amounts, IBAN/BIC,
//!   the account aggregate's `decide` and `apply`.
//! - [`event_store`]: the append-only `events` table; an append is one
//!   statement that also applies the inline projections and records the
//!   idempotency key.
//! - [`projections`]: installs the read models defined in `projections/`,
//!   rebuilds them from the log, reports their status.
//! - [`audit`]: replays streams, verifies hash chains, compares the domain
//!   fold with the projections.
//! - [`app`]: command handlers (load → decide → append, retried on
//!   conflict) and queries.
//! - [`http`]: the axum API; thin, maps `app` results to responses and
//!   errors to RFC 9457 problems.
//! - [`grpc`]: the tonic API beside it (`proto/`), as thin, over the same
//!   `app` calls.
//! - [`pg`]: the project-local PostgreSQL cluster used when no
//!   `DATABASE_URL` is given, and by the tests.
//! - [`replicas`]: the streaming standbys that serve queries, and their
//!   health.
//! - [`posting`]: the posting process, which credits on-us transfers to
//!   their payees (double entry) from the feed.
//! - [`relay`]: the feed published to NATS JetStream, exactly once.
//! - [`server`]: the whole server (both front ends and every background
//!   task), started by `ledger serve`, the tests and the benchmarks.
//! - [`cli`]: the `ledger` binary's subcommands.

pub mod app;
pub mod audit;
pub mod canonical_json;
pub mod cli;
pub mod db;
pub mod domain;
pub mod event_store;
pub mod grpc;
pub mod http;
pub mod iso20022;
pub mod observability;
pub mod pg;
pub mod posting;
pub mod problem;
pub mod projections;
pub mod relay;
pub mod replicas;
pub mod server;
