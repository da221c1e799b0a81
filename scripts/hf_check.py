#!/usr/bin/env python3
"""Loads vcycle's outputs with HuggingFace transformers and checks what they compute.

Usage: python3 scripts/hf_check.py MANIFEST.json [--report OUT.json]

The manifest (written by scripts/hf-check.sh) lists checks, paths relative to the manifest:
  {"kind": "same-function", "a": ORIGINAL, "b": CONVERTED}
      both load with the class named in config.json; their outputs on the same seeded input
      agree (max |a - b| <= 1e-4, and relative <= 1e-5); a headless model's wider hidden
      state is compared copy by copy (the strided scheme duplicates features).
  {"kind": "loads", "a": DIR}
      loads with no missing or unexpected weights and gives finite outputs.
  {"kind": "valid-loss", "a": DIR, "corpus": FILE, "every": 20, "block": 2048,
   "valid_bytes": N, "seq": S, "windows": W, "expected": LOSS}
      a byte-level causal LM: its mean cross-entropy on the first W validation windows
      (the plugin's split and windows) equals the loss the Burn plugin reported (<= 1e-4).
  {"kind": "burn-logits", "a": DIR}
      a checkpoint the Burn plugin wrote (DIR/burn-logits.json holds the input and the logits
      Burn computed): it loads, and transformers computes the same logits (max |a - b| <= 1e-4).
Exit status 1 if any check fails.
"""

import json
import sys
from pathlib import Path

import torch
import transformers


def load(path):
    config = transformers.AutoConfig.from_pretrained(path)
    arch = (config.architectures or ["AutoModel"])[0]
    cls = getattr(transformers, arch, None) or transformers.AutoModel
    model, info = cls.from_pretrained(path, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if "position_ids" not in k]
    unexpected = [k for k in info["unexpected_keys"] if "position_ids" not in k]
    if missing or unexpected or info.get("mismatched_keys"):
        raise AssertionError(
            f"{path}: missing {missing}, unexpected {unexpected}, "
            f"mismatched {info.get('mismatched_keys')}"
        )
    return model.eval(), config


def output(model, config, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if getattr(config, "model_type", "") in ("vit", "deit"):
            size, channels = config.image_size, config.num_channels
            pixels = torch.randn(2, channels, size, size, generator=g)
            out = model(pixel_values=pixels)
        else:
            seq = min(16, getattr(config, "max_position_embeddings", 16) or 16)
            ids = torch.randint(0, config.vocab_size, (2, seq), generator=g)
            out = model(input_ids=ids)
    if hasattr(out, "logits"):
        return out.logits
    return out.last_hidden_state


def same_function(base, check):
    a_model, a_config = load(base / check["a"])
    b_model, b_config = load(base / check["b"])
    a, b = output(a_model, a_config), output(b_model, b_config)
    if b.shape[-1] != a.shape[-1] and b.shape[-1] % a.shape[-1] == 0:
        # A headless model's wider hidden state holds copies of the original's, one per
        # member of a strided group: compare each copy.
        copies = b.shape[-1] // a.shape[-1]
        b = b.reshape(*b.shape[:-1], copies, a.shape[-1])
        a = a.unsqueeze(-2).expand_as(b)
    diff = (a - b).abs().max().item()
    rel = ((a - b).norm() / a.norm()).item()
    ok = diff <= 1e-4 and rel <= 1e-5
    return ok, f"max abs {diff:.2e}, relative {rel:.2e}"


def loads(base, check):
    model, config = load(base / check["a"])
    out = output(model, config)
    ok = bool(torch.isfinite(out).all())
    params = sum(p.numel() for p in model.parameters())
    return ok, f"{type(model).__name__}, {params} parameters, finite outputs: {ok}"


def valid_loss(base, check):
    model, _ = load(base / check["a"])
    text = (base / check["corpus"]).read_bytes()
    every, block = check["every"], check["block"]
    blocks = [text[i : i + block] for i in range(0, len(text), block)]
    valid = b"".join(b for i, b in enumerate(blocks) if i % every == every - 1)
    valid = valid[: check["valid_bytes"]]
    seq = check["seq"]
    windows = [valid[i : i + seq + 1] for i in range(0, len(valid) - seq, seq)]
    windows = torch.tensor([list(w) for w in windows[: check["windows"]]])
    with torch.no_grad():
        logits = model(input_ids=windows[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)
    ).item()
    diff = abs(loss - check["expected"])
    return diff <= 1e-4, f"HF loss {loss:.6f}, plugin {check['expected']:.6f}, diff {diff:.1e}"


def burn_logits(base, check):
    model, _ = load(base / check["a"])
    record = json.loads((base / check["a"] / "burn-logits.json").read_text())
    values = torch.tensor(record["input_values"]).reshape(record["input_shape"])
    with torch.no_grad():
        if record["input"] == "input_ids":
            logits = model(input_ids=values.long()).logits
        else:
            logits = model(pixel_values=values.float()).logits
    burn = torch.tensor(record["logits"]).reshape(record["logits_shape"])
    if logits.shape != burn.shape:
        return False, f"shape {list(logits.shape)}, Burn {list(burn.shape)}"
    diff = (logits - burn).abs().max().item()
    return diff <= 1e-4, f"{type(model).__name__}, max |HF - Burn| {diff:.1e}"


def main():
    manifest = Path(sys.argv[1])
    base = manifest.parent
    checks = json.loads(manifest.read_text())
    kinds = {
        "same-function": same_function,
        "loads": loads,
        "valid-loss": valid_loss,
        "burn-logits": burn_logits,
    }
    results, failed = [], 0
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for check in checks:
        name = f"{check['kind']}: {check.get('b', check['a'])}"
        try:
            ok, detail = kinds[check["kind"]](base, check)
        except Exception as e:  # a check that cannot run is a failed check
            ok, detail = False, f"{type(e).__name__}: {e}"
        failed += not ok
        results.append({"check": name, "ok": ok, "detail": detail})
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if "--report" in sys.argv:
        Path(sys.argv[sys.argv.index("--report") + 1]).write_text(json.dumps(results, indent=1))
    print(f"{len(checks) - failed} of {len(checks)} checks passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
