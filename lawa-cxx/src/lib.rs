//! # lawa-cxx
//!
//! What lawa's C++ shims (`lawa-ops`, `lawa-dist`) share, so that each is compiled and called
//! the same way:
//!
//! - for their build scripts, [`Libtorch`]: the libtorch that torch-sys found, and a
//!   [`cc::Build`] set up as torch-sys compiles its own wrapper (C++17, the C++11 ABI, libtorch's
//!   headers), with `lawa_guarded.h` on the include path;
//! - at run time, [`take_error`]: the message of a C++ exception that `lawa_guarded` caught,
//!   on one line ([`fold`]); and [`panic_message`], the text of a panic (tch's errors).
//!
//! A build script:
//!
//! ```no_run
//! let Some(torch) = lawa_cxx::Libtorch::from_torch_sys() else {
//!     return; // torch-sys built with `doc-only`
//! };
//! torch.cxx().file("csrc/ops.cpp").compile("lawa_ops");
//! torch.link(&["torch_cpu", "c10"]);
//! ```

use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;

/// The libtorch a build links against.
#[derive(Debug, Clone)]
pub struct Libtorch {
    /// Its `lib` folder (libtorch_cpu.so and the others).
    pub lib: PathBuf,
    /// The folder above it, which holds `include`.
    pub root: PathBuf,
}

impl Libtorch {
    /// The libtorch torch-sys found (`DEP_TCH_LIBTORCH_LIB`, seen by the build scripts of crates
    /// that depend on torch-sys), or `None` when torch-sys was built with `doc-only`. Tells
    /// cargo to rerun the build script when it or `csrc/` changes.
    pub fn from_torch_sys() -> Option<Libtorch> {
        println!("cargo:rerun-if-changed=build.rs");
        println!("cargo:rerun-if-changed=csrc");
        println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
        let lib = PathBuf::from(std::env::var_os("DEP_TCH_LIBTORCH_LIB")?);
        let lib = lib.canonicalize().unwrap_or(lib);
        let root = lib.parent().unwrap_or(&lib).to_path_buf();
        Some(Libtorch { lib, root })
    }

    /// A C++17 build with the C++11 ABI against libtorch's headers and `lawa_guarded.h`, the
    /// warnings of libtorch's own headers silenced.
    pub fn cxx(&self) -> cc::Build {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .std("c++17")
            .define("_GLIBCXX_USE_CXX11_ABI", "1")
            .include(self.root.join("include"))
            .include(self.root.join("include/torch/csrc/api/include"))
            .include(include_dir())
            .flag_if_supported("-Wno-unused-parameter")
            .flag_if_supported("-Wno-deprecated-declarations")
            .warnings(false);
        build
    }

    /// Whether this libtorch was built with CUDA (it has `libtorch_cuda.so`).
    pub fn has_cuda(&self) -> bool {
        self.lib.join("libtorch_cuda.so").exists()
    }

    /// The folder of the wheel's NVIDIA packages beside torch (`nvidia/cu13`, `nvidia/nccl`).
    pub fn nvidia_dir(&self) -> Option<PathBuf> {
        Some(self.root.parent()?.join("nvidia"))
    }

    /// The include folders that libtorch's CUDA headers (`ATen/cuda/*`, `c10/cuda/*`) need,
    /// when this libtorch has CUDA and every one is there: the CUDA runtime's headers from the
    /// wheel's `nvidia/cu13/include`, and the compiler and CCCL headers the wheel lacks, which
    /// `scripts/bootstrap.sh` puts under `$LAWA_C10D_INCLUDE/cuda`. `None` without CUDA, and,
    /// with a cargo warning saying what is missing and that the build goes on `without` it,
    /// when a folder is not found.
    pub fn cuda_includes(&self, without: &str) -> Option<Vec<PathBuf>> {
        println!("cargo:rerun-if-env-changed=LAWA_C10D_INCLUDE");
        if !self.has_cuda() {
            return None;
        }
        let extra = std::env::var_os("LAWA_C10D_INCLUDE").map(PathBuf::from);
        let runtime = self.nvidia_dir().map(|d| d.join("cu13/include"));
        let compiler = extra.map(|d| d.join("cuda/nvidia/cu13/include"));
        let found = match (&runtime, &compiler) {
            (Some(runtime), Some(compiler))
                if runtime.join("cuda_runtime_api.h").exists() && compiler.join("crt").exists() =>
            {
                Some(vec![
                    runtime.clone(),
                    compiler.clone(),
                    compiler.join("cccl"),
                ])
            }
            _ => None,
        };
        if found.is_none() {
            println!(
                "cargo:warning=libtorch has CUDA but the CUDA headers were not found (the wheel's nvidia/cu13/include and LAWA_C10D_INCLUDE/cuda, which scripts/bootstrap.sh installs); building {without}"
            );
        }
        found
    }

    /// Links `libs` (e.g. `torch_cpu`) from libtorch, with an rpath to it so that the crate's
    /// own tests find them (as the workspace's `build.rs` does for the binary).
    pub fn link(&self, libs: &[&str]) {
        println!("cargo:rustc-link-search=native={}", self.lib.display());
        for lib in libs {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", self.lib.display());
    }
}

/// The folder holding `lawa_guarded.h`.
pub fn include_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include")
}

extern "C" {
    fn free(pointer: *mut c_void);
}

/// The message `lawa_guarded` left in `error` (freed here), on one line: libtorch's C++ stack
/// trace ("Exception raised from ...") dropped and whitespace folded. "no message" for null.
///
/// # Safety
/// `error` is null or a NUL-terminated string from `malloc`, not used again after this call.
pub unsafe fn take_error(error: *mut c_char) -> String {
    if error.is_null() {
        return "no message".into();
    }
    // SAFETY: the caller's promise.
    fold(&unsafe { take_text(error) })
}

/// The text a shim returned in a `malloc`ed string, unchanged (freed here); empty for null.
///
/// # Safety
/// `text` is null or a NUL-terminated string from `malloc`, not used again after this call.
pub unsafe fn take_text(text: *mut c_char) -> String {
    if text.is_null() {
        return String::new();
    }
    // SAFETY: the caller's promise.
    let out = unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated by malloc, freed once.
    unsafe { free(text.cast()) };
    out
}

/// `message` up to libtorch's stack trace, its whitespace folded to single spaces: how lawa
/// shows a libtorch error on one line.
pub fn fold(message: &str) -> String {
    let first = message
        .split("\nException raised from")
        .next()
        .unwrap_or(message);
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The text a panic carries (`panic!` with a message gives a `&str` or a `String`; tch's
/// panicking operations give libtorch's error), or "(no message)".
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "(no message)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_libtorch_message_loses_its_stack_trace_and_line_breaks() {
        let m = "The size of tensor a (3) must match\n  the size of tensor b (4)\nException raised from check at aten/x.cpp:1 (most recent call first):\nframe #0: ...";
        assert_eq!(
            fold(m),
            "The size of tensor a (3) must match the size of tensor b (4)"
        );
    }

    #[test]
    fn a_malloced_message_is_taken_and_a_null_one_named() {
        let text = b"boom\n\0";
        // SAFETY: a fresh malloc'ed copy, handed over once.
        let copy = unsafe {
            extern "C" {
                fn malloc(size: usize) -> *mut c_void;
            }
            let p = malloc(text.len()).cast::<u8>();
            std::ptr::copy_nonoverlapping(text.as_ptr(), p, text.len());
            p.cast::<c_char>()
        };
        assert_eq!(unsafe { take_error(copy) }, "boom");
        assert_eq!(unsafe { take_error(std::ptr::null_mut()) }, "no message");
    }
}
