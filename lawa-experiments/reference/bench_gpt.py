"""PyTorch reference for `lawa bench`: the same GPT-2 (nanoGPT's model.py shape: pre-LN, tanh
GELU, biases, tied embedding/head, causal scaled_dot_product_attention), trained with the same
batch, torch.optim.AdamW and clip_grad_norm_, eager and (on CUDA) torch.compile; and
AveragedModel.update_parameters timings for the averaging benchmark.

usage: python bench_gpt.py '<json config>'   -> prints one JSON line of results
config: {n_layer, n_head, n_embd, block_size, vocab_size, batch_size, steps, warmup, device,
         precision: "f32"|"bf16", compile: bool, averaging: bool, tasks: int (requests)}

With "tasks", it scores that many log-likelihood requests instead of training: the lengths
that `lawa bench tasks` draws (request_lengths), sorted longest first, right-padded batches,
log_softmax and gather as lm-evaluation-harness scores them.
"""
import json
import math
import sys
import time

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


def train_tokens_per_s(c, model, device):
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "wte" not in n and "wpe" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "wte" not in n and "wpe" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95))
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(c["vocab_size"], (c["batch_size"], c["block_size"]), generator=g).to(device)
    y = torch.randint(c["vocab_size"], (c["batch_size"], c["block_size"]), generator=g).to(device)
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=c["precision"] == "bf16")

    def step():
        with amp:
            loss = model(x, y)
        loss.backward()
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
    return c["steps"] * c["batch_size"] * c["block_size"] / (time.perf_counter() - t0)


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
    out["eager_tokens_per_s"] = train_tokens_per_s(c, model, device)
    if c.get("compile") and device.startswith("cuda"):
        torch.manual_seed(0)
        compiled = torch.compile(GPT(c).to(device))
        out["compile_tokens_per_s"] = train_tokens_per_s(c, compiled, device)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
