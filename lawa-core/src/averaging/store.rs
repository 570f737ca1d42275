use std::collections::{BTreeMap, BTreeSet};

use tch::{Kind, Tensor};

use super::host_offload::HostOffload;
use super::weights::{is_averaged, stored_copy, stored_empty};
use super::{AveragingError, Storage, Weights};

/// Where a snapshot lives: the optimizer step it was taken after, and the storage it was copied
/// to (two averagers that keep their copies in different places hold two copies of a step).
pub(crate) type SnapshotKey = (u64, Storage);

/// Copies of the training weights keyed by step: one copy per (step, storage) however many
/// averagers hold it. Averagers keep keys, the store keeps tensors; an [`AveragerSet`]
/// (super::AveragerSet) owns one store for all its averagers, a lone LAWA its own.
///
/// A snapshot in host memory of weights on a GPU is taken without making training wait: the
/// weights are copied into pinned buffers on the GPU's stream, and a thread of the store's own
/// copies them on into the snapshot while the GPU goes on. Whatever reads snapshots first waits
/// for that thread ([`settle`](Self::settle)).
#[derive(Debug, Default)]
pub struct SnapshotStore {
    snapshots: BTreeMap<SnapshotKey, Vec<Tensor>>,
    /// The copies into host memory of snapshots taken there of weights on a GPU.
    offload: HostOffload,
}

impl SnapshotStore {
    /// A store whose every snapshot in host memory goes through the background thread (tests).
    #[cfg(test)]
    pub(crate) fn deferring() -> Self {
        SnapshotStore {
            offload: HostOffload::deferring(),
            ..Self::default()
        }
    }

    /// Copies `weights` as they are after `step` into `storage`, unless that copy is held
    /// already. `label` names the averager in errors.
    pub(crate) fn take(
        &mut self,
        step: u64,
        storage: Storage,
        weights: &Weights,
        label: &str,
    ) -> Result<(), AveragingError> {
        let key = (step, storage);
        if self.snapshots.contains_key(&key) {
            return Ok(());
        }
        let deferred =
            storage == Storage::Cpu && weights.iter().any(|(_, t)| self.offload.defers(t));
        let snapshot = if deferred {
            self.take_in_background(weights, label)?
        } else {
            weights
                .iter()
                .map(|(_, t)| stored_copy(t, storage))
                .collect()
        };
        self.snapshots.insert(key, snapshot);
        Ok(())
    }

    /// A host snapshot of `weights` that a background thread fills once the copies out of the
    /// GPU are done.
    fn take_in_background(
        &mut self,
        weights: &Weights,
        label: &str,
    ) -> Result<Vec<Tensor>, AveragingError> {
        let snapshot: Vec<Tensor> = weights
            .iter()
            .map(|(_, t)| stored_empty(t, Storage::Cpu))
            .collect();
        let sources: Vec<Tensor> = weights.iter().map(|(_, t)| t.detach()).collect();
        let targets: Vec<Tensor> = snapshot.iter().map(Tensor::shallow_clone).collect();
        self.offload.start(
            label,
            &sources,
            Box::new(move |staged| {
                tch::no_grad(|| {
                    for (t, s) in targets.iter().zip(staged) {
                        t.shallow_clone().f_copy_(s)?;
                    }
                    Ok(())
                })
            }),
        )?;
        Ok(snapshot)
    }

    /// Whether a snapshot is being copied into host memory (tests).
    #[cfg(test)]
    pub(crate) fn is_copying(&self) -> bool {
        self.offload.is_running()
    }

