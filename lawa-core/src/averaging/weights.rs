use tch::{Kind, Tensor};

use super::{AveragingError, Storage};

/// A named set of tensors: the training weights an averager observes, or the target it writes
/// its average into. Ordered by name, with tensors that share storage (a tied embedding / head)
/// kept once.
///
/// The tensors are shallow handles: building a `Weights` copies no data, and writing into a
/// target's tensors writes into the model that owns them. Floating-point tensors are averaged
/// in fp32 whatever their dtype (an fp64 model's average is rounded to fp32); integer and
/// boolean tensors are copied.
#[derive(Debug)]
pub struct Weights {
    entries: Vec<(String, Tensor)>,
}

/// Name, shape and dtype of each tensor of a [`Weights`]: what two sets must share to be averaged
/// together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout(Vec<(String, Vec<i64>, Kind)>);

/// Whether a tensor of this dtype is averaged (floating point) or copied (integers, booleans).
pub(crate) fn is_averaged(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    )
}

/// An fp32 copy of `t` (integer tensors keep their dtype) in `storage`.
pub(crate) fn stored_copy(t: &Tensor, storage: Storage) -> Tensor {
    let mut out = stored_empty(t, storage);
    tch::no_grad(|| out.copy_(&t.detach()));
    out
}

/// An uninitialized tensor of `t`'s shape for an fp32 copy of it (integer tensors keep their
/// dtype) in `storage`.
pub(crate) fn stored_empty(t: &Tensor, storage: Storage) -> Tensor {
    let kind = if is_averaged(t.kind()) {
        Kind::Float
    } else {
        t.kind()
    };
    Tensor::empty(t.size(), (kind, storage.device_for(t)))
}

/// Weights of step `step` for the averagers' unit tests: `a` fp32 [5, 3], `b` of `b_kind`
/// [7] (random, seeded by `step`), and `n`, integers [2].
#[cfg(test)]
pub(crate) fn test_weights_at(step: i64, b_kind: Kind) -> Weights {
    use tch::Device;
    tch::manual_seed(step);
    Weights::from_named([
        (
            "a".to_string(),
            Tensor::randn([5, 3], (Kind::Float, Device::Cpu)),
        ),
        ("b".to_string(), Tensor::randn([7], (b_kind, Device::Cpu))),
        (
            "n".to_string(),
            Tensor::randint(9, [2], (Kind::Int64, Device::Cpu)),
        ),
    ])
}

impl Weights {
    /// The variables of a `VarStore`, sorted by name: all of them, frozen ones and buffers kept
    /// as variables too (to average fewer, use [`from_named`](Self::from_named) with a filtered
    /// `vs.variables()`). Build it after the model's variables are made: before, it is empty, and
    /// averagers refuse it.
    pub fn from_var_store(vs: &tch::nn::VarStore) -> Self {
        Self::from_named(vs.variables())
    }

    /// Named tensors, sorted by name. A tensor that aliases the storage of an earlier one (same
    /// data pointer, shape and dtype) is dropped, so tied weights count once.
    pub fn from_named(named: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        let mut entries: Vec<(String, Tensor)> = named.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(String, Tensor)> = Vec::with_capacity(entries.len());
        for (name, tensor) in entries {
            let aliased = kept.iter().any(|(_, t)| {
                t.data_ptr() == tensor.data_ptr()
                    && t.size() == tensor.size()
                    && t.kind() == tensor.kind()
            });
            if !aliased {
                kept.push((name, tensor.shallow_clone()));
            }
        }
        Weights { entries: kept }
    }

    /// The tensors with their names, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Names, shapes and dtypes.
    pub(crate) fn layout(&self) -> Layout {
        Layout(
            self.entries
                .iter()
                .map(|(n, t)| (n.clone(), t.size(), t.kind()))
                .collect(),
        )
    }

    /// Total number of elements.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|(_, t)| t.numel()).sum()
    }
}

impl Layout {
    /// Number of tensors.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Checks that `other` has the same names and shapes as `self` (dtypes may differ when
    /// `same_kinds` is false: a bf16 target can receive an fp32 average).
    pub(crate) fn check(
        &self,
        other: &Layout,
        context: &str,
        same_kinds: bool,
    ) -> Result<(), AveragingError> {
        let mismatch = |name: &str, problem: String| AveragingError::LayoutMismatch {
            context: context.to_string(),
            name: name.to_string(),
            problem,
        };
        for (name, shape, kind) in &self.0 {
            match other.0.iter().find(|(n, _, _)| n == name) {
                None => return Err(mismatch(name, "missing".into())),
                Some((_, s, k)) => {
                    if s != shape {
                        return Err(mismatch(name, format!("shape {s:?}, expected {shape:?}")));
                    }
                    if same_kinds && k != kind {
                        return Err(mismatch(name, format!("dtype {k:?}, expected {kind:?}")));
                    }
                }
            }
        }
        if let Some((name, _, _)) = other
            .0
            .iter()
            .find(|(n, _, _)| !self.0.iter().any(|(m, _, _)| m == n))
        {
            return Err(mismatch(name, "not among the averaged weights".into()));
        }
        Ok(())
    }

    /// The tensor names, in order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _, _)| n.as_str())
    }
}
