//! The API key store: the token format, secrets and their digests, and
//! creating, revoking and listing keys in `api_keys`.
//!
//! A key is `ldgr_<id>_<secret>`: the id (32 hex digits) names the row to
//! look up, the secret is 256 random bits (43 base64url characters). Only
//! SHA-256 of the secret is stored; a presented secret is hashed and the
//! two digests compared in constant time, so neither the lookup nor the
//! comparison tells an attacker how much of a guess was right.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::Scope;
use crate::app::AppError;

pub const TOKEN_PREFIX: &str = "ldgr_";
const ID_HEX_LEN: usize = 32;
const SECRET_BYTES: usize = 32;
/// 32 bytes in unpadded base64url.
const SECRET_TEXT_LEN: usize = 43;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
