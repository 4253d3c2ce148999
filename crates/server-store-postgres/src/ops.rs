//! The store's operations as SQL over one connection. Writes run inside a writer's
//! per-request savepoint (a refused request leaves nothing behind); reads on a pooled
//! connection. Hot paths are single statements with data-modifying CTEs, so a send
//! costs few round trips.

use std::collections::BTreeSet;

use sotto_proto::{ConversationId, DeviceId, IdentityPublicKey, Username};
use sotto_server_store::{
    Accepted, Account, CommitSubmission, DIRECTORY_GROUP, DeviceRecord, DeviceStatus, EntryKind,
    ExpiredCounts, Group, MESSAGE_EPOCH_WINDOW, MailboxEntry, MessageSubmission, NewAccount,
    NewDevice, SlotId, StoreError, StoreStats, day_of,
};
use sqlx::{PgConnection, Row};

/// Why an operation did not complete.
#[derive(Debug)]
pub(crate) enum Fail {
    /// The request is refused by the store's rules (stale epoch, not a member, ...).
    Refused(StoreError),
    /// The database failed; the writer decides whether the batch can be retried.
    Db(sqlx::Error),
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Self::Refused(e)
    }
}

pub(crate) type Op<T> = Result<T, Fail>;

fn refuse<T>(e: StoreError) -> Op<T> {
    Err(Fail::Refused(e))
}

// ----- conversions (PostgreSQL integers are signed) -----

fn int(value: u64) -> Op<i64> {
    i64::try_from(value).map_err(|_| {
        Fail::Refused(StoreError::Backend(
            "a number is too large to store (over 2^63)".into(),
        ))
    })
}

/// For bounds in queries, where "everything" is the meaning of a huge value.
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unsigned(value: i64) -> Op<u64> {
    u64::try_from(value)
        .map_err(|_| Fail::Refused(StoreError::Backend("a stored number is negative".into())))
}

fn device_id(bytes: &[u8]) -> Op<DeviceId> {
    DeviceId::from_slice(bytes).ok_or_else(|| {
        Fail::Refused(StoreError::Backend(
            "a stored device id has the wrong length".into(),
        ))
    })
}

fn conversation_id(bytes: &[u8]) -> Op<ConversationId> {
    ConversationId::from_slice(bytes).ok_or_else(|| {
        Fail::Refused(StoreError::Backend(
            "a stored group id has the wrong length".into(),
        ))
    })
}

fn username(text: &str) -> Op<Username> {
    Username::parse(text)
        .map_err(|_| Fail::Refused(StoreError::Backend("a stored username is invalid".into())))
}

fn ids(devices: &[DeviceId]) -> Vec<Vec<u8>> {
    devices.iter().map(|d| d.as_bytes().to_vec()).collect()
}

// ----- shared pieces -----

async fn device_exists(c: &mut PgConnection, device: DeviceId) -> Op<bool> {
    Ok(
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM devices WHERE device_id = $1)")
            .bind(&device.as_bytes()[..])
            .fetch_one(c)
            .await?,
    )
}

/// Inserts a device; `DeviceExists` if its id or token hash is taken (also when another
/// node inserts the same one concurrently: the unique index decides).
async fn insert_device(
    c: &mut PgConnection,
    name: &Username,
    device: &NewDevice,
    now: u64,
) -> Op<()> {
    let inserted = sqlx::query(
        "INSERT INTO devices (device_id, username, token_hash, certificate, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(&device.device_id.as_bytes()[..])
    .bind(name.as_str())
    .bind(&device.token_hash[..])
    .bind(&device.certificate_bytes)
    .bind(int(now)?)
    .execute(c)
    .await?
    .rows_affected();
    if inserted == 0 {
        return refuse(StoreError::DeviceExists);
    }
    Ok(())
}

async fn members(c: &mut PgConnection, group: ConversationId) -> Op<Vec<DeviceId>> {
    let rows: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT device_id FROM members WHERE group_id = $1 ORDER BY device_id")
            .bind(&group.as_bytes()[..])
            .fetch_all(c)
            .await?;
    rows.iter().map(|id| device_id(id)).collect()
}

async fn group_epoch(c: &mut PgConnection, group: ConversationId) -> Op<Option<u64>> {
    let epoch: Option<i64> = sqlx::query_scalar("SELECT epoch FROM mls_groups WHERE group_id = $1")
        .bind(&group.as_bytes()[..])
        .fetch_optional(c)
        .await?;
    epoch.map(unsigned).transpose()
}

/// The tail of a fan-out statement, after a CTE `s(device_id, seq)` that has taken a
/// sequence number for each recipient: stores the body once with its reference count
/// and appends the mailbox entries (`mb`). The arguments name the statement's
/// parameters for the body, the entry kind, the group and the time.
macro_rules! store_once_and_index {
    ($body:literal, $kind:literal, $group:literal, $now:literal) => {
        concat!(
            "n AS (
                 SELECT count(*) AS refs FROM s
             ), b AS (
                 INSERT INTO bodies (refs, body) SELECT refs, ",
            $body,
            " FROM n WHERE refs > 0
                 RETURNING id
             ), mb AS (
                 INSERT INTO mailbox (device_id, seq, kind, group_id, body_id, received_at)
                 SELECT s.device_id, s.seq, ",
            $kind,
            ", ",
            $group,
            ", b.id, ",
            $now,
            "
                 FROM s CROSS JOIN b
                 RETURNING device_id, seq
             )"
        )
    };
}

