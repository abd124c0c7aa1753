//! Rebuilding projections from the log while the service keeps serving.
//!
//! 1. Create the projections' tables and apply functions afresh in a shadow
//!    schema (the same definition files, with the shadow schema first on the
//!    search path).
//! 2. Load everything below the horizon of finished transactions
//!    set-based: each projection's `projection_<name>_load` function builds
//!    its rows straight from the log (balances by aggregation), split
//!    between connections side by side (by stream partition, or by range
//!    of the log's heap blocks: [`LoadBy`]), into tables without indexes;
//!    then build the indexes and ANALYZE. The pieces are jobs taken by
//!    whichever connection is free; a load that reads another's table
//!    (counterparties from transactions) runs after it commits, beside its
//!    index build. No lock is held.
//! 3. Catch up with what was appended meanwhile in batches, in commit-safe
//!    feed order, through the apply functions (the path the runner takes).
//! 4. Swap: lock `events` against writers (readers go on), apply the last
//!    few events, replace the live tables with the shadow ones, commit.
//!    Writers wait only for this step.
//!
//! About 770 lines: the rebuild's steps (load jobs, index, catch-up, swap,
//! analyze) share one connection, one shadow schema and one set of locks,
//! and are read in order; the batch statement the runner shares with it
//! lives here too. (`RebuildReport`'s `f64`s are seconds, not money.)

use std::time::Instant;

use sqlx::{Connection, PgConnection, PgPool};

use super::{LoadBy, PROJECTIONS, Projection};
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
    #[error(
        "the events table was rewritten (VACUUM FULL or CLUSTER) while the rebuild read it; \
         nothing was swapped in: run the rebuild again"
    )]
    EventsRewritten,
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

/// What makes a shadow table's indexes again after its load.
struct TableIndexes<'t> {
    table: &'t str,
    /// Built by a helper connection: the indexes (those behind the primary
    /// key and unique constraints too, as plain unique indexes: building
    /// one takes a lock that lets the table be read meanwhile), then the
    /// indexed columns' statistics.
    statements: Vec<String>,
    /// Run on the main connection once every load and index is committed:
    /// the constraints, over their indexes.
    constraints: Vec<String>,
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
) -> Result<Vec<TableIndexes<'t>>, sqlx::Error> {
    let mut per_table = Vec::new();
    for table in tables {
        let mut recreate = TableIndexes {
            table,
            statements: Vec::new(),
            constraints: Vec::new(),
        };
        let qualified = format!("{schema}.{table}");
        let constraints: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT conname::text, pg_get_indexdef(conindid), \
                    CASE contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END \
                    || CASE WHEN condeferrable THEN ' DEFERRABLE' ELSE '' END \
                    || CASE WHEN condeferred THEN ' INITIALLY DEFERRED' ELSE '' END \
             FROM pg_constraint WHERE conrelid = $1::regclass AND contype IN ('p', 'u') \
             ORDER BY contype, conname",
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
        for (name, index, kind) in constraints {
            sqlx::raw_sql(&format!("ALTER TABLE {qualified} DROP CONSTRAINT \"{name}\""))
                .execute(&mut *connection)
                .await?;
            recreate.statements.push(index);
            recreate.constraints.push(format!(
                "ALTER TABLE {qualified} ADD CONSTRAINT \"{name}\" {kind} USING INDEX \"{name}\""
            ));
        }
        for (name, definition) in others {
            sqlx::raw_sql(&format!("DROP INDEX {schema}.\"{name}\""))
                .execute(&mut *connection)
                .await?;
            recreate.statements.push(definition);
        }
        per_table.push(recreate);
    }
    Ok(per_table)
}

/// What every load job needs to know.
struct LoadPlan<'a> {
    schema: &'a str,
    /// The horizon below which the loads read the log.
    horizon: &'a str,
    /// Parts each load is split into.
    partitions: usize,
    /// The events table's heap blocks when the horizon was taken.
    blocks: i64,
}

