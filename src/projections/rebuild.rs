//! Rebuilding projections from the log while the service keeps serving.
//!
//! 1. Create the projections' tables and apply functions afresh in a shadow
//!    schema (the same definition files, with the shadow schema first on the
//!    search path).
//! 2. Load everything below the horizon of finished transactions
//!    set-based: each projection's `projection_<name>_load` function builds
//!    its rows straight from the log (balances by aggregation), one
//!    partition of the streams per connection, side by side, into tables
//!    without indexes; then build the indexes and ANALYZE. No lock is held.
//! 3. Catch up with what was appended meanwhile in batches, in commit-safe
//!    feed order, through the apply functions (the path the runner takes).
//! 4. Swap: lock `events` against writers (readers go on), apply the last
//!    few events, replace the live tables with the shadow ones, commit.
//!    Writers wait only for this step.
//!
//! About 600 lines: the rebuild's steps (load, index, catch-up, swap,
//! analyze) share one connection, one shadow schema and one set of locks,
//! and are read in order; the batch statement the runner shares with it
//! lives here too.

use std::time::Instant;

use sqlx::{Connection, PgConnection, PgPool};

use super::{PROJECTIONS, Projection};
use crate::event_store::FeedCursor;

/// Events per batch: large enough that per-statement costs vanish, small
/// enough that one batch's rows fit comfortably in memory (measured flat
/// between 20,000 and 50,000 with a 64 MB work_mem; slower at 5k and 100k).
pub(crate) const BATCH_EVENTS: i64 = 50_000;
/// Stored (compressed) payload bytes in one batch: the sizes are read from
/// the rows without decompressing them. A bulk of 10,000 transfers stores
/// well under 1 MB.
pub(crate) const BATCH_BYTES: i64 = 8 << 20;
/// Transfers in one batch (a booked bulk counts its transfers, from the
/// events' `transfer_count`; any other event, and an event written before
/// that column, one): what bounds the rows a batch writes, however well
/// its payloads compress.
pub(crate) const BATCH_TRANSFERS: i64 = 100_000;
/// Only one rebuild at a time.
const REBUILD_LOCK: i64 = 0x6c65_6467_6572_0002;
/// `horizon_exemptions.reason` of a rebuild's load transactions.
const EXEMPTION_REASON: &str = "projection rebuild";

#[derive(Debug, Clone, Copy)]
pub struct RebuildProgress {
    pub events_done: u64,
    pub events_total: u64,
}

