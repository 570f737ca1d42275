use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::weights::is_averaged;
use super::Weights;

/// Where averagers keep their snapshots and running averages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On the device the training weights live on (fastest; uses accelerator memory).
    #[default]
    Training,
    /// In host memory (saves accelerator memory; costs a copy per snapshot or EMA update).
    Cpu,
}

impl Storage {
    /// The device a copy of `t` goes to.
    pub fn device_for(self, t: &Tensor) -> Device {
        match self {
            Storage::Training => t.device(),
            Storage::Cpu => Device::Cpu,
        }
    }
}

/// An fp32 copy of `t` (integer tensors keep their dtype) on the storage device.
pub(crate) fn stored_copy(t: &Tensor, storage: Storage) -> Tensor {
    let kind = if is_averaged(t.kind()) {
        Kind::Float
    } else {
        t.kind()
    };
    let mut out = Tensor::empty(t.size(), (kind, storage.device_for(t)));
    tch::no_grad(|| out.copy_(&t.detach()));
    out
}

/// A copy of the training weights taken after a given optimizer step, in fp32 (integer tensors
/// as they are), in the order of [`Weights`]. Shared (`Rc`) by every averager that wants the
/// weights of that step.
#[derive(Debug)]
pub struct Snapshot {
    step: u64,
    tensors: Vec<Tensor>,
}

impl Snapshot {
    /// Copies `weights` as they are after `step`.
    pub fn take(step: u64, weights: &Weights, storage: Storage) -> Self {
        Snapshot {
            step,
            tensors: weights
                .iter()
                .map(|(_, t)| stored_copy(t, storage))
                .collect(),
        }
    }

    /// Builds a snapshot from tensors already copied (used when restoring a saved state).
    pub fn from_tensors(step: u64, tensors: Vec<Tensor>) -> Self {
        Snapshot { step, tensors }
    }

    /// The optimizer step the weights are from.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The copied tensors, in the order of the weights they came from.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.tensors
            .iter()
            .map(|t| t.numel() * t.kind().elt_size_in_bytes())
            .sum()
    }
}

/// Hands out snapshots of the current step, taking at most one copy per step however many
/// averagers ask for it.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    storage: Storage,
    current: Option<Rc<Snapshot>>,
    taken: u64,
}

impl SnapshotCache {
    /// A cache that stores its copies in `storage`.
    pub fn new(storage: Storage) -> Self {
        SnapshotCache {
            storage,
            current: None,
            taken: 0,
        }
    }

    /// Where copies go.
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// The snapshot of `step`: the one already taken at this step if any, else a new copy of
    /// `weights`.
    pub fn get(&mut self, step: u64, weights: &Weights) -> Rc<Snapshot> {
        if let Some(s) = &self.current {
            if s.step == step {
                return s.clone();
            }
        }
        let snapshot = Rc::new(Snapshot::take(step, weights, self.storage));
        self.taken += 1;
        self.current = Some(snapshot.clone());
        snapshot
    }

    /// How many copies this cache has taken.
    pub fn copies_taken(&self) -> u64 {
        self.taken
    }

    /// Forgets the current snapshot (averagers keep theirs alive).
    pub fn clear(&mut self) {
        self.current = None;
    }
}
