use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// AdamW's hyperparameters (learning rate aside: it is given at each step by the schedule).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// First-moment decay.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Second-moment decay (0.95 in nanoGPT and the paper).
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Added to the denominator.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay, applied to the parameters chosen at construction.
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// How the update is computed (`auto` unless given).
    #[serde(default, skip_serializing_if = "AdamWKernel::is_default")]
    pub kernel: AdamWKernel,
}

/// How an AdamW step is computed. The three give the same update; they differ in how many
/// kernels a step launches on a GPU and, for `fused`, in rounding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdamWKernel {
    /// `foreach` when the parameters are on a GPU, `single` otherwise (the two are equal bit for
    /// bit on the CPU, where `single` is faster): PyTorch's own default.
    #[default]
    Auto,
    /// Tensor by tensor with tch's ops: `torch.optim.AdamW(foreach=False)`, bit for bit.
    Single,
    /// libtorch's multi-tensor `_foreach_` ops over all parameters at once (`foreach=True`): a
    /// few kernels a step. Bit for bit `single` on the CPU.
    Foreach,
    /// libtorch's `_fused_adamw_` (`fused=True`): one pass over each tensor. Differs from
    /// `single` by rounding (on the CPU, up to one ulp an update).
    Fused,
}

impl AdamWKernel {
    fn is_default(&self) -> bool {
        *self == AdamWKernel::default()
    }
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_eps() -> f64 {
    1e-8
}
fn default_weight_decay() -> f64 {
    0.1
}

impl AdamWConfig {
    /// Checks every hyperparameter's range; the error names the field and its value.
    pub fn validate(&self) -> Result<(), OptimError> {
        let check = |field, value: f64, ok: bool, reason| {
            if ok {
                Ok(())
            } else {
                Err(OptimError::Invalid {
                    field,
                    value,
                    reason,
                })
            }
        };
        check(
            "beta1",
            self.beta1,
            (0.0..1.0).contains(&self.beta1),
            "must be in [0, 1)",
        )?;
        check(
            "beta2",
            self.beta2,
            (0.0..1.0).contains(&self.beta2),
            "must be in [0, 1)",
        )?;
        check("eps", self.eps, self.eps > 0.0, "must be positive")?;
        check(
            "weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0,
            "must not be negative",
        )
    }
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: default_weight_decay(),
            kernel: AdamWKernel::default(),
        }
    }
}

/// What can go wrong with the optimizer or its saved state.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A hyperparameter out of range.
    #[error("adamw: {field} = {value} is invalid: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Its value.
        value: f64,
        /// Why.
        reason: &'static str,
    },
    /// A saved state that does not match these parameters.
    #[error("{path}: optimizer state does not fit the model: {reason}")]
    BadState {
        /// The state file.
        path: std::path::PathBuf,
        /// What differs.
        reason: String,
    },
    /// A parameter that moved to a device the optimizer was not built for.
    #[error("adamw: parameter `{name}` is on {device:?}, the optimizer was built for its old device; build a new optimizer after moving the model")]
    DeviceChanged {
        /// The parameter.
        name: String,
        /// Where it is now.
        device: tch::Device,
    },
    /// An error from libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A multi-tensor or fused kernel failed.
    #[error(transparent)]
    Kernel(#[from] lawa_ops::OpsError),
    /// A state file that cannot be read or written.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
}

/// The tensors one multi-tensor step takes, parameter by parameter.
#[derive(Default)]
struct StepLists {
    params: Vec<Tensor>,
    grads: Vec<Tensor>,
    exp_avgs: Vec<Tensor>,
    exp_avg_sqs: Vec<Tensor>,
    decay: Vec<bool>,
}

struct Param {
    name: String,
    tensor: Tensor,
    decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW, as `torch.optim.AdamW` computes it (decoupled weight decay), over tch tensors, with
/// moments lawa owns so they can be saved and restored.
///
/// Per parameter with a gradient, at step `t` with learning rate `lr`:
/// `p *= 1 - lr wd` (decayed parameters only); `m = lerp(m, g, 1 - b1)`;
/// `v = b2 v + (1 - b2) g²`; `p -= lr / (1 - b1^t) · m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Param>,
    steps: u64,
    /// Three flat fp32 buffers as large as the largest parameter, per device: the step's
    /// temporaries live there, so a step allocates nothing.
    scratch: Vec<(tch::Device, [Tensor; 3])>,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("config", &self.config)
            .field("params", &self.params.len())
            .field("steps", &self.steps)
            .finish()
    }
}

