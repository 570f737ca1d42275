//! Compiles the c10d shim (`csrc/`) against the libtorch that torch-sys found, the way torch-sys
//! compiles its own wrapper: the same headers, C++17 and the C++11 ABI.
//!
//! * Gloo (CPU): needs gloo's headers, which the torch wheel lacks; `scripts/bootstrap.sh` puts
//!   Debian's under `.lawa/c10d-include/gloo` (`LAWA_C10D_INCLUDE`). Without them the shim is
//!   built without Gloo and a multi-process run says so.
//! * NCCL (CUDA): built when libtorch has `libtorch_cuda.so` and the CUDA headers are found (the
//!   wheel's `nvidia/{cu13,nccl}` beside torch, plus `.lawa/c10d-include/cuda`).
//!
//! Like `../build.rs`, it adds an rpath to libtorch for this crate's own tests.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=LAWA_C10D_INCLUDE");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo::rustc-check-cfg=cfg(lawa_gloo, lawa_nccl)");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        return; // torch-sys built with `doc-only`
    };
    let lib = PathBuf::from(lib);
    let lib = lib.canonicalize().unwrap_or(lib);
    let torch = lib.parent().unwrap_or(&lib).to_path_buf();
    let extra = std::env::var_os("LAWA_C10D_INCLUDE").map(PathBuf::from);
    let gloo = extra
        .as_ref()
        .map(|d| d.join("gloo/include"))
        .filter(|d| d.join("gloo/config.h").exists());
    let cuda = cuda_includes(&torch, extra.as_deref(), &lib);

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(torch.join("include"))
        .include(torch.join("include/torch/csrc/api/include"))
        .include("csrc")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false)
        .file("csrc/c10d_shim.cpp")
        .file("csrc/nccl.cpp");
    match &gloo {
        Some(dir) => {
            build.define("USE_C10D_GLOO", None).include(dir);
            println!("cargo:rustc-cfg=lawa_gloo");
        }
        None => println!(
            "cargo:warning=gloo's headers not found (LAWA_C10D_INCLUDE); building without multi-process training on CPU"
        ),
    }
    if let Some(dirs) = &cuda {
        build
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .define("LAWA_WITH_NCCL", None);
        for d in dirs {
            build.include(d);
        }
        println!("cargo:rustc-cfg=lawa_nccl");
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    build.compile("lawa_c10d");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// The include folders NCCL's process group needs, when every one is there.
fn cuda_includes(torch: &Path, extra: Option<&Path>, lib: &Path) -> Option<Vec<PathBuf>> {
    if !lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    let nvidia = torch.parent()?.join("nvidia");
    let headers = extra?.join("cuda/nvidia/cu13/include");
    let dirs = vec![
        nvidia.join("nccl/include"),
        nvidia.join("cu13/include"),
        headers.clone(),
        headers.join("cccl"),
    ];
    let found = dirs[0].join("nccl.h").exists()
        && dirs[1].join("cuda_runtime_api.h").exists()
        && headers.join("crt").exists();
    if !found {
        println!(
            "cargo:warning=libtorch has CUDA but the NCCL/CUDA headers were not found (the wheel's nvidia/{{nccl,cu13}}/include and LAWA_C10D_INCLUDE/cuda); building without NCCL"
        );
    }
    found.then_some(dirs)
}
