//! Post-hoc averaging of saved checkpoints (safetensors files), streamed: the mean is computed a
//! chunk at a time, so peak memory stays near one chunk whatever the checkpoints' size. This is
//! how the paper applied LAWA to Pythia's published checkpoints, and it works on checkpoints
//! from any framework that writes safetensors.
//!
//! ```no_run
//! use std::path::PathBuf;
//! use lawa_core::checkpoint_average::average_safetensors;
//!
//! let inputs: Vec<PathBuf> = (1..=5).map(|i| format!("ckpt/step{}.safetensors", i * 1000).into()).collect();
//! let report = average_safetensors(&inputs, "avg.safetensors".as_ref(), |_done, _total| {}).unwrap();
//! println!("averaged {} tensors", report.tensors);
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Elements processed at a time: bounds peak memory at about 24 bytes per element of a chunk.
const CHUNK: usize = 1 << 22;

/// What can go wrong averaging checkpoint files.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointAverageError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file that is not a well-formed safetensors file.
    #[error("{path}: not a valid safetensors file: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Checkpoints that do not hold the same tensors.
    #[error("{path}: tensor `{tensor}` {problem} (compared with {first})")]
    Mismatch {
        /// The disagreeing file.
        path: PathBuf,
        /// The first file, which the others are compared with.
        first: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What differs.
        problem: String,
    },
    /// A dtype this averager does not handle.
    #[error("{path}: tensor `{tensor}` has dtype {dtype}, which cannot be averaged")]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Its dtype.
        dtype: String,
    },
    /// No inputs.
    #[error("no checkpoints to average")]
    Empty,
}

type Result<T> = std::result::Result<T, CheckpointAverageError>;

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name.
    pub name: String,
    /// `F32`, `BF16`, `I64`, ...
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Byte offsets of its data, from the start of the data section.
    pub offsets: (u64, u64),
}

/// The parsed header of a safetensors file.
#[derive(Debug, Clone)]
pub struct Header {
    /// Tensors, sorted by name.
    pub tensors: Vec<TensorInfo>,
    /// The free-form `__metadata__` map.
    pub metadata: BTreeMap<String, String>,
    /// Where the data section starts in the file.
    pub data_start: u64,
}

fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" => 1,
        _ => return None,
    })
}

fn is_float(dtype: &str) -> bool {
    matches!(dtype, "F64" | "F32" | "F16" | "BF16")
}

/// Reads and checks the header of a safetensors file.
pub fn read_header(path: &Path) -> Result<Header> {
    let io = |source| CheckpointAverageError::Io {
        path: path.to_owned(),
        source,
    };
    let bad = |reason: String| CheckpointAverageError::BadFile {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact_at(&mut len_bytes, 0)
        .map_err(|_| bad("shorter than its 8-byte header length".into()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(bad(format!("header length {header_len} exceeds the file")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(&mut header, 8).map_err(io)?;
    let json: BTreeMap<String, Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    let mut tensors = Vec::new();
    let mut metadata = BTreeMap::new();
    for (name, v) in json {
        if name == "__metadata__" {
            if let Some(map) = v.as_object() {
                for (k, v) in map {
                    metadata.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
            continue;
        }
        let dtype = v["dtype"]
            .as_str()
            .ok_or_else(|| bad(format!("tensor `{name}` has no dtype")))?
            .to_string();
        let shape: Vec<u64> = v["shape"]
            .as_array()
            .ok_or_else(|| bad(format!("tensor `{name}` has no shape")))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .ok_or_else(|| bad(format!("tensor `{name}`: bad shape")))
            })
            .collect::<Result<_>>()?;
        let offs = v["data_offsets"]
            .as_array()
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| bad(format!("tensor `{name}` has no data_offsets")))?;
        let size = dtype_size(&dtype).ok_or_else(|| CheckpointAverageError::UnsupportedDtype {
            path: path.to_owned(),
            tensor: name.clone(),
            dtype: dtype.clone(),
        })?;
        let expected = shape.iter().product::<u64>() * size as u64;
        if offs.1 < offs.0 || offs.1 - offs.0 != expected || offs.1 > data_len {
            return Err(bad(format!(
                "tensor `{name}`: data offsets {offs:?} do not fit shape {shape:?} of {dtype} in {data_len} data bytes"
            )));
        }
        tensors.push(TensorInfo {
            name,
            dtype,
            shape,
            offsets: offs,
        });
    }
    Ok(Header {
        tensors,
        metadata,
        data_start,
    })
}

fn decode(dtype: &str, bytes: &[u8], out: &mut [f64]) {
    match dtype {
        "F64" => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o += f64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            }
        }
        "F32" => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o += f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64;
            }
        }
        "F16" => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o += half::f16::from_le_bytes([c[0], c[1]]).to_f64();
            }
        }
        "BF16" => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o += half::bf16::from_le_bytes([c[0], c[1]]).to_f64();
            }
        }
        _ => {}
    }
}