/// Stores `body` once (counting its references) and appends an entry to each
/// recipient's mailbox, in one statement. Recipients that no longer exist are skipped.
async fn fan_out(
    c: &mut PgConnection,
    recipients: &[DeviceId],
    kind: EntryKind,
    group: ConversationId,
    body: &[u8],
    now: u64,
) -> Op<Vec<(DeviceId, u64)>> {
    if recipients.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(concat!(
        "WITH s AS (
             UPDATE devices SET next_seq = next_seq + 1 WHERE device_id = ANY($1)
             RETURNING device_id, next_seq - 1 AS seq
         ), ",
        store_once_and_index!("$2", "$3", "$4", "$5"),
        " SELECT device_id, seq FROM mb ORDER BY device_id"
    ))
    .bind(ids(recipients))
    .bind(body)
    .bind(i16::from(kind.code()))
    .bind(&group.as_bytes()[..])
    .bind(int(now)?)
    .fetch_all(c)
    .await?;
    let mut delivered = Vec::with_capacity(rows.len());
    for row in rows {
        let id: Vec<u8> = row.try_get(0)?;
        let seq: i64 = row.try_get(1)?;
        delivered.push((device_id(&id)?, unsigned(seq)?));
    }
    Ok(delivered)
}

/// A `DELETE` of mailbox entries (the argument is its `WHERE` clause) that queues the
/// releases of their bodies in `body_releases` and yields how many entries it deleted.
/// The queue is applied by [`apply_releases`]: every write batch that acked runs it
/// before committing, and the rarer deletions run it themselves.
macro_rules! delete_and_queue_releases {
    ($filter:literal) => {
        concat!(
            "WITH gone AS (
                 DELETE FROM mailbox WHERE ",
            $filter,
            " RETURNING body_id
             ), rel AS (
                 INSERT INTO body_releases (body_id, n)
                 SELECT body_id, count(*) FROM gone GROUP BY body_id
                 RETURNING n
             )
             SELECT COALESCE(sum(n), 0)::BIGINT FROM rel"
        )
    };
}

/// Applies the queued body releases and deletes the bodies nobody needs any more, in
/// the current transaction. Returns how many bodies were deleted.
///
/// Releases are queued (append-only) rather than applied by each deletion, so the acks
/// of every member of a large group do not take turns on one body row; one statement
/// then subtracts the summed counts. The deletion must be a second statement: data-
/// modifying CTEs do not see each other's changes to the same row.
///
/// Queue rows that another writer's open transaction is applying are skipped (it
/// applies them): without SKIP LOCKED the second writer waited for the first one's
/// COMMIT, so writers whose batches both held acks ran one after the other.
pub(crate) async fn apply_releases(c: &mut PgConnection) -> Op<u64> {
    let freed: Vec<i64> = sqlx::query_scalar(
        "WITH r AS (
             DELETE FROM body_releases
             WHERE id IN (SELECT id FROM body_releases FOR UPDATE SKIP LOCKED)
             RETURNING body_id, n
         ), s AS (
             SELECT body_id, sum(n)::BIGINT AS n FROM r GROUP BY body_id
         ), dec AS (
             UPDATE bodies SET refs = bodies.refs - s.n FROM s
             WHERE bodies.id = s.body_id RETURNING bodies.id, bodies.refs
         )
         SELECT ARRAY(SELECT id FROM dec WHERE refs <= 0 ORDER BY id)",
    )
    .fetch_one(&mut *c)
    .await?;
    if freed.is_empty() {
        return Ok(0);
    }
    Ok(
        sqlx::query("DELETE FROM bodies WHERE id = ANY($1) AND refs <= 0")
            .bind(&freed)
            .execute(c)
            .await?
            .rows_affected(),
    )
}

