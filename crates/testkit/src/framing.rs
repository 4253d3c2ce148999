//! MLS framing as the server reads it, around bytes that stand in for ciphertext: for
//! tests and the load tool, which talk to the server without an MLS engine.

use sotto_proto::ConversationId;

/// Content type of an application message in a PrivateMessage's framing.
pub const APPLICATION: u8 = 1;
/// Content type of a commit.
pub const COMMIT: u8 = 3;

/// An MLS PrivateMessage: version 1, wire format 2, the group id, the epoch, the
/// content type, empty authenticated data, then `tail`.
pub fn private_message(
    group: ConversationId,
    epoch: u64,
    content_type: u8,
    tail: &[u8],
) -> Vec<u8> {
    let mut m = vec![0, 1, 0, 2, 16];
    m.extend_from_slice(group.as_bytes());
    m.extend_from_slice(&epoch.to_be_bytes());
    m.push(content_type);
    m.push(0);
    m.extend_from_slice(tail);
    m
}

/// Bytes before a PrivateMessage's `tail`.
pub const HEADER_LEN: usize = 31;

/// An application message of `group` at `epoch`.
pub fn application(group: ConversationId, epoch: u64, tail: &[u8]) -> Vec<u8> {
    private_message(group, epoch, APPLICATION, tail)
}

/// A commit of `group` made at `epoch`.
pub fn commit(group: ConversationId, epoch: u64, tail: &[u8]) -> Vec<u8> {
    private_message(group, epoch, COMMIT, tail)
}

/// An MLS Welcome header (version 1, wire format 3) followed by `tail`.
pub fn welcome(tail: &[u8]) -> Vec<u8> {
    let mut w = vec![0, 1, 0, 3];
    w.extend_from_slice(tail);
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_proto::framing::{ContentType, WireFormat, parse_group_message, wire_format};

    #[test]
    fn the_server_reads_what_these_build() {
        let group = ConversationId::from_bytes([7; 16]);
        let m = application(group, 9, b"tail");
        assert_eq!(m.len(), HEADER_LEN + 4);
        let framing = parse_group_message(&m).unwrap();
        assert_eq!(framing.group_id, group.as_bytes());
        assert_eq!(framing.epoch, 9);
        assert_eq!(framing.content_type, ContentType::Application);
        assert_eq!(
            parse_group_message(&commit(group, 2, b""))
                .unwrap()
                .content_type,
            ContentType::Commit
        );
        assert_eq!(wire_format(&welcome(b"w")).unwrap(), WireFormat::Welcome);
    }
}
