#!/usr/bin/env python3
"""Writes fixtures/hf-reference: tiny HuggingFace checkpoints (saved by `save_pretrained`, so
tied duplicates such as GPT-2's lm_head are absent) and, beside each, reference.safetensors with
a seeded input and the logits transformers computes for it (eval mode, eager attention, f32,
CPU). VERSIONS.json records the transformers and torch versions that computed them.

Weights are seeded and far from an initialiser's small values, so that a wrong axis or a wrong
norm shows in the logits: norm gains 1 + 0.1 N(0,1), biases 0.1 N(0,1), embeddings and tokens
0.5 N(0,1), matrices and kernels N(0,1)/sqrt(fan_in).

Usage: python3 scripts/hf_make_reference.py [OUT_DIR]   (default fixtures/hf-reference)
Needs: pip install torch transformers safetensors
"""

import json
import math
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

SIZES = dict(hidden=64, layers=4, heads=4, vocab=128, positions=64)


def randomise(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            lower = name.lower()
            if ("norm" in lower or "ln_" in lower) and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "embeddings" in lower.replace("patch_embeddings", "") or name.endswith(
                ("wte.weight", "wpe.weight", "embed_tokens.weight")
            ):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))


def bert():
    config = transformers.BertConfig(
        vocab_size=SIZES["vocab"],
        hidden_size=SIZES["hidden"],
        num_hidden_layers=SIZES["layers"],
        num_attention_heads=SIZES["heads"],
        intermediate_size=256,
        max_position_embeddings=SIZES["positions"],
        attn_implementation="eager",
    )
    return transformers.BertForMaskedLM(config), "text"


def gpt2():
    config = transformers.GPT2Config(
        vocab_size=SIZES["vocab"],
        n_embd=SIZES["hidden"],
        n_layer=SIZES["layers"],
        n_head=SIZES["heads"],
        n_positions=SIZES["positions"],
        bos_token_id=SIZES["vocab"] - 1,
        eos_token_id=SIZES["vocab"] - 1,
        attn_implementation="eager",
    )
    return transformers.GPT2LMHeadModel(config), "text"


def llama(tied):
    config = transformers.LlamaConfig(
        vocab_size=SIZES["vocab"],
        hidden_size=SIZES["hidden"],
        num_hidden_layers=SIZES["layers"],
        num_attention_heads=SIZES["heads"],
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=176,
        max_position_embeddings=SIZES["positions"],
        rope_theta=1e4,
        tie_word_embeddings=tied,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(config), "text"


def vit():
    config = transformers.ViTConfig(
        hidden_size=SIZES["hidden"],
        num_hidden_layers=SIZES["layers"],
        num_attention_heads=SIZES["heads"],
        intermediate_size=256,
        image_size=32,
        patch_size=8,
        num_channels=3,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    return transformers.ViTForImageClassification(config), "image"


def write(out, name, build, seed):
    torch.manual_seed(seed)
    model, kind = build()
    model = model.eval()
    randomise(model)
    folder = os.path.join(out, name)
    model.save_pretrained(folder, safe_serialization=True)
    inputs = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        if kind == "text":
            ids = torch.randint(0, SIZES["vocab"], (2, 16), generator=inputs)
            logits = model(input_ids=ids).logits
            tensors = {"input_ids": ids}
        else:
            pixels = torch.randn(2, 3, 32, 32, generator=inputs)
            logits = model(pixel_values=pixels).logits
            tensors = {"pixel_values": pixels}
    tensors["logits"] = logits.contiguous()
    save_file(tensors, os.path.join(folder, "reference.safetensors"))
    print(f"wrote {folder}: logits {list(logits.shape)}, mean |logits| {logits.abs().mean():.3f}")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "fixtures/hf-reference"
    os.makedirs(out, exist_ok=True)
    write(out, "bert", bert, 0)
    write(out, "gpt2", gpt2, 1)
    write(out, "llama", lambda: llama(False), 2)
    write(out, "llama-tied", lambda: llama(True), 3)
    write(out, "vit", vit, 4)
    with open(os.path.join(out, "VERSIONS.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
