"""torch.optim.AdamW and clip_grad_norm_ on given gradients, the reference for lawa's AdamW.

usage: python adamw_reference.py <in.safetensors> <out.safetensors> <config.json>
in: `init.{name}`, `grad.{t}.{name}` for t in 0..steps. config: {"steps", "lrs": [...],
"max_norm", "betas", "eps", "weight_decay", "decay": [names], "kernel": single|foreach|fused}.
out: `final.{name}` and `norms` (the pre-clip norm of each step).
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file

src, dst, cfg_path = sys.argv[1:4]
cfg = json.load(open(cfg_path))
data = load_file(src)
names = sorted(k[len("init."):] for k in data if k.startswith("init."))
params = {n: torch.nn.Parameter(data[f"init.{n}"].clone()) for n in names}
groups = [
    {"params": [params[n] for n in names if n in cfg["decay"]], "weight_decay": cfg["weight_decay"]},
    {"params": [params[n] for n in names if n not in cfg["decay"]], "weight_decay": 0.0},
]
kernel = cfg.get("kernel", "single")
flags = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[kernel]
opt = torch.optim.AdamW(groups, lr=1.0, betas=tuple(cfg["betas"]), eps=cfg["eps"], **flags)
norms = []
for t in range(cfg["steps"]):
    for n in names:
        params[n].grad = data[f"grad.{t}.{n}"].clone()
    norms.append(torch.nn.utils.clip_grad_norm_(list(params.values()), cfg["max_norm"]).item())
    for g in opt.param_groups:
        g["lr"] = cfg["lrs"][t]
    opt.step()
out = {f"final.{n}": params[n].detach().clone() for n in names}
out["norms"] = torch.tensor(norms, dtype=torch.float64)
save_file(out, dst)
