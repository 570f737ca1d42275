//! `lawa average`: the mean of saved checkpoints, streamed a chunk at a time (post-hoc LAWA).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lawa_core::checkpoint::{average_checkpoints, AverageReport, TensorFiles};

use crate::posthoc::series::{is_staging, step_in_name};
use crate::train::run_dir::same_file;

/// Which checkpoints to average, and where to write the mean.
#[derive(Debug, Clone, clap::Args)]
pub struct AverageArgs {
    /// Checkpoints: checkpoint folders (GPT-2 or GPT-NeoX; `model.safetensors`, safetensors
    /// shards with an index, or `pytorch_model.bin`, single or sharded), or weights files
    /// (`.safetensors`, `.bin`). With --last: one folder of step-numbered checkpoints.
    #[arg(required = true)]
    pub checkpoints: Vec<PathBuf>,
    /// Output: a `.safetensors` file, or a folder (gets `model.safetensors`, plus the newest
    /// input's `config.json` when there is one).
    #[arg(long)]
    pub out: PathBuf,
    /// Average the latest K checkpoints of the folder.
    #[arg(long, value_name = "K")]
    pub last: Option<usize>,
    /// With --last: checkpoints NU steps apart, counting back from the newest.
    #[arg(long, value_name = "NU", requires = "last")]
    pub every: Option<u64>,
    /// Replace an existing output (a `.safetensors` file, or a folder's `model.safetensors`
    /// and `config.json`); never an input.
    #[arg(long)]
    pub force: bool,
}

/// Whether a checkpoint tensor is a buffer rather than a weight (attention masks and rotary
/// tables of older GPT-2 and Pythia checkpoints): left out of the average.
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || lawa_models::neox::is_ignored_buffer(name)
}

/// The weights of a checkpoint given as a folder or a file.
fn weights_of(path: &Path) -> Result<PathBuf> {
    if path.is_dir() || path.is_file() {
        Ok(path.to_owned())
    } else {
        bail!("{}: checkpoint not found", path.display())
    }
}

/// The `config.json` of a checkpoint given as a folder or as a weights file beside it.
fn config_of(input: &Path) -> PathBuf {
    if input.is_dir() {
        input.join("config.json")
    } else {
        input.parent().unwrap_or(Path::new(".")).join("config.json")
    }
}

/// Refuses checkpoints whose configs name different tokenizers (see
/// [`crate::vocabulary::record`]): their weights index different tokens.
fn ensure_one_tokenizer(inputs: &[PathBuf]) -> Result<()> {
    let mut first: Option<(String, &PathBuf)> = None;
    for input in inputs {
        let config = config_of(input);
        if !config.is_file() {
            continue;
        }
        let Some(name) = crate::vocabulary::recorded(&config)? else {
            continue;
        };
        match &first {
            Some((seen, at)) if !crate::vocabulary::same_tokenizer(seen, &name) => bail!(
                "{} was trained with the tokenizer {seen}, {} with {name}: their weights \
                 index different tokens, and an average of them means nothing",
                at.display(),
                input.display()
            ),
            Some(_) => {}
            None => first = Some((name, input)),
        }
    }
    Ok(())
}

