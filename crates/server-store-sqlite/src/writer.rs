//! The group-committing writer: one thread owns the write connection, takes every
//! request already queued (up to [`MAX_BATCH`]), runs each in its own SAVEPOINT inside
//! one transaction, commits once (one fsync with `synchronous=FULL`), then replies.
//! A request's own error (say `StaleEpoch`) rolls back only its savepoint.

use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use sotto_server_store::{BatchStats, StoreError, batched_result};
use tokio::sync::oneshot;

use crate::OrBackend;

/// Most requests committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// One queued write.
pub(crate) trait WriteJob: Send {
    /// Runs the work inside a savepoint. `false` means the savepoint itself could not
    /// be managed, so the whole transaction must be abandoned.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Sends the reply once the transaction's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
}

pub(crate) struct Job<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job<T, F> {
    pub(crate) fn new(work: F, reply: oneshot::Sender<Result<T, StoreError>>) -> Self {
        Self {
            work: Some(work),
            result: None,
            reply,
        }
    }
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return true;
        };
        if let Err(e) = run_cached(conn, "SAVEPOINT job") {
            self.result = Some(Err(e));
            return false;
        }
        match work(conn) {
            Ok(value) => match run_cached(conn, "RELEASE job") {
                Ok(()) => {
                    self.result = Some(Ok(value));
                    true
                }
                Err(e) => {
                    self.result = Some(Err(e));
                    false
                }
            },
            Err(refused) => {
                let undone = run_cached(conn, "ROLLBACK TO job")
                    .and_then(|()| run_cached(conn, "RELEASE job"));
                self.result = Some(Err(refused));
                undone.is_ok()
            }
        }
    }

    fn finish(self: Box<Self>, committed: Result<(), StoreError>) {
        // The requester may have gone away (its future dropped); nothing to do then.
        let _ = self.reply.send(batched_result(self.result, committed));
    }
}

/// Runs a parameterless control statement from the statement cache: parsing SAVEPOINT
/// and RELEASE afresh for every request was a visible share of the writer's time.
fn run_cached(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(|_| ())
        .or_backend()
}

/// The writer thread's loop; returns when every sender is gone.
pub(crate) fn run(
    conn: Connection,
    queue: Receiver<Box<dyn WriteJob>>,
    stats: Arc<Mutex<BatchStats>>,
) {
    while let Ok(first) = queue.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let committed = commit_batch(&conn, &mut batch);
        if let Ok(mut s) = stats.lock() {
            s.record(batch.len(), committed.is_ok());
        }
        for job in batch {
            job.finish(committed.clone());
        }
    }
}

fn commit_batch(conn: &Connection, batch: &mut [Box<dyn WriteJob>]) -> Result<(), StoreError> {
    run_cached(conn, "BEGIN IMMEDIATE")?;
    for job in batch.iter_mut() {
        // A panicking request (a bug) must not take the writer thread, and with it every
        // later write, down: abandon this batch and keep serving.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(conn)));
        if !matches!(ran, Ok(true)) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(StoreError::Backend(
                "a write in this batch failed unexpectedly; the batch was rolled back".into(),
            ));
        }
    }
    match run_cached(conn, "COMMIT") {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_land_in_their_buckets() {
        let mut stats = BatchStats::default();
        for size in [1, 2, 3, 4, 5, 512, 600] {
            stats.record(size, true);
        }
        stats.record(7, false);
        assert_eq!(stats.batches, 8);
        assert_eq!(stats.writes, 1 + 2 + 3 + 4 + 5 + 512 + 600 + 7);
        assert_eq!(stats.largest, 600);
        assert_eq!(stats.failed_commits, 1);
        // 1 | 2 | 3,4 | 5,7 | ... | 512,600 (the last bucket takes the overflow)
        assert_eq!(stats.size_buckets, [1, 1, 2, 2, 0, 0, 0, 0, 0, 2]);
    }
}