#[derive(Debug, Clone)]
pub struct RebuildReport {
    pub projections: Vec<&'static str>,
    pub events: u64,
    pub seconds: f64,
    /// Events applied while writers were held (the swap step).
    pub events_during_swap: u64,
    /// Seconds per step: `load` (below the horizon, set-based), `index`
    /// (indexes and statistics), `catch_up` (what came meanwhile) and
    /// `swap` (writers held).
    pub phases: Vec<(&'static str, f64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("unknown projection {0:?} (known: balances, transactions, counterparties)")]
    UnknownProjection(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Rebuilds the named projections (all when `names` is empty) and swaps
/// them in atomically. `progress` is called after every batch.
pub async fn rebuild(
    pool: &PgPool,
    names: &[String],
    mut progress: impl FnMut(RebuildProgress),
) -> Result<RebuildReport, RebuildError> {
    let selected: Vec<&'static Projection> = if names.is_empty() {
        PROJECTIONS.iter().collect()
    } else {
        names
            .iter()
            .map(|name| super::find(name).ok_or_else(|| RebuildError::UnknownProjection(name.clone())))
            .collect::<Result<_, _>>()?
    };
    let started = Instant::now();
    let mut connection = pool.acquire().await?.detach();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(REBUILD_LOCK)
        .execute(&mut connection)
        .await?;
    let schema = format!("rebuild_{}", uuid::Uuid::new_v4().simple());
    let result = match home_schema(&mut connection).await {
        Ok(home) => run(pool, &mut connection, &schema, &home, &selected, &mut progress, started).await,
        Err(error) => Err(error.into()),
    };
    // The load transactions are over, one way or the other; so are those
    // of any rebuild that crashed before it (one rebuild at a time).
    let _ = sqlx::query("DELETE FROM horizon_exemptions WHERE reason = $1")
        .bind(EXEMPTION_REASON)
        .execute(&mut connection)
        .await;
    if result.is_err() {
        // A failed rebuild leaves the live tables as they were; remove its
        // shadow schema (a failed swap already rolled back).
        let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut connection)
            .await;
    }
    // The session lock goes with the connection, which is closed here
    // rather than returned to the pool with a shadow search path.
    let _ = connection.close().await;
    result
}

/// A rebuild connection's settings. Batches of JSON events sort and
/// aggregate in memory rather than in temporary files; a rebuild is not a
/// request, so the requests' statement timeout does not bound it; the
/// shadow schema comes first. These connections are closed after the
/// rebuild, so none of it reaches the pool.
fn session_settings(schema: &str, home: &str) -> String {
    format!(
        "SET work_mem = '64MB'; SET maintenance_work_mem = '256MB'; SET statement_timeout = 0; \
         SET search_path = {schema}, {home}"
    )
}

/// The schema the ledger's tables live in, as the connection's search path
/// finds `events` (`public` by default; a schema named after the role in
/// PostgreSQL's secure-schema pattern), quoted. Nothing hard-codes
/// `public`.
async fn home_schema(connection: &mut PgConnection) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT quote_ident(n.nspname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = 'events'::regclass",
    )
    .fetch_one(connection)
    .await
}

/// Opens a transaction on each helper connection and registers its id in
/// `horizon_exemptions` (committed, from the main connection) before any
/// long statement runs in it: the feed, the runner and the posting process
/// go on past these transactions, which the events table refuses to let
/// append (migrations/0007).
async fn begin_exempt(connection: &mut PgConnection, helpers: &mut [PgConnection]) -> Result<(), sqlx::Error> {
    let mut ids = Vec::with_capacity(helpers.len());
    for helper in helpers.iter_mut() {
        sqlx::raw_sql("BEGIN").execute(&mut *helper).await?;
        let id: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
            .fetch_one(&mut *helper)
            .await?;
        ids.push(id);
    }
    sqlx::query("INSERT INTO horizon_exemptions (tx_id, reason) SELECT unnest($1::text[])::xid8, $2")
        .bind(&ids)
        .bind(EXEMPTION_REASON)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Connections loading partitions side by side: one per core, at least two
/// (PostgreSQL may well have more cores than this process sees), at most
/// eight.
fn load_parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8)
}

/// Drops the (empty) shadow tables' primary keys, unique constraints and
/// other indexes, and returns, per table, the statements that make them
/// again: built once after the load rather than entry by entry during it.
/// (Unlogged tables during the load, made logged afterwards, were measured
/// slower: the rewrite costs more than the WAL it saves.)
async fn drop_indexes<'t>(
    connection: &mut PgConnection,
    schema: &str,
    tables: &[&'t str],
) -> Result<Vec<(&'t str, Vec<String>)>, sqlx::Error> {
    let mut per_table = Vec::new();
    for table in tables {
        let mut recreate = Vec::new();
        let qualified = format!("{schema}.{table}");
        let constraints: Vec<(String, String)> = sqlx::query_as(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = $1::regclass AND contype IN ('p', 'u') ORDER BY contype, conname",
        )
        .bind(&qualified)
        .fetch_all(&mut *connection)
        .await?;
        let others: Vec<(String, String)> = sqlx::query_as(
            "SELECT c.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = $1::regclass \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) \
             ORDER BY c.relname",
        )
        .bind(&qualified)
        .fetch_all(&mut *connection)
        .await?;
        for (name, definition) in constraints {
            sqlx::raw_sql(&format!("ALTER TABLE {qualified} DROP CONSTRAINT \"{name}\""))
                .execute(&mut *connection)
                .await?;
            recreate.push(format!(
                "ALTER TABLE {qualified} ADD CONSTRAINT \"{name}\" {definition}"
            ));
        }
        for (name, definition) in others {
            sqlx::raw_sql(&format!("DROP INDEX {schema}.\"{name}\""))
                .execute(&mut *connection)
                .await?;
            recreate.push(definition);
        }
        per_table.push((*table, recreate));
    }
    Ok(per_table)
}

