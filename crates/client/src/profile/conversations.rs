//! The `conversations` table: kinds, names, timers, unread counts, pending proposals.

use super::*;

impl ProfileTx<'_> {
    /// Adds a conversation row (or re-activates it after a re-join).
    pub fn put_conversation(&self, c: &StoredConversation, now: u64) -> Result<(), ClientError> {
        self.tx.execute(
            "INSERT INTO conversations (id, kind, name, peer, disappearing_secs, active, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (id) DO UPDATE SET active = excluded.active,
                 kind = excluded.kind, name = coalesce(excluded.name, name),
                 peer = coalesce(excluded.peer, peer)",
            params![
                &c.id.as_bytes()[..],
                c.kind,
                c.name,
                c.peer.as_ref().map(Username::as_str),
                c.disappearing_secs,
                c.active,
                i(now)
            ],
        )?;
        Ok(())
    }

    /// Forgets a conversation and its messages.
    pub fn delete_conversation(&self, id: ConversationId) -> Result<(), ClientError> {
        let key = &id.as_bytes()[..];
        self.tx
            .execute("DELETE FROM messages WHERE conversation = ?1", [key])?;
        self.tx
            .execute("DELETE FROM reactions WHERE conversation = ?1", [key])?;
        self.tx
            .execute("DELETE FROM conversations WHERE id = ?1", [key])?;
        Ok(())
    }

    /// Marks a conversation inactive (left or removed).
    pub fn deactivate(&self, id: ConversationId) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE conversations SET active = 0 WHERE id = ?1",
            [&id.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// Names a group. A conversation that gets a name is a group: one joined as a
    /// one-to-one conversation (a group of two) becomes one.
    pub fn set_name(&self, id: ConversationId, name: &str) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE conversations SET name = ?2, kind = 'group', peer = NULL WHERE id = ?1",
            params![&id.as_bytes()[..], name],
        )?;
        Ok(())
    }

    /// Sets a conversation's disappearing timer.
    pub fn set_disappearing(
        &self,
        id: ConversationId,
        secs: Option<u32>,
    ) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE conversations SET disappearing_secs = ?2 WHERE id = ?1",
            params![&id.as_bytes()[..], secs],
        )?;
        Ok(())
    }

    pub(super) fn conversation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConversationRow> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    }

    pub(super) fn to_conversation(row: ConversationRow) -> Result<StoredConversation, ClientError> {
        let (id, kind, name, peer, disappearing_secs, active) = row;
        Ok(StoredConversation {
            id: conv_id(&id)?,
            kind,
            name,
            peer: peer.and_then(|p| Username::parse(&p).ok()),
            disappearing_secs,
            active,
        })
    }

    /// One conversation.
    pub fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<StoredConversation>, ClientError> {
        self.tx
            .query_row(
                "SELECT id, kind, name, peer, disappearing_secs, active FROM conversations WHERE id = ?1",
                [&id.as_bytes()[..]],
                Self::conversation_row,
            )
            .optional()?
            .map(Self::to_conversation)
            .transpose()
    }

    /// The active direct conversation with `peer`, if any.
    pub fn direct_with(&self, peer: &Username) -> Result<Option<StoredConversation>, ClientError> {
        self.tx
            .query_row(
                "SELECT id, kind, name, peer, disappearing_secs, active FROM conversations
                 WHERE kind = 'direct' AND active = 1 AND peer = ?1",
                [peer.as_str()],
                Self::conversation_row,
            )
            .optional()?
            .map(Self::to_conversation)
            .transpose()
    }

    /// Every conversation, newest first.
    pub fn conversations(&self) -> Result<Vec<StoredConversation>, ClientError> {
        let mut stmt = self.tx.prepare(
            "SELECT id, kind, name, peer, disappearing_secs, active FROM conversations
             ORDER BY created_at DESC, id",
        )?;
        let rows = stmt.query_map([], Self::conversation_row)?;
        rows.map(|r| Self::to_conversation(r?)).collect()
    }

    /// Unread incoming messages of a conversation.
    pub fn unread(&self, id: ConversationId) -> Result<u64, ClientError> {
        let n: i64 = self.tx.query_row(
            "SELECT count(*) FROM messages WHERE conversation = ?1 AND outgoing = 0
             AND read = 0 AND deleted = 0",
            [&id.as_bytes()[..]],
            |r| r.get(0),
        )?;
        Ok(u(n))
    }

    /// Marks every message of a conversation read.
    pub fn mark_read(&self, id: ConversationId) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE messages SET read = 1 WHERE conversation = ?1",
            [&id.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// Notes that a conversation has proposals waiting for a commit.
    pub fn mark_pending_proposals(&self, id: ConversationId) -> Result<(), ClientError> {
        self.tx.execute(
            "INSERT OR IGNORE INTO pending_proposals (conversation) VALUES (?1)",
            [&id.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// Forgets that marker.
    pub fn clear_pending_proposals(&self, id: ConversationId) -> Result<(), ClientError> {
        self.tx.execute(
            "DELETE FROM pending_proposals WHERE conversation = ?1",
            [&id.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// Conversations with proposals waiting for a commit.
    pub fn pending_proposals(&self) -> Result<Vec<ConversationId>, ClientError> {
        let mut stmt = self
            .tx
            .prepare("SELECT conversation FROM pending_proposals")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|r| conv_id(&r?)).collect()
    }

    /// Notes that a conversation's members must be checked against their device lists
    /// (after a commit or a Welcome, or when a member's list changed).
    /// Active conversations where this device last refreshed its own keys before
    /// `before` and that had messages since (a conversation seen for the first time
    /// counts from `now`: its leaf was made when it joined), or where an update was
    /// forced.
    pub fn self_updates_due(
        &self,
        before: u64,
        now: u64,
    ) -> Result<Vec<ConversationId>, ClientError> {
        self.tx.execute(
            "INSERT OR IGNORE INTO self_updates (conversation, at)
             SELECT id, ?1 FROM conversations WHERE active = 1",
            [i(now)],
        )?;
        // Only where something happened since (a quiet conversation costs nothing),
        // or where an update was forced (`at = 0`).
        let mut stmt = self.tx.prepare(
            "SELECT s.conversation FROM self_updates s
             JOIN conversations c ON c.id = s.conversation
             WHERE c.active = 1 AND s.at < ?1
               AND (s.at = 0 OR EXISTS (SELECT 1 FROM messages m
                    WHERE m.conversation = s.conversation AND m.received_at > s.at))",
        )?;
        let rows = stmt.query_map([i(before)], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|id| conv_id(&id?)).collect()
    }

    /// Records a self-update in `id` at `at`.
    pub fn set_self_updated(&self, id: ConversationId, at: u64) -> Result<(), ClientError> {
        self.tx.execute(
            "INSERT INTO self_updates (conversation, at) VALUES (?1, ?2)
             ON CONFLICT (conversation) DO UPDATE SET at = excluded.at",
            params![&id.as_bytes()[..], i(at)],
        )?;
        Ok(())
    }

    /// Makes every conversation due for a self-update (a device of this account was
    /// removed: keys it may have seen are replaced at once).
    pub fn make_self_updates_due(&self) -> Result<(), ClientError> {
        self.tx.execute("UPDATE self_updates SET at = 0", [])?;
        self.tx.execute(
            "INSERT OR IGNORE INTO self_updates (conversation, at)
             SELECT id, 0 FROM conversations WHERE active = 1",
            [],
        )?;
        Ok(())
    }

    pub fn mark_roster_to_check(&self, id: ConversationId) -> Result<(), ClientError> {
        self.tx.execute(
            "INSERT OR IGNORE INTO rosters_to_check (conversation) VALUES (?1)",
            [&id.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// Forgets that marker.
    pub fn clear_roster_to_check(&self, id: ConversationId) -> Result<(), ClientError> {
        self.tx.execute(
            "DELETE FROM rosters_to_check WHERE conversation = ?1",
            [&id.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// Conversations whose members must be checked against their device lists.
    pub fn rosters_to_check(&self) -> Result<Vec<ConversationId>, ClientError> {
        let mut stmt = self
            .tx
            .prepare("SELECT conversation FROM rosters_to_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|r| conv_id(&r?)).collect()
    }
}