impl AdamW {
    /// An optimizer over `params` (named, e.g. a `VarStore`'s variables); `decay(name, tensor)`
    /// picks those that get weight decay.
    pub fn new(
        params: impl IntoIterator<Item = (String, Tensor)>,
        config: AdamWConfig,
        decay: impl Fn(&str, &Tensor) -> bool,
    ) -> Result<Self, OptimError> {
        config.validate()?;
        let mut named: Vec<(String, Tensor)> = params.into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let params: Vec<Param> = named
            .into_iter()
            .map(|(name, tensor)| Param {
                decay: decay(&name, &tensor),
                exp_avg: tensor.zeros_like().to_kind(Kind::Float),
                exp_avg_sq: tensor.zeros_like().to_kind(Kind::Float),
                name,
                tensor,
            })
            .collect();
        let mut scratch: Vec<(tch::Device, [Tensor; 3])> = Vec::new();
        for p in &params {
            let device = p.tensor.device();
            let largest = params
                .iter()
                .filter(|q| q.tensor.device() == device)
                .map(|q| q.tensor.numel() as i64)
                .max()
                .unwrap_or(0);
            if !scratch.iter().any(|(d, _)| *d == device) {
                let buf = || Tensor::zeros([largest], (Kind::Float, device));
                scratch.push((device, [buf(), buf(), buf()]));
            }
        }
        Ok(AdamW {
            config,
            params,
            steps: 0,
            scratch,
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Names of the parameters that get weight decay.
    pub fn decayed(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|p| p.decay)
            .map(|p| p.name.as_str())
            .collect()
    }

    /// The parameters, in name order (what [`clip_grad_norm`](super::clip_grad_norm) takes).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.tensor.shallow_clone())
            .collect()
    }

    /// Clears every parameter's gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// One update with learning rate `lr`, from the gradients the parameters hold
    /// (parameters without a gradient are skipped, as in PyTorch). A parameter moved to another
    /// device since the optimizer was built is an error, before anything is updated.
    pub fn step(&mut self, lr: f64) -> Result<(), OptimError> {
        for p in &self.params {
            let device = p.tensor.device();
            if !self.scratch.iter().any(|(d, _)| *d == device) {
                return Err(OptimError::DeviceChanged {
                    name: p.name.clone(),
                    device,
                });
            }
        }
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let bias_correction1 = 1.0 - c.beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bias_correction1;
        let on_gpu = self.params.iter().any(|p| p.tensor.device().is_cuda());
        match c.kernel {
            AdamWKernel::Single => {}
            AdamWKernel::Auto if !on_gpu => {}
            AdamWKernel::Auto | AdamWKernel::Foreach => {
                let scalars = lawa_ops::AdamWScalars {
                    beta1: c.beta1,
                    beta2: c.beta2,
                    eps: c.eps,
                    decay_factor: 1.0 - lr * c.weight_decay,
                    step_size: -step_size,
                    bias_correction2_sqrt,
                };
                return self.step_foreach(&scalars);
            }
            AdamWKernel::Fused => return self.step_fused(lr),
        }
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let shape = p.tensor.size();
                let n = p.tensor.numel() as i64;
                let Some((_, [s0, s1, s2])) =
                    self.scratch.iter().find(|(d, _)| *d == p.tensor.device())
                else {
                    unreachable!("every parameter's device was checked above");
                };
                let view = |t: &Tensor| t.narrow(0, 0, n).view(shape.as_slice());
                let (mut scaled_grad, mut denom, mut update) = (view(s0), view(s1), view(s2));
                if p.decay && c.weight_decay != 0.0 {
                    let _ = p.tensor.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                // m = lerp(m, g, 1 - b1)
                let _ = p.exp_avg.lerp_(&grad, 1.0 - c.beta1);
                // v = b2 v + ((1 - b2) g) g: addcmul's `value * t1 * t2`, in that order
                scaled_grad.copy_(&grad);
                let _ = scaled_grad.g_mul_scalar_(1.0 - c.beta2);
                let _ = p.exp_avg_sq.g_mul_scalar_(c.beta2);
                let _ = p.exp_avg_sq.addcmul_(&scaled_grad, &grad);
                // denom = sqrt(v) / sqrt(1 - b2^t) + eps
                let _ = p.exp_avg_sq.sqrt_out(&denom);
                let _ = denom.g_div_scalar_(bias_correction2_sqrt);
                let _ = denom.g_add_scalar_(c.eps);
                // p += (-lr / (1 - b1^t)) m / denom: addcdiv's `value * t1 / t2`, in that order
                update.copy_(&p.exp_avg);
                let _ = update.g_mul_scalar_(-step_size);
                let _ = p.tensor.addcdiv_(&update, &denom);
            }
        });
        Ok(())
    }

    /// The parameters that have a gradient, in order, with their moments; only those whose
    /// decay flag is `only` when given.
    fn with_gradients(&self, only: Option<bool>) -> StepLists {
        let mut out = StepLists::default();
        for p in self
            .params
            .iter()
            .filter(|p| only.is_none_or(|d| p.decay == d))
        {
            let grad = p.tensor.grad();
            if grad.defined() {
                out.params.push(p.tensor.shallow_clone());
                out.grads.push(grad);
                out.exp_avgs.push(p.exp_avg.shallow_clone());
                out.exp_avg_sqs.push(p.exp_avg_sq.shallow_clone());
                out.decay.push(p.decay);
            }
        }
        out
    }

    fn step_foreach(&mut self, scalars: &lawa_ops::AdamWScalars) -> Result<(), OptimError> {
        let l = self.with_gradients(None);
        Ok(lawa_ops::foreach_adamw_step(
            &l.params,
            &l.grads,
            &l.exp_avgs,
            &l.exp_avg_sqs,
            &l.decay,
            scalars,
        )?)
    }

    /// The fused kernel takes one weight decay per call: decayed parameters, then the others.
    fn step_fused(&mut self, lr: f64) -> Result<(), OptimError> {
        let c = self.config;
        for (decayed, weight_decay) in [(true, c.weight_decay), (false, 0.0)] {
            let l = self.with_gradients(Some(decayed));
            lawa_ops::fused_adamw_step(
                &l.params,
                &l.grads,
                &l.exp_avgs,
                &l.exp_avg_sqs,
                lr,
                (c.beta1, c.beta2),
                weight_decay,
                c.eps,
                self.steps,
            )?;
        }
        Ok(())
    }

    /// The live moments, `exp_avg` then `exp_avg_sq` of each parameter in order, sharing storage
    /// with the optimizer: writing into them (a broadcast from another rank) changes its state.
    pub fn moments(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .flat_map(|p| [p.exp_avg.shallow_clone(), p.exp_avg_sq.shallow_clone()])
            .collect()
    }

    /// Sets the number of steps taken (with [`moments`](Self::moments), for a rank that
    /// receives its state from another).
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// The moments and step count, as named tensors (`exp_avg.{name}`, `exp_avg_sq.{name}`,
    /// `step`), for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.named_state()
            .into_iter()
            .map(|(name, t)| (name, t.to_device(tch::Device::Cpu)))
            .collect()
    }

    /// [`state_tensors`](Self::state_tensors) where the moments are: handles, not copies.
    fn named_state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from_slice(&[self.steps as i64]))];
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
        }
        out
    }

    /// Writes the state to a safetensors file (atomically, with a checksum), moving one tensor
    /// at a time to the host.
    pub fn save(&self, path: &Path) -> Result<(), OptimError> {
        Ok(crate::checkpoint::write_safetensors(
            path,
            &self.named_state(),
        )?)
    }

    /// Restores the state written by [`save`](Self::save), reading one tensor at a time
    /// straight to its parameter's device.
    pub fn load(&mut self, path: &Path) -> Result<(), OptimError> {
        let (file, header) = crate::checkpoint::Header::open_checked(path)?;
        let bad = |reason: String| OptimError::BadState {
            path: path.to_owned(),
            reason,
        };
        let read = |key: &str| match header.get(key) {
            Some(info) => Ok(Some(header.read_tensor(&file, info)?)),
            None => Ok::<_, OptimError>(None),
        };
        let counter = read("step")?.ok_or_else(|| bad("no step counter".into()))?;
        if counter.kind() != Kind::Int64 || counter.size() != [1] {
            return Err(bad(format!(
                "the step counter is a {:?} tensor of shape {:?}, not one int64",
                counter.kind(),
                counter.size()
            )));
        }
        let steps = counter.f_int64_value(&[0])?;
        if steps < 0 {
            return Err(bad(format!("negative step counter {steps}")));
        }
        let mut restored = Vec::with_capacity(self.params.len());
        let mut known = HashSet::from(["step".to_string()]);
        for p in &self.params {
            let mut take = |key: String| -> Result<Tensor, OptimError> {
                let t = read(&key)?.ok_or_else(|| bad(format!("`{key}` missing")))?;
                if t.size() != p.tensor.size() {
                    return Err(bad(format!(
                        "`{key}` has shape {:?}, the parameter {:?}",
                        t.size(),
                        p.tensor.size()
                    )));
                }
                known.insert(key);
                Ok(t.to_device(p.tensor.device()).to_kind(Kind::Float))
            };
            restored.push((
                take(format!("exp_avg.{}", p.name))?,
                take(format!("exp_avg_sq.{}", p.name))?,
            ));
        }
        if let Some(extra) = header.tensors.iter().find(|t| !known.contains(&t.name)) {
            return Err(bad(format!(
                "`{}` is not a parameter of this model",
                extra.name
            )));
        }
        for (p, (m, v)) in self.params.iter_mut().zip(restored) {
            p.exp_avg = m;
            p.exp_avg_sq = v;
        }
        self.steps = steps as u64;
        Ok(())
    }
}
