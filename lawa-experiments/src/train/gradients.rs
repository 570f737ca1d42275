//! The half of an optimizer step that computes the gradients: forward and backward over the
//! step's micro-batches (the loss summed on the device), then gradient clipping. It runs
//! eagerly or, with `train.cuda_graph`, eagerly for a few steps and from then on as a CUDA graph
//! recorded once and replayed every step: the same kernels on the same memory, one launch
//! instead of thousands. The trainer, `lawa bench train` and `lawa bench parity` all take their
//! steps through it.

use anyhow::{bail, Context, Result};
use lawa_core::data::Batch;
use lawa_core::optim::clip_grad_norm;
use lawa_models::{CausalLm, Gpt, LossPlan};
use lawa_ops::CudaGraph;
use tch::{Kind, Tensor};

/// Eager steps a graphed pass takes before it records its graph: they run every kernel the
/// step needs once (lawa's kernels are compiled on first use; cuBLAS and cuDNN choose their
/// plans) and create the gradient tensors the graph accumulates into, as PyTorch asks before a
/// capture.
pub const EAGER_STEPS_BEFORE_GRAPH: u64 = 3;

/// How a step's gradients are computed.
#[derive(Debug, Clone, Copy)]
pub struct GradientRecipe {
    /// Micro-batches per step (each loss is scaled by its reciprocal).
    pub accumulation: usize,
    /// Gradient-norm clipping threshold (0: off).
    pub clip: f64,
    /// How each micro-batch's loss is computed.
    pub loss: LossPlan,
}

/// What a pass computed, on the device (reading it waits for the device).
#[derive(Debug)]
pub struct Gradients {
    /// The micro-batches' losses summed (fp32 scalar).
    pub loss_sum: Tensor,
    /// The gradient norm before clipping (fp32 scalar; 0 without clipping).
    pub norm: Tensor,
}

/// Computes each step's gradients into the model's parameters, eagerly or through a CUDA
/// graph (see the module's documentation).
pub struct GradientPass {
    recipe: GradientRecipe,
    graph: Option<Graphed>,
}

/// A graphed pass: eager steps left before the recording, then the recording.
enum Graphed {
    Warming { eager_left: u64 },
    Recorded(Recorded),
}

/// A recorded pass: the tensors each replay reads the micro-batches from, and those it
/// writes its results to.
struct Recorded {
    inputs: Vec<Batch>,
    outputs: Gradients,
    graph: CudaGraph,
}

impl GradientPass {
    /// A pass that runs eagerly, or with `cuda_graph` from a CUDA graph after
    /// [`EAGER_STEPS_BEFORE_GRAPH`] eager steps.
    pub fn new(recipe: GradientRecipe, cuda_graph: bool) -> Self {
        GradientPass {
            recipe,
            graph: cuda_graph.then_some(Graphed::Warming {
                eager_left: EAGER_STEPS_BEFORE_GRAPH,
            }),
        }
    }

    /// Whether the next [`run`](Self::run) records the graph. Work of other threads on the
    /// device must be finished first (a recording forbids their waits and copies).
    pub fn records_next(&self) -> bool {
        matches!(self.graph, Some(Graphed::Warming { eager_left: 0 }))
    }

    /// Forward and backward over `batches` (one per micro-batch), gradients accumulated into
    /// `gpt`'s parameters (`params`, which hold zeros or no gradient before), then `reduce`
    /// (given the loss sum: a data-parallel run averages the gradients and loss there), then
    /// clipping. A graphed pass records `reduce` with the rest, once, so it may only queue
    /// device work. The results are overwritten by a graphed pass's next run.
    pub fn run(
        &mut self,
        gpt: &Gpt,
        params: &[Tensor],
        batches: &[Batch],
        reduce: impl FnOnce(&Tensor) -> Result<()>,
    ) -> Result<Gradients> {
        let recipe = self.recipe;
        match &mut self.graph {
            None => compute(&recipe, gpt, params, batches, reduce),
            Some(Graphed::Warming { eager_left }) if *eager_left > 0 => {
                *eager_left -= 1;
                compute(&recipe, gpt, params, batches, reduce)
            }
            Some(graphed @ Graphed::Warming { .. }) => {
                let recorded = record(&recipe, gpt, params, batches, reduce)?;
                let out = recorded.replay(batches);
                *graphed = Graphed::Recorded(recorded);
                out
            }
            Some(Graphed::Recorded(recorded)) => recorded.replay(batches),
        }
    }
}

