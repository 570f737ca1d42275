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

/// The largest difference accepted between a recorded step's first replay and the same step
/// taken eagerly, relative to the eager step's loss, gradient norm and largest gradient: a
/// replay computes the same kernels on the same values, so anything beyond rounding means the
/// recording is wrong (gradients doubled or not zeroed, inputs not refilled), and the run stops.
pub const RECORDING_TOLERANCE: f64 = 1e-2;

/// How a recorded step's first replay compared with the same step taken eagerly, each as a
/// difference relative to the eager step's value.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RecordingCheck {
    /// |loss difference| / |eager loss|.
    pub loss: f64,
    /// |gradient-norm difference| / eager norm (0 without clipping).
    pub norm: f64,
    /// The largest |gradient difference| / the eager step's largest |gradient|.
    pub gradients: f64,
}

/// "loss …, gradient norm …, gradients … of the largest": how the logs, the benchmarks and the
/// error state the three differences.
impl std::fmt::Display for RecordingCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loss {:.1e}, gradient norm {:.1e}, gradients {:.1e} of the largest",
            self.loss, self.norm, self.gradients
        )
    }
}

impl RecordingCheck {
    /// Whether every difference is at most `tolerance` (a NaN is not).
    pub fn within(&self, tolerance: f64) -> bool {
        [self.loss, self.norm, self.gradients]
            .iter()
            .all(|d| *d <= tolerance)
    }
}

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
    /// The recording's check against the eager step, once recorded.
    check: Option<RecordingCheck>,
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
            check: None,
        }
    }

    /// How the recorded step compared with the same step taken eagerly (`None` until recorded).
    pub fn recording_check(&self) -> Option<RecordingCheck> {
        self.check
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
    ///
    /// The step that records the graph also takes the step eagerly first (holding a copy of its
    /// gradients: one more copy of the weights, for that step) and compares the first replay
    /// with it ([`RecordingCheck`]); beyond [`RECORDING_TOLERANCE`] it is an error.
    pub fn run(
        &mut self,
        gpt: &Gpt,
        params: &[Tensor],
        batches: &[Batch],
        mut reduce: impl FnMut(&Tensor) -> Result<()>,
    ) -> Result<Gradients> {
        let recipe = self.recipe;
        match &mut self.graph {
            None => compute(&recipe, gpt, params, batches, &mut reduce),
            Some(Graphed::Warming { eager_left }) if *eager_left > 0 => {
                *eager_left -= 1;
                compute(&recipe, gpt, params, batches, &mut reduce)
            }
            Some(graphed @ Graphed::Warming { .. }) => {
                let (recorded, out, check) =
                    record_checked(&recipe, gpt, params, batches, &mut reduce)?;
                *graphed = Graphed::Recorded(recorded);
                self.check = Some(check);
                Ok(out)
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
    mut reduce: impl FnMut(&Tensor) -> Result<()>,
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

/// Takes the step eagerly, then records it and replays the recording from the same gradients
/// (zeroed), and compares the two.
fn record_checked(
    recipe: &GradientRecipe,
    gpt: &Gpt,
    params: &[Tensor],
    batches: &[Batch],
    mut reduce: impl FnMut(&Tensor) -> Result<()>,
) -> Result<(Recorded, Gradients, RecordingCheck)> {
    let eager = compute(recipe, gpt, params, batches, &mut reduce)?;
    let eager_grads: Vec<Tensor> = params.iter().map(grad_copy).collect();
    for p in params {
        p.shallow_clone().zero_grad();
    }
    let recorded = record(recipe, gpt, params, batches, &mut reduce)?;
    let replayed = recorded.replay(batches)?;
    let check = compare_with_eager(&eager, &eager_grads, &replayed, params)?;
    if !check.within(RECORDING_TOLERANCE) {
        bail!(
            "cuda_graph: the recorded step's first replay differs from the same step taken \
             eagerly ({check}; at most {RECORDING_TOLERANCE:.0e} is accepted): the recording is \
             wrong, so the run stops (without cuda_graph the steps run eagerly)"
        );
    }
    Ok((recorded, replayed, check))
}

/// A copy of `p`'s gradient (an undefined tensor when it has none).
fn grad_copy(p: &Tensor) -> Tensor {
    let g = p.grad();
    if g.defined() {
        g.copy()
    } else {
        g
    }
}

/// How `replayed` (with the gradients `params` hold now) differs from `eager` and the
/// gradients it left (`eager_grads`, one per parameter).
fn compare_with_eager(
    eager: &Gradients,
    eager_grads: &[Tensor],
    replayed: &Gradients,
    params: &[Tensor],
) -> Result<RecordingCheck> {
    let relative = |got: &Tensor, want: &Tensor| -> Result<f64> {
        let (got, want) = (got.f_double_value(&[])?, want.f_double_value(&[])?);
        let scale = if want == 0.0 { 1.0 } else { want.abs() };
        Ok((got - want).abs() / scale)
    };
    let largest = |t: &Tensor| -> Result<f64> {
        Ok(t.f_abs()?
            .f_max()?
            .f_to_kind(Kind::Double)?
            .f_double_value(&[])?)
    };
    let (mut scale, mut difference) = (0f64, 0f64);
    for (p, want) in params.iter().zip(eager_grads) {
        let got = p.grad();
        match (got.defined(), want.defined()) {
            (false, false) => continue,
            (true, true) => {
                scale = scale.max(largest(want)?);
                let d = largest(&got.f_sub(want)?)?;
                if d.is_nan() || d > difference {
                    difference = d; // a NaN stays: nothing compares greater
                }
            }
            _ => bail!(
                "cuda_graph: the replay and the eager step gave gradients to different parameters"
            ),
        }
    }
    Ok(RecordingCheck {
        loss: relative(&replayed.loss_sum, &eager.loss_sum)?,
        norm: relative(&replayed.norm, &eager.norm)?,
        gradients: if scale > 0.0 {
            difference / scale
        } else {
            difference
        },
    })
}

/// Records the pass over copies of `batches`, which every replay refills.
fn record(
    recipe: &GradientRecipe,
    gpt: &Gpt,
    params: &[Tensor],
    batches: &[Batch],
    reduce: impl FnMut(&Tensor) -> Result<()>,
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
        "cuda_graph: the step could not be recorded as a CUDA graph (without cuda_graph the \
         steps run eagerly)",
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
        assert!(
            msg.contains("cuda_graph: the step could not be recorded"),
            "{msg}"
        );
        assert!(msg.contains("needs a CUDA device"), "{msg}");
    }

    /// The recording's check measures each difference against the eager step's own scale: a
    /// replay that doubled the gradients differs by the whole of the largest gradient, an equal
    /// one by nothing, and gradients given to other parameters are an error.
    #[test]
    fn the_recording_check_measures_the_replay_against_the_eager_step() {
        let data = batches(3);
        let (_vs, gpt, params) = model();
        let eager = GradientPass::new(recipe(0.0), false)
            .run(&gpt, &params, &data, |_| Ok(()))
            .unwrap();
        let eager_grads: Vec<Tensor> = params.iter().map(grad_copy).collect();
        let same = Gradients {
            loss_sum: eager.loss_sum.copy(),
            norm: eager.norm.copy(),
        };
        let check = compare_with_eager(&eager, &eager_grads, &same, &params).unwrap();
        assert_eq!((check.loss, check.norm, check.gradients), (0.0, 0.0, 0.0));
        assert!(check.within(0.0));
        for p in &params {
            let _ = p.grad().g_mul_scalar_(2.0);
        }
        let doubled = Gradients {
            loss_sum: &eager.loss_sum * 1.5,
            norm: eager.norm.copy(),
        };
        let check = compare_with_eager(&eager, &eager_grads, &doubled, &params).unwrap();
        assert!((check.gradients - 1.0).abs() < 1e-6, "{check:?}");
        assert!((check.loss - 0.5).abs() < 1e-6, "{check:?}");
        assert_eq!(check.norm, 0.0);
        assert!(!check.within(RECORDING_TOLERANCE));
        // A NaN anywhere fails the check rather than vanishing in a max.
        let _ = params[1].grad().g_mul_scalar_(f64::NAN);
        let check = compare_with_eager(&eager, &eager_grads, &same, &params).unwrap();
        assert!(check.gradients.is_nan(), "{check:?}");
        assert!(!check.within(RECORDING_TOLERANCE));
        let mut fewer: Vec<Tensor> = eager_grads.iter().map(Tensor::shallow_clone).collect();
        fewer[0] = Tensor::new();
        let err = compare_with_eager(&eager, &fewer, &same, &params).unwrap_err();
        assert!(err.to_string().contains("different parameters"), "{err}");
    }
}
