//! The event store: the only code that writes `events`, and the one that
//! reads it for the rest of the crate (streams, the commit-safe feed, the
//! stream ids). Two readers of the log stay outside on purpose: the
//! projection engine's SQL, which applies ranges of the log inside
//! PostgreSQL, and the aggregate snapshot load (`app::queries`), which
//! joins its stream head's hash to the balances row in one round trip.
//!
//! An append is one SQL statement: it inserts the events, applies the
//! inline projections to exactly those rows, and records the idempotency
//! key — so either all of it commits, with one fsync, or none of it does.
//!
//! About 550 lines: the append (prepared, then one statement for many streams),
//! its hash chain and its errors are one contract, read together.

mod feed;
pub mod hash;

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::canonical_json::to_text;
use crate::domain::Event;
pub use feed::{FeedCursor, FeedEntry, FeedEvent, PAGE_BYTES, read_feed, read_feed_for};
use hash::{HashInput, event_hash};

/// An event to append, with who asked for it.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: Event,
    /// Request id, idempotency key, command name.
    pub metadata: Value,
}

/// An idempotency key to record with the events it produced.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    /// The API key's scope (`''` without authentication) and the client's key.
    pub scope: String,
    pub key: String,
    pub request_hash: [u8; 32],
    pub response_status: u16,
    pub response_body: String,
    /// The version of the command's last event in this append: its
    /// position is recorded with the answer.
    pub last_version: i64,
}

/// Where a stream stood when the command was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHead {
    pub version: i64,
    pub hash: [u8; 32],
    /// When the head event was recorded: the next event of the stream is
    /// recorded no earlier (a server whose clock is behind another's, or a
    /// clock stepped back, never makes a stream's times go backwards, so a
    /// point in time always selects a prefix of it). `None` when unknown
    /// or empty.
    pub recorded_at: Option<DateTime<Utc>>,
}

impl StreamHead {
    pub const EMPTY: StreamHead = StreamHead {
        version: 0,
        hash: hash::GENESIS,
        recorded_at: None,
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub first_position: i64,
    pub last_position: i64,
    /// Each appended event's position, in version order.
    pub positions: Vec<i64>,
    pub head: StreamHead,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the stream since it was read: reload and
    /// decide again.
    #[error("stream version conflict")]
    VersionConflict(Option<Uuid>),
    /// A concurrent request with the same idempotency key committed first.
    #[error("idempotency key already recorded")]
    IdempotencyKeyTaken,
    /// The statement failed, or never reached the server: nothing was
    /// written.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The connection broke while the statement was in flight: it may have
    /// committed (see [`crate::app::is_outcome_unknown`]). Only when the
    /// executor is a connection already acquired: acquiring one is then
    /// not part of the append.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(sqlx::Error),
}

/// One event as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    pub position: i64,
    pub stream_id: Uuid,
    pub version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub data: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
    pub hash: Vec<u8>,
}

impl StoredEvent {
    pub fn to_event(&self) -> Result<Event, serde_json::Error> {
        Event::from_stored(&self.event_type, self.data.clone())
    }

    /// Recomputes this event's hash from its content and `previous`.
    pub fn computed_hash(&self, previous: &[u8; 32]) -> [u8; 32] {
        let (data, metadata) = (to_text(&self.data), to_text(&self.metadata));
        event_hash(
            previous,
            &HashInput {
                stream_id: self.stream_id,
                version: self.version,
                event_type: &self.event_type,
                schema_version: self.schema_version,
                recorded_at: self.recorded_at,
                data: data.as_bytes(),
                metadata: metadata.as_bytes(),
            },
        )
    }
}

/// Appends `events` to `stream_id`, which must be at `head` (optimistic
/// concurrency), chaining their hashes from `head.hash`, and applies the
/// inline projections and records `idempotency` in the same statement:
/// [`append_many`] of one stream.
///
/// Pass a connection already acquired (or a transaction), not a pool:
/// then a broken connection is [`AppendError::OutcomeUnknown`] for sure,
/// never a failure to connect taken for one.
pub async fn append<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    stream_id: Uuid,
    head: StreamHead,
    events: &[NewEvent],
    recorded_at: DateTime<Utc>,
    idempotency: &[IdempotencyRecord],
) -> Result<Appended, AppendError> {
    assert!(!events.is_empty(), "an append carries at least one event");
    let appended = append_many(
        executor,
        &[StreamAppend {
            stream_id,
            head,
            events,
            records: idempotency,
        }],
        recorded_at,
    )
    .await?
    .pop()
    .expect("one stream appended");
    let (Some(&first_position), Some(&last_position)) = (appended.positions.first(), appended.positions.last()) else {
        unreachable!("an append of {} events returned no positions", events.len());
    };
    Ok(Appended {
        first_position,
        last_position,
        positions: appended.positions,
        head: appended.head,
    })
}

