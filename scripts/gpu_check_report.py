"""Gathers the GPU check's sections (scripts/gpu-check.sh) into report.json and report.md.

usage: gpu_check_report.py <work folder> <out folder> <mode: gpu|cpu>
Exit status 0 when every section that ran passed, 1 otherwise.
"""
import datetime
import json
import pathlib
import sys


def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def num(x, fmt):
    return "-" if x is None else format(x, fmt)


def parity_md(name, p):
    spread = p.get("reference_spread")
    # The reference's variants (lawa-experiments/src/bench/parity.rs, VARIANTS).
    variants = [("again", "again"), ("linear_layout", "nn.Linear layout"), ("padded_head", "and padded head"),
                ("math_attention", "math attention")]
    lines = [f"### {name}: {p['precision']}, {p['steps']} steps, batch {p['batch_size']} x {p['block_size']}, "
             f"{p['n_layer']} layers x {p['n_embd']}, vocab {p['vocab_size']}",
             "",
             f"max |loss difference| **{num(p.get('max_abs_diff'), '.3e')}** (tolerance {num(p.get('tolerance'), '.2e')}), "
             f"at the first step "
             f"(same weights, same batch) {num(p.get('first_step_abs_diff'), '.3e')} (tolerance "
             f"{num(p.get('first_step_tolerance'), '.0e')}): **{'passed' if p['passed'] else 'FAILED'}**; reference: "
             f"transformers {p.get('transformers')} on torch {p.get('torch')}"]
    if spread is not None:
        each = ", ".join(f"{label}: {num(p.get('reference_spread_' + key), '.3e')}" for key, label in variants)
        lines += ["", f"The reference against itself (its own spread; run again, with its linear layers' "
                      f"weights laid out as lawa's, so laid out and with lawa's padded LM head, with the math attention "
                      f"kernel): {each}; the tolerance is "
                      f"the larger of the fixed one and twice the largest spread (**{spread:.3e}**), at most "
                      f"ten times the fixed one."]
    extras = [(label, p.get("reference_" + key)) for key, label in variants]
    extras = [(label, col) for label, col in extras if col]
    head = "| step | lawa | transformers | abs diff |" + "".join(f" {name} |" for name, _ in extras)
    lines += ["", head, "|---:|---:|---:|---:|" + "---:|" * len(extras)]
    for i, (a, b) in enumerate(zip(p["lawa"], p["reference"]), 1):
        # A NaN loss is null in the JSON: a dash here, the row kept.
        extra = "".join(f" {num(col[i - 1], '.7f')} |" if i <= len(col) else " - |" for _, col in extras)
        diff = None if a is None or b is None else abs(a - b)
        lines.append(f"| {i} | {num(a, '.7f')} | {num(b, '.7f')} | {num(diff, '.2e')} |{extra}")
    return lines + [""]


def profile_md(name, s, top=10):
    """Where a step's time goes, per implementation (bench train --profile)."""
    lines = []
    for impl, key in [("lawa", "lawa"), ("PyTorch eager", "eager"), ("torch.compile", "compile")]:
        p = (s.get("profile") or {}).get(key)
        if not p:
            continue
        lines += [f"**{impl}** ({name}, {p['steps']} steps profiled): {p['wall_ms_per_step']:.2f} ms a step, "
                  f"{p['device']} busy {p['busy_ms_per_step']:.2f} ms ({p['busy_percent']:.1f} %)", "",
                  "| ms a step | calls a step | name |", "|---:|---:|---|"]
        for r in p["top"][:top]:
            lines.append(f"| {r['ms_per_step']:.3f} | {r['calls_per_step']:.1f} | `{r['name'][:120]}` |")
        lines.append("")
    return lines


