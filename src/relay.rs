//! The feed relayed to NATS JetStream (SPEC §8, ARCHITECTURE "Scaling
//! beyond one machine"): `ledger relay`, or a task of `serve` when
//! `LEDGER_NATS_URL` is set, publishes every event of the commit-safe feed
//! (`GET /v1/events`, in its order) to a JetStream stream, one message per
//! event: on `<prefix>.<type>.<stream_id>`, with the feed's JSON view of the
//! event as payload, `Nats-Msg-Id` = its position and `Ledger-Feed-Cursor`
//! = the feed cursor just after it.
//!
//! Exactly once, whatever crashes:
//! - JetStream drops a second message with the same `Nats-Msg-Id` within the
//!   stream's duplicate window (two minutes unless the stream says
//!   otherwise);
//! - the checkpoint (`process_checkpoints`, name [`NAME`]) moves only after
//!   every publish of a page is acknowledged: a relay that dies before that
//!   publishes the page again, and the duplicate window removes it;
//! - at every start the relay resumes after the later of its checkpoint and
//!   the cursor of the last message the stream holds: a relay that comes
//!   back after the duplicate window has passed, or whose checkpoint went
//!   back (restored from a backup), still publishes nothing twice;
//! - no hole, ever: each publish says which stream sequence it expects to
//!   follow (`Nats-Expected-Last-Sequence`), so when one message of a page
//!   is lost (a reconnect drops what the client had buffered), every later
//!   one is refused too, and the relay starts over after the last message
//!   the stream really holds;
//! - the stream's last message must be an event of this database (its
//!   place, stream and version): a stream ahead of a database restored from
//!   an older backup, or another ledger's stream, is refused loudly rather
//!   than resumed after (that would skip the events the database writes
//!   again at those positions);
//! - one relay publishes at a time: it holds a session advisory lock
//!   ([`RELAY_LOCK`]) on the connection that reads the feed and moves the
//!   checkpoint; a second relay waits for it and takes over when that
//!   connection goes (the relay killed, PostgreSQL restarted). During a
//!   takeover both may publish the same events for a moment, each in feed
//!   order: the first copy of each is kept, the others are duplicates, so
//!   the stream keeps the feed's order.
//!
//! Every publish names the stream it expects (`Nats-Expected-Stream`), so
//! an event never lands in another stream that happens to capture the
//! subject. Every message also carries `Ledger-Feed-Before`, the cursor
//! just before its event: `GET /v1/events?after=<it>&limit=1` answers that
//! very event. An event larger than the NATS server's `max_payload` (1 MB
//! unless configured: a bulk of 10,000 transfers is ~3 MB) goes without its
//! `data` (`null`) and with `Ledger-Data-Omitted` = the bytes left out (so
//! does one past the stream's own `max_msg_size`);
//! its consumer reads it from the feed that way. The relay never stalls on
//! one event.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use sqlx::{Connection as _, PgPool};

use crate::app::views::FeedEventView;
use crate::event_store::{self, FeedCursor};
use crate::posting::{read_checkpoint, save_checkpoint};

/// The session advisory lock the publishing relay holds (posting's page
/// lock is `…0003`).
pub const RELAY_LOCK: i64 = 0x6c65_6467_6572_0004;
/// The relay's checkpoint in `process_checkpoints`.
pub const NAME: &str = "relay:nats";
/// The header with the feed cursor just after the message's event (pass it
/// as `after` to `GET /v1/events` to go on from there).
pub const CURSOR_HEADER: &str = "Ledger-Feed-Cursor";
/// The header with the feed cursor just before the message's event.
pub const BEFORE_HEADER: &str = "Ledger-Feed-Before";
/// On a message whose event's `data` was left out (too large for the NATS
/// server's `max_payload`): how many bytes the whole message would have had.
pub const OMITTED_HEADER: &str = "Ledger-Data-Omitted";
/// Room kept for the headers beside a payload, under `max_payload`.
const HEADER_ROOM: usize = 1_024;
/// Feed events per page: published together, acknowledged, then the
/// checkpoint moves (pages are bounded by bytes as well, by the feed).
const PAGE_EVENTS: i64 = 1_000;
/// The first rest once caught up; it doubles while nothing arrives.
const IDLE_WAIT: Duration = Duration::from_millis(20);
const MAX_IDLE_WAIT: Duration = Duration::from_millis(200);
/// How often a relay that waits for the lock asks again.
const STANDBY_POLL: Duration = Duration::from_millis(500);
/// The rest after a failure (NATS or PostgreSQL away) before starting over.
const RETRY_WAIT: Duration = Duration::from_secs(1);

