//! The `messages` and `reactions` tables: history, edits, deletes, reactions, expiry.

use super::*;

impl ProfileTx<'_> {
    /// Stores a message; `false` if one with this id is already stored (a duplicate).
    pub fn insert_message(&self, m: &StoredMessage) -> Result<bool, ClientError> {
        let n = self.tx.execute(
            "INSERT OR IGNORE INTO messages (conversation, id, sender, sender_device, outgoing,
                 kind, text, attachment, sent_at, received_at, read, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                &m.conversation.as_bytes()[..],
                m.id.to_string(),
                m.sender.as_str(),
                &m.sender_device.as_bytes()[..],
                m.outgoing,
                m.kind,
                m.text,
                m.attachment,
                i(m.sent_at),
                i(m.received_at),
                m.outgoing,
                m.expires_at.map(i),
            ],
        )?;
        Ok(n == 1)
    }

    /// The message `id` of `conversation`.
    pub fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> Result<Option<StoredMessage>, ClientError> {
        let mut list = self.messages_where(
            "conversation = ?1 AND id = ?2",
            params![&conversation.as_bytes()[..], id.to_string()],
        )?;
        Ok(list.pop())
    }

    /// A conversation's messages in the order this device stored them.
    pub fn history(&self, conversation: ConversationId) -> Result<Vec<StoredMessage>, ClientError> {
        self.messages_where("conversation = ?1", params![&conversation.as_bytes()[..]])
    }

    pub(super) fn messages_where(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<StoredMessage>, ClientError> {
        let sql = format!(
            "SELECT conversation, id, sender, sender_device, outgoing, kind, text, attachment,
                    sent_at, received_at, edited_at, deleted, expires_at
             FROM messages WHERE {filter} ORDER BY rowid"
        );
        let mut stmt = self.tx.prepare(&sql)?;
        let rows = stmt.query_map(args, |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, i64>(9)?,
                r.get::<_, Option<i64>>(10)?,
                r.get::<_, bool>(11)?,
                r.get::<_, Option<i64>>(12)?,
            ))
        })?;
        let corrupt = || ClientError::Corrupt("a stored message".into());
        rows.map(|row| {
            let (
                c,
                id,
                sender,
                dev,
                outgoing,
                kind,
                text,
                attachment,
                sent,
                recv,
                edited,
                deleted,
                expires,
            ) = row?;
            Ok(StoredMessage {
                conversation: conv_id(&c)?,
                id: MessageId::parse(&id).map_err(|_| corrupt())?,
                sender: Username::parse(&sender).map_err(|_| corrupt())?,
                sender_device: DeviceId::from_slice(&dev).ok_or_else(corrupt)?,
                outgoing,
                kind,
                text,
                attachment,
                sent_at: u(sent),
                received_at: u(recv),
                edited_at: edited.map(u),
                deleted,
                expires_at: expires.map(u),
            })
        })
        .collect()
    }

    /// Replaces a message's attachment JSON (e.g. to record where it was saved).
    pub fn set_attachment(
        &self,
        conversation: ConversationId,
        id: MessageId,
        json: &str,
    ) -> Result<(), ClientError> {
        self.tx.execute(
            "UPDATE messages SET attachment = ?3 WHERE conversation = ?1 AND id = ?2",
            params![&conversation.as_bytes()[..], id.to_string(), json],
        )?;
        Ok(())
    }

    /// Replaces a message's text if `sender` sent it; `false` otherwise.
    pub fn edit_message(
        &self,
        conversation: ConversationId,
        id: MessageId,
        sender: &Username,
        text: &str,
        at: u64,
    ) -> Result<bool, ClientError> {
        let n = self.tx.execute(
            "UPDATE messages SET text = ?4, edited_at = ?5
             WHERE conversation = ?1 AND id = ?2 AND sender = ?3 AND deleted = 0",
            params![
                &conversation.as_bytes()[..],
                id.to_string(),
                sender.as_str(),
                text,
                i(at)
            ],
        )?;
        Ok(n == 1)
    }

    /// Deletes a message's content for everyone if `sender` sent it; `false` otherwise.
    pub fn delete_message(
        &self,
        conversation: ConversationId,
        id: MessageId,
        sender: &Username,
    ) -> Result<bool, ClientError> {
        let n = self.tx.execute(
            "UPDATE messages SET text = NULL, attachment = NULL, deleted = 1
             WHERE conversation = ?1 AND id = ?2 AND sender = ?3",
            params![
                &conversation.as_bytes()[..],
                id.to_string(),
                sender.as_str()
            ],
        )?;
        self.tx.execute(
            "DELETE FROM reactions WHERE conversation = ?1 AND target = ?2",
            params![&conversation.as_bytes()[..], id.to_string()],
        )?;
        Ok(n == 1)
    }

    /// Sets (or with `None` removes) `sender`'s reaction to a message.
    pub fn set_reaction(
        &self,
        conversation: ConversationId,
        target: MessageId,
        sender: &Username,
        emoji: Option<&str>,
    ) -> Result<(), ClientError> {
        match emoji {
            Some(e) => self.tx.execute(
                "INSERT INTO reactions (conversation, target, sender, emoji) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO UPDATE SET emoji = excluded.emoji",
                params![&conversation.as_bytes()[..], target.to_string(), sender.as_str(), e],
            )?,
            None => self.tx.execute(
                "DELETE FROM reactions WHERE conversation = ?1 AND target = ?2 AND sender = ?3",
                params![&conversation.as_bytes()[..], target.to_string(), sender.as_str()],
            )?,
        };
        Ok(())
    }

    /// Deletes messages whose disappearing time has passed; returns how many.
    pub fn delete_expired(
        &self,
        now: u64,
    ) -> Result<(usize, Vec<std::path::PathBuf>), ClientError> {
        // Every copy goes: the row, reactions to it, and events queued for the UI that
        // still carry its text. The database overwrites what it deletes
        // (`secure_delete`); the caller deletes the returned saved attachment files
        // and checkpoints the WAL after the commit.
        let expired: Vec<(Vec<u8>, String, Option<String>)> = {
            let mut stmt = self.tx.prepare(
                "SELECT conversation, id, attachment FROM messages
                 WHERE expires_at IS NOT NULL AND expires_at <= ?1",
            )?;
            let rows = stmt.query_map([i(now)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut files = Vec::new();
        for (conversation, id, attachment) in &expired {
            self.tx.execute(
                "DELETE FROM reactions WHERE conversation = ?1 AND target = ?2",
                params![conversation, id],
            )?;
            self.tx.execute(
                "DELETE FROM queued_events WHERE instr(json, ?1) > 0",
                [format!("\"id\":\"{id}\"")],
            )?;
            let saved = attachment
                .as_deref()
                .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok())
                .and_then(|a| a["path"].as_str().map(std::path::PathBuf::from));
            files.extend(saved);
        }
        self.tx.execute(
            "DELETE FROM messages WHERE expires_at IS NOT NULL AND expires_at <= ?1",
            [i(now)],
        )?;
        Ok((expired.len(), files))
    }
}
