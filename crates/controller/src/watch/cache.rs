//! The objects the watchers listed and what each event changed: a reflector-like
//! cache, one shard per watcher, so that each watcher's re-list (`Init` … `InitDone`)
//! replaces exactly the objects it listed.
//!
//! The second layer of the watch loop, as kube-runtime's `reflector` is: it keeps the
//! objects and tells a change the compile step reads ([`Change::Content`]) from a
//! change of status only ([`Change::Status`]) and from nothing it reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::runtime::watcher::Event;
use sluice_api::compile::ServiceSlice;

use crate::object::{Custom, Parsed};

/// What an event changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Change {
    /// Nothing the controller reads.
    None,
    /// Only the status of a custom resource: a status pass, no compile.
    Status,
    /// Something the compile step reads.
    Content,
}

/// The parts of an object the controller compares to tell what changed.
pub(super) trait Content {
    /// `(namespace, name)`.
    fn key(&self) -> Key;
    /// Whether the compile step would see the same object.
    fn same_content(&self, other: &Self) -> bool;
    /// Whether the status is the same.
    fn same_status(&self, _other: &Self) -> bool {
        true
    }
}

impl<K: Custom> Content for Parsed<K> {
    fn key(&self) -> Key {
        let meta = self.metadata();
        (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
    fn same_content(&self, other: &Self) -> bool {
        let generation = self.metadata().generation == other.metadata().generation;
        generation
            && match (self, other) {
                (Parsed::Valid(a), Parsed::Valid(b)) => a.same_spec(b),
                (Parsed::Invalid(a), Parsed::Invalid(b)) => a.error == b.error,
                _ => false,
            }
    }
    fn same_status(&self, other: &Self) -> bool {
        self.status() == other.status()
    }
}

impl Content for Arc<ServiceSlice> {
    fn key(&self) -> Key {
        (self.namespace.to_string(), self.name.to_string())
    }
    fn same_content(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Content for Secret {
    fn key(&self) -> Key {
        key(self)
    }
    fn same_content(&self, other: &Self) -> bool {
        self.data == other.data
            && self.string_data == other.string_data
            && self.metadata.labels == other.metadata.labels
    }
}

/// `(namespace, name)` of an object.
pub(super) type Key = (String, String);

/// The key of `obj`.
pub(super) fn key<K: ResourceExt>(obj: &K) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The objects of one watcher.
pub(super) struct Shard<K> {
    objects: BTreeMap<Key, K>,
    /// Objects of a re-list in progress (between `Init` and `InitDone`).
    listing: Option<BTreeMap<Key, K>>,
    synced: bool,
}

/// The objects of one kind, one shard per watcher.
pub(super) struct Cache<K> {
    shards: Vec<Shard<K>>,
}

impl<K: Content> Cache<K> {
    /// An empty cache for `shards` watchers.
    pub(super) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards)
                .map(|_| Shard {
                    objects: BTreeMap::new(),
                    listing: None,
                    synced: false,
                })
                .collect(),
        }
    }

    /// Every watcher has listed its objects at least once.
    pub(super) fn synced(&self) -> bool {
        self.shards.iter().all(|s| s.synced)
    }

    /// Marks every watcher as not synced until its next list is done.
    pub(super) fn unsync(&mut self) {
        for s in &mut self.shards {
            s.synced = false;
        }
    }

    /// Whether some watcher has the object `key`.
    pub(super) fn contains(&self, key: &Key) -> bool {
        self.shards.iter().any(|s| s.objects.contains_key(key))
    }

    /// Every object, of every watcher.
    pub(super) fn iter(&self) -> impl Iterator<Item = &K> {
        self.shards.iter().flat_map(|s| s.objects.values())
    }

    /// Applies `event` from watcher `shard`. Changes to objects for which `relevant`
    /// is false (before and after) count as no change.
    pub(super) fn apply(
        &mut self,
        shard: usize,
        event: Event<K>,
        relevant: impl Fn(&K) -> bool,
    ) -> Change {
        let Some(s) = self.shards.get_mut(shard) else {
            return Change::None;
        };
        let between = |old: Option<&K>, new: Option<&K>| {
            if !old.is_some_and(&relevant) && !new.is_some_and(&relevant) {
                return Change::None;
            }
            match (old, new) {
                (Some(a), Some(b)) if !a.same_content(b) => Change::Content,
                (Some(a), Some(b)) if !a.same_status(b) => Change::Status,
                (Some(_), Some(_)) | (None, None) => Change::None,
                _ => Change::Content,
            }
        };
        match event {
            Event::Apply(obj) => {
                let k = obj.key();
                let change = between(s.objects.get(&k), Some(&obj));
                s.objects.insert(k, obj);
                change
            }
            Event::Delete(obj) => {
                let k = obj.key();
                let old = s.objects.remove(&k);
                between(old.as_ref(), None)
            }
            Event::Init => {
                s.listing = Some(BTreeMap::new());
                Change::None
            }
            Event::InitApply(obj) => {
                s.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(obj.key(), obj);
                Change::None
            }
            Event::InitDone => {
                let listed = s.listing.take().unwrap_or_default();
                let mut change = if s.synced {
                    Change::None
                } else {
                    Change::Content
                };
                s.synced = true;
                for (k, old) in &s.objects {
                    change = change.max(between(Some(old), listed.get(k)));
                }
                for (k, new) in &listed {
                    if !s.objects.contains_key(k) {
                        change = change.max(between(None, Some(new)));
                    }
                }
                s.objects = listed;
                change
            }
        }
    }
}
