//! Averaging gradients across ranks in buckets, as DDP does: the parameters' gradients packed
//! into a few flat buckets, every bucket's all-reduce started at once, then unpacked. Unlike
//! DDP it runs after the backward pass, not overlapped with it.

use tch::{Kind, Tensor};

use crate::{DistError, ProcessGroup, ReduceOp};

/// In what precision gradients travel between ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReducePrecision {
    /// The gradients' own dtype (bf16 parameters' gradients travel as bf16), as DDP does.
    #[default]
    Gradient,
    /// Always fp32: exact sums of bf16 gradients, at twice the traffic.
    Float32,
}

/// DDP's default bucket size.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Packs parameters' gradients into buckets and averages them across a group.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use lawa_dist::{Backend, GradientReducer, Launch, ProcessGroup, ReducePrecision};
/// let launch = Launch::from_env()?.expect("under a launcher");
/// let group = ProcessGroup::join(Backend::Gloo, &launch)?;
/// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
/// let linear = tch::nn::linear(vs.root(), 4, 2, Default::default());
/// let reducer = GradientReducer::new(&vs.trainable_variables(), 1 << 20, ReducePrecision::Gradient);
/// let x = tch::Tensor::ones([3, 4], (tch::Kind::Float, tch::Device::Cpu));
/// let loss = x.apply(&linear).sum(tch::Kind::Float);
/// loss.backward();
/// reducer.average(&group, &[&loss.detach()])?; // gradients and loss now mean over ranks
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct GradientReducer {
    buckets: Vec<Vec<Tensor>>,
    precision: ReducePrecision,
}

impl GradientReducer {
    /// Buckets of at most `bucket_bytes` (a larger parameter gets one of its own), each of one
    /// dtype, over `params` in order.
    pub fn new(params: &[Tensor], bucket_bytes: usize, precision: ReducePrecision) -> Self {
        let mut buckets: Vec<Vec<Tensor>> = Vec::new();
        let mut bytes = 0usize;
        let mut kind = None;
        for p in params {
            let size = p.numel() * p.kind().elt_size_in_bytes();
            let fits = bytes + size <= bucket_bytes && kind == Some(p.kind());
            match buckets.last_mut() {
                Some(bucket) if fits || bucket.is_empty() => bucket.push(p.shallow_clone()),
                _ => {
                    buckets.push(vec![p.shallow_clone()]);
                    bytes = 0;
                }
            }
            bytes += size;
            kind = Some(p.kind());
        }
        GradientReducer { buckets, precision }
    }

    /// The number of buckets.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Replaces every parameter's gradient (each must have one: run the backward pass first) and each of
    /// `extras` (contiguous, on the parameters' device) by its mean over the ranks: summed by
    /// the backend, divided by the world size here.
    pub fn average(&self, group: &ProcessGroup, extras: &[&Tensor]) -> Result<(), DistError> {
        let _guard = tch::no_grad_guard();
        if let Some(i) = self
            .buckets
            .iter()
            .flatten()
            .position(|p| !p.grad().defined())
        {
            return Err(DistError::Diverged {
                rank: group.rank(),
                message: format!("parameter {i} has no gradient to average"),
            });
        }
        let flats: Vec<Tensor> = self.buckets.iter().map(|b| self.pack(b)).collect();
        let mut all: Vec<&Tensor> = flats.iter().collect();
        all.extend_from_slice(extras);
        group.all_reduce(&all, ReduceOp::Sum)?;
        let world = group.world_size() as f64;
        for (bucket, mut flat) in self.buckets.iter().zip(flats) {
            let _ = flat.g_div_scalar_(world);
            let sizes: Vec<i64> = bucket.iter().map(|p| p.numel() as i64).collect();
            for (p, piece) in bucket.iter().zip(flat.split_with_sizes(&sizes, 0)) {
                p.grad().copy_(&piece.view(p.size().as_slice()));
            }
        }
        for e in extras {
            let _ = e.shallow_clone().g_div_scalar_(world);
        }
        Ok(())
    }

    fn pack(&self, bucket: &[Tensor]) -> Tensor {
        let kind = match self.precision {
            ReducePrecision::Float32 => Kind::Float,
            ReducePrecision::Gradient => bucket[0].kind(),
        };
        let pieces: Vec<Tensor> = bucket
            .iter()
            .map(|p| p.grad().reshape(-1).to_kind(kind))
            .collect();
        Tensor::cat(&pieces, 0)
    }
}