/// Runs `lawa average`.
pub fn run(args: &AverageArgs) -> Result<AverageReport> {
    let inputs: Vec<PathBuf> = match args.last {
        Some(k) => {
            let [dir] = args.checkpoints.as_slice() else {
                bail!("--last takes one folder of step-numbered checkpoints");
            };
            select_latest(dir, k, args.every)?
        }
        None => args
            .checkpoints
            .iter()
            .map(|p| weights_of(p))
            .collect::<Result<_>>()?,
    };
    let to_folder = args.out.extension().is_none_or(|e| e != "safetensors");
    let out_file = if to_folder {
        args.out.join("model.safetensors")
    } else {
        args.out.clone()
    };
    let opened = inputs
        .iter()
        .map(|p| TensorFiles::open(p))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for input in &opened {
        if same_file(&input.path, &out_file) {
            bail!(
                "{}: the output would overwrite an input",
                out_file.display()
            );
        }
    }
    if args.last.is_some() && same_file(&args.out, &args.checkpoints[0]) {
        bail!(
            "--out {}: the folder of the checkpoints to average; choose another",
            args.out.display()
        );
    }
    check_output(&args.out, to_folder, args.force)?;
    ensure_one_tokenizer(&inputs)?;
    warn_repeated(&opened);
    let parent = out_file.parent().unwrap_or(Path::new("."));
    if !parent.as_os_str().is_empty() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create folder", parent.display()))?;
    }
    tracing::info!(
        "averaging {} checkpoints: {}",
        inputs.len(),
        inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let bar = crate::progress::bar(0, "averaging", "bytes");
    let report = average_checkpoints(
        &opened,
        &out_file,
        |n| !is_buffer(n),
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    );
    bar.finish_and_clear();
    let report = report?;
    if to_folder {
        let newest = inputs.last().map(|p| config_of(p));
        if let Some(config) = newest.filter(|c| c.is_file()) {
            let text = std::fs::read(&config)
                .with_context(|| format!("{}: cannot read", config.display()))?;
            lawa_core::checkpoint::write_atomic(&args.out.join("config.json"), &text)
                .with_context(|| format!("{}: cannot write", args.out.display()))?;
        }
    }
    tracing::info!(
        "wrote {}: {} tensors ({} averaged, the rest copied from the newest), {:.1} MB",
        out_file.display(),
        report.tensors,
        report.averaged,
        report.bytes as f64 / 1e6
    );
    Ok(report)
}

