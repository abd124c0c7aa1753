//! The pipeline's links: where each batch of a lane stands, for the
//! batches decided after it (see the parent module).

use std::sync::Arc;

use tokio::sync::watch;

/// Where a batch stands, for the batches decided after it (pipelining).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Decided; its statement has not finished.
    Executing,
    /// Its statement has finished, either way; its transaction may be open.
    Executed,
    Committed,
    /// Rolled back, or its outcome unknown: what was decided on it is void.
    Failed,
}

/// One batch's place in its lane's pipeline.
pub(super) struct Link {
    phase: watch::Sender<Phase>,
}

impl Link {
    pub(super) fn new() -> Arc<Link> {
        Arc::new(Link {
            phase: watch::Sender::new(Phase::Executing),
        })
    }

    pub(super) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub(super) fn set(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Waits until its statement has run (its locks are taken).
    pub(super) async fn executed(&self) {
        let mut phase = self.phase.subscribe();
        let _ = phase.wait_for(|phase| *phase != Phase::Executing).await;
    }

    /// Waits for its outcome: whether it committed.
    pub(super) async fn committed(&self) -> bool {
        let mut phase = self.phase.subscribe();
        let outcome = phase
            .wait_for(|phase| matches!(phase, Phase::Committed | Phase::Failed))
            .await
            .map(|phase| *phase);
        matches!(outcome, Ok(Phase::Committed))
    }
}

/// Fails a batch's link if the batch ends without settling it (a panic, a
/// runtime shutting down), so that no later batch waits for it forever.
pub(super) struct Settle(pub(super) Arc<Link>);

impl Drop for Settle {
    fn drop(&mut self) {
        if !matches!(self.0.phase(), Phase::Committed | Phase::Failed) {
            self.0.set(Phase::Failed);
        }
    }
}
