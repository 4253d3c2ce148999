//! Conversation parameters: the cipher suite and how forgiving a group is about
//! out-of-order and late messages.

use openmls::prelude::{
    Capabilities, Ciphersuite, CredentialType, ExtensionType, MlsGroupCreateConfig,
    MlsGroupJoinConfig, ProposalType, SenderRatchetConfiguration, SignatureScheme,
};

/// Conversation settings shared by creating, joining and key-package generation.
#[derive(Debug, Clone)]
pub struct ConversationConfig {
    /// The MLS cipher suite. Sotto needs an Ed25519 signature scheme (device
    /// certificates certify Ed25519 keys); the default is
    /// `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`.
    pub ciphersuite: Ciphersuite,
    /// How many past epochs' message keys a member keeps, so an application message
    /// sent just before a commit still decrypts after the commit is merged.
    pub max_past_epochs: usize,
    /// Application messages are padded to a multiple of this many bytes, so the
    /// server sees coarse sizes only.
    pub padding: usize,
    /// How far out of order messages of one sender may arrive.
    pub out_of_order_tolerance: u32,
    /// How many messages of one sender may be skipped at most.
    pub maximum_forward_distance: u32,
}

impl Default for ConversationConfig {
    fn default() -> Self {
        Self {
            ciphersuite: Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
            max_past_epochs: 3,
            padding: 64,
            out_of_order_tolerance: 16,
            maximum_forward_distance: 2000,
        }
    }
}

impl ConversationConfig {
    /// True if the suite signs with Ed25519, the key type device certificates certify.
    pub fn is_supported(&self) -> bool {
        self.ciphersuite.signature_algorithm() == SignatureScheme::ED25519
    }

    /// Leaf capabilities every Sotto device advertises.
    pub(crate) fn capabilities(&self) -> Capabilities {
        Capabilities::new(
            None,
            Some(&[self.ciphersuite]),
            Some(&[ExtensionType::LastResort]),
            Some(&[ProposalType::SelfRemove]),
            Some(&[CredentialType::Basic]),
        )
    }

    fn ratchet(&self) -> SenderRatchetConfiguration {
        SenderRatchetConfiguration::new(self.out_of_order_tolerance, self.maximum_forward_distance)
    }

    pub(crate) fn create_config(&self) -> MlsGroupCreateConfig {
        MlsGroupCreateConfig::builder()
            .ciphersuite(self.ciphersuite)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(self.max_past_epochs)
            .padding_size(self.padding)
            .sender_ratchet_configuration(self.ratchet())
            .capabilities(self.capabilities())
            .build()
    }

    pub(crate) fn join_config(&self) -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .max_past_epochs(self.max_past_epochs)
            .padding_size(self.padding)
            .sender_ratchet_configuration(self.ratchet())
            .build()
    }
}