/// The events of one stream in an [`append_many`].
pub struct StreamAppend<'a> {
    pub stream_id: Uuid,
    /// Where the stream must be (optimistic concurrency).
    pub head: StreamHead,
    pub events: &'a [NewEvent],
    /// Idempotency keys of the commands whose events these are; each
    /// record's `last_version` is a version among `events`.
    pub records: &'a [IdempotencyRecord],
}

/// One stream's part of an [`append_many`], once committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppended {
    pub head: StreamHead,
    /// Each appended event's position, in version order.
    pub positions: Vec<i64>,
}

const APPEND_MANY_SQL: &str = r#"
WITH ins AS (
    INSERT INTO events (stream_id, version, event_type, schema_version, data, metadata, recorded_at, hash,
                        transfer_count)
    SELECT st, v, t, s, d::jsonb, m::jsonb, r, h, n
    FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::int[], $5::text[], $6::text[], $7::timestamptz[],
                $8::bytea[], $16::int[])
         AS u(st, v, t, s, d, m, r, h, n)
    RETURNING *
), idem AS (
    INSERT INTO idempotency_keys (scope, key, request_hash, stream_id, response_status, response_body, position)
    SELECT i.c, i.k, i.h, i.st, i.s, i.b, ins.position
    FROM unnest($9::text[], $10::text[], $11::bytea[], $12::uuid[], $13::int2[], $14::text[], $15::bigint[])
         AS i(c, k, h, st, s, b, lv)
    LEFT JOIN ins ON ins.stream_id = i.st AND ins.version = i.lv
    RETURNING 1
), proj AS (
    SELECT projection_balances_apply(batch) AS balances, projection_transactions_apply(batch) AS transactions
    FROM (SELECT array_agg(ins::events ORDER BY ins.stream_id, ins.version) AS batch FROM ins) AS b
)
SELECT (SELECT array_agg(position ORDER BY stream_id, version) FROM ins) AS positions,
       (SELECT array_agg(stream_id ORDER BY stream_id, version) FROM ins) AS streams,
       (SELECT array_agg(version ORDER BY stream_id, version) FROM ins) AS versions,
       (SELECT count(*) FROM idem) AS keys,
       (SELECT balances + transactions FROM proj) AS projected
"#;

/// Appends to several streams in one statement — each at its own expected
/// head, with the inline projections and the idempotency keys: all of it
/// commits or none of it does, with one fsync. A stream that moved
/// meanwhile fails the whole statement ([`AppendError::VersionConflict`],
/// naming the stream when PostgreSQL does); so does a transfer credited or
/// returned twice (the `events_transfer_leg_key` index). Returns each
/// stream's new head and positions, in the order given.
///
/// Pass a connection already acquired (or a transaction), not a pool: then
/// a broken connection is [`AppendError::OutcomeUnknown`] for sure.
pub async fn append_many<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    appends: &[StreamAppend<'_>],
    recorded_at: DateTime<Utc>,
) -> Result<Vec<StreamAppended>, AppendError> {
    PreparedAppend::new(appends, recorded_at).execute(executor).await
}

/// An [`append_many`] made ready to send: every event's version and hash,
/// the statement's columns, and each stream's head as it will be once the
/// append commits — known before the statement runs, so that a writer can
/// decide its next batch on those heads while this one is in flight.
pub struct PreparedAppend<'a> {
    stream_ids: Vec<Uuid>,
    heads: Vec<StreamHead>,
    streams: Vec<Uuid>,
    versions: Vec<i64>,
    types: Vec<&'static str>,
    schemas: Vec<i32>,
    /// Each event's payload and metadata in canonical JSON: hashed, and
    /// sent as the text PostgreSQL stores as `jsonb` (one serialisation).
    payloads: Vec<String>,
    metadatas: Vec<String>,
    hashes: Vec<Vec<u8>>,
    times: Vec<DateTime<Utc>>,
    transfer_counts: Vec<Option<i32>>,
    keys: IdempotencyColumns<'a>,
}

