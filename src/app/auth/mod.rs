//! API keys' policy: who may do what. [`Principal::authorize`] is the one
//! table of it; [`Scope`], [`Actor`], [`Action`] and [`AuthMode`] are what it
//! decides on. README "Security" is the user-facing contract.
//!
//! API keys say who is calling (authentication) and what they may do
//! (authorization). The rest of the module, re-exported here so every item
//! stays at `crate::app::auth::X`:
//!
//! * `keys.rs` — the key store: the token format, digests, creating,
//!   revoking and listing keys.
//! * `cache.rs` — [`Authenticator`]: verifying a presented key, with an
//!   in-memory cache that a LISTEN/NOTIFY watcher keeps current.

mod cache;
mod keys;

use uuid::Uuid;

use crate::domain::{Iban, IbanCheck};
use crate::problem::{Problem, ProblemType};

pub use cache::{Authenticator, CACHE_TTL, unauthorized};
pub use keys::{
    KeyInfo, Revoked, Secret, TOKEN_PREFIX, create_first_admin_key, create_key, has_active_admin_key, list_keys,
    parse_token, revoke_key, secret_matches,
};

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
    Transfer {
        from: &'a Iban,
    },
    ReadAccount(&'a Iban),
    ReadFeed,
    Audit,
    /// The trial balance: every account's money at once.
    ReadLedger,
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
            Action::ReadLedger => "read the trial balance",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn iban(text: &str) -> Iban {
        Iban::parse(text, IbanCheck::Structure).unwrap()
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
