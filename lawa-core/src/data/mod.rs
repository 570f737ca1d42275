//! Tokenized datasets: `train.bin` / `val.bin` (uint16 little-endian token ids, nanoGPT's format)
//! plus `meta.json`, memory-mapped, with seeded training batches and fixed validation windows.

mod batches;
mod dataset;
mod error;
mod meta;
mod token_file;

pub use batches::{Batch, BatchSampler, SamplerState, ValidationWindows};
pub use dataset::{Dataset, Split};
pub use error::DataError;
pub use meta::{DatasetMeta, SplitMethod, MAX_UINT16_VOCAB, META_FILE};
pub use token_file::TokenFile;
