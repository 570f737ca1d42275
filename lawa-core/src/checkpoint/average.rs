//! Post-hoc averaging of saved checkpoints (safetensors files), streamed: the mean is computed a
//! chunk at a time, so peak memory stays near one chunk whatever the checkpoints' size. This is
//! how the paper applied LAWA to Pythia's published checkpoints, and it works on checkpoints
//! from any framework that writes safetensors.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::safetensors::{layout_entries, write_streamed, Dtype, Header, CRC_KEY};
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
    mut progress: impl FnMut(u64, u64),
) -> Result<AverageReport> {
    let first_path = inputs.first().ok_or(CheckpointError::Empty)?;
    let files: Vec<File> = inputs
        .iter()
        .map(|p| File::open(p).map_err(|e| CheckpointError::io(p, e)))
        .collect::<Result<_>>()?;
    let headers: Vec<Header> = files
        .iter()
        .zip(inputs)
        .map(|(f, p)| Header::read_from(f, p))
        .collect::<Result<_>>()?;
    let first = &headers[0];
    for (path, h) in inputs.iter().zip(&headers).skip(1) {
        check_same_tensors(first, first_path, h, path)?;
    }
    let mut metadata: BTreeMap<String, String> = first.metadata.clone();
    metadata.remove(CRC_KEY);
    metadata.insert(
        "lawa_average_of".into(),
        inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    let entries = layout_entries(
        first
            .tensors
            .iter()
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
                let info = headers[i].get(&t.name).unwrap_or(t);
                let at = headers[i].data_start + info.offsets.0 + (start * size) as u64;
                files[i].read_exact_at(raw, at)
            };
            if t.dtype.is_float() {
                acc.clear();
                acc.resize(count, 0.0);
                for i in 0..files.len() {
                    read(i, &mut raw)?;
                    decode(t.dtype, &raw, &mut acc);
                }
                acc.iter_mut().for_each(|v| *v /= n);
                encode(t.dtype, &acc, &mut encoded);
                w.write_all(&encoded)?;
            } else {
                read(files.len() - 1, &mut raw)?;
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

/// Refuses a checkpoint whose tensors (names, shapes, dtypes) differ from the first one's.
fn check_same_tensors(first: &Header, first_path: &Path, h: &Header, path: &Path) -> Result<()> {
    let mismatch = |tensor: &str, problem: String| CheckpointError::Mismatch {
        path: path.to_owned(),
        first: first_path.to_owned(),
        tensor: tensor.to_string(),
        problem,
    };
    for t in &first.tensors {
        match h.get(&t.name) {
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
    if let Some(extra) = h.tensors.iter().find(|u| first.get(&u.name).is_none()) {
        return Err(mismatch(
            &extra.name,
            "is not in the first checkpoint".into(),
        ));
    }
    Ok(())
}
