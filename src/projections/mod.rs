//! The projection engine. Read-model definitions live in the top-level
//! `projections/` folder, one SQL file per projection: its tables and a
//! set-based `projection_<name>_apply(events[])` function saying how each
//! event type changes them. The event store calls those functions inline,
//! in the append's statement; a rebuild will call them over ranges of the
//! log.

use sqlx::PgPool;

/// A read model: its name and its SQL definition.
#[derive(Debug, Clone, Copy)]
pub struct Projection {
    pub name: &'static str,
    pub definition: &'static str,
}

/// Every projection, in the order they are installed.
pub const PROJECTIONS: &[Projection] = &[
    Projection {
        name: "balances",
        definition: include_str!("../../projections/balances.sql"),
    },
    Projection {
        name: "transactions",
        definition: include_str!("../../projections/transactions.sql"),
    },
];

/// Any constant works, as long as every installer uses the same one.
const INSTALL_LOCK: i64 = 0x6c65_6467_6572_0001;

/// Creates the projections' tables when missing and (re)defines their apply
/// functions. Idempotent; serialised across processes by an advisory lock.
pub async fn install(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INSTALL_LOCK)
        .execute(&mut *tx)
        .await?;
    for projection in PROJECTIONS {
        sqlx::raw_sql(projection.definition)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
