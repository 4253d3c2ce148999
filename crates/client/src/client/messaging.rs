//! What a person sends: texts, files, reactions, edits, deletes, the disappearing timer; saving received attachments.

use super::*;

impl Client {
    // ----- sending -----

    /// Sends a text to a conversation, or to a user (their one-to-one conversation).
    pub async fn send_text(
        &self,
        to: impl Into<Recipient>,
        text: &str,
    ) -> Result<Sent, ClientError> {
        let id = self.conversation_for(to.into()).await?;
        self.send_content(
            id,
            Content::Text(Text {
                body: text.to_owned(),
            }),
        )
        .await
    }

    /// Sends a file: encrypts it under a fresh key, uploads the ciphertext (streamed),
    /// then sends the pointer, key and digest inside an MLS message.
    pub async fn send_file(
        &self,
        to: impl Into<Recipient>,
        path: &Path,
        caption: Option<&str>,
    ) -> Result<Sent, ClientError> {
        let account = self.account()?;
        let not_a_file = || {
            ClientError::file(
                "send",
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            )
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(not_a_file)?;
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(not_a_file()),
            Err(e) => return Err(ClientError::file("read", path, e)),
        }
        let id = self.conversation_for(to.into()).await?;
        let key: [u8; 32] = self.read(rng_bytes::<32>)?;
        let staging = self.home.join("outgoing");
        std::fs::create_dir_all(&staging).map_err(|e| ClientError::file("create", &staging, e))?;
        let sealed_path = staging.join(format!(
            "{}.sealed",
            sotto_proto::ids::to_hex(&self.read(rng_bytes::<16>)?)
        ));
        let result = async {
            let (input, output) = (path.to_path_buf(), sealed_path.clone());
            let sealed =
                tokio::task::spawn_blocking(move || attachment::seal_file(&key, &input, &output))
                    .await??;
            let blob_id = self
                .transport
                .upload_blob(&account.token, &sealed_path)
                .await?;
            let pointer = AttachmentPointer {
                blob_id,
                key: AttachmentKey::from_bytes(key),
                digest: sealed.digest,
                size: sealed.size,
                media_type: media_type(&name).to_owned(),
                file_name: Some(name),
                caption: caption.map(str::to_owned),
            };
            self.send_content(id, Content::Attachment(pointer)).await
        }
        .await;
        let _ = std::fs::remove_file(&sealed_path);
        result
    }

    /// Downloads, verifies and decrypts a received attachment into `dir` (default: the
    /// profile's `attachments` folder); answers the file's path. A digest or tag
    /// mismatch is [`ClientError::AttachmentDigest`] and leaves no file behind.
    pub async fn save_attachment(
        &self,
        conversation: ConversationId,
        message_id: MessageId,
        dir: Option<&Path>,
    ) -> Result<PathBuf, ClientError> {
        let account = self.account()?;
        let message = self
            .read(|tx| tx.message(conversation, message_id))?
            .ok_or(ClientError::UnknownMessage(message_id))?;
        let meta: serde_json::Value = message
            .attachment
            .as_deref()
            .and_then(|a| serde_json::from_str(a).ok())
            .ok_or(ClientError::NoAttachment(message_id))?;
        let field = |k: &str| meta[k].as_str().map(str::to_owned);
        let corrupt = || ClientError::Corrupt("a stored attachment pointer".into());
        let blob_id = field("blob_id")
            .and_then(|id| sotto_proto::BlobId::parse(&id).ok())
            .ok_or_else(corrupt)?;
        let key: [u8; 32] = field("key")
            .and_then(|k| sotto_proto::b64::decode(&k).ok())
            .and_then(|k| k.try_into().ok())
            .ok_or_else(corrupt)?;
        let digest: [u8; 32] = field("digest")
            .and_then(|k| sotto_proto::b64::decode(&k).ok())
            .and_then(|k| k.try_into().ok())
            .ok_or_else(corrupt)?;
        let size = meta["size"].as_u64().ok_or_else(corrupt)?;
        // Only the last path component of the sender's name, never a path.
        let name = field("name")
            .and_then(|n| {
                Path::new(&n)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
            })
            .filter(|n| !n.starts_with('.'))
            .unwrap_or_else(|| format!("attachment-{message_id}"));
        let own_dir = dir.is_none();
        let dir = dir.map_or_else(|| self.home.join("attachments"), Path::to_path_buf);
        std::fs::create_dir_all(&dir).map_err(|e| ClientError::file("create", &dir, e))?;
        if own_dir {
            // The profile's own folder is its owner's alone, like the profile itself.
            crate::profile::restrict(&dir, 0o700)?;
        }
        let target = unused_path(&dir, &name);
        let sealed = self.home.join("incoming");
        std::fs::create_dir_all(&sealed).map_err(|e| ClientError::file("create", &sealed, e))?;
        let sealed = sealed.join(format!("{blob_id}.sealed"));
        let result = async {
            self.transport
                .download_blob(&account.token, blob_id, &sealed)
                .await?;
            let (input, output) = (sealed.clone(), target.clone());
            tokio::task::spawn_blocking(move || {
                if attachment::digest_file(&input)? != digest {
                    return Err(ClientError::AttachmentDigest);
                }
                attachment::open_file(&key, &input, &output, size)
            })
            .await?
        }
        .await;
        let _ = std::fs::remove_file(&sealed);
        result?;
        let mut meta = meta;
        meta["path"] = serde_json::json!(target.to_string_lossy());
        let json = meta.to_string();
        self.write(|tx| tx.set_attachment(conversation, message_id, &json))?;
        Ok(target)
    }

