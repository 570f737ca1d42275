"""PyTorch's own averaging (torch.optim.swa_utils.AveragedModel) fed a sequence of weights.

usage: python swa_utils_reference.py <in.safetensors> <out.safetensors> <config.json>

in: tensors `step{t}.{name}` for t = 1..steps. config: {"steps": N, "ema_decay": d,
"swa_start": s, "swa_every": e, "report_steps": [...]}. out: `ema.{t}.{name}` and `swa.{t}.{name}`
at each report step (the averaged parameters after that step's update).
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

src, dst, cfg_path = sys.argv[1:4]
cfg = json.load(open(cfg_path))
seq = load_file(src)
names = sorted({k.split(".", 1)[1] for k in seq})


class Holder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.params = torch.nn.ParameterDict(
            {n.replace(".", "_"): torch.nn.Parameter(seq[f"step1.{n}"].clone()) for n in names}
        )

    def load_step(self, t):
        with torch.no_grad():
            for n in names:
                self.params[n.replace(".", "_")].copy_(seq[f"step{t}.{n}"])


model = Holder()
ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg["ema_decay"]), use_buffers=False)
swa = AveragedModel(model)  # default: equal-weight running mean
out = {}
for t in range(1, cfg["steps"] + 1):
    model.load_step(t)
    ema.update_parameters(model)
    if t >= cfg["swa_start"] and (t - cfg["swa_start"]) % cfg["swa_every"] == 0:
        swa.update_parameters(model)
    if t in cfg["report_steps"]:
        for n in names:
            key = n.replace(".", "_")
            out[f"ema.{t}.{n}"] = ema.module.params[key].detach().clone()
            if swa.n_averaged.item() > 0:
                out[f"swa.{t}.{n}"] = swa.module.params[key].detach().clone()
save_file(out, dst)
