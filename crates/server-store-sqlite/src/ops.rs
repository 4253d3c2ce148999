//! The store's operations as SQL over one connection. Writers run these inside the
//! writer's per-request savepoint; readers inside a read transaction. Every function
//! leaves the database unchanged when it returns an error (the savepoint is rolled back).

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, params};
use sotto_proto::{ConversationId, DeviceId, IdentityPublicKey, Username};
use sotto_server_store::{
    Accepted, Account, CommitSubmission, DIRECTORY_GROUP, DeviceRecord, DeviceStatus, EntryKind,
    ExpiredCounts, Group, MESSAGE_EPOCH_WINDOW, MailboxEntry, MessageSubmission, NewAccount,
    NewDevice, SlotId, StoreError, StoreStats, day_of,
};

use crate::OrBackend;

// ----- conversions (SQLite integers are i64) -----

fn int(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Backend("a number is too large to store (over 2^63)".into()))
}

/// For bounds in queries, where "everything" is the meaning of a huge value.
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unsigned(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Backend("a stored number is negative".into()))
}

fn device_id(blob: &[u8]) -> Result<DeviceId, StoreError> {
    DeviceId::from_slice(blob)
        .ok_or_else(|| StoreError::Backend("a stored device id has the wrong length".into()))
}

fn conversation_id(blob: &[u8]) -> Result<ConversationId, StoreError> {
    ConversationId::from_slice(blob)
        .ok_or_else(|| StoreError::Backend("a stored group id has the wrong length".into()))
}

fn username(text: &str) -> Result<Username, StoreError> {
    Username::parse(text).map_err(|_| StoreError::Backend("a stored username is invalid".into()))
}

// ----- shared pieces -----

fn device_exists(c: &Connection, device: DeviceId) -> Result<bool, StoreError> {
    c.prepare_cached("SELECT 1 FROM devices WHERE device_id = ?1")
        .or_backend()?
        .exists([&device.as_bytes()[..]])
        .or_backend()
}

fn device_or_token_taken(c: &Connection, device: &NewDevice) -> Result<bool, StoreError> {
    c.prepare_cached("SELECT 1 FROM devices WHERE device_id = ?1 OR token_hash = ?2")
        .or_backend()?
        .exists(params![
            &device.device_id.as_bytes()[..],
            &device.token_hash[..]
        ])
        .or_backend()
}

