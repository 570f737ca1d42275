//! Scoring task examples as lm-evaluation-harness scores them: each (context, continuation) pair
//! tokenized with the trailing whitespace of the context moved to the continuation and the
//! continuation's tokens taken from the tokens of the whole string, the input truncated from the
//! left to the model's length, the continuation's log-probabilities summed; `acc` from the
//! highest sum, `acc_norm` from the sum over the choice's length in characters, LAMBADA's
//! accuracy from the greedy match and its perplexity from the mean log-likelihood. Requests are
//! sorted by length and batched (right-padded, which a causal model's real positions do not see).

use anyhow::{bail, Result};
use lawa_models::CausalLm;
use tch::{Device, Kind, Tensor};

use super::format::Example;
use crate::prepare::tokenizer::TextTokenizer;

/// One log-likelihood request, tokenized.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Context tokens.
    pub context: Vec<i64>,
    /// Continuation tokens (at least one).
    pub continuation: Vec<i64>,
}

/// A request's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Sum of the continuation tokens' log-probabilities (nats).
    pub loglik: f64,
    /// Whether every continuation token is the most likely one.
    pub greedy: bool,
}

/// The harness's `_encode_pair`: trailing whitespace of the context moves to the continuation;
/// the continuation is what follows the context's tokens in the tokens of the whole string. An
/// empty context becomes the end-of-text token, and so does one of whitespace alone (whose
/// tokens all move to the continuation, leaving none to predict its first token from).
pub fn encode_pair(
    tokenizer: &TextTokenizer,
    context: &str,
    continuation: &str,
) -> Result<Request> {
    let to_i64 = |v: Vec<u32>| v.into_iter().map(i64::from).collect::<Vec<i64>>();
    if context.is_empty() {
        let cont = to_i64(tokenizer.encode(continuation)?);
        let eot = tokenizer.eot() as i64;
        return Ok(if cont.first() == Some(&eot) {
            Request {
                context: cont[..1].to_vec(),
                continuation: cont[1..].to_vec(),
            }
        } else {
            Request {
                context: vec![eot],
                continuation: cont,
            }
        });
    }
    let trimmed = context.trim_end();
    let moved = &context[trimmed.len()..];
    let whole = to_i64(tokenizer.encode(&format!("{trimmed}{moved}{continuation}"))?);
    let ctx = to_i64(tokenizer.encode(trimmed)?);
    let cont = whole[ctx.len().min(whole.len())..].to_vec();
    Ok(Request {
        context: if ctx.is_empty() {
            vec![tokenizer.eot() as i64]
        } else {
            ctx
        },
        continuation: cont,
    })
}

/// Scores `requests` with `model`, `batch` at a time, longest first; results in the requests'
/// order. `max_length` is the longest input fed.
pub fn score(
    model: &dyn CausalLm,
    requests: &[Request],
    batch: usize,
    max_length: usize,
) -> Result<Vec<Scored>> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| {
        std::cmp::Reverse(requests[i].context.len() + requests[i].continuation.len())
    });
    let mut out = vec![
        Scored {
            loglik: 0.0,
            greedy: false
        };
        requests.len()
    ];
    let _guard = tch::no_grad_guard();
    for chunk in order.chunks(batch.max(1)) {
        let inputs: Vec<(Vec<i64>, usize)> = chunk
            .iter()
            .map(|&i| input_of(&requests[i], max_length))
            .collect::<Result<_>>()?;
        let width = inputs.iter().map(|(t, _)| t.len()).max().unwrap_or(1);
        let mut flat = Vec::with_capacity(inputs.len() * width);
        for (tokens, _) in &inputs {
            flat.extend_from_slice(tokens);
            flat.extend(std::iter::repeat_n(0, width - tokens.len()));
        }
        let x = Tensor::from_slice(&flat)
            .view([inputs.len() as i64, width as i64])
            .to_device(model.device());
        // Logits of the continuations' positions only: the LM head and the softmax over the
        // vocabulary are a large share of the work (and of the memory) on every other position.
        let mut positions = Vec::new();
        for (row, (tokens, n)) in inputs.iter().enumerate() {
            let start = row * width + tokens.len() - n;
            positions.extend((start..start + n).map(|p| p as i64));
        }
        let hidden = model.hidden(&x, false)?;
        let c = hidden.size()[2];
        let picked = hidden
            .view([-1, c])
            .index_select(0, &Tensor::from_slice(&positions).to_device(model.device()));
        let logp = model
            .head(&picked)
            .log_softmax(-1, Kind::Float)
            .to_device(Device::Cpu);
        let mut at = 0;
        for (&i, (_, n)) in chunk.iter().zip(&inputs) {
            let rows = logp.narrow(0, at, *n as i64);
            out[i] = continuation_score(&rows, &requests[i].continuation)?;
            at += *n as i64;
        }
    }
    Ok(out)
}

