//! The load engine: runs one scenario's workers in a closed or an open loop
//! and tallies what came back. It knows nothing of HTTP or SQL; a [`Worker`]
//! does one call and says how it went.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How one call ended.
pub enum CallResult {
    /// A 2xx: this many transfers were booked (a bulk is all or nothing).
    Accepted { transfers: u64 },
    /// An answer that is not 2xx, with its status and body.
    Refused { status: u16, body: String },
    /// No answer at all: connection refused or reset, timeout, SQL error.
    Failed(String),
}

/// One connection's worth of load: a client that makes one call at a time.
pub trait Worker: Send + 'static {
    fn call(&mut self) -> impl Future<Output = CallResult> + Send;
}

/// The warm-up (driven but not measured) and the measured window after it.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub measure: Duration,
}

/// How the next call is paced.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Each worker sends its next call as soon as the previous one answered.
    Closed,
    /// Calls are due at a fixed rate whatever the answers do; latency counts
    /// from each call's scheduled time, so a stall that delays sending is
    /// measured too (no coordinated omission).
    Open { per_second: u32 },
}

/// After the schedule ends, an open loop that has fallen this far behind
/// stops sending instead of draining its backlog: the run stays bounded.
const OPEN_LOOP_GRACE: Duration = Duration::from_secs(30);
/// A worker whose call failed outright waits this long before the next, so
/// a dead server does not turn the loop into a busy spin.
const FAILURE_BACKOFF: Duration = Duration::from_millis(10);

/// What one scenario measured. Closed loop: the answers that arrived inside
/// the measured window (steady state: a call sent during the warm-up counts
/// if it answers inside the window, one still in flight at the end does
/// not). Open loop: the calls scheduled inside the window, each awaited.
#[derive(Debug, Default)]
pub struct Measured {
    /// Closed loop: the window. Open loop: from the window's start to the
    /// last answer, at least the window (longer when the server fell behind).
    pub elapsed: Duration,
    pub accepted_requests: u64,
    pub accepted_transfers: u64,
    /// Non-2xx answers by status.
    pub refused: BTreeMap<u16, u64>,
    /// Calls that got no answer (including open-loop slots never sent).
    pub failed: u64,
    /// Closed loop: calls still in flight when the window closed (awaited,
    /// not counted), and the longest that one of them took to be answered
    /// (`None` if none was: they all failed or timed out).
    pub in_flight_at_end: u64,
    pub in_flight_answered_max: Option<Duration>,
    pub first_error: Option<String>,
    /// Latency of every answered call (2xx or not), sorted, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Open loop only: how late each call was sent after its scheduled time,
    /// sorted, in microseconds (timer granularity plus any client backlog).
    pub send_lag_us: Vec<u64>,
}

impl Measured {
    pub fn non_2xx(&self) -> u64 {
        self.refused.values().sum()
    }

    pub fn answered(&self) -> u64 {
        self.accepted_requests + self.non_2xx()
    }

    fn per_second(&self, count: u64) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { count as f64 / secs } else { 0.0 }
    }

    pub fn transfers_per_second(&self) -> f64 {
        self.per_second(self.accepted_transfers)
    }

    pub fn requests_per_second(&self) -> f64 {
        self.per_second(self.answered())
    }

    /// The `q` quantile (0..=1) of the latencies, in milliseconds.
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        quantile_us(&self.latencies_us, q).map(|us| us as f64 / 1000.0)
    }

    pub fn send_lag_ms(&self, q: f64) -> Option<f64> {
        quantile_us(&self.send_lag_us, q).map(|us| us as f64 / 1000.0)
    }

    fn merge(&mut self, tally: Tally) {
        self.accepted_requests += tally.accepted_requests;
        self.accepted_transfers += tally.accepted_transfers;
        for (status, count) in tally.refused {
            *self.refused.entry(status).or_default() += count;
        }
        self.failed += tally.failed;
        self.in_flight_at_end += tally.in_flight_at_end;
        self.in_flight_answered_max = self.in_flight_answered_max.max(tally.in_flight_answered_max);
        if self.first_error.is_none() {
            self.first_error = tally.first_error;
        }
        self.latencies_us.extend(tally.latencies_us);
        self.send_lag_us.extend(tally.send_lag_us);
    }
}

