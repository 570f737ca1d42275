//! lawa's CUDA kernel sources compiled by NVRTC (the wheel's, beside libtorch), as a GPU run
//! compiles them, each binary checked to define every kernel its launcher can ask for by name:
//! no GPU needed.

use std::path::PathBuf;

use lawa_ops::{compile_kernels, KernelSource};

/// The NVRTC in the torch wheel beside libtorch (`nvidia/cu*/lib`), if this libtorch has one.
fn wheel_nvrtc() -> Option<PathBuf> {
    let libtorch = PathBuf::from(std::env::var_os("LIBTORCH")?);
    let nvidia = libtorch.canonicalize().ok()?.parent()?.join("nvidia");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&nvidia)
        .ok()?
        .flatten()
        .map(|e| e.path().join("lib"))
        .flat_map(|lib| std::fs::read_dir(lib).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("libnvrtc.so.") && !name.contains("builtins") && !name.contains("alt")
        })
        .collect();
    found.sort();
    found.pop()
}

#[test]
fn nvrtc_compiles_every_kernel_source_for_ampere_and_hopper() {
    let Some(nvrtc) = wheel_nvrtc() else {
        eprintln!("skipped: this libtorch has no NVRTC beside it (a CPU-only build)");
        return;
    };
    for source in KernelSource::ALL {
        for arch in ["sm_80", "sm_90"] {
            let bytes = compile_kernels(source, arch, Some(&nvrtc))
                .unwrap_or_else(|e| panic!("{source:?} for {arch}: {e}"));
            assert!(bytes > 1000, "{source:?} for {arch}: a {bytes}-byte binary");
        }
    }
    // Without a path, NVRTC is found as a GPU run finds it (the wheel's, beside libtorch): the
    // same library, so the same binary.
    for source in KernelSource::ALL {
        assert_eq!(
            compile_kernels(source, "sm_90", None).unwrap(),
            compile_kernels(source, "sm_90", Some(&nvrtc)).unwrap(),
            "{source:?}"
        );
    }
    let e = compile_kernels(KernelSource::LayerNorm, "sm_1", Some(&nvrtc)).unwrap_err();
    assert!(e.message.contains("sm_1"), "{e}");
    let e = compile_kernels(
        KernelSource::CrossEntropy,
        "sm_90",
        Some(std::path::Path::new("/nonexistent/libnvrtc.so")),
    )
    .unwrap_err();
    assert!(e.message.contains("/nonexistent/libnvrtc.so"), "{e}");
}
