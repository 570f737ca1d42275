//! Compiles the operations shim (`csrc/*.cpp`) against the libtorch headers torch-sys found,
//! as torch-sys compiles its own wrapper (see `lawa-cxx`). The CUDA kernels in `csrc/kernels/`
//! are not compiled here: their source is embedded as a string (`<name>_cu.inc` in `OUT_DIR`)
//! for NVRTC to compile at run time, for the GPU it finds (and compiled here only into the CPU
//! emulation the tests run, `*_emulated.cpp`). `csrc/cuda_graph.cpp` is compiled when libtorch
//! has CUDA and the CUDA headers are found (cfg `lawa_cuda_graphs`).

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (source, include) in [
        ("csrc/kernels/common.cuh", "common_cuh.inc"),
        ("csrc/kernels/cross_entropy.cu", "cross_entropy_cu.inc"),
        ("csrc/kernels/layer_norm.cu", "layer_norm_cu.inc"),
        ("csrc/kernels/bias_grad.cu", "bias_grad_cu.inc"),
    ] {
        embed_kernel(source, &out.join(include));
    }
    println!("cargo::rustc-check-cfg=cfg(lawa_cuda_graphs)");
    let Some(torch) = lawa_cxx::Libtorch::from_torch_sys() else {
        return; // torch-sys built with `doc-only`
    };
    // CUDA graphs need libtorch's CUDA headers, and so the CUDA runtime's.
    let cuda = torch.cuda_includes("without CUDA graphs");
    let mut build = torch.cxx();
    if let Some(dirs) = &cuda {
        build.file("csrc/cuda_graph.cpp");
        for d in dirs {
            build.include(d);
        }
        println!("cargo:rustc-cfg=lawa_cuda_graphs");
    }
    build
        .include("csrc")
        .include(&out)
        .file("csrc/ops.cpp")
        .file("csrc/profiler.cpp")
        .file("csrc/host_copy.cpp")
        .file("csrc/nvrtc_module.cpp")
        .file("csrc/cross_entropy.cpp")
        .file("csrc/cross_entropy_emulated.cpp")
        .file("csrc/layer_norm.cpp")
        .file("csrc/layer_norm_emulated.cpp")
        .file("csrc/linear.cpp")
        .file("csrc/linear_emulated.cpp")
        .compile("lawa_ops");
    // For the tests: whether this libtorch has CUDA (and so should have CUDA graphs).
    println!("cargo:rustc-env=LAWA_LIBTORCH_LIB={}", torch.lib.display());
    let mut libs = vec!["torch_cpu", "c10"];
    if cuda.is_some() {
        libs.extend(["torch_cuda", "c10_cuda"]);
    }
    torch.link(&libs);
    println!("cargo:rustc-link-lib=dylib=dl");
    // The crate's tests need CUDA when libtorch has it (the GPU check runs them on the device):
    // nothing references libtorch_cuda directly, so an --as-needed linker would drop it and
    // leave CUDA silently unavailable (as the workspace's build.rs explains).
    if torch.has_cuda() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// Writes `source` as a C++ raw string literal to `include`.
fn embed_kernel(source: &str, include: &PathBuf) {
    println!("cargo:rerun-if-changed={source}");
    let text = std::fs::read_to_string(source).unwrap_or_else(|e| panic!("{source}: {e}"));
    let delimiter = "lawa_cu";
    assert!(
        !text.contains(&format!("){delimiter}\"")),
        "{source} contains the raw string's delimiter"
    );
    std::fs::write(include, format!("R\"{delimiter}({text}){delimiter}\"\n"))
        .unwrap_or_else(|e| panic!("{}: {e}", include.display()));
}
