//! Connecting to PostgreSQL and bringing its schema up to date.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connections_max: u32,
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> PoolSettings {
        PoolSettings {
            connections_max: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// A pooled connection idle for this long is pinged before it is handed
/// out, so that one PostgreSQL dropped meanwhile (a restart, an idle
/// timeout) is replaced before a statement is sent on it. One used more
/// recently is handed out as it is, unless a connection was lost since it
/// went idle ([`note_connection_lost`]): a ping before every use was a
/// round trip on the writer's critical path (about 0.4 ms of each batch
/// under load, see README, Performance).
pub const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// When a connection was last seen lost, in microseconds after [`epoch`]
/// plus one (0: never).
static CONNECTION_LOST_AT: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Records that a statement found its connection broken (PostgreSQL
/// restarted, crashed, or ended the backend): every pooled connection idle
/// since then is pinged before its next use, however recently it was
/// used, so the others the same event killed are replaced instead of
/// failing a statement each.
pub fn note_connection_lost() {
    let at = epoch().elapsed().as_micros() as u64 + 1;
    CONNECTION_LOST_AT.fetch_max(at, Ordering::Relaxed);
}

/// Whether a connection idle for `idle_for` should be pinged before use.
fn needs_ping(idle_for: Duration) -> bool {
    if idle_for >= IDLE_BEFORE_PING {
        return true;
    }
    match CONNECTION_LOST_AT.load(Ordering::Relaxed) {
        0 => false,
        at => {
            let lost_ago = epoch().elapsed().saturating_sub(Duration::from_micros(at - 1));
            idle_for >= lost_ago
        }
    }
}

pub async fn connect(options: PgConnectOptions, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.connections_max)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if !needs_ping(meta.idle_for) {
                    return Ok(true);
                }
                match connection.ping().await {
                    Ok(()) => Ok(true),
                    Err(error) => {
                        tracing::info!(%error, "an idle connection no longer answers; opening another");
                        Ok(false)
                    }
                }
            })
        })
        .connect_with(options)
        .await
}

/// Applies pending migrations (the event store) and installs the
/// projections. Safe to run from several processes at once.
///
/// On a connection of its own, outside the pool: schema changes are not
/// bound by the requests' statement timeout (not even the first statement,
/// which a `SET` after connecting would be) nor by the pool's acquire wait.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    // Startup options apply in order: this one overrides the pool's.
    let options = (*pool.connect_options()).clone().options([("statement_timeout", "0")]);
    let mut connection = PgConnection::connect_with(&options).await?;
    MIGRATOR.run(&mut connection).await?;
    crate::projections::install(&mut connection).await?;
    connection.close().await?;
    Ok(())
}

/// Whether the database answers and every migration is applied.
pub async fn ready(pool: &PgPool) -> anyhow::Result<()> {
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await?;
    let expected = MIGRATOR.iter().count() as i64;
    anyhow::ensure!(applied >= expected, "{applied} of {expected} migrations applied");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_idle_since_before_a_loss_is_pinged_and_one_used_since_is_not() {
        assert!(needs_ping(IDLE_BEFORE_PING), "idle long enough");
        std::thread::sleep(Duration::from_millis(20));
        note_connection_lost();
        assert!(needs_ping(Duration::from_millis(10)), "went idle before the loss");
        std::thread::sleep(Duration::from_millis(20));
        assert!(!needs_ping(Duration::from_millis(5)), "used after the loss");
        assert!(needs_ping(Duration::from_millis(200)), "went idle before the loss");
    }
}
