//! Where a model's weights come from when it loads: one checkpoint ([`TensorFiles`]), or the
//! uniform mean of several ([`MeanOf`], post-hoc LAWA), read one tensor at a time so that a
//! model can be filled with averaged weights holding only itself and one tensor.

use tch::{Kind, Tensor};

use super::files::{TensorEntry, TensorFiles};
use super::CheckpointError;

/// Named tensors a model's weights are read from.
pub trait WeightSource {
    /// Every tensor's entry (name, dtype, shape), by name.
    fn entries(&self) -> Vec<&TensorEntry>;

    /// Tensor `name`, on CPU: floating tensors as fp32, others as stored.
    fn read(&self, name: &str) -> Result<Tensor, CheckpointError>;

    /// What the weights are, for messages (a path, or the paths averaged).
    fn describe(&self) -> String;
}

impl WeightSource for TensorFiles {
    fn entries(&self) -> Vec<&TensorEntry> {
        TensorFiles::entries(self).collect()
    }

    fn read(&self, name: &str) -> Result<Tensor, CheckpointError> {
        let t = TensorFiles::read(self, name)?;
        Ok(if is_float(t.kind()) {
            t.to_kind(Kind::Float)
        } else {
            t
        })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    )
}

/// The uniform mean of checkpoints holding the same tensors: each floating tensor is the sum of
/// the checkpoints' fp32 values, oldest to newest, divided by their number — the order an online
/// LAWA sums its snapshots in, so a post-hoc average of the same checkpoints equals it bit for
/// bit. Integer tensors come from the newest checkpoint.
#[derive(Debug)]
pub struct MeanOf<'a> {
    inputs: Vec<&'a TensorFiles>,
}

impl<'a> MeanOf<'a> {
    /// The mean of `inputs`, oldest first; their tensors must agree in names, shapes and dtypes.
    pub fn new(inputs: Vec<&'a TensorFiles>) -> Result<Self, CheckpointError> {
        let first = inputs.first().ok_or(CheckpointError::Empty)?;
        for other in &inputs[1..] {
            for e in first.entries() {
                let problem = match other.get(&e.name) {
                    None => Some("is missing".to_string()),
                    Some(o) if o.shape != e.shape => {
                        Some(format!("has shape {:?}, not {:?}", o.shape, e.shape))
                    }
                    Some(o) if o.dtype != e.dtype => Some(format!(
                        "has dtype {}, not {}",
                        o.dtype.name(),
                        e.dtype.name()
                    )),
                    Some(_) => None,
                };
                if let Some(problem) = problem {
                    return Err(CheckpointError::Mismatch {
                        path: other.path.clone(),
                        first: first.path.clone(),
                        tensor: e.name.clone(),
                        problem,
                    });
                }
            }
        }
        Ok(MeanOf { inputs })
    }
}

impl WeightSource for MeanOf<'_> {
    fn entries(&self) -> Vec<&TensorEntry> {
        self.inputs[0].entries().collect()
    }

    fn read(&self, name: &str) -> Result<Tensor, CheckpointError> {
        let newest = self.inputs[self.inputs.len() - 1];
        let first = WeightSource::read(self.inputs[0], name)?;
        if !is_float(first.kind()) {
            return WeightSource::read(newest, name);
        }
        let mut sum = first;
        for input in &self.inputs[1..] {
            let t = WeightSource::read(*input, name)?;
            let _ = sum.f_add_(&t).map_err(|e| CheckpointError::BadFile {
                path: input.path.clone(),
                reason: format!("tensor `{name}`: {e}"),
            })?;
        }
        let _ =
            sum.f_div_scalar_(self.inputs.len() as f64)
                .map_err(|e| CheckpointError::BadFile {
                    path: newest.path.clone(),
                    reason: format!("tensor `{name}`: {e}"),
                })?;
        Ok(sum)
    }

    fn describe(&self) -> String {
        let paths: Vec<String> = self
            .inputs
            .iter()
            .map(|i| i.path.display().to_string())
            .collect();
        format!("the mean of {}", paths.join(", "))
    }
}
