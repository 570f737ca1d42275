//! Helpers shared by lawa-models' integration tests: running the Python reference and making
//! deterministic token ids.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::Tensor;

/// The reference Python (`LAWA_PYTHON`, which `.cargo/config.toml` sets for cargo in a checkout
/// to `.lawa/python`, a wrapper that runs the bootstrap's venv Python).
pub fn python() -> PathBuf {
    PathBuf::from(
        std::env::var_os("LAWA_PYTHON").expect(
            "LAWA_PYTHON must name the reference Python (run ./test or scripts/bootstrap.sh)",
        ),
    )
}

/// The reference script.
pub fn reference_script() -> PathBuf {
    // From lawa-models or another crate of the workspace.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../lawa-models/tests/reference/gpt2_reference.py")
}

/// Runs `gpt2_reference.py <command> <spec>` and returns its standard output.
pub fn run_reference(command: &str, spec: &serde_json::Value, scratch: &Path) -> String {
    run_script(&reference_script(), command, spec, scratch)
}

/// The GPT-NeoX reference script.
pub fn neox_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../lawa-models/tests/reference/neox_reference.py")
}

/// Runs `<script> <command> <spec>` with the reference Python and returns its standard output.
pub fn run_script(
    script: &Path,
    command: &str,
    spec: &serde_json::Value,
    scratch: &Path,
) -> String {
    let spec_path = scratch.join(format!("{command}-spec.json"));
    std::fs::write(&spec_path, serde_json::to_vec_pretty(spec).unwrap()).unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(python())
        .arg(script)
        .arg(command)
        .arg(&spec_path)
        .output()
        .expect("running the reference Python");
    eprintln!(
        "reference {command}: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "reference {command} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Deterministic pseudo-random token ids in `0..vocab`, shape `[batch, time]`.
pub fn tokens(batch: usize, time: usize, vocab: usize, seed: u64) -> Vec<Vec<i64>> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..batch)
        .map(|_| {
            (0..time)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % vocab as u64) as i64
                })
                .collect()
        })
        .collect()
}

/// `tokens` as an int64 tensor.
pub fn tensor(tokens: &[Vec<i64>]) -> Tensor {
    let flat: Vec<i64> = tokens.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).reshape([tokens.len() as i64, tokens[0].len() as i64])
}

/// The `logits` tensor of a safetensors file the reference wrote.
pub fn read_logits(path: &Path) -> Tensor {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .find(|(name, _)| name == "logits")
        .map(|(_, t)| t)
        .unwrap()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}