/// The input fed for a request: `(context + continuation)[-(max_length + 1):][:-1]`, and the
/// continuation's length.
fn input_of(r: &Request, max_length: usize) -> Result<(Vec<i64>, usize)> {
    if r.continuation.is_empty() {
        bail!("a continuation tokenizes to nothing");
    }
    if r.context.is_empty() {
        bail!("a request has no context tokens (not even the end-of-text token)");
    }
    if r.continuation.len() > max_length {
        bail!(
            "a continuation of {} tokens is longer than the model's {max_length}",
            r.continuation.len()
        );
    }
    let all: Vec<i64> = r.context.iter().chain(&r.continuation).copied().collect();
    let start = all.len().saturating_sub(max_length + 1);
    Ok((all[start..all.len() - 1].to_vec(), r.continuation.len()))
}

/// Sum of the continuation's log-probabilities and whether each is the argmax, from the
/// log-probabilities `[n, vocab]` of the positions that predict its `n` tokens.
fn continuation_score(rows: &Tensor, continuation: &[i64]) -> Result<Scored> {
    let n = continuation.len();
    let targets = Tensor::from_slice(continuation).view([n as i64, 1]);
    let picked = rows.gather(1, &targets, false).to_kind(Kind::Double);
    let loglik = picked.sum(Kind::Double).double_value(&[]);
    let argmax = Vec::<i64>::try_from(rows.argmax(-1, false))?;
    Ok(Scored {
        loglik,
        greedy: argmax == continuation,
    })
}

/// A task's metrics, each with its standard error.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskResult {
    /// The task's name.
    pub task: String,
    /// Examples scored.
    pub examples: usize,
    /// Accuracy (highest log-likelihood; LAMBADA: the greedy match).
    pub acc: f64,
    /// Standard error of `acc` (`sd / sqrt(n)`, sample sd).
    pub acc_se: f64,
    /// Accuracy with log-likelihoods divided by the choice's length in characters.
    pub acc_norm: Option<f64>,
    /// Standard error of `acc_norm`.
    pub acc_norm_se: Option<f64>,
    /// LAMBADA's perplexity: `exp(−mean log-likelihood)` over examples.
    pub perplexity: Option<f64>,
}

/// The (context, continuation) requests of the examples (with their line numbers), flattened;
/// a continuation that tokenizes to nothing, or to more tokens than the model takes, is an
/// error naming the file and line.
pub fn requests_of(
    tokenizer: &TextTokenizer,
    file: &std::path::Path,
    examples: &[(usize, Example)],
    max_length: usize,
) -> Result<Vec<Request>> {
    let mut out = Vec::new();
    for (line, ex) in examples {
        let pairs: Vec<(&str, &str)> = match ex {
            Example::Choice { pairs, .. } => pairs
                .iter()
                .map(|(c, k)| (c.as_str(), k.as_str()))
                .collect(),
            Example::Target { context, target } => vec![(context.as_str(), target.as_str())],
        };
        for (c, k) in pairs {
            let r = encode_pair(tokenizer, c, k)?;
            let n = r.continuation.len();
            if n == 0 || n > max_length {
                bail!(
                    "{}:{line}: the continuation {k:?} is {n} tokens; it must be 1 to {max_length} (the longest input the model takes)",
                    file.display()
                );
            }
            out.push(r);
        }
    }
    Ok(out)
}

