//! The averagers of a run as written in YAML, e.g. `{kind: lawa, k: 5, nu: 50}`,
//! `{kind: ema, decay: 0.99}`, `{kind: swa, start: 0.75}`, and how each becomes a
//! [`lawa_core::averaging`] averager and a set of CSV columns.

use lawa_core::averaging::{Averager, AveragingError, Ema, Lawa, Storage, Swa};
use serde::{Deserialize, Serialize};

use crate::results::{Strategy, StrategyColumns};

fn one() -> u64 {
    1
}

fn ten() -> u64 {
    10
}

/// When SWA starts: an optimizer step, or a fraction of the training run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SwaStart {
    /// At this step.
    Step(u64),
    /// At this fraction of the total steps (0.75 is the paper's "SWA late").
    Fraction(f64),
}

impl SwaStart {
    /// The value as written (a step or a fraction), for the `start` column.
    pub fn value(self) -> f64 {
        match self {
            SwaStart::Step(s) => s as f64,
            SwaStart::Fraction(x) => x,
        }
    }
}

/// An averager as written in a config file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum AveragerSpec {
    /// [`Lawa`]: the latest `k` snapshots every `nu` steps.
    Lawa {
        /// Window size.
        k: usize,
        /// Spacing of snapshots, in steps.
        nu: u64,
        /// Snapshots at `start`, `start + nu`, ... [default 0: the multiples of `nu`].
        #[serde(default)]
        start: u64,
        /// Where snapshots live [default: the run's `averager_storage`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        storage: Option<Storage>,
    },
    /// [`Ema`].
    Ema {
        /// Decay (the ceiling, with `warmup`).
        decay: f64,
        /// The authors' warm-up form.
        #[serde(default)]
        warmup: bool,
        /// Update interval, in steps.
        #[serde(default = "one")]
        every: u64,
        /// First update at this step.
        #[serde(default)]
        start: u64,
        /// Where the average lives [default: the run's `averager_storage`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        storage: Option<Storage>,
    },
    /// [`Swa`].
    Swa {
        /// A step, or a fraction of training in [0, 1).
        start: SwaStart,
        /// Sampling interval, in steps.
        #[serde(default = "ten")]
        every: u64,
        /// Where the average lives [default: the run's `averager_storage`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        storage: Option<Storage>,
    },
}

/// Below this interval, an average kept in host memory on a GPU run is warned about.
const HOST_UPDATE_EVERY: u64 = 10;

impl AveragerSpec {
    /// The warning a GPU run deserves when this averager updates a copy in host memory
    /// (`storage: cpu`) often: each update or snapshot copies every weight to the host on the
    /// GPU's stream, which training's kernels queue behind (the lerp, or the snapshot's copy
    /// out of the pinned buffer, runs on a host thread beside the next step, and the next
    /// update waits for it). On an H200 one EMA update of GPT-2 small took 378 to 418 ms, seven
    /// to eight training steps, when it copied through pageable memory and averaged while
    /// training waited; the pinned, overlapped update since has not been timed on a GPU. Rare
    /// updates (every 10 steps or more; LAWA's `nu`) are not warned about.
    pub fn host_copy_warning(&self, default_storage: Storage) -> Option<String> {
        let (every, storage, what) = match *self {
            AveragerSpec::Ema { every, storage, .. } | AveragerSpec::Swa { every, storage, .. } => {
                (every, storage, "its average")
            }
            AveragerSpec::Lawa { nu, storage, .. } => (nu, storage, "its snapshots"),
        };
        if storage.unwrap_or(default_storage) != Storage::Cpu || every >= HOST_UPDATE_EVERY {
            return None;
        }
        Some(format!(
            "{} (every {every} steps) keeps {what} in host memory: on a GPU each update \
             copies all weights to the host, and training's kernels wait for that copy (the \
             rest runs on a host thread beside the next step); keep it on the device \
             (storage: training) or update it every {HOST_UPDATE_EVERY} steps or more",
            self.kind()
        ))
    }

