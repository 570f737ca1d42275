//! Compiles the operations shim (`csrc/ops.cpp`) against the libtorch headers torch-sys found,
//! as torch-sys compiles its own wrapper (C++17, the C++11 ABI); adds an rpath to libtorch for
//! this crate's own tests, as `../build.rs` does for the others.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        return; // torch-sys built with `doc-only`
    };
    let lib = PathBuf::from(lib);
    let lib = lib.canonicalize().unwrap_or(lib);
    let torch = lib.parent().unwrap_or(&lib).to_path_buf();
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(torch.join("include"))
        .include(torch.join("include/torch/csrc/api/include"))
        .warnings(false)
        .file("csrc/ops.cpp")
        .compile("lawa_ops");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