// ----- accounts and devices -----

pub(crate) async fn create_account(c: &mut PgConnection, a: &NewAccount, now: u64) -> Op<()> {
    let inserted = sqlx::query(
        "INSERT INTO accounts (username, identity_key, device_list, list_version, created_at,
                               last_seen_day)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(a.username.as_str())
    .bind(&a.identity_key.as_bytes()[..])
    .bind(&a.device_list_bytes)
    .bind(int(a.list_version)?)
    .bind(int(now)?)
    .bind(int(day_of(now))?)
    .execute(&mut *c)
    .await?
    .rows_affected();
    if inserted == 0 {
        return refuse(StoreError::UsernameTaken);
    }
    insert_device(c, &a.username, &a.first_device, now).await
}

pub(crate) async fn account(c: &mut PgConnection, name: &Username) -> Op<Option<Account>> {
    let row = sqlx::query(
        "SELECT identity_key, device_list, list_version, created_at, last_seen_day
         FROM accounts WHERE username = $1",
    )
    .bind(name.as_str())
    .fetch_optional(&mut *c)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let key: Vec<u8> = row.try_get(0)?;
    let key: [u8; 32] = key.try_into().map_err(|_| {
        Fail::Refused(StoreError::Backend(
            "a stored identity key has the wrong length".into(),
        ))
    })?;
    let rows = sqlx::query(
        "SELECT device_id, certificate, created_at FROM devices WHERE username = $1
         ORDER BY device_id",
    )
    .bind(name.as_str())
    .fetch_all(c)
    .await?;
    let mut devices = Vec::with_capacity(rows.len());
    for device in rows {
        let id: Vec<u8> = device.try_get(0)?;
        devices.push(DeviceRecord {
            device_id: device_id(&id)?,
            certificate_bytes: device.try_get(1)?,
            created_at: unsigned(device.try_get(2)?)?,
        });
    }
    Ok(Some(Account {
        username: name.clone(),
        identity_key: IdentityPublicKey::from_bytes(key),
        device_list_bytes: row.try_get(1)?,
        list_version: unsigned(row.try_get(2)?)?,
        created_at: unsigned(row.try_get(3)?)?,
        last_seen_day: unsigned(row.try_get(4)?)?,
        devices,
    }))
}

/// The token's device and its account's last-seen day.
pub(crate) async fn device_by_token(
    c: &mut PgConnection,
    token_hash: &[u8; 32],
) -> Op<Option<(Username, DeviceId, u64)>> {
    let row = sqlx::query(
        "SELECT d.username, d.device_id, a.last_seen_day
         FROM devices d JOIN accounts a ON a.username = d.username
         WHERE d.token_hash = $1",
    )
    .bind(&token_hash[..])
    .fetch_optional(c)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let name: String = row.try_get(0)?;
    let id: Vec<u8> = row.try_get(1)?;
    Ok(Some((
        username(&name)?,
        device_id(&id)?,
        unsigned(row.try_get(2)?)?,
    )))
}

pub(crate) async fn touch_last_seen(c: &mut PgConnection, name: &Username, day: u64) -> Op<()> {
    sqlx::query(
        "UPDATE accounts SET last_seen_day = GREATEST(last_seen_day, $2) WHERE username = $1",
    )
    .bind(name.as_str())
    .bind(int(day)?)
    .execute(c)
    .await?;
    Ok(())
}

