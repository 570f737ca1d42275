//! Whether a dataset's token ids mean what a model was trained on. A loss scored on ids of
//! another tokenizer is a number that means nothing.
//!
//! A checkpoint lawa writes names its tokenizer in `config.json` (`lawa_tokenizer`: the
//! dataset's tokenizer, with a hash of its file for a trained vocabulary), and data made with
//! another is refused, even of the same size (two `bpe:4096` vocabularies trained on different
//! corpora). Of other checkpoints (GPT-2, Pythia) only the sizes are known: the data's
//! vocabulary must be the model's, or fit in the model's padded embedding (GPT-2's 50,304 rows,
//! Pythia's 50,304 to 50,688: a multiple of 64), so a vocabulary that happens to fit passes.

use std::path::Path;

use anyhow::{bail, Context, Result};
use lawa_core::data::DatasetMeta;
use serde_json::Value;

use crate::prepare::tokenizer::TokenizerSpec;

/// The multiple a model's embedding is padded to (nanoGPT, GPT-NeoX and Pythia use 64 or a
/// multiple of it).
const PADDING: usize = 64;

/// The key of `config.json` that names the tokenizer of a checkpoint lawa wrote.
pub const CONFIG_KEY: &str = "lawa_tokenizer";

/// The tokenizer a dataset was made with, as a checkpoint records it: its spec (`gpt2`, `byte`,
/// `bpe:N`, a Hugging Face tokenizer), followed for a tokenizer file by the start of its
/// sha256, so that two vocabularies trained alike on different corpora differ.
pub fn tokenizer_of(data_dir: &Path, meta: &DatasetMeta) -> Result<String> {
    // A Hugging Face tokenizer's spec names the file it was read from (`hf:PATH`): the hash
    // of the copy in the dataset names the tokenizer, not where it came from.
    let kind = match meta.tokenizer.split_once(':') {
        Some(("hf", _)) => "hf",
        _ => meta.tokenizer.as_str(),
    };
    match &meta.tokenizer_file {
        None => Ok(kind.to_string()),
        Some(file) => {
            let hash = crate::assets::sha256_file(&data_dir.join(file))?;
            Ok(format!("{kind} sha256:{}", &hash[..16]))
        }
    }
}

/// Refuses the tokenizer of `lawa sample` or of `lawa eval --task`, that of the dataset `data`
/// or else the ready-made `spec`, when the checkpoint names another. A ready-made Hugging Face
/// tokenizer is told from the others by kind alone (a dataset stores its file re-written).
pub fn ensure_tokenizer_fits(
    checkpoint: &Path,
    data: Option<&Path>,
    spec: Option<&TokenizerSpec>,
) -> Result<()> {
    let config = lawa_models::hf::CheckpointFiles::locate(checkpoint)?.config;
    let Some(model) = recorded(&config)? else {
        return Ok(());
    };
    let (name, source) = match (data, spec) {
        (Some(dir), _) => {
            let meta = lawa_core::data::Dataset::open(dir)?.meta().clone();
            (tokenizer_of(dir, &meta)?, dir.display().to_string())
        }
        (None, Some(TokenizerSpec::Hf(_))) if model.starts_with("hf ") => return Ok(()),
        (None, Some(spec)) => (spec.to_string(), format!("--tokenizer {spec}")),
        (None, None) => return Ok(()),
    };
    ensure_recorded_is(&config, &name, &source)
}

