#!/usr/bin/env bash
# Converts the fixtures (and the real MiniLM, when scripts/fetch-minilm.sh has fetched it) with
# vcycle, keeps checkpoints the Burn plugin writes (its Llama and ViT tests), writes a manifest
# of checks for scripts/hf_check.py, and runs it when python3 has HuggingFace transformers;
# otherwise it says how to run it on a machine that has it.
#
#   scripts/hf-check.sh [OUT_DIR] [PLUGIN_RUN_DIR]
#
# CARGO_FLAGS: extra flags for the cargo test that writes the plugin's checkpoints (e.g. the
# features of an existing build, to reuse it).
# PLUGIN_RUN_DIR: a finished run of the Burn plugin on the bundled corpus (e.g. a cost_benchmark
# run under target/cost-benchmark-work/): its final model must give, under transformers, the
# validation loss the plugin logged.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.hfcheck}"
run="${2:-}"
vcycle="${VCYCLE:-target/release/vcycle}"
[ -x "$vcycle" ] || cargo build --release -q -p vcycle-transform --bin vcycle
rm -rf "$out"
mkdir -p "$out"
rel() { python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$1" "$out"; }
checks=()
add() { checks+=("$1"); }
convert() { # NAME INPUT ARGS... : one conversion into $out/NAME
  local name=$1 input=$2; shift 2
  "$vcycle" "$@" "$input" -o "$out/$name" >/dev/null
}
for src in fixtures/gpt2-tiny fixtures/bert-tiny fixtures/llama-tiny fixtures/llama-tied-tiny \
  fixtures/vit-tiny fixtures/hf-deit; do
  model=$(basename "$src")
  convert "$model-wide" "$src" decoalesce --heads 8
  add "{\"kind\": \"same-function\", \"a\": \"$(rel "$src")\", \"b\": \"$model-wide\"}"
  convert "$model-small" "$src" coalesce --heads 2 --layers 2
  add "{\"kind\": \"loads\", \"a\": \"$model-small\"}"
  convert "$model-deep" "$src" decoalesce --layers 8
  add "{\"kind\": \"loads\", \"a\": \"$model-deep\"}"
done
if [ -d .local/minilm ]; then
  convert minilm-wide .local/minilm decoalesce --heads 24
  add "{\"kind\": \"same-function\", \"a\": \"$(rel .local/minilm)\", \"b\": \"minilm-wide\"}"
  convert minilm-small .local/minilm coalesce --heads 6 --layers 3
  add "{\"kind\": \"loads\", \"a\": \"minilm-small\"}"
fi
# Checkpoints the Burn plugin writes (Llama tied and untied, and the final models of Llama and
# ViT V-cycles), kept by the plugin's tests with the logits Burn computed for them.
VCYCLE_HF_CHECK_DIR="$(realpath "$out")/plugin" cargo test -q -p vcycle-plugin --test plugin ${CARGO_FLAGS:-} -- \
  llama_hf:: vit_hf:: >/dev/null
for dir in "$out"/plugin/*/; do
  add "{\"kind\": \"burn-logits\", \"a\": \"$(rel "$dir")\"}"
done
if [ -n "$run" ]; then
  cp -r "$run/final" "$out/plugin-final"
  expected=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[-1]["valid_loss_before"])' "$run/boundaries.json")
  config="$run/vcycle.json"
  windows=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["boundary_valid_batches"])' "$config")
  add "{\"kind\": \"valid-loss\", \"a\": \"plugin-final\", \"corpus\": \"$(rel data/rust-book.txt)\", \"every\": 20, \"block\": 2048, \"valid_bytes\": ${VALID_BYTES:-16384}, \"seq\": ${SEQ:-64}, \"windows\": $((windows * ${BATCH:-16})), \"expected\": $expected}"
fi
(IFS=,; echo "[${checks[*]}]") | python3 -m json.tool > "$out/manifest.json"
echo "wrote ${#checks[@]} checks to $out/manifest.json"
if python3 -c 'import transformers, torch' 2>/dev/null; then
  python3 scripts/hf_check.py "$out/manifest.json" --report "$out/report.json"
else
  echo "python3 has no transformers here: run  python3 scripts/hf_check.py $out/manifest.json  where it has"
fi
