//! Group commit across accounts (DESIGN.md mechanisms 2 and 11), with
//! pipelined batches.
//!
//! Accounts hash onto a few **lanes**. Commands queued on a lane wait for
//! its turn; the next command's task to get it becomes the lane's leader:
//! it takes every queued command (within the bounds on commands, transfers
//! and bytes), groups them by account, loads every account it has no state
//! for in one query, decides each account's commands one after the other
//! against its state in memory, and appends every account's events — and
//! the idempotency keys — in **one statement, one transaction, one fsync**,
//! each stream at its own expected version. Then it answers each caller
//! with its own result: some 201, some 422 when the money ran out midway.
//!
//! Batches form by themselves under load and cost nothing without it: a
//! lone command is a batch of one. Whether the load falls on one account
//! or on a thousand, a batch is one round trip and one fsync.
//!
//! **Pipelining** (`pipeline_depth` batches of a lane in flight; 1 by
//! default). The leader gives up the turn once its batch is decided, and
//! the next leader decides the next batch on the states this one leaves
//! (the lane's cache holds them, marked with the batch, a `pipeline::Link`,
//! until it commits). Three rules keep that exact:
//! - a batch's statement is sent only after the statement of the batch
//!   before it has run, so row locks are taken in batch order and a batch
//!   never waits for a later one (no wait between them PostgreSQL cannot
//!   see);
//! - a batch decided on states of batches still in flight (its *bases*)
//!   runs in a transaction of its own and commits only after they have;
//! - if one of them fails, it rolls back and every decision resting on the
//!   failed batch is decided again (`tests/api/concurrency.rs`,
//!   `a_batch_decided_on_one_in_flight_is_decided_again_when_that_one_fails`).
//!
//! No answer goes out before its batch's commit, and so before its bases'.
//!
//! A conflict (another process, or the posting process, appended to one of
//! the streams) fails the statement; PostgreSQL names the stream, and only
//! that account's commands are decided again: the others keep their
//! decisions and go into the retried statement unchanged.
//!
//! Every submission runs in its own task, so a client that disconnects
//! cancels neither its own command (once queued, it is decided exactly like
//! the others) nor a batch it happens to lead. The caller waits for its
//! answer, not for that task: without pipelining a leader goes straight on
//! to the commands queued while its batch committed (one task leads batch
//! after batch while the lane stays busy, instead of waking the next
//! command's task for each batch), and its own caller is answered with its
//! batch like everyone else's.
//!
//! About 800 lines: the lanes, the leader's batch (take, decide, append,
//! answer) and its retries (conflict, key taken, a basis failed) are one
//! state machine, read best in one place; how one account's commands are
//! decided and answered is in `decision.rs`, the links in `pipeline.rs`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore, oneshot};
use uuid::Uuid;

use super::commands::{CommandKind, CommandView, Outcome, Render};
use super::idempotency::{self, IdempotencyKey};
use super::problems::AppError;
use super::queries::load_accounts;
use super::{CommandContext, account_id_for};
use crate::domain::{Account, Command, Iban};
use crate::event_store::{self, AppendError, PreparedAppend, StreamAppend, StreamAppended, StreamHead};
use crate::observability;

mod decision;
mod pipeline;

use decision::{Decision, answer, decide_group, record_outcome, replay};
use pipeline::{Link, Phase, Settle};

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
    /// instead of every other batch. A lone command never waits. 0 (the
    /// default): never wait. On this 2-core machine 500 µs (in practice
    /// ~1 ms: tokio's timer ticks in milliseconds) made every scenario
    /// slower once a batch's own cost had come down: see README, Performance.
    pub batch_wait: Duration,
    /// Most commands waiting in one lane's queue; past it, a command is
    /// refused at once (503 `/problems/unavailable`, nothing done) instead
    /// of queued: a flood cannot grow the queue without bound.
    pub queued_commands_max: usize,
    /// Batches of one lane in flight at once (pipelining): the next batch
    /// is taken and decided — on the states the one before leaves — while
    /// that one runs and commits; its statement runs after the other's, and
    /// it commits only after the batches it was decided on have. 1: each
    /// batch waits for the one before to finish.
    pub pipeline_depth: usize,
}

