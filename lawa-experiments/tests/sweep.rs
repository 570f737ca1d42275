//! `lawa sweep`: configs in configs/ are valid; a killed sweep resumes to the same CSVs; a
//! diverged run is recorded and the sweep goes on; bad input is refused with nothing overwritten;
//! shards and device workers divide the runs and gather what one process gathers.

mod common;

use common::lawa;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lawa_experiments::posthoc::PosthocConfig;
use lawa_experiments::results::{read_rows, SummaryRow};
use lawa_experiments::sweep::SweepConfig;
use lawa_experiments::train::RunConfig;

#[test]
fn every_config_in_configs_is_valid() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut files = vec![root.join("lr.yaml"), root.join("cpu-paper.yaml")];
    for entry in std::fs::read_dir(root.join("paper")).unwrap() {
        files.push(entry.unwrap().path());
    }
    assert!(
        files.len() >= 5,
        "lr.yaml, cpu-paper.yaml and paper/{{small,medium,large}}.yaml"
    );
    for file in files {
        let cfg = SweepConfig::load(&file).unwrap_or_else(|e| panic!("{e:#}"));
        let runs = cfg.plan(Path::new("data/x")).unwrap();
        assert!(!runs.is_empty(), "{}", file.display());
        for r in &runs {
            assert!(
                !r.plan.config.averagers.is_empty(),
                "{}: averagers",
                file.display()
            );
        }
    }
    let mut pythia = 0;
    for entry in std::fs::read_dir(root.join("posthoc")).unwrap() {
        let file = entry.unwrap().path();
        let cfg = PosthocConfig::load(&file).unwrap_or_else(|e| panic!("{e:#}"));
        if cfg.name.starts_with("pythia-") {
            assert!(
                cfg.gpu_hours_per_step.is_some() && cfg.tasks.len() == 7,
                "{}: GPU-hours and the seven zero-shot tasks",
                file.display()
            );
            pythia += 1;
        }
    }
    assert_eq!(pythia, 7, "Pythia 160M to 12B");
    for entry in std::fs::read_dir(root.join("runs")).unwrap() {
        let file = entry.unwrap().path();
        // Planning checks everything that does not need the dataset.
        let plan = RunConfig::load(&file).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            plan.config.checkpoint.series_every.is_some(),
            "{}",
            file.display()
        );
    }
    let lr = SweepConfig::load(&root.join("lr.yaml")).unwrap();
    let lrs = &lr.lrs;
    let (lo, hi) = (
        lrs.iter().cloned().fold(f64::INFINITY, f64::min),
        lrs.iter().cloned().fold(0.0, f64::max),
    );
    assert!(
        lrs.len() >= 2 && (hi / lo - 10.0).abs() < 1e-9,
        "a low lr and one 10x higher: {lrs:?}"
    );
    assert!(lr.seeds.len() >= 2, "at least two seeds");
}

/// A byte-level dataset of a few SOTU addresses.
fn dataset(dir: &Path) -> PathBuf {
    common::sotu_subset(dir, 20, "byte")
}

fn sweep_yaml(data: &Path, results: &Path, lrs: &str, extra_train: &str) -> String {
    format!(
        r#"name: s
data: {{path: {data}}}
models: [{{n_layer: 1, n_head: 2, n_embd: 32, block_size: 32}}]
lrs: {lrs}
seeds: [0]
train:
  steps: 40
  batch_size: 4
  block_size: 32
  schedule: {{kind: cosine, warmup: 4, min_lr_ratio: 0.1}}
{extra_train}eval: {{every: 8, windows: 8, train_windows: 4}}
checkpoint: {{every: 8}}
averagers:
  lawa: {{k: [2, 3], nu: [2, 4]}}
  ema: {{decay: [0.9]}}
  swa: {{start: [0.5], every: 2}}
device: cpu
results: {results}
"#,
        data = data.display(),
        results = results.display()
    )
}

