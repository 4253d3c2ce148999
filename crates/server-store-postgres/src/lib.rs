//! PostgreSQL implementation of Sotto's server [`Store`], for deployments that run
//! several stateless server nodes on one database.
//!
//! - Migrations run at [`PostgresStore::connect`] (see `schema`): safe when several
//!   nodes start at once.
//! - Writes are group-committed (see [`writer`]): each of a few writer tasks takes every
//!   request queued at that moment, runs each in its own SAVEPOINT inside one
//!   transaction and commits once, so many sends share one round trip to COMMIT and one
//!   WAL flush. A request is answered only after its COMMIT.
//! - Reads run on the pool directly.
//! - Ordering across nodes uses only row-level SQL: a commit is accepted by a
//!   conditional `UPDATE ... WHERE epoch = $expected`; idempotency and uniqueness by
//!   `INSERT ... ON CONFLICT DO NOTHING`; KeyPackage claims by `FOR UPDATE SKIP
//!   LOCKED`. No LISTEN/NOTIFY, no advisory locks, so PostgreSQL-compatible
//!   distributed databases can run it too. A batch that loses a deadlock or
//!   serialization race is rolled back and run again.

mod ops;
mod schema;
pub mod scratch;
pub mod writer;

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use sotto_proto::{ConversationId, DeviceId, Username};
use sotto_server_store::{
    Accepted, Account, BackendError, BatchStats, CommitSubmission, DeviceStatus, ExpiredCounts,
    Group, MailboxEntry, MessageSubmission, NewAccount, NewDevice, SlotId, Store, StoreError,
    StoreStats, day_of,
};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};

pub use schema::SCHEMA_VERSION;
pub use writer::MAX_BATCH;

use ops::{Fail, Op};
use writer::{Job, WriteJob};

/// How to reach the database and how much of it to use.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// A `postgres://` URL.
    pub url: String,
    /// Connections in the pool (readers and writers together).
    pub pool_size: u32,
    /// Group-committing writer tasks (each holds at most one connection at a time).
    pub writers: usize,
    /// A schema to create (if missing) and use instead of `public`, for tests and for
    /// several deployments sharing one database.
    pub schema: Option<String>,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("PostgresOptions")
            .field("pool_size", &self.pool_size)
            .field("writers", &self.writers)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresOptions {
    /// Options for `url` with the default pool (16 connections) and 2 writers.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 16,
            writers: 2,
            schema: None,
        }
    }
}

/// How long to wait for a pooled connection before failing a request.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Turns a database error into [`StoreError::Backend`]. PostgreSQL's primary messages
/// name constraints and tables, not values (those are in the error's detail, which is
/// not shown), so no ciphertext, token or username leaks into logs.
pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(BackendError::caused_by("postgres", e))
}

fn op_error(fail: Fail) -> StoreError {
    match fail {
        Fail::Refused(e) => e,
        Fail::Db(e) => backend(e),
    }
}

