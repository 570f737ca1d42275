//! Whether a run fits in memory, checked before its folder is touched: how many copies of the
//! model's weights a process holds, and where.

use anyhow::Result;
use lawa_core::averaging::Storage;
use lawa_models::GptConfig;

use super::{AveragerSpec, RunConfig, RunPlan};

/// Copies of the model's weights (fp32 values) one process holds while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightCopies {
    /// On the training device: the weights, gradients, two AdamW moments, an evaluation copy,
    /// the all-reduce's buckets on a rank of a data-parallel run, and the averagers kept there.
    pub on_device: u128,
    /// In host memory: the averagers with `storage: cpu` when training on a GPU, for each
    /// EMA or SWA among them the pinned buffer its updates copy the weights through, and one
    /// such buffer for all the LAWA snapshots there (each counted as two copies: see
    /// [`AveragerSpec::host_staging_copies`]).
    pub on_host: u128,
}

impl WeightCopies {
    /// The copies a process of a run holds. `rank_leads` is `None` for a lone run and, for a rank
    /// of a data-parallel one, whether it is rank 0 (which alone keeps the averagers).
    pub fn of(config: &RunConfig, on_cpu: bool, rank_leads: Option<bool>) -> WeightCopies {
        let buckets = u128::from(rank_leads.is_some());
        let mut copies = WeightCopies {
            on_device: 5 + buckets,
            on_host: 0,
        };
        if rank_leads.unwrap_or(true) {
            let mut snapshots_on_host = false;
            for spec in &config.averagers {
                let n = spec.copies_held().0;
                if kept_on_host(config, spec, on_cpu) {
                    copies.on_host += n + spec.host_staging_copies();
                    snapshots_on_host |= spec.takes_snapshots();
                } else {
                    copies.on_device += n;
                }
            }
            if snapshots_on_host {
                copies.on_host += AveragerSpec::SNAPSHOT_STAGING_COPIES;
            }
        }
        copies
    }
}

/// Whether a process keeps `spec`'s copies in host memory apart from the training device: an
/// averager stored on the CPU (its own `storage`, else the run's) of a run on a GPU. On a CPU
/// run all of it is the device's memory.
fn kept_on_host(config: &RunConfig, spec: &AveragerSpec, on_cpu: bool) -> bool {
    !on_cpu && spec.copies_held().1.unwrap_or(config.averager_storage) == Storage::Cpu
}

/// Refuses a run whose copies of the weights ([`WeightCopies`]) cannot fit in the memory
/// available, with the figure (checked for host memory; libtorch does not say how much a GPU
/// has free). The check is per process: ranks started on one host (`--nproc`) each compare
/// their own copies with the host's free memory, and together need about N times that.
pub fn ensure_fits(plan: &RunPlan, model: &GptConfig, rank_leads: Option<bool>) -> Result<()> {
    let on_cpu = plan.device == tch::Device::Cpu;
    let copies = WeightCopies::of(&plan.config, on_cpu, rank_leads);
    let bytes = |n: u128| model.stored_values() * 4 * n;
    let held = match rank_leads {
        Some(true) => "the weights, gradients, the all-reduce's buckets, two AdamW moments, an evaluation copy and the averagers'",
        Some(false) => "the weights, gradients, the all-reduce's buckets, two AdamW moments and an evaluation copy",
        None => "the weights, gradients, two AdamW moments, an evaluation copy and the averagers'",
    };
    let what = format!(
        "training a GPT-2 of {} ({} copies of its weights: {held}{})",
        model.describe(),
        copies.on_device,
        largest_averager(&plan.config, rank_leads, on_cpu, false)
    );
    lawa_models::memory::ensure_fits(&what, bytes(copies.on_device), plan.device)?;
    let what = format!(
        "the averagers kept in host memory ({} copies of a GPT-2 of {}{})",
        copies.on_host,
        model.describe(),
        largest_averager(&plan.config, rank_leads, on_cpu, true)
    );
    lawa_models::memory::ensure_fits(&what, bytes(copies.on_host), tch::Device::Cpu)?;
    Ok(())
}

