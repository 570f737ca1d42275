//! Text to token ids and back: the genuine GPT-2 BPE, a byte-level BPE trained on the corpus
//! (`bpe:N`, small vocabularies make CPU runs fast), or raw bytes.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use lawa_core::data::{DatasetMeta, MAX_UINT16_VOCAB};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// The end-of-text marker that separates documents.
pub const EOT_TEXT: &str = "<|endoftext|>";
/// End-of-text tokens looked for in a `tokenizer.json`, in order.
pub const EOT_CANDIDATES: [&str; 4] = [EOT_TEXT, "</s>", "<|end_of_text|>", "<eos>"];
/// File name of a trained tokenizer inside a dataset folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Which tokenizer, as written on the command line and in `meta.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerSpec {
    /// GPT-2's 50,257-token byte-level BPE.
    Gpt2,
    /// A byte-level BPE of this many tokens, trained on the training split.
    Bpe(u32),
    /// One token per byte, plus end-of-text (257 tokens).
    Byte,
    /// A Hugging Face `tokenizer.json` (e.g. Pythia's), copied into the dataset folder.
    Hf(PathBuf),
}

impl std::fmt::Display for TokenizerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenizerSpec::Gpt2 => write!(f, "gpt2"),
            TokenizerSpec::Bpe(n) => write!(f, "bpe:{n}"),
            TokenizerSpec::Byte => write!(f, "byte"),
            TokenizerSpec::Hf(path) => write!(f, "hf:{}", path.display()),
        }
    }
}

impl TokenizerSpec {
    /// The spec in a dataset folder's default name (`gpt2`, `bpe4096`, `byte`, `hf`).
    pub fn dir_suffix(&self) -> String {
        match self {
            TokenizerSpec::Hf(_) => "hf".into(),
            other => other.to_string().replace(':', ""),
        }
    }
}

impl std::str::FromStr for TokenizerSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gpt2" => Ok(TokenizerSpec::Gpt2),
            "byte" => Ok(TokenizerSpec::Byte),
            _ if s.starts_with("hf:") => Ok(TokenizerSpec::Hf(PathBuf::from(&s[3..]))),
            _ if s.ends_with(".json") => Ok(TokenizerSpec::Hf(PathBuf::from(s))),
            _ => {
                let n = s.strip_prefix("bpe:").ok_or_else(|| {
                    format!(
                        "unknown tokenizer '{s}' (expected gpt2, bpe:N, byte, or a tokenizer.json file)"
                    )
                })?;
                let n: u64 = n
                    .parse()
                    .map_err(|_| format!("tokenizer '{s}': N must be a whole number"))?;
                if n > MAX_UINT16_VOCAB as u64 {
                    return Err(format!(
                        "tokenizer '{s}': a vocabulary of {n} does not fit uint16 token ids (at most {MAX_UINT16_VOCAB})"
                    ));
                }
                if n < 258 {
                    return Err(format!(
                        "tokenizer '{s}': a byte-level BPE needs at least 258 tokens (256 bytes, end-of-text, one merge)"
                    ));
                }
                Ok(TokenizerSpec::Bpe(n as u32))
            }
        }
    }
}

enum Inner {
    Hf(Box<Tokenizer>),
    Byte,
}

/// A tokenizer with its vocabulary size and end-of-text id.
pub struct TextTokenizer {
    spec: TokenizerSpec,
    inner: Inner,
    vocab_size: u32,
    eot: u32,
}

fn byte_level_tokenizer(model: BPE) -> Tokenizer {
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer
}

impl TextTokenizer {
    /// GPT-2's BPE from its `encoder.json` and `vocab.bpe`.
    pub fn gpt2_from_files(encoder_json: &Path, vocab_bpe: &Path) -> Result<Self> {
        let model = BPE::from_file(
            &encoder_json.to_string_lossy(),
            &vocab_bpe.to_string_lossy(),
        )
        .build()
        .map_err(|e| anyhow!("{}: {e}", encoder_json.display()))?;
        let tokenizer = byte_level_tokenizer(model);
        let eot = tokenizer
            .token_to_id(EOT_TEXT)
            .ok_or_else(|| anyhow!("{}: has no {EOT_TEXT} token", encoder_json.display()))?;
        let vocab_size = tokenizer.get_vocab_size(true) as u32;
        Ok(TextTokenizer {
            spec: TokenizerSpec::Gpt2,
            inner: Inner::Hf(Box::new(tokenizer)),
            vocab_size,
            eot,
        })
    }