/// Where the feed goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// NATS server URL(s), comma-separated.
    pub url: String,
    /// The JetStream stream; created with subjects `<prefix>.>` when missing.
    pub stream: String,
    /// Subjects are `<prefix>.<type>.<stream_id>`.
    pub subject_prefix: String,
}

impl RelaySettings {
    /// Checks the names NATS would refuse (or read as wildcards).
    pub fn validate(&self) -> Result<(), String> {
        if self.url.trim().is_empty() {
            return Err("LEDGER_NATS_URL is empty".to_owned());
        }
        let bad_stream = |c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\');
        if self.stream.is_empty() || self.stream.contains(bad_stream) {
            return Err(format!(
                "LEDGER_NATS_STREAM {:?}: a stream name is not empty and has no spaces, '.', '*', '>', '/' or '\\'",
                self.stream
            ));
        }
        let bad_token =
            |token: &str| token.is_empty() || token.contains(|c: char| c.is_whitespace() || matches!(c, '*' | '>'));
        if self.subject_prefix.split('.').any(bad_token) {
            return Err(format!(
                "LEDGER_NATS_SUBJECT_PREFIX {:?}: dot-separated tokens, none empty, with no spaces or wildcards",
                self.subject_prefix
            ));
        }
        Ok(())
    }

    /// The subject of one event.
    pub fn subject(&self, event_type: &str, stream_id: uuid::Uuid) -> String {
        format!("{}.{event_type}.{stream_id}", self.subject_prefix)
    }
}

/// Relays for as long as the process runs: a failure (NATS or PostgreSQL
/// away, the lock's connection lost) is logged and the relay starts over
/// from its checkpoint and the stream's last message.
pub async fn run(pool: PgPool, settings: RelaySettings) {
    loop {
        if let Err(error) = relay(&pool, &settings).await {
            tracing::warn!(error = format!("{error:#}"), "relay to NATS: starting over");
        }
        tokio::time::sleep(RETRY_WAIT).await;
    }
}

