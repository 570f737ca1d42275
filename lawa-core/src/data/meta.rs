use std::path::Path;

use serde::{Deserialize, Serialize};

use super::DataError;

/// File name of a dataset's description, beside `train.bin` and `val.bin`.
pub const META_FILE: &str = "meta.json";

/// Token ids are stored as uint16, so a vocabulary holds at most this many entries (ids 0..=65534;
/// 65535 is kept free so that the count itself fits).
pub const MAX_UINT16_VOCAB: u32 = 65_535;

/// How the validation split was taken from the corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMethod {
    /// Whole documents go to one split or the other (the corpus had several).
    Document,
    /// One document, cut by position: the head is training, the tail validation.
    Position,
    /// Unknown: a nanoGPT preparation without meta.json.
    External,
}

/// The contents of `meta.json`: what the token ids mean and where they came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetMeta {
    /// Tokenizer spec: `gpt2`, `bpe:N` or `byte`.
    pub tokenizer: String,
    /// File holding the tokenizer (relative to the dataset folder), for trained vocabularies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_file: Option<String>,
    /// Number of distinct token ids; every id in the .bin files is below it.
    pub vocab_size: u32,
    /// Id of the end-of-text token that separates documents.
    pub eot_token: Option<u32>,
    /// Tokens in `train.bin`.
    pub train_tokens: u64,
    /// Tokens in `val.bin`.
    pub val_tokens: u64,
    /// Documents in the training split.
    pub train_documents: u64,
    /// Documents in the validation split.
    pub val_documents: u64,
    /// How the split was taken.
    pub split: SplitMethod,
    /// Requested fraction of the corpus for validation.
    pub val_fraction: f64,
    /// The corpus the dataset was made from.
    pub source: String,
    /// sha256 over the corpus files read, in order (hex).
    pub source_sha256: String,
    /// The corpus files' paths, sizes and modification times, hashed: an identical preparation
    /// is recognized without reading the corpus again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_fingerprint: String,
    /// How the documents were read and the vocabulary trained (text field, BPE sample budget),
    /// so that a preparation with other settings is not taken for this one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub settings: String,
    /// Documents skipped as unreadable (`lawa prepare --skip-bad`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_documents: u64,
    /// Set while a preparation replaces this dataset in place; such a folder is refused until a
    /// preparation completes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl DatasetMeta {
    /// The description assumed for a folder holding only nanoGPT's `train.bin`/`val.bin`:
    /// GPT-2 BPE token ids (vocabulary 50,257, end-of-text 50,256).
    pub fn nanogpt_gpt2(train_tokens: u64, val_tokens: u64) -> Self {
        DatasetMeta {
            tokenizer: "gpt2".into(),
            tokenizer_file: None,
            vocab_size: 50_257,
            eot_token: Some(50_256),
            train_tokens,
            val_tokens,
            train_documents: 0,
            val_documents: 0,
            split: SplitMethod::External,
            val_fraction: f64::NAN,
            source: "nanoGPT preparation (no meta.json)".into(),
            source_sha256: String::new(),
            source_fingerprint: String::new(),
            settings: String::new(),
            skipped_documents: 0,
            incomplete: false,
        }
    }

    /// Reads and checks a `meta.json`.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_owned(),
            error: source,
        })?;
        let meta: DatasetMeta = serde_json::from_str(&text).map_err(|e| DataError::BadMeta {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        meta.validate().map_err(|message| DataError::BadMeta {
            path: path.to_owned(),
            message,
        })?;
        Ok(meta)
    }

    fn validate(&self) -> Result<(), String> {
        if self.incomplete {
            return Err(
                "a preparation replacing this dataset was interrupted; run `lawa prepare` again to complete it"
                    .into(),
            );
        }
        if self.vocab_size == 0 || self.vocab_size > MAX_UINT16_VOCAB {
            return Err(format!(
                "vocab_size {} is outside 1..={MAX_UINT16_VOCAB} (uint16 token ids)",
                self.vocab_size
            ));
        }
        if let Some(eot) = self.eot_token {
            if eot >= self.vocab_size {
                return Err(format!(
                    "eot_token {eot} is not below vocab_size {}",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// Writes `meta.json` into `dir` atomically (temporary file, then rename).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        crate::checkpoint::write_atomic(&dir.join(META_FILE), text.as_bytes())
    }
}
