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
    // The highest major version, as the shim picks it (`libnvrtc.so.13` over `.so.12`, which a
    // plain sort of the paths would not give when they sit in different folders).
    found.sort_by_key(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let version = name.trim_start_matches("libnvrtc.so.");
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        (major, p.clone())
    });
    found.pop()
}

#[test]
fn nvrtc_compiles_every_kernel_source_for_ampere_and_hopper() {
    let Some(nvrtc) = wheel_nvrtc() else {
        eprintln!("skipped: this libtorch has no NVRTC beside it (a CPU-only build)");
        return;
    };
    // The kernel cache of this test alone (set before any compilation reads it; this binary's
    // only test, so no other thread reads the environment meanwhile).
    let cache = std::env::temp_dir().join(format!("lawa-kernel-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    std::env::set_var("LAWA_CACHE", &cache);
    for source in KernelSource::ALL {
        for arch in ["sm_80", "sm_90"] {
            let bytes = compile_kernels(source, arch, Some(&nvrtc))
                .unwrap_or_else(|e| panic!("{source:?} for {arch}: {e}"));
            assert!(bytes > 1000, "{source:?} for {arch}: a {bytes}-byte binary");
        }
    }
    assert!(
        !cache.exists(),
        "a compilation with NVRTC's path named uses no cache"
    );
    // Without a path, NVRTC is found as a GPU run finds it (the wheel's, beside libtorch): the
    // same library, so the same binary, kept in the kernel cache; the next process reads it
    // back, and a damaged one is compiled again and replaced.
    for source in KernelSource::ALL {
        let want = compile_kernels(source, "sm_90", Some(&nvrtc)).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            compile_kernels(source, "sm_90", None).unwrap(),
            want,
            "{source:?}"
        );
        let compiled = started.elapsed();
        let cached = cached_binaries(&cache, source);
        assert_eq!(cached.len(), 1, "{source:?}: {cached:?}");
        assert_eq!(std::fs::metadata(&cached[0]).unwrap().len(), want as u64);
        let started = std::time::Instant::now();
        assert_eq!(
            compile_kernels(source, "sm_90", None).unwrap(),
            want,
            "{source:?}"
        );
        eprintln!(
            "{source:?}: compiled in {compiled:.2?}, read from the cache in {:.2?}",
            started.elapsed()
        );
        // What the cache holds is what is used: a binary with bytes added (still a cubin naming
        // every kernel) comes back as it is.
        let mut grown = std::fs::read(&cached[0]).unwrap();
        grown.extend_from_slice(&[0; 16]);
        std::fs::write(&cached[0], &grown).unwrap();
        assert_eq!(compile_kernels(source, "sm_90", None).unwrap(), want + 16);
        std::fs::write(&cached[0], b"\x7fELF but not a cubin").unwrap();
        assert_eq!(
            compile_kernels(source, "sm_90", None).unwrap(),
            want,
            "{source:?}"
        );
        assert_eq!(std::fs::metadata(&cached[0]).unwrap().len(), want as u64);
    }
    assert_eq!(
        std::fs::read_dir(cache.join("kernels")).unwrap().count(),
        3,
        "no partial files left"
    );
    std::fs::remove_dir_all(&cache).unwrap();
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

/// The binaries of `source` in the kernel cache `cache`.
fn cached_binaries(cache: &std::path::Path, source: KernelSource) -> Vec<PathBuf> {
    let stem = match source {
        KernelSource::CrossEntropy => "cross_entropy-sm_90-",
        KernelSource::LayerNorm => "layer_norm-sm_90-",
        KernelSource::BiasGrad => "bias_grad-sm_90-",
    };
    std::fs::read_dir(cache.join("kernels"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(stem) && name.ends_with(".cubin")
        })
        .collect()
}