/// `; averagers[i] holds n`, for the averager holding the most copies of the weights among
/// those a process keeps (none on a rank other than 0) in host memory (`on_host`) or on the
/// training device (see [`kept_on_host`]), when it holds more than one (a LAWA window): the
/// field a message should say to lower.
fn largest_averager(
    config: &RunConfig,
    rank_leads: Option<bool>,
    on_cpu: bool,
    on_host: bool,
) -> String {
    if rank_leads == Some(false) {
        return String::new();
    }
    config
        .averagers
        .iter()
        .enumerate()
        .filter(|(_, spec)| kept_on_host(config, spec, on_cpu) == on_host)
        .map(|(i, spec)| (spec.copies_held().0, i))
        .max()
        .filter(|&(n, _)| n > 1)
        .map_or(String::new(), |(n, i)| {
            format!("; averagers[{i}] holds {n}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RunConfig {
        // LAWA k = 4 with the default storage, EMA on the host.
        serde_yaml::from_str(
            "name: m\ndata: d\nmodel: {preset: tiny}\ntrain: {steps: 10, batch_size: 2, block_size: 8, lr: 1.0, schedule: {kind: constant}}\neval: {every: 5, windows: 4}\ndevice: cpu\naverager_storage: training\naveragers: [{kind: lawa, k: 4, nu: 2}, {kind: ema, decay: 0.9, storage: cpu}]\n",
        )
        .unwrap()
    }

    #[test]
    fn copies_count_the_averagers_where_they_live_and_the_ranks_buckets() {
        let c = config();
        let copies = |on_cpu, leads| {
            let w = WeightCopies::of(&c, on_cpu, leads);
            (w.on_device, w.on_host)
        };
        // A lone run on a GPU: 5 + LAWA's 4 (and the new snapshot before the oldest goes) on
        // the device, EMA's average and its pinned staging buffer (up to twice the weights) on
        // the host.
        assert_eq!(copies(false, None), (10, 3));
        // Two LAWAs in host memory share one staging buffer for their snapshots.
        let mut host = config();
        host.averager_storage = Storage::Cpu;
        host.averagers.push(host.averagers[0].clone());
        if let AveragerSpec::Lawa { k, .. } = &mut host.averagers[2] {
            *k = 3;
        }
        let w = WeightCopies::of(&host, false, None);
        assert_eq!(
            (w.on_device, w.on_host),
            (5, (4 + 1) + (1 + 2) + (3 + 1) + 2)
        );
        let w = WeightCopies::of(&host, true, None);
        assert_eq!((w.on_device, w.on_host), (5 + (4 + 1) + 1 + (3 + 1), 0));
        // On the CPU everything is host memory.
        assert_eq!(copies(true, None), (11, 0));
        // Rank 0 of a data-parallel run adds the buckets; another rank holds no averager.
        assert_eq!(copies(false, Some(true)), (11, 3));
        assert_eq!(copies(false, Some(false)), (6, 0));
        assert_eq!(copies(true, Some(false)), (6, 0));
    }

    #[test]
    fn the_averager_holding_most_copies_is_named() {
        // LAWA k = 4 holds 5 copies (the new snapshot before the oldest goes), EMA one.
        // A run on a GPU.
        let on_device = |c: &RunConfig, leads| largest_averager(c, leads, false, false);
        let on_host = |c: &RunConfig| largest_averager(c, None, false, true);
        assert_eq!(on_device(&config(), None), "; averagers[0] holds 5");
        assert_eq!(
            on_device(&config(), Some(false)),
            "",
            "a follower holds none"
        );
        assert_eq!(
            on_host(&config()),
            "",
            "only the EMA, one copy, is on the host"
        );
        let mut host = config();
        host.averager_storage = Storage::Cpu;
        assert_eq!(on_host(&host), "; averagers[0] holds 5");
        assert_eq!(on_device(&host, None), "");
        // On a CPU run every averager is in the device's memory.
        assert_eq!(
            largest_averager(&host, None, true, false),
            "; averagers[0] holds 5"
        );
        assert_eq!(largest_averager(&host, None, true, true), "");
    }
}
