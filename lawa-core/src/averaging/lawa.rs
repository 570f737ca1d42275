use std::collections::VecDeque;

use super::averager::sealed::Core;
use super::cadence::Cadence;
use super::state::SavedAverager;
use super::store::{SnapshotKey, SnapshotStore};
use super::weights::Layout;
use super::{Averager, AveragingError, Storage, Weights};

/// LAWA (latest weight averaging): the uniform mean of the latest `k` snapshots of the weights,
/// one taken every `nu` optimizer steps (at steps `start`, `start + nu`, ...; with the default
/// `start` of 0, at the multiples of `nu`). Until `k` snapshots are held, the mean is over those
/// held.
///
/// ```
/// use lawa_core::averaging::{Averager, Lawa, Weights};
/// use tch::Tensor;
///
/// let mut lawa = Lawa::new(2, 10)?;
/// let w = Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu));
/// let weights = Weights::from_named([("w".to_string(), w.shallow_clone())]);
/// for step in 1..=30 {
///     let _ = w.shallow_clone().fill_(step as f64); // an optimizer step
///     lawa.observe(step, &weights)?;
/// }
/// let out = Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu));
/// lawa.write_average(&Weights::from_named([("w".to_string(), out.shallow_clone())]))?;
/// assert_eq!(out.double_value(&[0]), 25.0); // mean of the snapshots at steps 20 and 30
/// # Ok::<(), lawa_core::averaging::AveragingError>(())
/// ```
#[derive(Debug)]
pub struct Lawa {
    k: usize,
    cadence: Cadence,
    storage: Storage,
    /// Steps of the snapshots held, oldest first.
    queue: VecDeque<u64>,
    layout: Option<Layout>,
    /// The snapshots of a LAWA used alone (empty inside a set, whose store is shared).
    own: SnapshotStore,
}

impl Lawa {
    /// Averages the latest `k` snapshots taken every `nu` steps.
    pub fn new(k: usize, nu: u64) -> Result<Self, AveragingError> {
        if k == 0 {
            return Err(AveragingError::invalid(
                "lawa",
                "k",
                0,
                "the window must hold at least one snapshot",
            ));
        }
        if nu == 0 {
            return Err(AveragingError::invalid(
                "lawa",
                "nu",
                0,
                "snapshots must be at least one step apart",
            ));
        }
        Ok(Lawa {
            k,
            cadence: Cadence::new(0, nu),
            storage: Storage::default(),
            queue: VecDeque::new(), // k comes from input: no allocation before the memory check
            layout: None,
            own: SnapshotStore::default(),
        })
    }

    /// Takes the first snapshot at step `start`, then every `nu` steps.
    pub fn start(mut self, start: u64) -> Self {
        self.cadence.start = start;
        self
    }

    /// The optimizer step of its first snapshot: `start`, or `nu` when `start` is 0. An averager
    /// whose first update comes after a run's last step is never ready.
    pub fn first_update(&self) -> u64 {
        self.cadence.first_step()
    }

    /// Keeps the snapshots in `storage` (default: on the training device).
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// The window size.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The spacing of snapshots, in optimizer steps.
    pub fn nu(&self) -> u64 {
        self.cadence.every
    }

    /// The steps of the snapshots held, oldest first.
    pub fn held_steps(&self) -> Vec<u64> {
        self.queue.iter().copied().collect()
    }

    fn keys(&self) -> Vec<SnapshotKey> {
        self.queue.iter().map(|&s| (s, self.storage)).collect()
    }
}

impl Averager for Lawa {
    fn label(&self) -> String {
        let mut label = format!("lawa_k{}_nu{}", self.k, self.cadence.every);
        if self.cadence.start > 0 {
            label.push_str(&format!("_start{}", self.cadence.start));
        }
        label
    }

    fn observe(&mut self, step: u64, weights: &Weights) -> Result<(), AveragingError> {
        let mut own = std::mem::take(&mut self.own);
        let result = self.observe_in(step, weights, &mut own);
        own.retain(&self.held().into_iter().collect());
        self.own = own;
        result
    }

    fn is_ready(&self) -> bool {
        !self.queue.is_empty()
    }

    fn write_average(&self, target: &Weights) -> Result<(), AveragingError> {
        self.write_from(target, &self.own)
    }
}

impl Core for Lawa {
    fn storage(&self) -> Storage {
        self.storage
    }

    fn layout(&self) -> Option<&Layout> {
        self.layout.as_ref()
    }

    fn last_step(&self) -> Option<u64> {
        self.cadence.last()
    }

    fn observe_in(
        &mut self,
        step: u64,
        weights: &Weights,
        store: &mut SnapshotStore,
    ) -> Result<(), AveragingError> {
        if !self.cadence.admit(step, weights, &|| self.label())? {
            self.cadence.record(step);
            return Ok(());
        }
        let layout = weights.layout();
        match &self.layout {
            None => self.layout = Some(layout),
            Some(l) => l.check(&layout, &self.label(), true)?,
        }
        store.take(step, self.storage, weights, &self.label())?;
        self.cadence.record(step);
        self.queue.push_back(step);
        while self.queue.len() > self.k {
            self.queue.pop_front();
        }
        Ok(())
    }

    fn write_from(&self, target: &Weights, store: &SnapshotStore) -> Result<(), AveragingError> {
        let Some(layout) = &self.layout else {
            return Err(AveragingError::NotReady {
                label: self.label(),
                first_step: self.cadence.first_step(),
            });
        };
        let label = self.label();
        layout.check(&target.layout(), &format!("{label}: target"), false)?;
        store.write_mean(&self.keys(), target, &label)
    }

    fn held(&self) -> Vec<SnapshotKey> {
        self.keys()
    }

    fn share_snapshots(&mut self, store: &mut SnapshotStore) -> Result<(), AveragingError> {
        let label = self.label();
        store.absorb(&mut self.own, &label)
    }

    fn settle(&self) -> Result<(), AveragingError> {
        self.own.settle(&self.label())
    }

    fn save(&self) -> Result<SavedAverager, AveragingError> {
        let mut meta = serde_json::json!({
            "k": self.k,
            "nu": self.cadence.every,
            "start": self.cadence.start,
        });
        self.cadence.save_into(&mut meta);
        Ok(SavedAverager {
            label: self.label(),
            meta,
            tensors: Vec::new(),
            snapshot_steps: self.held_steps(),
        })
    }

    fn restore(
        &mut self,
        saved: SavedAverager,
        layout: &Layout,
        store: &SnapshotStore,
    ) -> Result<(), AveragingError> {
        let label = self.label();
        saved.check_label(&label)?;
        if saved.snapshot_steps.len() > self.k {
            return Err(saved.bad(format!(
                "{} snapshots saved, the window is {}",
                saved.snapshot_steps.len(),
                self.k
            )));
        }
        for &step in &saved.snapshot_steps {
            if store.get((step, self.storage)).is_none() {
                return Err(saved.bad(format!("the snapshot of step {step} is missing")));
            }
        }
        let newest = saved.snapshot_steps.iter().copied().max();
        self.cadence.restore_from(&saved, newest);
        self.queue = saved.snapshot_steps.into_iter().collect();
        self.layout = (!self.queue.is_empty()).then(|| layout.clone());
        Ok(())
    }
}