/// A [`Store`] in a PostgreSQL database.
pub struct PostgresStore {
    pool: PgPool,
    queue: Option<mpsc::UnboundedSender<Box<dyn WriteJob>>>,
    writers: Vec<tokio::task::JoinHandle<()>>,
    batch_stats: Arc<Mutex<BatchStats>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool_size", &self.pool.size())
            .field("writers", &self.writers.len())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, creates the schema if asked, applies migrations and starts the writer
    /// tasks (on the current tokio runtime).
    pub async fn connect(options: &PostgresOptions) -> Result<Self, StoreError> {
        let mut connect =
            PgConnectOptions::from_str(&options.url).map_err(|e| {
                StoreError::Backend(format!(
                "the database URL is invalid ({e}); expected postgres://USER@HOST:PORT/DATABASE"
            ).into())
            })?;
        if let Some(schema) = &options.schema {
            if !schema
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                || schema.is_empty()
            {
                return Err(StoreError::Backend(
                    format!("the schema name {schema:?} must be letters, digits and underscores")
                        .into(),
                ));
            }
            let mut admin = sqlx::PgConnection::connect_with(&connect)
                .await
                .map_err(backend)?;
            sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .execute(&mut admin)
                .await
                .map_err(backend)?;
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size.max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(connect)
            .await
            .map_err(backend)?;
        {
            let mut conn = pool.acquire().await.map_err(backend)?;
            schema::migrate(&mut conn).await?;
        }
        let batch_stats = Arc::new(Mutex::new(BatchStats::default()));
        let (queue, jobs) = mpsc::unbounded_channel();
        let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
        let writers = (0..options.writers.max(1))
            .map(|_| {
                tokio::spawn(writer::run(
                    pool.clone(),
                    Arc::clone(&jobs),
                    Arc::clone(&batch_stats),
                ))
            })
            .collect();
        Ok(Self {
            pool,
            queue: Some(queue),
            writers,
            batch_stats,
        })
    }

    /// The connection pool (for tests and tools that inspect the tables).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Lets the writers finish what is queued, then closes the pool.
    pub async fn close(mut self) {
        self.queue = None;
        for writer in std::mem::take(&mut self.writers) {
            let _ = writer.await;
        }
        self.pool.close().await;
    }

    /// Runs `work` in the next group commit; resolves after the COMMIT. `work` may run
    /// more than once (a batch that lost a deadlock is run again), so it must only
    /// touch the database.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Op<T>> + Send + Sync + 'static,
    {
        self.submit(work, false).await
    }

    /// Like [`Self::write`] for work that queues body releases (acks): the batch
    /// applies the queue before it commits.
    async fn write_releasing<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Op<T>> + Send + Sync + 'static,
    {
        self.submit(work, true).await
    }

    async fn submit<T, F>(&self, work: F, queues_releases: bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Op<T>> + Send + Sync + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Job::new(work, queues_releases, reply));
        self.queue
            .as_ref()
            .ok_or_else(writers_gone)?
            .send(job)
            .map_err(|_| writers_gone())?;
        answer.await.map_err(|_| writers_gone())?
    }

    async fn conn(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        self.pool.acquire().await.map_err(backend)
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Closing the queue lets the writers finish what is queued and exit.
        self.queue = None;
    }
}

