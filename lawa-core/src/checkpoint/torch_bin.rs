//! PyTorch's `torch.save` files (`pytorch_model.bin`) read as data, never as code: the zip
//! archive's `data.pkl` is interpreted by a small unpickler that knows only the opcodes a saved
//! state dict uses and only the callables that rebuild tensors and dicts (any other global is an
//! error naming it), and each tensor is located in its uncompressed `data/<key>` record so that it
//! can be read, or read in part, straight from the file.
//!
//! Written here rather than taken from a crate: candle's reader pulls in candle's tensor types and
//! trusts sizes a crafted file controls; `serde-pickle` reads no persistent ids; libtorch's
//! unpickler (tch's `loadz_multi`) refuses the `OrderedDict` that older transformers wrote. This
//! one needs only `zip`, already in the tree through tch.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use super::safetensors::Dtype;
use super::CheckpointError;

/// One tensor of a `.bin` file: where its bytes lie in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct BinTensor {
    /// Its name in the state dict.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<u64>,
    /// Offset of its first byte in the file.
    pub offset: u64,
    /// Bytes of data (`numel * element size`).
    pub bytes: u64,
}

/// A value of the pickle machine.
#[derive(Debug, Clone)]
enum Value {
    None,
    /// A flag or a float (`requires_grad`, ...): read past, never used.
    Other,
    Int(i64),
    Str(Rc<str>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<Vec<Value>>),
    Dict(Rc<Vec<(Value, Value)>>),
    /// A `module.name` global: only names, never resolved to code.
    Global(Rc<str>),
    /// A storage reference from a persistent id: (key, dtype, elements).
    Storage(Rc<str>, Dtype, u64),
    /// A tensor view of a storage.
    Tensor(Rc<TensorRef>),
    Mark,
}

#[derive(Debug)]
struct TensorRef {
    key: Rc<str>,
    dtype: Dtype,
    storage_elements: u64,
    offset: u64,
    shape: Vec<u64>,
    stride: Vec<u64>,
}

/// Reads the tensor index of a `torch.save` zip file: every tensor of its state dict (nested
/// dicts flattened with `.`), with its dtype, shape and byte offset in the file.
pub fn read_index(path: &Path) -> Result<Vec<BinTensor>, CheckpointError> {
    let bad = |reason: String| CheckpointError::BadFile {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    let mut magic = [0u8; 4];
    (&file)
        .read_exact(&mut magic)
        .map_err(|_| bad("too short to be a PyTorch file".into()))?;
    if magic != *b"PK\x03\x04" {
        return Err(bad(if magic[0] == 0x80 {
            "a legacy (pre-1.6, non-zip) torch.save file; re-save it with a recent torch, or use model.safetensors".into()
        } else {
            "not a torch.save zip archive".into()
        }));
    }
    let mut archive =
        zip::ZipArchive::new(&file).map_err(|e| bad(format!("not a readable zip archive: {e}")))?;
    let first = archive
        .by_index(0)
        .map_err(|e| bad(e.to_string()))?
        .name()
        .to_string();
    let prefix = first.split('/').next().unwrap_or("").to_string();
    let pickle = {
        let mut entry = archive
            .by_name(&format!("{prefix}/data.pkl"))
            .map_err(|_| {
                bad("no data.pkl record (a TorchScript archive or another zip file?)".into())
            })?;
        if entry.size() > 1 << 30 {
            return Err(bad(format!("data.pkl of {} bytes", entry.size())));
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("data.pkl: {e}")))?;
        bytes
    };
    if let Ok(mut order) = archive.by_name(&format!("{prefix}/byteorder")) {
        let mut text = String::new();
        let _ = order.read_to_string(&mut text);
        if text.trim() != "little" {
            return Err(bad(format!(
                "byte order {:?}: only little-endian files are read",
                text.trim()
            )));
        }
    }
    let root = Unpickler::new(&pickle)
        .run()
        .map_err(|e| bad(format!("data.pkl: {e}")))?;
    let mut tensors = Vec::new();
    flatten("", &root, &mut tensors).map_err(bad)?;
    if tensors.is_empty() {
        return Err(bad("the file holds no tensors".into()));
    }
    let mut out = Vec::with_capacity(tensors.len());
    let mut records: HashMap<Rc<str>, (u64, u64)> = HashMap::new();
    for (name, t) in tensors {
        let (start, size) = match records.get(&t.key) {
            Some(&r) => r,
            None => {
                let entry = archive
                    .by_name(&format!("{prefix}/data/{}", t.key))
                    .map_err(|_| {
                        bad(format!(
                            "tensor `{name}`: storage record data/{} missing",
                            t.key
                        ))
                    })?;
                if entry.compression() != zip::CompressionMethod::Stored {
                    return Err(bad(format!(
                        "storage data/{} is compressed; lawa reads torch.save files as written",
                        t.key
                    )));
                }
                let r = (entry.data_start(), entry.size());
                records.insert(t.key.clone(), r);
                r
            }
        };
        out.push(locate(name, &t, start, size).map_err(bad)?);
    }
    Ok(out)
}