/// One piece of a rebuild's set-based work, taken by whichever helper
/// connection is free.
enum Job<'a> {
    /// Part `part` of a projection's load (of [`LoadPlan::partitions`]).
    Load {
        projection: &'static Projection,
        part: usize,
    },
    /// A table's indexes, then its indexed columns' statistics.
    Index(&'a TableIndexes<'a>),
}

impl Job<'_> {
    async fn run(&self, helper: &mut PgConnection, plan: &LoadPlan<'_>, from: Option<&str>) -> Result<(), sqlx::Error> {
        let schema = plan.schema;
        match self {
            Job::Load { projection, part } => {
                let (partitions, part) = (plan.partitions as i32, *part as i32);
                match (from, projection.load_by) {
                    (Some(from), _) => {
                        sqlx::query(&format!(
                            "SELECT {schema}.projection_{}_load_from_{from}($1, $2)",
                            projection.name
                        ))
                        .bind(partitions)
                        .bind(part)
                        .execute(&mut *helper)
                        .await?
                    }
                    (None, LoadBy::Streams) => {
                        sqlx::query(&format!(
                            "SELECT {schema}.projection_{}_load($1::text::xid8, $2, $3)",
                            projection.name
                        ))
                        .bind(plan.horizon)
                        .bind(partitions)
                        .bind(part)
                        .execute(&mut *helper)
                        .await?
                    }
                    (None, LoadBy::Blocks) => {
                        // Equal ranges of blocks; the last one open-ended.
                        let range = |part: i32| plan.blocks * i64::from(part) / i64::from(partitions);
                        let end = (part + 1 < partitions).then(|| range(part + 1));
                        sqlx::query(&format!(
                            "SELECT {schema}.projection_{}_load($1::text::xid8, $2, $3)",
                            projection.name
                        ))
                        .bind(plan.horizon)
                        .bind(range(part))
                        .bind(end)
                        .execute(&mut *helper)
                        .await?
                    }
                };
            }
            Job::Index(index) => {
                for statement in &index.statements {
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
                .bind(format!("{schema}.{}", index.table))
                .fetch_optional(&mut *helper)
                .await?
                .flatten()
                .unwrap_or_default();
                let analyze = if columns.is_empty() {
                    format!("ANALYZE {schema}.{}", index.table)
                } else {
                    format!("ANALYZE {schema}.{} ({columns})", index.table)
                };
                sqlx::raw_sql(&analyze).execute(&mut *helper).await?;
            }
        }
        Ok(())
    }
}