/// Takes the lock (waiting for another relay to let go), then publishes
/// page after page. Returns only on failure.
async fn relay(pool: &PgPool, settings: &RelaySettings) -> anyhow::Result<()> {
    // A connection of its own: the session lock lives as long as it does,
    // and it never goes back to the pool with the lock held.
    let mut connection = pool.acquire().await?.detach();
    loop {
        let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut connection)
            .await?;
        if ours {
            break;
        }
        tokio::time::sleep(STANDBY_POLL).await;
    }
    // A checkpoint lost in a crash only goes back: the resume below makes
    // that safe, so its commits need not wait for their fsync.
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut connection)
        .await?;
    let client = async_nats::ConnectOptions::new()
        .name("ledger relay")
        .connect(settings.url.as_str())
        .await
        .with_context(|| format!("connecting to NATS at {}", settings.url))?;
    let context = jetstream::new(client.clone());
    let mut stream = context
        .get_or_create_stream(stream::Config {
            name: settings.stream.clone(),
            subjects: vec![format!("{}.>", settings.subject_prefix)],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("opening the JetStream stream {}", settings.stream))?;

    sqlx::query("INSERT INTO process_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
        .bind(NAME)
        .execute(&mut connection)
        .await?;
    let checkpoint = read_checkpoint(&mut connection, NAME).await?;
    let mut cursor = checkpoint;
    let tail = stream_tail(&mut stream).await?;
    if let Some(last) = &tail.last {
        let ours: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events WHERE tx_id = $1::text::xid8 AND position = $2 \
                            AND stream_id = $3 AND version = $4)",
        )
        .bind(last.cursor.tx.to_string())
        .bind(last.cursor.position)
        .bind(last.stream_id)
        .bind(last.version)
        .fetch_one(&mut connection)
        .await?;
        anyhow::ensure!(
            ours,
            "the JetStream stream {}'s last message (position {}) is no event of this database: \
             was the database restored from an older backup, or is the stream another ledger's? \
             Refusing to publish (that would skip or reorder events); give the relay a new stream \
             (LEDGER_NATS_STREAM) or purge this one",
            settings.stream,
            last.cursor.position
        );
    }
    let mut sequence = tail.sequence;
    if let Some(published) = tail.last.map(|last| last.cursor)
        && published > cursor
    {
        tracing::info!(
            checkpoint = checkpoint.token(),
            stream = published.token(),
            "relay: the stream is ahead of the checkpoint; resuming after its last message"
        );
        cursor = published;
        save_checkpoint(&mut connection, NAME, cursor).await?;
    }
    tracing::info!(
        stream = settings.stream,
        after = cursor.token(),
        "relay: publishing the feed"
    );

    let mut rest = IDLE_WAIT;
    loop {
        let events = event_store::read_feed(&mut connection, cursor, PAGE_EVENTS).await?;
        let Some(last) = events.last().map(|e| e.cursor()) else {
            tokio::time::sleep(rest).await;
            rest = (rest * 2).min(MAX_IDLE_WAIT);
            // Still ours? A lost connection fails the next statement; ask
            // cheaply, so an idle relay notices too.
            connection.ping().await?;
            continue;
        };
        rest = IDLE_WAIT;
        // Publish the whole page, then wait for its acknowledgements: one
        // round trip per page, not per event. They arrive in order on one
        // connection, so the stream holds the page in feed order.
        let mut acks = Vec::with_capacity(events.len());
        // The server's limit, as of its latest INFO (a reconnect may change
        // it), and the stream's own, when it has one.
        let max_payload = match tail.max_message_bytes {
            Some(stream_max) => client.server_info().max_payload.min(stream_max),
            None => client.server_info().max_payload,
        };
        let mut before = cursor;
        for event in events {
            let subject = settings.subject(&event.event.event_type, event.event.stream_id);
            let id = event.event.position.to_string();
            let after = event.cursor();
            let mut view = FeedEventView::from(event);
            let mut payload = serde_json::to_vec(&view)?;
            let mut omitted = None;
            if payload.len() + HEADER_ROOM > max_payload {
                tracing::warn!(
                    position = view.position,
                    bytes = payload.len(),
                    max_payload,
                    "relay: an event larger than NATS takes (max_payload, or the stream's max_msg_size) goes without its data"
                );
                omitted = Some(payload.len());
                view.data = serde_json::Value::Null;
                payload = serde_json::to_vec(&view)?;
            }
            let mut message = PublishMessage::build()
                .payload(payload.into())
                .message_id(id)
                .expected_stream(&settings.stream)
                .expected_last_sequence(sequence)
                .header(CURSOR_HEADER, after.token().as_str())
                .header(BEFORE_HEADER, before.token().as_str());
            if let Some(bytes) = omitted {
                message = message.header(OMITTED_HEADER, bytes.to_string().as_str());
            }
            sequence += 1;
            acks.push((sequence, context.send_publish(subject, message).await?));
            before = after;
        }
        let mut published = 0_u64;
        for (expected, ack) in acks {
            let ack = ack.await.context("JetStream did not acknowledge a publish")?;
            // Out of step (another relay published meanwhile, during a
            // takeover): start over after what the stream holds.
            anyhow::ensure!(
                !ack.duplicate && ack.sequence == expected,
                "the stream moved under the relay (sequence {} for {expected}, duplicate: {})",
                ack.sequence,
                ack.duplicate
            );
            published += 1;
        }
        metrics::counter!(crate::observability::RELAY_PUBLISHED).increment(published);
        save_checkpoint(&mut connection, NAME, last).await?;
        cursor = last;
    }
}

