"""Reference side of lawa's GPT-NeoX parity tests: Hugging Face transformers' GPTNeoXForCausalLM.

Usage: neox_reference.py <command> <spec.json>

  make-hf   spec {"models": [{"dir", "seed", "tokens", "config": {GPTNeoXConfig fields}}]}
            builds a random GPTNeoXForCausalLM per entry with every parameter perturbed (so no
            LayerNorm weight is one and no bias zero), save_pretrained(dir), writes its logits on
            `tokens` to dir/hf_logits.safetensors, and the same weights as dir/bin/pytorch_model.bin
            (one torch.save'd OrderedDict), dir/sharded-bin/ (two .bin shards and an index, as
            older transformers wrote), and dir/pythia/ (Pythia's old config.json keys, fp16
            weights with the attention-mask and rotary buffers of transformers 4.24).
  logits    spec {"models": [{"dir", "tokens"}]}: from_pretrained(dir) (a lawa checkpoint), logits.
  eval      spec {"checkpoint", "bin", "block_size", "batch_size"}: mean next-token loss over
            every contiguous, non-overlapping window of the uint16 token file; prints JSON.
All models run in fp32 on CPU with SDPA attention (transformers' default), in eval mode.
"""

import collections
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM


def load(path):
    return GPTNeoXForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def logits_of(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.contiguous()


def save_variants(model, cfg, d):
    sd = collections.OrderedDict((k, v.detach().clone().contiguous()) for k, v in model.state_dict().items())
    # The file name transformers writes for the output embedding.
    sd = collections.OrderedDict(("embed_out.weight" if k == "lm_head.weight" else k, v) for k, v in sd.items())
    cfg_json = json.load(open(os.path.join(d, "config.json")))
    os.makedirs(os.path.join(d, "bin"))
    json.dump(cfg_json, open(os.path.join(d, "bin", "config.json"), "w"))
    torch.save(sd, os.path.join(d, "bin", "pytorch_model.bin"))
    os.makedirs(os.path.join(d, "sharded-bin"))
    json.dump(cfg_json, open(os.path.join(d, "sharded-bin", "config.json"), "w"))
    keys = list(sd.keys())
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate([keys[:half], keys[half:]]):
        name = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: sd[k] for k in part}, os.path.join(d, "sharded-bin", name))
        weight_map.update({k: name for k in part})
    json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map},
              open(os.path.join(d, "sharded-bin", "pytorch_model.bin.index.json"), "w"))
    # Pythia's layout: old config keys, fp16, and the buffers old checkpoints carry.
    p = os.path.join(d, "pythia")
    os.makedirs(p)
    rope = cfg_json["rope_parameters"]
    old = {k: v for k, v in cfg_json.items() if k not in ("rope_parameters", "dtype")}
    old.update({"rotary_pct": rope["partial_rotary_factor"], "rotary_emb_base": rope["rope_theta"],
                "torch_dtype": "float16", "transformers_version": "4.24.0"})
    json.dump(old, open(os.path.join(p, "config.json"), "w"))
    half_sd = collections.OrderedDict((k, v.half()) for k, v in sd.items())
    n = cfg.max_position_embeddings
    for i in range(cfg.num_hidden_layers):
        half_sd[f"gpt_neox.layers.{i}.attention.bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
        half_sd[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9).half()
        half_sd[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.full((3,), 123.0).half()
    torch.save(half_sd, os.path.join(p, "pytorch_model.bin"))
    fp16 = GPTNeoXForCausalLM(cfg).eval()
    fp16.load_state_dict({("lm_head.weight" if k == "embed_out.weight" else k): v.float() for k, v in half_sd.items()
                          if "attention.bias" not in k and "masked_bias" not in k and "inv_freq" not in k})
    return fp16


def make_hf(spec):
    for entry in spec["models"]:
        torch.manual_seed(entry["seed"])
        cfg = GPTNeoXConfig(**entry["config"])
        model = GPTNeoXForCausalLM(cfg).eval()
        with torch.no_grad():
            for _, p in model.named_parameters():
                p.add_(0.1 * torch.randn_like(p))
        model.save_pretrained(entry["dir"])
        save_file({"logits": logits_of(model, entry["tokens"])}, f"{entry['dir']}/hf_logits.safetensors")
        fp16 = save_variants(model, cfg, entry["dir"])
        save_file({"logits": logits_of(fp16, entry["tokens"])}, f"{entry['dir']}/pythia/hf_logits.safetensors")


def logits(spec):
    for entry in spec["models"]:
        model = load(entry["dir"])
        save_file({"logits": logits_of(model, entry["tokens"])}, f"{entry['dir']}/hf_logits.safetensors")


def evaluate(spec):
    model = load(spec["checkpoint"])
    ids = np.fromfile(spec["bin"], dtype="<u2").astype(np.int64)
    t, b = spec["block_size"], spec["batch_size"]
    count = (len(ids) - 1) // t
    total, tokens = 0.0, 0
    with torch.no_grad():
        for first in range(0, count, b):
            starts = range(first, min(first + b, count))
            x = torch.tensor(np.stack([ids[s * t : s * t + t] for s in starts]))
            y = torch.tensor(np.stack([ids[s * t + 1 : s * t + t + 1] for s in starts]))
            out = model(x).logits
            loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1), reduction="sum")
            total += loss.double().item()
            tokens += y.numel()
    print(json.dumps({"loss": total / tokens, "windows": count, "tokens": tokens}))


if __name__ == "__main__":
    command, spec_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    {"make-hf": make_hf, "logits": logits, "eval": evaluate}[command](spec)