fn writers_gone() -> StoreError {
    StoreError::Backend("the store's writer tasks have stopped".into())
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_account(&self, account: NewAccount, now: u64) -> Result<(), StoreError> {
        let account = Arc::new(account);
        self.write(move |c| {
            let account = Arc::clone(&account);
            Box::pin(async move { ops::create_account(c, &account, now).await })
        })
        .await
    }

    async fn account(&self, username: &Username) -> Result<Option<Account>, StoreError> {
        ops::account(&mut *self.conn().await?, username)
            .await
            .map_err(op_error)
    }

    async fn device_by_token(
        &self,
        token_hash: &[u8; 32],
        now: u64,
    ) -> Result<Option<(Username, DeviceId)>, StoreError> {
        let found = ops::device_by_token(&mut *self.conn().await?, token_hash)
            .await
            .map_err(op_error)?;
        let Some((username, device, last_seen_day)) = found else {
            return Ok(None);
        };
        let today = day_of(now);
        if last_seen_day < today {
            let name = username.clone();
            self.write(move |c| {
                let name = name.clone();
                Box::pin(async move { ops::touch_last_seen(c, &name, today).await })
            })
            .await?;
        }
        Ok(Some((username, device)))
    }

    async fn publish_device_list(
        &self,
        username: &Username,
        list_bytes: Vec<u8>,
        version: u64,
        new_device: Option<NewDevice>,
        now: u64,
    ) -> Result<(), StoreError> {
        let args = Arc::new((username.clone(), list_bytes, new_device));
        self.write(move |c| {
            let args = Arc::clone(&args);
            Box::pin(async move {
                let (name, list, device) = &*args;
                ops::publish_device_list(c, name, list, version, device.as_ref(), now).await
            })
        })
        .await
    }

    async fn remove_device(&self, username: &Username, device: DeviceId) -> Result<(), StoreError> {
        let name = username.clone();
        self.write(move |c| {
            let name = name.clone();
            Box::pin(async move { ops::remove_device(c, &name, device).await })
        })
        .await
    }

    async fn notify_directory(
        &self,
        username: &Username,
        except: &[DeviceId],
        now: u64,
    ) -> Result<Vec<(DeviceId, u64)>, StoreError> {
        let args = Arc::new((username.clone(), except.to_vec()));
        self.write(move |c| {
            let args = Arc::clone(&args);
            Box::pin(async move {
                let (name, except) = &*args;
                ops::notify_directory(c, name, except, now).await
            })
        })
        .await
    }

    async fn release_account(
        &self,
        username: &Username,
        now: u64,
    ) -> Result<Vec<(DeviceId, u64)>, StoreError> {
        let name = username.clone();
        self.write(move |c| {
            let name = name.clone();
            Box::pin(async move { ops::release_account(c, &name, now).await })
        })
        .await
    }

    async fn rotate_token(&self, device: DeviceId, token_hash: [u8; 32]) -> Result<(), StoreError> {
        self.write(move |c| {
            Box::pin(async move { ops::rotate_token(c, device, &token_hash).await })
        })
        .await
    }

    async fn upload_key_packages(
        &self,
        device: DeviceId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let args = Arc::new((one_time, last_resort));
        self.write(move |c| {
            let args = Arc::clone(&args);
            Box::pin(async move {
                let (one_time, last_resort) = &*args;
                ops::upload_key_packages(c, device, one_time, last_resort.as_deref()).await
            })
        })
        .await
    }

    async fn claim_key_packages(
        &self,
        username: &Username,
    ) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError> {
        let name = username.clone();
        self.write(move |c| {
            let name = name.clone();
            Box::pin(async move { ops::claim_key_packages(c, &name).await })
        })
        .await
    }

    async fn device_status(&self, device: DeviceId) -> Result<DeviceStatus, StoreError> {
        ops::device_status(&mut *self.conn().await?, device)
            .await
            .map_err(op_error)
    }

    async fn create_group(
        &self,
        group: ConversationId,
        creator: DeviceId,
        members: Vec<DeviceId>,
    ) -> Result<(), StoreError> {
        let members = Arc::new(members);
        self.write(move |c| {
            let members = Arc::clone(&members);
            Box::pin(async move { ops::create_group(c, group, creator, &members).await })
        })
        .await
    }

    async fn group(&self, group: ConversationId) -> Result<Option<Group>, StoreError> {
        ops::group(&mut *self.conn().await?, group)
            .await
            .map_err(op_error)
    }

    async fn submit_commit(
        &self,
        commit: CommitSubmission,
        now: u64,
    ) -> Result<Accepted, StoreError> {
        let commit = Arc::new(commit);
        self.write(move |c| {
            let commit = Arc::clone(&commit);
            Box::pin(async move { ops::submit_commit(c, &commit, now).await })
        })
        .await
    }

    async fn submit_message(
        &self,
        message: MessageSubmission,
        now: u64,
    ) -> Result<Accepted, StoreError> {
        let message = Arc::new(message);
        self.write(move |c| {
            let message = Arc::clone(&message);
            Box::pin(async move { ops::submit_message(c, &message, now).await })
        })
        .await
    }

    async fn fetch(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        ops::fetch(&mut *self.conn().await?, device, after_seq, limit)
            .await
            .map_err(op_error)
    }

    async fn ack(&self, device: DeviceId, up_to_seq: u64) -> Result<u64, StoreError> {
        self.write_releasing(move |c| Box::pin(ops::ack(c, device, up_to_seq)))
            .await
    }

    async fn expire(&self, now: u64, retention_secs: u64) -> Result<ExpiredCounts, StoreError> {
        self.write(move |c| Box::pin(ops::expire(c, now, retention_secs)))
            .await
    }

    async fn put_link_slot(
        &self,
        slot: SlotId,
        payload: Vec<u8>,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let payload = Arc::new(payload);
        self.write(move |c| {
            let payload = Arc::clone(&payload);
            Box::pin(async move { ops::put_link_slot(c, &slot, &payload, expires_at).await })
        })
        .await
    }

    async fn take_link_slot(&self, slot: SlotId, now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.write(move |c| Box::pin(async move { ops::take_link_slot(c, &slot, now).await }))
            .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        ops::stats(&mut *self.conn().await?).await.map_err(op_error)
    }

    fn batch_stats(&self) -> Option<BatchStats> {
        self.batch_stats.lock().ok().map(|s| *s)
    }
}
