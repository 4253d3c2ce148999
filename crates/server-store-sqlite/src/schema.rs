//! Schema and migrations. `PRAGMA user_version` is the number of steps applied; each
//! step runs in its own transaction with the version bump, so a crash mid-migration
//! leaves the previous version intact. Append steps; never edit a shipped one.

use rusqlite::Connection;
use sotto_server_store::StoreError;

use crate::OrBackend;

/// Migration steps, in order. Step `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE accounts (
        username      TEXT PRIMARY KEY,
        identity_key  BLOB NOT NULL,
        device_list   BLOB NOT NULL,
        list_version  INTEGER NOT NULL,
        created_at    INTEGER NOT NULL,
        last_seen_day INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE devices (
        device_id   BLOB PRIMARY KEY,
        username    TEXT NOT NULL REFERENCES accounts(username),
        token_hash  BLOB NOT NULL UNIQUE,
        certificate BLOB NOT NULL,
        created_at  INTEGER NOT NULL,
        next_seq    INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX devices_by_user ON devices(username);

    CREATE TABLE key_packages (
        id          INTEGER PRIMARY KEY,
        device_id   BLOB NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        last_resort INTEGER NOT NULL,
        body        BLOB NOT NULL
    );
    CREATE INDEX key_packages_by_device ON key_packages(device_id, last_resort, id);

    CREATE TABLE mls_groups (
        group_id BLOB PRIMARY KEY,
        epoch    INTEGER NOT NULL
    );

    CREATE TABLE members (
        group_id  BLOB NOT NULL REFERENCES mls_groups(group_id) ON DELETE CASCADE,
        device_id BLOB NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        PRIMARY KEY (group_id, device_id)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_device ON members(device_id);

    CREATE TABLE bodies (
        id   INTEGER PRIMARY KEY,
        body BLOB NOT NULL
    );

    CREATE TABLE mailbox (
        device_id   BLOB NOT NULL REFERENCES devices(device_id),
        seq         INTEGER NOT NULL,
        kind        INTEGER NOT NULL,
        group_id    BLOB NOT NULL,
        body_id     INTEGER NOT NULL REFERENCES bodies(id),
        received_at INTEGER NOT NULL,
        PRIMARY KEY (device_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX mailbox_by_body ON mailbox(body_id);
    CREATE INDEX mailbox_by_age ON mailbox(received_at);

    CREATE TABLE sent_messages (
        sender     BLOB NOT NULL,
        message_id BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (sender, message_id)
    ) WITHOUT ROWID;
    CREATE INDEX sent_messages_by_age ON sent_messages(created_at);

    CREATE TABLE link_slots (
        slot_id    BLOB PRIMARY KEY,
        payload    BLOB NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the database up to [`SCHEMA_VERSION`]; refuses a newer database.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: u32 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .or_backend()?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Backend(
            format!(
                "the database schema is version {current}, newer than this server understands \
             ({SCHEMA_VERSION})"
            )
            .into(),
        ));
    }
    for (index, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction().or_backend()?;
        tx.execute_batch(step).or_backend()?;
        tx.pragma_update(None, "user_version", index + 1)
            .or_backend()?;
        tx.commit().or_backend()?;
    }
    Ok(())
}
