//! What an MLS message shows in the clear (RFC 9420 §6), read without any crypto.
//!
//! The delivery service needs a message's group, epoch and content type to order and
//! fan it out; this parser reads exactly those from the MLS framing, so the server can
//! check them against what the client declared without depending on the MLS engine.
//! For a `PrivateMessage` that is all there is to see: the sender, the proposals of a
//! commit and the content are encrypted.

use crate::wire::{DecodeError, Reader};

/// The MLS wire format of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireFormat {
    /// Signed, unencrypted handshake message (Sotto does not send these).
    PublicMessage,
    /// Encrypted handshake or application message.
    PrivateMessage,
    /// Welcome for new members.
    Welcome,
    /// GroupInfo.
    GroupInfo,
    /// KeyPackage.
    KeyPackage,
}

/// The content type of a framed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContentType {
    /// An application message.
    Application,
    /// A proposal.
    Proposal,
    /// A commit.
    Commit,
}

/// What a group message reveals in the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlsFraming {
    /// Public or private message.
    pub wire_format: WireFormat,
    /// The MLS group id (for Sotto, the conversation id bytes).
    pub group_id: Vec<u8>,
    /// The epoch the message was sent in.
    pub epoch: u64,
    /// Application, proposal or commit.
    pub content_type: ContentType,
    /// Length of the cleartext authenticated data (Sotto always sends none).
    pub authenticated_data_len: usize,
}

/// MLS 1.0.
const MLS10: u16 = 1;

/// Reads the wire format of any MLS message.
pub fn wire_format(bytes: &[u8]) -> Result<WireFormat, DecodeError> {
    let mut r = Reader::new(bytes);
    if r.u16("protocol version")? != MLS10 {
        return Err(DecodeError::Invalid("protocol version (expected MLS 1.0)"));
    }
    match r.u16("wire format")? {
        1 => Ok(WireFormat::PublicMessage),
        2 => Ok(WireFormat::PrivateMessage),
        3 => Ok(WireFormat::Welcome),
        4 => Ok(WireFormat::GroupInfo),
        5 => Ok(WireFormat::KeyPackage),
        _ => Err(DecodeError::Invalid("wire format")),
    }
}

/// Reads the cleartext framing of a public or private group message. The rest of the
/// message is not checked here; decryption does that.
pub fn parse_group_message(bytes: &[u8]) -> Result<MlsFraming, DecodeError> {
    let wire_format = wire_format(bytes)?;
    let mut r = Reader::new(bytes);
    r.take(4, "header")?;
    let group_id = read_varbytes(&mut r, "group id")?.to_vec();
    let epoch = r.u64("epoch")?;
    let (content_type, authenticated_data_len) = match wire_format {
        WireFormat::PrivateMessage => {
            let ct = content_type(r.u8("content type")?)?;
            let aad = read_varbytes(&mut r, "authenticated data")?;
            (ct, aad.len())
        }
        WireFormat::PublicMessage => {
            // Sender: type, then a leaf or external-sender index for types 1 and 2.
            match r.u8("sender type")? {
                1 | 2 => {
                    r.take(4, "sender index")?;
                }
                3 | 4 => {}
                _ => return Err(DecodeError::Invalid("sender type")),
            }
            let aad = read_varbytes(&mut r, "authenticated data")?;
            let ct = content_type(r.u8("content type")?)?;
            (ct, aad.len())
        }
        _ => return Err(DecodeError::Invalid("not a group message")),
    };
    Ok(MlsFraming {
        wire_format,
        group_id,
        epoch,
        content_type,
        authenticated_data_len,
    })
}

fn content_type(v: u8) -> Result<ContentType, DecodeError> {
    match v {
        1 => Ok(ContentType::Application),
        2 => Ok(ContentType::Proposal),
        3 => Ok(ContentType::Commit),
        _ => Err(DecodeError::Invalid("content type")),
    }
}

/// Reads an MLS variable-length vector (RFC 9420 §2.1.2: a QUIC-style length).
fn read_varbytes<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<&'a [u8], DecodeError> {
    let first = r.u8(what)?;
    let len = match first >> 6 {
        0 => u64::from(first),
        1 => u64::from(first & 0x3f) << 8 | u64::from(r.u8(what)?),
        2 => {
            let rest = r.array::<3>(what)?;
            u64::from(first & 0x3f) << 24
                | u64::from(rest[0]) << 16
                | u64::from(rest[1]) << 8
                | u64::from(rest[2])
        }
        _ => return Err(DecodeError::Invalid("vector length")),
    };
    let len = usize::try_from(len).map_err(|_| DecodeError::Invalid("vector length"))?;
    if len > r.remaining() {
        return Err(DecodeError::Truncated(what));
    }
    r.take(len, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_hand_built_private_message() {
        let mut msg = vec![0, 1, 0, 2, 4, 0xaa, 0xbb, 0xcc, 0xdd];
        msg.extend_from_slice(&7u64.to_be_bytes());
        msg.push(1); // application
        msg.push(0); // no authenticated data
        msg.extend_from_slice(&[3, 1, 2, 3]); // the rest is not read
        let f = parse_group_message(&msg).unwrap();
        assert_eq!(f.wire_format, WireFormat::PrivateMessage);
        assert_eq!(f.group_id, vec![0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(f.epoch, 7);
        assert_eq!(f.content_type, ContentType::Application);
        assert_eq!(f.authenticated_data_len, 0);
    }

    #[test]
    fn refuses_bad_input_without_panicking() {
        assert!(parse_group_message(&[]).is_err());
        assert!(parse_group_message(&[0, 1, 0, 3]).is_err()); // a Welcome
        assert!(parse_group_message(&[0, 2, 0, 2]).is_err()); // not MLS 1.0
        assert!(parse_group_message(&[0, 1, 0, 2, 0x7f]).is_err()); // length past the end
        assert!(parse_group_message(&[0, 1, 0, 2, 0xc0]).is_err()); // reserved length form
        // Every prefix of a valid message is an error, not a panic.
        let mut msg = vec![0, 1, 0, 2, 0x40, 2, 9, 9];
        msg.extend_from_slice(&1u64.to_be_bytes());
        msg.extend_from_slice(&[3, 0]);
        assert!(parse_group_message(&msg).is_ok());
        for n in 0..msg.len() {
            assert!(parse_group_message(&msg[..n]).is_err(), "prefix {n}");
        }
    }
}
