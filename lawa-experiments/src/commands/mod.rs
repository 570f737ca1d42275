//! One module per `lawa` subcommand.

pub mod eval;
pub mod prepare;
pub mod sample;