pub(crate) async fn publish_device_list(
    c: &mut PgConnection,
    name: &Username,
    list: &[u8],
    version: u64,
    new_device: Option<&NewDevice>,
    now: u64,
) -> Op<()> {
    // FOR UPDATE: two nodes publishing for the same account serialise here, and the
    // second sees the first's version.
    let current: Option<i64> =
        sqlx::query_scalar("SELECT list_version FROM accounts WHERE username = $1 FOR UPDATE")
            .bind(name.as_str())
            .fetch_optional(&mut *c)
            .await?;
    let Some(current) = current else {
        return refuse(StoreError::UnknownUser);
    };
    let current = unsigned(current)?;
    if version <= current {
        return refuse(StoreError::VersionNotIncreasing { current });
    }
    if let Some(device) = new_device {
        insert_device(c, name, device, now).await?;
    }
    sqlx::query("UPDATE accounts SET device_list = $2, list_version = $3 WHERE username = $1")
        .bind(name.as_str())
        .bind(list)
        .bind(int(version)?)
        .execute(c)
        .await?;
    Ok(())
}

pub(crate) async fn remove_device(
    c: &mut PgConnection,
    name: &Username,
    device: DeviceId,
) -> Op<()> {
    let id = device.as_bytes().to_vec();
    let owner: Option<String> =
        sqlx::query_scalar("SELECT username FROM devices WHERE device_id = $1 FOR UPDATE")
            .bind(&id)
            .fetch_optional(&mut *c)
            .await?;
    if owner.as_deref() != Some(name.as_str()) {
        return refuse(StoreError::UnknownDevice);
    }
    sqlx::query(delete_and_queue_releases!("device_id = $1"))
        .bind(&id)
        .execute(&mut *c)
        .await?;
    apply_releases(&mut *c).await?;
    // Memberships and KeyPackages go with the device (ON DELETE CASCADE); then groups
    // left without members.
    let groups: Vec<Vec<u8>> = sqlx::query_scalar(
        "WITH gone AS (DELETE FROM members WHERE device_id = $1 RETURNING group_id)
         SELECT group_id FROM gone",
    )
    .bind(&id)
    .fetch_all(&mut *c)
    .await?;
    sqlx::query("DELETE FROM devices WHERE device_id = $1")
        .bind(&id)
        .execute(&mut *c)
        .await?;
    delete_groups_if_empty(c, groups).await
}

pub(crate) async fn notify_directory(
    c: &mut PgConnection,
    name: &Username,
    except: &[DeviceId],
    now: u64,
) -> Op<Vec<(DeviceId, u64)>> {
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT device_id FROM devices WHERE username = $1
         UNION
         SELECT peer.device_id FROM devices own
         JOIN members mine ON mine.device_id = own.device_id
         JOIN members peer ON peer.group_id = mine.group_id
         WHERE own.username = $1
         ORDER BY 1",
    )
    .bind(name.as_str())
    .fetch_all(&mut *c)
    .await?;
    let mut recipients = Vec::with_capacity(rows.len());
    for row in rows {
        let id = device_id(&row)?;
        if !except.contains(&id) {
            recipients.push(id);
        }
    }
    fan_out(
        c,
        &recipients,
        EntryKind::Directory,
        DIRECTORY_GROUP,
        name.as_str().as_bytes(),
        now,
    )
    .await
}

pub(crate) async fn release_account(
    c: &mut PgConnection,
    name: &Username,
    now: u64,
) -> Op<Vec<(DeviceId, u64)>> {
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM accounts WHERE username = $1 FOR UPDATE")
            .bind(name.as_str())
            .fetch_optional(&mut *c)
            .await?;
    if exists.is_none() {
        return refuse(StoreError::UnknownUser);
    }
    let rows: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT device_id FROM devices WHERE username = $1")
            .bind(name.as_str())
            .fetch_all(&mut *c)
            .await?;
    let devices = rows
        .iter()
        .map(|id| device_id(id))
        .collect::<Op<Vec<DeviceId>>>()?;
    let notified = notify_directory(&mut *c, name, &devices, now).await?;
    for device in devices {
        remove_device(&mut *c, name, device).await?;
    }
    sqlx::query("DELETE FROM accounts WHERE username = $1")
        .bind(name.as_str())
        .execute(&mut *c)
        .await?;
    Ok(notified)
}

pub(crate) async fn rotate_token(
    c: &mut PgConnection,
    device: DeviceId,
    token_hash: &[u8; 32],
) -> Op<()> {
    let taken: Option<i32> = sqlx::query_scalar("SELECT 1 FROM devices WHERE token_hash = $1")
        .bind(&token_hash[..])
        .fetch_optional(&mut *c)
        .await?;
    if taken.is_some() {
        return refuse(StoreError::DeviceExists);
    }
    let done = sqlx::query("UPDATE devices SET token_hash = $2 WHERE device_id = $1")
        .bind(&device.as_bytes()[..])
        .bind(&token_hash[..])
        .execute(&mut *c)
        .await?;
    if done.rows_affected() == 0 {
        return refuse(StoreError::UnknownDevice);
    }
    Ok(())
}

