//! lawa's own CUDA kernels as sources: which there are, and compiling one with NVRTC without a
//! GPU (a GPU run compiles them itself on first use, for the architecture it finds).

use std::ffi::CString;
use std::os::raw::{c_char, c_int};
use std::path::Path;

use crate::{call, OpsError};

extern "C" {
    fn lawa_cross_entropy_compile(
        arch: *const c_char,
        library: *const c_char,
        bytes: *mut usize,
        error: *mut *mut c_char,
    ) -> c_int;
    fn lawa_layer_norm_compile(
        arch: *const c_char,
        library: *const c_char,
        bytes: *mut usize,
        error: *mut *mut c_char,
    ) -> c_int;
    fn lawa_bias_grad_compile(
        arch: *const c_char,
        library: *const c_char,
        bytes: *mut usize,
        error: *mut *mut c_char,
    ) -> c_int;
}

/// A source of CUDA kernels in `csrc/kernels/` (each with `common.cuh` before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSource {
    /// `cross_entropy.cu`, behind [`cross_entropy`](crate::cross_entropy).
    CrossEntropy,
    /// `layer_norm.cu`, behind [`add_layer_norm`](crate::add_layer_norm).
    LayerNorm,
    /// `bias_grad.cu`, behind [`linear`](crate::linear)'s backward pass.
    BiasGrad,
}

impl KernelSource {
    /// Every source.
    pub const ALL: [KernelSource; 3] = [
        KernelSource::CrossEntropy,
        KernelSource::LayerNorm,
        KernelSource::BiasGrad,
    ];
}

/// Compiles `source` with NVRTC for `arch` (such as `"sm_90"`), as a GPU run does on first use,
/// checks that the binary defines every kernel its launcher can ask for by name, and returns
/// the size of the binary: the check that the kernels compile and link up, which needs NVRTC
/// but no GPU. NVRTC's log is in the error.
///
/// `nvrtc`: the path of `libnvrtc.so`, or `None` for the one beside libtorch, as a GPU run
/// finds it; then, as a GPU run, the binary comes from the kernel cache when an earlier process
/// left it there (`$LAWA_CACHE/kernels`, else `$XDG_CACHE_HOME/lawa/kernels`, else
/// `~/.cache/lawa/kernels`; keyed by a hash of the source, `arch` and NVRTC's version), and is
/// written there otherwise.
pub fn compile_kernels(
    source: KernelSource,
    arch: &str,
    nvrtc: Option<&Path>,
) -> Result<usize, OpsError> {
    let op = "compiling lawa's CUDA kernels";
    let text = |s: &str| {
        CString::new(s).map_err(|_| OpsError {
            op,
            message: format!("{s:?} contains a NUL"),
        })
    };
    let arch = text(arch)?;
    let library = text(&nvrtc.map(|p| p.display().to_string()).unwrap_or_default())?;
    let compile = match source {
        KernelSource::CrossEntropy => lawa_cross_entropy_compile,
        KernelSource::LayerNorm => lawa_layer_norm_compile,
        KernelSource::BiasGrad => lawa_bias_grad_compile,
    };
    let mut bytes = 0usize;
    call(op, |error| {
        // SAFETY: two NUL-terminated strings borrowed for the call; `bytes` is written once.
        unsafe { compile(arch.as_ptr(), library.as_ptr(), &mut bytes, error) }
    })?;
    Ok(bytes)
}