    /// Waits for the snapshot still being copied into host memory, if any; an error if that
    /// copy failed (then and on every later call: a snapshot is missing).
    pub(crate) fn settle(&self, label: &str) -> Result<(), AveragingError> {
        self.offload.settle(label)
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

    /// Moves every snapshot of `other` into this store, once they are complete.
    pub(crate) fn absorb(
        &mut self,
        other: &mut SnapshotStore,
        label: &str,
    ) -> Result<(), AveragingError> {
        other.settle(label)?;
        self.snapshots.append(&mut other.snapshots);
        // Its pinned buffer too: `other` takes no more snapshots.
        other.offload = HostOffload::default();
        Ok(())
    }

    /// The snapshots held, by key, in step order ([`settle`](Self::settle) first: one may still
    /// be being copied).
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
        if keys.iter().any(|&(_, storage)| storage == Storage::Cpu) {
            self.settle(label)?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::averaging::weights::test_weights_at;

    /// Weights of step `step`: two float tensors and an integer one.
    fn weights_at(step: i64) -> Weights {
        test_weights_at(step, Kind::BFloat16)
    }

    /// The mean of `keys` as written into fresh zero tensors.
    fn mean_of(store: &SnapshotStore, keys: &[SnapshotKey]) -> Vec<Tensor> {
        let target = weights_at(0);
        for (_, t) in target.iter() {
            let _ = t.shallow_clone().zero_();
        }
        store.write_mean(keys, &target, "test").unwrap();
        target.iter().map(|(_, t)| t.copy()).collect()
    }

    /// Host snapshots filled on the background thread hold what synchronous copies hold, bit for
    /// bit (fp32 copies of float weights, integers as they are), whether read by a mean or by
    /// `iter` after `settle`; a snapshot dropped while its copy is in flight is harmless.
    #[test]
    fn background_snapshots_equal_synchronous_snapshots_bit_for_bit() {
        let (mut now, mut later) = (SnapshotStore::default(), SnapshotStore::deferring());
        let mut keys = Vec::new();
        for step in 1..=5u64 {
            let w = weights_at(step as i64);
            now.take(step, Storage::Cpu, &w, "now").unwrap();
            later.take(step, Storage::Cpu, &w, "later").unwrap();
            assert!(later.offload.is_running(), "step {step}: not deferred");
            keys.push((step, Storage::Cpu));
            let window = &keys[keys.len().saturating_sub(3)..];
            let (a, b) = (mean_of(&now, window), mean_of(&later, window));
            assert!(!later.offload.is_running(), "the mean waits for the copy");
            for (x, y) in a.iter().zip(&b) {
                assert!(x.equal(y), "step {step}: {x} vs {y}");
            }
            let held: BTreeSet<_> = window.iter().copied().collect();
            now.retain(&held);
            later.retain(&held);
        }
        let w = weights_at(6);
        later.take(6, Storage::Cpu, &w, "later").unwrap();
        later.retain(&BTreeSet::new()); // dropped while in flight
        later.take(7, Storage::Cpu, &w, "later").unwrap();
        later.settle("later").unwrap();
        let (_, snapshot) = later.iter().next().unwrap();
        let kinds: Vec<Kind> = snapshot.iter().map(Tensor::kind).collect();
        assert_eq!(kinds, [Kind::Float, Kind::Float, Kind::Int64]);
        for ((_, t), s) in w.iter().zip(snapshot) {
            assert!(t.to_kind(s.kind()).equal(s));
        }
    }

    /// Absorbing a store waits for its copy in flight and frees its pinned buffer.
    #[test]
    fn absorb_waits_for_the_copy_and_frees_the_buffer() {
        let mut lone = SnapshotStore::deferring();
        lone.take(1, Storage::Cpu, &weights_at(1), "lawa").unwrap();
        assert!(lone.is_copying());
        let mut set = SnapshotStore::default();
        set.absorb(&mut lone, "lawa").unwrap();
        assert!(!lone.is_copying() && lone.offload.staging_len() == 0);
        let (_, snapshot) = set.iter().next().unwrap();
        let want = weights_at(1);
        for ((_, t), s) in want.iter().zip(snapshot) {
            assert!(t.to_kind(s.kind()).equal(s));
        }
    }

    /// A failed background copy is reported by the next snapshot and the next mean, under the
    /// label of the averager asking.
    #[test]
    fn a_failed_background_copy_is_reported_by_what_comes_next() {
        let mut store = SnapshotStore::deferring();
        store
            .take(1, Storage::Cpu, &weights_at(1), "lawa_k2_nu1")
            .unwrap();
        store.offload.run_as_background(|| {
            Err(AveragingError::UpdateFailed {
                label: "lawa_k2_nu1".into(),
                reason: "out of memory".into(),
            })
        });
        let err = store
            .take(2, Storage::Cpu, &weights_at(2), "lawa_k2_nu1")
            .unwrap_err();
        assert!(err.to_string().contains("out of memory"), "{err}");
        assert!(store.get((2, Storage::Cpu)).is_none());
        let target = weights_at(0);
        let err = store
            .write_mean(&[(1, Storage::Cpu)], &target, "lawa_k2_nu1")
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("lawa_k2_nu1: an update in host memory failed"),
            "{err}"
        );
    }
}
