//! Autoregressive sampling from any [`CausalLm`] (GPT-2 or GPT-NeoX): temperature, top-k, and a
//! seeded generator so the same seed gives the same text.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::{CausalLm, ModelError};

/// How to pick each next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Divides the logits before the softmax; below 1 sharpens, above 1 flattens. 0 picks the
    /// most likely token (greedy decoding).
    pub temperature: f64,
    /// Only the `top_k` most likely tokens can be drawn (`None`: all of them).
    pub top_k: Option<usize>,
    /// Seed of the ChaCha8 generator the draws come from.
    pub seed: u64,
}

impl Default for Sampling {
    /// nanoGPT's `sample.py` defaults: temperature 0.8, top-k 200, seed 1337.
    fn default() -> Self {
        Sampling {
            temperature: 0.8,
            top_k: Some(200),
            seed: 1337,
        }
    }
}

/// Generates `max_new_tokens` token ids after `prompt` and returns only the new ones.
///
/// Only ids below `allowed_vocab` are drawn (the tokenizer's vocabulary, which may be smaller
/// than the model's). The context fed to the model is the last `block_size` tokens. Draws come
/// from a ChaCha8 stream seeded with `sampling.seed` over probabilities computed in f64 on the
/// CPU, so on a CPU the result is the same on every run and machine.
pub fn generate(
    model: &dyn CausalLm,
    prompt: &[i64],
    max_new_tokens: usize,
    sampling: &Sampling,
    allowed_vocab: usize,
) -> Result<Vec<i64>, ModelError> {
    let (block_size, vocab_size) = (model.max_positions(), model.vocab_size());
    if prompt.is_empty() {
        return Err(ModelError::BadInput(
            "the prompt holds no tokens; start from at least one (e.g. end-of-text)".into(),
        ));
    }
    if prompt.len() > block_size {
        return Err(ModelError::BadInput(format!(
            "the prompt is {} tokens, longer than the model's block size {block_size}",
            prompt.len()
        )));
    }
    let allowed = allowed_vocab.min(vocab_size);
    if allowed == 0 {
        return Err(ModelError::BadInput("no token ids may be drawn".into()));
    }
    if let Some(&bad) = prompt.iter().find(|&&id| id < 0 || id as usize >= allowed) {
        return Err(ModelError::BadInput(format!(
            "prompt token id {bad} is not below the vocabulary size {allowed}"
        )));
    }
    if !(sampling.temperature >= 0.0 && sampling.temperature.is_finite()) {
        return Err(ModelError::BadInput(format!(
            "temperature {} must be a finite number >= 0",
            sampling.temperature
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(sampling.seed);
    let mut tokens = prompt.to_vec();
    let _guard = tch::no_grad_guard();
    for _ in 0..max_new_tokens {
        let start = tokens.len().saturating_sub(block_size);
        let context = Tensor::from_slice(&tokens[start..])
            .view([1, -1])
            .to(model.device());
        let logits = model.forward(&context, false)?;
        let last = logits
            .select(1, -1)
            .select(0, 0)
            .narrow(0, 0, allowed as i64)
            .to_kind(Kind::Double)
            .to_device(tch::Device::Cpu);
        let logits = Vec::<f64>::try_from(&last)?;
        tokens.push(pick(&logits, sampling, &mut rng) as i64);
    }
    Ok(tokens.split_off(prompt.len()))
}

/// Draws one index from `logits` under `sampling`.
fn pick(logits: &[f64], sampling: &Sampling, rng: &mut ChaCha8Rng) -> usize {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, &l)| {
                if l > best.1 {
                    (i, l)
                } else {
                    best
                }
            })
            .0
    };
    if sampling.temperature == 0.0 {
        return argmax();
    }
    let threshold = match sampling.top_k {
        Some(k) if k > 0 && k < logits.len() => {
            let mut sorted = logits.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            sorted[k - 1]
        }
        _ => f64::NEG_INFINITY,
    };
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| {
            if l >= threshold {
                ((l - max) / sampling.temperature).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return argmax();
    }
    let mut u = rng.gen::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    // Rounding left u just above the last weight: the last drawable token.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_top_k_limits_the_draws() {
        let logits = [0.0, 3.0, 1.0, 2.9];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let greedy = Sampling {
            temperature: 0.0,
            top_k: None,
            seed: 0,
        };
        assert_eq!(pick(&logits, &greedy, &mut rng), 1);
        let top2 = Sampling {
            temperature: 1.0,
            top_k: Some(2),
            seed: 0,
        };
        let mut counts = [0; 4];
        for _ in 0..2000 {
            counts[pick(&logits, &top2, &mut rng)] += 1;
        }
        assert_eq!(counts[0] + counts[2], 0);
        // p(1) = e^3 / (e^3 + e^2.9) = 0.525.
        assert!((900..1200).contains(&counts[1]), "{counts:?}");
    }
}
