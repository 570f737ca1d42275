//! `lawa train <run.yaml>`: train one model, evaluating every configured averager; re-running
//! resumes from the last checkpoint, and a finished run is not redone. Under a launcher
//! (`torchrun --no-python`, `srun`) or with `--nproc N` it is one rank of a data-parallel run.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::train::{train_with, DataParallel, RunConfig, RunOutcome, RunStatus};

/// The run file.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// A run YAML file (a path that does not exist is looked up in configs/).
    pub config: PathBuf,
    /// Train over N processes on this machine (data-parallel; for a CUDA run, one GPU each),
    /// started as `torchrun --nproc-per-node N` would start them.
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
}

/// A config path as given when it exists; else, for a relative path not starting with `.` or
/// `..`, the same under `configs/` (`lr.yaml`, `paper/small.yaml`, or without the `.yaml`) when
/// that exists; else as given (so that the error names what was asked for).
pub fn resolve_config(path: &std::path::Path) -> PathBuf {
    resolve_config_in(path, std::path::Path::new("configs"))
}

fn resolve_config_in(path: &std::path::Path, configs: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let explicit = path.is_absolute()
        || matches!(
            path.components().next(),
            Some(Component::CurDir | Component::ParentDir)
        );
    if path.exists() || explicit {
        return path.to_owned();
    }
    let in_configs = configs.join(path);
    let mut with_ext = in_configs.clone().into_os_string();
    with_ext.push(".yaml");
    [in_configs, PathBuf::from(with_ext)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| path.to_owned())
}

/// Runs `lawa train` (`None` from the process that started `--nproc` ranks). A run that
/// diverged (now or before) is recorded and then reported as an error.
pub fn run(args: &TrainArgs) -> Result<Option<RunOutcome>> {
    if args.nproc == Some(0) {
        bail!("--nproc must be at least 1");
    }
    if let Some(n) = args.nproc.filter(|&n| n > 1) {
        // Checked once here, naming the file, rather than once in every rank.
        let path = resolve_config(&args.config);
        let plan = RunConfig::load(&path)?;
        crate::train::distributed::ensure_batch_splits(&plan.config.train, n)
            .with_context(|| path.display().to_string())?;
        ensure_ranks_fit(n, plan.device)?;
        start_ranks(n)?;
        return Ok(None);
    }
    let mut plan = RunConfig::load(&resolve_config(&args.config))?;
    let parallel = DataParallel::join(&mut plan)?;
    let outcome =
        train_with(&plan, parallel.as_ref(), |_, _| {}).with_context(|| match &parallel {
            Some(p) => format!("rank {} of {}", p.rank(), p.world_size()),
            None => plan.config.name.clone(),
        })?;
    if parallel.as_ref().is_some_and(|p| !p.is_leader()) {
        return Ok(Some(outcome));
    }
    if outcome.status == RunStatus::Diverged {
        // Recorded in status.json (a sweep goes on past it), but this command did not train
        // the model it was asked for: its exit status says so.
        bail!(
            "{}: diverged at step {} (a loss or gradient norm not finite); its evaluations before \
             that are in {}; to train it again, lower train.lr or set train.grad_clip, and change \
             `out` or remove that folder",
            plan.config.name,
            outcome.step,
            plan.dir.join("curves.csv").display()
        );
    }
    tracing::info!(
        "{}: {:?} at step {}, final raw val loss {:.4}; results in {}",
        plan.config.name,
        outcome.status,
        outcome.step,
        outcome.final_val_loss,
        plan.dir.display()
    );
    Ok(Some(outcome))
}

/// Refuses more local ranks than a CUDA run has GPUs (one each), or than a CPU run could
/// sensibly share this machine's cores among (eight a core); warns when CPU ranks outnumber the
/// cores this process may use.
fn ensure_ranks_fit(n: usize, device: tch::Device) -> Result<()> {
    if device.is_cuda() {
        let gpus = tch::Cuda::device_count().max(0) as usize;
        if n > gpus {
            bail!("--nproc {n}: a CUDA run takes one GPU a rank, and {gpus} are visible");
        }
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    if n > 8 * cores {
        bail!(
            "--nproc {n}: {n} CPU ranks on {cores} cores would only contend for them (and each \
             holds its own copy of the model); start at most {cores}"
        );
    }
    if n > cores {
        tracing::warn!("--nproc {n}: more CPU ranks than the {cores} cores this process may use");
    }
    Ok(())
}

/// Re-runs this command as `n` local ranks (its arguments less `--nproc`) and waits for them.
fn start_ranks(n: usize) -> Result<()> {
    let program = std::env::current_exe().context("cannot find this program to start its ranks")?;
    let mut args = Vec::new();
    let mut skip = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            _ if skip => skip = false,
            "--nproc" => skip = true,
            a if a.starts_with("--nproc=") => {}
            _ => args.push(arg),
        }
    }
    tracing::info!("starting {n} ranks");
    Ok(lawa_dist::run_local_ranks(&program, &args, n)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path that exists is taken as it is; one that does not is looked up under configs/,
    /// folders included, with or without `.yaml`; one found nowhere is left as given.
    #[test]
    fn a_config_is_found_as_given_or_under_configs() {
        let root = std::env::temp_dir().join(format!("lawa-resolve-config-{}", std::process::id()));
        let configs = root.join("configs");
        std::fs::create_dir_all(configs.join("paper")).unwrap();
        for name in ["lr.yaml", "paper/small.yaml"] {
            std::fs::write(configs.join(name), "name: x\n").unwrap();
        }
        let resolve = |p: &str| resolve_config_in(std::path::Path::new(p), &configs);
        assert_eq!(resolve("lr.yaml"), configs.join("lr.yaml"));
        assert_eq!(resolve("lr"), configs.join("lr.yaml"));
        assert_eq!(
            resolve("paper/small.yaml"),
            configs.join("paper/small.yaml")
        );
        assert_eq!(resolve("paper/small"), configs.join("paper/small.yaml"));
        assert_eq!(resolve("paper/none.yaml"), PathBuf::from("paper/none.yaml"));
        assert_eq!(
            resolve("paper"),
            PathBuf::from("paper"),
            "a folder is not a config"
        );
        assert_eq!(
            resolve("./lr.yaml"),
            PathBuf::from("./lr.yaml"),
            "said to be here"
        );
        assert_eq!(resolve("../lr.yaml"), PathBuf::from("../lr.yaml"));
        std::fs::write(configs.join("lr-2.5e-3.yaml"), "name: x\n").unwrap();
        assert_eq!(
            resolve("lr-2.5e-3"),
            configs.join("lr-2.5e-3.yaml"),
            "a dot in the name"
        );
        let given = configs.join("lr.yaml");
        assert_eq!(resolve_config_in(&given, &root.join("elsewhere")), given);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
