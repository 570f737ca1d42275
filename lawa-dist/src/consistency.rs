//! A cheap check that tensors are the same on every rank: per-tensor sums and sums of squares
//! in f64, compared through a max and a min all-reduce.

use tch::{Kind, Tensor};

use crate::{DistError, ProcessGroup, ReduceOp};

/// Fails on every rank if any of `tensors` differs between ranks (by its sum or sum of
/// squares, in f64: a changed value is caught unless changes cancel in both). `what` names
/// them in the message.
pub fn ensure_identical(
    group: &ProcessGroup,
    tensors: &[Tensor],
    what: &str,
) -> Result<(), DistError> {
    let _guard = tch::no_grad_guard();
    let Some(first) = tensors.first() else {
        return Ok(());
    };
    let sums: Vec<Tensor> = tensors
        .iter()
        .flat_map(|t| {
            let t = t.to_kind(Kind::Double);
            [t.sum(Kind::Double), (&t * &t).sum(Kind::Double)]
        })
        .collect();
    let high = Tensor::stack(&sums, 0).to_device(first.device());
    let low = high.copy();
    group.all_reduce(&[&high], ReduceOp::Max)?;
    group.all_reduce(&[&low], ReduceOp::Min)?;
    let read = |t: &Tensor| {
        Vec::<f64>::try_from(t.to_device(tch::Device::Cpu)).map_err(|e| DistError::Diverged {
            rank: group.rank(),
            message: format!("{what}: cannot read the checksums: {e}"),
        })
    };
    let (high_v, low_v) = (read(&high)?, read(&low)?);
    if let Some(i) = high_v.iter().position(|x| !x.is_finite()) {
        return Err(DistError::Diverged {
            rank: group.rank(),
            message: format!("{what}: tensor {} is not finite", i / 2),
        });
    }
    let differ = high_v.iter().zip(&low_v).position(|(h, l)| h != l);
    match differ {
        None => Ok(()),
        Some(i) => Err(DistError::Diverged {
            rank: group.rank(),
            message: format!(
                "{what}: tensor {} differs between ranks (checksums {} apart)",
                i / 2,
                high_v[i] - low_v[i]
            ),
        }),
    }
}
