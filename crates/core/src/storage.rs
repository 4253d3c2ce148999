//! Sotto's storage for OpenMLS state.
//!
//! OpenMLS persists every group through its `StorageProvider` trait. The
//! reference in-memory store encodes values as JSON (byte strings become
//! arrays of decimal numbers) and cannot be saved or moved anywhere. This
//! module provides one implementation, [`KvStorage`], that runs over any
//! small synchronous [`KvBackend`]:
//!
//! - [`MemoryBackend`] for tests, which can [snapshot](MemoryBackend::snapshot)
//!   its whole state to bytes and load it back;
//! - the client's SQLite store, which implements [`KvBackend`] over a
//!   transaction.
//!
//! Values and keys are encoded with a pluggable [`Codec`]: compact CBOR by
//! default, JSON for comparison and debugging. [`SottoProvider`] pairs a
//! store with the RustCrypto crypto provider to form an `OpenMlsProvider`.

mod codec;
mod framing;
mod memory;
mod mls;
mod provider;

use std::error::Error as StdError;
use std::fmt;
use std::marker::PhantomData;

use serde::{Serialize, de::DeserializeOwned};

pub use codec::{CborCodec, Codec, JsonCodec};
pub use memory::{MemoryBackend, SnapshotError};
pub use provider::SottoProvider;

use framing::{decode_list, encode_list};
use openmls_traits::storage::CURRENT_VERSION;

/// A minimal synchronous key-value store that [`KvStorage`] runs on.
///
/// Methods take `&self` because OpenMLS's `StorageProvider` does; use
/// interior mutability. [`KvStorage`] updates lists by reading and then
/// writing a value, so a backend shared between threads should run each
/// OpenMLS operation inside one transaction (or otherwise serialize writers).
pub trait KvBackend {
    /// The backend's own error type.
    type Error: StdError + Send + Sync + 'static;

    /// Returns the value stored under `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error>;

    /// Stores `value` under `key`, replacing any previous value.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Self::Error>;

    /// Removes `key`. Removing a missing key succeeds.
    fn delete(&self, key: &[u8]) -> Result<(), Self::Error>;
}

/// An error from [`KvStorage`].
///
/// The message includes the underlying error: OpenMLS wraps storage errors
/// without exposing them as `source()`, so the text is all a log would get.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend failed to read or write.
    #[error("storage backend failed: {0}")]
    Backend(Box<dyn StdError + Send + Sync>),
    /// A key or value could not be encoded.
    #[error("could not encode a value for storage: {0}")]
    Encode(Box<dyn StdError + Send + Sync>),
    /// A stored value could not be decoded: corrupted, or written by another
    /// codec or an incompatible OpenMLS version.
    #[error("could not decode a stored value: {0}")]
    Decode(Box<dyn StdError + Send + Sync>),
    /// Stored entries contradict each other (for example a queued proposal
    /// reference whose proposal is missing).
    #[error("storage is inconsistent: {0}")]
    Inconsistent(&'static str),
}

/// OpenMLS's `StorageProvider` over a [`KvBackend`], encoding with `C`.
///
/// A stored key is the length-prefixed label of its kind (tree, group
/// context, key package, ...), the storage version as a big-endian `u16`,
/// then the encoded OpenMLS key, so kinds and versions never collide and
/// entries of one kind share a prefix. Lists (own leaf nodes, the proposal
/// queue) are one value holding length-prefixed encoded items.
pub struct KvStorage<B, C = CborCodec> {
    backend: B,
    codec: PhantomData<fn() -> C>,
}

/// In-memory storage with the default codec, for tests.
pub type MemoryStorage = KvStorage<MemoryBackend, CborCodec>;

impl<B: KvBackend, C: Codec> KvStorage<B, C> {
    /// Wraps a backend.
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            codec: PhantomData,
        }
    }

    /// The backend, for example to snapshot a [`MemoryBackend`].
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Unwraps the backend.
    pub fn into_backend(self) -> B {
        self.backend
    }
}

impl<B: KvBackend + Default, C: Codec> Default for KvStorage<B, C> {
    fn default() -> Self {
        Self::new(B::default())
    }
}

impl<B: fmt::Debug, C> fmt::Debug for KvStorage<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvStorage")
            .field("backend", &self.backend)
            .field("codec", &std::any::type_name::<C>())
            .finish()
    }
}

