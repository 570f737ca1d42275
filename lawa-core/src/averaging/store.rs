use std::collections::{BTreeMap, BTreeSet};

use tch::{Kind, Tensor};

use super::weights::{is_averaged, stored_copy};
use super::{AveragingError, Storage, Weights};

/// Where a snapshot lives: the optimizer step it was taken after, and the storage it was copied
/// to (two averagers that keep their copies in different places hold two copies of a step).
pub(crate) type SnapshotKey = (u64, Storage);

/// Copies of the training weights keyed by step: one copy per (step, storage) however many
/// averagers hold it. Averagers keep keys, the store keeps tensors; an [`AveragerSet`]
/// (super::AveragerSet) owns one store for all its averagers, a lone LAWA its own.
#[derive(Debug, Default)]
pub struct SnapshotStore {
    snapshots: BTreeMap<SnapshotKey, Vec<Tensor>>,
}

impl SnapshotStore {
    /// Copies `weights` as they are after `step` into `storage`, unless that copy is held
    /// already.
    pub(crate) fn take(&mut self, step: u64, storage: Storage, weights: &Weights) {
        self.snapshots.entry((step, storage)).or_insert_with(|| {
            weights
                .iter()
                .map(|(_, t)| stored_copy(t, storage))
                .collect()
        });
    }

    /// Adds a snapshot restored from a saved state.
    pub(crate) fn insert(&mut self, key: SnapshotKey, tensors: Vec<Tensor>) {
        self.snapshots.insert(key, tensors);
    }

    /// The tensors of a snapshot, in the order of the weights they came from.
    pub(crate) fn get(&self, key: SnapshotKey) -> Option<&[Tensor]> {
        self.snapshots.get(&key).map(Vec::as_slice)
    }

    /// Drops every snapshot no key in `held` refers to.
    pub(crate) fn retain(&mut self, held: &BTreeSet<SnapshotKey>) {
        self.snapshots.retain(|key, _| held.contains(key));
    }

    /// Moves every snapshot of `other` into this store.
    pub(crate) fn absorb(&mut self, other: &mut SnapshotStore) {
        self.snapshots.append(&mut other.snapshots);
    }

    /// The snapshots held, by key, in step order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (SnapshotKey, &[Tensor])> {
        self.snapshots.iter().map(|(k, v)| (*k, v.as_slice()))
    }

    /// Number of snapshots and the bytes they hold.
    pub(crate) fn usage(&self) -> (usize, usize) {
        let bytes = self
            .snapshots
            .values()
            .flatten()
            .map(|t| t.numel() * t.kind().elt_size_in_bytes())
            .sum();
        (self.snapshots.len(), bytes)
    }

    /// Writes the uniform mean of the snapshots `keys` (oldest first, at least one) into
    /// `target`: float tensors summed oldest to newest in fp32 then divided, so the result is the
    /// same bit for bit on every call; integer tensors copied from the newest.
    pub(crate) fn write_mean(
        &self,
        keys: &[SnapshotKey],
        target: &Weights,
        label: &str,
    ) -> Result<(), AveragingError> {
        let snapshots = keys
            .iter()
            .map(|&key| {
                self.get(key).ok_or_else(|| AveragingError::BadState {
                    label: label.to_string(),
                    reason: format!("snapshot of step {} is not held", key.0),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Some(newest) = snapshots.last() else {
            return Err(AveragingError::BadState {
                label: label.to_string(),
                reason: "no snapshot to average".into(),
            });
        };
        let n = snapshots.len() as f64;
        tch::no_grad(|| {
            for (i, (_, t)) in target.iter().enumerate() {
                let mut t = t.shallow_clone();
                if !is_averaged(newest[i].kind()) {
                    t.f_copy_(&newest[i])?;
                    continue;
                }
                let mut sum = snapshots[0][i].to_kind(Kind::Float).copy();
                for s in &snapshots[1..] {
                    let _ = sum.f_add_(&s[i])?;
                }
                let _ = sum.f_div_scalar_(n)?;
                t.f_copy_(&sum)?;
            }
            Ok::<(), tch::TchError>(())
        })?;
        Ok(())
    }
}