fn insert_device(
    c: &Connection,
    username: &Username,
    device: &NewDevice,
    now: u64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO devices (device_id, username, token_hash, certificate, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .or_backend()?
    .execute(params![
        &device.device_id.as_bytes()[..],
        username.as_str(),
        &device.token_hash[..],
        device.certificate_bytes,
        int(now)?
    ])
    .or_backend()?;
    Ok(())
}

fn members(c: &Connection, group: ConversationId) -> Result<Vec<DeviceId>, StoreError> {
    let mut stmt = c
        .prepare_cached("SELECT device_id FROM members WHERE group_id = ?1 ORDER BY device_id")
        .or_backend()?;
    let rows = stmt
        .query_map([&group.as_bytes()[..]], |row| row.get::<_, Vec<u8>>(0))
        .or_backend()?;
    rows.map(|blob| device_id(&blob.or_backend()?)).collect()
}

fn group_epoch(c: &Connection, group: ConversationId) -> Result<Option<u64>, StoreError> {
    c.prepare_cached("SELECT epoch FROM mls_groups WHERE group_id = ?1")
        .or_backend()?
        .query_row([&group.as_bytes()[..]], |row| row.get::<_, i64>(0))
        .optional()
        .or_backend()?
        .map(unsigned)
        .transpose()
}

/// Stores `body` once and appends an entry to each recipient's mailbox.
fn fan_out(
    c: &Connection,
    recipients: &[DeviceId],
    kind: EntryKind,
    group: ConversationId,
    body: &[u8],
    now: u64,
) -> Result<Vec<(DeviceId, u64)>, StoreError> {
    let mut delivered = Vec::with_capacity(recipients.len());
    if recipients.is_empty() {
        return Ok(delivered);
    }
    c.prepare_cached("INSERT INTO bodies (body) VALUES (?1)")
        .or_backend()?
        .execute([body])
        .or_backend()?;
    let body_id = c.last_insert_rowid();
    let mut next_seq = c
        .prepare_cached(
            "UPDATE devices SET next_seq = next_seq + 1 WHERE device_id = ?1
             RETURNING next_seq - 1",
        )
        .or_backend()?;
    let mut insert = c
        .prepare_cached(
            "INSERT INTO mailbox (device_id, seq, kind, group_id, body_id, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .or_backend()?;
    let received_at = int(now)?;
    for id in recipients {
        let seq: Option<i64> = next_seq
            .query_row([&id.as_bytes()[..]], |row| row.get(0))
            .optional()
            .or_backend()?;
        let Some(seq) = seq else { continue };
        insert
            .execute(params![
                &id.as_bytes()[..],
                seq,
                kind.code(),
                &group.as_bytes()[..],
                body_id,
                received_at
            ])
            .or_backend()?;
        delivered.push((*id, unsigned(seq)?));
    }
    if delivered.is_empty() {
        c.prepare_cached("DELETE FROM bodies WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute([body_id]))
            .or_backend()?;
    }
    Ok(delivered)
}

/// Deletes those bodies no mailbox entry refers to any more; returns how many.
fn release(c: &Connection, bodies: impl IntoIterator<Item = i64>) -> Result<u64, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "DELETE FROM bodies WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM mailbox WHERE body_id = ?1)",
        )
        .or_backend()?;
    let mut freed = 0;
    for id in bodies.into_iter().collect::<BTreeSet<_>>() {
        freed += stmt.execute([id]).or_backend()? as u64;
    }
    Ok(freed)
}

fn body_ids(
    stmt: &mut rusqlite::CachedStatement<'_>,
    p: impl rusqlite::Params,
) -> Result<Vec<i64>, StoreError> {
    let rows = stmt.query_map(p, |row| row.get::<_, i64>(0)).or_backend()?;
    rows.map(|r| r.or_backend()).collect()
}

// ----- accounts and devices -----

pub(crate) fn create_account(c: &Connection, a: &NewAccount, now: u64) -> Result<(), StoreError> {
    let taken = c
        .prepare_cached("SELECT 1 FROM accounts WHERE username = ?1")
        .or_backend()?
        .exists([a.username.as_str()])
        .or_backend()?;
    if taken {
        return Err(StoreError::UsernameTaken);
    }
    if device_or_token_taken(c, &a.first_device)? {
        return Err(StoreError::DeviceExists);
    }
    c.prepare_cached(
        "INSERT INTO accounts (username, identity_key, device_list, list_version, created_at,
                               last_seen_day)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .or_backend()?
    .execute(params![
        a.username.as_str(),
        &a.identity_key.as_bytes()[..],
        a.device_list_bytes,
        int(a.list_version)?,
        int(now)?,
        int(day_of(now))?
    ])
    .or_backend()?;
    insert_device(c, &a.username, &a.first_device, now)
}

pub(crate) fn account(c: &Connection, name: &Username) -> Result<Option<Account>, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT identity_key, device_list, list_version, created_at, last_seen_day
             FROM accounts WHERE username = ?1",
        )
        .or_backend()?
        .query_row([name.as_str()], |row| {
            Ok((
                row.get::<_, Vec<u8>>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, i64>(4)?,
            ))
        })
        .optional()
        .or_backend()?;
    let Some((key, list, version, created_at, last_seen_day)) = row else {
        return Ok(None);
    };
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| StoreError::Backend("a stored identity key has the wrong length".into()))?;
    let mut stmt = c
        .prepare_cached(
            "SELECT device_id, certificate, created_at FROM devices WHERE username = ?1
             ORDER BY device_id",
        )
        .or_backend()?;
    let rows = stmt
        .query_map([name.as_str()], |row| {
            Ok((
                row.get::<_, Vec<u8>>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })
        .or_backend()?;
    let mut devices = Vec::new();
    for row in rows {
        let (id, certificate_bytes, created_at) = row.or_backend()?;
        devices.push(DeviceRecord {
            device_id: device_id(&id)?,
            certificate_bytes,
            created_at: unsigned(created_at)?,
        });
    }
    Ok(Some(Account {
        username: name.clone(),
        identity_key: IdentityPublicKey::from_bytes(key),
        device_list_bytes: list,
        list_version: unsigned(version)?,
        created_at: unsigned(created_at)?,
        last_seen_day: unsigned(last_seen_day)?,
        devices,
    }))
}

/// The token's device and its account's last-seen day.
pub(crate) fn device_by_token(
    c: &Connection,
    token_hash: &[u8; 32],
) -> Result<Option<(Username, DeviceId, u64)>, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT d.username, d.device_id, a.last_seen_day
             FROM devices d JOIN accounts a ON a.username = d.username
             WHERE d.token_hash = ?1",
        )
        .or_backend()?
        .query_row([&token_hash[..]], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })
        .optional()
        .or_backend()?;
    row.map(|(name, id, day)| Ok((username(&name)?, device_id(&id)?, unsigned(day)?)))
        .transpose()
}

