//! Zero-shot scoring speed: log-likelihood requests per second, one at a time and batched,
//! beside PyTorch scoring the same requests as lm-evaluation-harness does.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use lawa_models::Gpt;
use serde_json::{json, Value};
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::{reference, sync, Bench};
use crate::tasks::{score, Request};

/// `(context, continuation)` lengths of request `i`: the same formula as the PyTorch reference's
/// `request_lengths`, contexts spread over the block, continuations of 1 to 6 tokens.
fn request_lengths(i: usize, block: usize) -> (usize, usize) {
    (1 + (i * 37) % (block - 8), 1 + i % 6)
}

/// `count` random requests of the benchmark's lengths.
fn requests(count: usize, block: usize, vocab: i64) -> Result<Vec<Request>> {
    (0..count)
        .map(|i| {
            let (c, n) = request_lengths(i, block);
            let t = Vec::<i64>::try_from(Tensor::randint(
                vocab,
                [(c + n) as i64],
                (Kind::Int64, Device::Cpu),
            ))?;
            Ok(Request {
                context: t[..c].to_vec(),
                continuation: t[c..].to_vec(),
            })
        })
        .collect()
}

/// Measures scoring speed; prints the table and returns the figures.
pub fn run(b: &Bench) -> Result<Value> {
    if b.block < 16 {
        bail!("bench tasks needs --block-size of at least 16");
    }
    tch::manual_seed(0);
    let vs = VarStore::new(b.device);
    let gpt = Gpt::new(vs.root(), &b.cfg)?.with_precision(b.precision);
    let requests = requests(b.requests, b.block, b.cfg.vocab_size as i64)?;
    let rate = |batch: usize| -> Result<f64> {
        score(&gpt, &requests, batch, b.block)?; // warm-up
        sync(b.device);
        let start = Instant::now();
        score(&gpt, &requests, batch, b.block)?;
        sync(b.device);
        Ok(requests.len() as f64 / start.elapsed().as_secs_f64())
    };
    let one = rate(1)?;
    let batched = rate(b.batch_size)?;
    println!(
        "{} requests, contexts of 1 to {} tokens",
        requests.len(),
        b.block - 8
    );
    println!("{:<36} {:>14}", "implementation", "requests/s");
    println!("{:<36} {:>14.1}", "lawa, one request at a time", one);
    println!(
        "{:<36} {:>14.1}",
        format!("lawa, batches of {}", b.batch_size),
        batched
    );
    println!("batching_speedup={:.3}", batched / one);
    let mut out = json!({"requests": requests.len(), "lawa_one_per_s": one,
                         "lawa_batched_per_s": batched, "batch_size": b.batch_size});
    if !b.reference {
        return Ok(out);
    }
    let mut config = b.reference_config();
    config["tasks"] = json!(b.requests);
    let r = reference::run(&config)?;
    let torch = r["requests_per_s"].as_f64().context("requests_per_s")?;
    println!(
        "{:<36} {:>14.1}",
        format!(
            "PyTorch {}, batches of {}",
            r["torch"].as_str().unwrap_or("?"),
            b.batch_size
        ),
        torch
    );
    println!("speedup_vs_pytorch={:.3}", batched / torch);
    out["pytorch_batched_per_s"] = json!(torch);
    out["speedup_vs_pytorch"] = json!(batched / torch);
    Ok(out)
}
