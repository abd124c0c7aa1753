//! The command handlers: open an account, deposit, book a bulk. Each builds
//! the domain command from its typed request, fingerprints it for its
//! idempotency key, and hands it to the account's group commit, which
//! decides and appends it; the answer comes back as a typed [`Outcome`].

use uuid::Uuid;

use super::problems::AppError;
use super::queries::load_account;
use super::requests::{BulkTransferRequest, DepositRequest, OpenAccountRequest};
use super::views::{AccountView, BulkTransferView, DepositView};
use super::{CommandContext, Ledger, account_id_for};
use crate::domain::{
    self, Account, Command, Currency, DepositCommand, Event, Iban, OpenAccountCommand, TransferBulkCommand,
    TransferLine, format_amount,
};
use crate::problem::{FieldError, Problem, ProblemType};

/// What a command came to: accepted (its view), or refused with a problem
/// that is part of the record (an insufficient-funds bulk, SPEC §2.3).
/// `replayed` when its idempotency key answered it from that record.
///
/// Refusals that record nothing (validation, unknown account, an IBAN
/// already open) are `Err(AppError::Client)` instead: the command left no
/// trace.
#[derive(Debug, Clone)]
pub struct Outcome<V> {
    pub result: Result<V, Problem>,
    pub replayed: bool,
}

/// The view of any command, as the group commit carries it and as its
/// idempotency record holds it (JSON).
#[derive(Debug, Clone)]
pub(crate) enum CommandView {
    Account(AccountView),
    Deposit(DepositView),
    Bulk(BulkTransferView),
}

/// A command's decided answer: its view, or a recorded refusal.
pub(crate) type Decision = Result<CommandView, Problem>;

/// Renders a command's answer from the account's state before it and the
/// events it decided.
pub(crate) type Render = Box<dyn Fn(Option<&Account>, &[Event]) -> Result<Decision, AppError> + Send + Sync>;

/// Which command a record belongs to, to read it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommandKind {
    OpenAccount,
    Deposit,
    TransferBulk,
}

impl CommandKind {
    pub(crate) fn of(command: &Command) -> CommandKind {
        match command {
            Command::OpenAccount(_) => CommandKind::OpenAccount,
            Command::Deposit(_) => CommandKind::Deposit,
            Command::TransferBulk(_) => CommandKind::TransferBulk,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            CommandKind::OpenAccount => "OpenAccount",
            CommandKind::Deposit => "Deposit",
            CommandKind::TransferBulk => "TransferBulk",
        }
    }
}

/// The record of a decision kept with an idempotency key: a status (the
/// view's 201, or the refusal's problem status) and the JSON document.
pub(crate) fn record_of(decision: &Decision) -> (u16, String) {
    match decision {
        Ok(view) => {
            // Views are plain structs of strings and numbers.
            let body = match view {
                CommandView::Account(view) => serde_json::to_string(view),
                CommandView::Deposit(view) => serde_json::to_string(view),
                CommandView::Bulk(view) => serde_json::to_string(view),
            };
            (201, body.expect("view serialises"))
        }
        Err(problem) => (problem.status(), problem.to_json()),
    }
}

impl CommandView {
    /// The view with the log position of its command's last event (known
    /// once the append has run; not part of the recorded JSON).
    pub(crate) fn at_position(&mut self, position: i64) {
        match self {
            CommandView::Account(view) => view.position = Some(position),
            CommandView::Deposit(view) => view.position = Some(position),
            CommandView::Bulk(view) => view.position = Some(position),
        }
    }
}

