//! The live event feed: what the Server-Sent Events streams send.
//!
//! The feed reads committed events from the database, in commit order, and
//! hands each to every open stream. It reads after this process's own
//! writes (the store signals them) and also polls once a second, so events
//! committed by another process on the same database (`tunehook segmind
//! submit`, or another replica) reach the streams too. Nothing is taken
//! from the HTTP handlers: a stream sends only what is on disk.

use crate::store::{FeedEvent, Store, StoreError};
use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events read per query.
const PAGE: u32 = 500;
/// How often the database is read with no signal of a commit.
const POLL: Duration = Duration::from_secs(1);
/// Events a slow stream may fall behind before it reads the database
/// again instead.
const BACKLOG: usize = 1024;

pub struct EventFeed {
    store: Store,
    tx: broadcast::Sender<Arc<FeedEvent>>,
    /// The last event handed to the streams.
    last: AtomicI64,
}

impl EventFeed {
    /// A feed that starts after the last event committed so far.
    pub async fn new(store: Store) -> Result<EventFeed, StoreError> {
        let last = store.last_event_seq().await?;
        Ok(EventFeed {
            store,
            tx: broadcast::channel(BACKLOG).0,
            last: AtomicI64::new(last),
        })
    }

    /// Every event the feed hands on from now on. The feed may still be
    /// reading events committed just before: a stream that must start at
    /// a given event skips those at or before it.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedEvent>> {
        self.tx.subscribe()
    }

    /// Reads committed events and hands them on until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut commits = self.store.event_commits();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = commits.changed() => {}
                () = tokio::time::sleep(POLL) => {}
            }
            loop {
                let after = self.last.load(Ordering::SeqCst);
                let events = match self.store.events_after(after, None, PAGE).await {
                    Ok(events) => events,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read events for the live streams");
                        break;
                    }
                };
                let full = events.len() == PAGE as usize;
                for event in events {
                    self.last.store(event.seq, Ordering::SeqCst);
                    // No stream open is not an error.
                    let _ = self.tx.send(Arc::new(event));
                }
                if !full {
                    break;
                }
            }
        }
    }
}
