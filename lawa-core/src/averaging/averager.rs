use std::rc::Rc;

use super::{AveragingError, Layout, Snapshot, SnapshotCache, Weights};

/// A weight-averaging strategy that watches the training trajectory.
///
/// After every optimizer step the training loop calls [`observe`](Averager::observe) with the
/// number of steps done so far (1 after the first step). Averagers never change the training
/// weights or the optimizer: they keep their own copies, and
/// [`write_average`](Averager::write_average) writes their averaged weights into a separate set
/// of tensors, typically an evaluation copy of the model.
pub trait Averager {
    /// A stable, readable name for CSVs and legends, e.g. `lawa_k5_nu50`, `ema_0.99`,
    /// `swa_start0.75_every10`.
    fn label(&self) -> String;

    /// Sees the training weights after optimizer step `step`. Snapshots come from `snapshots`,
    /// so averagers that want the same step share one copy.
    fn observe(
        &mut self,
        step: u64,
        weights: &Weights,
        snapshots: &mut SnapshotCache,
    ) -> Result<(), AveragingError>;

    /// Whether there is an average to write (at least one update taken).
    fn is_ready(&self) -> bool;

    /// Writes the averaged weights into `target`, which must have the same tensor names and
    /// shapes as the observed weights (dtypes may differ: values are cast).
    fn write_average(&self, target: &Weights) -> Result<(), AveragingError>;

    /// Everything needed to continue exactly after a restart.
    fn state(&self) -> AveragerState;

    /// Continues from a saved state; `layout` is that of the weights it will observe.
    fn restore(&mut self, state: AveragerState, layout: &Layout) -> Result<(), AveragingError>;

    /// The snapshots this averager holds (for memory accounting and sharing).
    fn snapshots(&self) -> Vec<Rc<Snapshot>> {
        Vec::new()
    }
}

/// The saved state of an averager: counters as JSON, running averages as tensors in weight
/// order, and held snapshots (saved once per step by [`AveragerSet`](super::AveragerSet)).
#[derive(Debug)]
pub struct AveragerState {
    /// The averager's label (checked on restore).
    pub label: String,
    /// Counters and settings.
    pub meta: serde_json::Value,
    /// Running-average tensors (EMA/SWA shadows), in weight order.
    pub tensors: Vec<tch::Tensor>,
    /// Held snapshots, oldest first (LAWA's queue).
    pub snapshots: Vec<Rc<Snapshot>>,
}

impl AveragerState {
    pub(crate) fn field_u64(&self, key: &str) -> Result<u64, AveragingError> {
        self.meta
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| AveragingError::BadState {
                label: self.label.clone(),
                reason: format!("missing counter `{key}`"),
            })
    }
}
