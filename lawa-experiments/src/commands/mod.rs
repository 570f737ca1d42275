//! One module per `lawa` subcommand.

pub mod average;
pub mod prepare;