impl<'a> PreparedAppend<'a> {
    pub fn new(appends: &[StreamAppend<'a>], recorded_at: DateTime<Utc>) -> PreparedAppend<'a> {
        // PostgreSQL keeps microseconds; hash exactly what will be stored.
        let recorded_at = recorded_at.trunc_subsecs(6);
        let events: usize = appends.iter().map(|a| a.events.len()).sum();
        let records: usize = appends.iter().map(|a| a.records.len()).sum();
        let mut prepared = PreparedAppend {
            stream_ids: appends.iter().map(|a| a.stream_id).collect(),
            heads: Vec::with_capacity(appends.len()),
            streams: Vec::with_capacity(events),
            versions: Vec::with_capacity(events),
            types: Vec::with_capacity(events),
            schemas: Vec::with_capacity(events),
            payloads: Vec::with_capacity(events),
            metadatas: Vec::with_capacity(events),
            hashes: Vec::with_capacity(events),
            times: Vec::with_capacity(events),
            transfer_counts: Vec::with_capacity(events),
            keys: IdempotencyColumns::with_capacity(records),
        };
        for append in appends {
            prepared.push_stream(append, recorded_at);
        }
        prepared
    }

    /// One stream's events: versions after its head, hashes chained from
    /// it, and the head they leave.
    fn push_stream(&mut self, append: &StreamAppend<'a>, recorded_at: DateTime<Utc>) {
        // Never before the stream's head (see `StreamHead::recorded_at`).
        let recorded_at = append.head.recorded_at.map_or(recorded_at, |at| at.max(recorded_at));
        let mut previous = append.head.hash;
        for (offset, new) in append.events.iter().enumerate() {
            let version = append.head.version + 1 + offset as i64;
            let data = to_text(&new.event.data());
            let metadata = to_text(&new.metadata);
            let hash = event_hash(
                &previous,
                &HashInput {
                    stream_id: append.stream_id,
                    version,
                    event_type: new.event.event_type(),
                    schema_version: Event::SCHEMA_VERSION,
                    recorded_at,
                    data: data.as_bytes(),
                    metadata: metadata.as_bytes(),
                },
            );
            previous = hash;
            self.streams.push(append.stream_id);
            self.versions.push(version);
            self.types.push(new.event.event_type());
            self.schemas.push(Event::SCHEMA_VERSION);
            self.payloads.push(data);
            self.metadatas.push(metadata);
            self.hashes.push(hash.to_vec());
            self.times.push(recorded_at);
            self.transfer_counts.push(match &new.event {
                Event::BulkTransferBooked { transfers, .. } => i32::try_from(transfers.len()).ok(),
                _ => None,
            });
        }
        self.heads.push(StreamHead {
            version: append.head.version + append.events.len() as i64,
            hash: previous,
            recorded_at: Some(recorded_at),
        });
        for record in append.records {
            self.keys.push(append.stream_id, record);
        }
    }

    /// Each stream's head once committed, in the order the appends came.
    pub fn heads(&self) -> &[StreamHead] {
        &self.heads
    }

    /// Sends the one statement (in the executor's transaction, or as one of
    /// its own).
    pub async fn execute<'e, E: sqlx::PgExecutor<'e>>(&self, executor: E) -> Result<Vec<StreamAppended>, AppendError> {
        if self.streams.is_empty() {
            return Ok(self
                .heads
                .iter()
                .map(|head| StreamAppended {
                    head: *head,
                    positions: Vec::new(),
                })
                .collect());
        }
        #[derive(sqlx::FromRow)]
        struct Row {
            positions: Option<Vec<i64>>,
            streams: Option<Vec<Uuid>>,
            versions: Option<Vec<i64>>,
        }
        let keys = &self.keys;
        let row: Row = sqlx::query_as(APPEND_MANY_SQL)
            .bind(&self.streams)
            .bind(&self.versions)
            .bind(&self.types)
            .bind(&self.schemas)
            .bind(&self.payloads)
            .bind(&self.metadatas)
            .bind(&self.times)
            .bind(&self.hashes)
            .bind(&keys.scopes)
            .bind(&keys.keys)
            .bind(&keys.request_hashes)
            .bind(&keys.streams)
            .bind(&keys.statuses)
            .bind(&keys.bodies)
            .bind(&keys.last_versions)
            .bind(&self.transfer_counts)
            .fetch_one(executor)
            .await
            .map_err(classify)?;
        // Each stream's positions, in version order (the rows come sorted by
        // stream, then version).
        let mut positions: HashMap<Uuid, Vec<i64>> = HashMap::with_capacity(self.stream_ids.len());
        for ((stream, _version), position) in row
            .streams
            .unwrap_or_default()
            .into_iter()
            .zip(row.versions.unwrap_or_default())
            .zip(row.positions.unwrap_or_default())
        {
            positions.entry(stream).or_default().push(position);
        }
        Ok(self
            .stream_ids
            .iter()
            .zip(&self.heads)
            .map(|(stream_id, head)| StreamAppended {
                head: *head,
                positions: positions.remove(stream_id).unwrap_or_default(),
            })
            .collect())
    }
}

/// Commits a transaction that holds an append: a connection lost while
/// the COMMIT was in flight is [`AppendError::OutcomeUnknown`].
pub async fn commit(transaction: sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), AppendError> {
    transaction.commit().await.map_err(classify)
}

/// The idempotency records of an append, as the statement's arrays.
struct IdempotencyColumns<'a> {
    scopes: Vec<&'a str>,
    keys: Vec<&'a str>,
    request_hashes: Vec<&'a [u8]>,
    streams: Vec<Uuid>,
    statuses: Vec<i16>,
    bodies: Vec<&'a str>,
    last_versions: Vec<i64>,
}

impl<'a> IdempotencyColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        IdempotencyColumns {
            scopes: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            request_hashes: Vec::with_capacity(n),
            streams: Vec::with_capacity(n),
            statuses: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
            last_versions: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, stream: Uuid, record: &'a IdempotencyRecord) {
        self.scopes.push(&record.scope);
        self.keys.push(&record.key);
        self.request_hashes.push(&record.request_hash);
        self.streams.push(stream);
        self.statuses.push(record.response_status as i16);
        self.bodies.push(&record.response_body);
        self.last_versions.push(record.last_version);
    }
}

