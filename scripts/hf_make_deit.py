#!/usr/bin/env python3
"""Writes a tiny DeiT with a distillation token and two heads (DeiTForImageClassificationWithTeacher),
randomly initialised with a fixed seed, as a HuggingFace model directory for scripts/hf-check.sh.

Usage: python3 scripts/hf_make_deit.py OUT_DIR
"""

import sys

import torch
import transformers


def main():
    out = sys.argv[1]
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
    )
    model = transformers.DeiTForImageClassificationWithTeacher(config).eval()
    model.save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    main()