fn encode(dtype: &str, values: &[f64], out: &mut Vec<u8>) {
    out.clear();
    match dtype {
        "F64" => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        "F32" => values
            .iter()
            .for_each(|v| out.extend((*v as f32).to_le_bytes())),
        "F16" => values
            .iter()
            .for_each(|v| out.extend(half::f16::from_f64(*v).to_le_bytes())),
        "BF16" => values
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
pub fn average_safetensors(
    inputs: &[PathBuf],
    out: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<AverageReport> {
    let first_path = inputs.first().ok_or(CheckpointAverageError::Empty)?;
    let headers: Vec<Header> = inputs
        .iter()
        .map(|p| read_header(p))
        .collect::<Result<_>>()?;
    let first = &headers[0];
    for (path, h) in inputs.iter().zip(&headers).skip(1) {
        let mismatch = |tensor: &str, problem: String| CheckpointAverageError::Mismatch {
            path: path.clone(),
            first: first_path.clone(),
            tensor: tensor.to_string(),
            problem,
        };
        for t in &first.tensors {
            match h.tensors.iter().find(|u| u.name == t.name) {
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
                        format!("has dtype {}, not {}", u.dtype, t.dtype),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = h
            .tensors
            .iter()
            .find(|u| !first.tensors.iter().any(|t| t.name == u.name))
        {
            return Err(mismatch(
                &extra.name,
                "is not in the first checkpoint".into(),
            ));
        }
    }

    // Output header: same tensors, laid out contiguously in name order.
    let mut json = serde_json::Map::new();
    let mut metadata: serde_json::Map<String, Value> = first
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    metadata.insert(
        "lawa_average_of".into(),
        Value::String(
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
    );
    json.insert("__metadata__".into(), Value::Object(metadata));
    let mut offset = 0u64;
    for t in &first.tensors {
        let len = t.offsets.1 - t.offsets.0;
        json.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let total = offset;
    let mut header =
        serde_json::to_vec(&Value::Object(json)).map_err(|e| CheckpointAverageError::BadFile {
            path: out.to_owned(),
            reason: e.to_string(),
        })?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }

    let files: Vec<File> = inputs
        .iter()
        .map(|p| {
            File::open(p).map_err(|source| CheckpointAverageError::Io {
                path: p.clone(),
                source,
            })
        })
        .collect::<Result<_>>()?;
    let mut averaged = 0;
    let n = inputs.len() as f64;
    let write = |file: &mut File| -> std::io::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        let mut raw = Vec::new();
        let mut acc = Vec::new();
        let mut encoded = Vec::new();
        let mut written = 0u64;
        for t in &first.tensors {
            let size = dtype_size(&t.dtype).unwrap_or(1);
            let numel = ((t.offsets.1 - t.offsets.0) / size as u64) as usize;
            let float = is_float(&t.dtype);
            averaged += float as usize;
            let mut start = 0usize;
            while start < numel {
                let count = CHUNK.min(numel - start);
                raw.resize(count * size, 0);
                if float {
                    acc.clear();
                    acc.resize(count, 0.0);
                    for (file, h) in files.iter().zip(&headers) {
                        let info = h.tensors.iter().find(|u| u.name == t.name).unwrap_or(t);
                        file.read_exact_at(
                            &mut raw,
                            h.data_start + info.offsets.0 + (start * size) as u64,
                        )?;
                        decode(&t.dtype, &raw, &mut acc);
                    }
                    acc.iter_mut().for_each(|v| *v /= n);
                    encode(&t.dtype, &acc, &mut encoded);
                    w.write_all(&encoded)?;
                } else {
                    let (file, h) = (
                        files.last().unwrap_or(&files[0]),
                        headers.last().unwrap_or(first),
                    );
                    let info = h.tensors.iter().find(|u| u.name == t.name).unwrap_or(t);
                    file.read_exact_at(
                        &mut raw,
                        h.data_start + info.offsets.0 + (start * size) as u64,
                    )?;
                    w.write_all(&raw)?;
                }
                written += (count * size) as u64;
                progress(written, total);
                start += count;
            }
        }
        w.flush()
    };
    crate::fsutil::write_atomic_with(out, write).map_err(|source| CheckpointAverageError::Io {
        path: out.to_owned(),
        source,
    })?;
    Ok(AverageReport {
        inputs: inputs.len(),
        tensors: first.tensors.len(),
        averaged,
        bytes: total,
    })
}

/// The step number in a checkpoint's file or folder name: the last run of digits
/// (`ckpt_1000.safetensors`, `step-1000/`, `model_step00500.safetensors`).
pub fn step_in_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_string_lossy();
    let name = name.strip_suffix(".safetensors").unwrap_or(&name);
    let digits: String = name
        .chars()
        .rev()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().ok()
}

/// From a folder of step-numbered checkpoints (safetensors files, or folders holding
/// `model.safetensors`), the latest `k`, spaced `every` steps apart when given (counting back
/// from the newest), oldest first. Errors name the missing step.
pub fn select_latest(
    dir: &Path,
    k: usize,
    every: Option<u64>,
) -> std::result::Result<Vec<PathBuf>, String> {
    if k == 0 {
        return Err("--last must be at least 1".into());
    }
    if every == Some(0) {
        return Err("--every must be at least 1".into());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut found: BTreeMap<u64, PathBuf> = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let file = if path.is_dir() {
            path.join("model.safetensors")
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            path.clone()
        } else {
            continue;
        };
        if let (Some(step), true) = (step_in_name(&path), file.is_file()) {
            found.insert(step, file);
        }
    }
    let (&newest, _) = found
        .iter()
        .next_back()
        .ok_or_else(|| format!("{}: no step-numbered checkpoints", dir.display()))?;
    let mut picked = Vec::new();
    match every {
        None => picked.extend(found.values().rev().take(k).cloned()),
        Some(every) => {
            for i in 0..k as u64 {
                let step = newest.checked_sub(i * every).ok_or_else(|| {
                    format!(
                        "{}: only {i} checkpoints spaced {every} steps back from step {newest}",
                        dir.display()
                    )
                })?;
                let path = found.get(&step).ok_or_else(|| {
                    format!(
                        "{}: no checkpoint for step {step} (needed for --last {k} --every {every})",
                        dir.display()
                    )
                })?;
                picked.push(path.clone());
            }
        }
    }
    if picked.len() < k {
        return Err(format!(
            "{}: only {} checkpoints, --last {k} asked for",
            dir.display(),
            picked.len()
        ));
    }
    picked.reverse();
    Ok(picked)
}
