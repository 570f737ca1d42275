//! Throughput of data-parallel training on Gloo, on this machine: one process with 1 and with
//! all threads, beside 2 ranks of 1 thread each, on the same run (the default sweep's model
//! shape on byte-level SOTU), with the share of a step the gradient all-reduce takes.
//!
//! `cargo bench -p lawa-experiments --bench data_parallel` (after ./test or ./lawa ran the
//! bootstrap). `LAWA_BENCH_STEPS` sets the steps per run (default 60).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use lawa_experiments::assets;

const LAWA: &str = env!("CARGO_BIN_EXE_lawa");

fn run_yaml(out: &str, steps: u64) -> String {
    format!(
        r#"name: {out}
data: data
out: {out}
device: cpu
model: {{n_layer: 4, n_head: 4, n_embd: 128, block_size: 128}}
train:
  steps: {steps}
  batch_size: 16
  block_size: 128
  lr: 2.0e-3
  schedule: {{kind: constant}}
eval: {{every: {steps}, windows: 4}}
averagers: []
"#
    )
}

/// Runs `lawa train` with `args` and `threads` intra-op threads a process; returns the
/// tokens/s recorded in the run's status.json and the all-reduce log line, if any.
fn train(
    dir: &Path,
    name: &str,
    steps: u64,
    threads: usize,
    nproc: usize,
) -> Result<(f64, String)> {
    std::fs::write(dir.join(format!("{name}.yaml")), run_yaml(name, steps))?;
    let mut command = Command::new(LAWA);
    command
        .args(["train", &format!("{name}.yaml")])
        .current_dir(dir)
        .env("LAWA_LOG", "info")
        .env("OMP_NUM_THREADS", threads.to_string());
    if nproc > 1 {
        command.args(["--nproc", &nproc.to_string()]);
    }
    let o = command.output()?;
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    if !o.status.success() {
        bail!("{name}: {log}");
    }
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(name).join("status.json"))?)?;
    let tps = status["tokens_per_second"]
        .as_f64()
        .context("tokens_per_second")?;
    let reduce = log
        .lines()
        .find_map(|l| {
            l.split_once("gradient all-reduce ")
                .map(|(_, r)| r.to_string())
        })
        .unwrap_or_default();
    Ok((tps, reduce))
}

fn main() -> Result<()> {
    let steps: u64 = std::env::var("LAWA_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir()?;
    let o = Command::new(LAWA)
        .args(["prepare"])
        .arg(assets::sotu_dir()?)
        .args(["--out", "data", "--tokenizer", "byte"])
        .current_dir(dir.path())
        .env("LAWA_LOG", "warn")
        .output()?;
    if !o.status.success() {
        bail!("prepare: {}", String::from_utf8_lossy(&o.stderr));
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!("data-parallel training on Gloo, {cores} cores, d128-l4, 16 x 128 tokens a step, {steps} steps");
    let (one, _) = train(dir.path(), "one-thread", steps, 1, 1)?;
    let (all, _) = train(dir.path(), "all-threads", steps, cores, 1)?;
    let (two, reduce) = train(dir.path(), "two-ranks", steps, (cores / 2).max(1), 2)?;
    println!("{:<34} {:>10} {:>8}", "", "tokens/s", "ratio");
    println!("{:<34} {:>10.0} {:>8.2}", "1 process, 1 thread", one, 1.0);
    println!(
        "{:<34} {:>10.0} {:>8.2}",
        format!("1 process, {cores} threads"),
        all,
        all / one
    );
    println!(
        "{:<34} {:>10.0} {:>8.2}",
        format!("2 ranks, {} thread(s) each", (cores / 2).max(1)),
        two,
        two / one
    );
    println!("all-reduce (rank 0): {reduce}");
    Ok(())
}