/// A recorded decision read back, for a replay, with the position recorded
/// beside it.
pub(crate) fn decision_of(
    kind: CommandKind,
    status: u16,
    body: &str,
    position: Option<i64>,
) -> Result<Decision, AppError> {
    let unreadable =
        |error: serde_json::Error| AppError::Internal(anyhow::anyhow!("unreadable recorded answer: {error}"));
    if !(200..300).contains(&status) {
        return Ok(Err(serde_json::from_str::<Problem>(body).map_err(unreadable)?));
    }
    let mut view = match kind {
        CommandKind::OpenAccount => CommandView::Account(serde_json::from_str(body).map_err(unreadable)?),
        CommandKind::Deposit => CommandView::Deposit(serde_json::from_str(body).map_err(unreadable)?),
        CommandKind::TransferBulk => CommandView::Bulk(serde_json::from_str(body).map_err(unreadable)?),
    };
    if let Some(position) = position {
        view.at_position(position);
    }
    Ok(Ok(view))
}

impl Outcome<CommandView> {
    /// The outcome with the view this command's kind has.
    fn expect<V>(self, pick: impl FnOnce(CommandView) -> Option<V>) -> Result<Outcome<V>, AppError> {
        let result = match self.result {
            Ok(view) => Ok(pick(view).ok_or_else(|| {
                AppError::Internal(anyhow::anyhow!("a command answered with another command's view"))
            })?),
            Err(problem) => Err(problem),
        };
        Ok(Outcome {
            result,
            replayed: self.replayed,
        })
    }
}

impl Ledger {
    pub async fn open_account(
        &self,
        ctx: &CommandContext,
        request: OpenAccountRequest,
    ) -> Result<Outcome<AccountView>, AppError> {
        ctx.principal.authorize(super::auth::Action::OpenAccount)?;
        let fingerprint = request.fingerprint();
        let account_id = account_id_for(&request.iban);
        let command = Command::OpenAccount(OpenAccountCommand {
            account_id,
            organization_name: request.organization_name,
            iban: request.iban.clone(),
            bic: request.bic,
            currency: request.currency,
        });
        let render: Render = Box::new(move |state, events| {
            let account = domain::evolve(state.cloned(), events);
            Ok(Ok(CommandView::Account(AccountView::of(&account, None))))
        });
        self.execute(ctx, &request.iban, fingerprint, command, render)
            .await?
            .expect(|view| match view {
                CommandView::Account(view) => Some(view),
                _ => None,
            })
    }

    pub async fn deposit(
        &self,
        ctx: &CommandContext,
        iban: &Iban,
        request: DepositRequest,
    ) -> Result<Outcome<DepositView>, AppError> {
        ctx.principal.authorize(super::auth::Action::Deposit)?;
        let fingerprint = request.fingerprint(iban);
        let deposit_id = Uuid::now_v7();
        // The account's currency decides how many digits the amount may have,
        // so the command is built once the account is known.
        let account = load_account(self.pool(), iban).await?.map(|(account, _)| account);
        let currency = request
            .currency
            .or(account.as_ref().map(|a| a.currency))
            .unwrap_or(Currency::EUR);
        let amount_cents = request
            .amount
            .to_minor(currency)
            .map_err(|e| Problem::validation(vec![FieldError::new("amount", e.to_string())]))?;
        let command = Command::Deposit(DepositCommand {
            deposit_id,
            amount_cents,
            currency,
            reference: request.reference.clone(),
        });
        let reference = request.reference;
        let render: Render = Box::new(move |state, events| {
            let account = domain::evolve(state.cloned(), events);
            Ok(Ok(CommandView::Deposit(DepositView {
                transaction_id: deposit_id,
                account_id: account.account_id,
                iban: account.iban.to_string(),
                amount: format_amount(amount_cents, currency),
                amount_cents,
                currency: currency.code().to_owned(),
                reference: reference.clone(),
                balance: format_amount(account.balance_cents, account.currency),
                balance_cents: account.balance_cents,
                version: account.version,
                position: None,
            })))
        });
        self.execute(ctx, iban, fingerprint, command, render)
            .await?
            .expect(|view| match view {
                CommandView::Deposit(view) => Some(view),
                _ => None,
            })
    }

    pub async fn transfer_bulk(
        &self,
        ctx: &CommandContext,
        request: BulkTransferRequest,
    ) -> Result<Outcome<BulkTransferView>, AppError> {
        let fingerprint = request.fingerprint();
        self.transfer_bulk_with(ctx, request, fingerprint).await
    }