def speed_md(speeds):
    lines = ["| model | micro-batch x accumulation | implementation | tokens/s | MFU % | memory MiB (nvidia-smi delta) "
             "| peak allocated MiB (PyTorch) | lawa / this |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    errors = []
    # The reference's figures a lawa-only run (--no-reference) is compared with: those of the
    # run it extends (speed_small's for speed_small_graph), taken in the same invocation on the
    # same card with the same model and batch.
    bases = dict(speeds)
    for name, s in speeds:
        base_name = next((b for b in ("speed_small", "speed_medium", "speed_large")
                          if name.startswith(b + "_")), name)
        base = bases.get(base_name) or {}
        m = s["model"]
        shape = f"{name.removeprefix('speed_')} ({m['params'] / 1e6:.0f}M, {m['n_layer']}x{m['n_embd']})"
        if s.get("loss_chunk"):
            shape += f", loss in chunks of {s['loss_chunk']} tokens"
        if s.get("loss_kernel") not in (None, "aten"):
            shape += f", loss kernel {s['loss_kernel']}"
        if s.get("norm_kernel") not in (None, "aten"):
            shape += f", norm kernel {s['norm_kernel']}"
        if s.get("linear_kernel") not in (None, "aten"):
            shape += f", linear kernel {s['linear_kernel']}"
        if s.get("adamw_kernel") not in (None, "auto"):
            shape += f", AdamW {s['adamw_kernel']}"
        if s.get("cuda_graph"):
            shape += ", CUDA graph"
        batch = f"{s['batch_size']} x {m['block_size']} x {s['accumulation']}"
        lawa = s["lawa"]["tokens_per_s"]
        alone = not s.get("eager") and name != base_name and base.get("model") == s["model"] \
            and base.get("batch_size") == s["batch_size"] and base.get("accumulation") == s["accumulation"]
        for impl, key in [("lawa", "lawa"), ("PyTorch eager", "eager"), ("torch.compile", "compile")]:
            r = s.get(key)
            if not r and alone and base.get(key):
                r, impl = base[key], f"{impl} ({base_name}'s)"
            if not r:
                continue
            ratio = lawa / r["tokens_per_s"]
            lines.append(f"| {shape} | {batch} | {impl} | {r['tokens_per_s']:.0f} | {num(r.get('mfu_percent'), '.1f')} "
                         f"| {num(r.get('memory_mib'), '.0f')} | {num(r.get('max_allocated_mib'), '.0f')} | {ratio:.3f} |")
        if s.get("compile_error"):
            errors.append(f"torch.compile failed on {name}: {s['compile_error']}")
    flops = [f"{n}: {s['flops_per_token']:.4e}" for n, s in speeds]
    return lines + ["", "FLOPs per token (nanoGPT's 6 N + 12 L H Q T): " + ", ".join(flops), ""] + errors


def averaging_md(a):
    lines = [f"training step: {a['step_ms']:.2f} ms", "", "| operation | ms | % of a step |", "|---|---:|---:|"]
    rows = a["rows"] + ([a["pytorch"]] if a.get("pytorch") else [])
    for r in rows:
        lines.append(f"| {r['operation']} | {r['ms']:.3f} | {r['percent_of_step']:.3f} |")
    for name, key in [("EMA", "host_vs_device_ema_max_difference"),
                      ("LAWA", "host_vs_device_lawa_max_difference")]:
        if key in a:
            lines += ["", f"{name} in host memory vs on the device over the same training steps, "
                      f"largest difference: {a[key]:.3e} (at most 1e-6 passes)"]
    return lines + [""]


def safe(name, render, *args):
    """The lines render(*args) gives, or one line saying why it could not: one malformed
    figure (a first run on a new device may write anything) must not cost the rest of the report."""
    try:
        return render(*args)
    except Exception as e:  # noqa: BLE001 (any error in a figure is reported, not raised)
        return [f"({name}: could not be rendered: {type(e).__name__}: {e}; see report.json)", ""]


def main():
    work, out, mode = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
    sections = [load(p) for p in sorted((work / "status").glob("*.json"))]
    sections = [s for s in sections if s]
    figures = {s["name"]: load(work / f"{s['name']}.json") for s in sections}
    # The parts of speed_small_options, kernels and cuda_graph.
    for name in ("speed_small_chunked_loss", "speed_small_fused_adamw", "parity_bf16_fused",
                 "speed_small_fused_loss", "speed_small_fused", "speed_small_fused_all",
                 "parity_bf16_graph", "speed_small_graph", "speed_medium_all", "speed_large_all"):
        figures[name] = load(work / f"{name}.json")
    env = load(work / "env.json") or {}
    # A section the budget left no time for did not run: it is named, not counted as failed.
    skipped = [s["name"] for s in sections if s["status"].startswith("skipped")]
    ran = [s for s in sections if s["name"] not in skipped]
    ok = bool(ran) and all(s["status"] == "passed" for s in ran)
    verdict = ("passed" if ok else "FAILED") + (f" ({len(skipped)} skipped: {', '.join(skipped)})" if skipped else "")
    report = {"mode": mode, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "passed": ok, "skipped": skipped, "environment": env, "sections": sections,
              "figures": {k: v for k, v in figures.items() if v is not None}}
    (out / "report.json").write_text(json.dumps(report, indent=1))

    md = [f"# lawa GPU check ({'CPU dry run' if mode == 'cpu' else 'GPU'}): {verdict}", "",
          f"{report['date']}; device: {env.get('device_name') or 'CPU'}; torch {env.get('torch')} "
          f"(CUDA {env.get('cuda_version')}); lawa links libtorch_cuda: {env.get('links_libtorch_cuda')}; "
          f"bf16 supported: {env.get('bf16_supported')}", "",
          "| section | status | seconds |", "|---|---|---:|"]
    md += [f"| {s['name']} | {s['status']} | {s['seconds']} |" for s in sections]
    md.append("")
    for name in ("parity_f32", "parity_bf16", "parity_bf16_fused", "parity_bf16_graph"):
        if figures.get(name):
            md += safe(name, parity_md, name, figures[name])
    md += safe("cuda_graph", graph_md, figures.get("cuda_graph"))
    speeds = [(n, figures[n]) for n in ("speed_small", "speed_small_fused_loss", "speed_small_fused", "speed_small_fused_all",
                                        "speed_small_graph",
                                        "speed_small_chunked_loss", "speed_small_fused_adamw",
                                        "speed_medium", "speed_medium_all", "speed_large", "speed_large_all")
              if figures.get(n)]
    if speeds:
        md += ["## Training speed (one card, one invocation)", ""] + safe("speed", speed_md, speeds)
        profiles = [line for n, sp in speeds for line in safe(n, profile_md, n, sp)]
        if profiles:
            md += ["## Where a step's time goes (profiler)", ""] + profiles
    if figures.get("averaging"):
        md += ["## Averaging cost", ""] + safe("averaging", averaging_md, figures["averaging"])
    md += safe("data_parallel", data_parallel_md, figures.get("data_parallel"))
    (out / "report.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if ok else 1


def graph_md(graph):
    md = []
    if graph and "steps" in graph:
        md += [f"Steps replayed from a CUDA graph (parity_bf16_graph) beside the same steps taken eagerly "
               f"(parity_bf16_fused), largest loss difference over {graph['steps']} steps: "
               f"**{num(graph.get('max_loss_difference_vs_eager'), '.3e')}**; `lawa train` with "
               f"`cuda_graph: true` beside the same run eager, {graph.get('run_rows')} curve rows (raw, LAWA, "
               f"an EMA in host memory), largest validation-loss difference "
               f"**{num(graph.get('run_max_val_loss_difference_vs_eager'), '.3e')}**", ""]
        for name, c in (graph.get("recording_checks") or {}).items():
            if c:
                md += [f"- {name}: the recorded step's first replay against the same step taken eagerly: "
                       f"loss {num(c.get('loss'), '.1e')}, gradient norm {num(c.get('norm'), '.1e')}, "
                       f"gradients {num(c.get('gradients'), '.1e')} "
                       f"of the largest (at most 1e-2 passes)"]
        md.append("")
    elif graph and graph.get("refused_on_cpu"):
        md += ["CUDA graphs: refused on the CPU, as they should be (`--cuda-graph needs a CUDA device`).", ""]
    return md


def data_parallel_md(dp):
    if not dp:
        return []
    return ["## Data-parallel path", "",
            f"A process group of one on {dp['backend']} beside the lone run: {dp['rows']} curve rows, "
            f"largest validation-loss difference {dp['max_val_loss_difference']:.2e}.", ""]


if __name__ == "__main__":
    sys.exit(main())