impl Default for GroupCommitSettings {
    fn default() -> GroupCommitSettings {
        GroupCommitSettings {
            batch_commands_max: 256,
            batch_transfers_max: 2_000,
            batch_bytes_max: 4 << 20,
            lanes: 1,
            batch_wait: Duration::ZERO,
            queued_commands_max: 10_000,
            pipeline_depth: 1,
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
    /// Dropped with the command once it is answered: tells the command's
    /// task it need not wait for the lane's turn any longer.
    _answered: oneshot::Sender<()>,
}

/// One account's commands in a batch, in arrival order, and what was
/// decided for them (`None`: to decide, again after a conflict).
struct Group {
    iban: Iban,
    account_id: Uuid,
    pending: Vec<Pending>,
    decision: Option<Decision>,
}

/// An account's state as a batch leaves it, for the next batch to decide
/// on without a query.
#[derive(Clone)]
struct Cached {
    account: Account,
    head: StreamHead,
    /// The batch that leaves it so, while it may still fail.
    by: Option<Arc<Link>>,
}

struct Lane {
    queue: std::sync::Mutex<Vec<Pending>>,
    /// The lane's turn: held by the leader while it takes and decides a
    /// batch, released once the batch is on its way when batches are
    /// pipelined; without pipelining, kept through the append, and by the
    /// leader for the next batch while commands are queued.
    commit: Arc<tokio::sync::Mutex<()>>,
    /// Batches of the lane in flight at most (`pipeline_depth`): taken
    /// under the turn, kept until the batch is answered.
    in_flight: Arc<Semaphore>,
    /// The batch decided last (with events to append): the next batch's
    /// statement is sent once this one's has run.
    tail: std::sync::Mutex<Option<Arc<Link>>>,
    /// The state each account was left in by the last batch that touched
    /// it, committed or in flight, so the next batch need not load it.
    /// Touched under the turn, and by a batch that fails (which removes its
    /// own entries). If another writer appended meanwhile, the append's
    /// expected version fails and that account is reloaded.
    cache: std::sync::Mutex<HashMap<Uuid, Cached>>,
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

/// A leader's hold on its lane: the turn, and a place in the pipeline.
type Turn = (OwnedMutexGuard<()>, OwnedSemaphorePermit);

impl GroupCommit {
    pub(crate) fn new(pool: PgPool, settings: GroupCommitSettings) -> GroupCommit {
        GroupCommit {
            pool,
            lanes: (0..settings.lanes.max(1))
                .map(|_| Lane {
                    queue: std::sync::Mutex::new(Vec::new()),
                    commit: Arc::new(tokio::sync::Mutex::new(())),
                    in_flight: Arc::new(Semaphore::new(settings.pipeline_depth.max(1))),
                    tail: std::sync::Mutex::new(None),
                    cache: std::sync::Mutex::new(HashMap::new()),
                    contended: std::sync::atomic::AtomicBool::new(false),
                })
                .collect(),
            settings,
            stats: GroupCommitStats::default(),
        }
    }

    /// Commands queued in every lane, not yet taken into a batch.
    pub(crate) fn queued(&self) -> usize {
        self.lanes
            .iter()
            .map(|lane| lane.queue.lock().expect("queue lock").len())
            .sum()
    }

    fn lane_index(&self, iban: &Iban) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        iban.hash(&mut hasher);
        (hasher.finish() as usize) % self.lanes.len()
    }

    /// Queues a command and waits for its outcome; the command's own task
    /// leads a batch when the lane's turn comes to it first.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        ctx: CommandContext,
        idempotency: Option<(IdempotencyKey, [u8; 32])>,
        iban: Iban,
        command: Command,
        render: Render,
    ) -> Answer {
        let index = self.lane_index(&iban);
        let (reply, outcome) = oneshot::channel();
        // Resolves once the command is answered (its `Pending` dropped).
        let (answered_tx, mut answered) = oneshot::channel::<()>();
        {
            let mut queue = self.lanes[index].queue.lock().expect("queue lock");
            if queue.len() >= self.settings.queued_commands_max {
                drop(queue);
                crate::observability::record_shed("queue");
                return Err(AppError::Client(crate::problem::Problem::new(
                    crate::problem::ProblemType::Unavailable,
                    format!(
                        "{} commands are already waiting to be committed; nothing was done, retry shortly",
                        self.settings.queued_commands_max
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
                _answered: answered_tx,
            });
        }
        // The command's own task, apart from the caller's: it leads a
        // batch when the lane's turn comes to it before the command is
        // answered, and a caller that goes away cancels neither.
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let commit = Arc::clone(&this.lanes[index].commit);
                tokio::select! {
                    biased;
                    _ = &mut answered => return,
                    turn = commit.lock_owned() => this.lead(index, turn).await,
                }
            }
        });
        outcome
            .await
            .unwrap_or_else(|_| Err(AppError::Internal(anyhow::anyhow!("a batch ended without answering"))))
    }

    /// The lane's turn, then a place in its pipeline (always in that order,
    /// so that no holder of a place ever waits for the turn).
    async fn take_turn(&self, index: usize) -> Turn {
        let lane = &self.lanes[index];
        let turn = Arc::clone(&lane.commit).lock_owned().await;
        let place = Arc::clone(&lane.in_flight)
            .acquire_owned()
            .await
            .expect("the pipeline's semaphore is never closed");
        (turn, place)
    }

    /// Takes the lane's queued commands (within the bounds) and commits
    /// them in one batch; without pipelining, goes on with the commands
    /// queued meanwhile for as long as there are any, so that the next
    /// batch is taken the moment the last one has committed, not once
    /// another task has been woken and scheduled (about 0.2–0.4 ms of every
    /// batch under load).
    async fn lead(&self, index: usize, mut turn: OwnedMutexGuard<()>) {
        let lane = &self.lanes[index];
        let chained = self.settings.pipeline_depth <= 1;
        loop {
            // Waiting here for a place in the pipeline lets commands gather.
            let place = Arc::clone(&lane.in_flight)
                .acquire_owned()
                .await
                .expect("the pipeline's semaphore is never closed");
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
                    if take > 0
                        && (transfers > self.settings.batch_transfers_max || bytes > self.settings.batch_bytes_max)
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
            match self.commit_batch(index, groups, Some((turn, place)), chained).await {
                Some(kept) => turn = kept,
                None => return,
            }
        }
    }

    /// Decides every group that has no decision yet, appends all of them in
    /// one statement, and answers; retries as the module comment says.
    /// `chained` (no pipelining): the lane's turn is kept through the
    /// append and handed back, for the leader to take the next batch with.
    async fn commit_batch(
        &self,
        index: usize,
        mut groups: Vec<Group>,
        mut turn: Option<Turn>,
        chained: bool,
    ) -> Option<OwnedMutexGuard<()>> {
        // Keys are first assumed new: the append's unique key on
        // idempotency_keys catches a repeat, and only then is the batch
        // decided again with its keys looked up. The common case costs one
        // statement per batch.
        let mut look_up_keys = false;
        let started = std::time::Instant::now();
        let lane = &self.lanes[index];
        let mut kept: Option<OwnedMutexGuard<()>> = None;
        for attempt in 0..APPEND_ATTEMPTS_MAX {
            let (turn, _place) = match (turn.take(), kept.take()) {
                (Some(turn), _) => turn,
                (None, Some(held)) => (
                    held,
                    Arc::clone(&lane.in_flight)
                        .acquire_owned()
                        .await
                        .expect("the pipeline's semaphore is never closed"),
                ),
                (None, None) => self.take_turn(index).await,
            };
            if let Err(error) = self.decide(index, &mut groups, look_up_keys).await {
                self.fail(index, groups, error);
                return chained.then_some(turn);
            }
            let link = Link::new();
            let _settle = Settle(Arc::clone(&link));
            let predecessor = lane.tail.lock().expect("tail lock").clone();
            let result = {
                let (indices, appends) = appends_of(&groups);
                let prepared = PreparedAppend::new(&appends, Utc::now());
                self.remember(index, &groups, &indices, prepared.heads(), &link);
                if !indices.is_empty() {
                    *lane.tail.lock().expect("tail lock") = Some(Arc::clone(&link));
                }
                if chained {
                    kept = Some(turn);
                } else {
                    // The next batch may now be taken and decided, on the
                    // states this one leaves.
                    drop(turn);
                }
                let mut bases: Vec<Arc<Link>> = Vec::new();
                for basis in groups
                    .iter()
                    .filter_map(|g| g.decision.as_ref().and_then(|d| d.basis.clone()))
                {
                    if !bases.iter().any(|b| Arc::ptr_eq(b, &basis)) {
                        bases.push(basis);
                    }
                }
                self.execute(&prepared, predecessor.as_deref(), &bases, &link)
                    .await
                    .map(|appended| (indices, appended))
            };
            if result.is_err() {
                link.set(Phase::Failed);
                self.forget_by(index, &link);
            }
            match result {
                Ok((indices, appended)) => {
                    link.set(Phase::Committed);
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
                            metrics::counter!(observability::EVENTS_APPENDED, "type" => new.event.event_type())
                                .increment(1);
                        }
                        decision.head = stream.head;
                    }
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
                    for group in groups {
                        answer(group);
                    }
                    return kept;
                }
                Err(BatchError::Stale) => {
                    // A batch this one was decided on did not commit:
                    // every decision that rested on it is decided again
                    // (`decide` finds them).
                    tracing::debug!(attempt, "an earlier batch failed, deciding again");
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
                    // A leader that keeps the lane's turn commits them under
                    // it, in order: given up, the turn could go to a leader
                    // that keeps it for as long as commands keep coming.
                    let ids: Vec<Uuid> = groups.iter().map(|g| g.account_id).collect();
                    self.forget(index, &ids);
                    let mut place = Some(_place);
                    for group in groups {
                        for pending in group.pending {
                            let single = vec![Group {
                                iban: group.iban.clone(),
                                account_id: group.account_id,
                                pending: vec![pending],
                                decision: None,
                            }];
                            kept = match kept.take() {
                                Some(turn) => {
                                    let place = match place.take() {
                                        Some(place) => place,
                                        None => Arc::clone(&lane.in_flight)
                                            .acquire_owned()
                                            .await
                                            .expect("the pipeline's semaphore is never closed"),
                                    };
                                    Box::pin(self.commit_batch(index, single, Some((turn, place)), true)).await
                                }
                                None => {
                                    drop(place.take());
                                    Box::pin(self.commit_batch(index, single, None, false)).await
                                }
                            };
                        }
                    }
                    return kept;
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
                    return kept;
                }
                Err(BatchError::Failed(error)) => {
                    self.fail(index, groups, error);
                    return kept;
                }
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
        kept
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

    /// Decides the groups that have no decision (or one resting on a batch
    /// that failed): their accounts' states from the lane's cache, or all
    /// of the missing ones in one query.
    async fn decide(&self, index: usize, groups: &mut [Group], look_up_keys: bool) -> Result<(), AppError> {
        for group in groups.iter_mut() {
            if group
                .decision
                .as_ref()
                .and_then(|d| d.basis.as_ref())
                .is_some_and(|basis| basis.phase() == Phase::Failed)
            {
                group.decision = None;
            }
        }
        let undecided: Vec<usize> = (0..groups.len()).filter(|&i| groups[i].decision.is_none()).collect();
        if undecided.is_empty() {
            return Ok(());
        }
        let mut states: HashMap<Uuid, (Account, StreamHead, Option<Arc<Link>>)> = {
            let mut cache = self.lanes[index].cache.lock().expect("cache lock");
            undecided
                .iter()
                .filter_map(|&i| {
                    let id = groups[i].account_id;
                    let cached = cache.get(&id)?.clone();
                    let basis = match cached.by.as_ref().map(|by| by.phase()) {
                        // What a failed batch left is not the account's state.
                        Some(Phase::Failed) => {
                            cache.remove(&id);
                            return None;
                        }
                        Some(Phase::Committed) | None => None,
                        Some(_) => cached.by,
                    };
                    Some((id, (cached.account, cached.head, basis)))
                })
                .collect()
        };
        let missing: Vec<Uuid> = undecided
            .iter()
            .map(|&i| groups[i].account_id)
            .filter(|id| !states.contains_key(id))
            .collect();
        if !missing.is_empty() {
            states.extend(
                load_accounts(&self.pool, &missing)
                    .await?
                    .into_iter()
                    .map(|(id, (account, head))| (id, (account, head, None))),
            );
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
            let (state, head, basis) = match states.remove(&group.account_id) {
                Some((account, head, basis)) => (Some(account), head, basis),
                None => (None, StreamHead::EMPTY, None),
            };
            let mut decision = decide_group(&group.iban, &group.pending, state, head, &recorded);
            decision.basis = basis;
            group.decision = Some(decision);
        }
        Ok(())
    }

    /// Runs a batch's one statement on a connection acquired apart from it
    /// (so that a failure to get one, with nothing sent, is never taken for
    /// a connection lost in flight): after the statement of the batch
    /// before it (`predecessor`) has run, so that their row locks are
    /// always taken in batch order and a batch never waits for a later one.
    /// A batch decided on states that batches still in flight leave
    /// (`bases`) runs in a transaction of its own and commits only after
    /// they have; if one of them fails, it rolls back ([`BatchError::Stale`]).
    async fn execute(
        &self,
        prepared: &PreparedAppend<'_>,
        predecessor: Option<&Link>,
        bases: &[Arc<Link>],
        link: &Link,
    ) -> Result<Vec<StreamAppended>, BatchError> {
        let stale = || bases.iter().any(|basis| basis.phase() == Phase::Failed);
        if prepared.heads().is_empty() {
            // Nothing to append; its answers still rest on its bases.
            link.set(Phase::Executed);
            for basis in bases {
                if !basis.committed().await {
                    return Err(BatchError::Stale);
                }
            }
            return Ok(Vec::new());
        }
        let mut connection = self.pool.acquire().await.map_err(AppError::from)?;
        if bases.is_empty() {
            if let Some(predecessor) = predecessor {
                predecessor.executed().await;
            }
            let sent = std::time::Instant::now();
            let appended = prepared.execute(&mut *connection).await?;
            metrics::histogram!(observability::BATCH_APPEND_DURATION).record(sent.elapsed().as_secs_f64());
            return Ok(appended);
        }
        let mut transaction = sqlx::Connection::begin(&mut *connection)
            .await
            .map_err(AppError::from)?;
        if let Some(predecessor) = predecessor {
            predecessor.executed().await;
        }
        if stale() {
            transaction.rollback().await.map_err(AppError::from)?;
            return Err(BatchError::Stale);
        }
        let sent = std::time::Instant::now();
        let appended = prepared.execute(&mut *transaction).await;
        link.set(Phase::Executed);
        let appended = match appended {
            Ok(appended) => appended,
            Err(error) => {
                // Its locks go before its successors hear of the failure.
                let _ = transaction.rollback().await;
                return Err(error.into());
            }
        };
        for basis in bases {
            if !basis.committed().await {
                transaction.rollback().await.map_err(AppError::from)?;
                return Err(BatchError::Stale);
            }
        }
        event_store::commit(transaction).await?;
        metrics::histogram!(observability::BATCH_APPEND_DURATION).record(sent.elapsed().as_secs_f64());
        Ok(appended)
    }

    /// Keeps the states a batch leaves its accounts in, marked with the
    /// batch until it commits: the next batch may be decided on them while
    /// this one is in flight.
    fn remember(&self, index: usize, groups: &[Group], appending: &[usize], heads: &[StreamHead], link: &Arc<Link>) {
        let mut cache = self.lanes[index].cache.lock().expect("cache lock");
        if cache.len() + groups.len() > CACHE_MAX {
            // Keep what batches in flight leave: dropping it would only
            // cost a conflict, but keeping it costs nothing.
            cache.retain(|_, cached| {
                cached
                    .by
                    .as_ref()
                    .is_some_and(|by| matches!(by.phase(), Phase::Executing | Phase::Executed))
            });
        }
        for (i, group) in groups.iter().enumerate() {
            let decision = group.decision.as_ref().expect("decided");
            let Some(account) = &decision.state else { continue };
            match appending.iter().position(|&a| a == i) {
                Some(at) => {
                    cache.insert(
                        group.account_id,
                        Cached {
                            account: account.clone(),
                            head: heads[at],
                            by: Some(Arc::clone(link)),
                        },
                    );
                }
                // Nothing appended: the state it was decided on, if that
                // is committed (else the entry already holds it).
                None if decision.basis.is_none() => {
                    cache.insert(
                        group.account_id,
                        Cached {
                            account: account.clone(),
                            head: decision.head,
                            by: None,
                        },
                    );
                }
                None => {}
            }
        }
    }

    /// Drops what a failed batch left in the cache.
    fn forget_by(&self, index: usize, link: &Arc<Link>) {
        let mut cache = self.lanes[index].cache.lock().expect("cache lock");
        cache.retain(|_, cached| !cached.by.as_ref().is_some_and(|by| Arc::ptr_eq(by, link)));
    }

    /// Drops cached states: the next batch loads those accounts afresh.
    fn forget(&self, index: usize, accounts: &[Uuid]) {
        let mut cache = self.lanes[index].cache.lock().expect("cache lock");
        for id in accounts {
            cache.remove(id);
        }
    }
}

/// The groups with events to append, and their appends, in stream order:
/// batches of two servers that share streams then take their row locks in
/// the same order, which keeps them from deadlocking on each other (a
/// deadlock is still retried).
fn appends_of(groups: &[Group]) -> (Vec<usize>, Vec<StreamAppend<'_>>) {
    let mut appends: Vec<(usize, StreamAppend<'_>)> = groups
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
    appends.sort_by_key(|(_, append)| append.stream_id);
    appends.into_iter().unzip()
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

/// Why a batch did not commit.
enum BatchError {
    /// Another writer appended to a stream (this one, when PostgreSQL says
    /// which): decide it again.
    Conflict(Option<Uuid>),
    /// Another process recorded one of the batch's idempotency keys.
    KeyTaken,
    /// A batch it was decided on did not commit: decide it again.
    Stale,
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