pub(crate) fn touch_last_seen(c: &Connection, name: &Username, day: u64) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE accounts SET last_seen_day = max(last_seen_day, ?2) WHERE username = ?1",
    )
    .or_backend()?
    .execute(params![name.as_str(), int(day)?])
    .or_backend()?;
    Ok(())
}

pub(crate) fn publish_device_list(
    c: &Connection,
    name: &Username,
    list: &[u8],
    version: u64,
    new_device: Option<&NewDevice>,
    now: u64,
) -> Result<(), StoreError> {
    let current = c
        .prepare_cached("SELECT list_version FROM accounts WHERE username = ?1")
        .or_backend()?
        .query_row([name.as_str()], |row| row.get::<_, i64>(0))
        .optional()
        .or_backend()?
        .ok_or(StoreError::UnknownUser)?;
    let current = unsigned(current)?;
    if version <= current {
        return Err(StoreError::VersionNotIncreasing { current });
    }
    if let Some(device) = new_device {
        if device_or_token_taken(c, device)? {
            return Err(StoreError::DeviceExists);
        }
        insert_device(c, name, device, now)?;
    }
    c.prepare_cached("UPDATE accounts SET device_list = ?2, list_version = ?3 WHERE username = ?1")
        .or_backend()?
        .execute(params![name.as_str(), list, int(version)?])
        .or_backend()?;
    Ok(())
}

pub(crate) fn remove_device(
    c: &Connection,
    name: &Username,
    device: DeviceId,
) -> Result<(), StoreError> {
    let owner: Option<String> = c
        .prepare_cached("SELECT username FROM devices WHERE device_id = ?1")
        .or_backend()?
        .query_row([&device.as_bytes()[..]], |row| row.get(0))
        .optional()
        .or_backend()?;
    if owner.as_deref() != Some(name.as_str()) {
        return Err(StoreError::UnknownDevice);
    }
    let id = &device.as_bytes()[..];
    let released = body_ids(
        &mut c
            .prepare_cached("DELETE FROM mailbox WHERE device_id = ?1 RETURNING body_id")
            .or_backend()?,
        [id],
    )?;
    release(c, released)?;
    c.execute("DELETE FROM key_packages WHERE device_id = ?1", [id])
        .or_backend()?;
    let groups: Vec<Vec<u8>> = {
        let mut stmt = c
            .prepare_cached("DELETE FROM members WHERE device_id = ?1 RETURNING group_id")
            .or_backend()?;
        let rows = stmt
            .query_map([id], |row| row.get::<_, Vec<u8>>(0))
            .or_backend()?;
        rows.collect::<Result<_, _>>().or_backend()?
    };
    for group in groups {
        delete_group_if_empty(c, &group)?;
    }
    c.execute("DELETE FROM devices WHERE device_id = ?1", [id])
        .or_backend()?;
    Ok(())
}

