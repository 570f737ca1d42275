//! Helpers shared by the command-line tests: running the `lawa` binary and preparing a small
//! real dataset from the SOTU corpus.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the built `lawa` binary in `cwd` with only warnings logged.
pub fn lawa(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lawa"))
        .args(args)
        .current_dir(cwd)
        .env("LAWA_LOG", "warn")
        .output()
        .unwrap()
}

/// Every `every`-th SOTU address (in path order) prepared with `tokenizer` into `dir/data`
/// (validation fraction 0.1).
pub fn sotu_subset(dir: &Path, every: usize, tokenizer: &str) -> PathBuf {
    let sotu = lawa_experiments::assets::sotu_dir().unwrap();
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&sotu)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "txt"));
    files.sort();
    for f in files.iter().step_by(every) {
        std::fs::copy(f, corpus.join(f.file_name().unwrap())).unwrap();
    }
    let args = [
        "prepare",
        "corpus",
        "--out",
        "data",
        "--tokenizer",
        tokenizer,
        "--val-fraction",
        "0.1",
    ];
    let o = lawa(&args, dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    dir.join("data")
}