/// Refuses an output lawa would not write cleanly: a PyTorch weights name (lawa writes
/// safetensors), an existing file or non-empty folder without `force`, and, even with it, a
/// folder holding weights in another form (the result would be two checkpoints in one).
fn check_output(out: &Path, to_folder: bool, force: bool) -> Result<()> {
    if let Some(ext) = out.extension().and_then(|e| e.to_str()) {
        if ["bin", "pt", "pth", "ckpt"].contains(&ext) {
            bail!(
                "--out {}: lawa writes safetensors; name a `.safetensors` file or a folder",
                out.display()
            );
        }
    }
    if !to_folder {
        if out.exists() && !force {
            bail!(
                "--out {}: exists; pass --force to replace it",
                out.display()
            );
        }
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(out) else {
        if out.exists() {
            bail!("--out {}: exists and is not a folder", out.display());
        }
        return Ok(());
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    if !force {
        bail!(
            "--out {}: the folder is not empty ({}); pass --force to replace its \
             model.safetensors and config.json, or choose another",
            out.display(),
            names.join(", ")
        );
    }
    let other: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with(".bin") || n.ends_with(".index.json") || is_shard(n))
        .collect();
    if !other.is_empty() {
        bail!(
            "--out {}: the folder holds other weights ({}); choose an empty folder",
            out.display(),
            other
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `model-00001-of-00002.safetensors` and the like: one shard of a sharded checkpoint.
fn is_shard(name: &str) -> bool {
    name.ends_with(".safetensors") && name.contains("-of-")
}

/// Warns when one checkpoint is given more than once: it counts once per mention.
fn warn_repeated(inputs: &[TensorFiles]) {
    let mut seen = std::collections::BTreeSet::new();
    for input in inputs {
        let key = input
            .path
            .canonicalize()
            .unwrap_or_else(|_| input.path.clone());
        if !seen.insert(key) {
            tracing::warn!(
                "{}: given more than once; it weighs once per mention in the mean",
                input.path.display()
            );
        }
    }
}

/// From a folder of step-numbered checkpoints (checkpoint folders, or `.safetensors` / `.bin`
/// files), the latest `k`, spaced `every` steps apart when given (counting back
/// from the newest), oldest first. Errors name the missing step.
pub fn select_latest(dir: &Path, k: usize, every: Option<u64>) -> Result<Vec<PathBuf>> {
    if k == 0 {
        bail!("--last must be at least 1");
    }
    if every == Some(0) {
        bail!("--every must be at least 1");
    }
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot read", dir.display()))?;
    let mut found: BTreeMap<u64, PathBuf> = BTreeMap::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("{}: cannot read", dir.display()))?
            .path();
        let usable = !is_staging(&path)
            && if path.is_dir() {
                path.join("config.json").is_file() || path.join("model.safetensors").is_file()
            } else {
                path.extension()
                    .is_some_and(|e| e == "safetensors" || e == "bin")
            };
        if let (Some(step), true) = (step_in_name(&path), usable) {
            if let Some(other) = found.insert(step, path.clone()) {
                bail!(
                    "{} and {} are both checkpoints of step {step}: keep one",
                    other.display(),
                    path.display()
                );
            }
        }
    }
    let Some((&newest, _)) = found.iter().next_back() else {
        bail!("{}: no step-numbered checkpoints", dir.display());
    };
    let mut picked = Vec::new();
    match every {
        None => picked.extend(found.values().rev().take(k).cloned()),
        Some(every) => {
            for i in 0..k as u64 {
                let Some(step) = newest.checked_sub(i * every) else {
                    bail!(
                        "{}: only {i} checkpoints spaced {every} steps back from step {newest}",
                        dir.display()
                    );
                };
                let Some(path) = found.get(&step) else {
                    bail!(
                        "{}: no checkpoint for step {step} (needed for --last {k} --every {every})",
                        dir.display()
                    );
                };
                picked.push(path.clone());
            }
        }
    }
    if picked.len() < k {
        bail!(
            "{}: only {} checkpoints, --last {k} asked for",
            dir.display(),
            picked.len()
        );
    }
    picked.reverse();
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_k_spaced_nu_apart() {
        let dir = tempfile::tempdir().unwrap();
        for step in [100u64, 200, 300, 400, 500, 600] {
            std::fs::write(dir.path().join(format!("ckpt_{step}.safetensors")), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("step-700")).unwrap();
        std::fs::write(dir.path().join("step-700/model.safetensors"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let steps = |v: Vec<PathBuf>| {
            v.iter()
                .map(|p| {
                    step_in_name(p)
                        .or_else(|| step_in_name(p.parent().unwrap()))
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            steps(select_latest(dir.path(), 3, None).unwrap()),
            [500, 600, 700]
        );
        assert_eq!(
            steps(select_latest(dir.path(), 3, Some(200)).unwrap()),
            [300, 500, 700]
        );
        let err = select_latest(dir.path(), 3, Some(150))
            .unwrap_err()
            .to_string();
        assert!(err.contains("step 550"), "{err}");
        let err = select_latest(dir.path(), 9, None).unwrap_err().to_string();
        assert!(err.contains("only 7"), "{err}");
        // A staging folder left by a killed save is not a checkpoint (its digits are a PID).
        let staging = dir.path().join(".step800.partial-31337");
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("model.safetensors"), b"x").unwrap();
        assert_eq!(
            steps(select_latest(dir.path(), 3, None).unwrap()),
            [500, 600, 700]
        );
        // Two checkpoints of one step: which to average is not guessed.
        std::fs::write(dir.path().join("model_600.safetensors"), b"x").unwrap();
        let err = select_latest(dir.path(), 3, None).unwrap_err().to_string();
        assert!(err.contains("both checkpoints of step 600"), "{err}");
        assert!(select_latest(dir.path(), 0, None).is_err());
        assert_eq!(
            step_in_name(Path::new("model_step00500.safetensors")),
            Some(500)
        );
        assert_eq!(step_in_name(Path::new("nodigits")), None);
    }
}
