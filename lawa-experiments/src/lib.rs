//! The `lawa` command line as a library: each subcommand is a module under [`commands`], callable
//! from tests and other programs; `main.rs` only parses arguments and prints errors.

pub mod assets;
pub mod commands;
pub mod corpus;
pub mod figures;
pub mod progress;
pub mod sweep;
pub mod tokenizer;
pub mod train;
