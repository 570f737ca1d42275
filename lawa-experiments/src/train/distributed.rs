//! One run over several processes (data parallelism, as PyTorch's DDP): every rank holds the
//! model and optimizer, trains on its share of each global batch, and averages gradients with
//! the others before the one optimizer step they all take. Rank 0 alone runs the averagers and
//! writes the run folder; every rank scores its share of the evaluation windows, each average
//! sent from rank 0, and the shares are combined into the numbers one process would give.

use anyhow::{bail, Context, Result};
use lawa_core::averaging::Weights;
use lawa_core::data::ValidationWindows;
use lawa_core::optim::AdamW;
use lawa_dist::{
    ensure_identical, Backend, GradientReducer, Launch, ProcessGroup, ReduceOp, ReducePrecision,
    DEFAULT_BUCKET_BYTES,
};
use lawa_models::CausalLm;
use tch::{Kind, Tensor};

use super::checkpoint::TrainerState;
use super::evaluate::{combine, score_share, BatchScore, WindowLosses};
use super::RunPlan;

/// This process's part in a data-parallel run.
#[derive(Debug)]
pub struct DataParallel {
    group: ProcessGroup,
    launch: Launch,
    /// Where this rank's tensors live (NCCL collectives take CUDA tensors only).
    device: tch::Device,
    /// Seconds spent averaging gradients, and the number of averagings.
    reducing: std::cell::Cell<(f64, u64)>,
}

/// Refuses a global batch that does not split evenly over `world_size` ranks.
pub fn ensure_batch_splits(t: &super::config::TrainSpec, world_size: usize) -> Result<()> {
    if !t.batch_size.is_multiple_of(world_size) {
        bail!(
            "train.batch_size: {} sequences do not split over {world_size} ranks; the global \
             batch must be a multiple of the world size",
            t.batch_size
        );
    }
    Ok(())
}

impl DataParallel {
    /// Joins the process group the launcher's variables describe (`None` for a lone process):
    /// Gloo for a CPU run, NCCL for CUDA, where the device becomes `cuda:LOCAL_RANK`. Refuses a
    /// batch that does not split evenly over the ranks.
    pub fn join(plan: &mut RunPlan) -> Result<Option<DataParallel>> {
        let Some(launch) = Launch::from_env()? else {
            return Ok(None);
        };
        ensure_batch_splits(&plan.config.train, launch.world_size)?;
        if plan.device.is_cuda() {
            // One GPU visible (srun --gpus-per-task 1, CUDA_VISIBLE_DEVICES per rank): it is
            // this rank's. Otherwise the local rank picks it.
            let visible = if tch::Cuda::is_available() {
                tch::Cuda::device_count() as usize
            } else {
                0
            };
            let index = if visible == 1 { 0 } else { launch.local_rank };
            plan.device = tch::Device::Cuda(index);
            super::config::ensure_available(plan.device).with_context(|| {
                format!("rank {} (local rank {})", launch.rank, launch.local_rank)
            })?;
            lawa_dist::set_cuda_device(index);
        }
        let backend = Backend::for_device(plan.device);
        let group = ProcessGroup::join(backend, &launch)?;
        tracing::debug!(
            "rank {} of {} joined ({backend:?})",
            launch.rank,
            launch.world_size
        );
        Ok(Some(DataParallel {
            group,
            launch,
            device: plan.device,
            reducing: Default::default(),
        }))
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.launch.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.launch.world_size
    }

    /// The collective engine.
    pub fn backend(&self) -> Backend {
        self.group.backend()
    }

    /// Whether this rank evaluates and writes (rank 0).
    pub fn is_leader(&self) -> bool {
        self.launch.is_leader()
    }

    /// The gradient reducer for `params`.
    pub fn reducer(&self, params: &[Tensor], fp32: bool) -> GradientReducer {
        let precision = if fp32 {
            ReducePrecision::Float32
        } else {
            ReducePrecision::Gradient
        };
        GradientReducer::new(params, DEFAULT_BUCKET_BYTES, precision)
    }

    /// Averages the gradients of `reducer`'s parameters and `loss` over the ranks (timed:
    /// see [`reduce_seconds`](Self::reduce_seconds)).
    pub fn average(&self, reducer: &GradientReducer, loss: &Tensor) -> Result<()> {
        let started = std::time::Instant::now();
        reducer.average(&self.group, &[loss])?;
        if self.group.backend() == Backend::Nccl {
            if let tch::Device::Cuda(i) = loss.device() {
                tch::Cuda::synchronize(i as i64);
            }
        }
        let (seconds, count) = self.reducing.get();
        self.reducing
            .set((seconds + started.elapsed().as_secs_f64(), count + 1));
        Ok(())
    }

    /// Seconds this process has spent averaging gradients (packing, all-reduce, unpacking),
    /// and how many times.
    pub fn reduce_seconds(&self) -> (f64, u64) {
        self.reducing.get()
    }

