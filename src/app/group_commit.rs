//! Group commit across accounts (DESIGN.md mechanisms 2 and 11).
//!
//! About 740 lines: the lanes, the leader's batch
//! (take, decide, append, answer) and its retry on a conflict are one state
//! machine, read best in one place.
//!
//! Accounts hash onto a few **lanes**. Commands queued on a lane while an
//! append of it is in flight wait; when the append finishes, the next
//! command's task becomes the lane's leader: it takes every queued command
//! (within the bounds on commands, transfers and bytes), groups them by
//! account, loads every account it has no state for in one query, decides
//! each account's commands one after the other against its state in
//! memory, and appends every account's events — and the idempotency keys —
//! in **one statement, one transaction, one fsync**, each stream at its
//! own expected version. Then it answers each caller with its own result:
//! some 201, some 422 when the money ran out midway.
//!
//! Batches form by themselves under load and cost nothing without it: a
//! lone command is a batch of one. Whether the load falls on one account
//! or on a thousand, a batch is one round trip and one fsync.
//!
//! A conflict (another process, or the posting process, appended to one of
//! the streams) fails the statement; PostgreSQL names the stream, and only
//! that account's commands are decided again: the others keep their
//! decisions and go into the retried statement unchanged.
//!
//! Every submission runs in its own task, so a client that disconnects
//! cancels neither its own command (once queued, it is decided exactly like
//! the others) nor a batch it happens to lead.
//!
//! Over 500 lines (about 700), for now: the batch's decide-and-append loop
//! and its retry rules (conflict, key taken, failure) read best side by
//! side. The natural split, `decide_group` and the answer helpers into a
//! `batch.rs` beside this file, is due with the next change here.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::commands::{CommandKind, CommandView, Outcome, Render, decision_of, record_of};
use super::idempotency::{self, IdempotencyKey, Recorded};
use super::problems::{AppError, refusal_problem};
use super::queries::load_accounts;
use super::{CommandContext, account_id_for};
use crate::domain::{self, Account, Command, Iban};
use crate::event_store::{self, AppendError, IdempotencyRecord, NewEvent, StreamAppend, StreamHead};
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
    /// Most bytes of event payload in one batch, as estimated from the
    /// commands (a bulk's names and descriptions and a fixed share per
    /// transfer): bounds the statement's size when transfers carry long
    /// texts. A single command above it still forms a batch of its own.
    pub batch_bytes_max: usize,
    /// Lanes that commit at the same time; every account belongs to one.
    /// More lanes let PostgreSQL overlap statements; fewer make larger
    /// batches (fewer fsyncs).
    pub lanes: usize,
    /// How long a leader waits for more commands before deciding, when the
    /// lane is contended (its previous batch held more than one command).
    /// Callers answered by the previous batch then make it into this one,
    /// instead of every other batch. A lone command never waits.
    pub batch_wait: Duration,
    /// Most commands waiting in one lane's queue; past it, a command is
    /// refused at once (503 `/problems/unavailable`, nothing done) instead
    /// of queued: a flood cannot grow the queue without bound.
    pub queued_commands_max: usize,
}

impl Default for GroupCommitSettings {
    fn default() -> GroupCommitSettings {
        GroupCommitSettings {
            batch_commands_max: 256,
            batch_transfers_max: 2_000,
            batch_bytes_max: 4 << 20,
            lanes: 1,
            batch_wait: Duration::from_micros(500),
            queued_commands_max: 10_000,
        }
    }
}