/// The byte range of a contiguous tensor inside its storage record.
fn locate(name: String, t: &TensorRef, start: u64, size: u64) -> Result<BinTensor, String> {
    let es = t.dtype.size() as u64;
    if t.storage_elements.checked_mul(es) != Some(size) {
        return Err(format!(
            "tensor `{name}`: storage data/{} holds {size} bytes, not {} elements of {}",
            t.key,
            t.storage_elements,
            t.dtype.name()
        ));
    }
    if t.stride.len() != t.shape.len() {
        return Err(format!(
            "tensor `{name}`: stride {:?} does not match shape {:?}",
            t.stride, t.shape
        ));
    }
    let mut expected = 1u64;
    for (d, (&n, &s)) in t.shape.iter().zip(&t.stride).enumerate().rev() {
        if n != 1 && s != expected {
            return Err(format!(
                "tensor `{name}`: not contiguous (stride {:?} for shape {:?}, dim {d})",
                t.stride, t.shape
            ));
        }
        expected = expected
            .checked_mul(n)
            .ok_or_else(|| format!("tensor `{name}`: shape {:?} overflows", t.shape))?;
    }
    let numel = expected;
    let end = t
        .offset
        .checked_add(numel)
        .filter(|&e| e <= t.storage_elements)
        .ok_or_else(|| {
            format!(
                "tensor `{name}`: elements {}..{} outside its storage of {}",
                t.offset,
                t.offset.saturating_add(numel),
                t.storage_elements
            )
        })?;
    Ok(BinTensor {
        name,
        dtype: t.dtype,
        shape: t.shape.clone(),
        offset: start + t.offset * es,
        bytes: (end - t.offset) * es,
    })
}

/// The tensors of a (nested) state dict, names joined with `.`.
fn flatten(
    prefix: &str,
    value: &Value,
    out: &mut Vec<(String, Rc<TensorRef>)>,
) -> Result<(), String> {
    match value {
        Value::Dict(items) => {
            for (k, v) in items.iter() {
                let Value::Str(k) = k else {
                    return Err("a state dict key is not a string".into());
                };
                let name = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out)?;
            }
            Ok(())
        }
        Value::Tensor(t) => {
            out.push((prefix.to_string(), t.clone()));
            Ok(())
        }
        // Counters, flags and the like beside the tensors of a training checkpoint.
        _ => Ok(()),
    }
}

/// The storage classes torch writes in persistent ids, and their element types.
fn storage_dtype(global: &str) -> Option<Dtype> {
    Some(match global {
        "torch.FloatStorage" => Dtype::F32,
        "torch.DoubleStorage" => Dtype::F64,
        "torch.HalfStorage" => Dtype::F16,
        "torch.BFloat16Storage" => Dtype::BF16,
        "torch.LongStorage" => Dtype::I64,
        "torch.IntStorage" => Dtype::I32,
        "torch.ShortStorage" => Dtype::I16,
        "torch.CharStorage" => Dtype::I8,
        "torch.ByteStorage" => Dtype::U8,
        "torch.BoolStorage" => Dtype::Bool,
        _ => return None,
    })
}

