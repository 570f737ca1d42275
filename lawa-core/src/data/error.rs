use std::path::PathBuf;

/// Everything that can be wrong with a dataset on disk or a request made of it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Host memory for a batch's copy to the GPU could not be pinned.
    #[error("cannot pin host memory for a batch: {0}")]
    Pin(String),
    /// A file the dataset needs is not there.
    #[error("{}: file not found{hint}", .path.display())]
    Missing {
        /// The file that was looked for.
        path: PathBuf,
        /// Extra advice, starting with "; " when present.
        hint: String,
    },
    /// A dataset path that names a file.
    #[error("{}: is a file, not a dataset folder (a folder holding train.bin, val.bin and meta.json)", .path.display())]
    NotAFolder {
        /// The path given.
        path: PathBuf,
    },
    /// Reading a file failed.
    #[error("{}: {error}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A token file's byte length is not a whole number of uint16 ids.
    #[error("{}: length {bytes} bytes is odd; a .bin file holds uint16 token ids (2 bytes each), so this one is truncated or not a token file", .path.display())]
    OddLength {
        /// The token file.
        path: PathBuf,
        /// Its length in bytes.
        bytes: u64,
    },
    /// A token file holds no tokens.
    #[error("{}: holds no tokens", .path.display())]
    Empty {
        /// The token file.
        path: PathBuf,
    },
    /// A token id is not below the vocabulary size.
    #[error("{}: token id {id} at position {position} is not below the vocabulary size {vocab_size}", .path.display())]
    TokenOutOfRange {
        /// The token file.
        path: PathBuf,
        /// Index of the first offending token.
        position: u64,
        /// The offending id.
        id: u16,
        /// The vocabulary size it must be below.
        vocab_size: u32,
    },
    /// The token count disagrees with `meta.json`.
    #[error("{}: holds {actual} tokens but meta.json says {expected}; the file is truncated or belongs to another preparation", .path.display())]
    CountMismatch {
        /// The token file.
        path: PathBuf,
        /// The count meta.json records.
        expected: u64,
        /// The count found.
        actual: u64,
    },
    /// `meta.json` is unreadable or inconsistent.
    #[error("{}: {message}", .path.display())]
    BadMeta {
        /// The meta.json file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A vocabulary too large for uint16 token ids.
    #[error("vocabulary size {vocab_size} does not fit uint16 token ids (at most {max})")]
    VocabTooLarge {
        /// The requested vocabulary size.
        vocab_size: u64,
        /// The largest allowed.
        max: u32,
    },
    /// A window or batch shape that the split cannot provide.
    #[error("{}: block size {block_size} needs at least {needed} tokens but the split holds {tokens}", .path.display())]
    BlockTooLong {
        /// The token file.
        path: PathBuf,
        /// The requested block size.
        block_size: usize,
        /// Tokens needed (block size + 1 for the shifted targets).
        needed: u64,
        /// Tokens the split holds.
        tokens: u64,
    },
    /// A parameter that must be positive is zero.
    #[error("{name} must be at least 1, got 0")]
    Zero {
        /// The parameter's name.
        name: &'static str,
    },
    /// A batch whose token ids do not fit in host memory.
    #[error("a batch of {windows} windows of {block} tokens needs {bytes} bytes of host memory for its inputs and targets, more than can be allocated; lower the batch or block size (or use gradient accumulation)")]
    BatchTooLarge {
        /// Windows in the batch.
        windows: usize,
        /// Tokens per window.
        block: usize,
        /// Bytes asked for (saturated at `u128::MAX` where the count overflows).
        bytes: u128,
    },
    /// A batch that does not split evenly into the requested shares.
    #[error("a batch of {batch_size} sequences does not split into {parts} equal shares")]
    Uneven {
        /// Sequences per batch.
        batch_size: usize,
        /// Shares asked for.
        parts: usize,
    },
}

impl DataError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_owned(),
            error: source,
        }
    }
}