/// The pass itself, as it runs eagerly and as it is recorded.
fn compute(
    recipe: &GradientRecipe,
    gpt: &Gpt,
    params: &[Tensor],
    batches: &[Batch],
    reduce: impl FnOnce(&Tensor) -> Result<()>,
) -> Result<Gradients> {
    let device = gpt.device();
    let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
    for b in batches {
        loss_sum += gpt.loss_backward(&b.x, &b.y, true, recipe.accumulation, recipe.loss)?;
    }
    reduce(&loss_sum)?;
    let norm = if recipe.clip > 0.0 {
        clip_grad_norm(params, recipe.clip)?
    } else {
        Tensor::zeros([], (Kind::Float, device))
    };
    Ok(Gradients { loss_sum, norm })
}

/// Records the pass over copies of `batches`, which every replay refills.
fn record(
    recipe: &GradientRecipe,
    gpt: &Gpt,
    params: &[Tensor],
    batches: &[Batch],
    reduce: impl FnOnce(&Tensor) -> Result<()>,
) -> Result<Recorded> {
    let inputs: Vec<Batch> = batches
        .iter()
        .map(|b| Batch {
            x: b.x.copy(),
            y: b.y.copy(),
        })
        .collect();
    let (graph, outputs) = CudaGraph::capture(gpt.device(), || {
        compute(recipe, gpt, params, &inputs, reduce)
    })
    .context(
        "train.cuda_graph: the step could not be recorded as a CUDA graph (train without \
         cuda_graph to go on)",
    )?;
    Ok(Recorded {
        inputs,
        outputs,
        graph,
    })
}

