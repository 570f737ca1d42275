//! `lawa prepare`: a corpus -> `train.bin`, `val.bin` (uint16 token ids) and `meta.json` (and
//! `tokenizer.json` for `bpe:N` or a Hugging Face tokenizer).

use std::path::PathBuf;

use anyhow::{anyhow, Result};

use crate::prepare::tokenizer::TokenizerSpec;
use crate::prepare::{prepare, AnotherDataset, PrepareOptions, Prepared, DEFAULT_BPE_SAMPLE_BYTES};

/// What to prepare, and how.
#[derive(Debug, Clone, clap::Args)]
pub struct PrepareArgs {
    /// A .txt file, a .jsonl / .jsonl.gz / .jsonl.zst file (one document per line), a .parquet
    /// file (one per row), a folder of such files (searched recursively, in path order), or
    /// `sotu` for the bundled State of the Union corpus.
    pub source: String,
    /// Output folder [default: data/SOURCE-TOKENIZER, e.g. data/sotu-bpe4096].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// `gpt2` (GPT-2's 50,257-token BPE), `bpe:N` (a byte-level BPE of N tokens trained on a
    /// sample of the training split), `byte`, or a Hugging Face `tokenizer.json` file (e.g.
    /// Pythia's).
    #[arg(long, default_value = "gpt2")]
    pub tokenizer: TokenizerSpec,
    /// Fraction of the corpus held out for validation: whole documents when there are several,
    /// the tail of the text when there is one.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub val_fraction: f64,
    /// Replace an existing, different dataset in the output folder (only lawa's files are
    /// replaced; other files there stay).
    #[arg(long)]
    pub force: bool,
    /// The JSON field or Parquet column holding each document's text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Skip documents that cannot be read (bad JSON, not UTF-8, no text) instead of stopping;
    /// their count goes to meta.json.
    #[arg(long)]
    pub skip_bad: bool,
    /// With bpe:N, train the vocabulary on at most this many megabytes of training text (a
    /// seeded sample of the training documents).
    #[arg(long, default_value_t = (DEFAULT_BPE_SAMPLE_BYTES >> 20) as u64)]
    pub bpe_sample_mb: u64,
    /// Threads for tokenizing [default: every core].
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Runs `lawa prepare`.
pub fn run(args: &PrepareArgs) -> Result<Prepared> {
    prepare(&PrepareOptions {
        source: args.source.clone(),
        out: args.out.clone(),
        tokenizer: args.tokenizer.clone(),
        val_fraction: args.val_fraction,
        force: args.force,
        text_field: args.text_field.clone(),
        skip_bad: args.skip_bad,
        bpe_sample_bytes: (args.bpe_sample_mb as usize) << 20,
        threads: args.threads,
    })
    .map_err(|e| match e.downcast_ref::<AnotherDataset>() {
        Some(another) => anyhow!("{another}; pass --force to replace it, or choose another --out"),
        None => e,
    })
}
