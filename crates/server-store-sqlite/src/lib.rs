//! SQLite implementation of Sotto's server [`Store`]: the embedded default.
//!
//! - WAL journal, `synchronous=FULL`, foreign keys on, a busy timeout; the schema is
//!   created and migrated at open (`PRAGMA user_version` counts applied steps).
//! - Writes go to one writer thread that group-commits (see [`writer`]): a write is
//!   acknowledged only after the COMMIT that made it durable, and concurrent writers
//!   share one fsync.
//! - Reads run on the calling task's thread, on a pooled read connection (WAL lets
//!   them proceed while the writer writes, without waiting for it). Every read is an
//!   indexed lookup or one bounded page of a mailbox, microseconds from the page cache;
//!   handing each to the blocking thread pool cost more than the read itself (the relay
//!   benchmark went from about 5,600 to about 9,000 msg/s without the hand-off).
//! - A body is stored once in `bodies`; mailbox rows point at it and it is deleted when
//!   the last row referring to it goes. Each device has a `next_seq` counter, so
//!   sequence numbers are never reused.

mod ops;
mod schema;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use sotto_proto::{ConversationId, DeviceId, Username};
use sotto_server_store::{
    Accepted, Account, BackendError, CommitSubmission, DeviceStatus, ExpiredCounts, Group,
    MailboxEntry, MessageSubmission, NewAccount, NewDevice, SlotId, Store, StoreError, StoreStats,
    day_of,
};
use tokio::sync::oneshot;

pub use sotto_server_store::{BATCH_BUCKET_BOUNDS, BatchStats};
pub use writer::MAX_BATCH;
use writer::{Job, WriteJob};

/// How long a connection waits for a lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle read connections kept open, at least. Reads run on the runtime's worker
/// threads, so at most one per worker (one per core by default) runs at a time; the
/// pool keeps that many, since opening a connection parses the schema.
const READERS: usize = 8;

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 128;

/// Turns a rusqlite error into [`StoreError::Backend`]. SQLite's messages name tables,
/// columns and constraints, never the bound values, so no ciphertext or token leaks.
pub(crate) trait OrBackend<T> {
    fn or_backend(self) -> Result<T, StoreError>;
}

impl<T> OrBackend<T> for rusqlite::Result<T> {
    fn or_backend(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Backend(BackendError::caused_by("sqlite", e)))
    }
}

/// A [`Store`] in one SQLite database file.
pub struct SqliteStore {
    writer: Option<mpsc::Sender<Box<dyn WriteJob>>>,
    writer_thread: Option<JoinHandle<()>>,
    readers: Arc<ReaderPool>,
    batch_stats: Arc<Mutex<BatchStats>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.readers.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, migrates its schema and starts
    /// the writer thread.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .or_backend()?;
        configure(&conn)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .or_backend()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(
                format!("the database refused WAL mode (journal mode is {mode})").into(),
            ));
        }
        schema::migrate(&mut conn)?;

        let batch_stats = Arc::new(Mutex::new(BatchStats::default()));
        let (sender, queue) = mpsc::channel::<Box<dyn WriteJob>>();
        let stats = Arc::clone(&batch_stats);
        let writer_thread = std::thread::Builder::new()
            .name("sotto-store-writer".into())
            .spawn(move || writer::run(conn, queue, stats))
            .map_err(|e| {
                StoreError::Backend(BackendError::caused_by("cannot start the writer thread", e))
            })?;
        Ok(Self {
            writer: Some(sender),
            writer_thread: Some(writer_thread),
            readers: Arc::new(ReaderPool {
                path,
                idle: Mutex::new(Vec::new()),
                keep: std::thread::available_parallelism()
                    .map_or(READERS, |n| n.get().max(READERS)),
            }),
            batch_stats,
        })
    }

    /// Runs `work` on the writer thread inside the next group commit; resolves after
    /// the COMMIT.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Job::new(work, reply));
        self.writer
            .as_ref()
            .ok_or_else(writer_gone)?
            .send(job)
            .map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    /// Runs `work` in a read transaction on a pooled read connection, on this thread
    /// (see the module documentation for why not on the blocking pool).
    fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError>,
    {
        let conn = self.readers.take()?;
        let result = (|| {
            let tx = conn.unchecked_transaction().or_backend()?;
            let value = work(&tx)?;
            tx.commit().or_backend()?;
            Ok(value)
        })();
        self.readers.give_back(conn);
        result
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit.
        self.writer = None;
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

fn writer_gone() -> StoreError {
    StoreError::Backend("the store's writer thread has stopped".into())
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT).or_backend()?;
    // Every statement the store uses stays prepared (rusqlite keeps 16 by default,
    // fewer than the store has, so statements were evicted and parsed again).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "foreign_keys", "ON")
        .or_backend()?;
    conn.pragma_update(None, "synchronous", "FULL")
        .or_backend()?;
    // Deleted rows (acked ciphertext, claimed KeyPackages) are overwritten, not left in
    // free pages where a copy of the file would still hold them.
    conn.pragma_update(None, "secure_delete", "ON")
        .or_backend()?;
    Ok(())
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Idle connections kept: [`READERS`], or one per core if there are more cores.
    keep: usize,
}