/// Writes `tokenizer` into the `config.json` of the checkpoint folder `dir` (see
/// [`CONFIG_KEY`]).
pub fn record(dir: &Path, tokenizer: &str) -> Result<()> {
    let path = dir.join("config.json");
    let mut config = read_object(&path)?;
    config.insert(CONFIG_KEY.into(), Value::String(tokenizer.into()));
    let text = serde_json::to_vec_pretty(&config)?;
    lawa_core::checkpoint::write_atomic(&path, &text)
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// The tokenizer a checkpoint's `config.json` names, if lawa wrote it.
pub fn recorded(config: &Path) -> Result<Option<String>> {
    match read_object(config)?.get(CONFIG_KEY) {
        None => Ok(None),
        Some(Value::String(t)) => Ok(Some(t.clone())),
        Some(other) => bail!(
            "{}: {CONFIG_KEY} is {other}, not a tokenizer's name",
            config.display()
        ),
    }
}

fn read_object(path: &Path) -> Result<serde_json::Map<String, Value>> {
    let text = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    match serde_json::from_slice(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => bail!("{}: not a JSON object", path.display()),
        Err(e) => bail!("{}: not valid JSON: {e}", path.display()),
    }
}

/// Refuses data from `data_dir` (described by `meta`) for a model whose checkpoint `config`
/// (its `config.json`) names another tokenizer; for a checkpoint that names none, unless
/// the model's `model_vocab` is the data's vocabulary, or a padded embedding (a multiple of 64)
/// the data's ids fit in.
pub fn ensure_checkpoint_fits(
    data_dir: &Path,
    meta: &DatasetMeta,
    config: &Path,
    model_vocab: usize,
) -> Result<()> {
    if recorded(config)?.is_none() {
        return ensure_same_vocabulary(data_dir, meta, model_vocab);
    }
    let data = tokenizer_of(data_dir, meta)?;
    ensure_recorded_is(config, &data, &data_dir.display().to_string())
}

/// Refuses a tokenizer (`tokenizer`, as [`tokenizer_of`] names it; `source`, where it comes
/// from, for the message) other than the one the checkpoint's `config` records, if it records
/// one.
pub fn ensure_recorded_is(config: &Path, tokenizer: &str, source: &str) -> Result<()> {
    match recorded(config)? {
        Some(model) if model != tokenizer => bail!(
            "{source}: the tokenizer {tokenizer}, but the model was trained on data made with \
             {model} ({}); its ids would mean other tokens to the model: use the data or \
             tokenizer the model was trained with",
            config.display()
        ),
        _ => Ok(()),
    }
}

/// Refuses data from `data_dir` (described by `meta`) for a model of `model_vocab` tokens
/// unless the vocabularies are the same, or the model's is a padded embedding (a multiple of
/// 64) the data's ids fit in.
///
/// ```
/// # use lawa_experiments::vocabulary::ensure_same_vocabulary;
/// let meta = lawa_core::data::DatasetMeta::nanogpt_gpt2(1000, 100); // 50,257 GPT-2 tokens
/// let data = std::path::Path::new("data/owt");
/// assert!(ensure_same_vocabulary(data, &meta, 50257).is_ok()); // GPT-2 as released
/// assert!(ensure_same_vocabulary(data, &meta, 50304).is_ok()); // padded to 64
/// assert!(ensure_same_vocabulary(data, &meta, 50432).is_ok()); // padded further (Pythia-6.9b)
/// assert!(ensure_same_vocabulary(data, &meta, 50300).is_err()); // another tokenizer's
/// ```
pub fn ensure_same_vocabulary(
    data_dir: &Path,
    meta: &DatasetMeta,
    model_vocab: usize,
) -> Result<()> {
    let vocab = meta.vocab_size as usize;
    if vocab == model_vocab || (model_vocab > vocab && model_vocab.is_multiple_of(PADDING)) {
        return Ok(());
    }
    let relation = if vocab > model_vocab {
        "more than"
    } else {
        "not"
    };
    bail!(
        "{}: a vocabulary of {vocab} tokens ({}), {relation} the model's {model_vocab} (nor a \
         padded embedding it fits in, a multiple of 64): the data was not made with the model's \
         tokenizer, and a loss on it would mean nothing; prepare it with the tokenizer the \
         model was trained with",
        data_dir.display(),
        meta.tokenizer
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(tokenizer: &str, vocab_size: u32) -> DatasetMeta {
        DatasetMeta {
            tokenizer: tokenizer.into(),
            vocab_size,
            ..DatasetMeta::nanogpt_gpt2(1, 1)
        }
    }

    /// The record is a key of config.json beside the others; a tokenizer file's name is
    /// its kind and the start of its hash, where it was read from left out.
    #[test]
    fn tokenizers_are_named_by_kind_and_file_and_recorded_beside_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(tokenizer_of(d, &meta("gpt2", 50257)).unwrap(), "gpt2");
        std::fs::write(d.join("tokenizer.json"), "abc").unwrap();
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        let with_file = |spec: &str| DatasetMeta {
            tokenizer_file: Some("tokenizer.json".into()),
            ..meta(spec, 4096)
        };
        assert_eq!(
            tokenizer_of(d, &with_file("bpe:4096")).unwrap(),
            "bpe:4096 sha256:ba7816bf8f01cfea"
        );
        assert_eq!(
            tokenizer_of(d, &with_file("hf:/somewhere/tokenizer.json")).unwrap(),
            "hf sha256:ba7816bf8f01cfea"
        );

        let config = d.join("config.json");
        std::fs::write(&config, r#"{"n_embd": 36, "vocab_size": 4096}"#).unwrap();
        assert_eq!(recorded(&config).unwrap(), None);
        record(d, "bpe:4096 sha256:ba7816bf8f01cfea").unwrap();
        let written: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        assert_eq!(written["n_embd"], 36);
        assert_eq!(written[CONFIG_KEY], "bpe:4096 sha256:ba7816bf8f01cfea");
        assert_eq!(
            recorded(&config).unwrap().as_deref(),
            Some("bpe:4096 sha256:ba7816bf8f01cfea")
        );
        // The same spec and size, another file: refused; the sizes alone would pass it.
        std::fs::write(d.join("tokenizer.json"), "abd").unwrap();
        let other = with_file("bpe:4096");
        assert!(ensure_same_vocabulary(d, &other, 4096).is_ok());
        let msg = ensure_checkpoint_fits(d, &other, &config, 4096)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("the tokenizer bpe:4096 sha256:")
                && msg.contains("made with bpe:4096 sha256:ba7816bf8f01cfea"),
            "{msg}"
        );
        std::fs::write(d.join("tokenizer.json"), "abc").unwrap();
        assert!(ensure_checkpoint_fits(d, &other, &config, 4096).is_ok());
        std::fs::write(&config, r#"{"lawa_tokenizer": 3}"#).unwrap();
        assert!(recorded(&config).is_err());
    }

    #[test]
    fn vocabularies_match_exactly_or_up_to_padding() {
        let dir = Path::new("d");
        let gpt2 = meta("gpt2", 50257);
        let pythia = meta("tokenizer.json", 50277);
        let byte = meta("byte", 257);
        for (m, model, ok) in [
            (&gpt2, 50257, true),
            (&gpt2, 50304, true),
            (&pythia, 50304, true),
            (&byte, 257, true),
            (&byte, 320, true),
            (&byte, 384, true),
            (&byte, 300, false), // a bpe:300 model on byte-level data
            (&byte, 256, false),
            (&pythia, 50432, true), // Pythia-6.9b's embedding
            (&pythia, 50688, true), // Pythia-12b's
            (&gpt2, 50280, false),
            (&gpt2, 50258, false), // GPT-2 with an added token: not told from another's
            (&byte, 200, false),
        ] {
            let got = ensure_same_vocabulary(dir, m, model);
            assert_eq!(got.is_ok(), ok, "{} on {model}: {got:?}", m.vocab_size);
        }
        let msg = ensure_same_vocabulary(dir, &byte, 300)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("257 tokens (byte), not the model's 300"),
            "{msg}"
        );
        let msg = ensure_same_vocabulary(dir, &gpt2, 257)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("more than the model's 257"), "{msg}");
    }
}