/// Runs `jobs` on the helper connections, each taking the next job as soon
/// as it is free, in the exempt transactions [`begin_exempt`] opened; each
/// commits when no job is left.
async fn run_jobs(
    helpers: &mut [PgConnection],
    jobs: Vec<Job<'_>>,
    plan: &LoadPlan<'_>,
    selected: &[&'static Projection],
) -> Result<(), sqlx::Error> {
    let queue = std::sync::Mutex::new(std::collections::VecDeque::from(jobs));
    let workers = helpers.iter_mut().map(|helper| {
        let queue = &queue;
        async move {
            loop {
                let Some(job) = queue.lock().expect("the job queue").pop_front() else {
                    break;
                };
                // A projection loads from another only when both are
                // rebuilt (the other's shadow table is then loaded).
                let from = match &job {
                    Job::Load { projection, .. } => projection
                        .load_from
                        .filter(|from| selected.iter().any(|p| p.name == *from)),
                    Job::Index(_) => None,
                };
                job.run(&mut *helper, plan, from).await?;
            }
            sqlx::raw_sql("COMMIT").execute(&mut *helper).await?;
            Ok::<_, sqlx::Error>(())
        }
    });
    futures_util::future::try_join_all(workers).await.map(drop)
}

/// The statements that give a shadow table what its live twin has beyond
/// the projection's definition: its indexes that the definition does not
/// make (a DBA's, by name), its owner and its grants. A rebuild by another
/// role (a superuser) thus leaves the tables owned, granted and indexed as
/// before: the server's role still writes them, a reporting role still
/// reads them. Changing the owner needs the rebuilding role to be a member
/// of it (or a superuser); PostgreSQL refuses otherwise, with its reason,
/// and the rebuild fails before the swap, the live tables untouched.
/// Returns the index statements (built after the load) apart from the
/// catalogue ones (owner, grants: run last, as they lock the table).
async fn carried_over(
    connection: &mut PgConnection,
    schema: &str,
    home: &str,
    table: &str,
) -> Result<(Vec<String>, Vec<String>), sqlx::Error> {
    let live = format!("{home}.{table}");
    let shadow = format!("{schema}.{table}");
    let mut indexes = Vec::new();
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
        indexes.push(definition.replacen(&format!(" ON {live} "), &format!(" ON {shadow} "), 1));
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
    Ok((indexes, statements))
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
    for (index, (extra, catalogue)) in indexes.iter_mut().zip(carried) {
        index.statements.extend(extra);
        index.constraints.extend(catalogue);
    }
    let horizon: String = sqlx::query_scalar("SELECT events_horizon()::text")
        .fetch_one(&mut *connection)
        .await?;
    // Measured after the horizon: every event below it is in these blocks
    // (the table only grows; its last range is open-ended anyway). The file
    // node tells a rewrite of the table (VACUUM FULL, CLUSTER) that would
    // move rows between ranges.
    let (blocks, events_file): (i64, i64) = sqlx::query_as(
        "SELECT pg_relation_size('events') / current_setting('block_size')::bigint, \
                pg_relation_filenode('events')::bigint",
    )
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
    let plan = LoadPlan {
        schema,
        horizon: &horizon,
        partitions,
        blocks,
    };
    // The loads other loads read from (the transactions rows, which the
    // counterparties are aggregated from) go first and commit; then, side
    // by side, their tables' indexes and every other load; then the
    // remaining indexes. Each step's jobs go to whichever connection is
    // free, the indexes first (one table's cannot be split).
    let sources: Vec<&str> = selected
        .iter()
        .filter_map(|p| p.load_from.filter(|from| selected.iter().any(|q| q.name == *from)))
        .collect();
    let (first, rest): (Vec<&'static Projection>, Vec<&'static Projection>) =
        selected.iter().partition(|p| sources.contains(&p.name));
    let loads = |projections: &[&'static Projection]| -> Vec<Job<'_>> {
        projections
            .iter()
            .flat_map(|&projection| (0..partitions).map(move |part| Job::Load { projection, part }))
            .collect()
    };
    let index_jobs = |projections: &[&'static Projection]| -> Vec<Job<'_>> {
        indexes
            .iter()
            .filter(|index| projections.iter().any(|p| p.tables.contains(&index.table)))
            .map(Job::Index)
            .collect()
    };
    let mut first_jobs = loads(&first);
    let mut second_jobs = index_jobs(&first);
    second_jobs.extend(loads(&rest));
    if first_jobs.is_empty() {
        first_jobs = std::mem::take(&mut second_jobs);
    }
    begin_exempt(&mut *connection, &mut helpers).await?;
    // Meanwhile, on the connection that would otherwise wait: how much the
    // loads cover, and where the catch-up starts.
    let below = async {
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
        Ok::<_, sqlx::Error>((loaded, last))
    };
    let ((loaded, last), ()) =
        futures_util::future::try_join(below, run_jobs(&mut helpers, first_jobs, &plan, selected)).await?;
    let rewritten: i64 = sqlx::query_scalar("SELECT pg_relation_filenode('events')::bigint")
        .fetch_one(&mut *connection)
        .await?;
    if rewritten != events_file {
        return Err(RebuildError::EventsRewritten);
    }
    phase("load");
    for step in [second_jobs, index_jobs(&rest)] {
        if !step.is_empty() {
            begin_exempt(&mut *connection, &mut helpers).await?;
            run_jobs(&mut helpers, step, &plan, selected).await?;
        }
    }
    for helper in helpers {
        let _ = helper.close().await;
    }
    // The primary keys and unique constraints, over the unique indexes
    // built for them (a catalogue change: no scan).
    for index in &indexes {
        for statement in &index.constraints {
            sqlx::raw_sql(statement).execute(&mut *connection).await?;
        }
    }
    phase("index");
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
