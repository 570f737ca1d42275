//! The fault suite: what lawa guarantees under crashes, concurrency, corrupt files and absurd
//! input, tried the way a hostile user would. Each case asserts one of the guarantees the
//! README's "Crashes, concurrency and corrupt input" section states:
//!
//! - a run killed at any moment (inside checkpoint writes included) resumes to exactly the
//!   results of an uninterrupted run, with no row lost or duplicated and no staging left behind;
//! - a second process on a busy run or results folder is refused with one line, and the first is
//!   not disturbed;
//! - every artifact lawa writes, corrupted, gives one error naming the file, never a silent
//!   wrong number;
//! - bad configs and absurd sizes are refused with one line before anything is written.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::lawa;
use lawa_experiments::results::{read_rows, CurveRow};

/// A tiny byte-level dataset (a few SOTU addresses).
fn dataset(dir: &Path) -> PathBuf {
    common::sotu_subset(dir, 30, "byte")
}

/// A run of a tiny model that checkpoints and evaluates at every `every`-th step, so that a
/// kill at a random moment often lands inside a write.
fn run_yaml(data: &Path, out: &Path, steps: u64, every: u64) -> String {
    format!(
        r#"name: f
data: {data}
out: {out}
device: cpu
model: {{n_layer: 1, n_head: 2, n_embd: 16, block_size: 16}}
train:
  steps: {steps}
  batch_size: 4
  block_size: 16
  lr: 3.0e-3
  schedule: {{kind: cosine, warmup: 2, min_lr: 3.0e-4}}
  seed: 3
eval: {{every: {every}, windows: 6, train_windows: 2}}
checkpoint: {{every: {every}}}
averagers:
  - {{kind: lawa, k: 3, nu: 2}}
  - {{kind: ema, decay: 0.9}}
  - {{kind: swa, start: 0.3, every: 2}}
"#,
        data = data.display(),
        out = out.display()
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `lawa args` and expects it to fail with one line of error containing every needle.
fn refused(args: &[&str], cwd: &Path, needles: &[&str]) -> String {
    let o = lawa(args, cwd);
    let msg = stderr(&o);
    assert!(!o.status.success(), "{args:?} succeeded: {msg}");
    for needle in needles {
        assert!(msg.contains(needle), "{args:?}: {needle:?} not in: {msg}");
    }
    assert_eq!(msg.trim().lines().count(), 1, "one line: {msg}");
    msg
}

fn spawn(args: &[&str], cwd: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lawa"))
        .args(args)
        .current_dir(cwd)
        .env("LAWA_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// curves.csv rows without wall time (the only column that differs between runs).
fn curves(run: &Path) -> Vec<CurveRow> {
    read_rows::<CurveRow>(&run.join("curves.csv"))
        .unwrap()
        .into_iter()
        .map(|r| CurveRow {
            wall_time_s: 0.0,
            ..r
        })
        .collect()
}

/// Lines in the run's curves.csv so far (0 before it exists); a cheap measure of progress.
fn row_count(run: &Path) -> usize {
    std::fs::read_to_string(run.join("curves.csv")).map_or(0, |t| t.lines().count())
}

/// Names in `dir` that look like staging or temporary files.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-") || n.contains(".tmp") || n.ends_with(".old"))
        .collect()
}

/// Runs `lawa args` to the end (it must succeed) and returns the milliseconds per step from
/// its first row in `run`'s curves.csv to its exit: the pace of training, start-up excluded.
fn ms_per_step_after_start_up(args: &[&str], cwd: &Path, run: &Path, steps: u64) -> u64 {
    let mut child = spawn(args, cwd);
    let started = Instant::now();
    while row_count(run) == 0 && child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(120), "no row");
        std::thread::sleep(Duration::from_millis(2));
    }
    let first_row = Instant::now();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    (first_row.elapsed().as_millis() as u64 / steps).max(2)
}

/// A deterministic stream of delays (an LCG), so that the "random" kill moments are the same
/// on every run of the suite.
struct Moments(u64);

impl Moments {
    fn next_below(&mut self, max: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % max
    }
}

#[test]
fn runs_killed_at_random_moments_resume_to_the_uninterrupted_results() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let straight = dir.path().join("straight");
    let killed = dir.path().join("killed");
    write(dir.path(), "a.yaml", &run_yaml(&data, &straight, 40, 1));
    write(dir.path(), "b.yaml", &run_yaml(&data, &killed, 40, 1));
    // The time of one step after start-up, measured on this machine and build under the load of
    // the suite, so that kill moments span a few steps whatever their speed. (A bound that
    // counted start-up in spread one kill over up to ten steps of a fast build, and a run of 40
    // steps then finished after two kills.)
    let step_ms = ms_per_step_after_start_up(&["train", "a.yaml"], dir.path(), &straight, 40);

    let mut moments = Moments(7);
    let mut kills = 0;
    let started = Instant::now();
    // Kill, restart, kill again, until a re-run finishes alone. Each kill comes after the run
    // has written a seeded random number (1 to 3) of new rows, at a seeded random moment within
    // one step: every restart makes progress, the count of kills does not hang on the pace of
    // the machine, and kills land anywhere in training, evaluation or checkpoint writes.
    while kills < 12 && started.elapsed() < Duration::from_secs(240) {
        let rows_before = row_count(&killed);
        let rows_wanted = rows_before + 1 + moments.next_below(3) as usize;
        let mut child = spawn(&["train", "b.yaml"], dir.path());
        let progressed = Instant::now();
        while row_count(&killed) < rows_wanted
            && child.try_wait().unwrap().is_none()
            && progressed.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(moments.next_below(step_ms)));
        if child.try_wait().unwrap().is_some() {
            break; // finished before the kill
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    let o = lawa(&["train", "b.yaml"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    println!("{kills} kills at random moments, then a clean finish");
    assert!(kills >= 3, "the suite killed the run only {kills} times");
    assert_eq!(
        curves(&straight),
        curves(&killed),
        "same rows, bit for bit, none lost or duplicated"
    );
    assert_eq!(leftovers(&killed), Vec::<String>::new(), "no staging left");
}

/// A save cut short after its second rename leaves the previous checkpoint beside the new one,
/// and one cut between the renames leaves only the previous one: the next `lawa train` of the
/// finished run completes the save (removes the first, publishes the second again) and changes
/// no row.
#[test]
fn a_save_cut_short_is_completed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let run = dir.path().join("run");
    write(dir.path(), "r.yaml", &run_yaml(&data, &run, 4, 2));
    let o = lawa(&["train", "r.yaml"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = curves(&run);
    let (checkpoint, old) = (run.join("checkpoint"), run.join(".checkpoint.old"));
    copy_dir(&checkpoint, &old);
    let o = lawa(&["train", "r.yaml"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        leftovers(&run),
        Vec::<String>::new(),
        "the previous checkpoint removed"
    );
    std::fs::rename(&checkpoint, &old).unwrap();
    let o = lawa(&["train", "r.yaml"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(checkpoint.join("trainer.json").is_file(), "published again");
    assert_eq!(leftovers(&run), Vec::<String>::new());
    assert_eq!(curves(&run), rows, "no row added, lost or changed");
}

#[test]
fn a_run_killed_before_its_first_checkpoint_writes_its_first_rows_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let run = dir.path().join("run");
    // Evaluations every step, the first checkpoint only at the end.
    let yaml =
        run_yaml(&data, &run, 30, 1).replace("checkpoint: {every: 1}", "checkpoint: {every: 30}");
    write(dir.path(), "r.yaml", &yaml);
    let mut child = spawn(&["train", "r.yaml"], dir.path());
    let started = Instant::now();
    // Killed as soon as the first rows are on disk, long before the 30th step's checkpoint.
    while row_count(&run) < 2 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !run.join("checkpoint").exists(),
        "killed before the checkpoint"
    );
    let o = lawa(&["train", "r.yaml"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = curves(&run);
    let step0 = rows.iter().filter(|r| r.step == 0).count();
    assert_eq!(step0, 1, "one step-0 row (raw only: no averager is ready)");
    let mut keys: Vec<(u64, String)> = rows.iter().map(|r| (r.step, r.weights.clone())).collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "no (step, weights) row twice");
}

#[test]
fn a_second_process_on_a_busy_folder_is_refused_and_the_first_is_undisturbed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let run = dir.path().join("run");
    write(dir.path(), "r.yaml", &run_yaml(&data, &run, 200, 10));
    let mut first = spawn(&["train", "r.yaml"], dir.path());
    let started = Instant::now();
    while !run.join(".lock").exists() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    refused(
        &["train", "r.yaml"],
        dir.path(),
        &["another lawa process (pid", "run"],
    );
    assert!(first.wait().unwrap().success(), "the first run finished");
    let alone = dir.path().join("alone");
    write(dir.path(), "s.yaml", &run_yaml(&data, &alone, 200, 10));
    assert!(lawa(&["train", "s.yaml"], dir.path()).status.success());
    assert_eq!(
        curves(&run),
        curves(&alone),
        "the first run's results are its own"
    );

    // The same for sweeps on one results folder.
    let sweep = format!(
        "name: busy\ndata: {{path: {}}}\nresults: {}\nmodels: [{{n_layer: 1, n_head: 2, n_embd: 16, block_size: 16}}]\nlrs: [3.0e-3]\nseeds: [0, 1]\ntrain: {{steps: 150, batch_size: 4, block_size: 16, schedule: {{kind: constant}}}}\neval: {{every: 50, windows: 4}}\naveragers: {{lawa: {{k: [2], nu: [10]}}}}\ndevice: cpu\n",
        data.display(),
        dir.path().join("results").display()
    );
    write(dir.path(), "sweep.yaml", &sweep);
    let mut first = spawn(&["sweep", "sweep.yaml"], dir.path());
    let lock = dir.path().join("results/busy/.lock");
    let started = Instant::now();
    while !lock.exists() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    refused(
        &["sweep", "sweep.yaml"],
        dir.path(),
        &["another lawa process", "sweep"],
    );
    assert!(first.wait().unwrap().success());
}

/// A finished run in `dir/run` and its config file `r.yaml`.
fn finished_run(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dataset(dir);
    let run = dir.join("run");
    write(dir, "r.yaml", &run_yaml(&data, &run, 20, 10));
    let o = lawa(&["train", "r.yaml"], dir);
    assert!(o.status.success(), "{}", stderr(&o));
    (data, run)
}

/// Flips one bit near the end of a file.
fn flip(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() - 7;
    bytes[i] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn every_artifact_corrupted_gives_one_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = finished_run(dir.path());
    let ckpt = run.join("checkpoint");
    let pristine = dir.path().join("pristine");
    copy_dir(&run, &pristine);
    // Each case: corrupt one artifact, make the run resume (no status.json), expect one error.
    type Corrupt = fn(&Path, &Path);
    let cases: Vec<(&str, Corrupt, &[&str])> = vec![
        (
            "model weights",
            |r, _| flip(&r.join("checkpoint/model.safetensors")),
            &["model.safetensors", "CRC-32"],
        ),
        (
            "optimizer state",
            |r, _| flip(&r.join("checkpoint/optimizer.safetensors")),
            &["optimizer.safetensors", "CRC-32"],
        ),
        (
            "averager state",
            |r, _| flip(&r.join("checkpoint/averagers.safetensors")),
            &["averagers.safetensors", "CRC-32"],
        ),
        (
            "averager counters",
            |r, _| std::fs::write(r.join("checkpoint/averagers.json"), "{\"version\": 1").unwrap(),
            &["averagers.json"],
        ),
        (
            "trainer state",
            |r, _| std::fs::write(r.join("checkpoint/trainer.json"), "{\"step\": ").unwrap(),
            &["trainer.json", "corrupt"],
        ),
        (
            "a step past the end",
            |r, _| {
                let path = r.join("checkpoint/trainer.json");
                let text = std::fs::read_to_string(&path)
                    .unwrap()
                    .replace("\"step\": 20", "\"step\": 4000");
                std::fs::write(path, text).unwrap();
            },
            &["step 4000", "after the run's last step 20"],
        ),
        (
            "model config",
            |r, _| std::fs::write(r.join("checkpoint/config.json"), "{\"n_layer\": ").unwrap(),
            &["config.json"],
        ),
        (
            "run curves",
            |r, _| {
                let path = r.join("curves.csv");
                let text =
                    std::fs::read_to_string(&path)
                        .unwrap()
                        .replacen(",raw,raw,", ",raw,rav,", 1);
                std::fs::write(path, text).unwrap();
            },
            &["curves.csv:2", "strategy"],
        ),
        (
            "trainer state deleted",
            |r, _| std::fs::remove_file(r.join("checkpoint/trainer.json")).unwrap(),
            &["checkpoint", "no trainer.json", "no previous checkpoint"],
        ),
        (
            "run curves deleted",
            |r, _| std::fs::remove_file(r.join("curves.csv")).unwrap(),
            &["curves.csv", "missing", "step 20"],
        ),
        (
            "checkpoint deleted",
            |r, _| std::fs::remove_dir_all(r.join("checkpoint")).unwrap(),
            &["curves.csv", "rows up to step 20", "checkpoint", "is gone"],
        ),
        (
            "dataset re-prepared",
            |_, d| {
                let path = d.join("train.bin");
                let mut bytes = std::fs::read(&path).unwrap();
                bytes.truncate(bytes.len() - 64);
                std::fs::write(path, bytes).unwrap();
            },
            &["train.bin", "meta.json says"],
        ),
        (
            "dataset meta",
            |_, d| std::fs::write(d.join("meta.json"), "{").unwrap(),
            &["meta.json"],
        ),
    ];
    let data_copy = dir.path().join("data-pristine");
    copy_dir(&data, &data_copy);
    for (what, corrupt, needles) in &cases {
        let _ = std::fs::remove_dir_all(&run);
        copy_dir(&pristine, &run);
        let _ = std::fs::remove_dir_all(&data);
        copy_dir(&data_copy, &data);
        std::fs::remove_file(run.join("status.json")).unwrap();
        corrupt(&run, &data);
        let before = snapshot(&ckpt);
        let curves_before = std::fs::read(run.join("curves.csv")).ok();
        let o = lawa(&["train", "r.yaml"], dir.path());
        let msg = stderr(&o);
        assert!(!o.status.success(), "{what}: accepted");
        for n in *needles {
            assert!(msg.contains(n), "{what}: {n:?} not in {msg}");
        }
        assert_eq!(msg.trim().lines().count(), 1, "{what}: one line: {msg}");
        assert_eq!(
            snapshot(&ckpt),
            before,
            "{what}: the checkpoint is left as it was"
        );
        assert_eq!(
            std::fs::read(run.join("curves.csv")).ok(),
            curves_before,
            "{what}: curves.csv is left as it was"
        );
    }
    // A corrupt status.json: an error, not a silent re-run.
    let _ = std::fs::remove_dir_all(&run);
    copy_dir(&pristine, &run);
    let _ = std::fs::remove_dir_all(&data);
    copy_dir(&data_copy, &data);
    std::fs::write(run.join("status.json"), "{\"status\": ").unwrap();
    refused(
        &["train", "r.yaml"],
        dir.path(),
        &["status.json", "corrupt"],
    );
    println!(
        "{} corrupted artifacts, each refused with one line",
        cases.len() + 1
    );
}

/// File name -> bytes of every file in `dir` (not recursive).
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|it| {
            it.map(|e| e.unwrap().path())
                .filter(|p| p.is_file())
                .map(|p| {
                    (
                        p.file_name().unwrap().to_string_lossy().into_owned(),
                        std::fs::read(&p).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn a_finished_run_whose_curves_are_gone_stops_the_sweep_aggregate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let sweep = format!(
        "name: s\ndata: {{path: {}}}\nresults: {}\nmodels: [{{n_layer: 1, n_head: 2, n_embd: 16, block_size: 16}}]\nlrs: [3.0e-3, 1.0e-3]\nseeds: [0]\ntrain: {{steps: 20, batch_size: 4, block_size: 16, schedule: {{kind: constant}}}}\neval: {{every: 10, windows: 4}}\naveragers: {{lawa: {{k: [2], nu: [5]}}}}\ndevice: cpu\n",
        data.display(),
        dir.path().join("results").display()
    );
    write(dir.path(), "s.yaml", &sweep);
    assert!(lawa(&["sweep", "s.yaml"], dir.path()).status.success());
    let results = dir.path().join("results/s");
    let figures: Vec<_> = std::fs::read_dir(results.join("figures"))
        .unwrap()
        .collect();
    assert!(!figures.is_empty());
    let runs: Vec<PathBuf> = std::fs::read_dir(results.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    std::fs::remove_file(runs[0].join("curves.csv")).unwrap();
    let before = std::fs::read(results.join("summary.csv")).unwrap();
    let msg = refused(
        &["sweep", "s.yaml"],
        dir.path(),
        &["curves.csv", "cannot be gathered"],
    );
    assert!(
        msg.contains(&runs[0].file_name().unwrap().to_string_lossy().to_string()),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(results.join("summary.csv")).unwrap(),
        before,
        "summary kept"
    );
}

#[test]
fn figures_no_longer_drawn_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let results = dir.path().join("results");
    let sweep = |lrs: &str| {
        format!(
            "name: s\ndata: {{path: {}}}\nresults: {}\nmodels: [{{n_layer: 1, n_head: 2, n_embd: 16, block_size: 16}}]\nlrs: {lrs}\nseeds: [0]\ntrain: {{steps: 20, batch_size: 4, block_size: 16, schedule: {{kind: constant}}}}\neval: {{every: 10, windows: 4}}\naveragers: {{lawa: {{k: [2], nu: [5]}}, ema: {{decay: [0.9]}}}}\ndevice: cpu\n",
            data.display(),
            results.display()
        )
    };
    write(dir.path(), "s.yaml", &sweep("[3.0e-3, 1.0e-3]"));
    assert!(lawa(&["sweep", "s.yaml"], dir.path()).status.success());
    let per_lr: Vec<PathBuf> = std::fs::read_dir(results.join("s/figures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("baselines_lr")
        })
        .collect();
    assert_eq!(
        per_lr.len(),
        2,
        "the low-lr baselines figure, PNG and SVG: {per_lr:?}"
    );
    // Drop the low-lr run's results: its per-lr figure must go too, not stay beside new ones.
    std::fs::remove_dir_all(results.join("s/runs")).unwrap();
    std::fs::remove_file(results.join("s/sweep.yaml")).unwrap();
    std::fs::remove_file(results.join("s/curves.csv")).unwrap();
    std::fs::remove_file(results.join("s/summary.csv")).unwrap();
    write(dir.path(), "s.yaml", &sweep("[3.0e-3]"));
    let o = lawa(&["sweep", "s.yaml"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    for stale in &per_lr {
        assert!(
            !stale.exists(),
            "a stale figure stayed: {}",
            stale.display()
        );
    }
    assert!(results.join("s/figures/baselines.png").is_file());
}

#[test]
fn bad_configs_and_absurd_sizes_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let run = dir.path().join("run");
    let good = run_yaml(&data, &run, 20, 10);
    let model = "model: {n_layer: 1, n_head: 2, n_embd: 16, block_size: 16}";
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            good.replace("device: cpu", "device: cuda"),
            vec!["device = cuda:0", "no CUDA device"],
        ),
        (
            good.replace("device: cpu", "device: cuda:7"),
            vec!["cuda:7", "no CUDA device"],
        ),
        (
            good.replace("device: cpu", "device: tpu"),
            vec!["device = \"tpu\""],
        ),
        (
            good.replace(
                model,
                "model: {n_layer: 1, n_head: 2, n_embd: 1000000000, block_size: 16}",
            ),
            vec!["n_embd = 1000000000", "values"],
        ),
        (
            good.replace(
                model,
                "model: {n_layer: 1, n_head: 2, n_embd: 200000, block_size: 16}",
            ),
            vec!["needs", "GB", "available"],
        ),
        (
            good.replace(
                model,
                "model: {n_layer: 10000000, n_head: 2, n_embd: 16, block_size: 16}",
            ),
            vec!["needs", "GB", "available"],
        ),
        (
            good.replace(
                model,
                "model: {n_layer: 1, n_head: 2, n_embd: 1e9, block_size: 16}",
            ),
            vec!["n_embd"],
        ),
        (
            good.replace(
                model,
                "model: {n_layer: 1, n_head: 2, n_embd: 18446744073709551615, block_size: 16}",
            ),
            vec!["n_embd"],
        ),
        (
            good.replace("k: 3, nu: 2", "k: 100000000, nu: 2"),
            vec!["needs", "GB", "averagers[0] holds 100000001"],
        ),
        (
            good.replace("name: f", "name: \"..\""),
            vec!["name = \"..\""],
        ),
        (good.replace("name: f", "name: \".\""), vec!["name = \".\""]),
        (
            good.replace("name: f", "name: \"a\\nb\""),
            vec!["name = \"a\\nb\"", "control"],
        ),
        (good.replace("name: f", "name: a/b"), vec!["name = \"a/b\""]),
        (
            good.replace("seed: 3", "seed: 3\n  adamw: {beta1: 1.5}"),
            vec!["train.adamw.beta1 = 1.5"],
        ),
        (
            good.replace("seed: 3", "seed: 3\n  adamw: {eps: -1}"),
            vec!["train.adamw.eps = -1"],
        ),
        (
            good.replace(
                &data.display().to_string(),
                &data.join("train.bin").display().to_string(),
            ),
            vec!["train.bin", "not a dataset folder"],
        ),
    ];
    for (i, (yaml, needles)) in cases.iter().enumerate() {
        let file = format!("bad{i}.yaml");
        write(dir.path(), &file, yaml);
        let started = Instant::now();
        refused(&["train", &file], dir.path(), needles);
        assert!(!run.exists(), "case {i} wrote the run folder");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "case {i} took long"
        );
    }
    // `out` naming a folder of something else: refused, its files untouched.
    let other = dir.path().join("mine");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("curves.csv"), "precious").unwrap();
    std::fs::write(other.join("notes.txt"), "precious").unwrap();
    write(dir.path(), "o.yaml", &run_yaml(&data, &other, 20, 10));
    refused(
        &["train", "o.yaml"],
        dir.path(),
        &["mine", "not a lawa run's"],
    );
    assert_eq!(
        std::fs::read_to_string(other.join("curves.csv")).unwrap(),
        "precious"
    );
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 2);
    println!("{} bad configs refused with one line", cases.len() + 1);
}

#[test]
fn a_checkpoint_with_absurd_sizes_is_refused_by_eval_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = finished_run(dir.path());
    let config = run.join("checkpoint/config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let embd = json["n_embd"].as_u64().unwrap();
    std::fs::write(
        &config,
        text.replace(&format!("\"n_embd\": {embd}"), "\"n_embd\": 1000000000"),
    )
    .unwrap();
    let started = Instant::now();
    refused(
        &[
            "eval",
            "--checkpoint",
            run.join("checkpoint").to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
        dir.path(),
        &["config.json", "n_embd = 1000000000"],
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // A width that fits the value limit but not this machine: refused with the figure.
    std::fs::write(
        &config,
        text.replace(&format!("\"n_embd\": {embd}"), "\"n_embd\": 200000"),
    )
    .unwrap();
    refused(
        &[
            "eval",
            "--checkpoint",
            run.join("checkpoint").to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
        dir.path(),
        &["needs", "GB", "available"],
    );
    // An OS error is said once, not once per layer of context.
    let msg = refused(
        &[
            "eval",
            "--checkpoint",
            "nowhere",
            "--data",
            data.to_str().unwrap(),
        ],
        dir.path(),
        &["nowhere"],
    );
    assert!(msg.matches("os error").count() <= 1, "{msg}");
}

#[test]
fn stale_staging_of_a_dead_process_is_removed_when_the_run_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (_, run) = finished_run(dir.path());
    std::fs::remove_file(run.join("status.json")).unwrap();
    // What a process killed inside a checkpoint write leaves (its pid runs nowhere).
    let stale = run.join(".checkpoint.partial-4999999");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), vec![0u8; 4096]).unwrap();
    std::fs::write(run.join(".curves.csv.tmp4999999"), "x").unwrap();
    let o = lawa(&["train", "r.yaml"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(leftovers(&run), Vec::<String>::new());
}
