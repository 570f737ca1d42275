"""Reference side of lawa's GPT-2 parity tests: Hugging Face transformers' GPT2LMHeadModel.

Usage: gpt2_reference.py <command> <spec.json>, one process per Rust test, several models each.

  make-hf   spec {"models": [{"dir", "seed", "tokens", "config": {GPT2Config fields}}]}
            builds a random GPT2LMHeadModel per entry (LayerNorm weights and every bias
            perturbed too, so nothing is trivially one or zero), save_pretrained(dir), and writes
            its logits on `tokens` to dir/hf_logits.safetensors.
  logits    spec {"models": [{"dir", "tokens"}]}: from_pretrained(dir) (a lawa checkpoint) and
            writes its logits to dir/hf_logits.safetensors.
  eval      spec {"checkpoint", "bin", "block_size", "batch_size"}: mean next-token loss over
            every contiguous, non-overlapping window of the uint16 token file; prints JSON.
All models run in fp32 on CPU with eager attention, in eval mode.
"""

import json
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel


def load(path):
    model = GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
    return model.eval()


def logits_of(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.contiguous()


def make_hf(spec):
    for entry in spec["models"]:
        torch.manual_seed(entry["seed"])
        config = GPT2Config(**entry["config"], attn_implementation="eager")
        model = GPT2LMHeadModel(config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0.0, 0.1)
                elif ".ln_" in name or name.startswith("transformer.ln_f"):
                    p.normal_(1.0, 0.1)
        model.save_pretrained(entry["dir"])
        save_file({"logits": logits_of(model, entry["tokens"])}, f"{entry['dir']}/hf_logits.safetensors")


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