/// Nearest-rank quantile of sorted values.
fn quantile_us(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// One worker's counts; merged into [`Measured`] when the run ends, so the
/// hot path touches nothing shared.
#[derive(Default)]
struct Tally {
    accepted_requests: u64,
    accepted_transfers: u64,
    refused: BTreeMap<u16, u64>,
    failed: u64,
    in_flight_at_end: u64,
    in_flight_answered_max: Option<Duration>,
    first_error: Option<String>,
    latencies_us: Vec<u64>,
    send_lag_us: Vec<u64>,
    last_answer: Option<Instant>,
}

impl Tally {
    fn record(&mut self, result: &CallResult, latency: Duration, answered_at: Instant) {
        match result {
            CallResult::Accepted { transfers } => {
                self.accepted_requests += 1;
                self.accepted_transfers += transfers;
            }
            CallResult::Refused { status, body } => {
                *self.refused.entry(*status).or_default() += 1;
                self.first_error.get_or_insert_with(|| format!("HTTP {status}: {body}"));
            }
            CallResult::Failed(error) => {
                self.failed += 1;
                self.first_error.get_or_insert_with(|| error.clone());
                // No answer: no latency to count.
                return;
            }
        }
        self.latencies_us.push(latency.as_micros() as u64);
        self.last_answer = Some(self.last_answer.map_or(answered_at, |t| t.max(answered_at)));
    }
}

/// Drives `workers` (one task each) for `timing.warmup + timing.measure`
/// and returns what was measured after the warm-up.
pub async fn run<W: Worker>(workers: Vec<W>, load: Load, timing: Timing) -> Measured {
    let start = Instant::now();
    let warm_end = start + timing.warmup;
    let end = warm_end + timing.measure;

    let next_slot = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = workers
        .into_iter()
        .map(|worker| {
            let next_slot = next_slot.clone();
            tokio::spawn(async move {
                match load {
                    Load::Closed => closed_loop(worker, warm_end, end).await,
                    Load::Open { per_second } => open_loop(worker, per_second, start, warm_end, end, &next_slot).await,
                }
            })
        })
        .collect();

    let mut measured = Measured::default();
    let mut last_answer = None::<Instant>;
    for handle in handles {
        match handle.await {
            Ok(tally) => {
                if let Some(t) = tally.last_answer {
                    last_answer = Some(last_answer.map_or(t, |l| l.max(t)));
                }
                measured.merge(tally);
            }
            Err(join_error) => {
                measured.failed += 1;
                measured
                    .first_error
                    .get_or_insert_with(|| format!("worker died: {join_error}"));
            }
        }
    }
    measured.elapsed = match load {
        Load::Closed => timing.measure,
        // Every slot of the window was awaited: the rate is over the time
        // they took to answer, however late.
        Load::Open { .. } => last_answer.map_or(timing.measure, |t| {
            t.saturating_duration_since(warm_end).max(timing.measure)
        }),
    };
    measured.latencies_us.sort_unstable();
    measured.send_lag_us.sort_unstable();
    measured
}

async fn closed_loop<W: Worker>(mut worker: W, warm_end: Instant, end: Instant) -> Tally {
    let mut tally = Tally::default();
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let result = worker.call().await;
        let answered = Instant::now();
        // A call in flight at the end is still awaited (bounded by the
        // worker's own timeout), so the next scenario does not start against
        // a server busy with this one's backlog; but it is not counted.
        if (warm_end..=end).contains(&answered) {
            tally.record(&result, answered - sent, answered);
        } else if answered > end {
            tally.in_flight_at_end += 1;
            if !matches!(result, CallResult::Failed(_)) {
                tally.in_flight_answered_max = tally.in_flight_answered_max.max(Some(answered - sent));
            }
        }
        if matches!(result, CallResult::Failed(_)) {
            tokio::time::sleep(FAILURE_BACKOFF).await;
        }
    }
    tally
}

/// Slots are numbered from `start`, one every `1 / per_second`; each free
/// worker claims the next slot, sleeps until it is due and sends. With
/// enough workers no slot waits for a worker; if they are all busy, the
/// claimed slot is already late and its latency, counted from its scheduled
/// time, includes the wait.
async fn open_loop<W: Worker>(
    mut worker: W,
    per_second: u32,
    start: Instant,
    warm_end: Instant,
    end: Instant,
    next_slot: &AtomicU64,
) -> Tally {
    let interval_ns = 1_000_000_000 / u64::from(per_second.max(1));
    let slots = (end - start).as_nanos() as u64 / interval_ns;
    let mut tally = Tally::default();
    loop {
        let slot = next_slot.fetch_add(1, Ordering::Relaxed);
        if slot >= slots {
            break;
        }
        let scheduled = start + Duration::from_nanos(slot * interval_ns);
        let measured = scheduled >= warm_end;
        if Instant::now() > end + OPEN_LOOP_GRACE {
            // Hopelessly behind: count the slot as failed instead of sending.
            if measured {
                tally.failed += 1;
                tally.first_error.get_or_insert_with(|| {
                    format!("open loop fell more than {OPEN_LOOP_GRACE:?} behind; slot not sent")
                });
            }
            continue;
        }
        tokio::time::sleep_until(scheduled).await;
        let sent = Instant::now();
        let result = worker.call().await;
        let answered = Instant::now();
        if measured {
            tally.record(&result, answered - scheduled, answered);
            tally.send_lag_us.push((sent - scheduled).as_micros() as u64);
        }
    }
    tally
}
