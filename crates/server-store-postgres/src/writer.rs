//! Group commit on PostgreSQL. A few writer tasks share one queue; each takes every
//! request queued at that moment (up to [`MAX_BATCH`]), runs each in its own SAVEPOINT
//! inside one transaction and commits once. A request's refusal (say `StaleEpoch`) rolls
//! back only its savepoint. If the batch loses a deadlock or serialization race (with
//! another writer or another node), the whole transaction is rolled back and the batch
//! is run again; a request's work may therefore run more than once, but it takes effect
//! at most once, in the transaction that commits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sotto_server_store::{BatchStats, StoreError, batched_result};
use sqlx::{Connection, Executor as _, PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use crate::backend;
use crate::ops::{Fail, Op};

/// Most requests committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// How many times a batch that lost a deadlock or serialization race is run again.
const MAX_RETRIES: u32 = 8;

/// What running a batch came to.
pub(crate) enum Step {
    /// Committed.
    Done,
    /// The transaction must be rolled back and the batch run again.
    Retry(sqlx::Error),
    /// The transaction is unusable; every request in the batch fails.
    Abort(StoreError),
}

/// What one request's work came to, inside the savepoint the batch opened for it.
pub(crate) enum JobStep {
    /// Keep its writes.
    Keep,
    /// Roll its savepoint back (a refusal, or a database error of its own).
    Undo,
    /// The transaction lost a race: roll everything back and run the batch again.
    Retry(sqlx::Error),
}

/// One queued write.
pub(crate) trait WriteJob: Send {
    /// Runs the work inside the savepoint the batch opened for it.
    fn run<'a>(&'a mut self, conn: &'a mut PgConnection) -> BoxFuture<'a, JobStep>;
    /// Whether the work queues body releases that the batch must apply before COMMIT.
    fn queues_releases(&self) -> bool;
    /// Sends the reply once the transaction's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
}

pub(crate) struct Job<T, F> {
    work: F,
    queues_releases: bool,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job<T, F> {
    pub(crate) fn new(
        work: F,
        queues_releases: bool,
        reply: oneshot::Sender<Result<T, StoreError>>,
    ) -> Self {
        Self {
            work,
            queues_releases,
            result: None,
            reply,
        }
    }
}

/// Deadlocks and serialization failures: the transaction can succeed if run again.
fn retryable(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

fn abort_or_retry(e: sqlx::Error) -> Step {
    if retryable(&e) {
        Step::Retry(e)
    } else {
        Step::Abort(backend(e))
    }
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Op<T>> + Send + Sync,
{
    fn run<'a>(&'a mut self, conn: &'a mut PgConnection) -> BoxFuture<'a, JobStep> {
        Box::pin(async move {
            self.result = None;
            let (step, result) = match (self.work)(conn).await {
                Ok(value) => (JobStep::Keep, Ok(value)),
                Err(Fail::Refused(refused)) => (JobStep::Undo, Err(refused)),
                Err(Fail::Db(e)) if retryable(&e) => return JobStep::Retry(e),
                Err(Fail::Db(e)) => {
                    tracing::warn!(error = %e, "a store write failed; its request gets an error");
                    (JobStep::Undo, Err(backend(e)))
                }
            };
            self.result = Some(result);
            step
        })
    }

    fn queues_releases(&self) -> bool {
        self.queues_releases
    }

    fn finish(self: Box<Self>, committed: Result<(), StoreError>) {
        // The requester may have gone away (its future dropped); nothing to do then.
        let _ = self.reply.send(batched_result(self.result, committed));
    }
}

type Queue = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Box<dyn WriteJob>>>>;

/// One writer task's loop; returns when the queue is closed and drained.
pub(crate) async fn run(pool: PgPool, queue: Queue, stats: Arc<Mutex<BatchStats>>) {
    loop {
        let mut batch = {
            let mut jobs = queue.lock().await;
            let Some(first) = jobs.recv().await else {
                return;
            };
            let mut batch = Vec::with_capacity(16);
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        // A panicking request (a bug) must not take this writer down with it.
        let committed = std::panic::AssertUnwindSafe(commit_batch(&pool, &mut batch))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Backend(
                    "a write in this batch failed unexpectedly; the batch was rolled back".into(),
                ))
            });
        if let Ok(mut s) = stats.lock() {
            s.record(batch.len(), committed.is_ok());
        }
        for job in batch {
            job.finish(committed.clone());
        }
    }
}

async fn commit_batch(pool: &PgPool, batch: &mut [Box<dyn WriteJob>]) -> Result<(), StoreError> {
    let mut attempt = 0;
    loop {
        match try_batch(pool, batch).await {
            Step::Done => return Ok(()),
            Step::Abort(e) => return Err(e),
            Step::Retry(e) if attempt >= MAX_RETRIES => return Err(backend(e)),
            Step::Retry(e) => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "store batch lost a race; running it again");
                // Back off a little (growing, with jitter from the clock) so the
                // transactions that collided do not collide again.
                let jitter = u64::from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.subsec_micros() % 1000)
                        .unwrap_or(0),
                );
                tokio::time::sleep(Duration::from_micros(500 * u64::from(attempt) + jitter)).await;
            }
        }
    }
}

async fn try_batch(pool: &PgPool, batch: &mut [Box<dyn WriteJob>]) -> Step {
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => return Step::Abort(backend(e)),
    };
    let mut tx = match conn.begin().await {
        Ok(tx) => tx,
        Err(e) => return abort_or_retry(e),
    };
    // One savepoint per request, managed here so each boundary costs one round trip:
    // "RELEASE; SAVEPOINT" after a kept request, "ROLLBACK TO" (which keeps the
    // savepoint for the next request) after a refused one, nothing after the last
    // kept one (COMMIT releases it).
    if let Err(e) = (&mut *tx).execute("SAVEPOINT job").await {
        let _ = tx.rollback().await;
        return abort_or_retry(e);
    }
    let count = batch.len();
    for (i, job) in batch.iter_mut().enumerate() {
        let last = i + 1 == count;
        let boundary = match job.run(&mut tx).await {
            JobStep::Keep if last => None,
            JobStep::Keep => Some("RELEASE SAVEPOINT job; SAVEPOINT job"),
            JobStep::Undo => Some("ROLLBACK TO SAVEPOINT job"),
            JobStep::Retry(e) => {
                let _ = tx.rollback().await;
                return Step::Retry(e);
            }
        };
        if let Some(sql) = boundary
            && let Err(e) = (&mut *tx).execute(sql).await
        {
            let _ = tx.rollback().await;
            return abort_or_retry(e);
        }
    }
    // Acks in this batch queued body releases: apply them before committing (a batch
    // of sends only skips the round trip).
    if batch.iter().any(|job| job.queues_releases()) {
        match crate::ops::apply_releases(&mut tx).await {
            Ok(_) => {}
            Err(Fail::Db(e)) => {
                let _ = tx.rollback().await;
                return abort_or_retry(e);
            }
            Err(Fail::Refused(e)) => {
                let _ = tx.rollback().await;
                return Step::Abort(e);
            }
        }
    }
    match tx.commit().await {
        Ok(()) => Step::Done,
        Err(e) => abort_or_retry(e),
    }
}
