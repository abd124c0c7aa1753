//! Payment files (SPEC §10): a document of several bulks, each from its own
//! account, booked in document order, each all or nothing on its own. The
//! format (pain.001) is the edge's business; here a file is typed bulk
//! commands under one message id.
//!
//! Idempotency: the message id is the document's key, in the scope of the
//! API key that sent it. Each bulk is recorded under a key of its own
//! derived from it (the first bulk's is the message id itself, so a JSON
//! command that used the same key conflicts), every one with the whole
//! document's fingerprint. So the same document again replays every
//! recorded answer, and another document under the same message id is a
//! 409 before anything of it is booked.

use serde_json::json;

use super::commands::Outcome;
use super::idempotency::{self, IdempotencyKey};
use super::queries::load_account;
use super::requests::BulkTransferRequest;
use super::views::BulkTransferView;
use super::{AppError, CommandContext, Ledger};
use crate::canonical_json;
use crate::problem::{Problem, ProblemType};

/// A payment file, parsed: its message id and its bulks, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentFile {
    pub msg_id: String,
    /// What kind of file (`pain.001.001.09`), quoted back in the answer.
    pub message_name: String,
    /// Transactions in the whole file.
    pub transactions: usize,
    pub payments: Vec<FilePayment>,
}

/// One bulk of a file (a pain.001 `PmtInf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePayment {
    /// The file's own id for it (`PmtInfId`).
    pub id: String,
    pub request: BulkTransferRequest,
}

/// Why a bulk of a file was not booked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentRefusal {
    InsufficientFunds,
    UnknownAccount,
    /// The account exists, under another BIC.
    BicMismatch,
    /// The account exists, under another organization name.
    NameMismatch,
    CurrencyMismatch,
    /// Anything else a bulk can be refused for (a balance limit).
    Other,
}

/// What became of one bulk of a file.
#[derive(Debug, Clone)]
pub struct PaymentOutcome {
    pub id: String,
    pub transactions: usize,
    pub result: Result<BulkTransferView, (PaymentRefusal, Problem)>,
}

/// What became of a whole file.
#[derive(Debug, Clone)]
pub struct FileOutcome {
    pub msg_id: String,
    pub message_name: String,
    pub transactions: usize,
    pub payments: Vec<PaymentOutcome>,
    /// Every bulk was answered from its record (the same file again).
    pub replayed: bool,
    /// The file's fingerprint: a status report's own id derives from it.
    pub fingerprint: [u8; 32],
}

impl PaymentFile {
    /// The digest of the whole file as commands: its message id and each
    /// bulk's id and fingerprint.
    pub fn fingerprint(&self) -> [u8; 32] {
        let payments: Vec<_> = self
            .payments
            .iter()
            .map(|p| json!({"id": p.id, "bulk": hex::encode(p.request.fingerprint())}))
            .collect();
        canonical_json::digest(&json!({
            "command": "payment_file",
            "msg_id": self.msg_id,
            "payments": payments,
        }))
    }
}

impl Ledger {
    /// Books a payment file: authorizes every bulk first, refuses the file
    /// if its message id was used for another one, then books each bulk
    /// through the same path as `POST /v1/transfer/bulk`.
    pub async fn transfer_file(&self, ctx: &CommandContext, file: PaymentFile) -> Result<FileOutcome, AppError> {
        for payment in &file.payments {
            ctx.principal.authorize(super::auth::Action::Transfer {
                from: &payment.request.organization_iban,
            })?;
        }
        let fingerprint = file.fingerprint();
        let scope = ctx.principal.idempotency_scope();
        let keys: Vec<IdempotencyKey> = (0..file.payments.len())
            .map(|index| IdempotencyKey::for_file_part(scope.clone(), &file.msg_id, index))
            .collect();
        let recorded = idempotency::lookup_many(self.pool(), &keys.iter().collect::<Vec<_>>())
            .await
            .map_err(|e| AppError::Unavailable(e.into()))?;
        if recorded.values().any(|r| r.request_hash != fingerprint) {
            return Err(AppError::Client(Problem::new(
                ProblemType::IdempotencyKeyReused,
                format!(
                    "MsgId {:?} was already used for a different document (or as the Idempotency-Key of another request)",
                    file.msg_id
                ),
            )));
        }
        let mut payments = Vec::with_capacity(file.payments.len());
        let mut replayed = true;
        for (payment, key) in file.payments.into_iter().zip(keys) {
            let part = CommandContext {
                idempotency_key: Some(key),
                ..ctx.clone()
            };
            let transactions = payment.request.credit_transfers.len();
            let iban = payment.request.organization_iban.clone();
            let bic = payment.request.organization_bic.clone();
            let result = match self.transfer_bulk_with(&part, payment.request, fingerprint).await {
                Ok(Outcome { result, replayed: r }) => {
                    replayed &= r;
                    match result {
                        Ok(view) => Ok(view),
                        Err(problem) => Err((refusal_of(&problem), problem)),
                    }
                }
                // Refusals that record nothing: the account is unknown, or
                // is not this organization's, or holds another currency.
                Err(AppError::Client(problem)) if problem.kind == ProblemType::IdempotencyKeyReused => {
                    return Err(AppError::Client(problem));
                }
                Err(AppError::Client(problem)) => {
                    replayed = false;
                    let mut refusal = refusal_of(&problem);
                    if refusal == PaymentRefusal::UnknownAccount {
                        // Which part of the identity did not match.
                        refusal = match load_account(self.pool(), &iban).await? {
                            Some((account, _)) if bic.as_ref().is_some_and(|b| *b != account.bic) => {
                                PaymentRefusal::BicMismatch
                            }
                            Some(_) => PaymentRefusal::NameMismatch,
                            None => PaymentRefusal::UnknownAccount,
                        };
                    }
                    Err((refusal, problem))
                }
                Err(other) => return Err(other),
            };
            payments.push(PaymentOutcome {
                id: payment.id,
                transactions,
                result,
            });
        }
        Ok(FileOutcome {
            msg_id: file.msg_id,
            message_name: file.message_name,
            transactions: file.transactions,
            payments,
            replayed,
            fingerprint,
        })
    }
}

fn refusal_of(problem: &Problem) -> PaymentRefusal {
    match problem.kind {
        ProblemType::InsufficientFunds => PaymentRefusal::InsufficientFunds,
        ProblemType::NotFound => PaymentRefusal::UnknownAccount,
        ProblemType::CurrencyMismatch => PaymentRefusal::CurrencyMismatch,
        _ => PaymentRefusal::Other,
    }
}