pub(crate) fn notify_directory(
    c: &Connection,
    name: &Username,
    except: &[DeviceId],
    now: u64,
) -> Result<Vec<(DeviceId, u64)>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT device_id FROM devices WHERE username = ?1
             UNION
             SELECT peer.device_id FROM devices own
             JOIN members mine ON mine.device_id = own.device_id
             JOIN members peer ON peer.group_id = mine.group_id
             WHERE own.username = ?1",
        )
        .or_backend()?;
    let rows = stmt
        .query_map([name.as_str()], |row| row.get::<_, Vec<u8>>(0))
        .or_backend()?;
    let mut recipients = Vec::new();
    for blob in rows {
        let id = device_id(&blob.or_backend()?)?;
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
}

pub(crate) fn release_account(
    c: &Connection,
    name: &Username,
    now: u64,
) -> Result<Vec<(DeviceId, u64)>, StoreError> {
    let devices: Vec<DeviceId> = {
        let mut stmt = c
            .prepare_cached("SELECT device_id FROM devices WHERE username = ?1")
            .or_backend()?;
        let rows = stmt
            .query_map([name.as_str()], |row| row.get::<_, Vec<u8>>(0))
            .or_backend()?;
        rows.map(|blob| device_id(&blob.or_backend()?))
            .collect::<Result<_, _>>()?
    };
    let exists = c
        .prepare_cached("SELECT 1 FROM accounts WHERE username = ?1")
        .or_backend()?
        .exists([name.as_str()])
        .or_backend()?;
    if !exists {
        return Err(StoreError::UnknownUser);
    }
    let notified = notify_directory(c, name, &devices, now)?;
    for device in devices {
        remove_device(c, name, device)?;
    }
    c.execute("DELETE FROM accounts WHERE username = ?1", [name.as_str()])
        .or_backend()?;
    Ok(notified)
}

pub(crate) fn rotate_token(
    c: &Connection,
    device: DeviceId,
    token_hash: &[u8; 32],
) -> Result<(), StoreError> {
    let taken = c
        .prepare_cached("SELECT 1 FROM devices WHERE token_hash = ?1")
        .or_backend()?
        .exists([&token_hash[..]])
        .or_backend()?;
    if taken {
        return Err(StoreError::DeviceExists);
    }
    let n = c
        .prepare_cached("UPDATE devices SET token_hash = ?2 WHERE device_id = ?1")
        .or_backend()?
        .execute(params![&device.as_bytes()[..], &token_hash[..]])
        .or_backend()?;
    if n == 0 {
        return Err(StoreError::UnknownDevice);
    }
    Ok(())
}

fn delete_group_if_empty(c: &Connection, group: &[u8]) -> Result<(), StoreError> {
    c.prepare_cached(
        "DELETE FROM mls_groups WHERE group_id = ?1
         AND NOT EXISTS (SELECT 1 FROM members WHERE group_id = ?1)",
    )
    .or_backend()?
    .execute([group])
    .or_backend()?;
    Ok(())
}

// ----- KeyPackages -----

pub(crate) fn upload_key_packages(
    c: &Connection,
    device: DeviceId,
    one_time: &[Vec<u8>],
    last_resort: Option<&[u8]>,
) -> Result<(), StoreError> {
    if !device_exists(c, device)? {
        return Err(StoreError::UnknownDevice);
    }
    let id = &device.as_bytes()[..];
    let mut insert = c
        .prepare_cached(
            "INSERT INTO key_packages (device_id, last_resort, body) VALUES (?1, ?2, ?3)",
        )
        .or_backend()?;
    for kp in one_time {
        insert.execute(params![id, 0, kp]).or_backend()?;
    }
    if let Some(kp) = last_resort {
        c.execute(
            "DELETE FROM key_packages WHERE device_id = ?1 AND last_resort = 1",
            [id],
        )
        .or_backend()?;
        insert.execute(params![id, 1, kp]).or_backend()?;
    }
    Ok(())
}

