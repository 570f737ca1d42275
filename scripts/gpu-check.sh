#!/usr/bin/env bash
# The GPU check: one command that proves lawa's CUDA path and measures it beside PyTorch, writing
# report.json, report.md, check.log, sweep.tar.gz (the end-to-end sweep's CSVs and figures) and
# profiles.tar.gz (every event of the profiled training steps, lawa's and PyTorch's).
#
#   scripts/gpu-check.sh --prepare
#       Here, on the development machine: builds the release binary (linked to libtorch_cuda)
#       and fills .gpu/ (ignored by .gitignore) with it and the tokenizer and corpus assets, so that they
#       travel beside the checkout: `run` with carry [".gpu"].
#   scripts/gpu-check.sh [--out DIR] [--only a,b]
#       On the GPU machine (PyTorch 2.11 + CUDA, no Rust), from the checkout's root:
#       env, parity_bf16, kernels (lawa's CUDA kernels: their tests on the device, parity and
#       speed), cuda_graph (steps replayed from a CUDA graph: tests, parity beside the eager
#       steps, speed), averaging, speed_small, sweep, data_parallel (a process group of one on
#       NCCL beside the lone run), parity_f32, speed_small_options, speed_medium, speed_large;
#       at most GPU_CHECK_BUDGET seconds (default 420). DIR defaults to $OUT. --compile-all:
#       medium and large beside torch.compile too (a minute more each; for a second run).
#   scripts/gpu-check.sh --cpu [--lawa BIN] [--out DIR]
#       A dry run of the same sections at toy sizes on the CPU, with the bootstrap's Python as the
#       reference: the test suite runs it, so the check cannot rot between GPU sessions.
#
# Each section runs under its own time limit, cut to what is left of the budget (a section that
# would get under 20 s is skipped); a failing section is reported and the others go on, except
# that on the GPU a failed env section (no usable CUDA) ends the check. The report is rewritten
# after every section, so a check stopped from outside still leaves one. The exit status is 0
# only when every section that ran passed; the report names the sections a spent budget skipped.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
mode=gpu
out=${OUT:-}
lawa=
only=
compile_all=
while [ $# -gt 0 ]; do
    case $1 in
        --prepare) mode=prepare ;;
        --cpu) mode=cpu ;;
        --out) out=$2; shift ;;
        --lawa) lawa=$2; shift ;;
        --only) only=$2; shift ;;
        --compile-all) compile_all=1 ;;
        -h|--help) sed -n '2,26p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ $mode = prepare ]; then
    set -e
    "$root/lawa" --version >/dev/null # bootstrap and release build
    if ! ldd "$root/target/release/lawa" | grep -q libtorch_cuda; then
        echo "gpu-check: target/release/lawa does not link libtorch_cuda" >&2
        exit 1
    fi
    # lawa-dist builds without NCCL (a cargo warning only) when its headers are missing.
    # (grep without -q reads all of nm's output: under pipefail, -q's early exit fails nm.)
    if ! nm -D --undefined-only "$root/target/release/lawa" | grep ProcessGroupNCCL >/dev/null; then
        echo "gpu-check: target/release/lawa was built without NCCL (run scripts/bootstrap.sh for the headers)" >&2
        exit 1
    fi
    # lawa-ops builds without CUDA graphs (a cargo warning only) when the CUDA headers are missing.
    if ! nm "$root/target/release/lawa" | grep lawa_cuda_graph_begin >/dev/null; then
        echo "gpu-check: target/release/lawa was built without CUDA graphs (run scripts/bootstrap.sh for the CUDA headers)" >&2
        exit 1
    fi
    rm -rf "$root/.gpu"
    mkdir -p "$root/.gpu/assets"
    cp "$root/target/release/lawa" "$root/.gpu/lawa"
    # The tests of lawa's CUDA kernels and host copies, to run on the device (the GPU machine
    # has no Rust): .gpu/tests/{cross_entropy,layer_norm,linear,kernels,host_copy,cuda_graph}.
    mkdir -p "$root/.gpu/tests"
    (cd "$root" && cargo test --release -p lawa-ops --no-run --message-format=json 2>/dev/null) |
        "$root/.lawa/python" -c 'import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    name = m.get("target", {}).get("name")
    if m.get("reason") == "compiler-artifact" and m.get("executable") and name in ("cross_entropy", "layer_norm", "linear", "kernels", "host_copy", "cuda_graph"):
        shutil.copy(m["executable"], sys.argv[1] + "/" + name)' "$root/.gpu/tests"
    for t in cross_entropy layer_norm linear kernels host_copy cuda_graph; do
        [ -x "$root/.gpu/tests/$t" ] || { echo "gpu-check: could not build lawa-ops' $t tests" >&2; exit 1; }
        if ! ldd "$root/.gpu/tests/$t" | grep -q libtorch_cuda; then
            echo "gpu-check: lawa-ops' $t tests do not link libtorch_cuda (CUDA would be unavailable to them)" >&2
            exit 1
        fi
    done
    cp -rL "$root/.lawa/assets/." "$root/.gpu/assets/"
    git -C "$root" describe --always --dirty >"$root/.gpu/commit"
    echo "gpu-check: .gpu/ ready ($(du -sh "$root/.gpu" | cut -f1)); on the GPU machine:"
    echo "  run(command='bash scripts/gpu-check.sh', carry=['.gpu'], timeout_s=480)"
    exit 0
