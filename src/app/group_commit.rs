//! Group commit per account (DESIGN.md mechanism 2).
//!
//! Commands for one account that arrive while an append for it is in
//! flight queue up. When the append finishes, the next command's task
//! becomes the leader: it takes every queued command (up to a bound), loads
//! the account once, decides them one after the other against the state in
//! memory, and appends all their events — and their idempotency keys — in
//! one statement, one transaction, one fsync. Then it answers each caller
//! with its own result: some 201, some 422 when the money ran out midway.
//!
//! Batches form by themselves under load and cost nothing without it: a
//! lone command is a batch of one. Across processes, the append's expected
//! version still decides; a conflict reloads and decides the batch again.
//!
//! Every submission runs in its own task, so a client that disconnects
//! cancels neither its own command (once queued, it is decided exactly like
//! the others) nor a batch it happens to lead.
//!
//! A little over 500 lines (about 540), on purpose: the batch's decide-and-append
//! loop and its retry rules (conflict, key taken, failure) read best
//! side by side, and splitting them would scatter one state machine.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::oneshot;

use super::commands::{CommandKind, CommandView, Outcome, Render, decision_of, record_of};
use super::idempotency::{self, IdempotencyKey, Recorded};
use super::problems::{AppError, refusal_problem};
use super::queries::load_account;
use super::{CommandContext, account_id_for};
use crate::domain::{self, Account, Command, Iban};
use crate::event_store::{self, AppendError, IdempotencyRecord, NewEvent, StreamHead};
use crate::observability;

/// What a caller waits for.
type Answer = Result<Outcome<CommandView>, AppError>;

/// Bounds of a batch, configurable (`ledger serve --help`).
#[derive(Debug, Clone)]
pub struct GroupCommitSettings {
    /// Most commands decided and appended together.
    pub batch_commands_max: usize,
    /// Most transfers in one batch (a bulk counts its transfers, any other
    /// command one): bounds the memory and the statement size of a batch of
    /// large bulks. A single bulk above it still forms a batch of its own.
    pub batch_transfers_max: usize,
    /// How long a leader waits for more commands before deciding, when the
    /// account is contended (its previous batch held more than one command).
    /// Callers answered by the previous batch then make it into this one,
    /// instead of every other batch. A lone command never waits.
    pub batch_wait: Duration,
}

impl Default for GroupCommitSettings {
    fn default() -> GroupCommitSettings {
        GroupCommitSettings {
            batch_commands_max: 256,
            batch_transfers_max: 2_000,
            batch_wait: Duration::from_micros(500),
        }
    }
}

/// Counters for observing batching (and for tests to prove it happens).
#[derive(Debug, Default)]
pub struct GroupCommitStats {
    pub batches: AtomicU64,
    pub commands: AtomicU64,
    pub batch_commands_max_seen: AtomicU64,
}

impl GroupCommitStats {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.commands.load(Ordering::Relaxed),
            self.batch_commands_max_seen.load(Ordering::Relaxed),
        )
    }
}

struct Pending {
    ctx: CommandContext,
    /// The idempotency key, with the command's fingerprint.
    idempotency: Option<(IdempotencyKey, [u8; 32])>,
    iban: Iban,
    command: Command,
    render: Render,
    reply: oneshot::Sender<Answer>,
}

struct Stripe {
    queue: std::sync::Mutex<Vec<Pending>>,
    /// Held by the leader while it decides and appends a batch.
    commit: Arc<tokio::sync::Mutex<()>>,
    /// The state the last batch on this stripe left its account in, so the
    /// next batch need not load it. Only the leader (holding `commit`)
    /// touches it. If another process appended meanwhile, the append's
    /// expected version fails and the batch reloads.
    last: std::sync::Mutex<Option<(Iban, Account, StreamHead)>>,
    /// Whether the previous batch held more than one command.
    contended: std::sync::atomic::AtomicBool,
}

/// Accounts hash onto stripes; each stripe has one queue and one leader at
/// a time. Collisions only mean two accounts' batches take turns.
const STRIPES: usize = 1024;
/// Version conflicts tolerated before a batch gives up (only other
/// processes cause them).
const APPEND_ATTEMPTS_MAX: u32 = 64;

