//! Checkpoint files: post-hoc averaging against the in-memory mean; one header validation for
//! every reader (overflowing shapes, overlapping offsets, duplicate names); checksums.

use std::path::{Path, PathBuf};

use lawa_core::checkpoint::{average_safetensors, read_safetensors, write_safetensors, Header};
use tch::{Device, Kind, Tensor};

fn checkpoint(path: &Path, seed: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    let tensors = vec![
        (
            "h.0.w".to_string(),
            Tensor::randn([300, 70], (Kind::Float, Device::Cpu)),
        ),
        (
            "h.0.b16".to_string(),
            Tensor::randn([33], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16),
        ),
        (
            "h.0.f16".to_string(),
            Tensor::randn([5, 3], (Kind::Float, Device::Cpu)).to_kind(Kind::Half),
        ),
        ("steps".to_string(), Tensor::from_slice(&[seed * 10])),
    ];
    Tensor::write_safetensors(&tensors, path).unwrap();
    tensors
}

#[test]
fn streamed_mean_equals_the_in_memory_mean() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (1..=4)
        .map(|i| dir.path().join(format!("ckpt_{i}.safetensors")))
        .collect();
    let all: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| checkpoint(p, i as i64 + 1))
        .collect();
    let out = dir.path().join("avg.safetensors");
    let mut calls = 0;
    let report = average_safetensors(&paths, &out, |_, _| calls += 1).unwrap();
    assert_eq!((report.inputs, report.tensors, report.averaged), (4, 4, 3));
    assert!(calls >= 4);
    let got: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .collect();
    for (j, (name, t)) in all[0].iter().enumerate() {
        let g = &got[name];
        assert_eq!(g.kind(), t.kind(), "{name}: dtype kept");
        assert_eq!(g.size(), t.size());
        if t.kind() == Kind::Int64 {
            assert_eq!(
                g.int64_value(&[0]),
                40,
                "integers copied from the last checkpoint"
            );
            continue;
        }
        let stack: Vec<Tensor> = all.iter().map(|c| c[j].1.to_kind(Kind::Double)).collect();
        let mean = Tensor::stack(&stack, 0)
            .mean_dim(0, false, Kind::Double)
            .to_kind(t.kind());
        let diff = (g.to_kind(Kind::Double) - mean.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(diff, 0.0, "{name}: f64 mean rounded once equals torch's");
    }
    let header = Header::read(&out).unwrap();
    assert!(header.metadata["lawa_average_of"].contains("ckpt_4.safetensors"));
}

#[test]
fn disagreeing_checkpoints_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    let out = dir.path().join("out.safetensors");
    let base = checkpoint(&a, 1);
    let ones = |shape: &[i64], kind| Tensor::ones(shape, (kind, Device::Cpu));
    for (replace, needle) in [
        (("h.0.w", ones(&[300, 71], Kind::Float)), "shape"),
        (("h.0.w", ones(&[300, 70], Kind::Double)), "dtype"),
        (("other", ones(&[1], Kind::Float)), "missing"),
    ] {
        // b: a's tensors with h.0.w replaced (by another shape, dtype, or name).
        let mut tensors: Vec<(String, Tensor)> = base
            .iter()
            .filter(|(n, _)| n != "h.0.w")
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        tensors.push((replace.0.to_string(), replace.1));
        Tensor::write_safetensors(&tensors, &b).unwrap();
        let err = average_safetensors(&[a.clone(), b.clone()], &out, |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.safetensors") && err.contains(needle),
            "{err}"
        );
        assert!(!out.exists());
    }
    std::fs::write(&b, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let err = average_safetensors(&[a.clone(), b.clone()], &out, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("b.safetensors") && err.contains("not a valid checkpoint file"),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no temporary left"
    );
    // Checkpoints without a tensor: an error, not an empty average.
    let (e1, e2) = (
        dir.path().join("e1.safetensors"),
        dir.path().join("e2.safetensors"),
    );
    write_safetensors(&e1, &[]).unwrap();
    write_safetensors(&e2, &[]).unwrap();
    let err = average_safetensors(&[e1, e2], &out, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("e1.safetensors: no tensors to average"),
        "{err}"
    );
    assert!(!out.exists());
}

/// A safetensors file with `header` as its JSON header and `data` bytes after it.
fn raw_file(path: &Path, header: &str, data: usize) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(vec![0u8; data]);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn every_reader_refuses_the_same_malformed_headers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let good = dir.path().join("good.safetensors");
    checkpoint(&good, 1);
    let out = dir.path().join("avg.safetensors");
    let cases = [
        (
            r#"{"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,16]}}"#,
            "overflows",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            "overlap",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
            "twice",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
            "do not fit",
        ),
        (
            r#"{"a":{"dtype":"C64","shape":[2],"data_offsets":[0,16]}}"#,
            "dtype C64",
        ),
    ];
    for (header, needle) in cases {
        raw_file(&path, header, 16);
        for err in [
            Header::read(&path).unwrap_err().to_string(),
            read_safetensors(&path).unwrap_err().to_string(),
            average_safetensors(&[good.clone(), path.clone()], &out, |_, _| {})
                .unwrap_err()
                .to_string(),
        ] {
            assert!(
                err.contains("bad.safetensors") && err.contains(needle),
                "{needle}: {err}"
            );
        }
        assert!(!out.exists());
    }
}