/// The protocol-2..5 pickle opcodes a state dict uses, run on a stack of [`Value`]s. Memory is
/// bounded by the pickle's own size: every value is built from bytes read, memo entries are
/// shared (`Rc`), and lengths are checked against the bytes left before anything is allocated.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler {
            data,
            pos: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unterminated GLOBAL name")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "GLOBAL name is not UTF-8")?;
        self.pos += n + 1;
        Ok(s)
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "stack underflow".to_string())
    }

    /// The values above the topmost mark, the mark removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or("no MARK")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn string(&mut self, n: usize) -> Result<Value, String> {
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| "a string is not UTF-8")?;
        Ok(Value::Str(s.into()))
    }

    /// Executes the pickle up to its STOP and returns the value it leaves.
    fn run(mut self) -> Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                b'.' => return self.pop(), // STOP
                0x80 => {
                    let proto = self.u8()?;
                    if !(2..=5).contains(&proto) {
                        return Err(format!("pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'('
                | b')'
                | b't'
                | 0x85..=0x87
                | b']'
                | b'l'
                | b'a'
                | b'e'
                | b'}'
                | b'd'
                | b's'
                | b'u' => self.container(op)?,
                b'N' | 0x88 | 0x89 | b'K' | b'M' | b'J' | 0x8a | b'G' | b'X' | 0x8c => {
                    let v = self.scalar(op)?;
                    self.stack.push(v);
                }
                b'q' | b'r' | 0x94 | b'h' | b'j' | b'0' | b'1' => self.memo_or_pop(op)?,
                b'c' | 0x93 | b'Q' | b'R' | 0x81 | b'b' => self.object(op)?,
                other => {
                    return Err(format!(
                        "opcode 0x{other:02x} at byte {} is not one a saved state dict uses",
                        self.pos - 1
                    ))
                }
            }
        }
    }

    /// Tuples, lists and dicts: built empty, from the stack, or extended.
    fn container(&mut self, op: u8) -> Result<(), String> {
        match op {
            b'(' => self.stack.push(Value::Mark),
            b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
            b't' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Tuple(Rc::new(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    return Err("stack underflow".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.stack.push(Value::Tuple(Rc::new(items)));
            }
            b']' => self.stack.push(Value::List(Rc::new(Vec::new()))),
            b'l' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::List(Rc::new(items)));
            }
            b'a' => {
                let v = self.pop()?;
                self.extend_list(vec![v])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend_list(items)?;
            }
            b'}' => self.stack.push(Value::Dict(Rc::new(Vec::new()))),
            b'd' => {
                let items = self.pop_mark()?;
                let dict = pairs(items)?;
                self.stack.push(Value::Dict(Rc::new(dict)));
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_dict(vec![(k, v)])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.extend_dict(pairs(items)?)?;
            }
            _ => unreachable!("run() sends only container opcodes"),
        }
        Ok(())
    }

    /// None, booleans, integers, floats (kept as `Other`) and strings.
    fn scalar(&mut self, op: u8) -> Result<Value, String> {
        Ok(match op {
            b'N' => Value::None,
            0x88 | 0x89 => Value::Other,
            b'K' => Value::Int(self.u8()? as i64),
            b'M' => Value::Int(self.u16()? as i64),
            b'J' => Value::Int(self.u32()? as i32 as i64),
            0x8a => {
                let n = self.u8()? as usize;
                let bytes = self.take(n)?;
                if n > 8 {
                    return Err(format!("an integer of {n} bytes"));
                }
                let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                    [0xff; 8]
                } else {
                    [0; 8]
                };
                buf[..n].copy_from_slice(bytes);
                Value::Int(i64::from_le_bytes(buf))
            }
            b'G' => {
                self.take(8)?;
                Value::Other
            }
            b'X' => {
                let n = self.u32()? as usize;
                self.string(n)?
            }
            0x8c => {
                let n = self.u8()? as usize;
                self.string(n)?
            }
            _ => unreachable!("run() sends only scalar opcodes"),
        })
    }

    /// The memo (PUT, MEMOIZE, GET) and POP, POP_MARK.
    fn memo_or_pop(&mut self, op: u8) -> Result<(), String> {
        match op {
            b'q' => {
                let i = self.u8()? as u32;
                self.memoize(i)
            }
            b'r' => {
                let i = self.u32()?;
                self.memoize(i)
            }
            0x94 => self.memoize(self.memo.len() as u32),
            b'h' => {
                let i = self.u8()? as u32;
                self.recall(i)
            }
            b'j' => {
                let i = self.u32()?;
                self.recall(i)
            }
            b'0' => self.pop().map(drop),
            b'1' => self.pop_mark().map(drop),
            _ => unreachable!("run() sends only memo and pop opcodes"),
        }
    }

    /// Globals, storages (persistent ids), calls (REDUCE, NEWOBJ) and BUILD.
    fn object(&mut self, op: u8) -> Result<(), String> {
        let v = match op {
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                Value::Global(format!("{module}.{name}").into())
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(m), Value::Str(n)) = (module, name) else {
                    return Err("STACK_GLOBAL of non-strings".into());
                };
                Value::Global(format!("{m}.{n}").into())
            }
            b'Q' => {
                let pid = self.pop()?;
                persistent_storage(&pid)?
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                reduce(&callable, &args)?
            }
            b'b' => {
                // BUILD: state set on an object (OrderedDict's _metadata): ignored.
                self.pop()?;
                return match self.stack.last() {
                    Some(Value::Dict(_)) | Some(Value::Tensor(_)) => Ok(()),
                    _ => Err("BUILD on an object that is not a dict or tensor".into()),
                };
            }
            _ => unreachable!("run() sends only object opcodes"),
        };
        self.stack.push(v);
        Ok(())
    }

    fn memoize(&mut self, i: u32) -> Result<(), String> {
        let v = self
            .stack
            .last()
            .ok_or("memoize on an empty stack")?
            .clone();
        self.memo.insert(i, v);
        Ok(())
    }

    fn recall(&mut self, i: u32) -> Result<(), String> {
        let v = self
            .memo
            .get(&i)
            .ok_or_else(|| format!("memo {i} missing"))?
            .clone();
        self.stack.push(v);
        Ok(())
    }

    fn extend_list(&mut self, items: Vec<Value>) -> Result<(), String> {
        match self.stack.last_mut() {
            Some(Value::List(list)) => {
                Rc::make_mut(list).extend(items);
                Ok(())
            }
            _ => Err("APPEND to a non-list".into()),
        }
    }

    fn extend_dict(&mut self, items: Vec<(Value, Value)>) -> Result<(), String> {
        match self.stack.last_mut() {
            Some(Value::Dict(dict)) => {
                Rc::make_mut(dict).extend(items);
                Ok(())
            }
            _ => Err("SETITEM on a non-dict".into()),
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("an odd number of dict items".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// A persistent id `('storage', <storage class>, key, location, numel)`.
fn persistent_storage(pid: &Value) -> Result<Value, String> {
    let Value::Tuple(items) = pid else {
        return Err("a persistent id that is not a tuple".into());
    };
    match items.as_slice() {
        [Value::Str(kind), Value::Global(class), Value::Str(key), _location, Value::Int(numel), ..]
            if &**kind == "storage" =>
        {
            let dtype = storage_dtype(class).ok_or_else(|| {
                format!("storage class {class} is not read (a quantized or complex tensor?)")
            })?;
            let numel = u64::try_from(*numel).map_err(|_| "a negative storage size")?;
            Ok(Value::Storage(key.clone(), dtype, numel))
        }
        _ => Err("a persistent id that is not a torch storage".into()),
    }
}

fn int(v: &Value, what: &str) -> Result<u64, String> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        _ => Err(format!("{what} is not a non-negative integer")),
    }
}

fn ints(v: &Value, what: &str) -> Result<Vec<u64>, String> {
    match v {
        Value::Tuple(items) => items.iter().map(|x| int(x, what)).collect(),
        _ => Err(format!("{what} is not a tuple")),
    }
}

/// REDUCE: only the callables that rebuild tensors and dicts; anything else is refused by name.
fn reduce(callable: &Value, args: &Value) -> Result<Value, String> {
    let Value::Global(name) = callable else {
        return Err("REDUCE of something that is not a global".into());
    };
    let Value::Tuple(args) = args else {
        return Err(format!("{name}: arguments are not a tuple"));
    };
    match &**name {
        "collections.OrderedDict" => Ok(Value::Dict(Rc::new(Vec::new()))),
        "torch._utils._rebuild_tensor_v2" => match args.as_slice() {
            [Value::Storage(key, dtype, numel), offset, size, stride, ..] => {
                Ok(Value::Tensor(Rc::new(TensorRef {
                    key: key.clone(),
                    dtype: *dtype,
                    storage_elements: *numel,
                    offset: int(offset, "storage offset")?,
                    shape: ints(size, "size")?,
                    stride: ints(stride, "stride")?,
                })))
            }
            _ => Err("_rebuild_tensor_v2 without a storage".into()),
        },
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(format!("{name} without a tensor")),
            }
        }
        "torch._tensor._rebuild_from_type_v2" => match args.as_slice() {
            [func, _type, inner, ..] => reduce(func, inner),
            _ => Err(format!("{name}: arguments")),
        },
        other => Err(format!(
            "the file asks for `{other}`, which lawa does not run (only tensors and dicts are read)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(shape: Vec<u64>, stride: Vec<u64>, storage_elements: u64) -> TensorRef {
        TensorRef {
            key: "0".into(),
            dtype: Dtype::F32,
            storage_elements,
            offset: 0,
            shape,
            stride,
        }
    }

    /// A contiguous view is located with its bytes; one whose stride lists fewer dimensions than
    /// its shape (which would count 4 elements of a [4, 3] tensor and let libtorch read past the
    /// buffer) is refused, as is a strided one.
    #[test]
    fn a_view_is_located_only_when_contiguous_with_a_stride_per_dimension() {
        let t = locate("w".into(), &view(vec![4, 3], vec![3, 1], 12), 100, 48).unwrap();
        assert_eq!((t.offset, t.bytes, t.shape), (100, 48, vec![4, 3]));
        let e = locate("w".into(), &view(vec![4, 3], vec![1], 4), 100, 16).unwrap_err();
        assert!(e.contains("stride [1] does not match shape [4, 3]"), "{e}");
        let e = locate("w".into(), &view(vec![4, 3], vec![1, 4], 12), 100, 48).unwrap_err();
        assert!(e.contains("not contiguous"), "{e}");
    }
}