/// The kind of a stored entry; the first component of every stored key.
#[derive(Clone, Copy)]
struct Label {
    len: u8,
    name: &'static [u8],
}

impl Label {
    const fn new(name: &'static [u8]) -> Self {
        // Evaluated at compile time for every label constant.
        assert!(name.len() <= u8::MAX as usize, "label too long");
        Self {
            len: name.len() as u8,
            name,
        }
    }
}

// Private helpers. Every `StorageProvider` method is one call to one of
// these; `mls.rs` holds that mapping.
impl<B: KvBackend, C: Codec> KvStorage<B, C> {
    /// The stored key for an already encoded OpenMLS key.
    fn raw_key(label: Label, encoded_key: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(1 + label.name.len() + 2 + encoded_key.len());
        key.push(label.len);
        key.extend_from_slice(label.name);
        key.extend_from_slice(&CURRENT_VERSION.to_be_bytes());
        key.extend_from_slice(encoded_key);
        key
    }

    /// The stored key for an OpenMLS key.
    fn key(label: Label, key: &(impl Serialize + ?Sized)) -> Result<Vec<u8>, StorageError> {
        Ok(Self::raw_key(label, &C::encode(key)?))
    }

    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.backend.get(key).map_err(backend_error)
    }

    fn put_raw(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.backend.put(key, value).map_err(backend_error)
    }

    fn delete_raw(&self, key: &[u8]) -> Result<(), StorageError> {
        self.backend.delete(key).map_err(backend_error)
    }

    /// Stores `value` under (`label`, `key`), replacing any previous value.
    fn write(
        &self,
        label: Label,
        key: &(impl Serialize + ?Sized),
        value: &(impl Serialize + ?Sized),
    ) -> Result<(), StorageError> {
        self.put_raw(&Self::key(label, key)?, &C::encode(value)?)
    }

    /// Reads the value under (`label`, `key`); `None` if there is none.
    fn read<V: DeserializeOwned>(
        &self,
        label: Label,
        key: &(impl Serialize + ?Sized),
    ) -> Result<Option<V>, StorageError> {
        self.get_raw(&Self::key(label, key)?)?
            .map(|bytes| C::decode(&bytes))
            .transpose()
    }

    /// Deletes the value or list under (`label`, `key`); missing is fine.
    fn delete(&self, label: Label, key: &(impl Serialize + ?Sized)) -> Result<(), StorageError> {
        self.delete_raw(&Self::key(label, key)?)
    }

    /// Reads the list under (`label`, `key`); empty if there is none.
    fn read_list<V: DeserializeOwned>(
        &self,
        label: Label,
        key: &(impl Serialize + ?Sized),
    ) -> Result<Vec<V>, StorageError> {
        self.raw_list(&Self::key(label, key)?)?
            .iter()
            .map(|item| C::decode(item))
            .collect()
    }

    /// Appends `item` to the list under (`label`, `key`).
    fn append(
        &self,
        label: Label,
        key: &(impl Serialize + ?Sized),
        item: &(impl Serialize + ?Sized),
    ) -> Result<(), StorageError> {
        let item = C::encode(item)?;
        self.edit_list(&Self::key(label, key)?, |list| list.push(item))
    }

    /// Appends `item` to the list under (`label`, `key`) unless it is
    /// already there.
    fn append_unique(
        &self,
        label: Label,
        key: &(impl Serialize + ?Sized),
        item: &(impl Serialize + ?Sized),
    ) -> Result<(), StorageError> {
        let item = C::encode(item)?;
        self.edit_list(&Self::key(label, key)?, |list| push_unique(list, item))
    }

    /// Removes the first occurrence of `item` from the list under
    /// (`label`, `key`); a missing list or item is fine.
    fn remove_item(
        &self,
        label: Label,
        key: &(impl Serialize + ?Sized),
        item: &(impl Serialize + ?Sized),
    ) -> Result<(), StorageError> {
        let item = C::encode(item)?;
        self.edit_list(&Self::key(label, key)?, |list| remove_first(list, &item))
    }

    /// The encoded items of the list stored under `key`.
    fn raw_list(&self, key: &[u8]) -> Result<Vec<Vec<u8>>, StorageError> {
        match self.get_raw(key)? {
            None => Ok(Vec::new()),
            Some(bytes) => decode_list(&bytes)
                .ok_or_else(|| StorageError::Decode("malformed stored list".into())),
        }
    }

    /// Read-modify-write of a list. An emptied list is deleted, so removing
    /// every item leaves no entry behind.
    fn edit_list(
        &self,
        key: &[u8],
        edit: impl FnOnce(&mut Vec<Vec<u8>>),
    ) -> Result<(), StorageError> {
        let mut list = self.raw_list(key)?;
        edit(&mut list);
        if list.is_empty() {
            self.delete_raw(key)
        } else {
            self.put_raw(key, &encode_list(&list))
        }
    }
}

