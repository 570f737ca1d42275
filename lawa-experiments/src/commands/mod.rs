//! One module per `lawa` subcommand.

pub mod prepare;
