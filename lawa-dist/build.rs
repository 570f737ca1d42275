//! Compiles the c10d shim (`csrc/`) against the libtorch that torch-sys found, the way torch-sys
//! compiles its own wrapper (see `lawa-cxx`).
//!
//! * Gloo (CPU): needs gloo's headers, which the torch wheel lacks; `scripts/bootstrap.sh` puts
//!   Debian's under `.lawa/c10d-include/gloo` (`LAWA_C10D_INCLUDE`). Without them the shim is
//!   built without Gloo and a multi-process run says so.
//! * NCCL (CUDA): built when libtorch has `libtorch_cuda.so` and the CUDA headers are found (the
//!   wheel's `nvidia/{cu13,nccl}` beside torch, plus `.lawa/c10d-include/cuda`).

use std::path::PathBuf;

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
    let cuda = cuda_includes(&torch);

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

/// The include folders NCCL's process group needs (NCCL's and the CUDA runtime's), when every
/// one is there.
fn cuda_includes(torch: &lawa_cxx::Libtorch) -> Option<Vec<PathBuf>> {
    let nccl = torch.nvidia_dir()?.join("nccl/include");
    let mut dirs = torch.cuda_includes("without NCCL")?;
    if !nccl.join("nccl.h").exists() {
        println!(
            "cargo:warning=libtorch has CUDA but NCCL's headers were not found (the wheel's nvidia/nccl/include); building without NCCL"
        );
        return None;
    }
    dirs.insert(0, nccl);
    Some(dirs)
}