    /// Reacts to a message (`remove` takes the reaction back).
    pub async fn react(
        &self,
        conversation: ConversationId,
        target: MessageId,
        emoji: &str,
        remove: bool,
    ) -> Result<Sent, ClientError> {
        let id = self.active(conversation)?;
        self.send_content(
            id,
            Content::Reaction(Reaction {
                target,
                emoji: emoji.to_owned(),
                remove,
            }),
        )
        .await
    }

    /// Edits one of this account's messages.
    pub async fn edit(
        &self,
        conversation: ConversationId,
        target: MessageId,
        text: &str,
    ) -> Result<Sent, ClientError> {
        let id = self.active(conversation)?;
        self.ensure_own(id, target)?;
        self.send_content(
            id,
            Content::Edit(Edit {
                target,
                body: text.to_owned(),
            }),
        )
        .await
    }

    /// Deletes one of this account's messages for everyone.
    pub async fn delete(
        &self,
        conversation: ConversationId,
        target: MessageId,
    ) -> Result<Sent, ClientError> {
        let id = self.active(conversation)?;
        self.ensure_own(id, target)?;
        self.send_content(id, Content::Delete(Delete { target }))
            .await
    }

    /// Sets or clears a conversation's disappearing-messages timer.
    pub async fn set_disappearing(
        &self,
        conversation: ConversationId,
        seconds: Option<u32>,
    ) -> Result<Sent, ClientError> {
        let id = self.active(conversation)?;
        self.send_content(
            id,
            Content::DisappearingTimer(DisappearingTimer { seconds }),
        )
        .await
    }

    pub(super) fn ensure_own(
        &self,
        id: ConversationId,
        target: MessageId,
    ) -> Result<(), ClientError> {
        match self.read(|tx| tx.message(id, target))? {
            Some(m) if m.outgoing => Ok(()),
            Some(_) => Err(ClientError::NotOwnMessage(target)),
            None => Err(ClientError::UnknownMessage(target)),
        }
    }
}

/// `dir/name`, or `dir/name (2)` etc. if taken.
pub(super) fn unused_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|i| dir.join(format!("{name} ({i})")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// A media type from the file extension (the receiver only uses it as a hint).
pub(super) fn media_type(name: &str) -> &'static str {
    mime_guess::from_path(name)
        .first_raw()
        .unwrap_or("application/octet-stream")
}

#[cfg(test)]
mod tests {
    use super::media_type;

    #[test]
    fn media_types_come_from_the_extension() {
        assert_eq!(media_type("photo.PNG"), "image/png");
        assert_eq!(media_type("clip.mp4"), "video/mp4");
        assert_eq!(media_type("report.pdf"), "application/pdf");
        assert_eq!(media_type("no-extension"), "application/octet-stream");
    }
}