fi

[ -n "$out" ] || { echo "gpu-check: no --out folder and no \$OUT" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd -P)
# give_up REASON: a report that says why nothing ran.
give_up() {
    local json=${1//\\/\\\\}
    json=${json//\"/\\\"}
    echo "gpu-check: $1" >&2
    printf '# lawa GPU check: FAILED before any section\n\n%s\n' "$1" >"$out/report.md"
    printf '{"passed": false, "error": "%s"}\n' "$json" >"$out/report.json"
    [ -z "${work:-}" ] || rm -rf "$work"
    exit 2
}
work=$(mktemp -d "${TMPDIR:-/tmp}/lawa-gpu-check.XXXXXX")
export LAWA_REFERENCE_DIR=$root/lawa-experiments/reference
export LAWA_CACHE=$work/cache
if [ $mode = gpu ]; then
    lawa=${lawa:-$root/.gpu/lawa}
    chmod +x "$lawa" "$root"/.gpu/tests/* 2>/dev/null # in case the transfer dropped the mode
    budget=${GPU_CHECK_BUDGET:-420}
    export LAWA_PYTHON=${LAWA_PYTHON:-python3}
    export LAWA_ASSETS=${LAWA_ASSETS:-$root/.gpu/assets}
    torch_dir=$("$LAWA_PYTHON" -c 'import torch,os;print(os.path.dirname(torch.__file__))')
    torch_lib=$torch_dir/lib
    export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    device=cuda
else
    lawa=${lawa:-$root/target/release/lawa}
    export LAWA_PYTHON=${LAWA_PYTHON:-$root/.lawa/python}
    export LAWA_ASSETS=${LAWA_ASSETS:-$root/.lawa/assets}
    device=cpu
    budget=${GPU_CHECK_BUDGET:-3600}
fi
[ -x "$lawa" ] || give_up "no lawa binary at $lawa (run scripts/gpu-check.sh --prepare first)"
deadline=$((SECONDS + budget))
mkdir -p "$work/status"
log=$out/check.log
: >"$log"

# section NAME SECONDS COMMAND...: runs one check, its output to the log, its status to
# status/NN-NAME.json (NN: the order the sections ran in, which the report keeps).
sections_run=0
section() {
    local name=$1 limit=$2
    shift 2
    if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then
        return
    fi
    local left=$((deadline - SECONDS - 12)) start=$SECONDS rc state=passed
    if [ "$left" -lt 20 ]; then
        state="skipped: ${budget} s budget spent"
        rc=-1
    else
        [ "$limit" -le "$left" ] || limit=$left
        echo "== $name (limit ${limit} s): $*" | tee -a "$log"
        timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" 2>&1 |
            grep --line-buffered -v 'is deprecated. Please do not pass' | tee -a "$log"
        rc=${PIPESTATUS[0]}
        [ "$rc" = 0 ] || state=failed
        [ "$rc" = 124 ] || [ "$rc" = 137 ] && state="timed out after ${limit} s"
    fi
    printf '{"name": "%s", "status": "%s", "exit": %s, "seconds": %s}\n' \
        "$name" "$state" "$rc" $((SECONDS - start)) >"$work/status/$(printf %02d $sections_run)-$name.json"
    sections_run=$((sections_run + 1))
    echo "== $name: $state in $((SECONDS - start)) s" | tee -a "$log"
    "$LAWA_PYTHON" "$root/scripts/gpu_check_report.py" "$work" "$out" "$mode" >/dev/null 2>&1
}

environment() {
    echo "lawa: $lawa (commit $(cat "$root/.gpu/commit" 2>/dev/null || git -C "$root" rev-parse HEAD 2>/dev/null))"
    ldd "$lawa" | grep -E 'torch|not found'
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode --format=csv 2>&1 || true
    "$LAWA_PYTHON" - "$lawa" "$work/env.json" "$device" <<'EOF'
import json, subprocess, sys
import torch
lawa, path, device = sys.argv[1:4]
ldd = subprocess.run(["ldd", lawa], capture_output=True, text=True).stdout
cuda = torch.cuda.is_available()
env = {"torch": torch.__version__, "cuda_available": cuda, "cuda_version": torch.version.cuda,
       "links_libtorch_cuda": "libtorch_cuda" in ldd, "unresolved_libraries": ldd.count("not found"),
       "device_name": torch.cuda.get_device_name(0) if cuda else None,
       "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None}
print(json.dumps(env, indent=1))
json.dump(env, open(path, "w"))
if device == "cuda" and not (cuda and env["links_libtorch_cuda"] and env["unresolved_libraries"] == 0):
    sys.exit("no usable CUDA: see the fields above")
EOF
}

bench() {
    local what=$1 name=$2
    shift 2
    "$lawa" bench "$what" --device "$device" --json "$work/$name.json" "$@"
}

# speed_options CHUNK ARGS...: lawa alone, once with the loss in chunks of CHUNK tokens and once
# with the fused AdamW kernel (the report's speed table lists both), then speed_small_options.json.
speed_options() {
    local chunk=$1
    shift
    bench train speed_small_chunked_loss --no-reference "$@" --loss-chunk "$chunk" || return 1
    bench train speed_small_fused_adamw --no-reference "$@" --adamw-kernel fused || return 1
    printf '{"options": ["speed_small_chunked_loss", "speed_small_fused_adamw"]}\n' >"$work/speed_small_options.json"
}

# device_tests NAME FILTER...: lawa-ops' NAME tests built by --prepare, those matching FILTER,
# on the device (their log in the work folder); fails when one fails or says it was skipped.
device_tests() {
    local t=$1 status
    shift
    # LIBTORCH: where the NVRTC test finds the wheel's NVRTC (beside torch).
    LIBTORCH=$torch_dir "$root/.gpu/tests/$t" "$@" --nocapture --test-threads 1 >"$work/tests_$t.log" 2>&1
    status=$?
    cat "$work/tests_$t.log"
    [ $status -eq 0 ] || return 1
    if grep -q "skipped" "$work/tests_$t.log"; then
        echo "a GPU test of $t was skipped" >&2
        return 1
    fi
}

# kernels "PARITY_ARGS" SPEED_ARGS...: lawa's own CUDA kernels (train.loss_kernel,
# train.norm_kernel and train.linear_kernel: fused): their tests on the device (GPU only:
# cross-entropy against log_softmax + nll_loss, add + LayerNorm against the ops, linear against
# libtorch's, NVRTC with the wheel's library, and the asynchronous copies into pinned memory
# that host-memory averages use); parity with transformers through all three, as parity_bf16
# runs it (PARITY_ARGS, split at spaces); and lawa alone as speed_small runs it, with the
# cross-entropy kernels, with all three (profiled), and with all three and the fused AdamW.
kernels() {
    local parity=$1 t failed=0
    shift
    if [ "$device" = cuda ]; then
        for t in kernels cross_entropy layer_norm linear host_copy; do
            device_tests "$t" on_a_gpu nvrtc || failed=1
        done
    fi
    # Every part runs even when one before it failed: a first run on a device shows them all.
    local all=(--loss-kernel fused --norm-kernel fused --linear-kernel fused)
    # shellcheck disable=SC2086 # split on purpose
    bench parity parity_bf16_fused $parity "${all[@]}" || failed=1
    bench train speed_small_fused_loss --no-reference "$@" --loss-kernel fused || failed=1
    bench train speed_small_fused --no-reference "$@" "${all[@]}" --profile "$work/profile/fused" || failed=1
    bench train speed_small_fused_all --no-reference "$@" "${all[@]}" --adamw-kernel fused || failed=1
    printf '{"parts": ["parity_bf16_fused", "speed_small_fused_loss", "speed_small_fused", "speed_small_fused_all"]}\n' >"$work/kernels.json"
    return $failed
}

# cuda_graph "PARITY_ARGS" SPEED_ARGS...: steps replayed from a CUDA graph (train.cuda_graph).
# On the GPU: lawa-ops' CudaGraph tests on the device; parity with transformers through lawa's
# three kernels and the graph (PARITY_ARGS as kernels takes them), its losses set beside
# parity_bf16_fused's, the same steps taken eagerly (equal if a replay computes what an eager
# step does); lawa alone with the three kernels, the fused AdamW and the graph (SPEED_ARGS, whose
# warm-up must leave room for the recording); and a short `lawa train` with evaluations and
# averagers, eager and graphed, the curves compared. On the CPU: the option is refused, naming why.
cuda_graph() {
    local parity=$1
    shift
    if [ "$device" != cuda ]; then
        if "$lawa" bench train --device cpu --cuda-graph --no-reference "$@" 2>"$work/cuda_graph.err"; then
            echo "--cuda-graph was accepted on the CPU" >&2
            return 1
        fi
        cat "$work/cuda_graph.err"
        grep -q "needs a CUDA device" "$work/cuda_graph.err" || return 1
        printf '{"refused_on_cpu": true}\n' >"$work/cuda_graph.json"
        return 0
    fi
    local failed=0
    device_tests cuda_graph on_a_gpu || failed=1
    local all=(--loss-kernel fused --norm-kernel fused --linear-kernel fused)
    # shellcheck disable=SC2086 # split on purpose
    bench parity parity_bf16_graph $parity "${all[@]}" --cuda-graph || failed=1
    bench train speed_small_graph --no-reference "$@" "${all[@]}" --adamw-kernel fused --cuda-graph || failed=1
    # The trainer's path: one run eager and the same run replayed from a graph, with evaluations
    # and averagers (an EMA in host memory, whose copies must be settled before the recording).
    if [ ! -f "$work/data/meta.json" ]; then
        "$lawa" prepare sotu --tokenizer gpt2 --val-fraction 0.05 --out "$work/data" || return 1
    fi
    local name graph
    for name in eager graph; do
        graph=$([ $name = graph ] && echo ", cuda_graph: true")
        cat >"$work/graph-$name.yaml" <<EOF
name: graph-$name
data: $work/data
out: $work/graph-$name
device: cuda
model: {n_layer: 4, n_head: 4, n_embd: 256, block_size: 256}
train: {steps: 40, batch_size: 16, block_size: 256, grad_accum: 2, lr: 1.0e-3, schedule: {kind: constant}$graph}
eval: {every: 10, windows: 16}
averagers: [{kind: lawa, k: 2, nu: 5}, {kind: ema, decay: 0.9, storage: cpu}]
EOF
        "$lawa" train "$work/graph-$name.yaml" || return 1
    done
    "$LAWA_PYTHON" - "$work" <<'EOF' || failed=1
import csv, json, math, sys
work = sys.argv[1]
def losses(name):
    """A parity run's lawa losses (a NaN one is null in the JSON), or None where it left none."""
    try:
        return [math.nan if x is None else x for x in json.load(open(f"{work}/{name}.json"))["lawa"]]
    except (OSError, ValueError, KeyError):
        return None
def check(name):
    try:
        return json.load(open(f"{work}/{name}.json")).get("cuda_graph_check")
    except (OSError, ValueError):
        return None
graph, eager = losses("parity_bf16_graph"), losses("parity_bf16_fused")
diff = max(abs(a - b) for a, b in zip(graph, eager)) if graph and eager else None
rows = [list(csv.DictReader(open(f"{work}/graph-{n}/curves.csv"))) for n in ("eager", "graph")]
same = len(rows[0]) == len(rows[1]) and all(a["weights"] == b["weights"] for a, b in zip(*rows))
run_diff = max(abs(float(a["val_loss"]) - float(b["val_loss"])) for a, b in zip(*rows)) if same else None
checks = {n: check(n) for n in ("parity_bf16_graph", "speed_small_graph")}
out = {"parts": ["parity_bf16_graph", "speed_small_graph"], "steps": len(graph or []),
       "max_loss_difference_vs_eager": diff, "run_rows": len(rows[1]),
       "run_max_val_loss_difference_vs_eager": run_diff, "recording_checks": checks}
print(json.dumps(out))
json.dump(out, open(f"{work}/cuda_graph.json", "w"))
sys.exit(0 if same and run_diff < 5e-2 else 1)
EOF
    return $failed
}

# speed_model NAME ARGS... -- FASTEST...: lawa beside PyTorch (ARGS), then lawa alone with
# every speed option (FASTEST) as NAME_all, which the report sets beside NAME's PyTorch rows.
speed_model() {
    local name=$1 args=()
    shift
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        args+=("$1")
        shift
    done
    shift
    bench train "$name" "${args[@]}" || return 1
    bench train "${name}_all" --no-reference "$@"
}

sweep_config() {
    local steps=$1 model=$2 batch=$3 block=$4
    cat >"$work/gpu-check.yaml" <<EOF
name: gpu-check
results: $work/results
data:
  prepare: {source: sotu, tokenizer: gpt2, val_fraction: 0.05, out: $work/data}
models:
  - {name: check, $model, block_size: $block}
lrs: [6.0e-4, 6.0e-3]
seeds: [0]
train:
  steps: $steps
  horizon: $((steps * 10))
  batch_size: $batch
  block_size: $block
  schedule: {kind: cosine, warmup: $((steps / 10)), min_lr_ratio: 0.1}
  grad_clip: 1.0
eval: {every: $((steps / 4)), windows: 16, train_windows: 4, batch_size: $batch}
checkpoint: {every: $((steps / 2))}
averagers:
  lawa: {k: [2, 5], nu: [5, $((steps / 20))]}
  ema: {decay: [0.99]}
  swa: {start: [0.5], every: 5}
device: $device
EOF
}

sweep() {
    "$lawa" sweep "$work/gpu-check.yaml" || return 1
    tar -czf "$out/sweep.tar.gz" -C "$work/results" --exclude=runs --exclude=.lock gpu-check
    tar -tzf "$out/sweep.tar.gz"
}

# One run alone and the same run as a process group of one (NCCL on CUDA, Gloo on the CPU):
# the backend's path end to end, the curves compared.
data_parallel() {
    set -o pipefail
    local steps=$1 model=$2 batch=$3 block=$4 name
    if [ ! -f "$work/data/meta.json" ]; then # the sweep section prepares it, unless it failed
        "$lawa" prepare sotu --tokenizer gpt2 --val-fraction 0.05 --out "$work/data" || return 1
    fi
    for name in alone group; do
        cat >"$work/dp-$name.yaml" <<EOF
name: dp-$name
data: $work/data
out: $work/dp-$name
device: $device
model: {$model, block_size: $block}
train: {steps: $steps, batch_size: $batch, block_size: $block, lr: 1.0e-3, schedule: {kind: constant}}
eval: {every: $((steps / 2)), windows: 8}
averagers: [{kind: lawa, k: 2, nu: 5}, {kind: ema, decay: 0.9}]
EOF
    done
    "$lawa" train "$work/dp-alone.yaml" || return 1
    LAWA_LOG=info WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$((20000 + RANDOM % 20000)) \
        "$lawa" train "$work/dp-group.yaml" 2>&1 | tee "$work/dp-group.log" || return 1
    grep -E "over 1 ranks \((Nccl|Gloo)\)" "$work/dp-group.log" || { echo "no process group was made"; return 1; }
    "$LAWA_PYTHON" - "$work" <<'EOF'
import csv, json, sys
work = sys.argv[1]
rows = [list(csv.DictReader(open(f"{work}/dp-{n}/curves.csv"))) for n in ("alone", "group")]
diff = max(abs(float(a["val_loss"]) - float(b["val_loss"])) for a, b in zip(*rows))
backend = "Nccl" if "(Nccl)" in open(f"{work}/dp-group.log").read() else "Gloo"
out = {"backend": backend, "rows": len(rows[0]), "max_val_loss_difference": diff}
print(json.dumps(out))
json.dump(out, open(f"{work}/data_parallel.json", "w"))
sys.exit(0 if len(rows[0]) == len(rows[1]) and diff < 1e-4 else 1)
EOF
}

export lawa work out device root torch_dir
export -f environment bench device_tests speed_options speed_model kernels cuda_graph sweep data_parallel
section env 60 environment
if [ $mode = gpu ] && grep -qE '"status": "(failed|timed out)' "$work"/status/*-env.json 2>/dev/null; then
    "$LAWA_PYTHON" "$root/scripts/gpu_check_report.py" "$work" "$out" "$mode"
    rm -rf "$work"
    exit 1 # no usable CUDA: the other sections cannot pass
fi
# The sections' sizes: GPT-2 on the GPU, toy models on the CPU. The order puts what has never
# run on a device (lawa's kernels, CUDA graphs, host-memory averages) right after the bf16
# parity, then the speed table beside torch.compile and the end-to-end runs, and last what a
# spent budget may skip (fp32 parity, the speed options, medium and large: measured in earlier
# checks). A skipped section is reported as such, apart from the ones that failed.
if [ $mode = gpu ]; then
    limit=90
    p32=(--preset small --precision f32 --batch-size 4 --steps 10)
    parity="--preset small --precision bf16 --batch-size 4 --steps 20"
    small=(--preset small --batch-size 16 --accumulation 4 --steps 10 --warmup 3)
    graphed=(--preset small --batch-size 16 --accumulation 4 --steps 10 --warmup 5)
    chunk=4096
    no_compile=$([ -n "$compile_all" ] || echo --no-compile)
    medium_limit=$([ -n "$compile_all" ] && echo 180 || echo 90)
    large_limit=$([ -n "$compile_all" ] && echo 220 || echo 100)
    medium=(--preset medium --batch-size 8 --steps 8 --warmup 3 $no_compile)
    large=(--preset large --batch-size 4 --steps 8 --warmup 3 $no_compile)
    # lawa with every speed option, the CUDA graph among them (its warm-up leaves room for the
    # recording).
    fastest=(--loss-kernel fused --norm-kernel fused --linear-kernel fused --adamw-kernel fused --cuda-graph)
    medium_all=(--preset medium --batch-size 8 --steps 8 --warmup 5 "${fastest[@]}")
    large_all=(--preset large --batch-size 4 --steps 8 --warmup 5 "${fastest[@]}")
    averaging=(--preset small --batch-size 16 --steps 8 --warmup 3 --no-compile)
    sweep_config 200 "n_layer: 4, n_head: 4, n_embd: 256" 16 256
    dp=(40 "n_layer: 4, n_head: 4, n_embd: 256" 16 256)
else
    limit=120
    tiny=(--preset tiny --vocab-size 512 --block-size 32 --batch-size 4)
    p32=("${tiny[@]}" --precision f32 --steps 6)
    parity="${tiny[*]} --precision bf16 --steps 6"
    small=("${tiny[@]}" --n-layer 2 --accumulation 2 --steps 2 --warmup 1)
    graphed=("${tiny[@]}" --steps 1 --warmup 4)
    chunk=64
    medium=("${tiny[@]}" --n-layer 3 --steps 2 --warmup 1)
    large=("${tiny[@]}" --n-layer 4 --steps 2 --warmup 1)
    fastest=(--loss-kernel fused --norm-kernel fused --linear-kernel fused --adamw-kernel fused) # no graphs here
    medium_limit=$limit
    large_limit=100
    medium_all=("${medium[@]}" "${fastest[@]}")
    large_all=("${large[@]}" "${fastest[@]}")
    averaging=("${tiny[@]}" --steps 2 --warmup 1)
    sweep_config 40 "n_layer: 1, n_head: 2, n_embd: 32" 4 32
    dp=(10 "n_layer: 1, n_head: 2, n_embd: 32" 4 32)
fi
# shellcheck disable=SC2086 # split on purpose
section parity_bf16 $limit bench parity parity_bf16 $parity
section kernels 240 kernels "$parity" "${small[@]}"
section cuda_graph 180 cuda_graph "$parity" "${graphed[@]}"
section averaging 100 bench averaging averaging "${averaging[@]}"
section speed_small 210 bench train speed_small "${small[@]}" --profile "$work/profile"
section sweep $([ $mode = gpu ] && echo 120 || echo 240) sweep
section data_parallel 90 data_parallel "${dp[@]}"
section parity_f32 $limit bench parity parity_f32 "${p32[@]}"
# lawa alone with its speed options: whether the chunked loss and the fused AdamW pay on a GPU.
section speed_small_options $limit speed_options $chunk "${small[@]}"
section speed_medium $medium_limit speed_model speed_medium "${medium[@]}" -- "${medium_all[@]}"
section speed_large $large_limit speed_model speed_large "${large[@]}" -- "${large_all[@]}"
# The profiled steps' events (bench train --profile), to read beside the report's tables.
[ ! -d "$work/profile" ] || tar -czf "$out/profiles.tar.gz" -C "$work" profile
"$LAWA_PYTHON" "$root/scripts/gpu_check_report.py" "$work" "$out" "$mode"
rc=$?
rm -rf "$work"
exit $rc
