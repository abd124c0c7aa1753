//! Connecting to PostgreSQL and bringing its schema up to date.

use std::time::Duration;

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
/// recently is handed out as it is: a ping before every use was a round
/// trip on the writer's critical path (about 0.4 ms of each batch under
/// load, see README, Performance).
pub const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

pub async fn connect(options: PgConnectOptions, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.connections_max)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for < IDLE_BEFORE_PING {
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