/// The statements that give a shadow table what its live twin has beyond
/// the projection's definition: its indexes that the definition does not
/// make (a DBA's, by name), its owner and its grants. A rebuild by another
/// role (a superuser) thus leaves the tables owned, granted and indexed as
/// before: the server's role still writes them, a reporting role still
/// reads them. Changing the owner needs the rebuilding role to be a member
/// of it (or a superuser); PostgreSQL refuses otherwise, with its reason,
/// and the rebuild fails before the swap, the live tables untouched.
async fn carried_over(
    connection: &mut PgConnection,
    schema: &str,
    home: &str,
    table: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let live = format!("{home}.{table}");
    let shadow = format!("{schema}.{table}");
    let mut statements = Vec::new();
    let extra: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE i.indrelid = $1::regclass \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) \
           AND c.relname NOT IN (SELECT s.relname FROM pg_index j JOIN pg_class s ON s.oid = j.indexrelid \
                                 WHERE j.indrelid = $2::regclass) \
           AND c.relname NOT IN (SELECT k.conname FROM pg_constraint k WHERE k.conrelid = $2::regclass) \
         ORDER BY c.relname",
    )
    .bind(&live)
    .bind(&shadow)
    .fetch_all(&mut *connection)
    .await?;
    for definition in extra {
        // `CREATE INDEX name ON <home>.<table> USING …`, onto the shadow.
        statements.push(definition.replacen(&format!(" ON {live} "), &format!(" ON {shadow} "), 1));
    }
    let owner: String =
        sqlx::query_scalar("SELECT quote_ident(relowner::regrole::text) FROM pg_class WHERE oid = $1::regclass")
            .bind(&live)
            .fetch_one(&mut *connection)
            .await?;
    statements.push(format!("ALTER TABLE {shadow} OWNER TO {owner}"));
    let grants: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(a.grantee::regrole::text) END, \
                a.privilege_type, a.is_grantable \
         FROM pg_class c, aclexplode(c.relacl) AS a WHERE c.oid = $1::regclass ORDER BY 1, 2",
    )
    .bind(&live)
    .fetch_all(&mut *connection)
    .await?;
    for (grantee, privilege, grantable) in grants {
        statements.push(format!(
            "GRANT {privilege} ON {shadow} TO {grantee}{}",
            if grantable { " WITH GRANT OPTION" } else { "" }
        ));
    }
    Ok(statements)
}

