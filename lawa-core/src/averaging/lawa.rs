use std::collections::VecDeque;
use std::rc::Rc;

use super::weights::{is_averaged, Layout};
use super::{Averager, AveragerState, AveragingError, Snapshot, SnapshotCache, Weights};

/// LAWA (latest weight averaging): the uniform mean of the latest `k` snapshots of the weights,
/// one taken every `nu` optimizer steps (at steps that are multiples of `nu`, from `start` on).
/// Until `k` snapshots are held, the mean is over those held.
///
/// ```
/// use lawa_core::averaging::{Averager, Lawa, SnapshotCache, Storage, Weights};
/// use tch::Tensor;
///
/// let mut lawa = Lawa::new(2, 10).unwrap();
/// let mut cache = SnapshotCache::new(Storage::Training);
/// let mut w = Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu));
/// for step in 1..=30 {
///     let _ = w.fill_(step as f64);
///     let weights = Weights::from_named([("w".to_string(), w.shallow_clone())]);
///     lawa.observe(step, &weights, &mut cache).unwrap();
/// }
/// let out = Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu));
/// lawa.write_average(&Weights::from_named([("w".to_string(), out.shallow_clone())])).unwrap();
/// assert_eq!(out.double_value(&[0]), 25.0); // mean of the snapshots at steps 20 and 30
/// ```
#[derive(Debug)]
pub struct Lawa {
    k: usize,
    nu: u64,
    start: u64,
    queue: VecDeque<Rc<Snapshot>>,
    layout: Option<Layout>,
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
            nu,
            start: 0,
            queue: VecDeque::with_capacity(k + 1),
            layout: None,
        })
    }

    /// Takes no snapshot before step `start`.
    pub fn with_start(mut self, start: u64) -> Self {
        self.start = start;
        self
    }

    /// The window size.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The spacing of snapshots, in optimizer steps.
    pub fn nu(&self) -> u64 {
        self.nu
    }

    /// The steps of the snapshots held, oldest first.
    pub fn held_steps(&self) -> Vec<u64> {
        self.queue.iter().map(|s| s.step()).collect()
    }

    fn first_step(&self) -> u64 {
        self.start.max(1).div_ceil(self.nu) * self.nu
    }
}

impl Averager for Lawa {
    fn label(&self) -> String {
        let mut label = format!("lawa_k{}_nu{}", self.k, self.nu);
        if self.start > 0 {
            label.push_str(&format!("_start{}", self.start));
        }
        label
    }

    fn observe(
        &mut self,
        step: u64,
        weights: &Weights,
        snapshots: &mut SnapshotCache,
    ) -> Result<(), AveragingError> {
        if step < self.start || !step.is_multiple_of(self.nu) {
            return Ok(());
        }
        let layout = weights.layout();
        match &self.layout {
            None => self.layout = Some(layout),
            Some(l) => l.check(&layout, &self.label(), true)?,
        }
        self.queue.push_back(snapshots.get(step, weights));
        while self.queue.len() > self.k {
            self.queue.pop_front();
        }
        Ok(())
    }

    fn is_ready(&self) -> bool {
        !self.queue.is_empty()
    }

    fn write_average(&self, target: &Weights) -> Result<(), AveragingError> {
        let (Some(layout), Some(newest)) = (&self.layout, self.queue.back()) else {
            return Err(AveragingError::NotReady {
                label: self.label(),
                first_step: self.first_step(),
            });
        };
        layout.check(
            &target.layout(),
            &format!("{}: target", self.label()),
            false,
        )?;
        let n = self.queue.len() as f64;
        tch::no_grad(|| {
            for (i, (_, t)) in target.iter().enumerate() {
                let mut t = t.shallow_clone();
                if !is_averaged(newest.tensors()[i].kind()) {
                    t.f_copy_(&newest.tensors()[i])?;
                    continue;
                }
                // Sum oldest to newest in fp32, then divide: one fixed order, so the result is
                // the same bit for bit on every call.
                let mut sum = self.queue[0].tensors()[i].copy();
                for s in self.queue.iter().skip(1) {
                    let _ = sum.f_add_(&s.tensors()[i])?;
                }
                let _ = sum.f_div_scalar_(n)?;
                t.f_copy_(&sum)?;
            }
            Ok::<(), tch::TchError>(())
        })?;
        Ok(())
    }

    fn state(&self) -> AveragerState {
        AveragerState {
            label: self.label(),
            meta: serde_json::json!({ "k": self.k, "nu": self.nu, "start": self.start }),
            tensors: Vec::new(),
            snapshots: self.queue.iter().cloned().collect(),
        }
    }

    fn restore(&mut self, state: AveragerState, layout: &Layout) -> Result<(), AveragingError> {
        if state.label != self.label() {
            return Err(AveragingError::BadState {
                label: self.label(),
                reason: format!("the saved state is of `{}`", state.label),
            });
        }
        if state.snapshots.len() > self.k {
            return Err(AveragingError::BadState {
                label: self.label(),
                reason: format!(
                    "{} snapshots saved, window is {}",
                    state.snapshots.len(),
                    self.k
                ),
            });
        }
        self.queue = state.snapshots.into_iter().collect();
        self.layout = (!self.queue.is_empty()).then(|| layout.clone());
        Ok(())
    }

    fn snapshots(&self) -> Vec<Rc<Snapshot>> {
        self.queue.iter().cloned().collect()
    }
}
