//! Entries handed from the request that stored them to the device's WebSocket on the
//! same node, so the socket sends them without reading them back from the store.
//!
//! The store stays the source of truth: a socket sends handed-off entries only while
//! they continue its cursor without a gap (seqs are consecutive per device), and reads
//! the store whenever the wake-up announces more than it was handed (entries stored by
//! another node), when entries were dropped (the queue is bounded), or when the
//! wake-up says nothing about seqs. So the hand-off only saves reads; it never decides
//! what a device gets.

use std::sync::{Arc, Mutex};

use sotto_proto::ConversationId;
use sotto_server_store::EntryKind;

use sotto_server_fanout::Wake;

/// Most base64 body bytes waiting in one socket's queue; entries beyond are dropped
/// (the socket reads them from the store), so a slow socket holds little memory.
const MAX_QUEUED_BYTES: usize = 256 * 1024;

/// A stored entry, ready to send. (No `Debug`: it holds a message body.)
#[derive(Clone)]
pub(crate) struct Ready {
    pub seq: u64,
    pub kind: EntryKind,
    pub group: ConversationId,
    /// The body in base64 (shared by every recipient of one message).
    pub body_b64: Arc<str>,
    pub received_at: u64,
}

/// One socket's queue.
#[derive(Default)]
pub(crate) struct Handoff(Mutex<Queue>);

#[derive(Default)]
struct Queue {
    ready: Vec<Ready>,
    bytes: usize,
    /// Entries were dropped since the last [`Handoff::take`].
    dropped: bool,
    /// The socket has sent everything up to here; older entries are not queued.
    sent: u64,
}

impl Handoff {
    /// Queues `ready` unless the socket already sent it; drops it (and remembers that)
    /// when the queue is full.
    pub fn push(&self, ready: Ready) {
        let Ok(mut q) = self.0.lock() else {
            return;
        };
        if ready.seq <= q.sent {
            return;
        }
        if q.bytes + ready.body_b64.len() > MAX_QUEUED_BYTES {
            q.dropped = true;
            return;
        }
        q.bytes += ready.body_b64.len();
        q.ready.push(ready);
    }

    /// Everything queued, and whether anything was dropped, emptying the queue.
    pub fn take(&self) -> (Vec<Ready>, bool) {
        let Ok(mut q) = self.0.lock() else {
            // A poisoned queue (a bug panicked holding it): say "dropped" so the
            // socket reads the store.
            return (Vec::new(), true);
        };
        q.bytes = 0;
        (std::mem::take(&mut q.ready), std::mem::take(&mut q.dropped))
    }

    /// The socket sent everything up to `seq` (read from the store): queued entries
    /// up to there are no longer needed.
    pub fn sent_up_to(&self, seq: u64) {
        let Ok(mut q) = self.0.lock() else {
            return;
        };
        q.sent = q.sent.max(seq);
        let sent = q.sent;
        q.ready.retain(|r| r.seq > sent);
        q.bytes = q.ready.iter().map(|r| r.body_b64.len()).sum();
    }
}

/// What a socket at `cursor` does with a wake-up and the entries handed to it: the
/// entries that continue the cursor without a gap (to send now, in order), and whether
/// it must then read the store for the rest.
pub(crate) fn continue_from(
    cursor: u64,
    mut ready: Vec<Ready>,
    dropped: bool,
    wake: Wake,
) -> (Vec<Ready>, bool) {
    ready.sort_unstable_by_key(|r| r.seq);
    let mut next = cursor;
    let mut gap = false;
    ready.retain(|r| {
        if gap || r.seq <= next {
            // Already sent (or a duplicate), or after a gap.
            return false;
        }
        if r.seq == next + 1 {
            next = r.seq;
            true
        } else {
            gap = true;
            false
        }
    });
    let covered = match wake {
        Wake::UpTo(seq) => next >= seq,
        Wake::Reread => false,
    };
    (ready, gap || dropped || !covered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(seq: u64) -> Ready {
        Ready {
            seq,
            kind: EntryKind::Message,
            group: ConversationId::from_bytes([7; 16]),
            body_b64: Arc::from("AAAA"),
            received_at: 1,
        }
    }

    fn seqs(r: &[Ready]) -> Vec<u64> {
        r.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn a_gapless_run_covering_the_wake_needs_no_read() {
        let (send, read) = continue_from(4, vec![ready(6), ready(5)], false, Wake::UpTo(6));
        assert_eq!(seqs(&send), [5, 6]);
        assert!(!read);
    }

    #[test]
    fn entries_stored_elsewhere_are_read_from_the_store() {
        // Handed 5, but the wake-up says 6 exists (stored by another node).
        let (send, read) = continue_from(4, vec![ready(5)], false, Wake::UpTo(6));
        assert_eq!(seqs(&send), [5]);
        assert!(read);
        // Handed 7 only: 5 and 6 are missing, so nothing is sent from the hand-off.
        let (send, read) = continue_from(4, vec![ready(7)], false, Wake::UpTo(7));
        assert!(send.is_empty());
        assert!(read);
        // A run stops at the first gap.
        let (send, read) =
            continue_from(4, vec![ready(5), ready(6), ready(8)], false, Wake::UpTo(8));
        assert_eq!(seqs(&send), [5, 6]);
        assert!(read);
    }

    #[test]
    fn sent_and_duplicate_entries_are_skipped() {
        let (send, read) = continue_from(
            5,
            vec![ready(3), ready(5), ready(6), ready(6)],
            false,
            Wake::UpTo(6),
        );
        assert_eq!(seqs(&send), [6]);
        assert!(!read);
        // A wake-up for what was already sent reads nothing.
        let (send, read) = continue_from(9, Vec::new(), false, Wake::UpTo(9));
        assert!(send.is_empty());
        assert!(!read);
    }

    #[test]
    fn drops_and_rereads_always_read_the_store() {
        let (send, read) = continue_from(4, vec![ready(5)], true, Wake::UpTo(5));
        assert_eq!(seqs(&send), [5]);
        assert!(read);
        let (send, read) = continue_from(4, vec![ready(5)], false, Wake::Reread);
        assert_eq!(seqs(&send), [5]);
        assert!(read);
    }

    #[test]
    fn the_queue_is_bounded_and_forgets_what_was_sent() {
        let handoff = Handoff::default();
        let big: Arc<str> = Arc::from("x".repeat(MAX_QUEUED_BYTES / 2 + 1));
        for seq in 1..=3 {
            handoff.push(Ready {
                body_b64: Arc::clone(&big),
                ..ready(seq)
            });
        }
        let (queued, dropped) = handoff.take();
        assert_eq!(seqs(&queued), [1]);
        assert!(dropped, "the entries that did not fit are reported");
        // Taking empties the queue and its byte count.
        handoff.push(Ready {
            body_b64: Arc::clone(&big),
            ..ready(4)
        });
        let (queued, dropped) = handoff.take();
        assert_eq!(seqs(&queued), [4]);
        assert!(!dropped);

        for seq in 5..=8 {
            handoff.push(ready(seq));
        }
        handoff.sent_up_to(6);
        handoff.push(ready(6)); // read from the store already: not queued again
        let (queued, dropped) = handoff.take();
        assert_eq!(seqs(&queued), [7, 8]);
        assert!(!dropped);
    }
}