fn backend_error(error: impl StdError + Send + Sync + 'static) -> StorageError {
    StorageError::Backend(Box::new(error))
}

fn push_unique(list: &mut Vec<Vec<u8>>, item: Vec<u8>) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn remove_first(list: &mut Vec<Vec<u8>>, item: &[u8]) {
    if let Some(position) = list.iter().position(|stored| stored == item) {
        list.remove(position);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly
mod tests {
    use openmls_traits::storage::{Entity, Key, StorageProvider, traits};
    use serde::Deserialize;

    use super::*;

    /// Stands in for OpenMLS key types.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Id(Vec<u8>);

    /// Stands in for OpenMLS value types.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Blob(String);

    impl Key<CURRENT_VERSION> for Id {}
    impl Entity<CURRENT_VERSION> for Id {}
    impl traits::GroupId<CURRENT_VERSION> for Id {}
    impl traits::EpochKey<CURRENT_VERSION> for Id {}
    impl traits::ProposalRef<CURRENT_VERSION> for Id {}
    impl Entity<CURRENT_VERSION> for Blob {}
    impl traits::LeafNode<CURRENT_VERSION> for Blob {}
    impl traits::QueuedProposal<CURRENT_VERSION> for Blob {}
    impl traits::HpkeKeyPair<CURRENT_VERSION> for Blob {}
    impl traits::TreeSync<CURRENT_VERSION> for Blob {}
    impl traits::GroupContext<CURRENT_VERSION> for Blob {}

    type Store<C> = KvStorage<MemoryBackend, C>;

    fn id(bytes: &[u8]) -> Id {
        Id(bytes.to_vec())
    }

    fn blob(text: &str) -> Blob {
        Blob(text.to_string())
    }

    /// Runs each generic test once per codec.
    macro_rules! with_each_codec {
        ($($test:ident),* $(,)?) => {
            mod cbor {
                $(#[test] fn $test() { super::$test::<super::CborCodec>() })*
            }
            mod json {
                $(#[test] fn $test() { super::$test::<super::JsonCodec>() })*
            }
        };
    }

    with_each_codec!(
        missing_entries_read_as_empty,
        own_leaf_nodes_append_in_order,
        proposal_queue_keeps_order_and_cleans_up,
        epoch_key_pairs_are_replaced_per_epoch_and_leaf,
        kinds_do_not_collide,
        corrupt_values_are_decode_errors,
    );

    fn missing_entries_read_as_empty<C: Codec>() {
        let store = Store::<C>::default();
        let group = id(b"g");
        assert_eq!(store.tree::<Id, Blob>(&group).unwrap(), None);
        assert!(store.own_leaf_nodes::<Id, Blob>(&group).unwrap().is_empty());
        assert!(
            store
                .queued_proposal_refs::<Id, Id>(&group)
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .queued_proposals::<Id, Id, Blob>(&group)
                .unwrap()
                .is_empty()
        );
        let pairs = store.encryption_epoch_key_pairs::<Id, Id, Blob>(&group, &id(b"e"), 0);
        assert!(pairs.unwrap().is_empty());

        // Deleting or removing what is not there succeeds and writes nothing.
        store.delete_tree(&group).unwrap();
        store.delete_own_leaf_nodes(&group).unwrap();
        store.remove_proposal(&group, &id(b"p")).unwrap();
        store.clear_proposal_queue::<Id, Id>(&group).unwrap();
        store
            .delete_encryption_epoch_key_pairs(&group, &id(b"e"), 0)
            .unwrap();
        assert!(store.backend().is_empty());
    }

    fn own_leaf_nodes_append_in_order<C: Codec>() {
        let store = Store::<C>::default();
        let group = id(b"g");
        for leaf in ["a", "b", "a"] {
            store.append_own_leaf_node(&group, &blob(leaf)).unwrap();
        }
        let leaves: Vec<Blob> = store.own_leaf_nodes(&group).unwrap();
        assert_eq!(leaves, [blob("a"), blob("b"), blob("a")]);
        assert!(
            store
                .own_leaf_nodes::<Id, Blob>(&id(b"other"))
                .unwrap()
                .is_empty()
        );

        store.delete_own_leaf_nodes(&group).unwrap();
        assert!(store.own_leaf_nodes::<Id, Blob>(&group).unwrap().is_empty());
        assert!(store.backend().is_empty());
    }

    fn proposal_queue_keeps_order_and_cleans_up<C: Codec>() {
        let store = Store::<C>::default();
        let group = id(b"g");
        let (p1, p2, p3) = (id(b"p1"), id(b"p2"), id(b"p3"));
        store.queue_proposal(&group, &p1, &blob("one")).unwrap();
        store.queue_proposal(&group, &p2, &blob("two")).unwrap();
        store.queue_proposal(&group, &p3, &blob("three")).unwrap();
        // Queueing a reference again replaces the proposal, not the position.
        store.queue_proposal(&group, &p1, &blob("one'")).unwrap();

        let queued: Vec<(Id, Blob)> = store.queued_proposals(&group).unwrap();
        assert_eq!(
            queued,
            [
                (p1.clone(), blob("one'")),
                (p2.clone(), blob("two")),
                (p3.clone(), blob("three"))
            ]
        );

        store.remove_proposal(&group, &p2).unwrap();
        let refs: Vec<Id> = store.queued_proposal_refs(&group).unwrap();
        assert_eq!(refs, [p1.clone(), p3.clone()]);
        // refs list + two proposals
        assert_eq!(store.backend().len(), 3);

        store.clear_proposal_queue::<Id, Id>(&group).unwrap();
        assert!(
            store
                .queued_proposal_refs::<Id, Id>(&group)
                .unwrap()
                .is_empty()
        );
        assert!(store.backend().is_empty(), "proposals left behind");

        store.queue_proposal(&group, &p1, &blob("one")).unwrap();
        store.remove_proposal(&group, &p1).unwrap();
        assert!(store.backend().is_empty(), "emptied list left behind");
    }

    fn epoch_key_pairs_are_replaced_per_epoch_and_leaf<C: Codec>() {
        let store = Store::<C>::default();
        let (group, epoch) = (id(b"g"), id(b"e1"));
        let pairs = [blob("k1"), blob("k2")];
        store
            .write_encryption_epoch_key_pairs(&group, &epoch, 3, &pairs)
            .unwrap();
        store
            .write_encryption_epoch_key_pairs(&group, &epoch, 3, &pairs[1..])
            .unwrap();
        let read = |leaf| {
            store
                .encryption_epoch_key_pairs::<Id, Id, Blob>(&group, &epoch, leaf)
                .unwrap()
        };
        assert_eq!(read(3), [blob("k2")]);
        assert!(read(4).is_empty());

        store
            .delete_encryption_epoch_key_pairs(&group, &epoch, 3)
            .unwrap();
        assert!(read(3).is_empty());
        assert!(store.backend().is_empty());
    }

    fn kinds_do_not_collide<C: Codec>() {
        let store = Store::<C>::default();
        let group = id(b"g");
        store.write_tree(&group, &blob("tree")).unwrap();
        store.write_context(&group, &blob("context")).unwrap();
        store.append_own_leaf_node(&group, &blob("leaf")).unwrap();
        assert_eq!(store.tree(&group).unwrap(), Some(blob("tree")));
        assert_eq!(store.group_context(&group).unwrap(), Some(blob("context")));
        assert_eq!(store.backend().len(), 3);

        store.delete_tree(&group).unwrap();
        assert_eq!(store.tree::<Id, Blob>(&group).unwrap(), None);
        assert_eq!(store.group_context(&group).unwrap(), Some(blob("context")));
    }

    fn corrupt_values_are_decode_errors<C: Codec>() {
        let store = Store::<C>::default();
        let group = id(b"g");
        let tree_key = Store::<C>::key(mls::TREE, &group).unwrap();
        store.backend().put(&tree_key, &[0xff, 0x00, 0x13]).unwrap();
        assert!(matches!(
            store.tree::<Id, Blob>(&group),
            Err(StorageError::Decode(_))
        ));

        store.append_own_leaf_node(&group, &blob("leaf")).unwrap();
        let list_key = Store::<C>::key(mls::OWN_LEAF_NODES, &group).unwrap();
        let mut list = store.backend().get(&list_key).unwrap().unwrap();
        list.pop();
        store.backend().put(&list_key, &list).unwrap();
        assert!(matches!(
            store.own_leaf_nodes::<Id, Blob>(&group),
            Err(StorageError::Decode(_))
        ));
    }

    #[cfg(feature = "virtual-clients-draft")]
    mod virtual_clients {
        use super::*;

        impl traits::VcEpochId<CURRENT_VERSION> for Id {}
        impl traits::HashReference<CURRENT_VERSION> for Id {}
        impl traits::VcEmulationEpochState<CURRENT_VERSION> for Blob {}
        impl traits::VcOperationTree<CURRENT_VERSION> for Blob {}
        impl traits::RetainedKeyPackageMaterial<CURRENT_VERSION> for Blob {}

        #[test]
        fn emulation_state_lives_while_materials_refer_to_it() {
            let store = MemoryStorage::default();
            let (e1, e2) = (id(b"e1"), id(b"e2"));
            let (r1, r2) = (id(b"r1"), id(b"r2"));
            store
                .write_vc_emulation_epoch_state(&e1, &blob("state"))
                .unwrap();
            store
                .write_retained_key_package_material_batch(
                    &e1,
                    &blob("tree"),
                    &[(r1.clone(), blob("m1")), (r2.clone(), blob("m2"))],
                )
                .unwrap();
            assert!(
                store
                    .has_retained_key_package_material_for_epoch(&e1)
                    .unwrap()
            );
            assert!(
                !store
                    .has_retained_key_package_material_for_epoch(&e2)
                    .unwrap()
            );
            assert_eq!(
                store.retained_key_package_material(&r1).unwrap(),
                Some(blob("m1"))
            );
            assert!(
                !store
                    .delete_vc_emulation_state_if_unreferenced(&e1)
                    .unwrap()
            );

            // Deleting a key package deletes its material.
            store.delete_key_package(&r1).unwrap();
            assert_eq!(
                store
                    .retained_key_package_material::<Id, Blob>(&r1)
                    .unwrap(),
                None
            );
            assert!(
                store
                    .has_retained_key_package_material_for_epoch(&e1)
                    .unwrap()
            );

            // Rewriting a material under another epoch moves it.
            store
                .write_retained_key_package_material_batch(
                    &e2,
                    &blob("tree2"),
                    &[(r2.clone(), blob("m2'"))],
                )
                .unwrap();
            assert!(
                !store
                    .has_retained_key_package_material_for_epoch(&e1)
                    .unwrap()
            );
            assert!(
                store
                    .delete_vc_emulation_state_if_unreferenced(&e1)
                    .unwrap()
            );
            assert_eq!(
                store.vc_emulation_epoch_state::<Id, Blob>(&e1).unwrap(),
                None
            );
            assert_eq!(store.vc_operation_tree::<Id, Blob>(&e1).unwrap(), None);

            store.delete_retained_key_package_material(&r2).unwrap();
            assert!(
                store
                    .delete_vc_emulation_state_if_unreferenced(&e2)
                    .unwrap()
            );
            assert!(store.backend().is_empty(), "{:?}", store.backend().keys());
        }
    }

    #[test]
    fn labels_are_distinct() {
        let names: Vec<&[u8]> = mls::ALL_LABELS.iter().map(|label| label.name).collect();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert!(names.iter().all(|name| !name.is_empty()));
    }

    /// A backend whose every call fails.
    struct Broken;

    impl KvBackend for Broken {
        type Error = std::io::Error;
        fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
            Err(std::io::Error::other("disk on fire"))
        }
        fn put(&self, _: &[u8], _: &[u8]) -> Result<(), Self::Error> {
            Err(std::io::Error::other("disk on fire"))
        }
        fn delete(&self, _: &[u8]) -> Result<(), Self::Error> {
            Err(std::io::Error::other("disk on fire"))
        }
    }

    #[test]
    fn backend_errors_are_reported() {
        let store = KvStorage::<_, CborCodec>::new(Broken);
        let group = id(b"g");
        let error = store.tree::<Id, Blob>(&group).unwrap_err();
        assert!(matches!(error, StorageError::Backend(_)));
        assert_eq!(error.to_string(), "storage backend failed: disk on fire");
        assert!(matches!(
            store.append_own_leaf_node(&group, &blob("x")),
            Err(StorageError::Backend(_))
        ));
        assert!(matches!(
            store.delete_tree(&group),
            Err(StorageError::Backend(_))
        ));
    }
}
