//! Schema and migrations, applied at start-up. `sotto_migrations` holds one row per
//! applied step; a step runs in one transaction that first claims its row, so two nodes
//! starting together apply each step once (the second waits on the row, then sees it
//! taken and skips). No advisory locks, no `LOCK TABLE`: plain SQL that PostgreSQL-
//! compatible distributed databases also run. Append steps; never edit a shipped one.

use sotto_server_store::StoreError;
use sqlx::{Connection, PgConnection};

use crate::backend;

/// Migration steps, in order. Step `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema. Same shape as the SQLite store's, except that a body counts
    // the mailbox rows referring to it (`refs`): concurrent acks on different nodes then
    // serialise on the body's row, and the last one deletes it.
    r#"
    CREATE TABLE accounts (
        username      TEXT PRIMARY KEY,
        identity_key  BYTEA NOT NULL,
        device_list   BYTEA NOT NULL,
        list_version  BIGINT NOT NULL,
        created_at    BIGINT NOT NULL,
        last_seen_day BIGINT NOT NULL
    );

    CREATE TABLE devices (
        device_id   BYTEA PRIMARY KEY,
        username    TEXT NOT NULL REFERENCES accounts(username),
        token_hash  BYTEA NOT NULL UNIQUE,
        certificate BYTEA NOT NULL,
        created_at  BIGINT NOT NULL,
        next_seq    BIGINT NOT NULL DEFAULT 1
    );
    CREATE INDEX devices_by_user ON devices(username);

    CREATE TABLE key_packages (
        id          BIGSERIAL PRIMARY KEY,
        device_id   BYTEA NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        last_resort BOOLEAN NOT NULL,
        body        BYTEA NOT NULL
    );
    CREATE INDEX key_packages_by_device ON key_packages(device_id, last_resort, id);

    CREATE TABLE mls_groups (
        group_id BYTEA PRIMARY KEY,
        epoch    BIGINT NOT NULL
    );

    CREATE TABLE members (
        group_id  BYTEA NOT NULL REFERENCES mls_groups(group_id) ON DELETE CASCADE,
        device_id BYTEA NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        PRIMARY KEY (group_id, device_id)
    );
    CREATE INDEX members_by_device ON members(device_id);

    CREATE TABLE bodies (
        id   BIGSERIAL PRIMARY KEY,
        refs BIGINT NOT NULL,
        body BYTEA NOT NULL
    );

    CREATE TABLE mailbox (
        device_id   BYTEA NOT NULL REFERENCES devices(device_id),
        seq         BIGINT NOT NULL,
        kind        SMALLINT NOT NULL,
        group_id    BYTEA NOT NULL,
        body_id     BIGINT NOT NULL REFERENCES bodies(id),
        received_at BIGINT NOT NULL,
        PRIMARY KEY (device_id, seq)
    );
    CREATE INDEX mailbox_by_body ON mailbox(body_id);
    CREATE INDEX mailbox_by_age ON mailbox(received_at);

    CREATE TABLE sent_messages (
        sender     BYTEA NOT NULL,
        message_id BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (sender, message_id)
    );
    CREATE INDEX sent_messages_by_age ON sent_messages(created_at);

    CREATE TABLE link_slots (
        slot_id    BYTEA PRIMARY KEY,
        payload    BYTEA NOT NULL,
        expires_at BIGINT NOT NULL
    );
    "#,
    // 2: acks queue their body releases here (append-only, so thousands of acks for one
    // group message do not queue on that body's row); each write batch applies the
    // queue in bulk before it commits.
    r#"
    CREATE TABLE body_releases (
        id      BIGSERIAL PRIMARY KEY,
        body_id BIGINT NOT NULL,
        n       BIGINT NOT NULL
    );
    "#,
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`SCHEMA_VERSION`]; refuses a newer database.
pub(crate) async fn migrate(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS sotto_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .execute(&mut *conn)
    .await
    .map_err(backend)?;
    let newest: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM sotto_migrations")
        .fetch_one(&mut *conn)
        .await
        .map_err(backend)?;
    if let Some(newest) = newest
        && newest > SCHEMA_VERSION
    {
        return Err(StoreError::Backend(
            format!(
                "the database schema is version {newest}, newer than this server understands \
             ({SCHEMA_VERSION})"
            )
            .into(),
        ));
    }
    for (index, step) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        let mut tx = conn.begin().await.map_err(backend)?;
        let claimed = sqlx::query(
            "INSERT INTO sotto_migrations (version) VALUES ($1) ON CONFLICT DO NOTHING",
        )
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
        if claimed == 0 {
            // Applied before (or by a node that started at the same time).
            tx.rollback().await.map_err(backend)?;
            continue;
        }
        sqlx::raw_sql(step)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
    }
    Ok(())
}