impl Recorded {
    /// Copies `batches` into the graph's inputs and replays it.
    fn replay(&self, batches: &[Batch]) -> Result<Gradients> {
        if batches.len() != self.inputs.len() {
            bail!(
                "a recorded step takes {} micro-batches, not {}",
                self.inputs.len(),
                batches.len()
            );
        }
        for (input, b) in self.inputs.iter().zip(batches) {
            for (to, from) in [(&input.x, &b.x), (&input.y, &b.y)] {
                if to.size() != from.size() {
                    bail!(
                        "a recorded step takes micro-batches of shape {:?}, not {:?}",
                        to.size(),
                        from.size()
                    );
                }
                to.shallow_clone().f_copy_(from)?;
            }
        }
        self.graph.replay()?;
        Ok(Gradients {
            loss_sum: self.outputs.loss_sum.shallow_clone(),
            norm: self.outputs.norm.shallow_clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lawa_models::{GptConfig, Kernel};
    use tch::nn::VarStore;
    use tch::Device;

    const VOCAB: i64 = 96;

    /// A small GPT-2 and its parameters.
    fn model() -> (VarStore, Gpt, Vec<Tensor>) {
        let vs = VarStore::new(Device::Cpu);
        let mut cfg = GptConfig::preset("tiny", VOCAB as usize).unwrap();
        (cfg.n_layer, cfg.n_embd, cfg.block_size) = (2, 32, 16);
        let gpt = Gpt::new(vs.root(), &cfg).unwrap();
        let params = vs.trainable_variables();
        (vs, gpt, params)
    }

    /// Two models with the same weights (tests run in parallel, so not from a shared seed).
    fn twins() -> [(VarStore, Gpt, Vec<Tensor>); 2] {
        let a = model();
        let mut b = model();
        b.0.copy(&a.0).unwrap();
        [a, b]
    }

    fn batches(n: usize) -> Vec<Batch> {
        (0..n)
            .map(|_| Batch {
                x: Tensor::randint(VOCAB, [2, 16], (Kind::Int64, Device::Cpu)),
                y: Tensor::randint(VOCAB, [2, 16], (Kind::Int64, Device::Cpu)),
            })
            .collect()
    }

    fn recipe(clip: f64) -> GradientRecipe {
        GradientRecipe {
            accumulation: 3,
            clip,
            loss: LossPlan {
                chunk: None,
                kernel: Kernel::Aten,
            },
        }
    }

    fn grads(params: &[Tensor]) -> Vec<Tensor> {
        params.iter().map(|p| p.grad().copy()).collect()
    }

    fn zero(params: &[Tensor]) {
        for p in params {
            let _ = p.grad().zero_();
        }
    }

    /// The pass written out as the trainer took it before: the losses summed, each micro-batch
    /// scaled by 1/3, then clipping; the same loss, norm and gradients bit for bit.
    #[test]
    fn an_eager_pass_is_the_micro_batches_then_clipping_written_out() {
        let data = batches(3);
        let [(_vs, gpt, params), (_vs2, gpt2, params2)] = twins();
        let mut loss_sum = Tensor::zeros([], (Kind::Float, Device::Cpu));
        for b in &data {
            loss_sum += gpt
                .loss_backward(&b.x, &b.y, true, 3, recipe(0.5).loss)
                .unwrap();
        }
        let norm = clip_grad_norm(&params, 0.5).unwrap();
        let want = grads(&params);
        let mut pass = GradientPass::new(recipe(0.5), false);
        let got = pass.run(&gpt2, &params2, &data, |_| Ok(())).unwrap();
        assert!(got.loss_sum.equal(&loss_sum));
        assert!(got.norm.equal(&norm));
        assert!(norm.double_value(&[]) > 0.5, "the test clips");
        for (g, w) in grads(&params2).iter().zip(&want) {
            assert!(g.equal(w));
        }
        // Without clipping the norm is reported as 0 and the gradients are left as they are.
        zero(&params2);
        let got = GradientPass::new(recipe(0.0), false)
            .run(&gpt2, &params2, &data, |_| Ok(()))
            .unwrap();
        assert_eq!(got.norm.double_value(&[]), 0.0);
        assert!(got.loss_sum.equal(&loss_sum));
        let unclipped: f64 = grads(&params2)
            .iter()
            .map(|g| g.square().sum(Kind::Double).double_value(&[]))
            .sum();
        assert!((unclipped.sqrt() - norm.double_value(&[])).abs() < 1e-5 * unclipped.sqrt());
    }

    /// `reduce` sees the loss sum after every backward pass and before clipping: gradients it
    /// doubles are clipped from twice the norm.
    #[test]
    fn reduce_runs_between_the_backward_passes_and_clipping() {
        let data = batches(3);
        let (_vs, gpt, params) = model();
        let plain = GradientPass::new(recipe(0.5), false)
            .run(&gpt, &params, &data, |_| Ok(()))
            .unwrap();
        zero(&params);
        let mut seen = None;
        let doubled = GradientPass::new(recipe(0.5), false)
            .run(&gpt, &params, &data, |loss_sum| {
                seen = Some(loss_sum.copy());
                for p in &params {
                    let _ = p.grad().g_mul_scalar_(2.0);
                }
                Ok(())
            })
            .unwrap();
        assert!(seen.unwrap().equal(&plain.loss_sum));
        let (a, b) = (plain.norm.double_value(&[]), doubled.norm.double_value(&[]));
        assert!((b - 2.0 * a).abs() <= 1e-6 * b, "{a} {b}");
    }

    /// A graphed pass takes its first steps eagerly (the same results as an eager pass), then
    /// records: on the CPU that is refused, naming the setting.
    #[test]
    fn a_graphed_pass_steps_eagerly_then_records_which_the_cpu_refuses() {
        let data = batches(3);
        let [(_vs, gpt, params), (_vs2, gpt2, params2)] = twins();
        let mut graphed = GradientPass::new(recipe(0.5), true);
        let mut eager = GradientPass::new(recipe(0.5), false);
        for _ in 0..EAGER_STEPS_BEFORE_GRAPH {
            assert!(!graphed.records_next());
            let a = graphed.run(&gpt, &params, &data, |_| Ok(())).unwrap();
            let b = eager.run(&gpt2, &params2, &data, |_| Ok(())).unwrap();
            assert!(a.loss_sum.equal(&b.loss_sum) && a.norm.equal(&b.norm));
            zero(&params);
            zero(&params2);
        }
        assert!(graphed.records_next());
        let err = graphed.run(&gpt, &params, &data, |_| Ok(())).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("train.cuda_graph"), "{msg}");
        assert!(msg.contains("needs a CUDA device"), "{msg}");
    }
}