    /// Builds the averager for a run of `total_steps` (which resolves fractional starts and
    /// refuses starts after the end), keeping its copies in its own storage or `default_storage`.
    pub fn build(
        &self,
        total_steps: u64,
        default_storage: Storage,
    ) -> Result<Box<dyn Averager>, AveragingError> {
        let after_end = |start: u64| -> Result<(), AveragingError> {
            if start > total_steps {
                return Err(AveragingError::InvalidParameter {
                    averager: self.kind().into(),
                    field: "start",
                    value: start.to_string(),
                    reason: format!("after the end of training (step {total_steps})"),
                });
            }
            Ok(())
        };
        // An averager whose first update comes after the last step would never be ready, and
        // never evaluated: refused, naming its interval.
        let first_after_end = |field: &'static str, every: u64, first: u64| {
            if first > total_steps {
                return Err(AveragingError::InvalidParameter {
                    averager: self.kind().into(),
                    field,
                    value: every.to_string(),
                    reason: format!(
                        "its first update would come at step {first}, after the end of training \
                         (step {total_steps}), so it would never be evaluated"
                    ),
                });
            }
            Ok(())
        };
        Ok(match *self {
            AveragerSpec::Lawa {
                k,
                nu,
                start,
                storage,
            } => {
                after_end(start)?;
                let lawa = Lawa::new(k, nu)?.start(start);
                first_after_end("nu", nu, lawa.first_update())?;
                Box::new(lawa.storage(storage.unwrap_or(default_storage)))
            }
            AveragerSpec::Ema {
                decay,
                warmup,
                every,
                start,
                storage,
            } => {
                after_end(start)?;
                let ema = if warmup {
                    Ema::with_warmup(decay)?
                } else {
                    Ema::new(decay)?
                };
                let ema = ema.every(every)?.start(start);
                first_after_end("every", every, ema.first_update())?;
                Box::new(ema.storage(storage.unwrap_or(default_storage)))
            }
            AveragerSpec::Swa {
                start,
                every,
                storage,
            } => {
                let swa = Swa::new().every(every)?;
                let swa = match start {
                    SwaStart::Step(s) => {
                        after_end(s)?;
                        swa.start(s)
                    }
                    SwaStart::Fraction(x) => swa.start_fraction(x, total_steps)?,
                };
                first_after_end("every", every, swa.first_update())?;
                Box::new(swa.storage(storage.unwrap_or(default_storage)))
            }
        })
    }

    /// At most how many copies of the weights this averager holds (LAWA: its window, and one
    /// more for the moment a new snapshot is taken before the oldest is dropped; EMA, SWA: one),
    /// and the storage it asks for.
    pub fn copies_held(&self) -> (u128, Option<Storage>) {
        match *self {
            AveragerSpec::Lawa { k, storage, .. } => (k as u128 + 1, storage),
            AveragerSpec::Ema { storage, .. } | AveragerSpec::Swa { storage, .. } => (1, storage),
        }
    }

    /// Extra copies in host memory when the average is kept there and the weights are on a
    /// GPU: EMA and SWA copy the weights through a pinned buffer of their own, one allocation
    /// that libtorch's pinned-memory allocator rounds up to a power of two, so counted as two
    /// copies (at most twice the weights; GPT-2 small's 475 MiB take 512). LAWA's snapshots
    /// go through one such buffer shared by every LAWA of the run
    /// ([`SNAPSHOT_STAGING_COPIES`](Self::SNAPSHOT_STAGING_COPIES)), so none of its own.
    pub fn host_staging_copies(&self) -> u128 {
        match self {
            AveragerSpec::Lawa { .. } => 0,
            AveragerSpec::Ema { .. } | AveragerSpec::Swa { .. } => 2,
        }
    }

    /// The copies the pinned buffer all host snapshots of a GPU's weights go through counts
    /// as (see [`host_staging_copies`](Self::host_staging_copies)).
    pub const SNAPSHOT_STAGING_COPIES: u128 = 2;

    /// Whether this averager keeps snapshots (LAWA) rather than a running average.
    pub fn takes_snapshots(&self) -> bool {
        matches!(self, AveragerSpec::Lawa { .. })
    }

    fn kind(&self) -> &'static str {
        match self {
            AveragerSpec::Lawa { .. } => "lawa",
            AveragerSpec::Ema { .. } => "ema",
            AveragerSpec::Swa { .. } => "swa",
        }
    }

    /// The `strategy, k, nu, decay, start, every` columns of this averager's CSV rows.
    pub fn columns(&self) -> StrategyColumns {
        match *self {
            AveragerSpec::Lawa { k, nu, start, .. } => StrategyColumns {
                strategy: Some(Strategy::Lawa),
                k: Some(k as u64),
                nu: Some(nu),
                start: Some(start as f64),
                every: Some(nu),
                ..Default::default()
            },
            AveragerSpec::Ema {
                decay,
                warmup,
                every,
                start,
                ..
            } => StrategyColumns {
                strategy: Some(if warmup {
                    Strategy::EmaWarmup
                } else {
                    Strategy::Ema
                }),
                decay: Some(decay),
                start: Some(start as f64),
                every: Some(every),
                ..Default::default()
            },
            AveragerSpec::Swa { start, every, .. } => StrategyColumns {
                strategy: Some(Strategy::Swa),
                start: Some(start.value()),
                every: Some(every),
                ..Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequent_updates_in_host_memory_are_warned_about_and_nothing_else() {
        let ema = |every, storage| AveragerSpec::Ema {
            decay: 0.99,
            warmup: false,
            every,
            start: 0,
            storage,
        };
        let warning = ema(1, None).host_copy_warning(Storage::Cpu).unwrap();
        assert!(warning.starts_with("ema (every 1 steps) keeps its average in host memory"));
        assert!(ema(1, None).host_copy_warning(Storage::Training).is_none());
        assert!(ema(9, Some(Storage::Cpu))
            .host_copy_warning(Storage::Training)
            .is_some());
        assert!(ema(10, Some(Storage::Cpu))
            .host_copy_warning(Storage::Cpu)
            .is_none());
        let swa = AveragerSpec::Swa {
            start: SwaStart::Step(0),
            every: 5,
            storage: None,
        };
        assert!(swa
            .host_copy_warning(Storage::Cpu)
            .unwrap()
            .starts_with("swa (every 5 steps)"));
        let lawa = AveragerSpec::Lawa {
            k: 5,
            nu: 1,
            start: 0,
            storage: Some(Storage::Cpu),
        };
        assert!(lawa
            .host_copy_warning(Storage::Training)
            .unwrap()
            .starts_with("lawa (every 1 steps) keeps its snapshots in host memory"));
        let lawa = AveragerSpec::Lawa {
            k: 5,
            nu: 10,
            start: 0,
            storage: None,
        };
        assert!(lawa.host_copy_warning(Storage::Cpu).is_none());
    }

    #[test]
    fn specs_parse_build_and_label() {
        let specs: Vec<AveragerSpec> = serde_json::from_str(
            r#"[{"kind": "lawa", "k": 5, "nu": 50},
                {"kind": "lawa", "k": 5, "nu": 50, "start": 1000, "storage": "cpu"},
                {"kind": "ema", "decay": 0.99},
                {"kind": "ema", "decay": 0.9, "warmup": true},
                {"kind": "ema", "decay": 0.999, "every": 10, "start": 100},
                {"kind": "swa", "start": 0.75},
                {"kind": "swa", "start": 5000, "every": 5}]"#,
        )
        .unwrap();
        let labels: Vec<String> = specs
            .iter()
            .map(|s| s.build(70_000, Storage::Training).unwrap().label())
            .collect();
        assert_eq!(
            labels,
            [
                "lawa_k5_nu50",
                "lawa_k5_nu50_start1000",
                "ema_0.99",
                "ema_0.9_warmup",
                "ema_0.999_every10_start100",
                "swa_start0.75_every10",
                "swa_start5000_every5"
            ]
        );
        assert_eq!(specs[5].columns().start, Some(0.75));
        assert_eq!(specs[0].columns().every, Some(50));
        let unknown = serde_json::from_str::<AveragerSpec>(
            r#"{"kind": "lawa", "k": 5, "nu": 5, "window": 3}"#,
        );
        assert!(unknown.unwrap_err().to_string().contains("window"));
    }

    #[test]
    fn starts_after_the_end_are_refused() {
        let msg = |s: AveragerSpec| s.build(1000, Storage::Training).err().unwrap().to_string();
        let lawa = AveragerSpec::Lawa {
            k: 5,
            nu: 10,
            start: 5000,
            storage: None,
        };
        assert!(msg(lawa).contains("start = 5000"));
        let swa = AveragerSpec::Swa {
            start: SwaStart::Step(2000),
            every: 10,
            storage: None,
        };
        assert!(msg(swa).contains("after the end of training"));
        let swa = AveragerSpec::Swa {
            start: SwaStart::Fraction(1.5),
            every: 10,
            storage: None,
        };
        assert!(msg(swa).contains("start = 1.5"));
    }

    /// An averager whose first update would come after the last step would never be
    /// evaluated: refused, naming the interval; one that updates at the last step is not.
    #[test]
    fn first_updates_after_the_end_are_refused() {
        let build = |s: AveragerSpec| s.build(1000, Storage::Training).map(|_| ());
        let lawa = |nu, start| AveragerSpec::Lawa {
            k: 2,
            nu,
            start,
            storage: None,
        };
        let msg = build(lawa(100_000, 0)).unwrap_err().to_string();
        assert!(
            msg.contains("nu = 100000") && msg.contains("never be evaluated"),
            "{msg}"
        );
        assert!(build(lawa(1000, 0)).is_ok());
        assert!(build(lawa(100_000, 10)).is_ok(), "a snapshot at step 10");
        let ema = AveragerSpec::Ema {
            decay: 0.9,
            warmup: false,
            every: 1001,
            start: 0,
            storage: None,
        };
        assert!(build(ema).unwrap_err().to_string().contains("every = 1001"));
        let swa = |start| AveragerSpec::Swa {
            start,
            every: 5000,
            storage: None,
        };
        assert!(build(swa(SwaStart::Fraction(0.0))).is_err());
        assert!(
            build(swa(SwaStart::Fraction(0.5))).is_ok(),
            "a sample at step 500"
        );
    }
}