    /// A bulk whose idempotency record carries `fingerprint`: its own, or
    /// that of the payment file it belongs to.
    pub(crate) async fn transfer_bulk_with(
        &self,
        ctx: &CommandContext,
        request: BulkTransferRequest,
        fingerprint: [u8; 32],
    ) -> Result<Outcome<BulkTransferView>, AppError> {
        ctx.principal.authorize(super::auth::Action::Transfer {
            from: &request.organization_iban,
        })?;
        let bulk_id = Uuid::now_v7();
        let command = Command::TransferBulk(TransferBulkCommand {
            bulk_id,
            organization_name: request.organization_name,
            organization_bic: request.organization_bic,
            transfers: request
                .credit_transfers
                .into_iter()
                .map(|t| TransferLine {
                    transfer_id: Uuid::now_v7(),
                    amount_cents: t.amount_cents,
                    currency: t.currency,
                    counterparty_name: t.counterparty_name,
                    counterparty_iban: t.counterparty_iban,
                    counterparty_bic: t.counterparty_bic,
                    description: t.description,
                    end_to_end_id: t.end_to_end_id,
                })
                .collect(),
        });
        let render: Render = Box::new(render_bulk);
        self.execute(ctx, &request.organization_iban, fingerprint, command, render)
            .await?
            .expect(|view| match view {
                CommandView::Bulk(view) => Some(view),
                _ => None,
            })
    }

    /// Decides and appends a command through the account's group commit;
    /// the answer is rendered before the append so it can be recorded with
    /// the events under the idempotency key, in the same statement.
    async fn execute(
        &self,
        ctx: &CommandContext,
        iban: &Iban,
        fingerprint: [u8; 32],
        command: Command,
        render: Render,
    ) -> Result<Outcome<CommandView>, AppError> {
        let idempotency = ctx.idempotency_key.clone().map(|key| (key, fingerprint));
        self.group_commit
            .submit(ctx.clone(), idempotency, iban.clone(), command, render)
            .await
    }
}

/// A bulk's answer: booked (201), or refused for lack of funds (recorded).
fn render_bulk(state: Option<&Account>, events: &[Event]) -> Result<Decision, AppError> {
    let account = domain::evolve(state.cloned(), events);
    match events {
        [
            Event::BulkTransferBooked {
                bulk_id,
                currency,
                total_cents,
                balance_after_cents,
                transfers,
            },
        ] => Ok(Ok(CommandView::Bulk(BulkTransferView {
            bulk_id: *bulk_id,
            account_id: account.account_id,
            iban: account.iban.to_string(),
            transfer_count: transfers.len(),
            transfer_ids: transfers.iter().map(|t| t.transfer_id).collect(),
            currency: currency.code().to_owned(),
            total: format_amount(*total_cents, *currency),
            total_cents: *total_cents,
            balance_after: format_amount(*balance_after_cents, *currency),
            balance_after_cents: *balance_after_cents,
            version: account.version,
            position: None,
        }))),
        [
            Event::BulkTransferRejected {
                bulk_id,
                currency,
                requested_cents,
                available_cents,
                ..
            },
        ] => Ok(Err(Problem::new(
            ProblemType::InsufficientFunds,
            format!(
                "the balance of {} {currency} does not cover the bulk total of {} {currency}; nothing was booked",
                format_amount(*available_cents, *currency),
                format_amount(*requested_cents, *currency),
            ),
        )
        .with("bulk_id", bulk_id.to_string())
        .with("currency", currency.code())
        .with("requested", format_amount(*requested_cents, *currency))
        .with("requested_cents", *requested_cents)
        .with("available", format_amount(*available_cents, *currency))
        .with("available_cents", *available_cents))),
        other => Err(AppError::Internal(anyhow::anyhow!(
            "bulk decided unexpected events: {other:?}"
        ))),
    }
}
