//! API keys: who is calling (authentication) and what they may do
//! (authorization). README "Security" is the user-facing contract.
//!
//! A key is `ldgr_<id>_<secret>`: the id (32 hex digits) names the row to
//! look up, the secret is 256 random bits (43 base64url characters). Only
//! SHA-256 of the secret is stored; a presented secret is hashed and the
//! two digests compared in constant time, so neither the lookup nor the
//! comparison tells an attacker how much of a guess was right.
//!
//! Verified keys are cached in memory for at most [`CACHE_TTL`]; a trigger
//! on `api_keys` NOTIFYs every server of a change (revocation), which drops
//! the entry at once.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::AppError;
use crate::domain::{Iban, IbanCheck};
use crate::problem::{Problem, ProblemType};

pub const TOKEN_PREFIX: &str = "ldgr_";
const ID_HEX_LEN: usize = 32;
const SECRET_BYTES: usize = 32;
/// 32 bytes in unpadded base64url.
const SECRET_TEXT_LEN: usize = 43;
/// Longest a verified key is trusted without asking the database again,
/// should a change notification be lost.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most keys cached; past it the cache starts over.
const CACHE_MAX: usize = 10_000;
/// The channel `api_keys`' trigger notifies on (migrations/0004).
const CHANGES_CHANNEL: &str = "ledger_api_keys";

/// `LEDGER_AUTH`: on unless turned off for a local experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuthMode {
    #[default]
    Enabled,
    Disabled,
}

/// What a key may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything: open accounts, deposits, every query, the feed, audits.
    Admin,
    /// Bulk transfers from this account, and queries on it.
    Account(Iban),
}

impl Scope {
    fn column(&self) -> (&'static str, Option<&str>) {
        match self {
            Scope::Admin => ("admin", None),
            Scope::Account(iban) => ("account", Some(iban.as_str())),
        }
    }

    fn from_columns(scope: &str, iban: Option<&str>) -> Result<Scope, anyhow::Error> {
        match (scope, iban) {
            ("admin", None) => Ok(Scope::Admin),
            ("account", Some(iban)) => Ok(Scope::Account(Iban::parse(iban, IbanCheck::Structure)?)),
            other => Err(anyhow::anyhow!("api_keys row with scope {other:?}")),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Account(iban) => write!(f, "account {iban}"),
        }
    }
}

/// Who acts: recorded in every event's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// A request authenticated with this API key.
    ApiKey(Uuid),
    /// The `ledger` CLI, run by someone with access to the database.
    Operator,
    /// A request while authentication is disabled (`LEDGER_AUTH=disabled`).
    Anonymous,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub actor: Actor,
    pub scope: Scope,
}

