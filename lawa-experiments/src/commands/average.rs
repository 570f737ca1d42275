//! `lawa average`: the mean of saved checkpoints, streamed a chunk at a time (post-hoc LAWA).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lawa_core::checkpoint_average::{average_safetensors, select_latest, AverageReport};

/// Which checkpoints to average, and where to write the mean.
#[derive(Debug, Clone, clap::Args)]
pub struct AverageArgs {
    /// Checkpoints: safetensors files, or checkpoint folders holding `model.safetensors`.
    /// With --last: one folder of step-numbered checkpoints.
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
}

fn model_file(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        let file = path.join("model.safetensors");
        if !file.is_file() {
            bail!("{}: folder holds no model.safetensors", path.display());
        }
        Ok(file)
    } else if path.is_file() {
        Ok(path.to_owned())
    } else {
        bail!("{}: checkpoint not found", path.display())
    }
}

/// Runs `lawa average`.
pub fn run(args: &AverageArgs) -> Result<AverageReport> {
    let inputs: Vec<PathBuf> = match args.last {
        Some(k) => {
            let [dir] = args.checkpoints.as_slice() else {
                bail!("--last takes one folder of step-numbered checkpoints");
            };
            select_latest(dir, k, args.every).map_err(anyhow::Error::msg)?
        }
        None => args
            .checkpoints
            .iter()
            .map(|p| model_file(p))
            .collect::<Result<_>>()?,
    };
    let to_folder = args.out.extension().is_none_or(|e| e != "safetensors");
    let out_file = if to_folder {
        args.out.join("model.safetensors")
    } else {
        args.out.clone()
    };
    for input in &inputs {
        if input.canonicalize().ok() == out_file.canonicalize().ok() && out_file.exists() {
            bail!(
                "{}: the output would overwrite an input",
                out_file.display()
            );
        }
    }
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
    let report = average_safetensors(&inputs, &out_file, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = report?;
    if to_folder {
        let newest = inputs
            .last()
            .and_then(|p| p.parent())
            .map(|d| d.join("config.json"));
        if let Some(config) = newest.filter(|c| c.is_file()) {
            let text = std::fs::read(&config)
                .with_context(|| format!("{}: cannot read", config.display()))?;
            lawa_core::fsutil::write_atomic(&args.out.join("config.json"), &text)
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
