//! Data-parallel training on Gloo, on this CPU: two ranks equal one process, a killed rank ends
//! the other with a message and the run resumes at another world size, torchrun launches it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::lawa;
use lawa_experiments::results::{read_rows, CurveRow};

fn run_yaml(data: &Path, out: &str, steps: u64, every: u64) -> String {
    format!(
        r#"name: dp
data: {data}
out: {out}
device: cpu
model: {{n_layer: 2, n_head: 2, n_embd: 32, block_size: 32}}
train:
  steps: {steps}
  batch_size: 8
  block_size: 32
  lr: 3.0e-3
  schedule: {{kind: cosine, warmup: 5, min_lr: 3.0e-4}}
  seed: 5
eval: {{every: {every}, windows: 8, train_windows: 4, batch_size: 3}}
checkpoint: {{every: {every}}}
averagers:
  - {{kind: lawa, k: 3, nu: 4}}
  - {{kind: ema, decay: 0.95}}
  - {{kind: swa, start: 0.3, every: 2}}
"#,
        data = data.display()
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn curves(run: &Path) -> Vec<CurveRow> {
    read_rows::<CurveRow>(&run.join("curves.csv")).unwrap()
}

/// The largest difference between two runs' curves (every averager's validation and training
/// loss at every evaluation), after checking they have the same rows.
fn max_difference(a: &[CurveRow], b: &[CurveRow]) -> f64 {
    assert_eq!(a.len(), b.len(), "same evaluations");
    let mut max: f64 = 0.0;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(
            (&x.weights, x.step, x.tokens),
            (&y.weights, y.step, y.tokens)
        );
        let d = (x.val_loss - y.val_loss)
            .abs()
            .max((x.train_loss.unwrap() - y.train_loss.unwrap()).abs());
        if d > 1e-5 {
            println!(
                "step {} {}: {} vs {}",
                x.step, x.weights, x.val_loss, y.val_loss
            );
        }
        max = max.max(d);
    }
    max
}

/// The final weights' largest difference between two run folders.
fn weights_difference(a: &Path, b: &Path) -> f64 {
    let read = |dir: &Path| {
        let mut named =
            tch::Tensor::read_safetensors(dir.join("checkpoint/model.safetensors")).unwrap();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    };
    let (wa, wb) = (read(a), read(b));
    assert_eq!(wa.len(), wb.len());
    wa.iter()
        .zip(&wb)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rank(args: &[&str], cwd: &Path, rank: usize, world: usize, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lawa"))
        .args(args)
        .current_dir(cwd)
        .env("LAWA_LOG", "warn")
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("OMP_NUM_THREADS", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `--nproc` is checked once, before any rank starts: a batch that does not split over the
/// ranks names the file, 0 ranks and more CUDA ranks than GPUs are refused; nothing is written.
#[test]
fn nproc_is_checked_before_any_rank_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sotu_subset(dir.path(), 30, "byte");
    let odd = run_yaml(&data, "odd", 10, 10).replace("batch_size: 8", "batch_size: 3");
    write(dir.path(), "odd.yaml", &odd);
    let cuda = run_yaml(&data, "cuda", 10, 10).replace("device: cpu", "device: cuda");
    write(dir.path(), "cuda.yaml", &cuda);
    let gpus = tch::Cuda::device_count();
    let cases = [
        (
            "odd.yaml",
            "2",
            "odd.yaml: train.batch_size: 3 sequences do not split over 2 ranks",
        ),
        ("odd.yaml", "0", "--nproc must be at least 1"),
        ("odd.yaml", "1000000", "do not split over 1000000 ranks"),
        (
            "cuda.yaml",
            "2",
            "a CUDA run takes one GPU a rank, and 0 are visible",
        ),
    ];
    for (file, n, needle) in cases {
        if file == "cuda.yaml" && gpus != 0 {
            println!("skipped the CUDA case: {gpus} GPUs are visible here");
            continue;
        }
        let o = lawa(&["train", file, "--nproc", n], dir.path());
        let msg = stderr(&o);
        assert!(!o.status.success(), "{file} --nproc {n} accepted");
        assert!(msg.contains(needle), "{file} --nproc {n}: {msg}");
        assert_eq!(msg.trim().lines().count(), 1, "one line: {msg}");
    }
    assert!(!dir.path().join("odd").exists(), "nothing written");
    assert!(!dir.path().join("cuda").exists(), "nothing written");
}

/// The 2-rank run (4 sequences a rank) and the lone run (8 sequences) of the same config agree
/// over 60 steps: every averager's curve and the final weights within 1e-5.
#[test]
fn two_ranks_equal_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sotu_subset(dir.path(), 30, "byte");
    write(dir.path(), "one.yaml", &run_yaml(&data, "one", 60, 10));
    write(dir.path(), "two.yaml", &run_yaml(&data, "two", 60, 10));
    let o = lawa(&["train", "one.yaml"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = lawa(&["train", "two.yaml", "--nproc", "2"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let curves_apart = max_difference(&curves(&one), &curves(&two));
    let weights_apart = weights_difference(&one, &two);
    println!("2 ranks vs 1 process over 60 steps: curves {curves_apart:.2e} apart, weights {weights_apart:.2e}");
    assert!(curves_apart < 1e-5, "curves {curves_apart}");
    // The same weights at step 0: the ranks' shares of the evaluation (batches of 3 windows,
    // 2 of 3 validation batches on rank 0, 1 on rank 1) combine to one process's numbers.
    let first = |rows: Vec<CurveRow>| {
        let r = rows.into_iter().find(|r| r.step == 0).unwrap();
        (r.val_loss, r.val_loss_se, r.train_loss)
    };
    assert_eq!(
        first(curves(&one)),
        first(curves(&two)),
        "step 0, bit for bit"
    );
    // AdamW divides by the root of the second moment: where a gradient is near zero, rounding
    // moves a weight by a fraction of the learning rate (3e-3), so weights are held to less.
    assert!(weights_apart < 3e-4, "weights {weights_apart}");
    // Step 0 the raw weights alone; step 10 raw, LAWA, EMA; SWA from step 18 on.
    assert_eq!(curves(&two).len(), 1 + 3 + 5 * 4);
}

/// SIGKILL one rank mid-run: the other ends with a message naming the failed collective; the
/// run then resumes as one process and ends where an uninterrupted run ends. (60 steps: over
/// hundreds of steps at this learning rate, rounding differences of any kind, a world size or a
/// thread count, grow chaotically to 1e-2.)
#[test]
fn a_killed_rank_ends_the_other_and_the_run_resumes_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sotu_subset(dir.path(), 30, "byte");
    write(dir.path(), "run.yaml", &run_yaml(&data, "run", 60, 10));
    write(
        dir.path(),
        "straight.yaml",
        &run_yaml(&data, "straight", 60, 10),
    );
    let port = free_port();
    let leader = rank(&["train", "run.yaml"], dir.path(), 0, 2, port);
    let mut follower = rank(&["train", "run.yaml"], dir.path(), 1, 2, port);
    let state = dir.path().join("run/checkpoint/trainer.json");
    let started = Instant::now();
    while !std::fs::read_to_string(&state).is_ok_and(|s| !s.contains("\"step\": 10,")) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint after step 10"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
    assert!(
        !dir.path().join("run/status.json").exists(),
        "killed before the end"
    );
    let killed_at = Instant::now();
    let o = leader.wait_with_output().unwrap();
    let message = stderr(&o);
    assert!(!o.status.success(), "rank 0 went on alone: {message}");
    assert!(
        killed_at.elapsed() < Duration::from_secs(60),
        "rank 0 took {:?}",
        killed_at.elapsed()
    );
    assert!(
        message.contains("error: rank 0 of 2:") && message.contains("failed on rank 0"),
        "{message}"
    );
    assert_eq!(message.trim().lines().count(), 1, "one line: {message}");
    let o = lawa(&["train", "run.yaml"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = lawa(&["train", "straight.yaml"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let (run, straight) = (dir.path().join("run"), dir.path().join("straight"));
    let apart = max_difference(&curves(&run), &curves(&straight));
    println!("killed at 2 ranks, resumed at 1, vs uninterrupted: curves {apart:.2e} apart");
    assert!(apart < 1e-5, "{apart}");
    assert!(weights_difference(&run, &straight) < 3e-4);
}

/// `torchrun --no-python` starts the ranks (its agent serves the store); the result is the
/// lone process's.
#[test]
fn torchrun_launches_the_ranks() {
    let python = PathBuf::from(std::env::var("LAWA_PYTHON").expect("LAWA_PYTHON (cargo config)"));
    let dir = tempfile::tempdir().unwrap();
    let data = common::sotu_subset(dir.path(), 30, "byte");
    write(dir.path(), "one.yaml", &run_yaml(&data, "one", 20, 10));
    write(dir.path(), "two.yaml", &run_yaml(&data, "two", 20, 10));
    assert!(lawa(&["train", "one.yaml"], dir.path()).status.success());
    let o = Command::new(&python)
        .args([
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
        ])
        .arg(free_port().to_string())
        .args([
            "--no-python",
            env!("CARGO_BIN_EXE_lawa"),
            "train",
            "two.yaml",
        ])
        .current_dir(dir.path())
        .env("LAWA_LOG", "warn")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let apart = max_difference(
        &curves(&dir.path().join("one")),
        &curves(&dir.path().join("two")),
    );
    assert!(apart < 1e-5, "{apart}");
}

#[test]
fn a_batch_that_does_not_split_over_the_ranks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sotu_subset(dir.path(), 30, "byte");
    write(dir.path(), "r.yaml", &run_yaml(&data, "r", 20, 10));
    let o = rank(&["train", "r.yaml"], dir.path(), 0, 3, free_port())
        .wait_with_output()
        .unwrap();
    let message = stderr(&o);
    assert!(!o.status.success());
    assert!(
        message.contains("train.batch_size: 8 sequences do not split over 3 ranks"),
        "{message}"
    );
    assert!(!dir.path().join("r").exists(), "nothing written");
}

/// A run that diverges on two ranks fails naming the divergence, and the launcher's closing
/// line points back to it.
#[test]
fn a_diverged_data_parallel_run_names_the_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sotu_subset(dir.path(), 30, "byte");
    let yaml = run_yaml(&data, "div", 40, 10).replace("lr: 3.0e-3", "lr: 1.0e6");
    write(dir.path(), "div.yaml", &yaml);
    let o = lawa(&["train", "div.yaml", "--nproc", "2"], dir.path());
    let message = stderr(&o);
    assert!(!o.status.success(), "{message}");
    assert!(message.contains("error: dp: diverged at step"), "{message}");
    // Said once, by rank 0: every rank sees the same loss.
    assert_eq!(message.matches("WARN dp: diverged").count(), 1, "{message}");
    let last = message.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("failed (exit status: 1; its own message, if it printed one, is above)"),
        "{message}"
    );
}
