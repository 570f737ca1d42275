//! The safetensors format, read and written in one place: a header that every reader validates
//! the same way (sizes that overflow, offsets that overlap or run past the file, duplicate
//! names, unknown dtypes are refused before a byte of data is used), tensors read one at a time
//! without mapping the file, and files written in a stream with a CRC-32 of the data section in
//! the metadata (`lawa_crc32`), checked whenever a file carrying one is read whole.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::CheckpointError;

/// Metadata key holding the CRC-32 (8 lowercase hex digits) of a file's data section.
pub const CRC_KEY: &str = "lawa_crc32";

/// Largest header accepted (the format's reference implementation allows 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// A tensor element type of the safetensors format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// 64-bit float.
    F64,
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// 16-bit signed integer.
    I16,
    /// 8-bit signed integer.
    I8,
    /// 8-bit unsigned integer.
    U8,
    /// Boolean (one byte).
    Bool,
}

impl Dtype {
    /// Parses the header's dtype name.
    pub fn parse(name: &str) -> Option<Dtype> {
        Some(match name {
            "F64" => Dtype::F64,
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "I16" => Dtype::I16,
            "I8" => Dtype::I8,
            "U8" => Dtype::U8,
            "BOOL" => Dtype::Bool,
            _ => return None,
        })
    }

    /// The header's name of the dtype.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F64 => "F64",
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::I16 => "I16",
            Dtype::I8 => "I8",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// Whether values are floating point (averaged, not copied).
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F64 | Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }

    /// The libtorch element type.
    pub fn kind(self) -> Kind {
        match self {
            Dtype::F64 => Kind::Double,
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::I64 => Kind::Int64,
            Dtype::I32 => Kind::Int,
            Dtype::I16 => Kind::Int16,
            Dtype::I8 => Kind::Int8,
            Dtype::U8 => Kind::Uint8,
            Dtype::Bool => Kind::Bool,
        }
    }

    /// The dtype of a libtorch element type, if the format has it.
    pub fn of_kind(kind: Kind) -> Option<Dtype> {
        Some(match kind {
            Kind::Double => Dtype::F64,
            Kind::Float => Dtype::F32,
            Kind::Half => Dtype::F16,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Int64 => Dtype::I64,
            Kind::Int => Dtype::I32,
            Kind::Int16 => Dtype::I16,
            Kind::Int8 => Dtype::I8,
            Kind::Uint8 => Dtype::U8,
            Kind::Bool => Dtype::Bool,
            _ => return None,
        })
    }
}

/// One tensor's entry in a header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Byte offsets of its data, from the start of the data section.
    pub offsets: (u64, u64),
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        (self.offsets.1 - self.offsets.0) / self.dtype.size() as u64
    }

    /// The shape as libtorch takes it.
    pub fn shape_i64(&self) -> Vec<i64> {
        self.shape.iter().map(|&d| d as i64).collect()
    }
}

/// The validated header of a safetensors file.
#[derive(Debug, Clone)]
pub struct Header {
    /// The file it was read from.
    pub path: PathBuf,
    /// Tensors, sorted by name.
    pub tensors: Vec<TensorInfo>,
    /// The free-form `__metadata__` map.
    pub metadata: BTreeMap<String, String>,
    /// Where the data section starts in the file.
    pub data_start: u64,
    /// Bytes in the data section.
    pub data_len: u64,
}

/// The header's JSON object as written, keys in file order (so duplicates can be seen).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = m.next_entry()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

impl Header {
    /// Reads and validates the header of the safetensors file at `path`.
    pub fn read(path: &Path) -> Result<Header, CheckpointError> {
        let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        Header::read_from(&file, path)
    }

    /// Opens the safetensors file at `path`, validates its header and checks its data against
    /// the checksum (see [`verify_checksum`](Self::verify_checksum)): the file and its header,
    /// to read tensors from one at a time.
    pub fn open_checked(path: &Path) -> Result<(File, Header), CheckpointError> {
        let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        let header = Header::read_from(&file, path)?;
        header.verify_checksum(&file)?;
        Ok((file, header))
    }

