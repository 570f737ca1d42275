"""PyTorch reference for `lawa bench`: the same GPT-2 (nanoGPT's model.py shape: pre-LN, tanh
GELU, biases, tied embedding/head, causal scaled_dot_product_attention), trained with the same
batch, torch.optim.AdamW and clip_grad_norm_, eager and (on CUDA) torch.compile; and
AveragedModel.update_parameters timings for the averaging benchmark.

usage: python bench_gpt.py '<json config>'   -> prints one JSON line of results
config: {n_layer, n_head, n_embd, block_size, vocab_size, batch_size, accumulation, steps, warmup,
         device, precision: "f32"|"bf16", compile: bool, averaging: bool, tasks: int (requests),
         profile_steps: int, profile_dir: str (optional),
         parity: {init, batches, lr, beta1, beta2, eps, weight_decay, clip} (optional)}

Training reports tokens/s and, on CUDA, the device memory the run took: nvidia-smi's memory.used
after the timed steps minus before the model was built (as `lawa bench` measures itself), and
torch.cuda.max_memory_allocated. With "profile_dir", it then profiles "profile_steps" more steps
of each implementation with torch.profiler and writes every event to `<dir>/eager.tsv` (and
`compile.tsv`), one line each: device, start ns, duration ns, name (the lines lawa's profiler
writes), returning the profiled steps' wall time.

With "parity", it trains Hugging Face transformers' GPT2LMHeadModel loaded from the folder
`init` (written by lawa's save_pretrained) on the batches in `batches` (safetensors x, y:
[steps, batch, block]) with torch.optim.AdamW, clip_grad_norm_ and, for bf16, torch.autocast,
and prints the loss of every step. Then it trains the same model four times more, each another
valid rounding: the same way (on a GPU some kernels, the memory-efficient attention's backward
among them, add in an order that varies from run to run); with the weights of every linear
layer laid out as torch.nn.Linear and lawa lay them out ([out, in], where transformers' Conv1D
holds [in, out]: the weight gradients' matmuls then round in another order) and the gradients
clipped in lawa's order of parameters; so laid out and with lawa's padded vocabulary in the LM
head (the head's matmuls of lawa's shapes); and with scaled_dot_product_attention's math
backend instead of its fastest one. Their spread from the first run is the reference's own,
against which lawa's difference is judged.

With "tasks", it scores that many log-likelihood requests instead of training: the lengths
that `lawa bench tasks` draws (request_lengths), sorted longest first, right-padded batches,
log_softmax and gather as lm-evaluation-harness scores them.
"""
import json
import math
import operator
import sys
import time
import types

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        e = c["n_embd"]
        self.n_head = c["n_head"]
        self.ln_1 = nn.LayerNorm(e)
        self.c_attn = nn.Linear(e, 3 * e)
        self.c_proj = nn.Linear(e, e)
        self.ln_2 = nn.LayerNorm(e)
        self.c_fc = nn.Linear(e, 4 * e)
        self.mlp_proj = nn.Linear(4 * e, e)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        vocab = (c["vocab_size"] + 63) // 64 * 64
        self.wte = nn.Embedding(vocab, c["n_embd"])
        self.wpe = nn.Embedding(c["block_size"], c["n_embd"])
        self.h = nn.ModuleList(Block(c) for _ in range(c["n_layer"]))
        self.ln_f = nn.LayerNorm(c["n_embd"])
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)

    def logits(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for b in self.h:
            x = b(x)
        return F.linear(self.ln_f(x), self.wte.weight)

    def forward(self, idx, targets):
        logits = self.logits(idx)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def memory_used_mib():
    """GPU 0's memory in use as nvidia-smi reports it, or None."""
    import subprocess
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout
        return float(out.splitlines()[0])
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


def decays(name, p):
    """lawa's weight-decay rule: matrices, except the token and position embeddings."""
    return p.dim() == 2 and "wte" not in name and "wpe" not in name


def adamw(model, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if decays(n, p)], "weight_decay": weight_decay},
              {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def autocast(c):
    return torch.autocast(device_type=c["device"].split(":")[0], dtype=torch.bfloat16,
                          enabled=c["precision"] == "bf16")


def train_tokens_per_s(c, model, device):
    opt = adamw(model)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(c["vocab_size"], (c["batch_size"], c["block_size"]), generator=g).to(device)
    y = torch.randint(c["vocab_size"], (c["batch_size"], c["block_size"]), generator=g).to(device)
    amp = autocast(c)
    accumulation = max(1, c.get("accumulation", 1))

    def step():
        for _ in range(accumulation):
            with amp:
                loss = model(x, y)
            (loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(c["warmup"]):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(c["steps"]):
        step()
    sync(device)
    return c["steps"] * accumulation * c["batch_size"] * c["block_size"] / (time.perf_counter() - t0), step


def profile_steps(c, step, device, path):
    """Profiles c["profile_steps"] calls of `step` with torch.profiler (Kineto, as `lawa bench`
    profiles its own step) and writes every event to `path`, one line each: device, start ns,
    duration ns, name. Returns the wall seconds of the profiled steps."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    sync(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(c["profile_steps"]):
            step()
        sync(device)
        wall = time.perf_counter() - t0
    with open(path, "w") as f:
        for e in prof.profiler.kineto_results.events():
            where = "cuda" if e.device_type() == DeviceType.CUDA else "cpu"
            if where == "cuda" and e.is_user_annotation():
                continue  # a range on the device's timeline (Optimizer.step...), not a kernel
            name = e.name().replace("\t", " ").replace("\n", " ").replace("\r", " ")
            f.write(f"{where}\t{e.start_ns()}\t{e.duration_ns()}\t{name}\n")
    return wall


def timed_training(c, build, device, out, prefix):
    """Tokens/s of the model `build()` makes and, on CUDA, the memory its training took."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = memory_used_mib() if device.startswith("cuda") else None
    torch.manual_seed(0)
    model = build()
    out[prefix + "_tokens_per_s"], step = train_tokens_per_s(c, model, device)
    if device.startswith("cuda"):
        after = memory_used_mib()
        out[prefix + "_memory_mib"] = after - before if after is not None and before is not None else None
        out[prefix + "_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if c.get("profile_dir") and c.get("profile_steps"):
        path = f"{c['profile_dir']}/{prefix}.tsv"
        out[prefix + "_profile"] = {"events": path, "wall_s": profile_steps(c, step, device, path)}
    del model


def parity_losses(c):
    """The losses of training transformers' GPT-2 from lawa's initial weights on lawa's batches,
    and of its variants (see the module's note)."""
    import transformers
    from torch.nn.attention import SDPBackend, sdpa_kernel
    out = {"losses": trained_losses(c), "transformers": transformers.__version__}
    out["losses_again"] = trained_losses(c)
    out["losses_linear_layout"] = trained_losses(c, linear_layout=True)
    out["losses_padded_head"] = trained_losses(c, linear_layout=True, padded_head=True)
    with sdpa_kernel(SDPBackend.MATH):
        out["losses_math_attention"] = trained_losses(c)
    return out


def trained_losses(c, linear_layout=False, padded_head=False):
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel
    p, device = c["parity"], c["device"]
    # gelu_pytorch_tanh: the same tanh GELU as gelu_new, in one kernel as lawa computes it
    # (gelu_new's Python formula rounds to bf16 after every operation under autocast).
    model = GPT2LMHeadModel.from_pretrained(p["init"], attn_implementation="sdpa", dtype=torch.float32,
                                            activation_function="gelu_pytorch_tanh")
    if linear_layout:
        model = LinearLayoutGpt2(model, padded_head)
    model = model.to(device).train()
    opt = adamw(model, p["lr"], (p["beta1"], p["beta2"]), p["eps"], p["weight_decay"])
    batches = load_file(p["batches"])
    losses = []
    for x, y in zip(batches["x"], batches["y"]):
        x, y = x.to(device), y.to(device)
        with autocast(c):
            logits = model(x).logits
        logits = logits.float()
        vocab = getattr(model, "vocab", logits.size(-1))
        if logits.size(-1) > vocab:
            with torch.no_grad():  # the padding at -inf outside autograd, as lawa's head_log_probs
                logits[..., vocab:] = float("-inf")
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        losses.append(loss.item())
        loss.backward()
        # The norm of the norms sums in parameter order: the variants take lawa's.
        clipped = model.clip_order() if linear_layout else model.parameters()
        torch.nn.utils.clip_grad_norm_(clipped, p["clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses


class LinearLayoutGpt2(nn.Module):
    """transformers' GPT2LMHeadModel `hf` (loaded weights, tanh GELU, causal SDPA) computed the
    same way with torch.nn.Linear layers, each weight transposed from Conv1D's [in, out] to
    Linear's [out, in] as lawa holds them. Called with token ids, returns an object with .logits.
    With `padded_head`, the token embedding (and so the tied LM head) has lawa's padded rows (the
    vocabulary rounded up to config.lawa_vocab_multiple, zeros), whose logits the loss sets to
    -inf: the head's matmuls then have lawa's shapes. clip_order() gives the parameters in the
    order lawa clips them."""

    # Each block's layers: (name here, transformers' name), in transformers' order of registration.
    LAYERS = (("ln_1", "ln_1"), ("c_attn", "attn.c_attn"), ("attn_proj", "attn.c_proj"),
              ("ln_2", "ln_2"), ("c_fc", "mlp.c_fc"), ("mlp_proj", "mlp.c_proj"))

    def __init__(self, hf, padded_head=False):
        super().__init__()
        cfg, t = hf.config, hf.transformer
        if cfg.scale_attn_by_inverse_layer_idx or cfg.reorder_and_upcast_attn or \
                max(cfg.resid_pdrop, cfg.embd_pdrop, cfg.attn_pdrop) > 0:
            raise ValueError("the linear-layout reference has plain attention and no dropout")
        self.n_head = cfg.n_head
        # Parameters registered in transformers' order (clip_order gives lawa's).
        self.wte, self.wpe = t.wte, t.wpe
        self.vocab = cfg.vocab_size
        multiple = getattr(cfg, "lawa_vocab_multiple", 1) or 1
        padded = -(-cfg.vocab_size // multiple) * multiple
        if padded_head and padded > cfg.vocab_size:
            self.wte = nn.Embedding(padded, cfg.n_embd)
            with torch.no_grad():
                self.wte.weight.zero_()
                self.wte.weight[:cfg.vocab_size].copy_(t.wte.weight)
        # Each parameter under its transformers name, which is lawa's name for it too.
        named = [("transformer.wte.weight", self.wte.weight), ("transformer.wpe.weight", self.wpe.weight)]
        self.h = nn.ModuleList()
        for i, block in enumerate(t.h):
            b = nn.Module()
            for name, hf_name in self.LAYERS:
                layer = operator.attrgetter(hf_name)(block)
                if not name.startswith("ln"):
                    conv, layer = layer, nn.Linear(layer.weight.shape[0], layer.weight.shape[1])
                    with torch.no_grad():
                        layer.weight.copy_(conv.weight.t())
                        layer.bias.copy_(conv.bias)
                setattr(b, name, layer)
                named += [(f"transformer.h.{i}.{hf_name}.{w}", getattr(layer, w)) for w in ("weight", "bias")]
            self.h.append(b)
        self.ln_f = t.ln_f
        named += [("transformer.ln_f.weight", self.ln_f.weight), ("transformer.ln_f.bias", self.ln_f.bias)]
        self.named = named

    def clip_order(self):
        """The parameters in the order lawa's clipping sums their norms: sorted by name."""
        return [p for _, p in sorted(self.named, key=lambda n: n[0])]

    def forward(self, idx):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.h:
            C = x.shape[-1]
            q, k, v = b.c_attn(b.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + b.attn_proj(y.transpose(1, 2).reshape(B, T, C))
            x = x + b.mlp_proj(F.gelu(b.c_fc(b.ln_2(x)), approximate="tanh"))
        return types.SimpleNamespace(logits=F.linear(self.ln_f(x), self.wte.weight))


def averaging_seconds(model, device, calls=50):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99), use_buffers=False)
    for _ in range(3):
        ema.update_parameters(model)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        ema.update_parameters(model)
    sync(device)
    return (time.perf_counter() - t0) / calls


def request_lengths(n, block):
    """(context, continuation) lengths of request i: the same formula as `lawa bench tasks`."""
    return [(1 + (i * 37) % (block - 8), 1 + i % 6) for i in range(n)]


def scored_requests_per_s(c, model, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    reqs = [torch.randint(c["vocab_size"], (a + b,), generator=g) for a, b in request_lengths(c["tasks"], c["block_size"])]
    conts = [b for _, b in request_lengths(c["tasks"], c["block_size"])]
    order = sorted(range(len(reqs)), key=lambda i: -len(reqs[i]))
    total = 0.0
    t0 = time.perf_counter()
    with torch.no_grad():
        for at in range(0, len(order), c["batch_size"]):
            chunk = order[at:at + c["batch_size"]]
            width = max(len(reqs[i]) - 1 for i in chunk)
            x = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):
                x[r, :len(reqs[i]) - 1] = reqs[i][:-1]
            logp = F.log_softmax(model.logits(x.to(device)).float(), dim=-1).cpu()
            for r, i in enumerate(chunk):
                n, L = conts[i], len(reqs[i]) - 1
                rows = logp[r, L - n:L]
                total += rows.gather(1, reqs[i][-n:].unsqueeze(1)).sum().item()
                _ = (rows.argmax(-1) == reqs[i][-n:]).all().item()
    sync(device)
    return len(reqs) / (time.perf_counter() - t0), total


def main():
    c = json.loads(sys.argv[1])
    device = c["device"]
    torch.manual_seed(0)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if c.get("parity"):
        out.update(parity_losses(c))
        print(json.dumps(out))
        return
    if device.startswith("cuda"):
        torch.zeros(1, device=device)  # the CUDA context, before any memory is measured
    model = GPT(c).to(device)
    out["params"] = sum(p.numel() for p in model.parameters())
    if c.get("tasks"):
        model.eval()
        scored_requests_per_s(c, model, device)  # warm-up
        out["requests_per_s"], out["loglik_sum"] = scored_requests_per_s(c, model, device)
        print(json.dumps(out))
        return
    if c.get("averaging"):
        out["ema_update_s"] = averaging_seconds(model, device)
    del model
    timed_training(c, lambda: GPT(c).to(device), device, out, "eager")
    if c.get("compile") and device.startswith("cuda"):
        try:
            timed_training(c, lambda: torch.compile(GPT(c).to(device)), device, out, "compile")
        except Exception as e:  # lawa's and eager's figures are reported all the same
            out["compile_error"] = f"{type(e).__name__}: {e}"[:500]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
