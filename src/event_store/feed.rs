//! The global log in commit-safe order: its cursor, and reading it (whole
//! events for the feed's consumers, or one type's payloads for a process
//! that follows it).

use serde_json::Value;
use uuid::Uuid;

use super::StoredEvent;

/// A place in the commit-safe global order: `(transaction id, position)`.
///
/// Positions come from a sequence and become visible in commit order, not
/// number order, so "everything after position p" can skip an event that
/// commits late. The feed instead orders events by the id of the
/// transaction that wrote them, then position, and only hands out events of
/// transactions below `events_horizon()` (migrations/0003): the oldest
/// transaction still running in this database. Below that horizon nothing
/// new can ever appear, so a reader that resumes after the last
/// `(tx, position)` it saw never misses an event and never sees one twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct FeedCursor {
    pub tx: i64,
    pub position: i64,
}

impl FeedCursor {
    pub const START: FeedCursor = FeedCursor { tx: 0, position: 0 };

    /// Parses a token from [`FeedCursor::token`]; `0` is the beginning.
    pub fn parse(token: &str) -> Option<FeedCursor> {
        if token == "0" {
            return Some(FeedCursor::START);
        }
        let (tx, position) = token.split_once('-')?;
        let cursor = FeedCursor {
            tx: tx.parse().ok()?,
            position: position.parse().ok()?,
        };
        (cursor.tx >= 0 && cursor.position >= 0).then_some(cursor)
    }

    /// An opaque token for clients: `<tx>-<position>`.
    pub fn token(&self) -> String {
        if *self == FeedCursor::START {
            "0".to_owned()
        } else {
            format!("{}-{}", self.tx, self.position)
        }
    }
}

/// One event of the global feed, with its place in the feed's order.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeedEvent {
    #[sqlx(flatten)]
    pub event: StoredEvent,
    pub tx: i64,
}

impl FeedEvent {
    pub fn cursor(&self) -> FeedCursor {
        FeedCursor {
            tx: self.tx,
            position: self.event.position,
        }
    }
}

/// The page's last event, `upto`: the first `$3` events after the cursor
/// (`$1`, `$2`) below the horizon, cut where their stored payload passes
/// `$4` bytes (at least one event). The sizes come from the rows without
/// decompressing or fetching their payloads.
macro_rules! page_bound {
    () => {
        "WITH sized AS ( \
             SELECT s.tx_id, s.position, \
                    sum(pg_column_size(s.data) + pg_column_size(s.metadata)) OVER (ORDER BY s.tx_id, s.position) AS bytes \
             FROM (SELECT tx_id, position, data, metadata FROM events \
                   WHERE (tx_id, position) > ($1::text::xid8, $2) AND tx_id < (SELECT events_horizon()) \
                   ORDER BY tx_id, position LIMIT $3) AS s \
         ), upto AS ( \
             SELECT tx_id, position FROM sized WHERE bytes <= $4 OR bytes = (SELECT min(bytes) FROM sized) \
             ORDER BY tx_id DESC, position DESC LIMIT 1 \
         ) "
    };
}

/// Stored (compressed) payload bytes in one page of the feed, at most (a
/// page holds at least one event): pages of large bulks stay a few
/// megabytes, whatever `limit` asks.
pub const PAGE_BYTES: i64 = 4 << 20;

/// Up to `limit` events after `after`, in commit-safe order (see
/// [`FeedCursor`]), and at most [`PAGE_BYTES`] of stored payload (at least
/// one event). Events of transactions still running, and of any
/// transaction younger than the oldest one running, wait for a later call.
pub async fn read_feed<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    after: FeedCursor,
    limit: i64,
) -> Result<Vec<FeedEvent>, sqlx::Error> {
    sqlx::query_as(concat!(
        page_bound!(),
        "SELECT e.position, e.stream_id, e.version, e.event_type, e.schema_version, e.data, e.metadata, \
                e.recorded_at, e.hash, e.tx_id::text::bigint AS tx \
         FROM events e, upto \
         WHERE (e.tx_id, e.position) > ($1::text::xid8, $2) AND (e.tx_id, e.position) <= (upto.tx_id, upto.position) \
         ORDER BY e.tx_id, e.position"
    ))
    .bind(after.tx.to_string())
    .bind(after.position)
    .bind(limit)
    .bind(PAGE_BYTES)
    .fetch_all(executor)
    .await
}

/// One event of the feed as a process that follows it for one event type
/// sees it: where it is, and its payload only when it has that type.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeedEntry {
    pub position: i64,
    pub stream_id: Uuid,
    pub tx: i64,
    /// The payload, for events of the type asked for.
    pub data: Option<Value>,
}

impl FeedEntry {
    pub fn cursor(&self) -> FeedCursor {
        FeedCursor {
            tx: self.tx,
            position: self.position,
        }
    }
}

/// [`read_feed`] for a follower interested in one event type: the same
/// events in the same order (its cursor moves past all of them), with only
/// that type's payloads read out.
pub async fn read_feed_for<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    after: FeedCursor,
    limit: i64,
    event_type: &str,
) -> Result<Vec<FeedEntry>, sqlx::Error> {
    sqlx::query_as(concat!(
        page_bound!(),
        "SELECT e.position, e.stream_id, e.tx_id::text::bigint AS tx, \
                CASE WHEN e.event_type = $5 THEN e.data END AS data \
         FROM events e, upto \
         WHERE (e.tx_id, e.position) > ($1::text::xid8, $2) AND (e.tx_id, e.position) <= (upto.tx_id, upto.position) \
         ORDER BY e.tx_id, e.position"
    ))
    .bind(after.tx.to_string())
    .bind(after.position)
    .bind(limit)
    .bind(PAGE_BYTES)
    .bind(event_type)
    .fetch_all(executor)
    .await
}
