//! Shared build script of every lawa crate (each Cargo.toml says `build = "../build.rs"`).
//!
//! torch-sys finds libtorch (from `LIBTORCH`, `LIBTORCH_USE_PYTORCH`, or `.lawa/libtorch` that
//! `scripts/bootstrap.sh` links and `.cargo/config.toml` names) and hands us its lib folder as
//! `DEP_TCH_LIBTORCH_LIB`. Linker arguments do not propagate from a dependency's build script, so
//! each crate that builds binaries or tests adds two of its own:
//!
//! * an rpath to that folder, so `cargo run`, `cargo test` and the built binary find libtorch
//!   without `LD_LIBRARY_PATH`;
//! * `-Wl,--no-as-needed -ltorch_cuda` when the libtorch has CUDA, because nothing references a
//!   symbol of `libtorch_cuda` directly and an `--as-needed` linker would drop it, leaving CUDA
//!   silently unavailable at run time.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=../build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        // torch-sys built with `doc-only`: nothing to link.
        return;
    };
    let lib = PathBuf::from(lib);
    let lib = lib.canonicalize().unwrap_or(lib);
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" || target_os == "macos" {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    if target_os == "linux" && lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-env=LAWA_LIBTORCH_LIB={}", lib.display());
}
