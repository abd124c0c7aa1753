//! `ledger keys create|list|revoke`: API keys, printed once on creation.

use std::process::ExitCode;

use clap::Subcommand;
use sqlx::PgPool;

use crate::app::auth::{self, Revoked, Scope};
use crate::domain::IbanCheck;

#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// Create a key and print it, once, on stdout: only its hash is stored.
    #[command(group(clap::ArgGroup::new("scope").required(true).args(["admin", "account"])))]
    Create {
        /// Everything: open accounts, deposits, every query, the event feed, audits.
        #[arg(long)]
        admin: bool,
        /// Bulk transfers from this account (IBAN) and queries on it, nothing else.
        #[arg(long, value_name = "IBAN")]
        account: Option<String>,
        /// A label to tell keys apart in `ledger keys list`.
        #[arg(long)]
        name: Option<String>,
    },
    /// Every key, active or revoked (never their secrets).
    List,
    /// Revoke a key: every server refuses it from the next request on.
    Revoke {
        /// The key's id (from `keys create` or `keys list`).
        id: uuid::Uuid,
    },
}

pub(super) async fn run(pool: &PgPool, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Create { account, name, .. } => {
            let scope = match account {
                None => Scope::Admin,
                // Shape only, as for lookups: an account stays reachable
                // whatever LEDGER_IBAN_CHECK says today.
                Some(text) => match crate::domain::Iban::parse(&text, IbanCheck::Structure) {
                    Ok(iban) => Scope::Account(iban),
                    Err(error) => {
                        eprintln!("ledger: --account {error}");
                        return Ok(ExitCode::from(1));
                    }
                },
            };
            if let Scope::Account(iban) = &scope {
                let opened = crate::app::queries::account_exists(pool, crate::app::account_id_for(iban)).await?;
                if !opened {
                    eprintln!("ledger: note: no account {iban} is open yet; the key works once it is");
                }
            }
            let (info, secret) = auth::create_key(pool, &scope, name.as_deref()).await?;
            eprintln!(
                "created API key {} ({scope}); the key is printed on stdout, this once (only a hash is stored)",
                info.id
            );
            println!("{}", secret.expose());
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::List => {
            let keys = auth::list_keys(pool).await?;
            println!(
                "{:<36}  {:<7}  {:<27}  {:<20}  {:<20}  name",
                "id", "scope", "account", "created", "revoked"
            );
            let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
            for key in keys {
                println!(
                    "{:<36}  {:<7}  {:<27}  {:<20}  {:<20}  {}",
                    key.id,
                    key.scope,
                    key.account_iban.as_deref().unwrap_or("-"),
                    time(key.created_at),
                    key.revoked_at.map_or("-".to_owned(), time),
                    key.name.as_deref().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke { id } => match auth::revoke_key(pool, id).await? {
            Revoked::Now => {
                println!("revoked API key {id}");
                Ok(ExitCode::SUCCESS)
            }
            Revoked::Already => {
                println!("API key {id} was already revoked");
                Ok(ExitCode::SUCCESS)
            }
            Revoked::NoSuchKey => {
                eprintln!("ledger: no API key {id}");
                Ok(ExitCode::from(1))
            }
        },
    }
}