/// What the relay needs to know of the stream before it publishes.
struct Tail {
    /// The stream's last sequence (0 when it never held a message).
    sequence: u64,
    /// Its last message, when it is still there and is the relay's.
    last: Option<LastMessage>,
    /// The stream's own limit on a message's size, when it has one.
    max_message_bytes: Option<usize>,
}

struct LastMessage {
    cursor: FeedCursor,
    stream_id: uuid::Uuid,
    version: i64,
}

/// The stream's last sequence and limits, and its last message's event
/// (it may have been removed by the stream's limits, or the stream purged:
/// then the checkpoint alone says where to resume).
async fn stream_tail(stream: &mut stream::Stream) -> anyhow::Result<Tail> {
    let info = stream.info().await.context("reading the JetStream stream's state")?;
    let sequence = info.state.last_sequence;
    let max_message_bytes = usize::try_from(info.config.max_message_size).ok().filter(|&n| n > 0);
    let mut tail = Tail {
        sequence,
        last: None,
        max_message_bytes,
    };
    if sequence == 0 {
        return Ok(tail);
    }
    let message = match stream.get_raw_message(sequence).await {
        Ok(message) => message,
        Err(error) if error.kind() == stream::RawMessageErrorKind::NoMessageFound => return Ok(tail),
        Err(error) => return Err(anyhow::Error::new(error).context("reading the stream's last message")),
    };
    let Some(value) = message.headers.get(CURSOR_HEADER) else {
        return Ok(tail);
    };
    let cursor = FeedCursor::parse(value.as_str())
        .with_context(|| format!("the stream's last message has a {CURSOR_HEADER} header that is no cursor"))?;
    #[derive(serde::Deserialize)]
    struct Envelope {
        stream_id: uuid::Uuid,
        version: i64,
    }
    let envelope: Envelope =
        serde_json::from_slice(&message.payload).context("the stream's last message is no event of the feed")?;
    tail.last = Some(LastMessage {
        cursor,
        stream_id: envelope.stream_id,
        version: envelope.version,
    });
    Ok(tail)
}

/// How far behind the log the relay is: its checkpoint's position and the
/// events after it. `None` when no relay ever ran on this database.
pub async fn lag(pool: &PgPool) -> Result<Option<(i64, i64)>, sqlx::Error> {
    crate::posting::checkpoint_lag(pool, NAME).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(stream: &str, prefix: &str) -> RelaySettings {
        RelaySettings {
            url: "nats://127.0.0.1:4222".to_owned(),
            stream: stream.to_owned(),
            subject_prefix: prefix.to_owned(),
        }
    }

    #[test]
    fn names_nats_would_refuse_are_refused() {
        assert!(settings("LEDGER", "ledger.events").validate().is_ok());
        assert!(settings("LEDGER", "bank").validate().is_ok());
        for stream in ["", "a.b", "a b", "a*", "a>", "a/b"] {
            assert!(settings(stream, "ledger.events").validate().is_err(), "{stream:?}");
        }
        for prefix in ["", "a..b", ".a", "a.", "a.*", "a.>", "a b"] {
            assert!(settings("LEDGER", prefix).validate().is_err(), "{prefix:?}");
        }
    }

    #[test]
    fn subjects_carry_the_type_and_the_stream() {
        let id = uuid::Uuid::nil();
        assert_eq!(
            settings("LEDGER", "ledger.events").subject("AccountOpened", id),
            "ledger.events.AccountOpened.00000000-0000-0000-0000-000000000000"
        );
    }
}