/// Counters for observing batching (and for tests to prove it happens).
#[derive(Debug, Default)]
pub struct GroupCommitStats {
    pub batches: AtomicU64,
    pub commands: AtomicU64,
    pub batch_commands_max_seen: AtomicU64,
    /// The most accounts one committed batch appended to.
    pub batch_streams_max_seen: AtomicU64,
    /// Appends that failed on a stream another writer had moved.
    pub conflicts: AtomicU64,
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

/// One account's commands in a batch, in arrival order, and what was
/// decided for them (`None`: to decide, again after a conflict).
struct Group {
    iban: Iban,
    account_id: Uuid,
    pending: Vec<Pending>,
    decision: Option<Decision>,
}

/// What a group's commands came to against one state of their account.
struct Decision {
    outcomes: Vec<Option<Answer>>,
    events: Vec<NewEvent>,
    /// Each appending command's last event, as an offset into `events`:
    /// its position goes into the command's answer once appended.
    last_events: Vec<Option<usize>>,
    records: Vec<IdempotencyRecord>,
    /// A repeated key within the group: (its command, the first one's).
    repeats: Vec<(usize, usize)>,
    /// The stream's head it was decided at, and the state it leaves.
    head: StreamHead,
    state: Option<Account>,
}

struct Lane {
    queue: std::sync::Mutex<Vec<Pending>>,
    /// Held by the leader while it decides and appends a batch.
    commit: Arc<tokio::sync::Mutex<()>>,
    /// The state each account was left in by the last batch that touched
    /// it, so the next batch need not load it. Only the leader (holding
    /// `commit`) touches it. If another writer appended meanwhile, the
    /// append's expected version fails and that account is reloaded.
    cache: std::sync::Mutex<HashMap<Uuid, (Account, StreamHead)>>,
    /// Whether the previous batch held more than one command.
    contended: std::sync::atomic::AtomicBool,
}

/// Accounts a lane remembers; past it, the cache starts again (a miss
/// only costs a row in the batch's one load query).
const CACHE_MAX: usize = 16_384;
/// Version conflicts tolerated before a batch gives up (only other
/// writers cause them).
const APPEND_ATTEMPTS_MAX: u32 = 64;

pub(crate) struct GroupCommit {
    pool: PgPool,
    settings: GroupCommitSettings,
    lanes: Vec<Lane>,
    pub(crate) stats: GroupCommitStats,
}

impl GroupCommit {
    pub(crate) fn new(pool: PgPool, settings: GroupCommitSettings) -> GroupCommit {
        GroupCommit {
            pool,
            lanes: (0..settings.lanes.max(1))
                .map(|_| Lane {
                    queue: std::sync::Mutex::new(Vec::new()),
                    commit: Arc::new(tokio::sync::Mutex::new(())),
                    cache: std::sync::Mutex::new(HashMap::new()),
                    contended: std::sync::atomic::AtomicBool::new(false),
                })
                .collect(),
            settings,
            stats: GroupCommitStats::default(),
        }
    }

