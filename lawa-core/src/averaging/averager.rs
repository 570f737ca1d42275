use super::state::SavedAverager;
use super::store::{SnapshotKey, SnapshotStore};
use super::weights::Layout;
use super::{AveragingError, Storage, Weights};

/// A weight-averaging strategy that watches the training trajectory: [`Lawa`](super::Lawa),
/// [`Ema`](super::Ema) or [`Swa`](super::Swa).
///
/// After every optimizer step the training loop calls [`observe`](Averager::observe) with the
/// number of steps done so far (1 after the first step). Averagers never change the training
/// weights or the optimizer: they keep their own copies, and
/// [`write_average`](Averager::write_average) writes the averaged weights into a separate set of
/// tensors, typically an evaluation copy of the model.
///
/// An averager can be used alone, or pushed into an [`AveragerSet`](super::AveragerSet), which
/// feeds several at once and keeps one copy of each snapshot they share, and saves and loads
/// their state (to checkpoint a lone averager, put it in a set of one). Averagers are `Send`:
/// a set can move to another thread or live in an async task.
pub trait Averager: sealed::Core + Send {
    /// A stable, readable name for CSVs and legends, e.g. `lawa_k5_nu50`, `ema_0.99`,
    /// `swa_start0.75_every10`.
    fn label(&self) -> String;

    /// Sees the training weights after optimizer step `step`. Steps must increase: a step that
    /// does not come after the last one observed is refused ([`AveragingError::StepOrder`]),
    /// as are weights without a tensor ([`AveragingError::NoWeights`]).
    fn observe(&mut self, step: u64, weights: &Weights) -> Result<(), AveragingError>;

    /// Whether there is an average to write (at least one update or snapshot taken).
    fn is_ready(&self) -> bool;

    /// Writes the averaged weights into `target`, which must have the same tensor names and
    /// shapes as the observed weights (dtypes may differ: values are cast). Before the first
    /// update, an [`AveragingError::NotReady`] naming the step it is due. Written into the
    /// training weights themselves, the average replaces them (as at the end of training, to
    /// keep it): training that goes on from there is another trajectory.
    fn write_average(&self, target: &Weights) -> Result<(), AveragingError>;
}

/// What an [`AveragerSet`](super::AveragerSet) needs from its averagers beyond the public trait:
/// feeding them from a shared snapshot store, and saving and restoring their state. Sealed, so
/// the set's invariants hold for every averager it holds.
pub(crate) mod sealed {
    use super::*;

    pub trait Core {
        /// Where this averager keeps its copies.
        fn storage(&self) -> Storage;

        /// Observes `weights` after `step`, taking snapshots from (and into) `store`.
        fn observe_in(
            &mut self,
            step: u64,
            weights: &Weights,
            store: &mut SnapshotStore,
        ) -> Result<(), AveragingError>;

        /// Writes the average into `target`, reading snapshots from `store`.
        fn write_from(&self, target: &Weights, store: &SnapshotStore)
            -> Result<(), AveragingError>;

        /// The names, shapes and dtypes of the weights it has observed, if any.
        fn layout(&self) -> Option<&Layout>;

        /// The last step it observed, if any.
        fn last_step(&self) -> Option<u64>;

        /// The snapshots this averager refers to.
        fn held(&self) -> Vec<SnapshotKey> {
            Vec::new()
        }

        /// Moves the snapshots the averager took while used alone into `store`.
        fn share_snapshots(&mut self, _store: &mut SnapshotStore) -> Result<(), AveragingError> {
            Ok(())
        }

        /// Waits for any part of the last update still running in the background (an average
        /// or a snapshot kept in host memory of weights on a GPU); an error if it failed.
        fn settle(&self) -> Result<(), AveragingError> {
            Ok(())
        }

        /// Everything needed to continue exactly after a restart (once any update still
        /// running in the background has finished).
        fn save(&self) -> Result<SavedAverager, AveragingError>;

        /// Continues from a saved state, for weights of `layout`; snapshots come from `store`.
        fn restore(
            &mut self,
            saved: SavedAverager,
            layout: &Layout,
            store: &SnapshotStore,
        ) -> Result<(), AveragingError>;
    }
}
