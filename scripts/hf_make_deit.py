#!/usr/bin/env python3
"""Writes fixtures/hf-deit: a tiny DeiT with a distillation token and two heads
(DeiTForImageClassificationWithTeacher) saved by transformers, and reference.safetensors with a
seeded input and the logits transformers computes for it (eval mode, eager attention, f32, CPU).
Weights follow fixtures/hf-reference (scripts/hf_make_reference.py): norm gains 1 + 0.1 N(0,1), biases 0.1 N(0,1), embeddings
and tokens 0.5 N(0,1), matrices and kernels N(0,1)/sqrt(fan_in).

Usage: python3 scripts/hf_make_deit.py [OUT_DIR]   (default fixtures/hf-deit)
"""

import math
import sys

import torch
import transformers
from safetensors.torch import save_file


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "fixtures/hf-deit"
    torch.manual_seed(0)
    config = transformers.DeiTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_channels=3,
        num_labels=10,
        attn_implementation="eager",
    )
    model = transformers.DeiTForImageClassificationWithTeacher(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif p.dim() >= 2 and "embeddings" not in name.replace("patch_embeddings", ""):
                p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
            elif "patch_embeddings" in name:
                p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.5 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    save_file(
        {"pixel_values": pixels.contiguous(), "logits": logits.contiguous()},
        f"{out}/reference.safetensors",
    )
    print(f"wrote {out}: logits {list(logits.shape)}, mean |logits| {logits.abs().mean():.3f}")


if __name__ == "__main__":
    main()
