//! Weight averaging along a training trajectory: [`Lawa`], [`Ema`] and [`Swa`] behind one
//! [`Averager`] trait, fed together by an [`AveragerSet`] that shares snapshots between them.
//!
//! Averagers only *evaluate*: they never write into the training weights or the optimizer.
//! Averages are computed in fp32; tied tensors count once; integer tensors are copied.
//!
//! A training loop gains LAWA and EMA evaluation in a few lines:
//!
//! ```
//! use lawa_core::averaging::{AveragerSet, Ema, Lawa, Storage, Weights};
//! use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};
//!
//! # fn main() -> anyhow::Result<()> {
//! let vs = nn::VarStore::new(Device::Cpu);
//! let net = nn::linear(vs.root(), 8, 1, Default::default());
//! let mut opt = nn::Sgd::default().build(&vs, 1e-2)?;
//!
//! let mut averagers = AveragerSet::new(Storage::Training);           // + 1
//! averagers.push(Box::new(Lawa::new(5, 10)?))?;                       // + 2
//! averagers.push(Box::new(Ema::new(0.99)?))?;                         // + 3
//!
//! let mut eval_vs = nn::VarStore::new(Device::Cpu);                   // an evaluation copy
//! let eval_net = nn::linear(eval_vs.root(), 8, 1, Default::default());
//!
//! let x = Tensor::randn([64, 8], (Kind::Float, Device::Cpu));
//! let y = x.sum_dim_intlist([1].as_slice(), true, Kind::Float);
//! for step in 1..=100u64 {
//!     let loss = x.apply(&net).mse_loss(&y, tch::Reduction::Mean);
//!     opt.backward_step(&loss);
//!     averagers.observe(step, &Weights::from_var_store(&vs))?;        // + 4
//! }
//! for averager in averagers.iter() {
//!     averager.write_average(&Weights::from_var_store(&eval_vs))?;   // + 5
//!     let loss = x.apply(&eval_net).mse_loss(&y, tch::Reduction::Mean);
//!     println!("{}: {:.4}", averager.label(), loss.double_value(&[]));
//! }
//! # let _ = &mut eval_vs;
//! # Ok(()) }
//! ```

mod averager;
mod ema;
mod error;
mod lawa;
mod running_average;
mod set;
mod snapshot;
mod spec;
mod swa;
mod weights;

pub use averager::{Averager, AveragerState};
pub use ema::Ema;
pub use error::AveragingError;
pub use lawa::Lawa;
pub use set::{AveragerSet, STATE_JSON, STATE_TENSORS};
pub use snapshot::{Snapshot, SnapshotCache, Storage};
pub use spec::AveragerSpec;
pub use swa::{Swa, SwaStart};
pub use weights::{is_averaged, Layout, Weights};