async fn delete_groups_if_empty(c: &mut PgConnection, groups: Vec<Vec<u8>>) -> Op<()> {
    if groups.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM mls_groups g WHERE g.group_id = ANY($1)
         AND NOT EXISTS (SELECT 1 FROM members m WHERE m.group_id = g.group_id)",
    )
    .bind(groups)
    .execute(c)
    .await?;
    Ok(())
}

// ----- KeyPackages -----

pub(crate) async fn upload_key_packages(
    c: &mut PgConnection,
    device: DeviceId,
    one_time: &[Vec<u8>],
    last_resort: Option<&[u8]>,
) -> Op<()> {
    if !device_exists(&mut *c, device).await? {
        return refuse(StoreError::UnknownDevice);
    }
    let id = &device.as_bytes()[..];
    if !one_time.is_empty() {
        // One statement for the batch; WITH ORDINALITY keeps upload order (ids increase).
        sqlx::query(
            "INSERT INTO key_packages (device_id, last_resort, body)
             SELECT $1, false, kp FROM unnest($2::bytea[]) WITH ORDINALITY AS t(kp, i)
             ORDER BY i",
        )
        .bind(id)
        .bind(one_time)
        .execute(&mut *c)
        .await?;
    }
    if let Some(kp) = last_resort {
        sqlx::query("DELETE FROM key_packages WHERE device_id = $1 AND last_resort")
            .bind(id)
            .execute(&mut *c)
            .await?;
        sqlx::query(
            "INSERT INTO key_packages (device_id, last_resort, body) VALUES ($1, true, $2)",
        )
        .bind(id)
        .bind(kp)
        .execute(c)
        .await?;
    }
    Ok(())
}

pub(crate) async fn claim_key_packages(
    c: &mut PgConnection,
    name: &Username,
) -> Op<Vec<(DeviceId, Vec<u8>)>> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE username = $1)")
            .bind(name.as_str())
            .fetch_one(&mut *c)
            .await?;
    if !exists {
        return refuse(StoreError::UnknownUser);
    }
    let devices: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT device_id FROM devices WHERE username = $1 ORDER BY device_id")
            .bind(name.as_str())
            .fetch_all(&mut *c)
            .await?;
    let mut out = Vec::with_capacity(devices.len());
    for id in devices {
        // SKIP LOCKED: a package another node is claiming right now is not handed out
        // twice; this claim takes the next one.
        let one_time: Option<Vec<u8>> = sqlx::query_scalar(
            "DELETE FROM key_packages WHERE id = (
                 SELECT id FROM key_packages WHERE device_id = $1 AND NOT last_resort
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
             ) RETURNING body",
        )
        .bind(&id)
        .fetch_optional(&mut *c)
        .await?;
        let body = match one_time {
            Some(body) => Some(body),
            None => {
                sqlx::query_scalar(
                    "SELECT body FROM key_packages WHERE device_id = $1 AND last_resort
                     ORDER BY id LIMIT 1",
                )
                .bind(&id)
                .fetch_optional(&mut *c)
                .await?
            }
        };
        if let Some(body) = body {
            out.push((device_id(&id)?, body));
        }
    }
    Ok(out)
}

pub(crate) async fn device_status(c: &mut PgConnection, device: DeviceId) -> Op<DeviceStatus> {
    let row = sqlx::query(
        "SELECT EXISTS (SELECT 1 FROM devices WHERE device_id = $1),
                (SELECT count(*) FROM key_packages WHERE device_id = $1 AND NOT last_resort),
                (SELECT count(*) FROM key_packages WHERE device_id = $1 AND last_resort),
                (SELECT count(*) FROM mailbox WHERE device_id = $1)",
    )
    .bind(&device.as_bytes()[..])
    .fetch_one(c)
    .await?;
    let exists: bool = row.try_get(0)?;
    if !exists {
        return refuse(StoreError::UnknownDevice);
    }
    let one_time: i64 = row.try_get(1)?;
    let last_resort: i64 = row.try_get(2)?;
    Ok(DeviceStatus {
        one_time_key_packages: u32::try_from(one_time).unwrap_or(u32::MAX),
        has_last_resort: last_resort > 0,
        mailbox_depth: unsigned(row.try_get(3)?)?,
    })
}