pub(crate) fn claim_key_packages(
    c: &Connection,
    name: &Username,
) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError> {
    let exists = c
        .prepare_cached("SELECT 1 FROM accounts WHERE username = ?1")
        .or_backend()?
        .exists([name.as_str()])
        .or_backend()?;
    if !exists {
        return Err(StoreError::UnknownUser);
    }
    let devices: Vec<Vec<u8>> = {
        let mut stmt = c
            .prepare_cached("SELECT device_id FROM devices WHERE username = ?1 ORDER BY device_id")
            .or_backend()?;
        let rows = stmt
            .query_map([name.as_str()], |row| row.get::<_, Vec<u8>>(0))
            .or_backend()?;
        rows.collect::<Result<_, _>>().or_backend()?
    };
    let mut pick = c
        .prepare_cached(
            "SELECT id, body, last_resort FROM key_packages WHERE device_id = ?1
             ORDER BY last_resort, id LIMIT 1",
        )
        .or_backend()?;
    let mut out = Vec::with_capacity(devices.len());
    for id in devices {
        let found = pick
            .query_row([&id[..]], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Vec<u8>>(1)?,
                    row.get::<_, bool>(2)?,
                ))
            })
            .optional()
            .or_backend()?;
        let Some((row_id, body, last_resort)) = found else {
            continue;
        };
        if !last_resort {
            c.execute("DELETE FROM key_packages WHERE id = ?1", [row_id])
                .or_backend()?;
        }
        out.push((device_id(&id)?, body));
    }
    Ok(out)
}

pub(crate) fn device_status(c: &Connection, device: DeviceId) -> Result<DeviceStatus, StoreError> {
    if !device_exists(c, device)? {
        return Err(StoreError::UnknownDevice);
    }
    let id = &device.as_bytes()[..];
    let (one_time, last_resort): (i64, i64) = c
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE last_resort = 0), count(*) FILTER (WHERE last_resort = 1)
             FROM key_packages WHERE device_id = ?1",
        )
        .or_backend()?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
        .or_backend()?;
    let depth: i64 = c
        .prepare_cached("SELECT count(*) FROM mailbox WHERE device_id = ?1")
        .or_backend()?
        .query_row([id], |row| row.get(0))
        .or_backend()?;
    Ok(DeviceStatus {
        one_time_key_packages: u32::try_from(one_time).unwrap_or(u32::MAX),
        has_last_resort: last_resort > 0,
        mailbox_depth: unsigned(depth)?,
    })
}

// ----- groups -----

pub(crate) fn create_group(
    c: &Connection,
    group: ConversationId,
    creator: DeviceId,
    others: &[DeviceId],
) -> Result<(), StoreError> {
    if group_epoch(c, group)?.is_some() {
        return Err(StoreError::GroupExists);
    }
    let all: BTreeSet<DeviceId> = std::iter::once(creator)
        .chain(others.iter().copied())
        .collect();
    for id in &all {
        if !device_exists(c, *id)? {
            return Err(StoreError::UnknownDevice);
        }
    }
    c.execute(
        "INSERT INTO mls_groups (group_id, epoch) VALUES (?1, 0)",
        [&group.as_bytes()[..]],
    )
    .or_backend()?;
    add_members(c, group, all.iter())
}

fn add_members<'a>(
    c: &Connection,
    group: ConversationId,
    devices: impl Iterator<Item = &'a DeviceId>,
) -> Result<(), StoreError> {
    let mut insert = c
        .prepare_cached("INSERT OR IGNORE INTO members (group_id, device_id) VALUES (?1, ?2)")
        .or_backend()?;
    for id in devices {
        insert
            .execute(params![&group.as_bytes()[..], &id.as_bytes()[..]])
            .or_backend()?;
    }
    Ok(())
}

pub(crate) fn group(c: &Connection, group: ConversationId) -> Result<Option<Group>, StoreError> {
    let Some(epoch) = group_epoch(c, group)? else {
        return Ok(None);
    };
    Ok(Some(Group {
        epoch,
        members: members(c, group)?,
    }))
}

