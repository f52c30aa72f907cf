//! Group commit for the event log: concurrent [`append_events`](super::Store::append_events)
//! calls that queue behind a running append are written together, in one transaction with
//! one sync, in the order they arrived. A single caller sees no difference; many callers in
//! `sync` mode share the cost of each flush instead of waiting for one flush each.
//!
//! The first caller to get the writer lock with its batch still pending becomes the leader:
//! it takes every pending batch and writes them in a spawned task that holds the lock until
//! every caller of the group has its answer. Because the write is spawned, a leader whose
//! future is dropped (a timeout, a closed connection) cannot leave the group's outcome
//! unknown or let a second write overtake it.

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::{EventRecord, SeqRange, StoreError};

type Reply = oneshot::Sender<Result<SeqRange, StoreError>>;

/// One back-end's append queue.
#[derive(Default)]
pub(crate) struct GroupCommit {
    pending: Mutex<Vec<(Vec<EventRecord>, Reply)>>,
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl GroupCommit {
    /// Appends `batch` through `write`, which must write all the batches it is given in one
    /// transaction, in order, and return their ranges in the same order.
    pub(crate) async fn append<W, Fut>(
        &self,
        batch: &[EventRecord],
        write: W,
    ) -> Result<SeqRange, StoreError>
    where
        W: FnOnce(Vec<Vec<EventRecord>>) -> Fut,
        Fut: Future<Output = Result<Vec<SeqRange>, StoreError>> + Send + 'static,
    {
        let (reply, mut answer) = oneshot::channel();
        self.pending.lock().push((batch.to_vec(), reply));
        let guard = self.writer.clone().lock_owned().await;
        match answer.try_recv() {
            // A previous leader wrote our batch.
            Ok(result) => return result,
            Err(oneshot::error::TryRecvError::Closed) => return Err(lost()),
            // Still pending (a leader answers before it releases the lock): we lead.
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let group = std::mem::take(&mut *self.pending.lock());
        debug_assert!(!group.is_empty());
        let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let write = write(batches);
        tokio::spawn(async move {
            let _writer = guard;
            match write.await {
                Ok(ranges) => {
                    debug_assert_eq!(ranges.len(), replies.len());
                    for (reply, range) in replies.into_iter().zip(ranges) {
                        // A caller that went away no longer needs its answer.
                        let _ = reply.send(Ok(range));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.duplicate()));
                    }
                }
            }
        });
        answer.await.map_err(|_| lost())?
    }
}

fn lost() -> StoreError {
    StoreError::Db {
        message: "the append task failed before reporting its outcome".into(),
    }
}

impl StoreError {
    /// A copy for every caller of a failed group (I/O errors keep their kind and text).
    pub(crate) fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Io { context, source } => StoreError::Io {
                context: context.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StoreError::Db { message } => StoreError::Db {
                message: message.clone(),
            },
            StoreError::Conflict { message } => StoreError::Conflict {
                message: message.clone(),
            },
            StoreError::Migration { message } => StoreError::Migration {
                message: message.clone(),
            },
            StoreError::Corrupt { message } => StoreError::Corrupt {
                message: message.clone(),
            },
            StoreError::Config { message } => StoreError::Config {
                message: message.clone(),
            },
            StoreError::Locked { message } => StoreError::Locked {
                message: message.clone(),
            },
            StoreError::Fenced { message } => StoreError::Fenced {
                message: message.clone(),
            },
            StoreError::Damaged { message } => StoreError::Damaged {
                message: message.clone(),
            },
        }
    }
}