impl ReaderPool {
    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .or_backend()?;
        configure(&conn)?;
        conn.pragma_update(None, "query_only", "ON").or_backend()?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.keep
        {
            idle.push(conn);
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_account(&self, account: NewAccount, now: u64) -> Result<(), StoreError> {
        self.write(move |c| ops::create_account(c, &account, now))
            .await
    }

    async fn account(&self, username: &Username) -> Result<Option<Account>, StoreError> {
        self.read(|c| ops::account(c, username))
    }

    async fn device_by_token(
        &self,
        token_hash: &[u8; 32],
        now: u64,
    ) -> Result<Option<(Username, DeviceId)>, StoreError> {
        let found = self.read(|c| ops::device_by_token(c, token_hash))?;
        let Some((username, device, last_seen_day)) = found else {
            return Ok(None);
        };
        let today = day_of(now);
        if last_seen_day < today {
            let name = username.clone();
            self.write(move |c| ops::touch_last_seen(c, &name, today))
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
        let username = username.clone();
        self.write(move |c| {
            ops::publish_device_list(c, &username, &list_bytes, version, new_device.as_ref(), now)
        })
        .await
    }

    async fn remove_device(&self, username: &Username, device: DeviceId) -> Result<(), StoreError> {
        let username = username.clone();
        self.write(move |c| ops::remove_device(c, &username, device))
            .await
    }

    async fn notify_directory(
        &self,
        username: &Username,
        except: &[DeviceId],
        now: u64,
    ) -> Result<Vec<(DeviceId, u64)>, StoreError> {
        let (username, except) = (username.clone(), except.to_vec());
        self.write(move |c| ops::notify_directory(c, &username, &except, now))
            .await
    }

    async fn release_account(
        &self,
        username: &Username,
        now: u64,
    ) -> Result<Vec<(DeviceId, u64)>, StoreError> {
        let username = username.clone();
        self.write(move |c| ops::release_account(c, &username, now))
            .await
    }

    async fn rotate_token(&self, device: DeviceId, token_hash: [u8; 32]) -> Result<(), StoreError> {
        self.write(move |c| ops::rotate_token(c, device, &token_hash))
            .await
    }

    async fn upload_key_packages(
        &self,
        device: DeviceId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        self.write(move |c| ops::upload_key_packages(c, device, &one_time, last_resort.as_deref()))
            .await
    }

    async fn claim_key_packages(
        &self,
        username: &Username,
    ) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError> {
        let username = username.clone();
        self.write(move |c| ops::claim_key_packages(c, &username))
            .await
    }

    async fn device_status(&self, device: DeviceId) -> Result<DeviceStatus, StoreError> {
        self.read(|c| ops::device_status(c, device))
    }

    async fn create_group(
        &self,
        group: ConversationId,
        creator: DeviceId,
        members: Vec<DeviceId>,
    ) -> Result<(), StoreError> {
        self.write(move |c| ops::create_group(c, group, creator, &members))
            .await
    }

    async fn group(&self, group: ConversationId) -> Result<Option<Group>, StoreError> {
        self.read(|c| ops::group(c, group))
    }

    async fn submit_commit(
        &self,
        commit: CommitSubmission,
        now: u64,
    ) -> Result<Accepted, StoreError> {
        self.write(move |c| ops::submit_commit(c, commit, now))
            .await
    }

    async fn submit_message(
        &self,
        message: MessageSubmission,
        now: u64,
    ) -> Result<Accepted, StoreError> {
        self.write(move |c| ops::submit_message(c, message, now))
            .await
    }

    async fn fetch(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        self.read(|c| ops::fetch(c, device, after_seq, limit))
    }

    async fn ack(&self, device: DeviceId, up_to_seq: u64) -> Result<u64, StoreError> {
        self.write(move |c| ops::ack(c, device, up_to_seq)).await
    }

    async fn expire(&self, now: u64, retention_secs: u64) -> Result<ExpiredCounts, StoreError> {
        self.write(move |c| ops::expire(c, now, retention_secs))
            .await
    }

    async fn put_link_slot(
        &self,
        slot: SlotId,
        payload: Vec<u8>,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        self.write(move |c| ops::put_link_slot(c, &slot, &payload, expires_at))
            .await
    }

    async fn take_link_slot(&self, slot: SlotId, now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.write(move |c| ops::take_link_slot(c, &slot, now))
            .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.read(ops::stats)
    }

    fn batch_stats(&self) -> Option<BatchStats> {
        self.batch_stats.lock().ok().map(|s| *s)
    }
}