/// The metrics of a task from its examples and their requests' scores (in order).
pub fn metrics(task: &str, examples: &[(usize, Example)], scored: &[Scored]) -> TaskResult {
    let mut acc = Vec::new();
    let mut acc_norm = Vec::new();
    let mut logliks = Vec::new();
    let mut at = 0;
    for (_, ex) in examples {
        match ex {
            Example::Choice {
                pairs,
                norm_texts,
                gold,
            } => {
                let lls: Vec<f64> = scored[at..at + pairs.len()]
                    .iter()
                    .map(|s| s.loglik)
                    .collect();
                at += pairs.len();
                acc.push(f64::from(argmax(&lls) == *gold));
                if !norm_texts.is_empty() {
                    let normed: Vec<f64> = lls
                        .iter()
                        .zip(norm_texts)
                        .map(|(ll, t)| ll / t.chars().count().max(1) as f64)
                        .collect();
                    acc_norm.push(f64::from(argmax(&normed) == *gold));
                }
            }
            Example::Target { .. } => {
                acc.push(f64::from(scored[at].greedy));
                logliks.push(scored[at].loglik);
                at += 1;
            }
        }
    }
    let (m, se) = mean_se(&acc);
    let norm = (!acc_norm.is_empty()).then(|| mean_se(&acc_norm));
    TaskResult {
        task: task.to_string(),
        examples: examples.len(),
        acc: m,
        acc_se: se,
        acc_norm: norm.map(|n| n.0),
        acc_norm_se: norm.map(|n| n.1),
        perplexity: (!logliks.is_empty())
            .then(|| (-logliks.iter().sum::<f64>() / logliks.len() as f64).exp()),
    }
}

/// The first index of the largest value (numpy's argmax).
fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// Mean and the harness's standard error (`sample sd / sqrt(n)`; 0 for one value).
fn mean_se(values: &[f64]) -> (f64, f64) {
    crate::results::metrics::mean_and_se(values).unwrap_or_else(|| {
        (
            crate::results::metrics::mean(values).unwrap_or(f64::NAN),
            0.0,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_truncated_from_the_left_and_lose_their_last_token() {
        let r = Request {
            context: vec![1, 2, 3, 4, 5],
            continuation: vec![6, 7],
        };
        assert_eq!(input_of(&r, 100).unwrap(), (vec![1, 2, 3, 4, 5, 6], 2));
        assert_eq!(input_of(&r, 4).unwrap(), (vec![3, 4, 5, 6], 2));
        assert!(
            input_of(&r, 1).is_err(),
            "a continuation longer than the model"
        );
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1, "ties go to the first");
        let no_context = Request {
            context: vec![],
            continuation: vec![6, 7],
        };
        assert!(input_of(&no_context, 100).is_err(), "nothing predicts 6");
    }

    /// A context of whitespace alone gives its whitespace to the continuation and is scored
    /// after the end-of-text token, as an empty one is.
    #[test]
    fn a_context_of_whitespace_alone_becomes_the_end_of_text_token() {
        let t = TextTokenizer::byte();
        let r = encode_pair(&t, " \n", "yes").unwrap();
        assert_eq!(r.context, [256]);
        assert_eq!(r.continuation, [32, 10, 121, 101, 115]);
        assert_eq!(input_of(&r, 100).unwrap(), (vec![256, 32, 10, 121, 101], 5));
        let r = encode_pair(&t, "", "yes").unwrap();
        assert_eq!(
            (r.context, r.continuation),
            (vec![256], vec![121, 101, 115])
        );
    }
}
