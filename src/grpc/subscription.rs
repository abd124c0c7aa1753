//! `SubscribeEvents`: one task per open stream, paging through the
//! commit-safe feed, polling once caught up and authenticating again on
//! every poll (a revoked key ends the stream).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::convert::{event_message, status_of};
use super::{FEED_POLL, pb};
use crate::app::Ledger;
use crate::app::params::PageSize;
use crate::app::views::FeedPage;
use crate::event_store::FeedCursor;

/// One open `SubscribeEvents` stream, fed by a task of its own.
pub(super) struct Subscription {
    pub(super) ledger: Arc<Ledger>,
    pub(super) authorization: Option<Vec<u8>>,
    pub(super) sender: mpsc::Sender<Result<pb::Event, Status>>,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) page_size: PageSize,
    /// Its place among the open subscriptions, given back when it ends.
    pub(super) _admission: crate::app::Admission,
}

impl Subscription {
    /// Sends pages until the subscriber goes, the server stops, the key is
    /// revoked or the database fails; the last three end the stream with a
    /// status (the subscriber resumes from its last event's `after`).
    pub(super) async fn run(mut self, first: FeedPage) {
        let mut page = first;
        loop {
            let full = page.events.len() >= self.page_size.get() as usize;
            let next_after = page.next_after.clone();
            for event in page.events {
                if !self.send(Ok(event_message(event))).await {
                    return;
                }
            }
            if !full {
                tokio::select! {
                    _ = tokio::time::sleep(FEED_POLL) => {}
                    _ = self.sender.closed() => return,
                    _ = Self::stopping(&mut self.shutdown) => return self.end(Self::shutting_down()),
                }
            }
            let principal = match self.ledger.authenticate(self.authorization.as_deref()).await {
                Ok(principal) => principal,
                Err(error) => return self.end(status_of(error)),
            };
            // The token came from the page just read: it always parses.
            let after = FeedCursor::parse(&next_after).unwrap_or(FeedCursor::START);
            page = match // On the primary: a standby behind it would answer an empty page
            // after this server's own append woke the subscription.
            self.ledger.events(&crate::app::Reader::primary(), &principal, after, self.page_size).await {
                Ok(page) => page,
                Err(error) => return self.end(status_of(error)),
            };
        }
    }

    /// Sends unless the subscriber has gone or the server stops first.
    async fn send(&mut self, item: Result<pb::Event, Status>) -> bool {
        tokio::select! {
            sent = self.sender.send(item) => sent.is_ok(),
            _ = Self::stopping(&mut self.shutdown) => {
                self.end(Self::shutting_down());
                false
            }
        }
    }

    /// Ends the stream with `status`, if there is room for it: a stalled
    /// subscriber never holds the task (or the server's shutdown) up.
    fn end(&self, status: Status) {
        let _ = self.sender.try_send(Err(status));
    }

    async fn stopping(shutdown: &mut watch::Receiver<bool>) {
        let _ = shutdown.wait_for(|stop| *stop).await.is_ok();
    }

    pub(super) fn shutting_down() -> Status {
        Status::unavailable("the server is shutting down; resume with the last event's `after`")
    }
}