pub(crate) struct GroupCommit {
    pool: PgPool,
    settings: GroupCommitSettings,
    stripes: Vec<Stripe>,
    pub(crate) stats: GroupCommitStats,
}

impl GroupCommit {
    pub(crate) fn new(pool: PgPool, settings: GroupCommitSettings) -> GroupCommit {
        GroupCommit {
            pool,
            settings,
            stripes: (0..STRIPES)
                .map(|_| Stripe {
                    queue: std::sync::Mutex::new(Vec::new()),
                    commit: Arc::new(tokio::sync::Mutex::new(())),
                    last: std::sync::Mutex::new(None),
                    contended: std::sync::atomic::AtomicBool::new(false),
                })
                .collect(),
            stats: GroupCommitStats::default(),
        }
    }

    fn stripe_index(iban: &Iban) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        iban.hash(&mut hasher);
        (hasher.finish() as usize) % STRIPES
    }

    /// Queues a command and waits for its outcome, leading a batch when no
    /// other task is.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        ctx: CommandContext,
        idempotency: Option<(IdempotencyKey, [u8; 32])>,
        iban: Iban,
        command: Command,
        render: Render,
    ) -> Answer {
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            let index = GroupCommit::stripe_index(&iban);
            let (reply, mut outcome) = oneshot::channel();
            this.stripes[index].queue.lock().expect("queue lock").push(Pending {
                ctx,
                idempotency,
                iban,
                command,
                render,
                reply,
            });
            loop {
                let commit = Arc::clone(&this.stripes[index].commit);
                tokio::select! {
                    biased;
                    result = &mut outcome => {
                        return result.unwrap_or_else(|_| Err(AppError::Internal(anyhow::anyhow!("a batch ended without answering"))));
                    }
                    _turn = commit.lock_owned() => {
                        this.lead(index).await;
                    }
                }
            }
        });
        task.await
            .unwrap_or_else(|error| Err(AppError::Internal(anyhow::anyhow!("command task failed: {error}"))))
    }

    /// Takes the stripe's queued commands and commits them, account by account.
    async fn lead(&self, index: usize) {
        let stripe = &self.stripes[index];
        if !self.settings.batch_wait.is_zero() && stripe.contended.load(Ordering::Relaxed) {
            let queued = stripe.queue.lock().expect("queue lock").len();
            if queued < self.settings.batch_commands_max {
                tokio::time::sleep(self.settings.batch_wait).await;
            }
        }
        let batch: Vec<Pending> = {
            let mut queue = stripe.queue.lock().expect("queue lock");
            let mut take = 0;
            let mut transfers = 0;
            for pending in queue.iter().take(self.settings.batch_commands_max) {
                transfers += weight(&pending.command);
                if take > 0 && transfers > self.settings.batch_transfers_max {
                    break;
                }
                take += 1;
            }
            queue.drain(..take).collect()
        };
        stripe.contended.store(batch.len() > 1, Ordering::Relaxed);
        // Keep each account's commands in arrival order.
        let mut groups: Vec<(Iban, Vec<Pending>)> = Vec::new();
        for pending in batch {
            match groups.iter_mut().find(|(iban, _)| *iban == pending.iban) {
                Some((_, group)) => group.push(pending),
                None => groups.push((pending.iban.clone(), vec![pending])),
            }
        }
        for (iban, group) in groups {
            self.commit_group(index, &iban, group).await;
        }
    }

    async fn commit_group(&self, index: usize, iban: &Iban, group: Vec<Pending>) {
        let size = group.len() as u64;
        // Keys are first assumed new: the append's unique key on
        // idempotency_keys catches a repeat, and only then is the batch
        // decided again with its keys looked up. The common case costs one
        // statement per batch.
        let mut look_up_keys = false;
        for attempt in 0..APPEND_ATTEMPTS_MAX {
            let started = std::time::Instant::now();
            match self.try_group(index, iban, &group, look_up_keys).await {
                Ok(outcomes) => {
                    metrics::histogram!(observability::BATCH_DURATION).record(started.elapsed().as_secs_f64());
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats.commands.fetch_add(size, Ordering::Relaxed);
                    self.stats.batch_commands_max_seen.fetch_max(size, Ordering::Relaxed);
                    metrics::histogram!(observability::BATCH_COMMANDS).record(size as f64);
                    for (pending, outcome) in group.into_iter().zip(outcomes) {
                        record_outcome(&pending.command, &outcome);
                        // The caller may be gone; its command stands either way.
                        let _ = pending.reply.send(outcome);
                    }
                    return;
                }
                Err(BatchError::Conflict) => {
                    self.forget(index);
                    tracing::debug!(%iban, attempt, "version conflict, deciding the batch again");
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(20)))).await;
                }
                Err(BatchError::KeyTaken) if !look_up_keys => look_up_keys = true,
                Err(BatchError::KeyTaken) if group.len() > 1 => {
                    // Another process recorded one of these keys meanwhile:
                    // commit them one by one, so only that one replays.
                    self.forget(index);
                    for pending in group {
                        Box::pin(self.commit_group(index, iban, vec![pending])).await;
                    }
                    return;
                }
                Err(BatchError::KeyTaken) => {
                    // A batch of one: its key is now recorded; answer with it.
                    let pending = group.into_iter().next().expect("a batch of one");
                    let kind = CommandKind::of(&pending.command);
                    let outcome = match &pending.idempotency {
                        Some((key, hash)) => match idempotency::lookup(&self.pool, key).await {
                            Ok(Some(recorded)) => replay(kind, &recorded, hash),
                            Ok(None) => Err(AppError::Internal(anyhow::anyhow!(
                                "idempotency key taken but not found"
                            ))),
                            Err(error) => Err(error.into()),
                        },
                        None => Err(AppError::Internal(anyhow::anyhow!(
                            "idempotency conflict without a key"
                        ))),
                    };
                    let _ = pending.reply.send(outcome);
                    return;
                }
                Err(BatchError::Failed(error)) => {
                    self.forget(index);
                    // Every command of the batch shares the failure, and its
                    // kind: "nothing written" and "outcome unknown" stay
                    // what they are for each of them. Never retried here: a
                    // commit that may have happened is only safe to retry
                    // for a client holding the idempotency key.
                    for pending in group {
                        let outcome = Err(error.share());
                        record_outcome(&pending.command, &outcome);
                        let _ = pending.reply.send(outcome);
                    }
                    return;
                }
            }
        }
        for pending in group {
            let _ = pending.reply.send(Err(AppError::Internal(anyhow::anyhow!(
                "account {iban} still conflicting after {APPEND_ATTEMPTS_MAX} attempts"
            ))));
        }
    }

    /// Loads the account once, decides every command of the group against
    /// the state in memory, appends all their events in one statement.
    async fn try_group(
        &self,
        index: usize,
        iban: &Iban,
        group: &[Pending],
        look_up_keys: bool,
    ) -> Result<Vec<Answer>, BatchError> {
        let cached = self.stripes[index]
            .last
            .lock()
            .expect("cache lock")
            .as_ref()
            .filter(|(cached, _, _)| cached == iban)
            .map(|(_, account, head)| (account.clone(), *head));
        let loaded = match cached {
            Some(state) => Some(state),
            None => load_account(&self.pool, iban).await?,
        };
        let (mut state, head) = match loaded {
            Some((account, head)) => (Some(account), head),
            None => (None, StreamHead::EMPTY),
        };
        let keys: Vec<&IdempotencyKey> = group
            .iter()
            .filter_map(|p| p.idempotency.as_ref().map(|(key, _)| key))
            .collect();
        let recorded = if keys.is_empty() || !look_up_keys {
            HashMap::new()
        } else {
            idempotency::lookup_many(&self.pool, &keys)
                .await
                .map_err(AppendError::Database)?
        };

        let mut outcomes: Vec<Option<Answer>> = (0..group.len()).map(|_| None).collect();
        let mut events: Vec<NewEvent> = Vec::new();
        // Each appending command's last event, as an offset into `events`:
        // its position goes into the command's answer once appended.
        let mut last_events: Vec<Option<usize>> = vec![None; group.len()];
        let mut records: Vec<IdempotencyRecord> = Vec::new();
        // A key seen earlier in this batch: (index of its first command, request hash).
        let mut batch_keys: HashMap<&IdempotencyKey, (usize, [u8; 32])> = HashMap::new();
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        for (index, pending) in group.iter().enumerate() {
            if let Some((key, hash)) = &pending.idempotency {
                if let Some(recorded) = recorded.get(key) {
                    outcomes[index] = Some(replay(CommandKind::of(&pending.command), recorded, hash));
                    continue;
                }
                if let Some((first, first_hash)) = batch_keys.get(key) {
                    outcomes[index] = if first_hash == hash {
                        None
                    } else {
                        Some(Err(idempotency::key_reused().into()))
                    };
                    if first_hash == hash {
                        repeats.push((index, *first));
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
        let head = if events.is_empty() {
            head
        } else {
            // Acquired apart from the append, so that a failure to get a
            // connection (nothing sent: safe to retry) is never taken for
            // a connection lost in flight (outcome unknown).
            let mut connection = self.pool.acquire().await.map_err(AppError::from)?;
            let appended = event_store::append(
                &mut *connection,
                account_id_for(iban),
                head,
                &events,
                Utc::now(),
                &records,
            )
            .await?;
            for (outcome, last) in outcomes.iter_mut().zip(&last_events) {
                if let (Some(Ok(Outcome { result: Ok(view), .. })), Some(last)) = (outcome, last)
                    && let Some(position) = appended.positions.get(*last)
                {
                    view.at_position(*position);
                }
            }
            appended.head
        };
        if let Some(account) = &state {
            *self.stripes[index].last.lock().expect("cache lock") = Some((iban.clone(), account.clone(), head));
        }
        if !events.is_empty() {
            for new in &events {
                metrics::counter!(observability::EVENTS_APPENDED, "type" => new.event.event_type()).increment(1);
            }
        }
        // A repeated key within the batch gets its first command's answer.
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
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(AppError::Internal(anyhow::anyhow!("command left undecided")))))
            .collect())
    }
}