#[test]
fn written_files_carry_a_checksum_that_catches_flipped_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let tensors = vec![
        (
            "w".to_string(),
            Tensor::randn([64, 8], (Kind::Float, Device::Cpu)),
        ),
        ("n".to_string(), Tensor::from_slice(&[7i64, 9])),
    ];
    write_safetensors(&path, &tensors).unwrap();
    // Readable by libtorch as an ordinary safetensors file.
    let by_torch = Tensor::read_safetensors(&path).unwrap();
    assert_eq!(by_torch.len(), 2);
    let back = read_safetensors(&path).unwrap();
    assert!(back[0].1.equal(&tensors[1].1) && back[1].1.equal(&tensors[0].1));
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() - 100;
    bytes[i] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = read_safetensors(&path).unwrap_err().to_string();
    assert!(
        err.contains("t.safetensors") && err.contains("CRC-32"),
        "{err}"
    );
}

fn python() -> PathBuf {
    PathBuf::from(std::env::var("LAWA_PYTHON").expect("LAWA_PYTHON (set by .cargo/config.toml)"))
}

/// Runs a Python snippet of the reference venv with `dir` as its working folder.
fn run_python(dir: &Path, code: &str) {
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(code)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pytorch_bin_files_read_as_data_equal_the_safetensors_of_the_same_tensors() {
    use lawa_core::checkpoint::TensorFiles;
    let dir = tempfile::tempdir().unwrap();
    // The same tensors as a single .bin (an OrderedDict with _metadata, as model.state_dict()
    // is), sharded .bin with an index (plain dicts, as transformers wrote), and safetensors.
    run_python(
        dir.path(),
        r#"
import torch, json, os, collections
from safetensors.torch import save_file
g = torch.Generator().manual_seed(0)
t = collections.OrderedDict()
t["a.weight"] = torch.randn(7, 5, generator=g)
t["b.bias"] = torch.randn(11, generator=g).to(torch.float16)
t["c.scale"] = torch.randn(2, 3, 4, generator=g).to(torch.bfloat16)
t["n"] = torch.tensor([3, 1, 4], dtype=torch.int64)
base = torch.randn(40, generator=g)
t["view"] = base[8:20].view(3, 4)          # a view at an offset inside a shared storage
t["other_view"] = base[20:30]
t._metadata = collections.OrderedDict([("", {"version": 1})])
torch.save(t, "single.bin")
os.mkdir("sharded")
keys = list(t.keys())
shards = [{k: t[k] for k in keys[:3]}, {k: t[k] for k in keys[3:]}]
wm = {}
for i, s in enumerate(shards):
    name = f"pytorch_model-0000{i+1}-of-00002.bin"
    torch.save(s, os.path.join("sharded", name))
    wm.update({k: name for k in s})
json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, open("sharded/pytorch_model.bin.index.json", "w"))
save_file({k: v.contiguous() for k, v in t.items()}, "same.safetensors")
"#,
    );
    let reference = TensorFiles::open(&dir.path().join("same.safetensors")).unwrap();
    for source in ["single.bin", "sharded"] {
        let files = TensorFiles::open(&dir.path().join(source)).unwrap();
        let names: Vec<&str> = files.entries().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["a.weight", "b.bias", "c.scale", "n", "other_view", "view"]
        );
        for e in reference.entries() {
            let (a, b) = (
                files.read(&e.name).unwrap(),
                reference.read(&e.name).unwrap(),
            );
            assert_eq!(a.kind(), b.kind(), "{source} {}", e.name);
            assert!(a.equal(&b), "{source} {}", e.name);
        }
    }
}

#[test]
fn a_pickle_that_asks_for_code_is_refused_by_name() {
    use lawa_core::checkpoint::TensorFiles;
    let dir = tempfile::tempdir().unwrap();
    // A zip laid out like torch.save, whose data.pkl calls os.system when unpickled by Python.
    run_python(
        dir.path(),
        r#"
import zipfile
evil = b"\x80\x02cos\nsystem\nq\x00X\x0b\x00\x00\x00touch pwnedq\x01\x85q\x02Rq\x03."
with zipfile.ZipFile("evil.bin", "w") as z:
    z.writestr("archive/data.pkl", evil)
    z.writestr("archive/version", "3\n")
"#,
    );
    let err = TensorFiles::open(&dir.path().join("evil.bin"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("evil.bin") && err.contains("os.system"),
        "{err}"
    );
    assert!(!dir.path().join("pwned").exists());
    // Not a zip at all, and the legacy format: clear errors.
    std::fs::write(dir.path().join("junk.bin"), b"hello world").unwrap();
    let err = TensorFiles::open(&dir.path().join("junk.bin"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a torch.save zip archive"), "{err}");
    std::fs::write(dir.path().join("old.bin"), b"\x80\x02\x8a\x0alm").unwrap();
    let err = TensorFiles::open(&dir.path().join("old.bin"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("legacy"), "{err}");
}
