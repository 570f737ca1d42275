use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{DataError, DatasetMeta, TokenFile, META_FILE};

/// Which half of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// `train.bin`.
    Train,
    /// `val.bin`.
    Val,
}

impl Split {
    /// The file name of this split inside a dataset folder.
    pub fn file_name(self) -> &'static str {
        match self {
            Split::Train => "train.bin",
            Split::Val => "val.bin",
        }
    }

    /// `train` or `val`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            other => Err(format!("unknown split '{other}' (expected train or val)")),
        }
    }
}

/// A prepared dataset folder: `train.bin`, `val.bin` and `meta.json`, validated and opened.
/// Token ids are checked against the vocabulary as they are read (see [`TokenFile`]), so opening
/// a dataset costs the same whatever its size.
///
/// A folder with only nanoGPT's `train.bin`/`val.bin` (no `meta.json`) is read as GPT-2 token ids,
/// so an existing OpenWebText preparation works as it is.
#[derive(Debug, Clone)]
pub struct Dataset {
    dir: PathBuf,
    meta: DatasetMeta,
    train: Arc<TokenFile>,
    val: Arc<TokenFile>,
}

impl Dataset {
    /// Opens and validates the dataset in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        if dir.is_file() {
            return Err(DataError::NotAFolder {
                path: dir.to_owned(),
            });
        }
        if !dir.is_dir() {
            return Err(DataError::Missing {
                path: dir.to_owned(),
                hint: "; prepare one with `lawa prepare <corpus> --out <dir>`".into(),
            });
        }
        let meta_path = dir.join(META_FILE);
        let meta = if meta_path.exists() {
            Some(DatasetMeta::load(&meta_path)?)
        } else {
            None
        };
        let vocab = meta.as_ref().map_or(50_257, |m| m.vocab_size);
        let open = |split: Split| -> Result<TokenFile, DataError> {
            let path = dir.join(split.file_name());
            TokenFile::open(&path, vocab).map_err(|e| match e {
                DataError::Missing { path, .. } => DataError::Missing {
                    path,
                    hint: format!(
                        "; a dataset folder holds train.bin, val.bin{}",
                        if meta.is_some() { " and meta.json" } else { "" }
                    ),
                },
                other => other,
            })
        };
        let train = open(Split::Train)?;
        let val = open(Split::Val)?;
        let meta = match meta {
            Some(meta) => {
                for (file, expected) in [(&train, meta.train_tokens), (&val, meta.val_tokens)] {
                    if file.len() != expected {
                        return Err(DataError::CountMismatch {
                            path: file.path().to_owned(),
                            expected,
                            actual: file.len(),
                        });
                    }
                }
                meta
            }
            None => DatasetMeta::nanogpt_gpt2(train.len(), val.len()),
        };
        Ok(Dataset {
            dir: dir.to_owned(),
            meta,
            train: Arc::new(train),
            val: Arc::new(val),
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The dataset's description.
    pub fn meta(&self) -> &DatasetMeta {
        &self.meta
    }

    /// The token file of a split (cheap to clone and share).
    pub fn split(&self, split: Split) -> Arc<TokenFile> {
        match split {
            Split::Train => self.train.clone(),
            Split::Val => self.val.clone(),
        }
    }

    /// What identifies this preparation: the tokenizer, vocabulary, token counts and the corpus
    /// digest from `meta.json` (for a nanoGPT folder, the counts and the files' modification
    /// times). A run records it, so that resuming on a dataset re-prepared under the same path
    /// is refused instead of silently training on other tokens.
    pub fn identity(&self) -> String {
        let m = &self.meta;
        let mut id = format!(
            "{} vocab {} train {} val {} tokens",
            m.tokenizer, m.vocab_size, m.train_tokens, m.val_tokens
        );
        if !m.source_sha256.is_empty() {
            id.push_str(&format!(", corpus sha256 {}", m.source_sha256));
        } else {
            for split in [Split::Train, Split::Val] {
                let modified = std::fs::metadata(self.dir.join(split.file_name()))
                    .and_then(|md| md.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                id.push_str(&format!(", {} modified {modified}", split.file_name()));
            }
        }
        id
    }
}