async fn run(
    pool: &PgPool,
    connection: &mut PgConnection,
    schema: &str,
    home: &str,
    selected: &[&'static Projection],
    progress: &mut impl FnMut(RebuildProgress),
    started: Instant,
) -> Result<RebuildReport, RebuildError> {
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}; {}", session_settings(schema, home)))
        .execute(&mut *connection)
        .await?;
    for projection in selected {
        sqlx::raw_sql(projection.definition).execute(&mut *connection).await?;
    }
    let events_total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut *connection)
        .await?;
    let mut done = RebuildProgress {
        events_done: 0,
        events_total: events_total as u64,
    };
    progress(done);

    // 1. Everything below the horizon (final: no transaction below it can
    //    still commit), set-based: each projection's load function over a
    //    partition of the streams, the partitions side by side on
    //    connections of their own, into tables without their indexes.
    let mut phases = Vec::with_capacity(4);
    let mut phase_started = Instant::now();
    let mut phase = |name: &'static str| {
        phases.push((name, phase_started.elapsed().as_secs_f64()));
        phase_started = Instant::now();
    };
    let tables: Vec<&'static str> = selected.iter().flat_map(|p| p.tables.iter().copied()).collect();
    // What is attached to the live tables beyond their definition (an
    // index a DBA added, the owner, the grants) goes onto the shadow tables
    // with their indexes, so the swap keeps it (read while the shadow
    // tables still have their definition's indexes, to tell them apart).
    let mut carried = Vec::with_capacity(tables.len());
    for table in &tables {
        carried.push(carried_over(&mut *connection, schema, home, table).await?);
    }
    let mut indexes = drop_indexes(&mut *connection, schema, &tables).await?;
    for ((_, statements), extra) in indexes.iter_mut().zip(carried) {
        statements.extend(extra);
    }
    let horizon: String = sqlx::query_scalar("SELECT events_horizon()::text")
        .fetch_one(&mut *connection)
        .await?;
    let partitions = load_parallelism();
    let mut helpers = Vec::with_capacity(partitions);
    for _ in 0..partitions {
        let mut helper = pool.acquire().await?.detach();
        sqlx::raw_sql(&session_settings(schema, home))
            .execute(&mut helper)
            .await?;
        helpers.push(helper);
    }
    begin_exempt(&mut *connection, &mut helpers).await?;
    let loads = helpers.iter_mut().enumerate().map(|(part, helper)| {
        let horizon = horizon.as_str();
        async move {
            for projection in selected {
                match projection
                    .load_from
                    .filter(|from| selected.iter().any(|p| p.name == *from))
                {
                    Some(from) => {
                        sqlx::query(&format!(
                            "SELECT {schema}.projection_{}_load_from_{from}($1, $2)",
                            projection.name
                        ))
                        .bind(partitions as i32)
                        .bind(part as i32)
                        .execute(&mut *helper)
                        .await?
                    }
                    None => {
                        sqlx::query(&format!(
                            "SELECT {schema}.projection_{}_load($1::text::xid8, $2, $3)",
                            projection.name
                        ))
                        .bind(horizon)
                        .bind(partitions as i32)
                        .bind(part as i32)
                        .execute(&mut *helper)
                        .await?
                    }
                };
            }
            Ok::<_, sqlx::Error>(())
        }
    });
    futures_util::future::try_join_all(loads).await?;
    for helper in &mut helpers {
        sqlx::raw_sql("COMMIT").execute(&mut *helper).await?;
    }
    phase("load");
    begin_exempt(&mut *connection, &mut helpers).await?;
    // 2. The indexes, built once over the loaded rows (each table on a
    //    connection of its own), and statistics for the planner: they move
    //    with the tables at the swap.
    let builds = helpers.iter_mut().enumerate().map(|(i, helper)| {
        let mine: Vec<&(&str, Vec<String>)> = indexes.iter().skip(i).step_by(partitions).collect();
        async move {
            for (table, statements) in mine {
                for statement in statements {
                    sqlx::raw_sql(statement).execute(&mut *helper).await?;
                }
                // Statistics for the indexed columns, the ones plans depend
                // on (all columns: ~1 s more per million rows of text);
                // autovacuum's ANALYZE fills in the rest later.
                let columns: String = sqlx::query_scalar(
                    "SELECT string_agg(DISTINCT quote_ident(a.attname), ', ') FROM pg_index i \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                     WHERE i.indrelid = $1::regclass",
                )
                .bind(format!("{schema}.{table}"))
                .fetch_optional(&mut *helper)
                .await?
                .flatten()
                .unwrap_or_default();
                let analyze = if columns.is_empty() {
                    format!("ANALYZE {schema}.{table}")
                } else {
                    format!("ANALYZE {schema}.{table} ({columns})")
                };
                sqlx::raw_sql(&analyze).execute(&mut *helper).await?;
            }
            Ok::<_, sqlx::Error>(())
        }
    });
    let mut built = futures_util::future::try_join_all(builds).await.map(drop);
    for mut helper in helpers {
        if built.is_ok() {
            built = sqlx::raw_sql("COMMIT").execute(&mut helper).await.map(drop);
        }
        let _ = helper.close().await;
    }
    built?;
    phase("index");
    let (loaded, last): (i64, Option<(i64, i64)>) = {
        let loaded: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tx_id < $1::text::xid8")
            .bind(&horizon)
            .fetch_one(&mut *connection)
            .await?;
        let last: Option<(i64, i64)> = sqlx::query_as(
            "SELECT tx_id::text::bigint, position FROM events WHERE tx_id < $1::text::xid8 \
             ORDER BY tx_id DESC, position DESC LIMIT 1",
        )
        .bind(&horizon)
        .fetch_optional(&mut *connection)
        .await?;
        (loaded, last)
    };
    done.events_done = loaded as u64;
    done.events_total = done.events_total.max(done.events_done);
    progress(done);
    let apply_sql = batch_sql(Some(schema), selected);

    // 3. Catch up with what was appended meanwhile, in feed order, through
    //    the apply functions, holding no lock.
    let mut cursor = match last {
        Some((tx, position)) => FeedCursor { tx, position },
        None => FeedCursor::START,
    };
    loop {
        let (applied, next) = apply_batch(&mut *connection, &apply_sql, cursor, true).await?;
        cursor = next;
        done.events_done += applied;
        done.events_total = done.events_total.max(done.events_done);
        progress(done);
        // A batch cut short by its byte bound is not the end: only an
        // empty one is.
        if applied == 0 {
            break;
        }
    }

    phase("catch_up");
    // Swap, holding writers back: once the lock is granted every append that
    // started before it has finished, so the rest of the log can be read
    // without the horizon.
    let mut tx = connection.begin().await?;
    // The status rows first, before holding writers back, and before the
    // tables, in the order the asynchronous runner takes them (row, then
    // table): a runner batch in progress finishes first (writers still
    // write meanwhile), later ones skip the rows. Dropping the tables first
    // and updating the rows after deadlocks with a runner batch that took
    // the row and waits for the table.
    let names: Vec<&str> = selected.iter().map(|p| p.name).collect();
    sqlx::query("SELECT name FROM projection_status WHERE name = ANY($1) ORDER BY name FOR UPDATE")
        .bind(&names)
        .execute(&mut *tx)
        .await?;
    // The posting process reads the read models and then appends, under
    // its page lock: waiting for that lock first lets a posting page in
    // flight finish instead of deadlocking with the swap (and no page
    // starts until the swap is done).
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(crate::posting::PAGE_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let mut events_during_swap = 0;
    loop {
        let (applied, next) = apply_batch(&mut *tx, &apply_sql, cursor, false).await?;
        cursor = next;
        events_during_swap += applied;
        if applied == 0 {
            break;
        }
    }
    done.events_done += events_during_swap;
    done.events_total = done.events_total.max(done.events_done);
    for projection in selected {
        for table in projection.tables {
            sqlx::raw_sql(&format!(
                "DROP TABLE {home}.{table}; ALTER TABLE {schema}.{table} SET SCHEMA {home}"
            ))
            .execute(&mut *tx)
            .await?;
        }
    }
    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut *tx)
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    for projection in selected {
        sqlx::query(
            "UPDATE projection_status SET rebuilt_at = now(), rebuild_events = $2, rebuild_seconds = $3, \
                    checkpoint_tx = $4, checkpoint_position = $5, updated_at = now() \
             WHERE name = $1",
        )
        .bind(projection.name)
        .bind(done.events_done as i64)
        .bind(seconds)
        .bind(cursor.tx)
        .bind(cursor.position)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    phase("swap");
    // Full statistics, now the tables are live (the indexed columns had
    // theirs before the swap); ANALYZE does not hold writers back.
    for table in &tables {
        sqlx::raw_sql(&format!("ANALYZE {home}.{table}"))
            .execute(&mut *connection)
            .await?;
    }
    phase("analyze");
    sqlx::query("RESET search_path").execute(&mut *connection).await?;
    progress(done);
    Ok(RebuildReport {
        projections: selected.iter().map(|p| p.name).collect(),
        events: done.events_done,
        seconds,
        events_during_swap,
        phases,
    })
}