    fn lane_index(&self, iban: &Iban) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        iban.hash(&mut hasher);
        (hasher.finish() as usize) % self.lanes.len()
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
            let index = this.lane_index(&iban);
            let (reply, mut outcome) = oneshot::channel();
            {
                let mut queue = this.lanes[index].queue.lock().expect("queue lock");
                if queue.len() >= this.settings.queued_commands_max {
                    drop(queue);
                    crate::observability::record_shed("queue");
                    return Err(AppError::Client(crate::problem::Problem::new(
                        crate::problem::ProblemType::Unavailable,
                        format!(
                            "{} commands are already waiting to be committed; nothing was done, retry shortly",
                            this.settings.queued_commands_max
                        ),
                    )));
                }
                queue.push(Pending {
                    ctx,
                    idempotency,
                    iban,
                    command,
                    render,
                    reply,
                });
            }
            loop {
                let commit = Arc::clone(&this.lanes[index].commit);
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

    /// Takes the lane's queued commands (within the bounds) and commits
    /// them in one batch.
    async fn lead(&self, index: usize) {
        let lane = &self.lanes[index];
        if !self.settings.batch_wait.is_zero() && lane.contended.load(Ordering::Relaxed) {
            let queued = lane.queue.lock().expect("queue lock").len();
            if queued < self.settings.batch_commands_max {
                tokio::time::sleep(self.settings.batch_wait).await;
            }
        }
        let batch: Vec<Pending> = {
            let mut queue = lane.queue.lock().expect("queue lock");
            let (mut take, mut transfers, mut bytes) = (0, 0, 0);
            for pending in queue.iter().take(self.settings.batch_commands_max) {
                let (t, b) = weight(&pending.command);
                transfers += t;
                bytes += b;
                if take > 0 && (transfers > self.settings.batch_transfers_max || bytes > self.settings.batch_bytes_max)
                {
                    break;
                }
                take += 1;
            }
            queue.drain(..take).collect()
        };
        if batch.is_empty() {
            return;
        }
        lane.contended.store(batch.len() > 1, Ordering::Relaxed);
        // Keep each account's commands in arrival order.
        let mut groups: Vec<Group> = Vec::new();
        let mut by_account: HashMap<Uuid, usize> = HashMap::new();
        for pending in batch {
            let account_id = account_id_for(&pending.iban);
            let at = *by_account.entry(account_id).or_insert_with(|| {
                groups.push(Group {
                    iban: pending.iban.clone(),
                    account_id,
                    pending: Vec::new(),
                    decision: None,
                });
                groups.len() - 1
            });
            groups[at].pending.push(pending);
        }
        self.commit_batch(index, groups).await;
    }

    /// Decides every group that has no decision yet, appends all of them in
    /// one statement, and answers; retries as the module comment says.
    async fn commit_batch(&self, index: usize, mut groups: Vec<Group>) {
        // Keys are first assumed new: the append's unique key on
        // idempotency_keys catches a repeat, and only then is the batch
        // decided again with its keys looked up. The common case costs one
        // statement per batch.
        let mut look_up_keys = false;
        let started = std::time::Instant::now();
        for attempt in 0..APPEND_ATTEMPTS_MAX {
            if let Err(error) = self.decide(index, &mut groups, look_up_keys).await {
                return self.fail(index, groups, error);
            }
            match self.append(&mut groups).await {
                Ok(()) => {
                    metrics::histogram!(observability::BATCH_DURATION).record(started.elapsed().as_secs_f64());
                    let size: u64 = groups.iter().map(|g| g.pending.len() as u64).sum();
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats.commands.fetch_add(size, Ordering::Relaxed);
                    self.stats.batch_commands_max_seen.fetch_max(size, Ordering::Relaxed);
                    self.stats
                        .batch_streams_max_seen
                        .fetch_max(groups.len() as u64, Ordering::Relaxed);
                    metrics::histogram!(observability::BATCH_COMMANDS).record(size as f64);
                    metrics::histogram!(observability::BATCH_STREAMS).record(groups.len() as f64);
                    self.remember(index, &groups);
                    for group in groups {
                        answer(group);
                    }
                    return;
                }
                Err(BatchError::Conflict(stream)) => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    // Only the stream that moved is decided again; the
                    // others keep their decisions (their states are ours).
                    let moved: Vec<Uuid> = match stream {
                        Some(stream) if groups.iter().any(|g| g.account_id == stream) => vec![stream],
                        _ => groups.iter().map(|g| g.account_id).collect(),
                    };
                    for group in groups.iter_mut().filter(|g| moved.contains(&g.account_id)) {
                        group.decision = None;
                    }
                    self.forget(index, &moved);
                    tracing::debug!(?moved, attempt, "version conflict, deciding those accounts again");
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(20)))).await;
                }
                Err(BatchError::KeyTaken) if !look_up_keys => {
                    look_up_keys = true;
                    for group in &mut groups {
                        group.decision = None;
                    }
                }
                Err(BatchError::KeyTaken) if groups.len() > 1 || groups[0].pending.len() > 1 => {
                    // Another process recorded one of these keys meanwhile:
                    // commit the commands one by one, so only that one replays.
                    let ids: Vec<Uuid> = groups.iter().map(|g| g.account_id).collect();
                    self.forget(index, &ids);
                    for group in groups {
                        for pending in group.pending {
                            let single = vec![Group {
                                iban: group.iban.clone(),
                                account_id: group.account_id,
                                pending: vec![pending],
                                decision: None,
                            }];
                            Box::pin(self.commit_batch(index, single)).await;
                        }
                    }
                    return;
                }
                Err(BatchError::KeyTaken) => {
                    // A command alone: its key is now recorded; answer with it.
                    let group = groups.pop().expect("a batch of one");
                    let pending = group.pending.into_iter().next().expect("a batch of one");
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
                Err(BatchError::Failed(error)) => return self.fail(index, groups, error),
            }
        }
        for group in groups {
            for pending in group.pending {
                let _ = pending.reply.send(Err(AppError::Internal(anyhow::anyhow!(
                    "account {} still conflicting after {APPEND_ATTEMPTS_MAX} attempts",
                    group.iban
                ))));
            }
        }
    }

    /// Every command of the batch shares the failure, and its kind:
    /// "nothing written" and "outcome unknown" stay what they are for each
    /// of them. Never retried here: a commit that may have happened is only
    /// safe to retry for a client holding the idempotency key.
    fn fail(&self, index: usize, groups: Vec<Group>, error: AppError) {
        let ids: Vec<Uuid> = groups.iter().map(|g| g.account_id).collect();
        self.forget(index, &ids);
        for group in groups {
            for pending in group.pending {
                let outcome = Err(error.share());
                record_outcome(&pending.command, &outcome);
                let _ = pending.reply.send(outcome);
            }
        }
    }

    /// Decides the groups that have no decision: their accounts' states from
    /// the lane's cache, or all of the missing ones in one query.
    async fn decide(&self, index: usize, groups: &mut [Group], look_up_keys: bool) -> Result<(), AppError> {
        let undecided: Vec<usize> = (0..groups.len()).filter(|&i| groups[i].decision.is_none()).collect();
        if undecided.is_empty() {
            return Ok(());
        }
        let mut states: HashMap<Uuid, (Account, StreamHead)> = {
            let cache = self.lanes[index].cache.lock().expect("cache lock");
            undecided
                .iter()
                .filter_map(|&i| {
                    let id = groups[i].account_id;
                    cache.get(&id).map(|state| (id, state.clone()))
                })
                .collect()
        };
        let missing: Vec<Uuid> = undecided
            .iter()
            .map(|&i| groups[i].account_id)
            .filter(|id| !states.contains_key(id))
            .collect();
        if !missing.is_empty() {
            states.extend(load_accounts(&self.pool, &missing).await?);
        }
        let recorded = if look_up_keys {
            let keys: Vec<&IdempotencyKey> = undecided
                .iter()
                .flat_map(|&i| groups[i].pending.iter())
                .filter_map(|p| p.idempotency.as_ref().map(|(key, _)| key))
                .collect();
            if keys.is_empty() {
                HashMap::new()
            } else {
                idempotency::lookup_many(&self.pool, &keys).await?
            }
        } else {
            HashMap::new()
        };
        for i in undecided {
            let group = &mut groups[i];
            let (state, head) = match states.remove(&group.account_id) {
                Some((account, head)) => (Some(account), head),
                None => (None, StreamHead::EMPTY),
            };
            group.decision = Some(decide_group(&group.iban, &group.pending, state, head, &recorded));
        }
        Ok(())
    }

    /// Appends every group's events in one statement, on a connection
    /// acquired apart from it (so that a failure to get one, with nothing
    /// sent, is never taken for a connection lost in flight), and puts the
    /// positions into the answers.
    async fn append(&self, groups: &mut [Group]) -> Result<(), BatchError> {
        let appends: Vec<(usize, StreamAppend<'_>)> = groups
            .iter()
            .enumerate()
            .filter_map(|(i, group)| {
                let decision = group.decision.as_ref().expect("decided");
                (!decision.events.is_empty()).then_some((
                    i,
                    StreamAppend {
                        stream_id: group.account_id,
                        head: decision.head,
                        events: &decision.events,
                        records: &decision.records,
                    },
                ))
            })
            .collect();
        if appends.is_empty() {
            return Ok(());
        }
        // In stream order: batches of two servers that share streams then
        // take their row locks in the same order, which keeps them from
        // deadlocking on each other (a deadlock is still retried).
        let mut appends = appends;
        appends.sort_by_key(|(_, append)| append.stream_id);
        let (indices, appends): (Vec<usize>, Vec<StreamAppend<'_>>) = appends.into_iter().unzip();
        let mut connection = self.pool.acquire().await.map_err(AppError::from)?;
        let sent = std::time::Instant::now();
        let appended = event_store::append_many(&mut *connection, &appends, Utc::now()).await?;
        metrics::histogram!(observability::BATCH_APPEND_DURATION).record(sent.elapsed().as_secs_f64());
        drop(appends);
        for (i, stream) in indices.into_iter().zip(appended) {
            let decision = groups[i].decision.as_mut().expect("decided");
            for (outcome, last) in decision.outcomes.iter_mut().zip(&decision.last_events) {
                if let (Some(Ok(Outcome { result: Ok(view), .. })), Some(last)) = (outcome, last)
                    && let Some(position) = stream.positions.get(*last)
                {
                    view.at_position(*position);
                }
            }
            for new in &decision.events {
                metrics::counter!(observability::EVENTS_APPENDED, "type" => new.event.event_type()).increment(1);
            }
            decision.head = stream.head;
        }
        Ok(())
    }

    /// Keeps the states a committed batch left its accounts in.
    fn remember(&self, index: usize, groups: &[Group]) {
        let mut cache = self.lanes[index].cache.lock().expect("cache lock");
        if cache.len() + groups.len() > CACHE_MAX {
            cache.clear();
        }
        for group in groups {
            let decision = group.decision.as_ref().expect("decided");
            if let Some(account) = &decision.state {
                cache.insert(group.account_id, (account.clone(), decision.head));
            }
        }
    }

    /// Drops cached states: the next batch loads those accounts afresh.
    fn forget(&self, index: usize, accounts: &[Uuid]) {
        let mut cache = self.lanes[index].cache.lock().expect("cache lock");
        for id in accounts {
            cache.remove(id);
        }
    }
}

/// Decides one account's commands one after the other against its state.
fn decide_group(
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
    }
}

/// Answers every command of a committed group; a repeated key within it
/// gets its first command's answer.
fn answer(group: Group) {
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

/// A command's share of a batch's budgets: transfers (a bulk counts its
/// transfers, any other command one), and an estimate of its events'
/// payload bytes.
fn weight(command: &Command) -> (usize, usize) {
    match command {
        Command::TransferBulk(bulk) => (
            bulk.transfers.len().max(1),
            256 + bulk.organization_name.len()
                + bulk
                    .transfers
                    .iter()
                    .map(|t| 224 + t.counterparty_name.len() + t.description.len())
                    .sum::<usize>(),
        ),
        _ => (1, 512),
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
    /// Another writer appended to a stream (this one, when PostgreSQL says
    /// which): decide it again.
    Conflict(Option<Uuid>),
    /// Another process recorded one of the batch's idempotency keys.
    KeyTaken,
    Failed(AppError),
}

impl From<AppendError> for BatchError {
    fn from(error: AppendError) -> BatchError {
        match error {
            AppendError::VersionConflict(stream) => BatchError::Conflict(stream),
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
