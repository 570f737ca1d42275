//! A sweep's runs spread over processes: `--shard I/N` trains a fixed share of them (a Slurm job
//! array, one task per shard, on a shared filesystem); `--devices a,b,...` starts one worker
//! process per device, each taking the next run no other has claimed. Either way each run is
//! trained by one process (its folder's lock), and a final whole `lawa sweep` gathers the
//! results and draws the figures.

use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use anyhow::{bail, Context, Result};

use super::{open, plan_with_data, train_all, Gather, SweepReport};
use crate::train::config::{ensure_available, parse_device};
use crate::train::run_dir::LockMode;

/// How a sweep is divided between processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepOptions {
    /// Train only this share of the runs, and gather nothing.
    pub shard: Option<Shard>,
    /// Train the runs on these devices at once, one worker process each, then gather.
    pub devices: Vec<String>,
    /// A worker of `devices`: train, on this device, every run no other process has, and gather
    /// nothing.
    pub worker: Option<String>,
}

/// Share `index` of `count` (1-based, as `I/N`): the runs whose position in the grid, counted
/// from 0, leaves `index - 1` when divided by `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which share, from 1.
    pub index: usize,
    /// How many shares.
    pub count: usize,
}

impl Shard {
    /// Whether the run at `position` (from 0) of the grid is in this share.
    pub fn holds(&self, position: usize) -> bool {
        position % self.count == self.index - 1
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected I/N with 1 <= I <= N, e.g. 1/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Trains a shard's runs, or a device worker's, holding the sweep's folder shared with the other
/// shards and workers.
pub fn run_part(path: &Path, options: &SweepOptions) -> Result<SweepReport> {
    // Shards and workers never prepare data: several at once on a shared filesystem would race.
    let (cfg, mut runs, dir, _claim) = open(path, false, LockMode::Shared)?;
    let (gather, part) = match (&options.shard, &options.worker) {
        (Some(shard), _) => {
            let mut position = 0..;
            runs.retain(|_| shard.holds(position.next().unwrap_or(0)));
            (Gather::Never, format!("shard {shard}"))
        }
        (None, Some(device)) => {
            let device = parse_device(device)?;
            ensure_available(device)?;
            for r in &mut runs {
                r.plan.device = device;
            }
            (Gather::NeverSkipBusy, format!("worker on {device:?}"))
        }
        (None, None) => bail!("neither a shard nor a device worker"),
    };
    let diverged = train_all(&cfg, &runs, &dir, gather)?;
    tracing::info!(
        "sweep {} {part}: done with {} runs; once every part is done, `lawa sweep {}` gathers the results and draws the figures",
        cfg.name,
        runs.len(),
        path.display()
    );
    Ok(SweepReport {
        dir,
        runs: runs.len(),
        diverged,
    })
}

/// Starts one worker process per device (this program, `sweep PATH --worker DEVICE`) and waits
/// for all of them; fails naming the workers that failed.
pub fn run_on_devices(path: &Path, devices: &[String]) -> Result<()> {
    for d in devices {
        ensure_available(parse_device(d)?)?;
    }
    // Data preparation, once, before the workers start.
    plan_with_data(path, true)?;
    let program = std::env::current_exe().context("cannot find this program to start workers")?;
    let mut workers = Vec::new();
    for device in devices {
        let child = Command::new(&program)
            .arg("sweep")
            .arg(path)
            .args(["--worker", device])
            .spawn()
            .with_context(|| format!("cannot start the worker on {device}"))?;
        workers.push((device, child));
    }
    let mut failed = Vec::new();
    for (device, mut child) in workers {
        let status = child
            .wait()
            .with_context(|| format!("waiting for the worker on {device}"))?;
        if !status.success() {
            failed.push(format!("{device} ({status})"));
        }
    }
    if !failed.is_empty() {
        bail!(
            "the workers on {} failed; their runs resume when the sweep is run again",
            failed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split_the_grid() {
        let s: Shard = "2/3".parse().unwrap();
        let held: Vec<usize> = (0..8).filter(|&i| s.holds(i)).collect();
        assert_eq!(held, [1, 4, 7]);
        assert_eq!(s.to_string(), "2/3");
        for bad in ["0/3", "4/3", "1", "a/b", "1/0"] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains("expected I/N"), "{bad}: {e}");
        }
    }
}
