//! Whether a dataset's token ids mean what a model was trained on: its vocabulary must be the
//! model's, or fit in the model's padded embedding (GPT-2's 50,304 rows, Pythia's 50,304 to
//! 50,688: a multiple of 64). A loss scored on ids of another tokenizer is a number that means
//! nothing. Sizes are all a checkpoint says of its tokenizer, so a vocabulary that happens to
//! fit a padded embedding passes.

use std::path::Path;

use anyhow::{bail, Result};
use lawa_core::data::DatasetMeta;

/// The multiple a model's embedding is padded to (nanoGPT, GPT-NeoX and Pythia use 64 or a
/// multiple of it).
const PADDING: usize = 64;

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
