//! Post-hoc averaging of saved checkpoints (safetensors or PyTorch `.bin`, single or sharded),
//! streamed: the mean is computed a chunk at a time, so peak memory stays near one chunk
//! whatever the checkpoints' size. This is how the paper applied LAWA to Pythia's published
//! checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::files::{TensorEntry, TensorFiles};
use super::safetensors::{layout_entries, write_streamed, Dtype};
use super::CheckpointError;

/// Elements processed at a time: bounds peak memory at about 24 bytes per element of a chunk.
const CHUNK: usize = 1 << 22;

type Result<T> = std::result::Result<T, CheckpointError>;

fn decode(dtype: Dtype, bytes: &[u8], out: &mut [f64]) {
    match dtype {
        Dtype::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o += f64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            }
        }
        Dtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o += f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64;
            }
        }
        Dtype::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o += half::f16::from_le_bytes([c[0], c[1]]).to_f64();
            }
        }
        Dtype::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o += half::bf16::from_le_bytes([c[0], c[1]]).to_f64();
            }
        }
        _ => {}
    }
}

fn encode(dtype: Dtype, values: &[f64], out: &mut Vec<u8>) {
    out.clear();
    match dtype {
        Dtype::F64 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        Dtype::F32 => values
            .iter()
            .for_each(|v| out.extend((*v as f32).to_le_bytes())),
        Dtype::F16 => values
            .iter()
            .for_each(|v| out.extend(half::f16::from_f64(*v).to_le_bytes())),
        Dtype::BF16 => values
            .iter()
            .for_each(|v| out.extend(half::bf16::from_f64(*v).to_le_bytes())),
        _ => {}
    }
}

/// What [`average_safetensors`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct AverageReport {
    /// Checkpoints averaged.
    pub inputs: usize,
    /// Tensors written.
    pub tensors: usize,
    /// Of which averaged (floating point); the rest were copied from the last input.
    pub averaged: usize,
    /// Bytes of tensor data written.
    pub bytes: u64,
}

/// Writes the element-wise mean of `inputs` (safetensors files holding the same tensor names,
/// shapes and dtypes) to `out`, a safetensors file with the same tensors and dtypes. Floating
/// tensors are averaged in f64 and rounded once; integer tensors are copied from the last input.
/// `out` is written through a temporary file and renamed: on error nothing is written.
/// `progress(done, total)` is called with bytes of output written.
///
/// ```no_run
/// use std::path::PathBuf;
/// use lawa_core::checkpoint::average_safetensors;
///
/// let inputs: Vec<PathBuf> = (1..=5).map(|i| format!("ckpt/step{}.safetensors", i * 1000).into()).collect();
/// let report = average_safetensors(&inputs, "avg.safetensors".as_ref(), |_done, _total| {})?;
/// println!("averaged {} tensors", report.tensors);
/// # Ok::<(), lawa_core::checkpoint::CheckpointError>(())
/// ```
pub fn average_safetensors(
    inputs: &[PathBuf],
    out: &Path,
    progress: impl FnMut(u64, u64),
) -> Result<AverageReport> {
    let opened = inputs
        .iter()
        .map(|p| TensorFiles::open(p))
        .collect::<Result<Vec<_>>>()?;
    average_checkpoints(&opened, out, |_| true, progress)
}