// ----- groups -----

pub(crate) async fn create_group(
    c: &mut PgConnection,
    group: ConversationId,
    creator: DeviceId,
    others: &[DeviceId],
) -> Op<()> {
    let all: Vec<DeviceId> = std::iter::once(creator)
        .chain(others.iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let known: i64 = sqlx::query_scalar("SELECT count(*) FROM devices WHERE device_id = ANY($1)")
        .bind(ids(&all))
        .fetch_one(&mut *c)
        .await?;
    if unsigned(known)? != all.len() as u64 {
        return refuse(StoreError::UnknownDevice);
    }
    let inserted = sqlx::query(
        "INSERT INTO mls_groups (group_id, epoch) VALUES ($1, 0) ON CONFLICT DO NOTHING",
    )
    .bind(&group.as_bytes()[..])
    .execute(&mut *c)
    .await?
    .rows_affected();
    if inserted == 0 {
        return refuse(StoreError::GroupExists);
    }
    add_members(c, group, &all).await
}

async fn add_members(c: &mut PgConnection, group: ConversationId, devices: &[DeviceId]) -> Op<()> {
    if devices.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO members (group_id, device_id) SELECT $1, d FROM unnest($2::bytea[]) AS d
         ON CONFLICT DO NOTHING",
    )
    .bind(&group.as_bytes()[..])
    .bind(ids(devices))
    .execute(c)
    .await?;
    Ok(())
}

pub(crate) async fn group(c: &mut PgConnection, group: ConversationId) -> Op<Option<Group>> {
    let Some(epoch) = group_epoch(&mut *c, group).await? else {
        return Ok(None);
    };
    Ok(Some(Group {
        epoch,
        members: members(c, group).await?,
    }))
}

pub(crate) async fn submit_commit(
    c: &mut PgConnection,
    commit: &CommitSubmission,
    now: u64,
) -> Op<Accepted> {
    let gid = &commit.group.as_bytes()[..];
    // The ordering point: a conditional update of the group's epoch. Racing commits for
    // the same epoch (in this batch or on another node) queue on the row; once the
    // first commits, the others' condition no longer holds and they update nothing.
    let advanced: Option<i64> = sqlx::query_scalar(
        "UPDATE mls_groups SET epoch = epoch + 1 WHERE group_id = $1 AND epoch = $2
         RETURNING epoch",
    )
    .bind(gid)
    .bind(clamp(commit.epoch))
    .fetch_optional(&mut *c)
    .await?;
    let current = members(&mut *c, commit.group).await?;
    let Some(new_epoch) = advanced else {
        let Some(epoch) = group_epoch(&mut *c, commit.group).await? else {
            return refuse(StoreError::UnknownGroup);
        };
        if !current.contains(&commit.sender) {
            return refuse(StoreError::NotAMember);
        }
        return refuse(StoreError::StaleEpoch { current: epoch });
    };
    // Refusals from here on roll the epoch back with the request's savepoint.
    if !current.contains(&commit.sender) {
        return refuse(StoreError::NotAMember);
    }
    let added = commit.added_once();
    if !added.is_empty() {
        let known: i64 =
            sqlx::query_scalar("SELECT count(*) FROM devices WHERE device_id = ANY($1)")
                .bind(ids(&added))
                .fetch_one(&mut *c)
                .await?;
        if unsigned(known)? != added.len() as u64 {
            return refuse(StoreError::UnknownDevice);
        }
    }
    let recipients: Vec<DeviceId> = current
        .into_iter()
        .filter(|id| *id != commit.sender)
        .collect();
    let mut delivered = fan_out(
        &mut *c,
        &recipients,
        EntryKind::Commit,
        commit.group,
        &commit.commit,
        now,
    )
    .await?;
    if let Some(welcome) = &commit.welcome {
        delivered.extend(
            fan_out(
                &mut *c,
                &added,
                EntryKind::Welcome,
                commit.group,
                welcome,
                now,
            )
            .await?,
        );
    }
    if !commit.removed.is_empty() {
        sqlx::query("DELETE FROM members WHERE group_id = $1 AND device_id = ANY($2)")
            .bind(gid)
            .bind(ids(&commit.removed))
            .execute(&mut *c)
            .await?;
    }
    add_members(&mut *c, commit.group, &added).await?;
    delete_groups_if_empty(c, vec![gid.to_vec()]).await?;
    Ok(Accepted {
        epoch: unsigned(new_epoch)?,
        delivered,
        duplicate: false,
    })
}

