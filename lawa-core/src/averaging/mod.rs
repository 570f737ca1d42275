//! Weight averaging along a training trajectory: [`Lawa`], [`Ema`] and [`Swa`] behind one
//! [`Averager`] trait, used alone or fed together by an [`AveragerSet`] that keeps one copy of
//! each snapshot they share.
//!
//! Averagers only *evaluate*: they never write into the training weights or the optimizer.
//! They are fed once per optimizer step, steps increasing: a step given twice or out of order
//! is refused ([`AveragingError::StepOrder`]), across a saved and loaded state too.
//! Averages are computed in fp32; tied tensors count once; integer tensors are copied. All three
//! are built the same way: a constructor with what defines them, then `start` (the first step
//! they act on), `every` (steps between updates; LAWA's is its `nu`) and `storage` (where their
//! copies live).
//!
//! A training loop gains LAWA and EMA evaluation in a few lines:
//!
//! ```
//! use lawa_core::averaging::{AveragerSet, Ema, Lawa, Weights};
//! use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};
//!
//! # fn main() -> anyhow::Result<()> {
//! let vs = nn::VarStore::new(Device::Cpu);
//! let net = nn::linear(vs.root(), 8, 1, Default::default());
//! let mut opt = nn::Sgd::default().build(&vs, 1e-2)?;
//! let eval_vs = nn::VarStore::new(Device::Cpu);                      // an evaluation copy
//! let eval_net = nn::linear(eval_vs.root(), 8, 1, Default::default());
//!
//! let weights = Weights::from_var_store(&vs);                         // + 1
//! let eval_weights = Weights::from_var_store(&eval_vs);               // + 2
//! let mut averagers = AveragerSet::new();                             // + 3
//! averagers.push(Lawa::new(5, 10)?)?;                                 // + 4
//! averagers.push(Ema::new(0.99)?)?;                                   // + 5
//!
//! let x = Tensor::randn([64, 8], (Kind::Float, Device::Cpu));
//! let y = x.sum_dim_intlist([1].as_slice(), true, Kind::Float);
//! for step in 1..=100u64 {
//!     let loss = x.apply(&net).mse_loss(&y, tch::Reduction::Mean);
//!     opt.backward_step(&loss);
//!     averagers.observe(step, &weights)?;                             // + 6
//! }
//! for averager in averagers.iter() {
//!     averager.write_average(&eval_weights)?;                         // + 7
//!     let loss = x.apply(&eval_net).mse_loss(&y, tch::Reduction::Mean);
//!     println!("{}: {:.4}", averager.label(), loss.double_value(&[]));
//! }
//! # Ok(()) }
//! ```

mod averager;
mod cadence;
mod ema;
mod error;
mod host_offload;
mod lawa;
mod running_average;
mod set;
mod state;
mod storage;
mod store;
mod swa;
mod weights;

pub use averager::Averager;
pub use ema::Ema;
pub use error::AveragingError;
pub use lawa::Lawa;
pub use set::{AveragerSet, Member};
pub use storage::Storage;
pub use swa::Swa;
pub use weights::Weights;