/// Something a caller asks to do, for [`Principal::authorize`].
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    OpenAccount,
    Deposit,
    Transfer { from: &'a Iban },
    ReadAccount(&'a Iban),
    ReadFeed,
    Audit,
}

impl Principal {
    pub fn operator() -> Principal {
        Principal {
            actor: Actor::Operator,
            scope: Scope::Admin,
        }
    }

    pub fn anonymous() -> Principal {
        Principal {
            actor: Actor::Anonymous,
            scope: Scope::Admin,
        }
    }

    pub fn key_id(&self) -> Option<Uuid> {
        match self.actor {
            Actor::ApiKey(id) => Some(id),
            Actor::Operator | Actor::Anonymous => None,
        }
    }

    /// The one place that says who may do what: 403 otherwise.
    pub fn authorize(&self, action: Action<'_>) -> Result<(), Problem> {
        let own = match (&self.scope, action) {
            (Scope::Admin, _) => return Ok(()),
            (Scope::Account(own), Action::Transfer { from: iban } | Action::ReadAccount(iban)) if own == iban => {
                return Ok(());
            }
            (Scope::Account(own), _) => own,
        };
        let what = match action {
            Action::OpenAccount => "open accounts",
            Action::Deposit => "make deposits",
            Action::Transfer { .. } => "transfer from another account",
            Action::ReadAccount(_) => "read another account",
            Action::ReadFeed => "read the event feed",
            Action::Audit => "run audits",
        };
        Err(Problem::new(
            ProblemType::Forbidden,
            format!("this API key acts for account {own} only; it may not {what}"),
        ))
    }

    /// Idempotency keys are remembered per API key (and apart for the CLI).
    pub fn idempotency_scope(&self) -> String {
        match self.actor {
            Actor::ApiKey(id) => id.to_string(),
            Actor::Operator => "operator".to_owned(),
            Actor::Anonymous => String::new(),
        }
    }

    /// The `actor` and `api_key_id` members of an event's metadata.
    pub fn metadata(&self) -> (&'static str, Option<String>) {
        match self.actor {
            Actor::ApiKey(id) => ("api_key", Some(id.to_string())),
            Actor::Operator => ("operator", None),
            Actor::Anonymous => ("anonymous", None),
        }
    }
}

// ---- keys ---------------------------------------------------------------

/// A key as listed (never with its secret).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct KeyInfo {
    pub id: Uuid,
    pub scope: String,
    pub account_iban: Option<String>,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key's full text, shown once. Its Debug output is redacted so it
/// cannot end up in a log by accident.
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `secret` hashes to `stored`, in time independent of where they
/// differ.
pub fn secret_matches(secret: &str, stored: &[u8]) -> bool {
    digest(secret).as_slice().ct_eq(stored).into()
}

/// Splits `ldgr_<id>_<secret>`; `None` for anything else.
pub fn parse_token(token: &str) -> Option<(Uuid, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    if rest.len() != ID_HEX_LEN + 1 + SECRET_TEXT_LEN || !rest.is_char_boundary(ID_HEX_LEN) {
        return None;
    }
    let (id, secret) = rest.split_at(ID_HEX_LEN);
    let secret = secret.strip_prefix('_')?;
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((Uuid::parse_str(id).ok()?, secret))
}

fn generate() -> Result<(Uuid, Secret, [u8; 32]), anyhow::Error> {
    let mut random = [0u8; SECRET_BYTES];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness for an API key: {e}"))?;
    let secret = URL_SAFE_NO_PAD.encode(random);
    let id = Uuid::now_v7();
    let token = format!("{TOKEN_PREFIX}{}_{secret}", id.simple());
    Ok((id, Secret(token), digest(&secret)))
}

/// Creates a key and returns it with its full text, which is not stored.
pub async fn create_key(pool: &PgPool, scope: &Scope, name: Option<&str>) -> Result<(KeyInfo, Secret), AppError> {
    insert_key(pool, scope, name).await
}

async fn insert_key<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    scope: &Scope,
    name: Option<&str>,
) -> Result<(KeyInfo, Secret), AppError> {
    let (id, secret, hash) = generate()?;
    let (scope_column, iban) = scope.column();
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO api_keys (id, secret_hash, scope, account_iban, name) VALUES ($1, $2, $3, $4, $5) \
         RETURNING created_at",
    )
    .bind(id)
    .bind(hash.as_slice())
    .bind(scope_column)
    .bind(iban)
    .bind(name)
    .fetch_one(executor)
    .await?;
    let info = KeyInfo {
        id,
        scope: scope_column.to_owned(),
        account_iban: iban.map(str::to_owned),
        name: name.map(str::to_owned),
        created_at,
        revoked_at: None,
    };
    Ok((info, secret))
}

/// Creates an admin key only if no key was ever created: the embedded
/// default's first start. Safe against concurrent starts.
pub async fn create_first_admin_key(pool: &PgPool) -> Result<Option<(KeyInfo, Secret)>, AppError> {
    let mut tx = pool.begin().await?;
    // Serialises concurrent first starts; released at commit.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('ledger_api_keys_first'))")
        .execute(&mut *tx)
        .await?;
    let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys)")
        .fetch_one(&mut *tx)
        .await?;
    if any {
        return Ok(None);
    }
    let created = insert_key(&mut *tx, &Scope::Admin, Some("first admin key")).await?;
    tx.commit().await?;
    Ok(Some(created))
}

/// What `revoke_key` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Now,
    Already,
    NoSuchKey,
}

