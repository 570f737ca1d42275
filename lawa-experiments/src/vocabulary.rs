//! Whether a dataset's token ids mean what a model was trained on. A loss scored on ids of
//! another tokenizer is a number that means nothing.
//!
//! A checkpoint lawa writes names its tokenizer in `config.json` (`lawa_tokenizer`: `gpt2`,
//! `byte`, or for a trained or Hugging Face vocabulary its kind and a hash of its tokens in id
//! order, `bpe:4096 vocab:…`), and data or a tokenizer of another is refused, even of the same
//! size (two `bpe:4096` vocabularies trained on different corpora). Of other checkpoints (GPT-2,
//! Pythia) only the sizes are known: the data's vocabulary must be the model's, or fit in the
//! model's padded embedding (GPT-2's 50,304 rows, Pythia's 50,304 to 50,688: a multiple of 64),
//! so a vocabulary that happens to fit passes.
//!
//! GPT-2's vocabulary is named `gpt2` however it comes: from its `encoder.json` and `vocab.bpe`
//! (`--tokenizer gpt2`) or as a Hugging Face `tokenizer.json` (`--tokenizer hf:…`), whose ids
//! are the same tokens.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use lawa_core::data::DatasetMeta;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::prepare::tokenizer::{TextTokenizer, TokenizerSpec, TOKENIZER_FILE};

/// The multiple a model's embedding is padded to (nanoGPT, GPT-NeoX and Pythia use 64 or a
/// multiple of it).
const PADDING: usize = 64;

/// The key of `config.json` that names the tokenizer of a checkpoint lawa wrote.
pub const CONFIG_KEY: &str = "lawa_tokenizer";

/// The hash [`tokenizer_of`] gives GPT-2's 50,257 tokens in id order (checked against the
/// bootstrap's GPT-2 files by a test): a tokenizer file with this vocabulary is named `gpt2`.
const GPT2_VOCAB: &str = "9cd30706cda2fb92";

/// The tokenizer a dataset was made with, as a checkpoint records it (see the module's doc);
/// `None` for a trained or Hugging Face tokenizer whose file is not in the dataset folder, and
/// for a nanoGPT preparation without `meta.json`, whose GPT-2 tokenizer is only assumed.
pub fn tokenizer_of(data_dir: &Path, meta: &DatasetMeta) -> Result<Option<String>> {
    if meta.split == lawa_core::data::SplitMethod::External {
        return Ok(None);
    }
    let spec: TokenizerSpec = meta
        .tokenizer
        .parse()
        .map_err(|e| anyhow!("{}/meta.json: {e}", data_dir.display()))?;
    let file = data_dir.join(meta.tokenizer_file.as_deref().unwrap_or(TOKENIZER_FILE));
    let kind = match spec {
        TokenizerSpec::Gpt2 | TokenizerSpec::Byte => return Ok(Some(spec.to_string())),
        TokenizerSpec::Bpe(_) | TokenizerSpec::Hf(_) if !file.is_file() => return Ok(None),
        TokenizerSpec::Bpe(n) => format!("bpe:{n}"),
        TokenizerSpec::Hf(_) => "hf".into(),
    };
    let tokenizer = tokenizers::Tokenizer::from_file(&file)
        .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", file.display()))?;
    Ok(Some(named(&kind, &tokenizer)))
}

/// The name of a loaded tokenizer, as [`tokenizer_of`] names the dataset it comes from.
pub fn name_of(tokenizer: &TextTokenizer) -> String {
    match (tokenizer.spec(), tokenizer.vocabulary()) {
        (TokenizerSpec::Bpe(n), Some(vocabulary)) => named(&format!("bpe:{n}"), vocabulary),
        (TokenizerSpec::Hf(_), Some(vocabulary)) => named("hf", vocabulary),
        (spec, _) => spec.to_string(),
    }
}

/// `KIND vocab:HASH`: the start of the sha256 of a tokenizer's tokens in id order (one
/// `id<TAB>token` line each), the same however its file is written out; `gpt2` for GPT-2's.
fn named(kind: &str, tokenizer: &tokenizers::Tokenizer) -> String {
    let mut tokens: Vec<(u32, String)> = tokenizer
        .get_vocab(true)
        .into_iter()
        .map(|(token, id)| (id, token))
        .collect();
    tokens.sort_unstable();
    let mut hasher = Sha256::new();
    for (id, token) in &tokens {
        hasher.update(format!("{id}\t{token}\n").as_bytes());
    }
    let hash = crate::assets::hex(&hasher.finalize());
    canonical(format!("{kind} vocab:{}", &hash[..16]))
}

