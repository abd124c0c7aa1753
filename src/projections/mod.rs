//! The projection engine. Read-model definitions live in the top-level
//! `projections/` folder, one SQL file per projection: its tables and a
//! set-based `projection_<name>_apply(events[])` function saying how each
//! event type changes them.
//!
//! - Inline projections are applied by the event store in the append's own
//!   statement: a read after a 201 sees the write.
//! - Asynchronous projections follow the commit-safe feed from a checkpoint
//!   ([`runner`]), a batch per transaction, checkpoint included.
//! - A rebuild ([`rebuild()`]) calls the very same functions over batches
//!   of the log, inside PostgreSQL, into shadow tables swapped in at the end.

mod rebuild;
pub mod runner;

pub use rebuild::{RebuildProgress, RebuildReport, rebuild};

use sqlx::PgPool;

/// How a projection is kept up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In the append's statement.
    Inline,
    /// By the runner, following the feed from a checkpoint.
    Async,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Inline => "inline",
            Mode::Async => "async",
        }
    }
}

/// A read model: its name, how it is kept, and its SQL definition.
#[derive(Debug, Clone, Copy)]
pub struct Projection {
    pub name: &'static str,
    pub mode: Mode,
    /// The tables the definition creates (swapped in by a rebuild).
    pub tables: &'static [&'static str],
    pub definition: &'static str,
    /// A projection whose freshly loaded shadow table this one's rebuild
    /// reads instead of the log, when both are rebuilt together
    /// (`projection_<name>_load_from_<that>`): it must come earlier in
    /// [`PROJECTIONS`].
    pub load_from: Option<&'static str>,
    /// How a rebuild splits this projection's load between connections.
    pub load_by: LoadBy,
}

/// How side-by-side connections share a projection's rebuild load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBy {
    /// Each takes the streams of one partition (by the stream id's last
    /// byte): `projection_<name>_load(below, partitions, part)`. For rows
    /// that depend on a stream's events together (an aggregate per account).
    Streams,
    /// Each takes a range of the events table's heap blocks:
    /// `projection_<name>_load(below, first_block, end_block)`. For rows
    /// that depend on their event alone; each connection reads only its
    /// share of the table.
    Blocks,
}

/// Every projection, in the order they are installed.
pub const PROJECTIONS: &[Projection] = &[
    Projection {
        name: "balances",
        mode: Mode::Inline,
        tables: &["balances"],
        definition: include_str!("../../projections/balances.sql"),
        load_from: None,
        load_by: LoadBy::Streams,
    },
    Projection {
        name: "transactions",
        mode: Mode::Inline,
        tables: &["transactions"],
        definition: include_str!("../../projections/transactions.sql"),
        load_from: None,
        load_by: LoadBy::Blocks,
    },
    Projection {
        name: "counterparties",
        mode: Mode::Async,
        tables: &["counterparties"],
        definition: include_str!("../../projections/counterparties.sql"),
        load_from: Some("transactions"),
        load_by: LoadBy::Streams,
    },
];

/// Any constant works, as long as every installer uses the same one.
const INSTALL_LOCK: i64 = 0x6c65_6467_6572_0001;

/// Creates the projections' tables when missing and (re)defines their apply
/// functions. Idempotent; serialised across processes by an advisory lock.
pub async fn install(connection: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut tx = connection.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INSTALL_LOCK)
        .execute(&mut *tx)
        .await?;
    for projection in PROJECTIONS {
        sqlx::raw_sql(projection.definition).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO projection_status (name, mode) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET mode = excluded.mode",
        )
        .bind(projection.name)
        .bind(projection.mode.as_str())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

pub fn find(name: &str) -> Option<&'static Projection> {
    PROJECTIONS.iter().find(|p| p.name == name)
}

/// A projection's state, for `ledger projections status`.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Status {
    pub name: String,
    pub mode: String,
    /// Last global position reflected in the projection.
    pub position: i64,
    /// Last position of the log.
    pub log_position: i64,
    /// Committed events the projection has not applied yet.
    pub lag_events: i64,
    pub rebuilt_at: Option<chrono::DateTime<chrono::Utc>>,
    pub rebuild_events: Option<i64>,
    pub rebuild_seconds: Option<f64>,
}

/// Each projection's position and lag. Inline projections are updated in
/// the append's own statement, so every committed event is in them: their
/// position is the log's and their lag zero by construction.
pub async fn status(pool: &PgPool) -> Result<Vec<Status>, sqlx::Error> {
    sqlx::query_as(
        "WITH head AS (SELECT coalesce(max(position), 0) AS log_position FROM events) \
         SELECT s.name, s.mode, \
                CASE WHEN s.mode = 'inline' THEN h.log_position ELSE s.checkpoint_position END AS position, \
                h.log_position, \
                CASE WHEN s.mode = 'inline' THEN 0::bigint \
                     ELSE (SELECT count(*) FROM events e \
                           WHERE (e.tx_id, e.position) > (s.checkpoint_tx::text::xid8, s.checkpoint_position)) END AS lag_events, \
                s.rebuilt_at, s.rebuild_events, s.rebuild_seconds \
         FROM projection_status s CROSS JOIN head h ORDER BY s.name",
    )
    .fetch_all(pool)
    .await
}