    /// Rank 0's `flag` on every rank (whether the run is to go on, say).
    pub fn agree(&self, flag: bool) -> Result<bool> {
        Ok(self.agree_all(&[flag])?[0])
    }

    /// Rank 0's `flags` on every rank, which pass as many (and whatever values they hold).
    pub fn agree_all(&self, flags: &[bool]) -> Result<Vec<bool>> {
        let values: Vec<i64> = flags.iter().map(|&f| i64::from(f)).collect();
        let t = Tensor::from_slice(&values).to_device(self.device);
        self.group.broadcast(&[&t], 0)?;
        let values = Vec::<i64>::try_from(t.to_device(tch::Device::Cpu))?;
        Ok(values.into_iter().map(|v| v != 0).collect())
    }

    /// Makes every rank's `weights` rank 0's (an average, which rank 0 alone computes).
    pub fn take_leaders_weights(&self, weights: &Weights) -> Result<()> {
        let tensors: Vec<&Tensor> = weights.iter().map(|(_, t)| t).collect();
        self.group
            .broadcast(&tensors, 0)
            .context("taking rank 0's average")?;
        Ok(())
    }

    /// The losses of `model` (the same weights on every rank) on `windows` in batches of
    /// `batch_size`, each rank scoring every `world_size`-th batch: equal, bit for bit, to
    /// [`evaluate`](super::evaluate::evaluate) in one process, on every rank.
    pub fn evaluate(
        &self,
        model: &dyn CausalLm,
        windows: &ValidationWindows,
        batch_size: usize,
    ) -> Result<WindowLosses> {
        let size = batch_size.max(1);
        let (count, batches) = (windows.len(), windows.len().div_ceil(size));
        let mine = score_share(model, windows, size, self.rank(), self.world_size())?;
        // Each batch's mean, then each window's loss; zeros where another rank scored, so the
        // sum over ranks is every number exactly.
        let mut packed = vec![0f64; batches + count];
        for (i, score) in &mine {
            packed[*i] = score.mean;
            let first = batches + i * size;
            packed[first..first + score.per_window.len()].copy_from_slice(&score.per_window);
        }
        let t = Tensor::from_slice(&packed).to_device(self.device);
        self.group
            .all_reduce(&[&t], ReduceOp::Sum)
            .context("gathering the evaluation's shares")?;
        let all = Vec::<f64>::try_from(t.to_device(tch::Device::Cpu))?;
        let block = windows.block_size() as u64;
        combine((0..batches).map(|i| {
            let per_window =
                all[batches + i * size..batches + ((i + 1) * size).min(count)].to_vec();
            BatchScore {
                mean: all[i],
                tokens: per_window.len() as u64 * block,
                per_window,
            }
        }))
    }

    /// Makes every rank's weights, AdamW moments and trainer state rank 0's (the model that
    /// rank 0 built or resumed from its checkpoint).
    pub fn take_leaders_state(
        &self,
        params: &[Tensor],
        optimizer: &mut AdamW,
        state: &mut TrainerState,
    ) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let mut tensors: Vec<Tensor> = params.iter().map(Tensor::detach).collect();
        tensors.extend(optimizer.moments());
        let word_pos = state.sampler.word_pos;
        let scalars = Tensor::from_slice(&[
            state.step as i64,
            state.tokens as i64,
            state.sampler.seed as i64,
            word_pos as u64 as i64,
            (word_pos >> 64) as u64 as i64,
            state.wall_time.to_bits() as i64,
            optimizer.steps() as i64,
        ]);
        let on_device: Vec<Tensor> = tensors.iter().map(Tensor::shallow_clone).collect();
        let mut all: Vec<&Tensor> = on_device.iter().collect();
        // Gloo broadcasts host tensors; NCCL device tensors.
        let scalars = scalars.to_device(self.device);
        all.push(&scalars);
        self.group
            .broadcast(&all, 0)
            .context("taking rank 0's state")?;
        let s = Vec::<i64>::try_from(scalars.to_device(tch::Device::Cpu))?;
        state.step = s[0] as u64;
        state.tokens = s[1] as u64;
        state.sampler.seed = s[2] as u64;
        state.sampler.word_pos = (s[3] as u64 as u128) | ((s[4] as u64 as u128) << 64);
        state.wall_time = f64::from_bits(s[5] as u64);
        optimizer.set_steps(s[6] as u64);
        Ok(())
    }

    /// Fails on every rank unless all hold the same weights (checked at each checkpoint).
    pub fn ensure_same_weights(&self, params: &[Tensor], step: u64) -> Result<()> {
        let detached: Vec<Tensor> = params
            .iter()
            .map(|p| p.detach().to_kind(Kind::Float))
            .collect();
        Ok(ensure_identical(
            &self.group,
            &detached,
            &format!("the weights at step {step}"),
        )?)
    }
}
