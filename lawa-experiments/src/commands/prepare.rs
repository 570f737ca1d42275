//! `lawa prepare`: a text corpus -> `train.bin`, `val.bin` (uint16 token ids) and `meta.json`.

use std::path::PathBuf;

use anyhow::Result;

use crate::prepare::tokenizer::TokenizerSpec;
use crate::prepare::{prepare, PrepareOptions, Prepared};

/// What to prepare, and how.
#[derive(Debug, Clone, clap::Args)]
pub struct PrepareArgs {
    /// A .txt file, a folder of .txt files, a .jsonl file with a `text` field per line, or
    /// `sotu` for the bundled State of the Union corpus.
    pub source: String,
    /// Output folder [default: data/SOURCE-TOKENIZER, e.g. data/sotu-bpe4096].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// `gpt2` (GPT-2's 50,257-token BPE), `bpe:N` (a byte-level BPE of N tokens trained on the
    /// training split) or `byte`.
    #[arg(long, default_value = "gpt2")]
    pub tokenizer: TokenizerSpec,
    /// Fraction of the corpus held out for validation: whole documents when there are several,
    /// the tail of the text when there is one.
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Replace an existing, different dataset in the output folder.
    #[arg(long)]
    pub force: bool,
}

/// Runs `lawa prepare`.
pub fn run(args: &PrepareArgs) -> Result<Prepared> {
    prepare(&PrepareOptions {
        source: args.source.clone(),
        out: args.out.clone(),
        tokenizer: args.tokenizer,
        val_fraction: args.val_fraction,
        force: args.force,
    })
}
