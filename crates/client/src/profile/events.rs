//! Queued events for the next sync, entries that failed, and recorded security events.

use super::*;

impl ProfileTx<'_> {
    /// Queues an event (JSON) for the next report to the user.
    pub fn queue_event(&self, json: &str) -> Result<(), ClientError> {
        self.tx
            .prepare_cached("INSERT INTO queued_events (json) VALUES (?1)")?
            .execute([json])?;
        Ok(())
    }

    /// Takes every queued event, oldest first.
    pub fn take_queued_events(&self) -> Result<Vec<String>, ClientError> {
        let mut stmt = self
            .tx
            .prepare("SELECT json FROM queued_events ORDER BY id")?;
        let events = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        self.tx.execute("DELETE FROM queued_events", [])?;
        Ok(events)
    }

    /// Records a mailbox entry that could not be processed.
    pub fn record_failure(
        &self,
        seq: u64,
        conversation: Option<ConversationId>,
        reason: &str,
        at: u64,
    ) -> Result<(), ClientError> {
        self.tx.execute(
            "INSERT INTO failures (seq, conversation, reason, at) VALUES (?1, ?2, ?3, ?4)",
            params![
                i(seq),
                conversation.map(|c| c.as_bytes().to_vec()),
                reason,
                i(at)
            ],
        )?;
        Ok(())
    }

    /// Recorded processing failures: (seq, reason).
    pub fn failures(&self) -> Result<Vec<(u64, String)>, ClientError> {
        let mut stmt = self
            .tx
            .prepare("SELECT seq, reason FROM failures ORDER BY rowid")?;
        let rows = stmt.query_map([], |r| Ok((u(r.get(0)?), r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a security or membership event for the user to see.
    pub fn record_event(
        &self,
        conversation: Option<ConversationId>,
        kind: &str,
        detail: &str,
        at: u64,
    ) -> Result<(), ClientError> {
        self.tx.execute(
            "INSERT INTO events (conversation, kind, detail, at) VALUES (?1, ?2, ?3, ?4)",
            params![
                conversation.map(|c| c.as_bytes().to_vec()),
                kind,
                detail,
                i(at)
            ],
        )?;
        Ok(())
    }

    /// Recorded events of one kind: (conversation, detail).
    pub fn events(&self, kind: &str) -> Result<Vec<(Option<ConversationId>, String)>, ClientError> {
        let mut stmt = self
            .tx
            .prepare("SELECT conversation, detail FROM events WHERE kind = ?1 ORDER BY id")?;
        let rows = stmt.query_map([kind], |r| {
            Ok((r.get::<_, Option<Vec<u8>>>(0)?, r.get::<_, String>(1)?))
        })?;
        rows.map(|r| {
            let (c, d) = r?;
            Ok((c.as_deref().map(conv_id).transpose()?, d))
        })
        .collect()
    }
}