/// One statement: take the next batch of events in feed order (at most
/// [`BATCH_EVENTS`] events, [`BATCH_TRANSFERS`] transfers and
/// [`BATCH_BYTES`] of stored payload, at least
/// one event: bulks of thousands of transfers make a few large events, and
/// the batch's array must stay far below PostgreSQL's 1 GB value limit),
/// hand it to
/// every selected projection's apply function (in the shadow schema
/// `functions`, else as the search path finds them: the live ones), and
/// return how many events it held and where it ended. `events` is the one
/// the search path finds (a rebuild's shadow schema has none).
pub(crate) fn batch_sql(functions: Option<&str>, selected: &[&'static Projection]) -> String {
    let prefix = functions.map(|schema| format!("{schema}.")).unwrap_or_default();
    let applies: Vec<String> = selected
        .iter()
        .map(|p| format!("{prefix}projection_{}_apply((SELECT b FROM agg))", p.name))
        .collect();
    format!(
        "WITH sized AS ( \
             SELECT s.tx_id, s.position, \
                    sum(pg_column_size(s.data) + pg_column_size(s.metadata)) \
                        OVER (ORDER BY s.tx_id, s.position) AS bytes, \
                    sum(coalesce(s.transfer_count, 1)) OVER (ORDER BY s.tx_id, s.position) AS transfers \
             FROM (SELECT e.tx_id, e.position, e.data, e.metadata, e.transfer_count FROM events e \
                   WHERE (e.tx_id, e.position) > ($1::text::xid8, $2) \
                     AND (NOT $4 OR e.tx_id < (SELECT events_horizon())) \
                   ORDER BY e.tx_id, e.position LIMIT $3) AS s \
         ), upto AS ( \
             SELECT tx_id, position FROM sized \
             WHERE (bytes <= $5 AND transfers <= $6) OR bytes = (SELECT min(bytes) FROM sized) \
             ORDER BY tx_id DESC, position DESC LIMIT 1 \
         ), batch AS ( \
             SELECT e FROM events e, upto \
             WHERE (e.tx_id, e.position) > ($1::text::xid8, $2) \
               AND (e.tx_id, e.position) <= (upto.tx_id, upto.position) \
             ORDER BY e.tx_id, e.position \
         ), agg AS (SELECT array_agg(batch.e) AS b FROM batch), \
         last AS ( \
             SELECT (batch.e).tx_id::text::bigint AS tx, (batch.e).position AS position \
             FROM batch ORDER BY (batch.e).tx_id DESC, (batch.e).position DESC LIMIT 1 \
         ) \
         SELECT (SELECT count(*) FROM batch), (SELECT tx FROM last), (SELECT position FROM last), \
                CASE WHEN (SELECT count(*) FROM batch) > 0 THEN {} ELSE 0 END",
        applies.join(" + ")
    )
}

pub(crate) async fn apply_batch<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    sql: &str,
    after: FeedCursor,
    below_horizon: bool,
) -> Result<(u64, FeedCursor), sqlx::Error> {
    let (count, tx, position): (i64, Option<i64>, Option<i64>) =
        sqlx::query_as(&format!("SELECT c, t, p FROM ({sql}) AS r(c, t, p, applied)"))
            .bind(after.tx.to_string())
            .bind(after.position)
            .bind(BATCH_EVENTS)
            .bind(below_horizon)
            .bind(BATCH_BYTES)
            .bind(BATCH_TRANSFERS)
            .fetch_one(executor)
            .await?;
    let next = match (tx, position) {
        (Some(tx), Some(position)) => FeedCursor { tx, position },
        _ => after,
    };
    Ok((count as u64, next))
}