/// A send in one statement (the hot path: one round trip besides the savepoint
/// boundary). The statement reads the group and its members, claims the idempotency
/// record only if the sender is a member and the epoch is in the window, and fans out
/// only if that claim is new. Rust then turns the flags into the answer, with the same
/// precedence as the other stores: unknown group, not a member, duplicate, stale epoch.
pub(crate) async fn submit_message(
    c: &mut PgConnection,
    message: &MessageSubmission,
    now: u64,
) -> Op<Accepted> {
    let row = sqlx::query(concat!(
        "WITH g AS (
             SELECT epoch FROM mls_groups WHERE group_id = $1
         ), m AS (
             SELECT device_id FROM members WHERE group_id = $1
         ), ok AS (
             SELECT (SELECT epoch FROM g) AS epoch,
                    EXISTS (SELECT 1 FROM m WHERE device_id = $2) AS member
         ), idem AS (
             INSERT INTO sent_messages (sender, message_id, created_at)
             SELECT $2, $3, $6 FROM ok
             WHERE ok.member AND ok.epoch IS NOT NULL
               AND $4 <= ok.epoch AND ok.epoch - $4 <= $7
             ON CONFLICT DO NOTHING
             RETURNING 1
         ), s AS (
             UPDATE devices SET next_seq = next_seq + 1
             WHERE device_id IN (SELECT device_id FROM m WHERE device_id <> $2)
               AND EXISTS (SELECT 1 FROM idem)
             RETURNING device_id, next_seq - 1 AS seq
         ), ",
        store_once_and_index!("$5", "$8", "$1", "$6"),
        "
         SELECT ok.epoch, ok.member, EXISTS (SELECT 1 FROM idem),
                ARRAY(SELECT device_id FROM mb ORDER BY device_id),
                ARRAY(SELECT seq FROM mb ORDER BY device_id)
         FROM ok"
    ))
    .bind(&message.group.as_bytes()[..])
    .bind(&message.sender.as_bytes()[..])
    .bind(&message.client_message_id.as_bytes()[..])
    .bind(clamp(message.epoch))
    .bind(&message.body)
    .bind(int(now)?)
    .bind(int(MESSAGE_EPOCH_WINDOW)?)
    .bind(i16::from(EntryKind::Message.code()))
    .fetch_one(&mut *c)
    .await?;
    let epoch: Option<i64> = row.try_get(0)?;
    let Some(current) = epoch.map(unsigned).transpose()? else {
        return refuse(StoreError::UnknownGroup);
    };
    let member: bool = row.try_get(1)?;
    if !member {
        return refuse(StoreError::NotAMember);
    }
    let fresh: bool = row.try_get(2)?;
    if !fresh {
        // Either a resend (the record exists) or an epoch outside the window.
        let seen: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sent_messages WHERE sender = $1 AND message_id = $2)",
        )
        .bind(&message.sender.as_bytes()[..])
        .bind(&message.client_message_id.as_bytes()[..])
        .fetch_one(c)
        .await?;
        if seen {
            return Ok(Accepted {
                epoch: current,
                delivered: Vec::new(),
                duplicate: true,
            });
        }
        return refuse(StoreError::StaleEpoch { current });
    }
    let ids: Vec<Vec<u8>> = row.try_get(3)?;
    let seqs: Vec<i64> = row.try_get(4)?;
    let delivered = ids
        .iter()
        .zip(seqs)
        .map(|(id, seq)| Ok((device_id(id)?, unsigned(seq)?)))
        .collect::<Op<Vec<_>>>()?;
    Ok(Accepted {
        epoch: current,
        delivered,
        duplicate: false,
    })
}

// ----- mailboxes -----

