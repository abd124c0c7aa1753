//! Authentication: [`Authenticator`] turns a presented API key into a
//! [`Principal`], remembering verified keys in memory.
//!
//! Verified keys are cached in memory for at most [`CACHE_TTL`]; a trigger
//! on `api_keys` NOTIFYs every server of a change (revocation), which drops
//! the entry at once.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use uuid::Uuid;

use super::keys::{parse_token, secret_matches};
use super::{Actor, AuthMode, Principal, Scope};
use crate::app::AppError;
use crate::problem::{Problem, ProblemType};

/// Longest a verified key is trusted without asking the database again,
/// should a change notification be lost.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most keys cached; past it the cache starts over.
const CACHE_MAX: usize = 10_000;
/// The channel `api_keys`' trigger notifies on (migrations/0004).
const CHANGES_CHANNEL: &str = "ledger_api_keys";

struct Cached {
    hash: [u8; 32],
    scope: Scope,
    fetched: Instant,
}

/// Turns an `Authorization` header into a [`Principal`], or a 401.
pub struct Authenticator {
    pool: PgPool,
    mode: AuthMode,
    cache: RwLock<HashMap<Uuid, Cached>>,
    /// Counts every forgetting. A row read before a change was notified
    /// must not be cached after it: an entry is cached only if nothing was
    /// forgotten between the read and the insert.
    generation: AtomicU64,
}

pub fn unauthorized(detail: &str) -> Problem {
    Problem::new(ProblemType::Unauthorized, detail)
}

impl Authenticator {
    pub fn new(pool: PgPool, mode: AuthMode) -> Authenticator {
        Authenticator {
            pool,
            mode,
            cache: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// `authorization` is the header's raw value, if sent.
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Principal, AppError> {
        if self.mode == AuthMode::Disabled {
            return Ok(Principal::anonymous());
        }
        let Some(raw) = authorization else {
            return Err(unauthorized("send an API key as `Authorization: Bearer <key>`").into());
        };
        let invalid = || AppError::Client(unauthorized("the API key is not valid (unknown, revoked or mistyped)"));
        let token = std::str::from_utf8(raw)
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(invalid)?;
        let (id, secret) = parse_token(token).ok_or_else(invalid)?;
        let hit = {
            let cache = self.cache.read().expect("key cache lock");
            cache
                .get(&id)
                .filter(|c| c.fetched.elapsed() < CACHE_TTL)
                .map(|c| (c.hash, c.scope.clone()))
        };
        let (hash, scope) = match hit {
            Some(hit) => hit,
            None => {
                let generation = self.generation.load(Ordering::SeqCst);
                let row: Option<(Vec<u8>, String, Option<String>)> = sqlx::query_as(
                    "SELECT secret_hash, scope, account_iban FROM api_keys WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                // Unknown ids are not cached: the cache holds real keys only.
                let (hash, scope, iban) = row.ok_or_else(invalid)?;
                let hash: [u8; 32] = hash
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("api key {id} has a malformed hash"))?;
                let scope = Scope::from_columns(&scope, iban.as_deref())?;
                let mut cache = self.cache.write().expect("key cache lock");
                // Forgetting takes this lock too: the check and the insert
                // cannot straddle a change notification.
                if self.generation.load(Ordering::SeqCst) == generation {
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(
                        id,
                        Cached {
                            hash,
                            scope: scope.clone(),
                            fetched: Instant::now(),
                        },
                    );
                }
                (hash, scope)
            }
        };
        if !secret_matches(secret, &hash) {
            return Err(invalid());
        }
        Ok(Principal {
            actor: Actor::ApiKey(id),
            scope,
        })
    }

    fn forget(&self, id: Option<Uuid>) {
        let mut cache = self.cache.write().expect("key cache lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        match id {
            Some(id) => {
                cache.remove(&id);
            }
            None => cache.clear(),
        }
    }

    /// Listens for key changes for as long as the server runs, forgetting
    /// a changed key at once (everything, after a lost connection).
    pub async fn watch_changes(&self) {
        if self.mode == AuthMode::Disabled {
            return;
        }
        // A connection of its own: the listener must not take one of the
        // pool's, which may be tiny.
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with((*self.pool.connect_options()).clone());
        loop {
            let mut listener = match PgListener::connect_with(&listener_pool).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(error = %error, "key change listener cannot connect (revocations reach this server within 60 s until it does); retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(error) = listener.listen(CHANGES_CHANNEL).await {
                tracing::warn!(error = %error, "key change listener cannot LISTEN (revocations reach this server within 60 s until it does); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // Whatever changed while nobody listened is forgotten.
            self.forget(None);
            loop {
                match listener.try_recv().await {
                    // An unreadable payload (a TRUNCATE sends an empty one):
                    // forget every key.
                    Ok(Some(notification)) => self.forget(Uuid::parse_str(notification.payload()).ok()),
                    // The connection was lost: reconnect and LISTEN again
                    // above, and only then forget everything, so no change
                    // can slip between the forgetting and the listening.
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(error = %error, "key change listener lost; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }
}