pub(crate) fn submit_commit(
    c: &Connection,
    commit: CommitSubmission,
    now: u64,
) -> Result<Accepted, StoreError> {
    let epoch = group_epoch(c, commit.group)?.ok_or(StoreError::UnknownGroup)?;
    let current = members(c, commit.group)?;
    if !current.contains(&commit.sender) {
        return Err(StoreError::NotAMember);
    }
    if epoch != commit.epoch {
        return Err(StoreError::StaleEpoch { current: epoch });
    }
    for id in &commit.added {
        if !device_exists(c, *id)? {
            return Err(StoreError::UnknownDevice);
        }
    }
    let recipients: Vec<DeviceId> = current
        .into_iter()
        .filter(|id| *id != commit.sender)
        .collect();
    let mut delivered = fan_out(
        c,
        &recipients,
        EntryKind::Commit,
        commit.group,
        &commit.commit,
        now,
    )?;
    let added = commit.added_once();
    if let Some(welcome) = &commit.welcome {
        delivered.extend(fan_out(
            c,
            &added,
            EntryKind::Welcome,
            commit.group,
            welcome,
            now,
        )?);
    }
    let gid = &commit.group.as_bytes()[..];
    let mut remove = c
        .prepare_cached("DELETE FROM members WHERE group_id = ?1 AND device_id = ?2")
        .or_backend()?;
    for id in &commit.removed {
        remove
            .execute(params![gid, &id.as_bytes()[..]])
            .or_backend()?;
    }
    add_members(c, commit.group, added.iter())?;
    let new_epoch = epoch + 1;
    c.prepare_cached("UPDATE mls_groups SET epoch = ?2 WHERE group_id = ?1")
        .or_backend()?
        .execute(params![gid, int(new_epoch)?])
        .or_backend()?;
    delete_group_if_empty(c, gid)?;
    Ok(Accepted {
        epoch: new_epoch,
        delivered,
        duplicate: false,
    })
}

pub(crate) fn submit_message(
    c: &Connection,
    message: MessageSubmission,
    now: u64,
) -> Result<Accepted, StoreError> {
    let current = group_epoch(c, message.group)?.ok_or(StoreError::UnknownGroup)?;
    let members = members(c, message.group)?;
    if !members.contains(&message.sender) {
        return Err(StoreError::NotAMember);
    }
    let sender = &message.sender.as_bytes()[..];
    let mid = &message.client_message_id.as_bytes()[..];
    let seen = c
        .prepare_cached("SELECT 1 FROM sent_messages WHERE sender = ?1 AND message_id = ?2")
        .or_backend()?
        .exists(params![sender, mid])
        .or_backend()?;
    if seen {
        return Ok(Accepted {
            epoch: current,
            delivered: Vec::new(),
            duplicate: true,
        });
    }
    if message.epoch > current || current - message.epoch > MESSAGE_EPOCH_WINDOW {
        return Err(StoreError::StaleEpoch { current });
    }
    let recipients: Vec<DeviceId> = members
        .into_iter()
        .filter(|id| *id != message.sender)
        .collect();
    let delivered = fan_out(
        c,
        &recipients,
        EntryKind::Message,
        message.group,
        &message.body,
        now,
    )?;
    c.prepare_cached(
        "INSERT INTO sent_messages (sender, message_id, created_at) VALUES (?1, ?2, ?3)",
    )
    .or_backend()?
    .execute(params![sender, mid, int(now)?])
    .or_backend()?;
    Ok(Accepted {
        epoch: current,
        delivered,
        duplicate: false,
    })
}

// ----- mailboxes -----