impl GroupCommit {
    /// Drops the stripe's cached state: the next batch loads it afresh.
    fn forget(&self, index: usize) {
        *self.stripes[index].last.lock().expect("cache lock") = None;
    }
}

/// A command's share of a batch's transfer budget.
fn weight(command: &Command) -> usize {
    match command {
        Command::TransferBulk(bulk) => bulk.transfers.len().max(1),
        _ => 1,
    }
}

/// Counts a command's outcome: accepted, replayed, refused (by problem
/// type) or failed.
fn record_outcome(command: &Command, outcome: &Answer) {
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

/// Why a batch did not commit.
enum BatchError {
    /// Another writer appended to the stream: decide the batch again.
    Conflict,
    /// Another process recorded one of the batch's idempotency keys.
    KeyTaken,
    Failed(AppError),
}

impl From<AppendError> for BatchError {
    fn from(error: AppendError) -> BatchError {
        match error {
            AppendError::VersionConflict => BatchError::Conflict,
            AppendError::IdempotencyKeyTaken => BatchError::KeyTaken,
            AppendError::Database(error) => BatchError::Failed(error.into()),
            AppendError::OutcomeUnknown(error) => BatchError::Failed(AppError::OutcomeUnknown(
                anyhow::Error::new(error).context("the connection broke while the append was in flight"),
            )),
        }
    }
}

impl From<AppError> for BatchError {
    fn from(error: AppError) -> BatchError {
        BatchError::Failed(error)
    }
}

/// The recorded answer for a key, if the command is the one it was
/// recorded for; else the key is being reused (409).
fn replay(kind: CommandKind, recorded: &Recorded, hash: &[u8; 32]) -> Answer {
    if recorded.request_hash == hash.as_slice() {
        Ok(Outcome {
            result: decision_of(kind, recorded.status, &recorded.body, recorded.position)?,
            replayed: true,
        })
    } else {
        Err(idempotency::key_reused().into())
    }
}