/// Whether two tokenizer names are one vocabulary: the same hash of tokens whatever the kinds
/// (a trained `bpe:N`'s file given again as `hf:` is the same tokenizer), else the same name.
pub fn same_tokenizer(a: &str, b: &str) -> bool {
    match (a.split_once(" vocab:"), b.split_once(" vocab:")) {
        (Some((_, x)), Some((_, y))) => x == y,
        _ => a == b,
    }
}

/// A tokenizer's name with GPT-2's vocabulary, however it was read, as `gpt2`.
fn canonical(name: String) -> String {
    match name.split_once(" vocab:") {
        Some((_, GPT2_VOCAB)) => TokenizerSpec::Gpt2.to_string(),
        _ => name,
    }
}

/// The tokenizer to read and write text for `checkpoint` with (`lawa sample`, `lawa eval
/// --task`): that of the dataset `data`, else the ready-made `spec`, else the `gpt2` or `byte`
/// tokenizer the checkpoint names; `None` when none is given and the checkpoint names none.
/// Refused when the checkpoint names another, and for a checkpoint naming a trained or Hugging
/// Face tokenizer when none is given (it comes with its dataset or file).
pub fn tokenizer_for(
    checkpoint: &Path,
    data: Option<&Path>,
    spec: Option<&TokenizerSpec>,
) -> Result<Option<TextTokenizer>> {
    let config = lawa_models::hf::CheckpointFiles::locate(checkpoint)?.config;
    let model = recorded(&config)?;
    let (tokenizer, name, source) = match (data, spec) {
        (Some(dir), _) => {
            let meta = lawa_core::data::Dataset::open(dir)?.meta().clone();
            let tokenizer = TextTokenizer::for_dataset(dir, &meta)?;
            // A nanoGPT folder's GPT-2 is only assumed: not checked against the record.
            let external = meta.split == lawa_core::data::SplitMethod::External;
            let name = (!external).then(|| name_of(&tokenizer));
            (tokenizer, name, dir.display().to_string())
        }
        (None, Some(spec @ TokenizerSpec::Bpe(_))) => bail!(
            "--tokenizer {spec}: a trained tokenizer is stored with its dataset; pass --data \
             <dataset-dir> instead"
        ),
        (None, Some(spec)) => {
            let tokenizer = TextTokenizer::ready_made(spec)?;
            let name = Some(name_of(&tokenizer));
            (tokenizer, name, format!("--tokenizer {spec}"))
        }
        (None, None) => return default_tokenizer(checkpoint, model.as_deref()),
    };
    if let (Some(model), Some(name)) = (&model, &name) {
        ensure_same_name(&config, model, name, &source)?;
    }
    Ok(Some(tokenizer))
}

/// The ready-made tokenizer a checkpoint names (`model`), when none is given.
fn default_tokenizer(checkpoint: &Path, model: Option<&str>) -> Result<Option<TextTokenizer>> {
    match model {
        None => Ok(None),
        Some("gpt2") => Ok(Some(TextTokenizer::gpt2()?)),
        Some("byte") => Ok(Some(TextTokenizer::byte())),
        Some(other) => bail!(
            "{}: the model was trained with the tokenizer {other}: pass --data with the dataset \
             it was trained on (or --tokenizer with the path of its tokenizer.json)",
            checkpoint.display()
        ),
    }
}

/// Writes `tokenizer` into the `config.json` of the checkpoint folder `dir` (see
/// [`CONFIG_KEY`]), as its last key, the rest of the file as it was.
pub fn record(dir: &Path, tokenizer: &str) -> Result<()> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let config = parse_object(&path, text.as_bytes())?;
    let entry = format!("  \"{CONFIG_KEY}\": {}", Value::String(tokenizer.into()));
    let spliced = match text.trim_end().strip_suffix('}') {
        Some(body) if !config.contains_key(CONFIG_KEY) => {
            let body = body.trim_end();
            let comma = if config.is_empty() { "" } else { "," };
            format!("{body}{comma}\n{entry}\n}}\n")
        }
        _ => {
            let mut config = config;
            config.insert(CONFIG_KEY.into(), Value::String(tokenizer.into()));
            serde_json::to_string_pretty(&config)? + "\n"
        }
    };
    lawa_core::checkpoint::write_atomic(&path, spliced.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// The tokenizer a checkpoint's `config.json` names, if lawa wrote it (`null` is none).
pub fn recorded(config: &Path) -> Result<Option<String>> {
    match read_object(config)?.get(CONFIG_KEY) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) => Ok(Some(canonical(t.clone()))),
        Some(other) => bail!(
            "{}: {CONFIG_KEY} is {other}, not a tokenizer's name",
            config.display()
        ),
    }
}

fn read_object(path: &Path) -> Result<serde_json::Map<String, Value>> {
    let text = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse_object(path, &text)
}

fn parse_object(path: &Path, text: &[u8]) -> Result<serde_json::Map<String, Value>> {
    match serde_json::from_slice(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => bail!("{}: not a JSON object", path.display()),
        Err(e) => bail!("{}: not valid JSON: {e}", path.display()),
    }
}

