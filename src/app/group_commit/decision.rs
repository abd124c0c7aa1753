//! A batch's decisions: one account's commands decided one after the
//! other against its state, and the answers that go out once the batch
//! has committed (see the parent module).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;

use super::pipeline::Link;
use super::{Answer, Group, Pending};
use crate::app::AppError;
use crate::app::commands::{CommandKind, Outcome, decision_of, record_of};
use crate::app::idempotency::{self, IdempotencyKey, Recorded};
use crate::app::problems::refusal_problem;
use crate::domain::{self, Account, Command, Iban};
use crate::event_store::{IdempotencyRecord, NewEvent, StreamHead};
use crate::observability;

/// What a group's commands came to against one state of their account.
pub(super) struct Decision {
    pub(super) outcomes: Vec<Option<Answer>>,
    pub(super) events: Vec<NewEvent>,
    /// Each appending command's last event, as an offset into `events`:
    /// its position goes into the command's answer once appended.
    pub(super) last_events: Vec<Option<usize>>,
    pub(super) records: Vec<IdempotencyRecord>,
    /// A repeated key within the group: (its command, the first one's).
    pub(super) repeats: Vec<(usize, usize)>,
    /// The stream's head it was decided at, and the state it leaves.
    pub(super) head: StreamHead,
    pub(super) state: Option<Account>,
    /// The batch in flight whose outcome the state it was decided on came
    /// from, if it had not committed yet: the decision stands only if that
    /// batch commits.
    pub(super) basis: Option<Arc<Link>>,
}

/// Decides one account's commands one after the other against its state.
pub(super) fn decide_group(
    iban: &Iban,
    group: &[Pending],
    mut state: Option<Account>,
    head: StreamHead,
    recorded: &HashMap<IdempotencyKey, Recorded>,
) -> Decision {
    let mut outcomes: Vec<Option<Answer>> = (0..group.len()).map(|_| None).collect();
    let mut events: Vec<NewEvent> = Vec::new();
    let mut last_events: Vec<Option<usize>> = vec![None; group.len()];
    let mut records: Vec<IdempotencyRecord> = Vec::new();
    // A key seen earlier in this group: (index of its first command, request hash).
    let mut batch_keys: HashMap<&IdempotencyKey, (usize, [u8; 32])> = HashMap::new();
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    for (index, pending) in group.iter().enumerate() {
        if let Some((key, hash)) = &pending.idempotency {
            if let Some(recorded) = recorded.get(key) {
                outcomes[index] = Some(replay(CommandKind::of(&pending.command), recorded, hash));
                continue;
            }
            if let Some((first, first_hash)) = batch_keys.get(key) {
                if first_hash == hash {
                    repeats.push((index, *first));
                } else {
                    outcomes[index] = Some(Err(idempotency::key_reused().into()));
                }
                continue;
            }
        }
        let decided = match domain::decide(state.as_ref(), &pending.command) {
            Ok(decided) => decided,
            Err(refusal) => {
                outcomes[index] = Some(Err(refusal_problem(&refusal, iban).into()));
                continue;
            }
        };
        let decision = match (pending.render)(state.as_ref(), &decided) {
            Ok(decision) => decision,
            Err(error) => {
                outcomes[index] = Some(Err(error));
                continue;
            }
        };
        state = Some(domain::evolve(state.take(), &decided));
        let (actor, api_key_id) = pending.ctx.principal.metadata();
        let metadata = json!({
            "request_id": pending.ctx.request_id,
            "idempotency_key": pending.idempotency.as_ref().map(|(key, _)| key.as_str()),
            "command": CommandKind::of(&pending.command).name(),
            "actor": actor,
            "api_key_id": api_key_id,
        });
        events.extend(decided.into_iter().map(|event| NewEvent {
            event,
            metadata: metadata.clone(),
        }));
        last_events[index] = events.len().checked_sub(1);
        if let Some((key, hash)) = &pending.idempotency {
            // Recorded only when a key may ask for it again.
            let (status, body) = record_of(&decision);
            records.push(IdempotencyRecord {
                scope: key.scope().to_owned(),
                key: key.as_str().to_owned(),
                request_hash: *hash,
                response_status: status,
                response_body: body,
                last_version: head.version + events.len() as i64,
            });
            batch_keys.insert(key, (index, *hash));
        }
        outcomes[index] = Some(Ok(Outcome {
            result: decision,
            replayed: false,
        }));
    }
    Decision {
        outcomes,
        events,
        last_events,
        records,
        repeats,
        head,
        state,
        basis: None,
    }
}

/// Answers every command of a committed group; a repeated key within it
/// gets its first command's answer.
pub(super) fn answer(group: Group) {
    let Decision {
        mut outcomes, repeats, ..
    } = group.decision.expect("decided");
    for (index, first) in repeats {
        outcomes[index] = Some(match &outcomes[first] {
            Some(Ok(outcome)) => Ok(Outcome {
                replayed: true,
                ..outcome.clone()
            }),
            Some(Err(AppError::Client(problem))) => Err(AppError::Client(problem.clone())),
            _ => Err(AppError::Internal(anyhow::anyhow!(
                "the first command with this key failed"
            ))),
        });
    }
    for (pending, outcome) in group.pending.into_iter().zip(outcomes) {
        let outcome = outcome.unwrap_or_else(|| Err(AppError::Internal(anyhow::anyhow!("command left undecided"))));
        record_outcome(&pending.command, &outcome);
        // The caller may be gone; its command stands either way.
        let _ = pending.reply.send(outcome);
    }
}

/// Counts a command's outcome: accepted, replayed, refused (by problem
/// type) or failed.
pub(super) fn record_outcome(command: &Command, outcome: &Answer) {
    let outcome = match outcome {
        Ok(outcome) if outcome.replayed => "replayed".to_owned(),
        Ok(Outcome { result: Ok(_), .. }) => "accepted".to_owned(),
        // A recorded refusal, by status (`refused_422`); one that records
        // nothing, by problem type.
        Ok(Outcome {
            result: Err(problem), ..
        }) => format!("refused_{}", problem.status()),
        Err(AppError::Client(problem)) => format!("refused_{}", problem.kind.slug()),
        Err(AppError::Unavailable(_)) => "unavailable".to_owned(),
        Err(AppError::OutcomeUnknown(_)) => "outcome_unknown".to_owned(),
        Err(AppError::Internal(_)) => "failed".to_owned(),
    };
    let command = CommandKind::of(command).name();
    metrics::counter!(observability::COMMANDS, "command" => command, "outcome" => outcome).increment(1);
}

/// The recorded answer for a key, if the command is the one it was
/// recorded for; else the key is being reused (409).
pub(super) fn replay(kind: CommandKind, recorded: &Recorded, hash: &[u8; 32]) -> Answer {
    if recorded.request_hash == hash.as_slice() {
        Ok(Outcome {
            result: decision_of(kind, recorded.status, &recorded.body, recorded.position)?,
            replayed: true,
        })
    } else {
        Err(idempotency::key_reused().into())
    }
}