pub(crate) fn fetch(
    c: &Connection,
    device: DeviceId,
    after_seq: u64,
    limit: u32,
) -> Result<Vec<MailboxEntry>, StoreError> {
    if !device_exists(c, device)? {
        return Err(StoreError::UnknownDevice);
    }
    // No `LIMIT ?`: SQLite (3.46+) treats a bound LIMIT as a constant for planning and
    // re-prepares the statement whenever it is bound again, which was a fifth of the
    // server's CPU under load. Rows come in primary-key order, so stopping after
    // `limit` rows reads no more than LIMIT would.
    let mut stmt = c
        .prepare_cached(
            "SELECT m.seq, m.kind, m.group_id, b.body, m.received_at
             FROM mailbox m JOIN bodies b ON b.id = m.body_id
             WHERE m.device_id = ?1 AND m.seq > ?2
             ORDER BY m.seq",
        )
        .or_backend()?;
    let rows = stmt
        .query_map(params![&device.as_bytes()[..], clamp(after_seq)], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, u8>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, Vec<u8>>(3)?,
                row.get::<_, i64>(4)?,
            ))
        })
        .or_backend()?;
    let mut out = Vec::new();
    for row in rows.take(limit as usize) {
        let (seq, kind, group, body, received_at) = row.or_backend()?;
        out.push(MailboxEntry {
            seq: unsigned(seq)?,
            kind: EntryKind::from_code(kind)
                .ok_or_else(|| StoreError::Backend("a stored entry kind is unknown".into()))?,
            group: conversation_id(&group)?,
            body,
            received_at: unsigned(received_at)?,
        });
    }
    Ok(out)
}

pub(crate) fn ack(c: &Connection, device: DeviceId, up_to_seq: u64) -> Result<u64, StoreError> {
    if !device_exists(c, device)? {
        return Err(StoreError::UnknownDevice);
    }
    let acked = body_ids(
        &mut c
            .prepare_cached(
                "DELETE FROM mailbox WHERE device_id = ?1 AND seq <= ?2 RETURNING body_id",
            )
            .or_backend()?,
        params![&device.as_bytes()[..], clamp(up_to_seq)],
    )?;
    let n = acked.len() as u64;
    release(c, acked)?;
    Ok(n)
}

pub(crate) fn expire(
    c: &Connection,
    now: u64,
    retention_secs: u64,
) -> Result<ExpiredCounts, StoreError> {
    let cutoff = clamp(now.saturating_sub(retention_secs));
    let expired = body_ids(
        &mut c
            .prepare_cached("DELETE FROM mailbox WHERE received_at < ?1 RETURNING body_id")
            .or_backend()?,
        [cutoff],
    )?;
    let entries = expired.len() as u64;
    let bodies = release(c, expired)?;
    let idempotency_records = c
        .execute("DELETE FROM sent_messages WHERE created_at < ?1", [cutoff])
        .or_backend()? as u64;
    let link_slots = c
        .execute(
            "DELETE FROM link_slots WHERE expires_at <= ?1",
            [clamp(now)],
        )
        .or_backend()? as u64;
    Ok(ExpiredCounts {
        entries,
        bodies,
        link_slots,
        idempotency_records,
    })
}

// ----- link slots -----

pub(crate) fn put_link_slot(
    c: &Connection,
    slot: &SlotId,
    payload: &[u8],
    expires_at: u64,
) -> Result<(), StoreError> {
    let taken = c
        .prepare_cached("SELECT 1 FROM link_slots WHERE slot_id = ?1")
        .or_backend()?
        .exists([&slot[..]])
        .or_backend()?;
    if taken {
        return Err(StoreError::SlotExists);
    }
    c.execute(
        "INSERT INTO link_slots (slot_id, payload, expires_at) VALUES (?1, ?2, ?3)",
        params![&slot[..], payload, clamp(expires_at)],
    )
    .or_backend()?;
    Ok(())
}

pub(crate) fn take_link_slot(
    c: &Connection,
    slot: &SlotId,
    now: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let row = c
        .prepare_cached("DELETE FROM link_slots WHERE slot_id = ?1 RETURNING payload, expires_at")
        .or_backend()?
        .query_row([&slot[..]], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?))
        })
        .optional()
        .or_backend()?;
    Ok(row
        .filter(|(_, expires_at)| *expires_at > clamp(now))
        .map(|(payload, _)| payload))
}

// ----- observability -----

pub(crate) fn stats(c: &Connection) -> Result<StoreStats, StoreError> {
    let count = |table: &str| -> Result<u64, StoreError> {
        let n: i64 = c
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .or_backend()?;
        unsigned(n)
    };
    Ok(StoreStats {
        accounts: count("accounts")?,
        devices: count("devices")?,
        groups: count("mls_groups")?,
        bodies: count("bodies")?,
        mailbox_entries: count("mailbox")?,
    })
}