    /// GPT-2's BPE from the bootstrap's cache.
    pub fn gpt2() -> Result<Self> {
        let (encoder, vocab) = crate::assets::gpt2_tokenizer_files()?;
        Self::gpt2_from_files(&encoder, &vocab)
    }

    /// A tokenizer that needs no training: GPT-2's, bytes, or a `tokenizer.json`.
    pub fn ready_made(spec: &TokenizerSpec) -> Result<Self> {
        match spec {
            TokenizerSpec::Gpt2 => Self::gpt2(),
            TokenizerSpec::Byte => Ok(Self::byte()),
            TokenizerSpec::Hf(path) => Self::from_json(path, spec.clone()),
            TokenizerSpec::Bpe(n) => bail!("bpe:{n} is trained on the corpus, not ready-made"),
        }
    }

    /// A Hugging Face `tokenizer.json`: its end-of-text token is the first of
    /// [`EOT_CANDIDATES`] it knows.
    pub fn from_json(path: &Path, spec: TokenizerSpec) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        let eot = EOT_CANDIDATES
            .iter()
            .find_map(|t| tokenizer.token_to_id(t))
            .ok_or_else(|| {
                anyhow!(
                    "{}: has no end-of-text token (looked for {})",
                    path.display(),
                    EOT_CANDIDATES.join(", ")
                )
            })?;
        let vocab_size = tokenizer.get_vocab_size(true) as u32;
        if vocab_size > MAX_UINT16_VOCAB {
            bail!(
                "{}: a vocabulary of {vocab_size} does not fit uint16 token ids (at most {MAX_UINT16_VOCAB})",
                path.display()
            );
        }
        Ok(TextTokenizer {
            spec,
            inner: Inner::Hf(Box::new(tokenizer)),
            vocab_size,
            eot,
        })
    }

    /// Whether a text may be cut at [`is_safe_cut`](super::split::is_safe_cut) places and its
    /// pieces tokenized apart with the same result (true for GPT-2's and lawa's byte-level BPEs
    /// and bytes; a `tokenizer.json` may add a prefix to every piece, so it gets whole texts).
    pub fn pieces_are_safe(&self) -> bool {
        !matches!(self.spec, TokenizerSpec::Hf(_))
    }

    /// The byte tokenizer: ids 0..=255 are bytes, 256 is end-of-text.
    pub fn byte() -> Self {
        TextTokenizer {
            spec: TokenizerSpec::Byte,
            inner: Inner::Byte,
            vocab_size: 257,
            eot: 256,
        }
    }

    /// Trains a byte-level BPE of `vocab_size` tokens (end-of-text included) on `texts`.
    pub fn train_bpe<'a>(
        vocab_size: u32,
        texts: impl Iterator<Item = &'a str> + Send,
    ) -> Result<Self> {
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size as usize)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOT_TEXT, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let mut tokenizer = byte_level_tokenizer(BPE::default());
        tokenizer
            .train(&mut trainer, texts)
            .map_err(|e| anyhow!("training a BPE of {vocab_size} tokens: {e}"))?;
        let eot = tokenizer
            .token_to_id(EOT_TEXT)
            .ok_or_else(|| anyhow!("trained BPE lacks {EOT_TEXT}"))?;
        let actual = tokenizer.get_vocab_size(true) as u32;
        Ok(TextTokenizer {
            spec: TokenizerSpec::Bpe(vocab_size),
            inner: Inner::Hf(Box::new(tokenizer)),
            vocab_size: actual,
            eot,
        })
    }

    /// The tokenizer a prepared dataset was made with.
    pub fn for_dataset(dir: &Path, meta: &DatasetMeta) -> Result<Self> {
        let spec: TokenizerSpec = meta
            .tokenizer
            .parse()
            .map_err(|e| anyhow!("{}/meta.json: {e}", dir.display()))?;
        let tokenizer = match spec {
            TokenizerSpec::Gpt2 => Self::gpt2()?,
            TokenizerSpec::Byte => Self::byte(),
            TokenizerSpec::Hf(_) => {
                let file = dir.join(meta.tokenizer_file.as_deref().unwrap_or(TOKENIZER_FILE));
                Self::from_json(&file, spec)?
            }
            TokenizerSpec::Bpe(_) => {
                let file = dir.join(meta.tokenizer_file.as_deref().unwrap_or(TOKENIZER_FILE));
                let tokenizer = Tokenizer::from_file(&file)
                    .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", file.display()))?;
                let eot = tokenizer
                    .token_to_id(EOT_TEXT)
                    .ok_or_else(|| anyhow!("{}: has no {EOT_TEXT} token", file.display()))?;
                TextTokenizer {
                    spec,
                    vocab_size: tokenizer.get_vocab_size(true) as u32,
                    inner: Inner::Hf(Box::new(tokenizer)),
                    eot,
                }
            }
        };
        if tokenizer.vocab_size != meta.vocab_size {
            bail!(
                "{}/meta.json: vocab_size {} disagrees with its tokenizer's {}",
                dir.display(),
                meta.vocab_size,
                tokenizer.vocab_size
            );
        }
        Ok(tokenizer)
    }

    /// The spec this tokenizer was made from.
    pub fn spec(&self) -> &TokenizerSpec {
        &self.spec
    }

    /// The Hugging Face tokenizer behind a BPE or `tokenizer.json` (`None` for bytes), whose
    /// vocabulary names it (see [`crate::vocabulary::name_of`]).
    pub fn vocabulary(&self) -> Option<&Tokenizer> {
        match &self.inner {
            Inner::Hf(tokenizer) => Some(tokenizer),
            Inner::Byte => None,
        }
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// The end-of-text id.
    pub fn eot(&self) -> u32 {
        self.eot
    }

    /// Token ids of `text` (no end-of-text added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Byte => Ok(text.bytes().map(u32::from).collect()),
            Inner::Hf(t) => Ok(t
                .encode_fast(text, false)
                .map_err(|e| anyhow!("tokenizing: {e}"))?
                .get_ids()
                .to_vec()),
        }
    }

    /// Text of token ids (end-of-text shown as `<|endoftext|>`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.inner {
            Inner::Byte => {
                let mut bytes = Vec::with_capacity(ids.len());
                for &id in ids {
                    match id {
                        0..=255 => bytes.push(id as u8),
                        256 => bytes.extend_from_slice(EOT_TEXT.as_bytes()),
                        _ => bail!("token id {id} is outside the byte vocabulary (257)"),
                    }
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Inner::Hf(t) => t.decode(ids, false).map_err(|e| anyhow!("decoding: {e}")),
        }
    }

    /// Saves a trained tokenizer as `tokenizer.json` in `dir` (no-op for gpt2 and byte, which
    /// need no file of their own). Returns the file name when one was written.
    pub fn save_into(&self, dir: &Path) -> Result<Option<String>> {
        match (&self.inner, &self.spec) {
            (Inner::Hf(t), TokenizerSpec::Bpe(_) | TokenizerSpec::Hf(_)) => {
                let path = dir.join(TOKENIZER_FILE);
                t.save(&path, false)
                    .map_err(|e| anyhow!("{}: {e}", path.display()))
                    .context("saving the trained tokenizer")?;
                Ok(Some(TOKENIZER_FILE.to_string()))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_rejects_bad_ones() {
        assert_eq!("gpt2".parse(), Ok(TokenizerSpec::Gpt2));
        assert_eq!("byte".parse(), Ok(TokenizerSpec::Byte));
        assert_eq!("bpe:4096".parse(), Ok(TokenizerSpec::Bpe(4096)));
        let too_big = "bpe:70000".parse::<TokenizerSpec>().unwrap_err();
        assert!(too_big.contains("uint16"), "{too_big}");
        assert!("bpe:100".parse::<TokenizerSpec>().is_err());
        assert!("bpe:x".parse::<TokenizerSpec>().is_err());
        assert!("llama".parse::<TokenizerSpec>().is_err());
    }

    #[test]
    fn byte_tokenizer_round_trips_utf8() {
        let t = TextTokenizer::byte();
        let text = "naïve — café";
        let ids = t.encode(text).unwrap();
        assert_eq!(ids.len(), text.len());
        assert_eq!(ids[0], b'n' as u32);
        assert_eq!(t.decode(&ids).unwrap(), text);
        assert_eq!(t.decode(&[104, 105, 256]).unwrap(), "hi<|endoftext|>");
    }

    #[test]
    fn trained_bpe_has_requested_size_and_round_trips() {
        let text = "the cat sat on the mat. the dog sat on the log. ".repeat(200);
        let t = TextTokenizer::train_bpe(300, std::iter::once(text.as_str())).unwrap();
        assert!(
            t.vocab_size() <= 300 && t.vocab_size() > 257,
            "{}",
            t.vocab_size()
        );
        let ids = t.encode("the cat sat").unwrap();
        assert!(
            ids.len() < "the cat sat".len(),
            "merges were learned: {ids:?}"
        );
        assert_eq!(t.decode(&ids).unwrap(), "the cat sat");
    }
}