    /// Reads and validates the header of an open file.
    pub fn read_from(file: &File, path: &Path) -> Result<Header, CheckpointError> {
        let bad = |reason: String| CheckpointError::BadFile {
            path: path.to_owned(),
            reason,
        };
        let file_len = file
            .metadata()
            .map_err(|e| CheckpointError::io(path, e))?
            .len();
        let mut len_bytes = [0u8; 8];
        file.read_exact_at(&mut len_bytes, 0)
            .map_err(|_| bad("shorter than its 8-byte header length".into()))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER || header_len > file_len - 8 {
            return Err(bad(format!(
                "header length {header_len} exceeds the file ({file_len} bytes)"
            )));
        }
        let mut text = vec![0u8; header_len as usize];
        file.read_exact_at(&mut text, 8)
            .map_err(|e| CheckpointError::io(path, e))?;
        let Entries(entries) =
            serde_json::from_slice(&text).map_err(|e| bad(format!("header: {e}")))?;
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        let mut tensors = Vec::new();
        let mut metadata = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for (name, value) in entries {
            if !seen.insert(name.clone()) {
                return Err(bad(format!("`{name}` appears twice in the header")));
            }
            if name == "__metadata__" {
                metadata = parse_metadata(&value).map_err(bad)?;
            } else {
                tensors.push(parse_tensor(name, &value, data_len).map_err(bad)?);
            }
        }
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offsets);
        for pair in by_offset.windows(2) {
            if pair[1].offsets.0 < pair[0].offsets.1 && pair[1].offsets.1 > pair[1].offsets.0 {
                return Err(bad(format!(
                    "tensors `{}` and `{}` overlap in the data section",
                    pair[0].name, pair[1].name
                )));
            }
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Header {
            path: path.to_owned(),
            tensors,
            metadata,
            data_start,
            data_len,
        })
    }

    /// The entry of tensor `name`.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.tensors[i])
    }

    /// Reads the raw little-endian bytes of `info` (an entry of this header) from `file`.
    pub fn read_bytes(&self, file: &File, info: &TensorInfo) -> Result<Vec<u8>, CheckpointError> {
        let mut bytes = vec![0u8; (info.offsets.1 - info.offsets.0) as usize];
        file.read_exact_at(&mut bytes, self.data_start + info.offsets.0)
            .map_err(|e| CheckpointError::io(&self.path, e))?;
        Ok(bytes)
    }

    /// Reads tensor `info` (an entry of this header) from `file`, in its stored dtype, on CPU.
    pub fn read_tensor(&self, file: &File, info: &TensorInfo) -> Result<Tensor, CheckpointError> {
        let bytes = self.read_bytes(file, info)?;
        Tensor::f_from_data_size(&bytes, &info.shape_i64(), info.dtype.kind()).map_err(|e| {
            CheckpointError::BadFile {
                path: self.path.clone(),
                reason: format!("tensor `{}`: {e}", info.name),
            }
        })
    }

    /// Checks the data section against the CRC-32 in the metadata, when there is one (files
    /// written by lawa carry it; others are taken as they are).
    pub fn verify_checksum(&self, file: &File) -> Result<(), CheckpointError> {
        let Some(expected) = self.metadata.get(CRC_KEY) else {
            return Ok(());
        };
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0u64;
        while pos < self.data_len {
            let n = (self.data_len - pos).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], self.data_start + pos)
                .map_err(|e| CheckpointError::io(&self.path, e))?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        let actual = format!("{:08x}", hasher.finalize());
        if &actual != expected {
            return Err(CheckpointError::Checksum {
                path: self.path.clone(),
                expected: expected.clone(),
                actual,
            });
        }
        Ok(())
    }
}

fn parse_metadata(value: &serde_json::Value) -> Result<BTreeMap<String, String>, String> {
    let map = value.as_object().ok_or("`__metadata__` is not an object")?;
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_string())),
            None => Err(format!("`__metadata__.{k}` is not a string")),
        })
        .collect()
}

fn parse_tensor(
    name: String,
    value: &serde_json::Value,
    data_len: u64,
) -> Result<TensorInfo, String> {
    let dtype_name = value["dtype"]
        .as_str()
        .ok_or_else(|| format!("tensor `{name}` has no dtype"))?;
    let dtype = Dtype::parse(dtype_name).ok_or_else(|| {
        format!("tensor `{name}` has dtype {dtype_name}, which lawa does not read")
    })?;
    let shape: Vec<u64> = value["shape"]
        .as_array()
        .ok_or_else(|| format!("tensor `{name}` has no shape"))?
        .iter()
        .map(|d| {
            d.as_u64()
                .ok_or_else(|| format!("tensor `{name}`: bad shape {d}"))
        })
        .collect::<Result<_, _>>()?;
    let offsets = value["data_offsets"]
        .as_array()
        .filter(|a| a.len() == 2)
        .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
        .ok_or_else(|| format!("tensor `{name}` has no data_offsets"))?;
    let bytes = shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("tensor `{name}`: shape {shape:?} overflows"))?;
    if offsets.1 < offsets.0 || offsets.1 - offsets.0 != bytes || offsets.1 > data_len {
        return Err(format!(
            "tensor `{name}`: data offsets {offsets:?} do not fit shape {shape:?} of {dtype_name} in {data_len} data bytes"
        ));
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        offsets,
    })
}