/// Refuses data from `data_dir` (described by `meta`) for a model of `model_vocab` tokens whose
/// checkpoints (their `config.json` files, `configs`) name another tokenizer; for a checkpoint
/// that names none (or data whose tokenizer file is gone), unless the model's vocabulary is the
/// data's, or a padded embedding (a multiple of 64) the data's ids fit in.
pub fn ensure_checkpoints_fit(
    data_dir: &Path,
    meta: &DatasetMeta,
    configs: &[PathBuf],
    model_vocab: usize,
) -> Result<()> {
    // The data's tokenizer, named once (hashing a vocabulary) when a checkpoint names one.
    let mut data: Option<Option<String>> = None;
    for config in configs {
        if let Some(model) = recorded(config)? {
            if data.is_none() {
                data = Some(tokenizer_of(data_dir, meta)?);
            }
            if let Some(Some(name)) = &data {
                ensure_same_name(config, &model, name, &data_dir.display().to_string())?;
                continue;
            }
        }
        ensure_same_vocabulary(data_dir, meta, model_vocab)?;
    }
    Ok(())
}

/// Refuses a tokenizer (`tokenizer`, as [`tokenizer_of`] names it; `source`, where it comes
/// from, for the message) other than `model`, the one the checkpoint's `config` records.
fn ensure_same_name(config: &Path, model: &str, tokenizer: &str, source: &str) -> Result<()> {
    if !same_tokenizer(model, tokenizer) {
        bail!(
            "{source} uses the tokenizer {tokenizer}, but the model was trained on data made \
             with {model} ({}); its ids would mean other tokens to the model: use the data or \
             tokenizer the model was trained with",
            config.display()
        );
    }
    Ok(())
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
            split: lawa_core::data::SplitMethod::Position,
            ..DatasetMeta::nanogpt_gpt2(1, 1)
        }
    }

    /// A word-level tokenizer of `words`, in that id order, saved to `file`.
    fn word_tokenizer(file: &Path, words: &[&str]) {
        let vocab = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as u32))
            .collect();
        let model = tokenizers::models::wordlevel::WordLevel::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        tokenizers::Tokenizer::new(model).save(file, true).unwrap();
    }

    /// A tokenizer file is named by its kind and its tokens in id order, however the file is
    /// written; where it was read from is left out; a missing file leaves it unnamed.
    #[test]
    fn tokenizers_are_named_by_kind_and_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(
            tokenizer_of(d, &meta("gpt2", 50257)).unwrap().unwrap(),
            "gpt2"
        );
        // A nanoGPT folder without meta.json: GPT-2 assumed, not named.
        let nanogpt = DatasetMeta::nanogpt_gpt2(1, 1);
        assert_eq!(tokenizer_of(d, &nanogpt).unwrap(), None);
        let bpe = meta("bpe:300", 300);
        assert_eq!(tokenizer_of(d, &bpe).unwrap(), None, "no tokenizer.json");
        let file = d.join("tokenizer.json");
        word_tokenizer(&file, &["[UNK]", "a", "b"]);
        // sha256 of "0\t[UNK]\n1\ta\n2\tb\n".
        let hash = {
            let mut h = Sha256::new();
            h.update(b"0\t[UNK]\n1\ta\n2\tb\n");
            crate::assets::hex(&h.finalize())[..16].to_string()
        };
        let named = tokenizer_of(d, &bpe).unwrap().unwrap();
        assert_eq!(named, format!("bpe:300 vocab:{hash}"));
        // The same tokens written compactly: the same name.
        let text: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        std::fs::write(&file, serde_json::to_string(&text).unwrap()).unwrap();
        assert_eq!(tokenizer_of(d, &bpe).unwrap().unwrap(), named);
        let hf = DatasetMeta {
            tokenizer: format!("hf:{}", file.display()),
            tokenizer_file: Some("tokenizer.json".into()),
            ..meta("x", 3)
        };
        assert_eq!(
            tokenizer_of(d, &hf).unwrap().unwrap(),
            format!("hf vocab:{hash}")
        );
        // One vocabulary read as another kind is the same tokenizer; other hashes are not.
        assert!(same_tokenizer(&format!("hf vocab:{hash}"), &named));
        assert!(!same_tokenizer("bpe:300 vocab:0123", "bpe:300 vocab:4567"));
        assert!(!same_tokenizer("byte", "gpt2") && same_tokenizer("gpt2", "gpt2"));
        // Other ids for the same words: another vocabulary.
        word_tokenizer(&file, &["[UNK]", "b", "a"]);
        assert_ne!(tokenizer_of(d, &bpe).unwrap().unwrap(), named);
    }

    /// GPT-2's vocabulary from a Hugging Face `tokenizer.json` is `gpt2`, as from its own
    /// files: the hash [`GPT2_VOCAB`] is that of the bootstrap's GPT-2 tokens; a record made
    /// before this rule reads as `gpt2` too.
    #[test]
    fn gpt2_is_gpt2_however_its_vocabulary_is_read() {
        let (encoder, merges) = crate::assets::gpt2_tokenizer_files().unwrap();
        let model = tokenizers::models::bpe::BPE::from_file(
            &encoder.to_string_lossy(),
            &merges.to_string_lossy(),
        )
        .build()
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokenizer.json");
        tokenizers::Tokenizer::new(model)
            .save(&file, false)
            .unwrap();
        let mut tokens: Vec<(u32, String)> = tokenizers::Tokenizer::from_file(&file)
            .unwrap()
            .get_vocab(true)
            .into_iter()
            .map(|(token, id)| (id, token))
            .collect();
        tokens.sort_unstable();
        assert_eq!(tokens.len(), 50257);
        let mut h = Sha256::new();
        for (id, token) in &tokens {
            h.update(format!("{id}\t{token}\n").as_bytes());
        }
        assert_eq!(&crate::assets::hex(&h.finalize())[..16], GPT2_VOCAB);
        let hf = DatasetMeta {
            tokenizer: format!("hf:{}", file.display()),
            tokenizer_file: Some("tokenizer.json".into()),
            ..meta("x", 50257)
        };
        assert_eq!(tokenizer_of(dir.path(), &hf).unwrap().unwrap(), "gpt2");
        // Loaded (from the dataset, or as --tokenizer hf:FILE): the same name.
        let loaded = TextTokenizer::for_dataset(dir.path(), &hf).unwrap();
        assert_eq!(name_of(&loaded), "gpt2");
        let ready = TextTokenizer::ready_made(&TokenizerSpec::Hf(file.clone())).unwrap();
        assert_eq!(name_of(&ready), "gpt2");
        assert_eq!(name_of(&TextTokenizer::gpt2().unwrap()), "gpt2");
        assert_eq!(name_of(&TextTokenizer::byte()), "byte");
        let config = dir.path().join("config.json");
        let old = format!(r#"{{"lawa_tokenizer": "hf vocab:{GPT2_VOCAB}"}}"#);
        std::fs::write(&config, old).unwrap();
        assert_eq!(recorded(&config).unwrap().as_deref(), Some("gpt2"));
        assert!(ensure_checkpoints_fit(dir.path(), &meta("gpt2", 50257), &[config], 50304).is_ok());
    }

    /// The record is config.json's last key, the rest kept as written; a checkpoint that
    /// records a tokenizer refuses data of another even when the sizes would pass it.
    #[test]
    fn a_recorded_tokenizer_is_checked_before_the_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let config = d.join("config.json");
        let written = "{\n  \"model_type\": \"gpt2\",\n  \"vocab_size\": 320\n}\n";
        std::fs::write(&config, written).unwrap();
        assert_eq!(recorded(&config).unwrap(), None);
        record(d, "bpe:300 vocab:0123456789abcdef").unwrap();
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            "{\n  \"model_type\": \"gpt2\",\n  \"vocab_size\": 320,\n  \"lawa_tokenizer\": \"bpe:300 vocab:0123456789abcdef\"\n}\n"
        );
        assert_eq!(
            recorded(&config).unwrap().as_deref(),
            Some("bpe:300 vocab:0123456789abcdef")
        );
        // Recorded again (another tokenizer): replaced, not repeated.
        record(d, "byte").unwrap();
        assert_eq!(recorded(&config).unwrap().as_deref(), Some("byte"));
        let text = std::fs::read_to_string(&config).unwrap();
        assert_eq!(text.matches(CONFIG_KEY).count(), 1, "{text}");

        let byte = meta("byte", 257);
        let configs = [config.clone()];
        assert!(ensure_checkpoints_fit(d, &byte, &configs, 320).is_ok());
        let gpt2 = meta("gpt2", 50257);
        std::fs::write(
            &config,
            r#"{"vocab_size": 50304, "lawa_tokenizer": "byte"}"#,
        )
        .unwrap();
        let msg = ensure_checkpoints_fit(d, &gpt2, &configs, 50304)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(
                "uses the tokenizer gpt2, but the model was trained on data made with byte"
            ),
            "{msg}"
        );
        assert!(
            ensure_same_vocabulary(d, &gpt2, 50304).is_ok(),
            "sizes alone pass it"
        );
        // Not recorded (null, as transformers may write it): the sizes.
        std::fs::write(&config, r#"{"lawa_tokenizer": null}"#).unwrap();
        assert!(ensure_checkpoints_fit(d, &gpt2, &configs, 50304).is_ok());
        assert!(ensure_checkpoints_fit(d, &gpt2, &configs, 50300).is_err());
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