pub async fn revoke_key(pool: &PgPool, id: Uuid) -> Result<Revoked, AppError> {
    let row: Option<(bool,)> = sqlx::query_as(
        "WITH old AS (SELECT id, revoked_at IS NOT NULL AS already FROM api_keys WHERE id = $1 FOR UPDATE) \
         UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now()) FROM old WHERE k.id = old.id \
         RETURNING old.already",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => Revoked::NoSuchKey,
        Some((true,)) => Revoked::Already,
        Some((false,)) => Revoked::Now,
    })
}

pub async fn list_keys(pool: &PgPool) -> Result<Vec<KeyInfo>, AppError> {
    Ok(sqlx::query_as(
        "SELECT id, scope, account_iban, name, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await?)
}

/// Whether any key could call the API (an active admin key exists).
pub async fn has_active_admin_key(pool: &PgPool) -> Result<bool, AppError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE scope = 'admin' AND revoked_at IS NULL)")
            .fetch_one(pool)
            .await?,
    )
}

// ---- authentication -----------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;

    fn iban(text: &str) -> Iban {
        Iban::parse(text, IbanCheck::Structure).unwrap()
    }

    #[test]
    fn tokens_round_trip_and_reject_lookalikes() {
        let (id, secret, hash) = generate().unwrap();
        let token = secret.expose();
        assert_eq!(token.len(), TOKEN_PREFIX.len() + ID_HEX_LEN + 1 + SECRET_TEXT_LEN);
        let (parsed, text) = parse_token(token).unwrap();
        assert_eq!(parsed, id);
        assert!(secret_matches(text, &hash));
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        for bad in [
            "",
            "ldgr_",
            &token[1..],
            &token[..token.len() - 1],
            &format!("{token}x"),
            &token.replacen("ldgr_", "LDGR_", 1),
            &token.replacen('_', "-", 2),
            &format!("ldgr_{}_{}", "g".repeat(32), &token[token.len() - 43..]),
        ] {
            assert!(parse_token(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_secret_matches_only_its_own_digest() {
        let (_, secret, hash) = generate().unwrap();
        let (_, text) = parse_token(secret.expose()).unwrap();
        assert!(secret_matches(text, &hash));
        // Wrong in the first character, in the last, and a truncated digest.
        let mut first = text.to_owned().into_bytes();
        first[0] = if first[0] == b'A' { b'B' } else { b'A' };
        let mut last = text.to_owned().into_bytes();
        let end = last.len() - 1;
        last[end] = if last[end] == b'A' { b'B' } else { b'A' };
        for wrong in [first, last] {
            assert!(!secret_matches(std::str::from_utf8(&wrong).unwrap(), &hash));
        }
        assert!(!secret_matches(text, &hash[..31]));
        assert!(!secret_matches(text, &[]));
    }

    #[test]
    fn two_keys_never_share_a_secret() {
        let (a, sa, _) = generate().unwrap();
        let (b, sb, _) = generate().unwrap();
        assert_ne!(a, b);
        assert_ne!(sa.expose(), sb.expose());
    }

    #[test]
    fn account_keys_reach_their_own_account_only() {
        let own = iban("FR1420041010050500013M02606");
        let other = iban("DE89370400440532013000");
        let key = Principal {
            actor: Actor::ApiKey(Uuid::now_v7()),
            scope: Scope::Account(own.clone()),
        };
        assert!(key.authorize(Action::Transfer { from: &own }).is_ok());
        assert!(key.authorize(Action::ReadAccount(&own)).is_ok());
        for action in [
            Action::Transfer { from: &other },
            Action::ReadAccount(&other),
            Action::OpenAccount,
            Action::Deposit,
            Action::ReadFeed,
            Action::Audit,
        ] {
            let problem = key.authorize(action).unwrap_err();
            assert_eq!(problem.status(), 403, "{action:?}");
        }
        for admin in [Principal::operator(), Principal::anonymous()] {
            for action in [
                Action::Transfer { from: &other },
                Action::ReadAccount(&other),
                Action::OpenAccount,
                Action::Deposit,
                Action::ReadFeed,
                Action::Audit,
            ] {
                assert!(admin.authorize(action).is_ok());
            }
        }
    }
}
