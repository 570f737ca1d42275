//! Optimizer pieces a training loop needs, with state lawa owns (so a run can be saved and
//! resumed exactly): [`AdamW`], [`clip_grad_norm`] and learning-rate [`Schedule`]s.

mod adamw;
mod clip;
mod schedule;

pub use adamw::{AdamW, AdamWConfig, AdamWKernel, OptimError};
pub use clip::clip_grad_norm;
pub use schedule::{Schedule, ScheduleError};
