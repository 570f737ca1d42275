//! Compiles the operations shim (`csrc/ops.cpp`, `csrc/profiler.cpp`) against the libtorch headers torch-sys found,
//! as torch-sys compiles its own wrapper (see `lawa-cxx`).

fn main() {
    let Some(torch) = lawa_cxx::Libtorch::from_torch_sys() else {
        return; // torch-sys built with `doc-only`
    };
    torch
        .cxx()
        .file("csrc/ops.cpp")
        .file("csrc/profiler.cpp")
        .compile("lawa_ops");
    torch.link(&["torch_cpu", "c10"]);
}