pub(crate) async fn fetch(
    c: &mut PgConnection,
    device: DeviceId,
    after_seq: u64,
    limit: u32,
) -> Op<Vec<MailboxEntry>> {
    if !device_exists(&mut *c, device).await? {
        return refuse(StoreError::UnknownDevice);
    }
    let rows = sqlx::query(
        "SELECT m.seq, m.kind, m.group_id, b.body, m.received_at
         FROM mailbox m JOIN bodies b ON b.id = m.body_id
         WHERE m.device_id = $1 AND m.seq > $2
         ORDER BY m.seq LIMIT $3",
    )
    .bind(&device.as_bytes()[..])
    .bind(clamp(after_seq))
    .bind(i64::from(limit))
    .fetch_all(c)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let kind: i16 = row.try_get(1)?;
        let group: Vec<u8> = row.try_get(2)?;
        out.push(MailboxEntry {
            seq: unsigned(row.try_get(0)?)?,
            kind: u8::try_from(kind)
                .ok()
                .and_then(EntryKind::from_code)
                .ok_or_else(|| {
                    Fail::Refused(StoreError::Backend("a stored entry kind is unknown".into()))
                })?,
            group: conversation_id(&group)?,
            body: row.try_get(3)?,
            received_at: unsigned(row.try_get(4)?)?,
        });
    }
    Ok(out)
}

pub(crate) async fn ack(c: &mut PgConnection, device: DeviceId, up_to_seq: u64) -> Op<u64> {
    // The releases stay queued: the batch applies them (see `PostgresStore::ack`).
    let entries: i64 =
        sqlx::query_scalar(delete_and_queue_releases!("device_id = $1 AND seq <= $2"))
            .bind(&device.as_bytes()[..])
            .bind(clamp(up_to_seq))
            .fetch_one(&mut *c)
            .await?;
    // Entries exist only for existing devices; ask only when there were none (a round
    // trip saved on every real ack).
    if entries == 0 && !device_exists(c, device).await? {
        return refuse(StoreError::UnknownDevice);
    }
    unsigned(entries)
}

pub(crate) async fn expire(
    c: &mut PgConnection,
    now: u64,
    retention_secs: u64,
) -> Op<ExpiredCounts> {
    let cutoff = clamp(now.saturating_sub(retention_secs));
    let entries: i64 = sqlx::query_scalar(delete_and_queue_releases!("received_at < $1"))
        .bind(cutoff)
        .fetch_one(&mut *c)
        .await?;
    let entries = unsigned(entries)?;
    let bodies = apply_releases(&mut *c).await?;
    let idempotency_records = sqlx::query("DELETE FROM sent_messages WHERE created_at < $1")
        .bind(cutoff)
        .execute(&mut *c)
        .await?
        .rows_affected();
    let link_slots = sqlx::query("DELETE FROM link_slots WHERE expires_at <= $1")
        .bind(clamp(now))
        .execute(c)
        .await?
        .rows_affected();
    Ok(ExpiredCounts {
        entries,
        bodies,
        link_slots,
        idempotency_records,
    })
}

// ----- link slots -----

pub(crate) async fn put_link_slot(
    c: &mut PgConnection,
    slot: &SlotId,
    payload: &[u8],
    expires_at: u64,
) -> Op<()> {
    let inserted = sqlx::query(
        "INSERT INTO link_slots (slot_id, payload, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(&slot[..])
    .bind(payload)
    .bind(clamp(expires_at))
    .execute(c)
    .await?
    .rows_affected();
    if inserted == 0 {
        return refuse(StoreError::SlotExists);
    }
    Ok(())
}

pub(crate) async fn take_link_slot(
    c: &mut PgConnection,
    slot: &SlotId,
    now: u64,
) -> Op<Option<Vec<u8>>> {
    let row =
        sqlx::query("DELETE FROM link_slots WHERE slot_id = $1 RETURNING payload, expires_at")
            .bind(&slot[..])
            .fetch_optional(c)
            .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let expires_at: i64 = row.try_get(1)?;
    if expires_at <= clamp(now) {
        return Ok(None);
    }
    Ok(Some(row.try_get(0)?))
}

// ----- observability -----

pub(crate) async fn stats(c: &mut PgConnection) -> Op<StoreStats> {
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM devices),
                (SELECT count(*) FROM mls_groups), (SELECT count(*) FROM bodies),
                (SELECT count(*) FROM mailbox)",
    )
    .fetch_one(c)
    .await?;
    Ok(StoreStats {
        accounts: unsigned(row.try_get(0)?)?,
        devices: unsigned(row.try_get(1)?)?,
        groups: unsigned(row.try_get(2)?)?,
        bodies: unsigned(row.try_get(3)?)?,
        mailbox_entries: unsigned(row.try_get(4)?)?,
    })
}
