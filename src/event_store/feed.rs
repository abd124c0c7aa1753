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

/// Up to `limit` events after `after`, in commit-safe order (see
/// [`FeedCursor`]). Events of transactions still running, and of any
/// transaction younger than the oldest one running, wait for a later call.
pub async fn read_feed<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    after: FeedCursor,
    limit: i64,
) -> Result<Vec<FeedEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT position, stream_id, version, event_type, schema_version, data, metadata, recorded_at, hash, \
                tx_id::text::bigint AS tx \
         FROM events \
         WHERE (tx_id, position) > ($1::text::xid8, $2) \
           AND tx_id < (SELECT events_horizon()) \
         ORDER BY tx_id, position \
         LIMIT $3",
    )
    .bind(after.tx.to_string())
    .bind(after.position)
    .bind(limit)
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
    sqlx::query_as(
        "SELECT position, stream_id, tx_id::text::bigint AS tx, \
                CASE WHEN event_type = $4 THEN data END AS data \
         FROM events \
         WHERE (tx_id, position) > ($1::text::xid8, $2) \
           AND tx_id < (SELECT events_horizon()) \
         ORDER BY tx_id, position \
         LIMIT $3",
    )
    .bind(after.tx.to_string())
    .bind(after.position)
    .bind(limit)
    .bind(event_type)
    .fetch_all(executor)
    .await
}