/// Serializes a header (tensor entries and metadata) padded with spaces to a multiple of 8
/// bytes, as the format requires.
pub fn header_bytes(
    entries: &[TensorInfo],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, CheckpointError> {
    let mut json = serde_json::Map::new();
    if !metadata.is_empty() {
        json.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    for t in entries {
        json.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": t.dtype.name(),
                "shape": t.shape,
                "data_offsets": [t.offsets.0, t.offsets.1],
            }),
        );
    }
    let mut bytes = serde_json::to_vec(&serde_json::Value::Object(json)).map_err(|e| {
        CheckpointError::BadFile {
            path: PathBuf::new(),
            reason: format!("cannot serialize a header: {e}"),
        }
    })?;
    while !bytes.len().is_multiple_of(8) {
        bytes.push(b' ');
    }
    Ok(bytes)
}

/// Lays `(name, dtype, shape)` out contiguously, in the order given.
pub fn layout_entries(
    tensors: impl IntoIterator<Item = (String, Dtype, Vec<u64>)>,
) -> Vec<TensorInfo> {
    let mut offset = 0u64;
    tensors
        .into_iter()
        .map(|(name, dtype, shape)| {
            let bytes = shape.iter().product::<u64>() * dtype.size() as u64;
            let info = TensorInfo {
                name,
                dtype,
                shape,
                offsets: (offset, offset + bytes),
            };
            offset += bytes;
            info
        })
        .collect()
}

/// Writes a safetensors file whose data section is produced by `write_data` (which is handed
/// each entry in turn and must write exactly its bytes), with `metadata` and the data's CRC-32
/// added, atomically (see [`write_atomic_with`](super::write_atomic_with)).
pub fn write_streamed(
    path: &Path,
    entries: &[TensorInfo],
    mut metadata: BTreeMap<String, String>,
    mut write_data: impl FnMut(&TensorInfo, &mut dyn Write) -> std::io::Result<()>,
) -> Result<(), CheckpointError> {
    metadata.insert(CRC_KEY.into(), "00000000".into());
    let header = header_bytes(entries, &metadata)?;
    let placeholder = format!("\"{CRC_KEY}\":\"00000000\"");
    let crc_at = find(&header, placeholder.as_bytes())
        .map(|i| 8 + i + placeholder.len() - 9)
        .ok_or_else(|| CheckpointError::BadFile {
            path: path.to_owned(),
            reason: "checksum placeholder missing from the header".into(),
        })?;
    super::write_atomic_with(path, |file| {
        let mut out = CrcWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, &mut *file),
            crc: crc32fast::Hasher::new(),
            counting: false,
        };
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        out.counting = true;
        for info in entries {
            write_data(info, &mut out)?;
        }
        let crc = format!("{:08x}", out.crc.clone().finalize());
        out.inner.flush()?;
        drop(out);
        file.write_all_at(crc.as_bytes(), crc_at as u64)
    })
    .map_err(|e| CheckpointError::io(path, e))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A writer that hashes what passes through once `counting` is on.
struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
    counting: bool,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if self.counting {
            self.crc.update(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes named tensors (any device, any dtype the format has) to a safetensors file, one
/// tensor at a time, atomically, with a CRC-32 of the data.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), CheckpointError> {
    let entries = tensors
        .iter()
        .map(|(name, t)| {
            let dtype =
                Dtype::of_kind(t.kind()).ok_or_else(|| CheckpointError::UnsupportedDtype {
                    path: path.to_owned(),
                    tensor: name.clone(),
                    dtype: format!("{:?}", t.kind()),
                })?;
            Ok((
                name.clone(),
                dtype,
                t.size().iter().map(|&d| d as u64).collect(),
            ))
        })
        .collect::<Result<Vec<_>, CheckpointError>>()?;
    let entries = layout_entries(entries);
    let mut index = 0;
    write_streamed(
        path,
        &entries,
        BTreeMap::from([("format".to_string(), "pt".to_string())]),
        |info, out| {
            let t = tensors[index].1.to_device(tch::Device::Cpu).contiguous();
            index += 1;
            let mut buf = vec![0u8; (info.offsets.1 - info.offsets.0) as usize];
            t.f_copy_data_u8(&mut buf, t.numel())
                .map_err(std::io::Error::other)?;
            out.write_all(&buf)
        },
    )
}

/// Reads every tensor of a safetensors file (on CPU, stored dtypes), after validating its header
/// and, when it carries one, its checksum.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let (file, header) = Header::open_checked(path)?;
    header
        .tensors
        .iter()
        .map(|info| Ok((info.name.clone(), header.read_tensor(&file, info)?)))
        .collect()
}