fn without_wall_time(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

#[test]
fn killed_sweep_resumes_to_the_same_csvs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(
        dir.path().join("a.yaml"),
        sweep_yaml(&data, &a, "[1.0e-3, 1.0e-2]", ""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        sweep_yaml(&data, &b, "[1.0e-3, 1.0e-2]", ""),
    )
    .unwrap();
    let o = lawa(&["sweep", "a.yaml"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut child = Command::new(env!("CARGO_BIN_EXE_lawa"))
        .args(["sweep", "b.yaml"])
        .current_dir(dir.path())
        .env("LAWA_LOG", "warn")
        .spawn()
        .unwrap();
    // Kill it in the middle of the second run, past its first checkpoint.
    let second = b.join("s/runs/custom-lr0.01-s0/checkpoint/trainer.json");
    let start = Instant::now();
    while !second.exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !b.join("s/runs/custom-lr0.01-s0/status.json").exists(),
        "killed mid-run"
    );

    let o = lawa(&["sweep", "b.yaml"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let curves_a = without_wall_time(&a.join("s/curves.csv"));
    assert_eq!(curves_a, without_wall_time(&b.join("s/curves.csv")));
    // Header + 2 runs x (step-0 raw + evals at 8..40: 5 raw, 4 LAWA x 5, EMA x 5, and SWA
    // only from its start at step 20: evals 24, 32, 40).
    assert_eq!(curves_a.len(), 1 + 2 * (1 + 5 + 4 * 5 + 5 + 3));
    assert_eq!(
        std::fs::read_to_string(a.join("s/summary.csv")).unwrap(),
        std::fs::read_to_string(b.join("s/summary.csv")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(a.join("s/summary.csv"))
            .unwrap()
            .lines()
            .count(),
        1 + 2 * 7
    );
    for name in [
        "loss_raw_vs_lawa",
        "lawa_gain_vs_step",
        "baselines",
        "gain_vs_k",
        "gain_vs_nu",
    ] {
        for ext in ["png", "svg"] {
            assert!(
                b.join(format!("s/figures/{name}.{ext}")).is_file(),
                "{name}.{ext}"
            );
        }
    }
    assert_eq!(
        std::fs::read_to_string(b.join("s/sweep.yaml")).unwrap(),
        std::fs::read_to_string(dir.path().join("b.yaml")).unwrap(),
        "the exact config is kept with the results"
    );
}

#[test]
fn a_diverged_run_is_recorded_and_the_sweep_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let results = dir.path().join("r");
    let yaml = sweep_yaml(&data, &results, "[1.0e6, 1.0e-3]", "  grad_clip: 0\n");
    std::fs::write(dir.path().join("s.yaml"), yaml).unwrap();
    let o = lawa(&["sweep", "s.yaml"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: Vec<SummaryRow> = read_rows(&results.join("s/summary.csv")).unwrap();
    let raw: Vec<&SummaryRow> = summary.iter().filter(|r| r.weights == "raw").collect();
    assert_eq!(raw.len(), 2);
    // A custom model's id names its shape: two custom models of one sweep never collide.
    assert_eq!(raw[0].run, "custom-l1-h2-d32-b32-lr1000000-s0");
    assert!(raw[0].diverged);
    assert_eq!(raw[1].run, "custom-l1-h2-d32-b32-lr0.001-s0");
    assert!(!raw[1].diverged);
    assert_eq!(raw[1].final_step, 40, "the second run finished");
}

#[test]
fn bad_sweeps_are_refused_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let results = dir.path().join("r");
    let good = sweep_yaml(&data, &results, "[1.0e-3]", "");
    let cases = [
        (
            good.replace("seeds: [0]", "seeds: [0]\nseed: 1"),
            "unknown field `seed`",
        ),
        (good.replace("steps: 40", "steps: many"), "train.steps"),
        (
            good.replace("lrs: [1.0e-3]", "lrs: []"),
            "lrs: the grid is empty",
        ),
        (good.replace("k: [2, 3]", "k: []"), "averagers.lawa"),
        (
            good.replace("k: [2, 3]", "k: [2, 2]"),
            "duplicate averager lawa_k2_nu2",
        ),
        (good.replace("k: [2, 3]", "k: [0, 3]"), "k = 0"),
        (
            good.replace("lrs: [1.0e-3]", "lrs: [1.0e-3, 1.0e-3]"),
            "repeats run",
        ),
        (good.replace("warmup: 4", "warmup: 400"), "warmup = 400"),
        (
            good.replace(
                "  block_size: 32\n",
                "  block_size: 32\n  cuda_graph: true\n",
            ),
            "run custom-l1-h2-d32-b32-lr0.001-s0: train.cuda_graph = true needs a CUDA device",
        ),
        (
            good.replace(
                "  block_size: 32\n",
                "  block_size: 32\n  loss_kernel: fast\n",
            ),
            "train.loss_kernel",
        ),
        // Preparing into a folder that holds another dataset: the sweep's own way out.
        (
            good.replace(
                &format!("data: {{path: {}}}", data.display()),
                &format!(
                    "data: {{prepare: {{source: corpus, tokenizer: \"bpe:300\", val_fraction: 0.2, out: {}}}}}",
                    data.display()
                ),
            ),
            "already holds another dataset (another corpus, tokenizer or split); give another \
             data.prepare.out, or replace that dataset (`lawa prepare corpus --tokenizer bpe:300 \
             --val-fraction 0.2 --out",
        ),
    ];
    for (i, (yaml, needle)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let o = lawa(&["sweep", file.to_str().unwrap()], dir.path());
        let msg = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "case {i} accepted");
        assert!(
            msg.contains(needle) && msg.contains(&format!("bad{i}.yaml")),
            "case {i}: {msg}"
        );
        assert_eq!(msg.trim().lines().count(), 1, "{msg}");
        assert!(!results.exists(), "case {i} wrote results");
    }
    // A results folder made by a different config is refused, its files untouched.
    std::fs::write(dir.path().join("good.yaml"), &good).unwrap();
    assert!(lawa(&["sweep", "good.yaml"], dir.path()).status.success());
    let before = std::fs::read(results.join("s/curves.csv")).unwrap();
    std::fs::write(
        dir.path().join("other.yaml"),
        good.replace("steps: 40", "steps: 48"),
    )
    .unwrap();
    let o = lawa(&["sweep", "other.yaml"], dir.path());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && msg.contains("different config"),
        "{msg}"
    );
    assert_eq!(std::fs::read(results.join("s/curves.csv")).unwrap(), before);
    // Re-running the same sweep redoes nothing.
    let o = lawa(&["sweep", "good.yaml"], dir.path());
    assert!(o.status.success());
    assert_eq!(std::fs::read(results.join("s/curves.csv")).unwrap(), before);
}

/// `--shard 1/2` and `--shard 2/2` as two processes at once (as a Slurm job array would run
/// them), then a final `lawa sweep`: the same curves.csv and summary.csv as one `lawa sweep`,
/// apart from wall time. The shards gather nothing themselves.
#[test]
fn shards_and_a_final_sweep_equal_one_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let lrs = "[1.0e-3, 1.0e-2, 3.0e-3]";
    std::fs::write(dir.path().join("a.yaml"), sweep_yaml(&data, &a, lrs, "")).unwrap();
    std::fs::write(dir.path().join("b.yaml"), sweep_yaml(&data, &b, lrs, "")).unwrap();
    let o = lawa(&["sweep", "a.yaml"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shards: Vec<_> = ["1/2", "2/2"]
        .iter()
        .map(|s| {
            Command::new(env!("CARGO_BIN_EXE_lawa"))
                .args(["sweep", "b.yaml", "--shard", s])
                .current_dir(dir.path())
                .env("LAWA_LOG", "warn")
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for shard in shards {
        let o = shard.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(!b.join("s/curves.csv").exists(), "a shard gathers nothing");
    let runs: Vec<_> = std::fs::read_dir(b.join("s/runs")).unwrap().collect();
    assert_eq!(runs.len(), 3, "the shards trained every run");
    let o = lawa(&["sweep", "b.yaml"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        without_wall_time(&a.join("s/curves.csv")),
        without_wall_time(&b.join("s/curves.csv"))
    );
    assert_eq!(
        std::fs::read_to_string(a.join("s/summary.csv")).unwrap(),
        std::fs::read_to_string(b.join("s/summary.csv")).unwrap()
    );
    assert!(b.join("s/figures/loss_raw_vs_lawa.png").is_file());
}

/// `--devices cpu,cpu`: two workers take the runs between them, each run trained once, and the
/// sweep gathers the same results as one process.
#[test]
fn devices_share_the_runs_and_gather_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let lrs = "[1.0e-3, 1.0e-2, 3.0e-3]";
    std::fs::write(dir.path().join("a.yaml"), sweep_yaml(&data, &a, lrs, "")).unwrap();
    std::fs::write(dir.path().join("b.yaml"), sweep_yaml(&data, &b, lrs, "")).unwrap();
    let o = lawa(&["sweep", "a.yaml"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(env!("CARGO_BIN_EXE_lawa"))
        .args(["sweep", "b.yaml", "--devices", "cpu,cpu"])
        .current_dir(dir.path())
        .env("LAWA_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    let starts = log.matches(": resuming").count() + log.matches(" steps of ").count();
    assert_eq!(starts, 3, "each run started once: {log}");
    assert_eq!(
        without_wall_time(&a.join("s/curves.csv")),
        without_wall_time(&b.join("s/curves.csv"))
    );
    assert_eq!(
        std::fs::read_to_string(a.join("s/summary.csv")).unwrap(),
        std::fs::read_to_string(b.join("s/summary.csv")).unwrap()
    );
}
