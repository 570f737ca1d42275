//! # lawa-core
//!
//! Weight averaging along a training trajectory (LAWA, EMA, SWA; [`averaging`]) and the pieces
//! a tch training loop needs around it: AdamW and learning-rate schedules ([`optim`]), tokenized
//! datasets in nanoGPT's `.bin` format with random training batches and fixed validation windows
//! ([`data`]), and durable checkpoint files with streamed post-hoc averaging ([`checkpoint`]).
//!
//! ```no_run
//! use lawa_core::data::{BatchSampler, Dataset, Split, ValidationWindows};
//!
//! # fn main() -> anyhow::Result<()> {
//! let data = Dataset::open("data/sotu")?;
//! let mut sampler = BatchSampler::new(data.split(Split::Train), 8, 128, 1337)?;
//! let batch = sampler.next_batch(tch::Device::Cpu)?; // x, y: int64 [8, 128]
//! let val = ValidationWindows::new(data.split(Split::Val), 128, 64)?;
//! # Ok(()) }
//! ```

pub mod averaging;
pub mod checkpoint;
pub mod data;
pub mod optim;
