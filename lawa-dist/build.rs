//! Compiles the c10d shim (`csrc/`) against the libtorch that torch-sys found, the way torch-sys
//! compiles its own wrapper (see `lawa-cxx`).
//!
//! * Gloo (CPU): needs gloo's headers, which the torch wheel lacks; `scripts/bootstrap.sh` puts
//!   Debian's under `.lawa/c10d-include/gloo` (`LAWA_C10D_INCLUDE`). Without them the shim is
//!   built without Gloo and a multi-process run says so.
//! * NCCL (CUDA): built when libtorch has `libtorch_cuda.so` and the CUDA headers are found (the
//!   wheel's `nvidia/{cu13,nccl}` beside torch, plus `.lawa/c10d-include/cuda`).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LAWA_C10D_INCLUDE");
    println!("cargo::rustc-check-cfg=cfg(lawa_gloo, lawa_nccl)");
    let Some(torch) = lawa_cxx::Libtorch::from_torch_sys() else {
        return; // torch-sys built with `doc-only`
    };
    let extra = std::env::var_os("LAWA_C10D_INCLUDE").map(PathBuf::from);
    let gloo = extra
        .as_ref()
        .map(|d| d.join("gloo/include"))
        .filter(|d| d.join("gloo/config.h").exists());
    let cuda = cuda_includes(&torch, extra.as_deref());

    let mut build = torch.cxx();
    build
        .include("csrc")
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
    let mut libs = vec!["torch_cpu", "c10"];
    if let Some(dirs) = &cuda {
        build
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .define("LAWA_WITH_NCCL", None);
        for d in dirs {
            build.include(d);
        }
        println!("cargo:rustc-cfg=lawa_nccl");
        libs.extend(["torch_cuda", "c10_cuda"]);
    }
    build.compile("lawa_c10d");
    torch.link(&libs);
}

/// The include folders NCCL's process group needs, when every one is there.
fn cuda_includes(torch: &lawa_cxx::Libtorch, extra: Option<&Path>) -> Option<Vec<PathBuf>> {
    if !torch.lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    let nvidia = torch.root.parent()?.join("nvidia");
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
