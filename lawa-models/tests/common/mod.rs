//! Helpers shared by lawa-models' integration tests: running the Python reference and making
//! deterministic token ids.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::Tensor;

/// The reference Python (`LAWA_PYTHON`, which `.cargo/config.toml` sets for cargo in a checkout).
///
/// `.lawa/python` is a link to a virtual environment's `bin/python`; a venv Python run through a
/// link outside the venv does not find its `pyvenv.cfg` (so not its packages), hence the links
/// are followed until the venv's own path.
pub fn python() -> PathBuf {
    let given =
        PathBuf::from(std::env::var_os("LAWA_PYTHON").expect(
            "LAWA_PYTHON must name the reference Python (run ./test or scripts/bootstrap.sh)",
        ));
    let mut current = given.clone();
    for _ in 0..16 {
        let in_venv = current
            .parent()
            .and_then(Path::parent)
            .is_some_and(|root| root.join("pyvenv.cfg").is_file());
        if in_venv {
            return current;
        }
        match std::fs::read_link(&current) {
            Ok(next) if next.is_absolute() => current = next,
            Ok(next) => current = current.parent().unwrap().join(next),
            Err(_) => break,
        }
    }
    given
}

/// The reference script.
pub fn reference_script() -> PathBuf {
    // From lawa-models or another crate of the workspace.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../lawa-models/tests/reference/gpt2_reference.py")
}

/// Runs `gpt2_reference.py <command> <spec>` and returns its standard output.
pub fn run_reference(command: &str, spec: &serde_json::Value, scratch: &Path) -> String {
    let spec_path = scratch.join(format!("{command}-spec.json"));
    std::fs::write(&spec_path, serde_json::to_vec_pretty(spec).unwrap()).unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(python())
        .arg(reference_script())
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
