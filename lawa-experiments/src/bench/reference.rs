//! The PyTorch side of every benchmark: `reference/bench_gpt.py`, run with the reference Python
//! (`$LAWA_PYTHON`, else the bootstrap's torch venv). The scripts are found in
//! `$LAWA_REFERENCE_DIR`, else in the source tree lawa was built from (a binary copied to another
//! machine, as the GPU check does, sets the variable).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The folder of the reference scripts.
pub fn reference_dir() -> PathBuf {
    std::env::var_os("LAWA_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reference"))
}

/// Runs `bench_gpt.py` with `config` and returns the JSON line it prints last.
pub fn run(config: &serde_json::Value) -> Result<serde_json::Value> {
    let python = crate::assets::reference_python();
    let script = reference_dir().join("bench_gpt.py");
    if !script.is_file() {
        bail!(
            "the PyTorch reference script {} is missing (set LAWA_REFERENCE_DIR to the folder \
             holding bench_gpt.py)",
            script.display()
        );
    }
    let out = Command::new(&python)
        .arg(&script)
        .arg(config.to_string())
        .output()
        .with_context(|| {
            format!(
                "running the PyTorch reference with {} (set LAWA_PYTHON)",
                python.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "PyTorch reference failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.trim().lines().last().unwrap_or_default();
    serde_json::from_str(line).context("PyTorch reference printed no result")
}
