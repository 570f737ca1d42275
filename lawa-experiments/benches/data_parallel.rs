//! Throughput of data-parallel training on Gloo, on this machine: one process with 1 and with
//! all threads, beside 2 ranks of 1 thread each, on the same run (the default sweep's model
//! shape on byte-level SOTU), with the share of a step the gradient all-reduce takes; then the
//! time of one evaluation (raw weights and two averages on 256 windows), the same three ways.
//!
//! `cargo bench -p lawa-experiments --bench data_parallel` (after ./test or ./lawa ran the
//! bootstrap). `LAWA_BENCH_STEPS` sets the steps per run (default 60), `LAWA_BENCH_REPEATS` how
//! many times each configuration runs (default 3, taken in turn so that drift in the machine's
//! speed falls on all of them); the table gives the mean and the range.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use lawa_experiments::assets;

const LAWA: &str = env!("CARGO_BIN_EXE_lawa");

/// What a run spends its time on.
#[derive(Clone, Copy)]
enum Load {
    /// Training steps, evaluated once at the end on 4 windows.
    Steps(u64),
    /// 10 steps, evaluated every 2 on 256 windows, with two averagers.
    Evaluations,
}

fn run_yaml(out: &str, load: Load) -> String {
    let (steps, eval, averagers) = match load {
        Load::Steps(steps) => (steps, format!("{{every: {steps}, windows: 4}}"), "[]"),
        Load::Evaluations => (
            10,
            "{every: 2, windows: 256, batch_size: 16}".to_string(),
            "[{kind: ema, decay: 0.9}, {kind: lawa, k: 2, nu: 1}]",
        ),
    };
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
eval: {eval}
averagers: {averagers}
"#
    )
}

/// What one run measured.
struct Measured {
    tokens_per_second: f64,
    /// The log's all-reduce line (after "gradient all-reduce "), if any.
    reduce: String,
    /// Seconds per evaluation, from the log.
    evaluation: f64,
}

/// Runs `lawa train` on `load` with `threads` intra-op threads in each of `nproc` processes.
fn train(dir: &Path, name: &str, load: Load, threads: usize, nproc: usize) -> Result<Measured> {
    std::fs::write(dir.join(format!("{name}.yaml")), run_yaml(name, load))?;
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
    let after = |marker: &str| {
        log.lines()
            .find_map(|l| l.split_once(marker).map(|(_, r)| r.to_string()))
            .unwrap_or_default()
    };
    let evaluation = after("evaluations, ")
        .split_once(" s each")
        .and_then(|(s, _)| s.parse().ok())
        .context("no evaluation time in the log")?;
    Ok(Measured {
        tokens_per_second: status["tokens_per_second"]
            .as_f64()
            .context("tokens_per_second")?,
        reduce: after("gradient all-reduce "),
        evaluation,
    })
}

/// The mean and the range of `values`, as `mean (min-max)` with `digits` decimals.
fn spread(values: &[f64], digits: usize) -> String {
    let mean = mean(values);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{mean:.digits$} ({min:.digits$}-{max:.digits$})")
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let steps = env_number("LAWA_BENCH_STEPS", 60);
    let repeats = env_number("LAWA_BENCH_REPEATS", 3).max(1);
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
    println!("data-parallel training on Gloo, {cores} cores, d128-l4, 16 x 128 tokens a step, {steps} steps, {repeats} repeats");
    let half = (cores / 2).max(1);
    let ways = [
        ("1 process, 1 thread".to_string(), 1, 1),
        (format!("1 process, {cores} threads"), cores, 1),
        (format!("2 ranks, {half} thread(s) each"), half, 2),
    ];
    // rows[way] = (tokens/s, s per evaluation, all-reduce lines), one entry per repeat.
    let mut rows: Vec<(Vec<f64>, Vec<f64>, Vec<String>)> = vec![Default::default(); ways.len()];
    for r in 0..repeats {
        for (i, (_, threads, nproc)) in ways.iter().enumerate() {
            let load = Load::Steps(steps);
            let trained = train(dir.path(), &format!("s{i}r{r}"), load, *threads, *nproc)?;
            let load = Load::Evaluations;
            let evals = train(dir.path(), &format!("e{i}r{r}"), load, *threads, *nproc)?;
            rows[i].0.push(trained.tokens_per_second);
            rows[i].1.push(evals.evaluation);
            rows[i].2.push(trained.reduce);
        }
    }
    println!(
        "{:<30} {:>24} {:>6} {:>22} {:>6}",
        "", "tokens/s mean (range)", "ratio", "s/evaluation (range)", "ratio"
    );
    for ((label, _, _), (tokens, evals, _)) in ways.iter().zip(&rows) {
        println!(
            "{label:<30} {:>24} {:>6.2} {:>22} {:>6.2}",
            spread(tokens, 0),
            mean(tokens) / mean(&rows[0].0),
            spread(evals, 3),
            mean(&rows[0].1) / mean(evals),
        );
    }
    for line in &rows[2].2 {
        println!("all-reduce (rank 0): {line}");
    }
    println!("evaluation: raw weights and 2 averages, 256 windows of 128 tokens in batches of 16");
    Ok(())
}
