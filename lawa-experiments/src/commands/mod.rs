//! One module per `lawa` subcommand.

pub mod average;
pub mod bench;
pub mod eval;
pub mod figures;
pub mod posthoc;
pub mod prepare;
pub mod sample;
pub mod sweep;
pub mod train;