/// The mean of checkpoints in any of the forms [`TensorFiles`] opens (single or sharded
/// safetensors, `pytorch_model.bin`), streamed a chunk at a time into one safetensors file:
/// peak memory is a few chunks, whatever the checkpoints' size. Only tensors for which `keep`
/// is true are averaged and written (e.g. to leave out attention-mask buffers); they must have
/// the same shapes and dtypes in every input.
pub fn average_checkpoints(
    inputs: &[TensorFiles],
    out: &Path,
    keep: impl Fn(&str) -> bool,
    mut progress: impl FnMut(u64, u64),
) -> Result<AverageReport> {
    let first = inputs.first().ok_or(CheckpointError::Empty)?;
    for input in inputs {
        input.verify()?;
    }
    for other in &inputs[1..] {
        check_same_tensors(first, other, &keep)?;
    }
    let kept: Vec<&TensorEntry> = first.entries().filter(|e| keep(&e.name)).collect();
    if kept.is_empty() {
        return Err(CheckpointError::NoTensors {
            path: first.path.clone(),
        });
    }
    let mut metadata: BTreeMap<String, String> = BTreeMap::new();
    metadata.insert("format".into(), "pt".into());
    metadata.insert(
        "lawa_average_of".into(),
        inputs
            .iter()
            .map(|p| p.path.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    let entries = layout_entries(
        kept.iter()
            .map(|t| (t.name.clone(), t.dtype, t.shape.clone())),
    );
    let total = entries.last().map_or(0, |e| e.offsets.1);
    let averaged = entries.iter().filter(|e| e.dtype.is_float()).count();
    let n = inputs.len() as f64;
    let (mut raw, mut acc, mut encoded) = (Vec::new(), Vec::new(), Vec::new());
    let mut written = 0u64;
    write_streamed(out, &entries, metadata, |t, w| {
        let size = t.dtype.size();
        let numel = t.numel() as usize;
        let mut start = 0usize;
        while start < numel {
            let count = CHUNK.min(numel - start);
            raw.resize(count * size, 0);
            // Reads this chunk of tensor `t` from input `i`.
            let read = |i: usize, raw: &mut Vec<u8>| -> std::io::Result<()> {
                let input = &inputs[i];
                let entry = input
                    .get(&t.name)
                    .ok_or_else(|| std::io::Error::other(format!("`{}` vanished", t.name)))?;
                input
                    .read_bytes(entry, (start * size) as u64, raw)
                    .map_err(std::io::Error::other)
            };
            if t.dtype.is_float() {
                acc.clear();
                acc.resize(count, 0.0);
                for i in 0..inputs.len() {
                    read(i, &mut raw)?;
                    decode(t.dtype, &raw, &mut acc);
                }
                acc.iter_mut().for_each(|v| *v /= n);
                encode(t.dtype, &acc, &mut encoded);
                w.write_all(&encoded)?;
            } else {
                read(inputs.len() - 1, &mut raw)?;
                w.write_all(&raw)?;
            }
            written += (count * size) as u64;
            progress(written, total);
            start += count;
        }
        Ok(())
    })?;
    Ok(AverageReport {
        inputs: inputs.len(),
        tensors: entries.len(),
        averaged,
        bytes: total,
    })
}

/// Refuses a checkpoint whose kept tensors (names, shapes, dtypes) differ from the first one's.
fn check_same_tensors(
    first: &TensorFiles,
    other: &TensorFiles,
    keep: &impl Fn(&str) -> bool,
) -> Result<()> {
    let mismatch = |tensor: &str, problem: String| CheckpointError::Mismatch {
        path: other.path.clone(),
        first: first.path.clone(),
        tensor: tensor.to_string(),
        problem,
    };
    for t in first.entries().filter(|e| keep(&e.name)) {
        match other.get(&t.name) {
            None => return Err(mismatch(&t.name, "is missing".into())),
            Some(u) if u.shape != t.shape => {
                return Err(mismatch(
                    &t.name,
                    format!("has shape {:?}, not {:?}", u.shape, t.shape),
                ))
            }
            Some(u) if u.dtype != t.dtype => {
                return Err(mismatch(
                    &t.name,
                    format!("has dtype {}, not {}", u.dtype.name(), t.dtype.name()),
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = other
        .entries()
        .find(|u| keep(&u.name) && first.get(&u.name).is_none())
    {
        return Err(mismatch(
            &extra.name,
            "is not in the first checkpoint".into(),
        ));
    }
    Ok(())
}