fn classify(error: sqlx::Error) -> AppendError {
    if crate::app::is_outcome_unknown(&error) {
        crate::db::note_connection_lost();
        return AppendError::OutcomeUnknown(error);
    }
    if let sqlx::Error::Database(db) = &error {
        // Two batches that touch the same streams (two servers on one
        // database) can still deadlock; PostgreSQL then rolls one back, so
        // nothing of it committed: decide it again, like a stream that moved.
        if db.code().is_some_and(|code| code == "40P01" || code == "40001") {
            return AppendError::VersionConflict(None);
        }
        match db.constraint() {
            Some("events_stream_version_key") => {
                return AppendError::VersionConflict(conflicting_stream(db.as_ref()));
            }
            Some("idempotency_keys_pkey") => return AppendError::IdempotencyKeyTaken,
            // A transfer's credit or return appended by someone else first:
            // as for a stream that moved, read again and decide again.
            Some("events_transfer_leg_key") => return AppendError::VersionConflict(None),
            // Two first appends to a stream racing on the projection's row.
            Some("balances_pkey") => return AppendError::VersionConflict(conflicting_stream(db.as_ref())),
            Some("balances_iban_key") => return AppendError::VersionConflict(None),
            _ => {}
        }
    }
    AppendError::Database(error)
}

/// The stream a unique violation names, from PostgreSQL's detail
/// (`Key (stream_id, version)=(<uuid>, 7) already exists.`), so that a
/// batch re-decides only that stream's commands.
fn conflicting_stream(error: &dyn sqlx::error::DatabaseError) -> Option<Uuid> {
    let detail = error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?.detail()?;
    let values = detail.split_once("=(")?.1;
    let end = values.find([',', ')'])?;
    Uuid::parse_str(values[..end].trim()).ok()
}

const SELECT_EVENTS: &str =
    "SELECT position, stream_id, version, event_type, schema_version, data, metadata, recorded_at, hash FROM events";

/// Reads a stream in version order, optionally only up to a global position
/// or a recorded time. Up to a time means the prefix before the stream's
/// first event recorded after it: a prefix even in a stream written before
/// recorded times were kept monotone (an older server with a skewed clock).
pub async fn read_stream<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    stream_id: Uuid,
    until_position: Option<i64>,
    until_time: Option<DateTime<Utc>>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{SELECT_EVENTS} WHERE stream_id = $1 AND ($2::bigint IS NULL OR position <= $2) \
         AND ($3::timestamptz IS NULL OR version < coalesce( \
             (SELECT min(f.version) FROM events f WHERE f.stream_id = $1 AND f.recorded_at > $3), \
             9223372036854775807)) \
         ORDER BY version"
    ))
    .bind(stream_id)
    .bind(until_position)
    .bind(until_time)
    .fetch_all(executor)
    .await
}

/// Every stream id in the log.
pub async fn stream_ids(pool: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT DISTINCT stream_id FROM events")
        .fetch_all(pool)
        .await
}

/// The hash of a stream's event at `version` (its head, when `version` is
/// the stream's version).
pub async fn head_hash(pool: &PgPool, stream_id: Uuid, version: i64) -> Result<Option<[u8; 32]>, sqlx::Error> {
    let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT hash FROM events WHERE stream_id = $1 AND version = $2")
        .bind(stream_id)
        .bind(version)
        .fetch_optional(pool)
        .await?;
    Ok(row.and_then(|(bytes,)| bytes.try_into().ok()))
}

#[cfg(test)]
mod tests {
    use crate::projections::{Mode, PROJECTIONS};

    /// The append statement applies exactly the inline projections.
    #[test]
    fn the_append_applies_every_inline_projection_and_no_other() {
        for projection in PROJECTIONS {
            let call = format!("projection_{}_apply(batch)", projection.name);
            assert_eq!(
                super::APPEND_MANY_SQL.contains(&call),
                projection.mode == Mode::Inline,
                "{} ({:?})",
                projection.name,
                projection.mode
            );
        }
    }
}
